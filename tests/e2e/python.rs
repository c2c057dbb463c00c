//! Cross-language proof: a stock Python grpcio client, with stubs generated from the project's
//! own .proto files, drives the bridge (tests/python/client.py).
//!
//! Needs `.venv/` with the packages of tests/python/requirements.txt (`scripts/test-deps`);
//! fails (never skips) without them, saying what to run.

use crate::helpers::*;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;
use tokio::process::Command;

use crate::venv::{self, HINT as INSTALL_HINT};

/// Runs `cmd` to completion within `limit`, killing it on timeout.
async fn run_bounded(mut cmd: Command, what: &str, limit: Duration) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: cannot start .venv/bin/python ({e}); {INSTALL_HINT}"));
    match tokio::time::timeout(limit, child.wait_with_output()).await {
        Ok(out) => out.unwrap_or_else(|e| panic!("{what}: {e}")),
        Err(_) => panic!("{what}: still running after {limit:?}; killed"),
    }
}

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!(
            "ccgw-py-stubs-{}-{}-{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Generates the Python stubs of proto/ccgw/v1/*.proto into `out` (package `ccgw.v1`).
async fn generate_stubs(root: &Path, out: &Path) {
    let mut probe = Command::new(venv::python());
    probe.args(["-c", "import grpc, grpc_tools.protoc"]);
    let found = run_bounded(
        probe,
        "checking grpcio/grpcio-tools",
        Duration::from_secs(30),
    )
    .await;
    assert!(
        found.status.success(),
        ".venv/bin/python lacks grpcio/grpcio-tools: {INSTALL_HINT}\n{}",
        String::from_utf8_lossy(&found.stderr)
    );

    let mut protoc = Command::new(venv::python());
    protoc
        .current_dir(root)
        .args(["-m", "grpc_tools.protoc", "-I", "proto"])
        .arg(format!("--python_out={}", out.display()))
        .arg(format!("--grpc_python_out={}", out.display()))
        .args([
            "proto/ccgw/v1/recordplay.proto",
            "proto/ccgw/v1/session.proto",
        ]);
    let gen = run_bounded(protoc, "grpc_tools.protoc", Duration::from_secs(60)).await;
    assert!(
        gen.status.success(),
        "grpc_tools.protoc failed ({}):\n{}",
        gen.status,
        String::from_utf8_lossy(&gen.stderr)
    );
    // Regular packages rather than namespace packages, so an unrelated `ccgw` elsewhere on
    // sys.path cannot shadow or merge with the generated one.
    for pkg in ["ccgw", "ccgw/v1"] {
        std::fs::write(out.join(pkg).join("__init__.py"), "").expect("write __init__.py");
    }
    assert!(
        out.join("ccgw/v1/recordplay_pb2_grpc.py").is_file(),
        "grpc_tools.protoc produced no ccgw/v1/recordplay_pb2_grpc.py in {}",
        out.display()
    );
}

#[tokio::test]
async fn python_grpcio_client_plays_watches_and_signs_out() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let h = Harness::start().await;
    let stubs = TempDir::new();
    generate_stubs(root, &stubs.0).await;

    let mut client = Command::new(venv::python());
    client
        .current_dir(root)
        .env("PYTHONPATH", &stubs.0)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .arg(root.join("tests/python/client.py"))
        .args(["--addr", &h.addr.to_string(), "--agent", "1001"]);
    let out = run_bounded(client, "tests/python/client.py", Duration::from_secs(60)).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "client.py exited with {}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    let line = stdout
        .lines()
        .find(|l| l.contains("\"summary\": \"ccgw python client ok\""))
        .unwrap_or_else(|| panic!("no summary line on stdout:\n{stdout}\n--- stderr\n{stderr}"));
    let summary: serde_json::Value = serde_json::from_str(line).expect("summary is JSON");
    assert_eq!(summary["ok"], true, "{line}");
    assert_eq!(summary["agent_id"], "1001", "{line}");
    println!("{line}");
    h.stop().await.expect("bridge stops cleanly");
}
