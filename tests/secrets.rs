//! No Guid and no password may appear in any log line (all levels, every crate), error message
//! or `Debug` output. Its own test binary: it installs a global TRACE subscriber capturing
//! everything the bridge, the simulator, hyper, reqwest and rustls log.

#[path = "e2e/helpers.rs"]
mod helpers;

use ccgw_bridge::proto::*;
use ccgw_bridge::sim::{AuthMode, Fault, FaultKind, FaultMatch, Interface, SimConfig};
use helpers::*;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

const PASSWORD: &str = "Pa55-w0rd-never-logged";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_logs_errors_or_debug_output() {
    let capture = Capture::default();
    let writer = capture.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();

    let sim = rotating_sim();
    let h = Harness::with(sim, |_| {}).await;
    let mut sessions = h.sessions().await;
    let mut req = sign_in_request("1001");
    req.password = PASSWORD.into();
    let session = sessions.sign_in(req.clone()).await.unwrap().into_inner();
    let mut guids = std::collections::HashSet::new();
    let mut play = h.play().await;
    let mut errors = Vec::new();
    for i in 0..20 {
        if let Some(g) = h.sim.current_guid("1001") {
            guids.insert(g);
        }
        let r = play
            .begin_play(BeginPlayRequest {
                agent_id: "1001".into(),
                voice_path: format!("/prompts/{i}.wav"),
                ..Default::default()
            })
            .await;
        if let Err(e) = r {
            errors.push(format!("{e:?}"));
        }
        let _ = play
            .stop_play(StopPlayRequest {
                agent_id: "1001".into(),
            })
            .await;
    }
    // Failures too: a wrong password, a refused Guid, a malformed answer.
    let mut wrong = sign_in_request("1002");
    wrong.password = "other-secret-pw".into();
    errors.push(format!("{:?}", sessions.sign_in(wrong).await.unwrap_err()));
    h.sim.add_fault(Fault {
        matcher: FaultMatch::Interface(Interface::StopPlay),
        kind: FaultKind::MalformedBody,
        count: Some(1),
    });
    errors.push(format!(
        "{:?}",
        play.stop_play(StopPlayRequest {
            agent_id: "1001".into()
        })
        .await
    ));
    h.sim.kill_session("1001");
    errors.push(format!(
        "{:?}",
        play.pause_play(PausePlayRequest {
            agent_id: "1001".into()
        })
        .await
    ));
    if let Some(g) = h.sim.current_guid("1001") {
        guids.insert(g);
    }
    errors.push(format!("{session:?}"));
    errors.push(format!(
        "{:?}",
        h.sessions()
            .await
            .list_sessions(ListSessionsRequest {})
            .await
    ));
    sessions
        .sign_out(SignOutRequest {
            agent_id: "1001".into(),
        })
        .await
        .ok();
    let mut metrics = h.metrics().await;
    h.stop().await.unwrap();
    let tokens = push_mode(&mut guids, &mut errors, &mut metrics).await;

    let logs = String::from_utf8_lossy(&capture.0.lock().unwrap()).into_owned();
    assert!(
        logs.lines().count() > 100,
        "TRACE logging really captured: {}",
        logs.len()
    );
    assert!(guids.len() >= 4, "Guids rotated during the test");
    assert!(!tokens.is_empty(), "push sessions had tokens");
    for (what, text) in [
        ("logs", &logs),
        ("errors", &errors.join("\n")),
        ("metrics", &metrics),
    ] {
        assert!(!text.contains(PASSWORD), "password in {what}");
        for token in &tokens {
            assert!(!text.contains(token.as_str()), "service token in {what}");
        }
        assert!(!text.contains("other-secret-pw"), "password in {what}");
        for g in &guids {
            // The UUID part alone must not appear either.
            let uuid = g.split('.').next().unwrap();
            assert!(!text.contains(uuid), "Guid {uuid} in {what}");
        }
    }
}

/// Push mode (issue 24): a session with rotating Guids, pushed events, and callbacks refused
/// for their token, their Guid and their body. Returns the service tokens the bridge sent;
/// adds the Guids seen, the errors and the metrics.
async fn push_mode(
    guids: &mut std::collections::HashSet<String>,
    errors: &mut Vec<String>,
    metrics: &mut String,
) -> Vec<String> {
    let sim = rotating_sim();
    let h = Harness::push(sim, |_| {}).await;
    let mut req = sign_in_request("1001");
    req.password = PASSWORD.into();
    h.sessions().await.sign_in(req).await.unwrap();
    // The simulator's request log is a test instrument, not a log.
    let login = h
        .sim
        .wait_for_request(|r| r.path.ends_with("/onlineagent/1001"))
        .await;
    let body: serde_json::Value = serde_json::from_str(&login.body).unwrap();
    let token = body["serviceToken"].as_str().unwrap().to_owned();
    for i in 0..5 {
        h.sim.queue_event(
            "1001",
            serde_json::json!({"eventType": "AgentState_Busy", "workNo": "1001", "content": {"i": i}}),
        );
        h.sim.wait_pushed("1001", 3 + i).await;
        // Heartbeats carry the rotations.
        h.sim.clear_requests();
        h.sim
            .wait_for_request(|r| r.path.ends_with("/onlineagent/1001/handshake"))
            .await;
        guids.extend(h.sim.current_guid("1001"));
    }
    let guid = h.sim.current_guid("1001").unwrap();
    let client = reqwest::Client::builder()
        .tls_certs_only(reqwest::Certificate::from_pem_bundle(h.sim.ca_pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    let url = format!("https://{}{CALLBACK_PATH}/1001", h.callback.unwrap());
    for (token, guid, body) in [
        (token.as_str(), "bogus", "{}"),
        ("WrongToken", guid.as_str(), "{}"),
        (token.as_str(), guid.as_str(), "{not json"),
    ] {
        let answer = client
            .post(&url)
            .header("Guid", guid)
            .header("service_token", token)
            .body(body)
            .send()
            .await
            .unwrap();
        let head = format!("{answer:?}");
        errors.push(format!(
            "{head} {}",
            answer.text().await.unwrap_or_default()
        ));
    }
    metrics.push_str(&h.metrics().await);
    h.stop().await.unwrap();
    vec![token]
}

/// A simulator that checks the password and rotates every Guid every 100 ms under strict
/// Guids: the most secrets in flight, for the poll and push phases alike.
fn rotating_sim() -> SimConfig {
    SimConfig {
        auth: AuthMode::Dynamic {
            rotate_every: Duration::from_millis(100),
            strict: true,
            overlap: Duration::ZERO,
        },
        password: Some(PASSWORD.into()),
        ..fast_sim()
    }
}
