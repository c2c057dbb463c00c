//! The agent lifecycle after lost answers, DR retcodes and other clients' sign-ins: the bridge's
//! view of an agent ends up agreeing with the gateway's, and it never fights another client.

use crate::helpers::*;
use ccgw_bridge::proto::*;
use ccgw_bridge::sim::{AuthMode, Fault, FaultKind, FaultMatch, Interface, SimConfig, Simulator};
use std::time::Duration;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

/// Bound for things that happen "within a few seconds" (a hang guard, not a speed assertion).
const SETTLE: Duration = Duration::from_secs(10);

/// Strict dynamic auth whose automatic rotations never happen during a test.
fn strict_dynamic() -> SimConfig {
    SimConfig {
        auth: AuthMode::Dynamic {
            rotate_every: Duration::from_secs(3600),
            strict: true,
            overlap: Duration::ZERO,
        },
        ..fast_sim()
    }
}

fn count(h: &Harness, suffix: &str, agent: &str) -> usize {
    h.sim
        .requests()
        .iter()
        .filter(|r| r.method == "PUT" && r.path.ends_with(&format!("/onlineagent/{agent}{suffix}")))
        .count()
}

fn logins(h: &Harness, agent: &str) -> usize {
    count(h, "", agent)
}

fn forcelogins(h: &Harness, agent: &str) -> usize {
    count(h, "/forcelogin", agent)
}

/// Requests whose path ends with `suffix`.
fn count_path(h: &Harness, suffix: &str) -> usize {
    h.sim
        .requests()
        .iter()
        .filter(|r| r.path.ends_with(suffix))
        .count()
}

fn plays(h: &Harness, agent: &str) -> usize {
    h.sim
        .requests()
        .iter()
        .filter(|r| r.path.ends_with(&format!("/recordplay/{agent}/play")))
        .count()
}

/// Waits for the end of a stream: `Ok` when it completed, the status when it failed.
async fn stream_end<T>(w: &mut tonic::Streaming<T>) -> Result<(), tonic::Status> {
    tokio::time::timeout(SETTLE, async {
        loop {
            match w.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return Ok(()),
                Err(s) => return Err(s),
            }
        }
    })
    .await
    .expect("the stream ends within the settle bound")
}

/// The first request matching `pred`, waited for within the settle bound.
async fn request(
    h: &Harness,
    pred: impl Fn(&ccgw_bridge::sim::RecordedRequest) -> bool,
) -> ccgw_bridge::sim::RecordedRequest {
    request_of(&h.sim, pred).await
}

/// [`request`] for a simulator without a bridge harness.
async fn request_of(
    sim: &Simulator,
    pred: impl Fn(&ccgw_bridge::sim::RecordedRequest) -> bool,
) -> ccgw_bridge::sim::RecordedRequest {
    tokio::time::timeout(SETTLE, sim.wait_for_request(pred))
        .await
        .expect("the request arrives within the settle bound")
}

/// Finding 1 under the one rule (issue 22, rule 4): the poll answer carrying the rotated Guid
/// is lost; under strict Guids the gateway refuses the old one while it still counts the agent
/// signed in. The bridge holds no Guid that works for that session, so it cannot end it: the
/// `logout` with the old Guid is refused, the plain `login` meets `100-002`, and the caller
/// hears an honest ALREADY_EXISTS (never a `forcelogin`). Once the gateway's idle sign-out has
/// ended the orphan (the simulator's control here), the next call signs in plainly and plays.
#[tokio::test]
async fn a_lost_guid_rotation_under_strict_guids_waits_for_the_gateway_and_never_forces() {
    let h = Harness::with(strict_dynamic(), |_| {}).await;
    let first = h.sign_in("1001").await;
    let mut w = h.watch_all("1001").await;
    h.sim.clear_requests();
    h.sim.rotate_guid_lost("1001");
    // The old session ends once the bridge's poll is refused.
    let _ = stream_end(&mut w).await;
    begin_play_refused(&h, "1001", Code::AlreadyExists, "AGENT_ALREADY_SIGNED_IN").await;
    assert_eq!(forcelogins(&h, "1001"), 0, "{:?}", h.sim.requests());
    assert_eq!(plays(&h, "1001"), 0);
    // The gateway's idle sign-out ends the orphan.
    h.sim.kill_session("1001");
    h.play()
        .await
        .begin_play(with_deadline(play_request("1001"), Duration::from_secs(5)))
        .await
        .expect("a free agent is signed in again plainly");
    assert_eq!(forcelogins(&h, "1001"), 0, "{:?}", h.sim.requests());
    assert_eq!(plays(&h, "1001"), 1, "one play on the wire");
    let s = h.session("1001").await;
    assert_eq!(s.state, SessionState::SignedIn as i32);
    assert_ne!(s.session_id, first.session_id);
}

