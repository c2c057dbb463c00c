//! Transport faults between the bridge and the gateway, end to end: each becomes the status
//! design §3 prescribes (UNAVAILABLE only when the request surely did not take effect, UNKNOWN
//! with reason OUTCOME_UNKNOWN when it may have), nothing is replayed, and the bridge and the
//! agent's poll loop carry on.

use crate::helpers::*;
use ccgw_bridge::proto::record_play_service_client::RecordPlayServiceClient;
use ccgw_bridge::proto::*;
use ccgw_bridge::sim::{Fault, FaultKind, FaultMatch, Interface as SimIface, Simulator};
use futures::StreamExt;
use std::time::{Duration, Instant};
use tonic::transport::Channel;
use tonic::{Code, Status, Streaming};
use tonic_types::StatusExt;

const BASE: &str = "/agentgateway/resource";

/// What the caller must see for a fault.
#[derive(Debug, Clone, Copy)]
struct Expect {
    code: Code,
    reason: &'static str,
}

const OUTCOME_UNKNOWN: Expect = Expect {
    code: Code::Unknown,
    reason: "OUTCOME_UNKNOWN",
};

#[track_caller]
fn assert_status(status: &Status, want: Expect, what: &str) {
    assert_eq!(status.code(), want.code, "{what}: {status:?}");
    let info = status
        .get_details_error_info()
        .unwrap_or_else(|| panic!("{what}: no ErrorInfo: {status:?}"));
    assert_eq!(info.domain, "ccgw-bridge", "{what}: {status:?}");
    assert_eq!(info.reason, want.reason, "{what}: {status:?}");
}

/// Whether the status was made by the client's own tonic deadline timer (CANCELLED "Timeout
/// expired", source `TimeoutExpired`), not received from the bridge.
fn is_local_timeout(status: &Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(e) = source {
        if e.is::<tonic::TimeoutExpired>() {
            return true;
        }
        source = e.source();
    }
    false
}

/// As [`assert_status`], except that for a deadline a status made by the client's own timer is
/// tolerated (returns false): see `slow_gateway_within_a_client_deadline_is_deadline_exceeded`.
#[track_caller]
fn assert_status_or_local_timeout(status: &Status, want: Expect, what: &str) -> bool {
    if want.code == Code::DeadlineExceeded && is_local_timeout(status) {
        return false;
    }
    assert_status(status, want, what);
    true
}

/// Whether the simulator applies the request before the fault strikes.
fn has_effect(kind: &FaultKind) -> bool {
    matches!(kind, FaultKind::Latency(_) | FaultKind::DropAfterEffect)
}

fn count(h: &Harness, method: &str, path: &str) -> usize {
    h.sim
        .requests()
        .iter()
        .filter(|r| r.method == method && r.path == path)
        .count()
}

