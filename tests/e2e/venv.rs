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

/// Every manifest of deploy/k8s (`*.yaml`, `*.yml`) as `(file name, text)`, sorted by name.
pub fn manifests() -> Vec<(String, String)> {
    let dir = root().join("deploy/k8s");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|f| {
            let name = f.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read_to_string(&f).unwrap())
        })
        .collect()
}

/// Every `CCGW_ADDR` the manifests of deploy/k8s give an app, as `(file name, value)`, each
/// unchanged but for its port (the tests' bridges listen on ephemeral ports). Read from the
/// directory at run time, so a manifest added later is covered without touching the tests.
pub fn manifest_addrs(port: u16) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for (name, text) in manifests() {
        let mut lines = text.lines();
        while lines.any(|l| l.trim() == "- name: CCGW_ADDR") {
            let value = lines
                .next()
                .and_then(|l| l.trim().strip_prefix("value: "))
                .unwrap_or_else(|| panic!("{name}: CCGW_ADDR has a literal value on the next line"))
                .trim()
                .trim_matches(|c| c == '"' || c == '\'');
            let (host, default_port) = value
                .rsplit_once(':')
                .unwrap_or_else(|| panic!("{name}: CCGW_ADDR {value:?} is not HOST:PORT"));
            assert_eq!(
                default_port, "50051",
                "{name}: the manifest's port is the default --listen port"
            );
            found.push((name.clone(), format!("{host}:{port}")));
        }
    }
    assert!(
        found.len() >= 2,
        "pod-sidecar.yaml and pool-replicas.yaml both set CCGW_ADDR: {found:?}"
    );
    found
}

/// The `CCGW_ADDR` of deploy/k8s/pod-sidecar.yaml, with `port` (see [`manifest_addrs`]).
#[allow(dead_code)] // tests/cli.rs uses it
pub fn manifest_addr(port: u16) -> String {
    manifest_addrs(port)
        .into_iter()
        .find(|(file, _)| file == "pod-sidecar.yaml")
        .expect("pod-sidecar.yaml sets CCGW_ADDR")
        .1
}
