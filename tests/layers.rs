//! Dependencies point one way: lower modules never name the ones above them.
//!
//! `gateway` (the HTTPS client) is below everything but `secret` and `crypto`; `config` (the
//! bridge's flags) is below the command line (`args`), the operator client (`cli`) and the gRPC
//! status table. Checked on the source text, so a new `use` that breaks the layering fails here
//! with the file and line that did it.

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
