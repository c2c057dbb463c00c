//! The client examples (examples/python, examples/node) run as a user runs them, against a
//! bridge and simulator, with the deploy manifest's `CCGW_ADDR` form as their target: stock
//! grpcio and @grpc/grpc-js accept it unchanged.

use crate::helpers::*;
use crate::venv::{self, manifest_addr};
use std::process::Stdio;
use std::time::Duration;
use tokio::process::Command;

/// Runs an example to completion (bounded) and returns its JSON summary line.
async fn run_example(mut cmd: Command, name: &str) -> serde_json::Value {
    cmd.current_dir(venv::root())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("{name}: cannot start ({e}); {}", venv::HINT));
    let out = tokio::time::timeout(Duration::from_secs(90), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{name}: still running after 90 s"))
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{name} exited {}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    let line = stdout
        .lines()
        .find(|l| l.contains("\"summary\""))
        .unwrap_or_else(|| panic!("{name}: no summary\n{stdout}\n{stderr}"));
    serde_json::from_str(line).expect("the summary is JSON")
}

/// What both examples must have shown: outcome awaited, resumed watch, decoded refusal.
fn check_summary(s: &serde_json::Value, agent: &str) {
    assert_eq!(s["agent_id"], agent, "{s}");
    assert_eq!(
        s["events"],
        serde_json::json!(["PLAY_STARTED", "PLAY_SUCCEEDED", "PLAY_STOPPED"]),
        "{s}"
    );
    assert!(s["outcome_sequence"].as_u64().unwrap() > s["resumed_after"].as_u64().unwrap());
    assert_eq!(
        s["refused"],
        serde_json::json!({
            "code": "FAILED_PRECONDITION",
            "reason": "AGENT_NOT_SIGNED_IN",
            "domain": "ccgw-bridge",
            "metadata": {"agent_id": "999998"},
            "may_retry": false,
        }),
        "{s}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_and_node_examples_run_against_the_manifest_address() {
    let h = Harness::start().await;
    let addr = manifest_addr(h.addr.port());

    let mut python = Command::new(venv::python());
    python
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .arg("examples/python/client.py")
        .args(["--addr", &addr, "--agent", "1001"]);
    let mut node = Command::new("node");
    node.arg(venv::npm_dir("examples/node").join("client.js"))
        .args(["--agent", "1002"])
        // The address the app gets: $CCGW_ADDR, as the manifest sets it.
        .env("CCGW_ADDR", &addr);
    let (py, js) = tokio::join!(
        run_example(python, "examples/python/client.py"),
        run_example(node, "examples/node/client.js")
    );
    check_summary(&py, "1001");
    check_summary(&js, "1002");
    for agent in ["1001", "1002"] {
        assert!(!h.sim.signed_in(agent), "{agent} signed out by its example");
    }
    h.stop().await.expect("bridge stops cleanly");
}
