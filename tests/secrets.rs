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

    let sim = SimConfig {
        auth: AuthMode::Dynamic {
            rotate_every: Duration::from_millis(100),
            strict: true,
            overlap: Duration::ZERO,
        },
        password: Some(PASSWORD.into()),
        ..fast_sim()
    };
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
    let metrics = h.metrics().await;
    h.stop().await.unwrap();

    let logs = String::from_utf8_lossy(&capture.0.lock().unwrap()).into_owned();
    assert!(
        logs.lines().count() > 100,
        "TRACE logging really captured: {}",
        logs.len()
    );
    assert!(guids.len() >= 2, "Guids rotated during the test");
    for (what, text) in [
        ("logs", &logs),
        ("errors", &errors.join("\n")),
        ("metrics", &metrics),
    ] {
        assert!(!text.contains(PASSWORD), "password in {what}");
        assert!(!text.contains("other-secret-pw"), "password in {what}");
        for g in &guids {
            // The UUID part alone must not appear either.
            let uuid = g.split('.').next().unwrap();
            assert!(!text.contains(uuid), "Guid {uuid} in {what}");
        }
    }
}
