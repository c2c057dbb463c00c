//! What this build is, named once for `--version` (of the bridge and of `call`) and for the
//! `ccgw_build_info` metric, so an operator reads the same facts in both. `build.rs` derives them.

/// The crate's version, e.g. `0.1.0`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The cargo features that change behaviour: `pool`, or empty.
pub const FEATURES: &str = env!("CCGW_FEATURES");
/// The short commit the binary was built from, or `unknown` (a build outside git without
/// `CCGW_COMMIT`).
pub const COMMIT: &str = env!("CCGW_COMMIT");
/// `--version`'s text after the name: `0.1.0 (features: pool; commit 7c74dba)`.
pub const LONG: &str = env!("CCGW_VERSION");
