//! Compiles `proto/ccgw/v1/*.proto` without a system `protoc` (protox is a pure-Rust compiler),
//! and writes the descriptor set for server reflection (prost-build only writes it on the protoc path).
//!
//! Two passes: the messages and clients as usual, then the server traits alone, in which the
//! streamed `PlayEvent`/`AgentEvent` are pre-encoded frames (`grpc::frame::EncodedEvent`), so
//! an event is encoded once and shared by every watcher instead of cloned and encoded per watcher.
//!
//! Also names the build for `--version` and `ccgw_build_info` (`src/version.rs`): the commit
//! (`CCGW_COMMIT` when set, as the Dockerfile passes it, for there is no `.git` in its context;
//! else `git rev-parse --short HEAD`; else `unknown`) and the cargo features.
use std::path::PathBuf;
use std::process::Command;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    build_identity();
    let files = [
        "proto/ccgw/v1/recordplay.proto",
        "proto/ccgw/v1/session.proto",
    ];
    let fds = protox::compile(files, ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("ccgw_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        .build_server(false)
        .compile_fds(fds.clone())?;
    let server = out.join("server");
    std::fs::create_dir_all(&server)?;
    tonic_prost_build::configure()
        .build_client(false)
        .out_dir(&server)
        .extern_path(".ccgw.v1", "crate::proto")
        .extern_path(".ccgw.v1.PlayEvent", "crate::grpc::frame::EncodedEvent")
        .extern_path(".ccgw.v1.AgentEvent", "crate::grpc::frame::EncodedEvent")
        .compile_fds(fds)?;
    Ok(())
}

/// `CCGW_COMMIT`, `CCGW_FEATURES` and `CCGW_VERSION` (`0.1.0 (features: pool; commit 7c74dba)`)
/// for `src/version.rs`.
fn build_identity() {
    println!("cargo:rerun-if-env-changed=CCGW_COMMIT");
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
    };
    // A new commit changes HEAD (a detached checkout) or the branch's ref (loose or packed).
    // Only paths that exist: cargo takes a missing one (no `packed-refs` before a `git gc`, a
    // branch whose ref is packed) as changed on every build, which rebuilt the crate each time.
    let watch = |path: String| {
        if std::path::Path::new(&path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    };
    for name in ["HEAD", "packed-refs"] {
        if let Some(path) = git(&["rev-parse", "--git-path", name]) {
            watch(path);
        }
    }
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        if let Some(path) = git(&["rev-parse", "--git-path", &branch]) {
            watch(path);
        }
    }
    let commit = std::env::var("CCGW_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| git(&["rev-parse", "--short=7", "HEAD"]))
        .unwrap_or_else(|| "unknown".to_owned());
    let features = if std::env::var_os("CARGO_FEATURE_POOL").is_some() {
        "pool"
    } else {
        ""
    };
    let version = std::env::var("CARGO_PKG_VERSION").unwrap_or_default();
    let shown = if features.is_empty() {
        "none"
    } else {
        features
    };
    println!("cargo:rustc-env=CCGW_COMMIT={commit}");
    println!("cargo:rustc-env=CCGW_FEATURES={features}");
    println!("cargo:rustc-env=CCGW_VERSION={version} (features: {shown}; commit {commit})");
}
