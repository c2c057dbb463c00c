//! Readiness tells the truth and says why: the rule for pinned agents held elsewhere, and one
//! log line per change with its reason and a hint, without dependency noise.

use crate::helpers::*;
use crate::ops::{health_watch, until_status};
use ccgw_bridge::sim::Simulator;
use ccgw_bridge::{run, Listeners};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tonic_health::pb::health_check_response::ServingStatus;

/// Issue 11 point 1: a pinned agent that another client holds (`100-002`, e.g. the old pod of a
/// rolling update) must not keep this bridge un-Ready, or the update never completes. A pinned
/// agent that is simply not signed in does.
#[tokio::test]
async fn a_pinned_agent_held_elsewhere_does_not_block_readiness() {
    let old = Harness::start().await;
    old.sign_in("1001").await;

    let mut config = config_for(&old.sim);
    config.agents.push(pinned_agent("1001"));
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_addr = admin.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let new = tokio::spawn(run(
        Listeners {
            grpc,
            admin: Some(admin),
            callback: None,
        },
        config,
        async move {
            let _ = stopped.await;
        },
    ));
    let mut health = health_watch(admin_addr, "").await;
    until_status(&mut health, ServingStatus::Serving).await;
    let readyz = reqwest::get(format!("http://{admin_addr}/readyz"))
        .await
        .unwrap();
    assert_eq!(readyz.status(), 200);
    let logins = old
        .sim
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/onlineagent/1001"))
        .count();
    assert!(
        logins >= 2,
        "the new bridge tried to sign 1001 in too ({logins} logins)"
    );
    assert!(old.sim.signed_in("1001"), "the old holder was not kicked");
    // Its metrics say the same: ready, and the pinned agent not held here (state `ended`).
    let text = reqwest::get(format!("http://{admin_addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let metric = |name: &str| crate::guid::metric(&text, name);
    assert_eq!(metric("ccgw_ready"), 1.0, "{text}");
    assert_eq!(metric(r#"ccgw_sessions{state="ended"}"#), 1.0, "{text}");
    assert_eq!(metric(r#"ccgw_sessions{state="signed_in"}"#), 0.0, "{text}");
    let _ = stop.send(());
    new.await.unwrap().unwrap();
}

fn free_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Runs the bridge binary with the default log filter until its first "readiness changed"
/// line, then three more readiness ticks (one per second), and returns everything it logged.
async fn log_of_unready_bridge(gateway_args: &[&str]) -> Vec<String> {
    let (grpc, admin) = (free_addr(), free_addr());
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_ccgw-bridge"));
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy().into_owned();
        if name.starts_with("CCGW_") || name == "RUST_LOG" {
            cmd.env_remove(name);
        }
    }
    let mut child = cmd
        .args(gateway_args)
        .args(["--listen", &grpc.to_string()])
        .args(["--admin-listen", &admin.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut log = Vec::new();
    let mut seen_at: Option<Instant> = None;
    // Absence of repeats can only be observed over time: three re-checks after the change.
    let window = Duration::from_millis(3500);
    loop {
        let limit = match seen_at {
            Some(t) => window.saturating_sub(t.elapsed()),
            None => Duration::from_secs(20),
        };
        match tokio::time::timeout(limit, lines.next_line()).await {
            Ok(Ok(Some(line))) => {
                if seen_at.is_none() && line.contains("readiness changed") {
                    seen_at = Some(Instant::now());
                }
                log.push(line);
            }
            Ok(_) => panic!("the bridge exited early: {log:#?}"),
            Err(_) if seen_at.is_some() => break,
            Err(_) => panic!("no readiness line within 20 s: {log:#?}"),
        }
    }
    let start = log
        .iter()
        .find(|l| l.contains("ccgw-bridge serving"))
        .unwrap_or_else(|| panic!("a start line: {log:#?}"));
    assert!(
        start.contains(&format!("listen={grpc}")) && start.contains(&format!("admin={admin}")),
        "the start line names both addresses: {start}"
    );
    child.kill().await.unwrap();
    log
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_gateway_certificate_is_logged_once_with_the_ca_cert_hint() {
    let sim = Simulator::start(fast_sim(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    // No --ca-cert: the simulator's certificate is signed by a CA nobody trusts.
    let log = log_of_unready_bridge(&["--gateway-url", &sim.url()]).await;
    let changes: Vec<&String> = log
        .iter()
        .filter(|l| l.contains("readiness changed"))
        .collect();
    assert_eq!(changes.len(), 1, "one line per change: {log:#?}");
    let line = changes[0];
    assert!(line.contains("not ready"), "{line}");
    assert!(line.contains("gateway unreachable"), "{line}");
    assert!(line.contains("UnknownIssuer"), "names the cause: {line}");
    assert!(line.contains("--ca-cert"), "hints at the fix: {line}");
    for l in &log {
        assert!(
            l.contains("ccgw_bridge"),
            "only the bridge's own lines at the default level: {l}"
        );
        assert!(!l.contains("ERROR"), "no error spam: {l}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_is_logged_once_with_its_cause() {
    // Nothing listens on this port.
    let url = format!("https://{}", free_addr());
    let log = log_of_unready_bridge(&["--gateway-url", &url]).await;
    let changes: Vec<&String> = log
        .iter()
        .filter(|l| l.contains("readiness changed"))
        .collect();
    assert_eq!(changes.len(), 1, "one line per change: {log:#?}");
    let line = changes[0];
    assert!(line.contains("gateway unreachable"), "{line}");
    assert!(
        line.to_lowercase().contains("connection refused"),
        "names the cause: {line}"
    );
    assert!(
        line.contains("hint: nothing listens at --gateway-url"),
        "{line}"
    );
}
