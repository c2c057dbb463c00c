//! End-to-end tests: one test binary (links once), modules by area.

mod helpers;
mod recordplay;
