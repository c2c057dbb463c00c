//! End-to-end tests: one test binary (links once), modules by area.

mod events;
mod faults;
mod guid;
mod helpers;
mod lifecycle;
mod lifecycle_model;
mod limits;
mod ops;
mod python;
mod recordplay;
mod reliability;
mod retcodes;
mod validation;