/// Issue 22 path 3 (fails on 7c74dba: `login`, `login`, `forcelogin`): strict Guids, a lost
/// rotation, the bridge's re-sign-in meets a 503; then an administrator signs the orphan out
/// and a person signs the agent in at once, well within the gateway's idle limit. The next
/// BeginPlay must not kick the person: plain `login`, `100-002`, ALREADY_EXISTS.
#[tokio::test]
async fn a_stale_take_over_right_never_kicks_a_person() {
    let h = Harness::with(strict_dynamic(), |_| {}).await;
    orphan_after_a_lost_rotation(&h, "1001").await;
    // An administrator signs the orphan out; a person signs in from a softphone.
    h.sim.force_sign_out("1001");
    h.sim
        .sign_in_elsewhere("1001", false)
        .expect("the person signs in");
    let person = h.sim.current_guid("1001");
    h.sim.clear_requests();
    begin_play_refused(&h, "1001", Code::AlreadyExists, "AGENT_ALREADY_SIGNED_IN").await;
    assert_eq!(forcelogins(&h, "1001"), 0, "{:?}", h.sim.requests());
    assert_eq!(
        h.sim.current_guid("1001"),
        person,
        "the person's session is kept"
    );
    assert_eq!(h.sim.stats().other_clients_kicked, 0);
    assert_eq!(plays(&h, "1001"), 0);
}

/// Issue 17 defect 2 under the one rule: a call refused for its Guid while polls are still
/// answered replaces the session: its own Guid's `logout` first (the gateway holds it, so a
/// plain `login` would meet `100-002`), then a plain `login`, never `forcelogin`. When that
/// login fails (a 503) the call answers UNAVAILABLE (it did not take effect), the old session
/// is gone at the gateway (it was logged out), and the next call signs in again and works.
#[tokio::test]
async fn a_failed_re_sign_in_after_a_call_refusal_forces_nothing_and_the_next_call_works() {
    let h = Harness::start().await;
    let first = h.sign_in("1001").await;
    h.sim.add_fault(Fault {
        matcher: FaultMatch::Interface(Interface::Play),
        kind: FaultKind::Retcode {
            retcode: "000-003".into(),
            message: String::new(),
        },
        count: Some(1),
    });
    h.sim.add_fault(Fault {
        matcher: FaultMatch::Interface(Interface::Login),
        kind: FaultKind::HttpStatus(503),
        count: Some(1),
    });
    h.sim.clear_requests();
    expect_code(
        h.play().await.begin_play(play_request("1001")).await,
        Code::Unavailable,
    );
    assert_eq!((logins(&h, "1001"), forcelogins(&h, "1001")), (1, 0));
    assert_eq!(
        count_path(&h, "/onlineagent/1001/logout"),
        1,
        "own Guid's logout"
    );
    assert!(
        !h.sim.signed_in("1001"),
        "the replaced session was logged out"
    );
    h.play()
        .await
        .begin_play(play_request("1001"))
        .await
        .expect("the next call signs in again");
    assert_eq!((logins(&h, "1001"), forcelogins(&h, "1001")), (2, 0));
    assert_ne!(h.session("1001").await.session_id, first.session_id);
    assert_eq!(h.sim.stats().other_clients_kicked, 0);
}

/// Issue 17 defect 5 under the one rule: after a lost rotation (strict Guids) the gateway
/// still holds the bridge's session under a Guid the bridge never saw. A SignOut can end it
/// only with a Guid that works: it sends the old Guid's `logout` (refused: it can end nobody's
/// session) and never `forcelogin`; the orphan ends at the gateway's idle sign-out.
#[tokio::test]
async fn a_sign_out_after_a_lost_rotation_forces_nothing() {
    let h = Harness::with(strict_dynamic(), |_| {}).await;
    orphan_after_a_lost_rotation(&h, "1001").await;
    assert!(h.sim.signed_in("1001"), "the orphan");
    h.sessions()
        .await
        .sign_out(SignOutRequest {
            agent_id: "1001".into(),
        })
        .await
        .expect("signed out here");
    assert_eq!(forcelogins(&h, "1001"), 0);
    assert_eq!(count_path(&h, "/onlineagent/1001/logout"), 1);
    assert!(h.sim.signed_in("1001"), "until the gateway's idle sign-out");
}

