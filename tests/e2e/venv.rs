//! Where the tests find the tools `scripts/test-deps` installs into the repository: the Python
//! of `.venv/` (grpcio and friends), the Node example's `node_modules/`, the buf CLI.
//!
//! Tests that need them fail (never skip) when they are missing, with [`HINT`].

use std::path::{Path, PathBuf};

/// What to run when a tool is missing (works on Debian's externally managed Python).
pub const HINT: &str = "run `scripts/test-deps` in the repository first (it creates .venv/ with `python3 -m venv` and installs the pinned Python and npm packages there)";

/// The repository root.
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `.venv/bin/python`, asserting it exists.
pub fn python() -> PathBuf {
    let python = root().join(".venv/bin/python");
    assert!(python.exists(), "{} not found: {HINT}", python.display());
    python
}

/// A directory with `node_modules/` installed from its lockfile, asserting it is there.
pub fn npm_dir(relative: &str) -> PathBuf {
    let dir = root().join(relative);
    assert!(
        dir.join("node_modules").is_dir(),
        "{}/node_modules not found: {HINT}",
        dir.display()
    );
    dir
}
