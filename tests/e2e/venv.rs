//! Where the tests find the tools `scripts/test-deps` installs into the repository (the Python
//! of `.venv/`, the Node example's `node_modules/`, the buf CLI), and the address the deploy
//! manifest gives the app.
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

/// The `CCGW_ADDR` value of deploy/k8s/pod-sidecar.yaml, unchanged but for its port (the tests'
/// bridges listen on ephemeral ports): what the app of the manifest gets.
pub fn manifest_addr(port: u16) -> String {
    let manifest = include_str!("../../deploy/k8s/pod-sidecar.yaml");
    let mut lines = manifest.lines();
    lines
        .find(|l| l.trim() == "- name: CCGW_ADDR")
        .expect("the manifest sets CCGW_ADDR");
    let value = lines
        .next()
        .and_then(|l| l.trim().strip_prefix("value: "))
        .expect("CCGW_ADDR has a value on the next line")
        .trim();
    let (host, default_port) = value.rsplit_once(':').expect("HOST:PORT");
    assert_eq!(
        default_port, "50051",
        "the manifest's port is the default --listen port"
    );
    format!("{host}:{port}")
}