/// Issue 17 defect 7: an agent whose session the gateway ended, and that no keep-signed-in
/// needs, is forgotten (session, events, password) once its time is up, instead of being kept
/// for ever. The reaper runs on its own clock, so the test asks until it has run (bounded).
#[tokio::test]
async fn an_ended_agent_is_forgotten_after_its_time() {
    let h = Harness::with(fast_sim(), |c| {
        c.sessions.gateway_idle_timeout = Duration::from_millis(100);
        c.sessions.dead_slot_ttl = Duration::from_millis(100);
    })
    .await;
    h.sign_in("1001").await;
    let mut w = h.watch_all("1001").await;
    h.sim.kill_session("1001");
    let _ = stream_end(&mut w).await;
    tokio::time::timeout(SETTLE, async {
        let mut sessions = h.sessions().await;
        loop {
            let view = sessions
                .get_session(GetSessionRequest {
                    agent_id: "1001".into(),
                })
                .await;
            match view {
                Err(s) if s.code() == Code::NotFound => return,
                Ok(v) => assert_eq!(v.into_inner().state, SessionState::Ended as i32),
                Err(s) => panic!("{s:?}"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the ended agent is forgotten within the settle bound");
    assert!(h
        .metrics()
        .await
        .contains("ccgw_sessions{state=\"ended\"} 0"));
}

/// Issue 22 rule 2 at shutdown: a DR "sign in again" leaves the bridge's session at the
/// gateway, reachable with its own Guid; when re-signing in fails, the drain logs that orphan
/// out with its Guid, so no agent of the bridge's is left signed in, and nothing is forced.
#[tokio::test]
async fn the_drain_logs_an_orphan_out_with_its_own_guid() {
    let mut h = Harness::start().await;
    h.sign_in("1001").await;
    let mut w = h.watch_all("1001").await;
    // The re-sign-in's logout and login are refused, so the orphan stays.
    for iface in [Interface::Logout, Interface::Login] {
        h.sim.add_fault(Fault {
            matcher: FaultMatch::Interface(iface),
            kind: FaultKind::HttpStatus(503),
            count: Some(1),
        });
    }
    h.sim.clear_requests();
    h.sim.require_sign_in_again("1001", "105-005");
    let _ = stream_end(&mut w).await;
    request(&h, |r| {
        r.method == "PUT" && r.path.ends_with("/onlineagent/1001")
    })
    .await;
    assert!(h.sim.signed_in("1001"), "the orphan");
    h.begin_stop();
    h.stopped().await.expect("drained");
    assert!(!h.sim.signed_in("1001"), "{:?}", h.sim.requests());
    assert_eq!(forcelogins(&h, "1001"), 0);
}

/// Issue 17 defect 3, the other side: a lost sign-in answer while the bridge knows another
/// client holds the agent (its last login got `100-002`) may just as well have been that
/// client's `100-002`, so it is no take-over proof: keep-signed-in goes on with plain logins
/// and the person's session is never kicked.
#[tokio::test]
async fn a_lost_sign_in_answer_while_a_person_holds_the_agent_is_no_proof() {
    let sim = Simulator::start(fast_sim(), "127.0.0.1:0".parse().unwrap())
        .await
        .expect("simulator starts");
    sim.sign_in_elsewhere("1005", false)
        .expect("the person signs in");
    let mut config = config_for(&sim);
    config.agents.push(pinned_agent("1005"));
    config.sessions.resign_backoff_max = Duration::from_millis(200);
    let h = Harness::bridge(sim, config).await;
    let login = |r: &ccgw_bridge::sim::RecordedRequest| {
        r.method == "PUT" && r.path.ends_with("/onlineagent/1005")
    };
    // Keep-signed-in's attempts are sequential: once the second is seen, the first was
    // answered `100-002`; the next one loses its answer.
    for _ in 0..2 {
        request(&h, login).await;
        h.sim.clear_requests();
    }
    h.sim.add_fault(Fault {
        matcher: FaultMatch::Interface(Interface::Login),
        kind: FaultKind::DropAfterEffect,
        count: Some(1),
    });
    for _ in 0..3 {
        request(&h, login).await;
        h.sim.clear_requests();
    }
    assert_eq!(h.sim.stats().other_clients_kicked, 0);
    assert!(h.sim.held_by_other_client("1005"));
}

/// Finding 1 for a pinned agent under the one rule: after a lost rotation (strict Guids)
/// keep-signed-in retries plain logins with back-off while the gateway holds the orphan
/// (`100-002`), never `forcelogin`, and signs the agent in once the gateway has ended it.
#[tokio::test]
async fn a_pinned_agent_waits_out_a_lost_guid_rotation_without_forcing() {
    let h = Harness::with(strict_dynamic(), |c| {
        c.agents.push(pinned_agent("1005"));
        c.sessions.resign_backoff_max = Duration::from_millis(200);
    })
    .await;
    request(&h, |r| r.path.ends_with("/agentevent/1005")).await;
    let guid = h.sim.current_guid("1005").expect("signed in");
    h.sim.clear_requests();
    h.sim.rotate_guid_lost("1005");
    let login = |r: &ccgw_bridge::sim::RecordedRequest| {
        r.method == "PUT" && r.path.ends_with("/onlineagent/1005")
    };
    // Two plain logins refused `100-002`: keep-signed-in waits, it does not force.
    for _ in 0..2 {
        request(&h, login).await;
        h.sim.clear_requests();
    }
    assert_eq!(forcelogins(&h, "1005"), 0);
    // The gateway's idle sign-out ends the orphan; the next attempt signs the agent in.
    h.sim.kill_session("1005");
    let new_guid = tokio::time::timeout(SETTLE, async {
        loop {
            if let Some(g) = h.sim.current_guid("1005").filter(|g| *g != guid) {
                return g;
            }
            h.sim.wait_for_request(login).await;
        }
    })
    .await
    .expect("signed in again within the settle bound");
    request(&h, |r| {
        r.path.ends_with("/agentevent/1005") && r.header("guid") == Some(new_guid.as_str())
    })
    .await;
    assert_eq!(forcelogins(&h, "1005"), 0);
}

/// Finding 2: the sign-out reached the gateway but its answer was lost. The bridge's view
/// agrees with the gateway's: signed out, streams ended.
#[tokio::test]
async fn a_sign_out_whose_answer_is_lost_leaves_no_zombie() {
    let h = Harness::start().await;
    h.sign_in("1001").await;
    let mut w = h.watch_all("1001").await;
    h.sim.add_fault(Fault {
        matcher: FaultMatch::Interface(Interface::Logout),
        kind: FaultKind::DropAfterEffect,
        count: Some(1),
    });
    let answer = h
        .sessions()
        .await
        .sign_out(SignOutRequest {
            agent_id: "1001".into(),
        })
        .await;
    assert!(!h.sim.signed_in("1001"));
    let _ = stream_end(&mut w).await;
    // Whatever SignOut answered, the bridge no longer reports the agent signed in.
    let view = h
        .sessions()
        .await
        .get_session(GetSessionRequest {
            agent_id: "1001".into(),
        })
        .await;
    match view {
        Ok(s) => assert_eq!(s.into_inner().state, SessionState::Ended as i32),
        Err(s) => assert!(
            matches!(s.code(), Code::NotFound | Code::FailedPrecondition),
            "{s:?}"
        ),
    }
    answer.expect("a lost answer to a sign-out that took effect is found out and answered OK");
}

/// Finding 2, the other outcome: the sign-out never reached the gateway. The bridge sends it
/// again (a sign-out is safe to repeat) and the agent is out.
#[tokio::test]
async fn a_sign_out_lost_before_the_gateway_is_sent_again() {
    let h = Harness::start().await;
    h.sign_in("1001").await;
    let mut w = h.watch_all("1001").await;
    h.sim.add_fault(Fault {
        matcher: FaultMatch::Interface(Interface::Logout),
        kind: FaultKind::DropConnection,
        count: Some(1),
    });
    h.sessions()
        .await
        .sign_out(SignOutRequest {
            agent_id: "1001".into(),
        })
        .await
        .expect("signed out");
    assert!(!h.sim.signed_in("1001"));
    assert!(
        stream_end(&mut w).await.is_ok(),
        "sign-out completes streams"
    );
}

/// Finding 3: a DR retcode on the poll means "sign in again": with held credentials the bridge
/// does, ending its own stale session with that session's Guid (`logout`), then a plain
/// `login`; never `forcelogin`.
#[tokio::test]
async fn dr_retcodes_on_polls_sign_the_agent_in_again() {
    for retcode in ["105-005", "105-006", "105-007"] {
        let h = Harness::start().await;
        let first = h.sign_in("1001").await;
        let mut w = h.watch_all("1001").await;
        h.sim.clear_requests();
        h.sim.require_sign_in_again("1001", retcode);
        let status = stream_end(&mut w).await.expect_err("the old session ended");
        assert_eq!(reason(&status), "SESSION_ENDED", "{retcode}");
        let logout = request(&h, |r| r.path.ends_with("/onlineagent/1001/logout")).await;
        assert!(
            logout.header("guid").is_some(),
            "the old session's own Guid"
        );
        request(&h, |r| {
            r.method == "PUT" && r.path.ends_with("/onlineagent/1001")
        })
        .await;
        let new_guid = h.sim.current_guid("1001").expect("signed in again");
        request(&h, |r| {
            r.path.ends_with("/agentevent/1001") && r.header("guid") == Some(new_guid.as_str())
        })
        .await;
        let s = h.session("1001").await;
        assert_eq!(s.state, SessionState::SignedIn as i32, "{retcode}");
        assert_ne!(s.session_id, first.session_id);
        assert_eq!(forcelogins(&h, "1001"), 0, "{retcode}");
        h.play()
            .await
            .begin_play(play_request("1001"))
            .await
            .expect("the new session works");
    }
}

/// Finding 3 without held credentials: the session ends with a clear status.
#[tokio::test]
async fn dr_retcodes_without_credentials_end_the_session() {
    let h = Harness::with(fast_sim(), |c| c.sessions.hold_credentials = false).await;
    h.sign_in("1001").await;
    let mut w = h.watch_all("1001").await;
    h.sim.require_sign_in_again("1001", "105-006");
    let status = stream_end(&mut w).await.expect_err("the session ended");
    assert_eq!(reason(&status), "SESSION_ENDED");
    begin_play_refused(&h, "1001", Code::FailedPrecondition, "AGENT_NOT_SIGNED_IN").await;
    assert_eq!((logins(&h, "1001"), forcelogins(&h, "1001")), (1, 0));
}

/// Issue 11 point 1: a pinned agent kicked by another client's `forcelogin` (the bridge gets
/// the sign-out event) is never forced back; keep-signed-in retries a plain `login`.
#[tokio::test]
async fn a_kicked_pinned_agent_is_never_forced_back() {
    let h = Harness::with(fast_sim(), |c| {
        c.agents.push(pinned_agent("1005"));
        c.sessions.resign_backoff_max = Duration::from_millis(200);
    })
    .await;
    request(&h, |r| r.path.ends_with("/agentevent/1005")).await;
    h.sim.clear_requests();
    h.sim.sign_in_elsewhere("1005", true).expect("taken over");
    // Two plain logins (refused with 100-002) prove the retry loop runs.
    for _ in 0..2 {
        request(&h, |r| {
            r.method == "PUT" && r.path.ends_with("/onlineagent/1005")
        })
        .await;
        assert_eq!(forcelogins(&h, "1005"), 0, "{:?}", h.sim.requests());
        h.sim.clear_requests();
    }
}

/// Issue 11 point 1: the bridge's Guid is refused after another client signed the agent in
/// (no sign-out event). A caller's next call does not take the agent over.
#[tokio::test]
async fn a_guid_refused_after_another_sign_in_is_not_taken_over() {
    let h = Harness::start().await;
    h.sign_in("1001").await;
    let mut w = h.watch_all("1001").await;
    h.sim.kill_session("1001");
    h.sim
        .sign_in_elsewhere("1001", false)
        .expect("signed in elsewhere");
    let _ = stream_end(&mut w).await;
    h.sim.clear_requests();
    begin_play_refused(&h, "1001", Code::AlreadyExists, "AGENT_ALREADY_SIGNED_IN").await;
    assert_eq!((logins(&h, "1001"), forcelogins(&h, "1001")), (1, 0));
    assert_eq!(plays(&h, "1001"), 0);
}

/// Finding 9: with `--no-sign-out-on-shutdown` the agents stay signed in for a replacement
/// instance, so the draining bridge stops polling at once: an event queued during the drain
/// stays at the gateway instead of being taken and lost with the closed streams.
#[tokio::test]
async fn without_sign_out_on_shutdown_polling_stops_when_the_drain_starts() {
    let mut h = Harness::with(fast_sim(), |c| c.sign_out_on_shutdown = false).await;
    h.sign_in("1001").await;
    let mut w = h.watch_all("1001").await;
    // An unary call in flight (one that makes no events) keeps the drain open meanwhile.
    h.sim.add_fault(Fault {
        matcher: FaultMatch::Interface(Interface::StopPlay),
        kind: FaultKind::Latency(Duration::from_secs(1)),
        count: Some(1),
    });
    let mut play = h.play().await;
    let call = tokio::spawn(async move {
        play.stop_play(StopPlayRequest {
            agent_id: "1001".into(),
        })
        .await
    });
    request(&h, |r| r.path.ends_with("/stopplay")).await;
    h.begin_stop();
    stream_end(&mut w)
        .await
        .expect_err("the drain ends streams");
    h.sim.queue_event(
        "1001",
        serde_json::json!({"eventType": "AgentState_Ready", "workNo": "1001", "content": null}),
    );
    // Answered (nothing was playing: a refusal), not cut off.
    let answered = call.await.unwrap();
    assert_ne!(
        answered.map_err(|s| s.code()).err(),
        Some(Code::Unavailable)
    );
    h.stopped().await.expect("drained");
    assert_eq!(
        h.sim.pending_events("1001"),
        1,
        "the event waits for the next holder"
    );
    assert!(h.sim.signed_in("1001"));
}

/// Issue 11 point 1: a call refused for its Guid before the poll loop hears of the kick (the
/// poll's answer is slow) does not take the agent over from the client that now holds it.
#[tokio::test]
async fn a_call_refused_before_the_poll_hears_of_a_kick_does_not_take_over() {
    let h = Harness::start().await;
    h.sign_in("1001").await;
    h.sim.add_fault(Fault {
        matcher: FaultMatch::Interface(Interface::Poll),
        kind: FaultKind::Latency(Duration::from_secs(3)),
        count: None,
    });
    // The poll in flight from now on is a slow one.
    h.sim.clear_requests();
    request(&h, |r| r.path.ends_with("/agentevent/1001")).await;
    h.sim.kill_session("1001");
    h.sim
        .sign_in_elsewhere("1001", false)
        .expect("signed in elsewhere");
    h.sim.clear_requests();
    begin_play_refused(&h, "1001", Code::AlreadyExists, "AGENT_ALREADY_SIGNED_IN").await;
    assert_eq!((logins(&h, "1001"), forcelogins(&h, "1001")), (1, 0));
}

/// Finding 7: after a Guid refusal, a poll that fails in transit settles nothing. The call waits
/// for the next answered poll, which brings the new Guid, and is sent again with it: no needless
/// sign-in (the old code took the failed poll for "no rotation" and forcelogin'd).
#[tokio::test]
async fn a_failed_poll_is_not_taken_for_no_rotation() {
    let h = Harness::with(strict_dynamic(), |_| {}).await;
    h.sign_in("1001").await;
    // Once the sign-in's own events are read, polls are held (nothing pending).
    let mut w = h.watch_all("1001").await;
    while w.message().await.unwrap().unwrap().event_type != "AgentState_Ready" {}
    const POLL: &str = "/agentevent/1001";
    // The next poll is held, then its answer is lost (it carries no rotation: none is due).
    h.sim.add_fault(Fault {
        matcher: FaultMatch::Interface(Interface::Poll),
        kind: FaultKind::DropAfterEffect,
        count: Some(1),
    });
    h.sim.clear_requests();
    request(&h, |r| r.path.ends_with(POLL)).await;
    h.sim.clear_requests();
    // While it is held, a call is refused for its Guid.
    h.sim.add_fault(Fault {
        matcher: FaultMatch::Interface(Interface::Play),
        kind: FaultKind::Retcode {
            retcode: "100-006".into(),
            message: String::new(),
        },
        count: Some(1),
    });
    let mut play = h.play().await;
    let call = tokio::spawn(async move { play.begin_play(play_request("1001")).await });
    // The poll after the failed one delivers a rotation.
    request(&h, |r| r.path.ends_with(POLL)).await;
    h.sim.rotate_guid("1001");
    call.await
        .unwrap()
        .expect("sent again with the rotated Guid");
    assert_eq!((logins(&h, "1001"), forcelogins(&h, "1001")), (0, 0));
    assert_eq!(plays(&h, "1001"), 2, "refused once, sent again once");
}

/// Finding 9: a readiness re-check that hangs (the gateway accepts the probe and never answers,
/// up to the connect timeout) must not hold back the drain: NOT_SERVING and the end of the event
/// streams come at once. The probe here outlives the test, so the old drain (which awaited the
/// re-check first) never reports NOT_SERVING.
#[tokio::test]
async fn a_hanging_readiness_probe_does_not_delay_the_drain() {
    let mut h = Harness::with(fast_sim(), |c| {
        c.gateway.connect_timeout = Duration::from_secs(3600);
    })
    .await;
    let mut health = crate::ops::health_watch(h.admin, "").await;
    crate::ops::until_status(&mut health, ServingStatus::Serving).await;
    // While idle the bridge probes the gateway every second; the next probe hangs. The fault
    // goes in before the log is cleared, so any probe logged afterwards is caught by it.
    h.sim.add_fault(Fault {
        matcher: FaultMatch::Interface(Interface::Other),
        kind: FaultKind::Latency(Duration::from_secs(3600)),
        count: None,
    });
    h.sim.clear_requests();
    request(&h, |r| {
        r.method == "GET" && r.path == "/agentgateway/resource"
    })
    .await;
    // The re-check is now stuck in that probe; an agent with a stream is signed in meanwhile.
    h.sign_in("1001").await;
    let mut w = h.watch_all("1001").await;

    h.begin_stop();
    crate::ops::until_status(&mut health, ServingStatus::NotServing).await;
    let end = stream_end(&mut w)
        .await
        .expect_err("the drain ends streams");
    assert_eq!(end.code(), Code::Unavailable, "{end:?}");
    h.stopped().await.expect("drained");
}

/// Finding 7: a call without a client deadline whose Guid refusals never settle (no poll is
/// answered, no newer Guid comes) ends at the call budget with a reason naming it, instead of
/// up to 16 × (2 s + 30 s) of retries; it stops after the one refused attempt, without ending
/// the session for a sign-in it could no longer send.
#[tokio::test]
async fn a_call_without_deadline_ends_at_the_call_budget() {
    let h = Harness::with(fast_sim(), |c| {
        c.sessions.call_budget = Duration::from_millis(500);
    })
    .await;
    h.sign_in("1001").await;
    refusals_never_settle(&h, "1001", None).await;
    let status = expect_code(
        h.play().await.begin_play(play_request("1001")).await,
        Code::DeadlineExceeded,
    );
    assert_eq!(reason(&status), "CALL_BUDGET_EXCEEDED", "{status:?}");
    assert!(status.message().contains("500ms"), "{status:?}");
    assert_eq!(plays(&h, "1001"), 1, "one attempt, refused");
    assert_eq!(logins(&h, "1001") + forcelogins(&h, "1001"), 0);
    assert!(h.sim.signed_in("1001"));
}

/// Issue 17 point 11: a call *with* a client deadline that runs out while its Guid refusal is
/// unsettled (no poll is answered, no newer Guid comes) no longer ends its session: the
/// re-sign-in it would need cannot be sent in time, and the running session is kept until a
/// new one is signed in (the call answers DEADLINE_EXCEEDED, nothing else sent).
#[tokio::test]
async fn a_call_whose_deadline_runs_out_unsettled_keeps_the_session() {
    let h = Harness::start().await;
    let first = h.sign_in("1001").await;
    refusals_never_settle(&h, "1001", Some(1)).await;
    expect_code(
        h.play()
            .await
            .begin_play(with_deadline(
                play_request("1001"),
                Duration::from_millis(500),
            ))
            .await,
        Code::DeadlineExceeded,
    );
    assert_eq!(logins(&h, "1001") + forcelogins(&h, "1001"), 0);
    let s = h.session("1001").await;
    assert_eq!(
        (s.state, s.session_id.as_str()),
        (SessionState::SignedIn as i32, first.session_id.as_str())
    );
}

/// Issue 12 goal 7: agents-file agents are signed in at start at most `--sign-in-concurrency`
/// at a time. The simulator answers each login late (simulated gateway latency) so that
/// unbounded sign-ins would overlap, and counts how many are in progress at once.
#[tokio::test]
async fn pinned_agents_sign_in_at_most_the_concurrency_at_once() {
    const LIMIT: usize = 3;
    let sim = Simulator::start(fast_sim(), "127.0.0.1:0".parse().unwrap())
        .await
        .expect("simulator starts");
    sim.add_fault(Fault {
        matcher: FaultMatch::Interface(Interface::Login),
        kind: FaultKind::Latency(Duration::from_millis(50)),
        count: None,
    });
    let agents: Vec<String> = (2001..2013).map(|id| id.to_string()).collect();
    let mut config = config_for(&sim);
    config.sessions.sign_in_concurrency = LIMIT;
    config.agents = agents.iter().map(|a| pinned_agent(a)).collect();
    let h = Harness::bridge(sim, config).await;
    for agent in &agents {
        let poll = format!("/agentevent/{agent}");
        request(&h, |r| r.path.ends_with(&poll)).await;
    }
    let stats = h.sim.stats();
    assert_eq!(stats.sign_ins, agents.len() as u64);
    assert!(
        (1..=LIMIT as u64).contains(&stats.max_concurrent_sign_ins),
        "{} sign-ins at once",
        stats.max_concurrent_sign_ins
    );
}

/// Signs `agent` in (strict dynamic auth), then loses the poll answer carrying its next Guid;
/// the bridge's immediate re-sign-in meets a 503. Returns once the poll refused for the lost
/// Guid (the session's last request with it) and the failed sign-in were sent: the gateway
/// still holds the bridge's session under a Guid the bridge never saw.
async fn orphan_after_a_lost_rotation(h: &Harness, agent: &str) {
    h.sign_in(agent).await;
    let mut w = h.watch_all(agent).await;
    let lost_guid = h.sim.current_guid(agent).expect("signed in");
    h.sim.add_fault(Fault {
        matcher: FaultMatch::Interface(Interface::Login),
        kind: FaultKind::HttpStatus(503),
        count: Some(1),
    });
    h.sim.clear_requests();
    h.sim.rotate_guid_lost(agent);
    let _ = stream_end(&mut w).await;
    let poll = format!("/agentevent/{agent}");
    request(h, |r| {
        r.path.ends_with(&poll) && r.header("guid") == Some(lost_guid.as_str())
    })
    .await;
    let login = format!("/onlineagent/{agent}");
    request(h, |r| r.method == "PUT" && r.path.ends_with(&login)).await;
}

/// From now on `agent`'s polls hang (so no poll answer settles a Guid refusal, and no newer Guid
/// comes) and its next `plays` plays (`None`: all) are refused `100-006`. The fault goes in
/// before the log is cleared, so the hanging poll awaited here is caught by it.
async fn refusals_never_settle(h: &Harness, agent: &str, plays: Option<u32>) {
    h.sim.add_fault(Fault {
        matcher: FaultMatch::Interface(Interface::Poll),
        kind: FaultKind::Latency(Duration::from_secs(3600)),
        count: None,
    });
    h.sim.clear_requests();
    let poll = format!("/agentevent/{agent}");
    request(h, |r| r.path.ends_with(&poll)).await;
    h.sim.add_fault(Fault {
        matcher: FaultMatch::Interface(Interface::Play),
        kind: FaultKind::Retcode {
            retcode: "100-006".into(),
            message: String::new(),
        },
        count: plays,
    });
}

/// A BeginPlay for `agent` that must be refused with `code` and `want_reason`.
async fn begin_play_refused(h: &Harness, agent: &str, code: Code, want_reason: &str) {
    let status = expect_code(h.play().await.begin_play(play_request(agent)).await, code);
    assert_eq!(reason(&status), want_reason, "{status:?}");
}

/// Issue 17 defect 4: the poll answer carrying `AgentOther_ShutdownService` is the gateway's
/// farewell, not a sign that it still accepts the session's Guid. Counted as an answered poll,
/// it settles a call's Guid refusal as "still accepted", and with more than one worker thread
/// that call can then take the agent over (`forcelogin`) from the client that just kicked the
/// bridge. The poll loop is driven directly against the simulator, so the check does not
/// depend on how threads interleave: every answer but the farewell is counted.
#[tokio::test]
async fn the_farewell_poll_answer_is_not_counted_as_accepted() {
    use ccgw_bridge::events::{EventBudget, Hub, PollEnd, PollSettings, Poller, SessionLink};
    use ccgw_bridge::gateway::{AgentAuth, GatewayClient, Interface as Gw};
    use ccgw_bridge::telemetry::Metrics;
    use std::sync::Arc;

    let sim = Simulator::start(fast_sim(), "127.0.0.1:0".parse().unwrap())
        .await
        .expect("simulator starts");
    let metrics = Arc::new(Metrics::default());
    let gateway = GatewayClient::new(config_for(&sim).gateway, metrics.clone()).unwrap();
    let auth = Arc::new(AgentAuth::default());
    let body = pinned_agent("1001").params.body(None);
    gateway
        .call(Gw::Login, "1001", &auth, None, Some(body), None)
        .await
        .expect("signed in");
    let polls = Arc::new(tokio::sync::watch::Sender::new(0u64));
    let poller = Poller {
        link: SessionLink {
            gateway,
            agent_id: Arc::from("1001"),
            auth,
            last_poll_at: Arc::default(),
            polls: polls.clone(),
            cancel: tokio_util::sync::CancellationToken::new(),
            metrics: metrics.clone(),
        },
        hub: Arc::new(Hub::new(
            64,
            &EventBudget::default(),
            metrics,
            Arc::from("1001"),
            Arc::from("s"),
        )),
        settings: PollSettings::default(),
    };
    let run = tokio::spawn(poller.run());
    request_of(&sim, |r| r.path.ends_with("/agentevent/1001")).await;
    sim.force_sign_out("1001");
    assert_eq!(run.await.unwrap(), PollEnd::SignedOutByGateway);
    let answered = sim
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/agentevent/1001"))
        .count() as u64;
    assert_eq!(
        *polls.borrow(),
        answered - 1,
        "every answer but the farewell"
    );
}

/// The state GetSession reports for `agent` (`None`: not found).
async fn state_of(h: &Harness, agent: &str) -> Option<i32> {
    h.sessions()
        .await
        .get_session(GetSessionRequest {
            agent_id: agent.into(),
        })
        .await
        .ok()
        .map(|s| s.into_inner().state)
}

/// Waits (bounded) until GetSession no longer reports `state` for `agent`.
async fn state_leaves(h: &Harness, agent: &str, state: SessionState) {
    tokio::time::timeout(SETTLE, async {
        while state_of(h, agent).await == Some(state as i32) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{agent} still reports {state:?}"));
}

/// Issue 22 review finding (`signing_in`/`signing_out` left set for ever when a handler is
/// dropped, 7c74dba `session/lifecycle.rs:44-53`, `:450-462`): a caller that gives up on a
/// SignIn or a SignOut while the gateway has not answered (its RPC is cancelled, so the
/// handler is dropped mid-await) must not leave the agent reported SIGNING_IN or SIGNING_OUT
/// for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_sign_in_or_sign_out_leaves_no_state_behind() {
    let h = Harness::start().await;
    let held = Duration::from_secs(3600);
    h.sim.add_fault(Fault {
        matcher: FaultMatch::Interface(Interface::Login),
        kind: FaultKind::Latency(held),
        count: Some(1),
    });
    let mut client = h.sessions().await;
    let call = tokio::spawn(async move { client.sign_in(sign_in_request("1001")).await });
    request(&h, |r| {
        r.method == "PUT" && r.path.ends_with("/onlineagent/1001")
    })
    .await;
    call.abort();
    state_leaves(&h, "1001", SessionState::SigningIn).await;

    let h2 = Harness::start().await;
    h2.sign_in("1002").await;
    // Queued: the logout has not reached the gateway when the caller gives up.
    h2.sim.add_fault(Fault {
        matcher: FaultMatch::Interface(Interface::Logout),
        kind: FaultKind::Queued(held),
        count: Some(1),
    });
    let mut client = h2.sessions().await;
    let call = tokio::spawn(async move {
        client
            .sign_out(SignOutRequest {
                agent_id: "1002".into(),
            })
            .await
    });
    request(&h2, |r| r.path.ends_with("/onlineagent/1002/logout")).await;
    call.abort();
    state_leaves(&h2, "1002", SessionState::SigningOut).await;
    assert_eq!(
        state_of(&h2, "1002").await,
        Some(SessionState::SignedIn as i32)
    );
}
