//! Rules held by the source text itself.
//!
//! Dependencies point one way: lower modules never name the ones above them.
//!
//! `gateway` (the HTTPS client) is below everything but `secret` and `crypto`; `config` (the
//! bridge's flags) is below the command line (`args`), the operator client (`cli`) and the gRPC
//! status table. Checked on the source text, so a new `use` that breaks the layering fails here
//! with the file and line that did it.
//!
//! The one rule of issue 22: the bridge sends `forcelogin` only for a caller's explicit
//! `SignIn(force = true)` (or an agents-file entry's `force = true`, its first sign-in); every
//! other path that ends or replaces a gateway session goes through a `logout` with that
//! session's own Guid. Read from `src/` so that a second call site cannot come back unnoticed;
//! the behaviour itself is tested end to end (e2e `lifecycle`, `faults`, the pool's scripted,
//! take-over and chaos tests).

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every line of `files` that names one of `forbidden` (comments excluded).
fn offending(files: &[PathBuf], forbidden: &[&str]) -> Vec<String> {
    let mut found = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(file).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.trim_start();
            if code.starts_with("//") {
                continue;
            }
            for name in forbidden {
                if code.contains(name) {
                    found.push(format!("{}:{}: {}", file.display(), n + 1, code));
                }
            }
        }
    }
    found
}

fn src(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src").join(path)
}

#[test]
fn the_gateway_client_depends_on_nothing_above_it() {
    let mut files = Vec::new();
    rust_files(&src("gateway"), &mut files);
    assert!(files.len() > 3, "{files:?}");
    let up = [
        "crate::telemetry",
        "crate::install_crypto_provider",
        "crate::grpc",
        "crate::session",
        "crate::events",
        "crate::config",
        "crate::server",
        "crate::sim",
    ];
    let found = offending(&files, &up);
    assert!(
        found.is_empty(),
        "gateway reaches up:\n{}",
        found.join("\n")
    );
}

#[test]
fn configuration_depends_on_neither_the_command_line_nor_statuses() {
    let found = offending(
        &[src("config.rs")],
        &["crate::cli", "grpc::status", "tonic::Status"],
    );
    assert!(found.is_empty(), "config reaches up:\n{}", found.join("\n"));
}

/// Source files of the bridge, without the simulator (which plays the gateway), the table of
/// interfaces (which names every one) and the benchmark (which counts the `forcelogin`s the
/// simulator received, to report 0).
fn bridge_sources() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    files
        .into_iter()
        .map(|p| {
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            (rel, std::fs::read_to_string(&p).unwrap())
        })
        .filter(|(rel, _)| {
            !rel.starts_with("src/sim/")
                && !rel.starts_with("src/bin/ccgw-bench/")
                && rel != "src/gateway/interface.rs"
        })
        .collect()
}

#[test]
fn forcelogin_is_sent_from_one_place_only_and_only_for_an_explicit_force() {
    let mut sites = Vec::new();
    for (file, text) in bridge_sources() {
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            if line.contains("Interface::ForceLogin") {
                sites.push((file.clone(), i, lines[i.saturating_sub(6)..=i].join("\n")));
            }
            assert!(
                !line.contains("/forcelogin") || line.trim_start().starts_with("//"),
                "{file}:{}: a forcelogin path outside the interface table: {line}",
                i + 1
            );
        }
    }
    assert_eq!(
        sites.len(),
        1,
        "exactly one place may send forcelogin: {sites:#?}"
    );
    let (file, _, context) = &sites[0];
    assert_eq!(file, "src/session/lifecycle.rs");
    assert!(
        context.contains("if params.force"),
        "forcelogin only under a caller's explicit force:\n{context}"
    );
}

#[test]
fn nothing_in_the_bridge_sets_force_by_itself() {
    for (file, text) in bridge_sources() {
        for (i, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            assert!(
                !code.contains("force: true") && !code.contains("force = true;"),
                "{file}:{}: the bridge decides to force by itself: {line}",
                i + 1
            );
        }
    }
}