/// Waits (bounded) for the next play event of type `t` on the stream.
async fn next_of(events: &mut Streaming<PlayEvent>, t: PlayEventType, what: &str) -> PlayEvent {
    let wait = async {
        loop {
            match events.next().await {
                Some(Ok(e)) if e.r#type == t as i32 => return e,
                Some(Ok(_)) => continue,
                other => panic!("{what}: stream ended waiting for {t:?}: {other:?}"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), wait)
        .await
        .unwrap_or_else(|_| panic!("{what}: no {t:?} within 5 s (poll loop dead?)"))
}

fn stop(agent: &str) -> StopPlayRequest {
    StopPlayRequest {
        agent_id: agent.into(),
    }
}

/// A request with a client deadline (for latency faults), else without one.
fn request<T>(msg: T, deadline: Option<Duration>) -> tonic::Request<T> {
    match deadline {
        Some(d) => with_deadline(msg, d),
        None => tonic::Request::new(msg),
    }
}

/// Injects `kind` once on `path`, runs `call` (not yet polled), and checks what every faulted
/// call must show: the expected status, an answer within the deadline, and exactly one request
/// at the gateway (never replayed). Returns the status and whether the bridge produced it.
async fn refused_once<T: std::fmt::Debug>(
    h: &Harness,
    (method, path): (&str, &str),
    kind: &FaultKind,
    want: Expect,
    deadline: Option<Duration>,
    what: &str,
    call: impl std::future::Future<Output = Result<T, Status>>,
) -> (Status, bool) {
    h.sim.add_fault(Fault {
        matcher: FaultMatch::PathContains(path.to_owned()),
        kind: kind.clone(),
        count: Some(1),
    });
    let started = Instant::now();
    let status = call.await.expect_err(what);
    let took = started.elapsed();
    let from_bridge = assert_status_or_local_timeout(&status, want, what);
    if let Some(d) = deadline {
        assert!(
            took < d + Duration::from_millis(500),
            "{what}: answered after {took:?}"
        );
    }
    assert_eq!(count(h, method, path), 1, "{what}: never replayed");
    (status, from_bridge)
}

/// The fault on `PUT .../play`: status, one request only, and then the agent plays normally.
async fn fault_on_begin_play(
    h: &Harness,
    agent: &str,
    kind: &FaultKind,
    want: Expect,
    deadline: Option<Duration>,
) -> (Status, bool) {
    let what = format!("BeginPlay with {kind:?}");
    h.sign_in(agent).await;
    let mut events = h.watch_play(agent).await;
    let mut play: RecordPlayServiceClient<Channel> = h.play().await;
    let path = format!("{BASE}/recordplay/{agent}/play");
    let call = play.begin_play(request(play_request(agent), deadline));
    let (status, from_bridge) =
        refused_once(h, ("PUT", &path), kind, want, deadline, &what, call).await;
    if has_effect(kind) {
        // Playback started although the caller saw an error; the poll loop reports it.
        next_of(&mut events, PlayEventType::PlaySucceeded, &what).await;
    } else {
        play.begin_play(play_request(agent)).await.expect(&what);
        next_of(&mut events, PlayEventType::PlaySucceeded, &what).await;
        assert_eq!(count(h, "PUT", &path), 2, "{what}");
    }
    play.stop_play(stop(agent)).await.expect(&what);
    next_of(&mut events, PlayEventType::PlayStopped, &what).await;
    (status, from_bridge)
}

/// The fault on `DELETE .../stopplay` during playback: status, one request, and then the agent
/// stops (or has stopped) normally.
async fn fault_on_stop_play(
    h: &Harness,
    agent: &str,
    kind: &FaultKind,
    want: Expect,
    deadline: Option<Duration>,
) -> (Status, bool) {
    let what = format!("StopPlay with {kind:?}");
    h.sign_in(agent).await;
    let mut events = h.watch_play(agent).await;
    let mut play = h.play().await;
    play.begin_play(BeginPlayRequest {
        await_outcome: true,
        ..play_request(agent)
    })
    .await
    .expect(&what);
    let path = format!("{BASE}/recordplay/{agent}/stopplay");
    let call = play.stop_play(request(stop(agent), deadline));
    let (status, from_bridge) =
        refused_once(h, ("DELETE", &path), kind, want, deadline, &what, call).await;
    if !has_effect(kind) {
        play.stop_play(stop(agent)).await.expect(&what);
    }
    next_of(&mut events, PlayEventType::PlayStopped, &what).await;
    // And the agent can play again.
    play.begin_play(play_request(agent)).await.expect(&what);
    next_of(&mut events, PlayEventType::PlayStarted, &what).await;
    (status, from_bridge)
}

/// Both scenarios, concurrently, on two agents of one bridge.
async fn on_begin_and_stop(kind: FaultKind, want: Expect) -> (Status, Status) {
    let ((a, _), (b, _)) = on_begin_and_stop_with(kind, want, None).await;
    (a, b)
}

async fn on_begin_and_stop_with(
    kind: FaultKind,
    want: Expect,
    deadline: Option<Duration>,
) -> ((Status, bool), (Status, bool)) {
    let h = Harness::start().await;
    let (a, b) = tokio::join!(
        fault_on_begin_play(&h, "1001", &kind, want, deadline),
        fault_on_stop_play(&h, "1002", &kind, want, deadline),
    );
    // The bridge as a whole still serves.
    let list = h.list().await;
    assert_eq!(list.sessions.len(), 2);
    (a, b)
}

#[tokio::test]
async fn http_503_is_unavailable() {
    let (a, _) = on_begin_and_stop(
        FaultKind::HttpStatus(503),
        Expect {
            code: Code::Unavailable,
            reason: "GATEWAY_HTTP_STATUS",
        },
    )
    .await;
    let info = a.get_details_error_info().unwrap();
    assert_eq!(info.metadata["http_status"], "503");
}

#[tokio::test]
async fn http_500_is_unknown() {
    let (a, _) = on_begin_and_stop(
        FaultKind::HttpStatus(500),
        Expect {
            code: Code::Unknown,
            reason: "GATEWAY_HTTP_STATUS",
        },
    )
    .await;
    let info = a.get_details_error_info().unwrap();
    assert_eq!(info.metadata["http_status"], "500");
}

#[tokio::test]
async fn malformed_body_is_outcome_unknown() {
    on_begin_and_stop(FaultKind::MalformedBody, OUTCOME_UNKNOWN).await;
}

#[tokio::test]
async fn non_json_content_type_is_outcome_unknown() {
    let (a, _) = on_begin_and_stop(FaultKind::NonJsonContentType, OUTCOME_UNKNOWN).await;
    assert!(a.message().contains("text/html"), "{}", a.message());
}

#[tokio::test]
async fn truncated_answer_is_outcome_unknown() {
    on_begin_and_stop(FaultKind::Truncated, OUTCOME_UNKNOWN).await;
}

#[tokio::test]
async fn oversized_answer_is_outcome_unknown() {
    let (a, _) = on_begin_and_stop(FaultKind::Oversized(2 << 20), OUTCOME_UNKNOWN).await;
    assert!(a.message().contains("1048576"), "{}", a.message());
}

/// The simulator read the request, then closed the connection. From the bridge's side that is
/// indistinguishable from a gateway that acted and lost the answer, so per design §3 the outcome
/// is unknown (UNKNOWN), not UNAVAILABLE (which promises the operation did not happen).
#[tokio::test]
async fn dropped_connection_is_outcome_unknown() {
    on_begin_and_stop(FaultKind::DropConnection, OUTCOME_UNKNOWN).await;
}

#[tokio::test]
async fn drop_after_effect_is_outcome_unknown_and_never_replayed() {
    // fault_on_begin_play asserts exactly one PUT .../play and that playback did start.
    on_begin_and_stop(FaultKind::DropAfterEffect, OUTCOME_UNKNOWN).await;
}

/// The bridge answers DEADLINE_EXCEEDED a little (a tenth, 5–100 ms) before the
/// caller's deadline, so that the caller's own tonic timer (which says CANCELLED) does not fire
/// first. Bridge, simulator and client share this test's process: on a starved machine the
/// client's timer can still win the race, which says nothing about the bridge. Such an attempt
/// (recognised by its local `TimeoutExpired` source) is repeated, at most three times in all;
/// every status the bridge itself sent must be DEADLINE_EXCEEDED, and it must have sent one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_gateway_within_a_client_deadline_is_deadline_exceeded() {
    let (mut begin_seen, mut stop_seen) = (false, false);
    for _ in 0..3 {
        let ((_, b), (_, s)) = on_begin_and_stop_with(
            FaultKind::Latency(Duration::from_secs(2)),
            Expect {
                code: Code::DeadlineExceeded,
                reason: "GATEWAY_TIMEOUT",
            },
            Some(Duration::from_millis(300)),
        )
        .await;
        begin_seen |= b;
        stop_seen |= s;
        if begin_seen && stop_seen {
            return;
        }
    }
    panic!("the bridge never answered DEADLINE_EXCEEDED itself (BeginPlay {begin_seen}, StopPlay {stop_seen})");
}

#[tokio::test]
async fn slow_gateway_beyond_the_request_timeout_is_deadline_exceeded() {
    let h = Harness::with(fast_sim(), |c| {
        c.gateway.request_timeout = Duration::from_millis(300)
    })
    .await;
    h.sign_in("1001").await;
    h.sim.add_fault(Fault {
        matcher: FaultMatch::Interface(SimIface::PausePlay),
        kind: FaultKind::Latency(Duration::from_secs(2)),
        count: Some(1),
    });
    let started = Instant::now();
    let status = expect_code(
        h.play()
            .await
            .pause_play(PausePlayRequest {
                agent_id: "1001".into(),
            })
            .await,
        Code::DeadlineExceeded,
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(reason(&status), "GATEWAY_TIMEOUT");
    // The poll loop (whose timeout is separate) and the bridge carry on.
    h.play()
        .await
        .begin_play(play_request("1001"))
        .await
        .expect("BeginPlay");
}

#[tokio::test]
async fn poll_loop_survives_transport_faults() {
    let h = Harness::with(fast_sim(), |c| {
        c.sessions.poll.backoff_min = Duration::from_millis(10);
        c.sessions.poll.backoff_max = Duration::from_millis(50);
    })
    .await;
    let session = h.sign_in("1001").await;
    let mut events = h.watch_play("1001").await;
    for kind in [
        FaultKind::HttpStatus(503),
        FaultKind::MalformedBody,
        FaultKind::DropConnection,
        FaultKind::Truncated,
    ] {
        h.sim.add_fault(Fault {
            matcher: FaultMatch::Interface(SimIface::Poll),
            kind,
            count: Some(1),
        });
    }
    // Four polls fail (each backs off), then events flow again in the same session. Wait for
    // five polls to arrive after the faults were added: each round forgets what was seen and
    // waits for a poll that arrives afterwards.
    let path = format!("{BASE}/agentevent/1001");
    for _ in 0..5 {
        h.sim.clear_requests();
        let path = path.clone();
        h.sim.wait_for_request(move |r| r.path == path).await;
    }
    h.play()
        .await
        .begin_play(play_request("1001"))
        .await
        .expect("BeginPlay");
    next_of(
        &mut events,
        PlayEventType::PlaySucceeded,
        "after poll faults",
    )
    .await;
    let got = h.session("1001").await;
    assert_eq!(got.session_id, session.session_id, "no re-sign-in");
}

#[tokio::test]
async fn untrusted_gateway_certificate_is_unavailable() {
    let sim1 = Simulator::start(fast_sim(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let sim2 = Simulator::start(fast_sim(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    // Trusts sim1's CA, talks to sim2.
    let mut config = config_for(&sim1);
    config.gateway.base_url = sim2.url();
    drop(sim1);
    let h = Harness::bridge(sim2, config).await;
    let status = expect_code(
        h.sessions().await.sign_in(sign_in_request("1001")).await,
        Code::Unavailable,
    );
    assert_eq!(reason(&status), "GATEWAY_UNREACHABLE", "{status:?}");
    let msg = status.message();
    assert!(
        msg.contains("certificate") || msg.contains("UnknownIssuer"),
        "the message names the certificate problem: {msg}"
    );
    // Nothing was sent over the failed handshake, nothing is held, the bridge still serves.
    assert!(h.sim.requests().is_empty(), "{:?}", h.sim.requests());
    let list = h.list().await;
    assert!(list.sessions.is_empty(), "{list:?}");
}

/// A sign-in whose answer is lost may have signed the agent in at the gateway: the caller hears
/// OUTCOME_UNKNOWN, and the gateway then counts the agent signed in under a Guid the bridge
/// never saw. No Guid, no action (issue 22 rule 4): the bridge cannot tell that orphan from a
/// person's session, so the next SignIn is a plain `login` answered ALREADY_EXISTS, never a
/// `forcelogin`; once the gateway's idle sign-out has ended the orphan, SignIn succeeds.
#[tokio::test]
async fn lost_sign_in_answer_is_outcome_unknown_and_the_next_sign_in_never_forces() {
    let h = Harness::start().await;
    h.sim.add_fault(Fault {
        matcher: FaultMatch::Interface(SimIface::Login),
        kind: FaultKind::DropAfterEffect,
        count: Some(1),
    });
    let mut sessions = h.sessions().await;
    let status = sessions
        .sign_in(sign_in_request("1001"))
        .await
        .expect_err("answer lost");
    assert_status(&status, OUTCOME_UNKNOWN, "SignIn with DropAfterEffect");
    assert!(h.sim.signed_in("1001"), "the sign-in took effect");
    let status = sessions
        .sign_in(sign_in_request("1001"))
        .await
        .expect_err("held at the gateway");
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    assert_eq!(
        count(&h, "PUT", &format!("{BASE}/onlineagent/1001/forcelogin")),
        0
    );
    // The gateway's idle sign-out ends the orphan.
    h.sim.kill_session("1001");
    sessions
        .sign_in(sign_in_request("1001"))
        .await
        .expect("a free agent signs in");
    assert_eq!(count(&h, "PUT", &format!("{BASE}/onlineagent/1001")), 3);
    assert_eq!(
        count(&h, "PUT", &format!("{BASE}/onlineagent/1001/forcelogin")),
        0
    );
    h.play()
        .await
        .begin_play(play_request("1001"))
        .await
        .expect("BeginPlay");
}

/// Issue 22 path 1 (fails on 7c74dba: `login`, `login`, `login`, `forcelogin`): a person has
/// the agent signed in from a softphone; the gateway answers every sign-in 1.5 s late; an app
/// calls SignIn with a 1 s deadline, then retries with a normal one. The late answers leave
/// the bridge no Guid, so nothing it may send can end a session: every retry is a plain
/// `login`, the honest answer is ALREADY_EXISTS, and the person keeps the agent.
#[tokio::test]
async fn a_sign_in_answer_that_never_came_back_kicks_no_person() {
    let h = Harness::start().await;
    h.sim
        .sign_in_elsewhere("1001", false)
        .expect("the person signs in");
    let person = h.sim.current_guid("1001");
    h.sim.add_fault(Fault {
        matcher: FaultMatch::Interface(SimIface::Login),
        kind: FaultKind::Latency(Duration::from_millis(1500)),
        count: None,
    });
    let mut sessions = h.sessions().await;
    let first = sessions
        .sign_in(with_deadline(
            sign_in_request("1001"),
            Duration::from_secs(1),
        ))
        .await
        .expect_err("no answer within the deadline");
    assert!(
        matches!(first.code(), Code::DeadlineExceeded | Code::Unknown),
        "{first:?}"
    );
    for _ in 0..2 {
        let retry = sessions
            .sign_in(with_deadline(
                sign_in_request("1001"),
                Duration::from_secs(20),
            ))
            .await
            .expect_err("the person holds the agent");
        assert_eq!(retry.code(), Code::AlreadyExists, "{retry:?}");
        assert_eq!(
            retry.get_details_error_info().map(|i| i.reason),
            Some("AGENT_ALREADY_SIGNED_IN".to_string())
        );
    }
    assert_eq!(
        count(&h, "PUT", &format!("{BASE}/onlineagent/1001/forcelogin")),
        0
    );
    assert_eq!(
        h.sim.current_guid("1001"),
        person,
        "the person keeps the agent"
    );
    assert_eq!(h.sim.stats().other_clients_kicked, 0);
}

/// The helper above recognises what tonic's client timer produces (a server that never
/// answers), and nothing the bridge sends.
#[tokio::test]
async fn local_timeouts_are_told_apart_from_bridge_statuses() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let _held = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy();
    let status = RecordPlayServiceClient::new(channel)
        .stop_play(request(stop("1001"), Some(Duration::from_millis(50))))
        .await
        .expect_err("nobody answers");
    assert!(is_local_timeout(&status), "{status:?}");
    let from_bridge = tonic::Status::deadline_exceeded("x");
    assert!(!is_local_timeout(&from_bridge));
}

/// Every fault is counted: gateway requests by outcome, poll errors by kind; and the poll loop
/// keeps delivering events after its own polls failed.
#[tokio::test]
async fn faults_are_counted_in_metrics() {
    use crate::guid::{metric, reqwest_metrics};
    let h = Harness::start().await;
    h.sign_in("1001").await;
    let mut play = h.play().await;
    let kinds = [
        FaultKind::HttpStatus(503),
        FaultKind::MalformedBody,
        FaultKind::NonJsonContentType,
        FaultKind::Truncated,
        FaultKind::Oversized(2 << 20),
    ];
    for kind in kinds {
        h.sim.add_fault(Fault {
            matcher: FaultMatch::Interface(SimIface::StopPlay),
            kind,
            count: Some(1),
        });
        assert!(play.stop_play(stop("1001")).await.is_err());
    }
    h.sim.add_fault(Fault {
        matcher: FaultMatch::Interface(SimIface::Poll),
        kind: FaultKind::HttpStatus(502),
        count: Some(2),
    });
    let mut events = h
        .sessions()
        .await
        .watch_agent_events(WatchAgentEventsRequest {
            agent_id: "1001".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    // The held poll ends empty, then two polls fail; no event to await for that but the counter.
    let started = Instant::now();
    while metric(
        &reqwest_metrics(&h).await,
        r#"ccgw_poll_errors_total{kind="http_status"}"#,
    ) < 2.0
    {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "polls never failed twice"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    h.sim.queue_event(
        "1001",
        serde_json::json!({"eventType": "AfterFaults", "workNo": "1001", "content": null}),
    );
    loop {
        let e = events
            .next()
            .await
            .expect("stream open")
            .expect("stream ok");
        if e.event_type == "AfterFaults" {
            break;
        }
    }
    let text = reqwest_metrics(&h).await;
    let m = |s: &str| metric(&text, s);
    assert_eq!(
        m(r#"ccgw_gateway_requests_total{interface="stopPlay",retcode="http_status"}"#),
        1.0,
        "{text}"
    );
    assert_eq!(
        m(r#"ccgw_gateway_requests_total{interface="stopPlay",retcode="outcome_unknown"}"#),
        4.0
    );
    assert_eq!(m(r#"ccgw_poll_errors_total{kind="http_status"}"#), 2.0);
    assert_eq!(
        m(
            r#"ccgw_grpc_server_handled_total{grpc_type="unary",grpc_service="ccgw.v1.RecordPlayService",grpc_method="StopPlay",grpc_code="UNKNOWN"}"#
        ),
        4.0
    );
    assert_eq!(
        m(
            r#"ccgw_grpc_server_handled_total{grpc_type="unary",grpc_service="ccgw.v1.RecordPlayService",grpc_method="StopPlay",grpc_code="UNAVAILABLE"}"#
        ),
        1.0
    );
}
