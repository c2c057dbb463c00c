//! The client examples (examples/python, examples/node) run as a user runs them, against a
//! bridge and simulator, with the deploy manifest's `CCGW_ADDR` form as their target: stock
//! grpcio and @grpc/grpc-js accept it unchanged.

use crate::helpers::*;
use crate::venv;
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

/// A fresh, empty directory handed to an example as its `TMPDIR`; removed when dropped, also
/// when the test fails.
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("ccgw-example-tmp-{}-{tag}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    /// What a run left here (nothing, for a well-behaved example).
    fn leftovers(&self) -> Vec<String> {
        std::fs::read_dir(&self.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// [`run_example`], keeping the run's name and `TMPDIR` with its summary.
async fn run_in(
    (cmd, name, tmp): (Command, String, Scratch),
) -> (serde_json::Value, Scratch, String) {
    (run_example(cmd, &name).await, tmp, name)
}

/// The Python example run as a user runs it: the address as `--addr`, a `TMPDIR` of its own.
fn python_example(addr: &str, agent: &str, label: &str) -> (Command, String, Scratch) {
    let tmp = Scratch::new("py");
    let mut python = Command::new(venv::python());
    python
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("TMPDIR", &tmp.0)
        .arg("examples/python/client.py")
        .args(["--addr", addr, "--agent", agent]);
    let name = format!("examples/python/client.py --addr {addr} ({label})");
    (python, name, tmp)
}

/// The Node example run as a user runs it: the address as `$CCGW_ADDR`, as the manifest hands
/// it to the app.
fn node_example(
    client: &std::path::Path,
    addr: &str,
    agent: &str,
    label: &str,
) -> (Command, String, Scratch) {
    let tmp = Scratch::new("js");
    let mut node = Command::new("node");
    node.arg(client)
        .args(["--agent", agent])
        .env("TMPDIR", &tmp.0)
        .env("CCGW_ADDR", addr);
    let name = format!("examples/node/client.js with CCGW_ADDR={addr} ({label})");
    (node, name, tmp)
}

/// Every manifest's `CCGW_ADDR` (deploy/k8s/*.yaml), unchanged but for the port, is the target
/// of both stock clients: Python grpcio (the address as `--addr`) and Node grpc-js (the address
/// as `$CCGW_ADDR`, as the manifest hands it to the app). Each run leaves its `TMPDIR` empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_and_node_examples_run_against_every_manifest_address() {
    let h = Harness::start().await;
    let addrs = venv::manifest_addrs(h.addr.port());
    let node_client = venv::npm_dir("examples/node").join("client.js");

    let mut runs = Vec::new();
    let mut agents = Vec::new();
    for (i, (manifest, addr)) in addrs.iter().enumerate() {
        let (py_agent, js_agent) = (format!("{}", 1001 + 2 * i), format!("{}", 1002 + 2 * i));
        runs.push(run_in(python_example(addr, &py_agent, manifest)));
        runs.push(run_in(node_example(
            &node_client,
            addr,
            &js_agent,
            manifest,
        )));
        agents.push(py_agent);
        agents.push(js_agent);
    }
    let results = futures::future::join_all(runs).await;
    for ((summary, tmp, name), agent) in results.into_iter().zip(&agents) {
        check_summary(&summary, agent);
        assert_eq!(
            tmp.leftovers(),
            Vec::<String>::new(),
            "{name} left files in its TMPDIR"
        );
        assert!(!h.sim.signed_in(agent), "{agent} signed out by its example");
    }
    h.stop().await.expect("bridge stops cleanly");
}

/// Push mode (`--events push`): both examples, unchanged, with the same assertions as in poll
/// mode, while every event they see was pushed by the simulator and no agent was polled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_and_node_examples_run_the_same_in_push_mode() {
    let h = Harness::push(fast_sim(), |_| {}).await;
    let addr = format!("127.0.0.1:{}", h.addr.port());
    let node_client = venv::npm_dir("examples/node").join("client.js");
    let agents = ["1001", "1002"];
    let runs = vec![
        run_in(python_example(&addr, agents[0], "push mode")),
        run_in(node_example(&node_client, &addr, agents[1], "push mode")),
    ];
    let results = futures::future::join_all(runs).await;
    for ((summary, tmp, name), agent) in results.into_iter().zip(agents) {
        check_summary(&summary, agent);
        assert_eq!(tmp.leftovers(), Vec::<String>::new(), "{name} left files");
        assert!(!h.sim.signed_in(agent), "{agent} signed out by its example");
        let pushed: Vec<String> = h
            .sim
            .pushed(agent)
            .iter()
            .filter_map(|e| e["eventType"].as_str().map(str::to_owned))
            .collect();
        assert!(
            pushed.iter().any(|t| t == "AgentMediaEvent_Play_Succ"),
            "{agent}'s play events were pushed: {pushed:?}"
        );
    }
    assert!(
        h.sim
            .requests()
            .iter()
            .all(|r| !r.path.contains("/agentevent/")),
        "no agent was polled in push mode"
    );
    h.stop().await.expect("bridge stops cleanly");
}

/// No manifest, comments included, writes the app's address as a URL (`http://127.0.0.1:50051`):
/// grpcio ("Misformatted domain name") and grpc-js ("Name resolution failed") refuse that form,
/// and a reader copies comments as readily as values.
#[test]
fn no_manifest_writes_the_app_address_as_a_url() {
    let mut bad = Vec::new();
    for (name, text) in venv::manifests() {
        for (n, line) in text.lines().enumerate() {
            if ["://127.0.0.1:50051", "://localhost:50051", "://[::1]:50051"]
                .iter()
                .any(|url| line.contains(url))
            {
                bad.push(format!("{name}:{}: {}", n + 1, line.trim()));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "write gRPC's target syntax (127.0.0.1:50051), not a URL:\n{}",
        bad.join("\n")
    );
}
