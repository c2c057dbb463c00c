//! End-to-end tests: one test binary (links once), modules by area.

mod events;
mod examples;
mod faults;
mod guid;
mod helpers;
mod hints;
mod lifecycle;
mod lifecycle_model;
mod limits;
mod metrics;
mod ops;
mod push;
mod python;
mod readiness;
mod recordplay;
mod reflection;
mod reliability;
mod retcodes;
mod startup;
mod statuses;
mod validation;
mod venv;
