//! Push mode (`--events push`, issue 24): the simulator calls the bridge back over real TLS,
//! the bridge keeps sessions alive with heartbeats, and watchers see exactly what they see in
//! poll mode. Every bad input at the callback is refused, counted and changes nothing.

use crate::helpers::*;
use ccgw_bridge::events::HEARTBEAT_LANES;
use ccgw_bridge::proto::*;
use ccgw_bridge::sim::{
    AuthMode, Fault, FaultKind, FaultMatch, Interface, PushFault, RecordedRequest, SimConfig,
};
use serde_json::{json, Value};
use std::time::Duration;
use tonic::Streaming;

fn is_heartbeat(agent: &str) -> impl Fn(&RecordedRequest) -> bool + '_ {
    move |r| r.method == "POST" && r.path.ends_with(&format!("/onlineagent/{agent}/handshake"))
}

/// Every event of the agent's session from its first (resume after 0).
async fn watch_from_start(h: &Harness, agent: &str) -> Streaming<AgentEvent> {
    let session_id = h.session(agent).await.session_id;
    h.sessions()
        .await
        .watch_agent_events(WatchAgentEventsRequest {
            agent_id: agent.into(),
            resume_after: Some(0),
            session_id,
        })
        .await
        .expect("watch")
        .into_inner()
}

/// Reads events from `stream` until the bridge has delivered as many as the simulator pushed
/// (`want`), and checks the types match the simulator's record one for one, sequences 1, 2, 3….
async fn assert_stream_matches_record(
    stream: &mut Streaming<AgentEvent>,
    pushed: &[Value],
    from_sequence: u64,
) {
    for (i, event) in pushed.iter().enumerate() {
        let got = next_event(stream).await;
        assert_eq!(got.sequence, from_sequence + i as u64, "gap-free sequence");
        assert_eq!(
            Some(got.event_type.as_str()),
            event.get("eventType").and_then(Value::as_str),
            "event {i} as pushed"
        );
    }
}

/// The callback URL of `agent` on the harness's callback server.
fn callback_url(h: &Harness, agent: &str) -> String {
    format!(
        "https://{}{CALLBACK_PATH}/{agent}",
        h.callback.expect("push mode")
    )
}

/// An HTTPS client trusting the simulator's CA (the callback server presents its certificate).
fn callback_client(h: &Harness) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_certs_only(reqwest::Certificate::from_pem_bundle(h.sim.ca_pem().as_bytes()).unwrap())
        .http1_only()
        .build()
        .unwrap()
}

/// The metric line `ccgw_callbacks_total{outcome="…"}`'s value.
async fn callbacks(h: &Harness, outcome: &str) -> u64 {
    let text = h.metrics().await;
    let prefix = format!("ccgw_callbacks_total{{outcome=\"{outcome}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {prefix} in metrics"))
}

#[tokio::test]
async fn push_mode_delivers_events_through_the_same_hub_as_polling() {
    let h = Harness::push(fast_sim(), |_| {}).await;
    h.sign_in("1001").await;
    let login = h
        .sim
        .wait_for_request(|r| r.path.ends_with("/onlineagent/1001"))
        .await;
    let body: Value = serde_json::from_str(&login.body).unwrap();
    assert_eq!(
        body["callBackUri"].as_str(),
        Some(callback_url(&h, "1001").as_str()),
        "each agent's callback is the URL plus its id"
    );
    let token = body["serviceToken"].as_str().expect("a token");
    assert!(token.len() <= 50 && token.chars().all(|c| c.is_ascii_alphanumeric()));

    let mut all = watch_from_start(&h, "1001").await;
    let mut plays = h.watch_play("1001").await;
    let mut play = h.play().await;
    let begun = play
        .begin_play(BeginPlayRequest {
            await_outcome: true,
            ..play_request("1001")
        })
        .await
        .expect("BeginPlay in push mode")
        .into_inner();
    assert!(
        begun.outcome_sequence.is_some(),
        "await_outcome works in push mode"
    );
    let started = next_event(&mut plays).await;
    assert_eq!(started.r#type(), PlayEventType::PlayStarted);
    play.stop_play(StopPlayRequest {
        agent_id: "1001".into(),
    })
    .await
    .expect("StopPlay");
    loop {
        if next_event(&mut plays).await.r#type() == PlayEventType::PlayStopped {
            break;
        }
    }
    let pushed = h.sim.pushed("1001");
    assert!(
        pushed.len() >= 5,
        "sign-in and play events pushed: {pushed:?}"
    );
    assert_stream_matches_record(&mut all, &pushed, 1).await;
    assert!(
        h.sim
            .requests()
            .iter()
            .all(|r| !r.path.contains("/agentevent/")),
        "a push-mode session is never polled"
    );
    // Heartbeats go on meanwhile (waited for, not assumed to have happened by now).
    h.sim.wait_for_request(is_heartbeat("1001")).await;
    assert_eq!(callbacks(&h, "wrong_token").await, 0);
    assert!(callbacks(&h, "accepted").await >= 1);
}

#[tokio::test]
async fn heartbeats_keep_a_push_session_past_the_gateways_idle_limit() {
    let h = push_idling_after(Duration::from_millis(1000)).await;
    h.sign_in("1001").await;
    // 25 heartbeats at 100 ms span over twice the idle limit (which leaves room for a loaded
    // machine's late timers).
    for _ in 0..25 {
        h.sim.clear_requests();
        h.sim.wait_for_request(is_heartbeat("1001")).await;
    }
    assert!(h.sim.signed_in("1001"), "heartbeats keep the session");
    assert!(h.sim.session_ends().iter().all(|e| e.agent_id != "1001"));
}

#[tokio::test]
async fn heartbeats_of_many_agents_reuse_a_few_kept_alive_connections() {
    const AGENTS: usize = 64;
    let h = Harness::push(fast_sim(), |_| {}).await;
    let agents: Vec<String> = (2001..).take(AGENTS).map(|i| i.to_string()).collect();
    futures::future::join_all(agents.iter().map(|a| h.sign_in(a))).await;
    // Three rounds in which every agent beat at least once (at 100 ms: ≥ 192 heartbeats).
    let mut used = std::collections::HashSet::new();
    for _ in 0..3 {
        h.sim.clear_requests();
        for agent in &agents {
            h.sim.wait_for_request(is_heartbeat(agent)).await;
        }
        let requests = h.sim.requests();
        let beats = requests.iter().filter(|r| r.path.ends_with("/handshake"));
        used.extend(beats.map(|r| r.connection));
    }
    // Beats share the bridge's lanes: a connection per lane, plus the few a check-out racing a
    // connection's return to the pool opens; not one per agent.
    assert!(
        used.len() <= 2 * HEARTBEAT_LANES,
        "the heartbeats of {AGENTS} agents came over {} connections",
        used.len()
    );
}

#[tokio::test]
async fn dynamic_guids_arrive_on_heartbeats_and_callbacks_keep_being_accepted() {
    let h = Harness::push(
        SimConfig {
            auth: AuthMode::Dynamic {
                rotate_every: Duration::from_millis(150),
                strict: true,
                overlap: Duration::ZERO,
            },
            ..fast_sim()
        },
        |_| {},
    )
    .await;
    h.sign_in("1001").await;
    let first = h.sim.current_guid("1001").unwrap();
    let mut all = watch_from_start(&h, "1001").await;
    // Wait for rotations to happen (each rides on a heartbeat answer).
    for _ in 0..4 {
        h.sim.clear_requests();
        h.sim.wait_for_request(is_heartbeat("1001")).await;
    }
    assert_ne!(h.sim.current_guid("1001").unwrap(), first, "rotated");
    for i in 0..5 {
        h.sim.queue_event(
            "1001",
            json!({"eventType": format!("AgentState_Test{i}"), "workNo": "1001", "content": null}),
        );
    }
    let pushed = h.sim.wait_pushed("1001", 7).await;
    assert_stream_matches_record(&mut all, &pushed, 1).await;
    // A call made with the adopted Guid succeeds.
    h.play()
        .await
        .begin_play(play_request("1001"))
        .await
        .expect("BeginPlay with a rotated Guid");
}

#[tokio::test]
async fn a_refused_heartbeat_ends_the_session_and_keep_signed_in_signs_in_again() {
    let h = Harness::push(fast_sim(), |c| c.agents.push(pinned_agent("1001"))).await;
    h.sim
        .wait_for_request(|r| r.path.ends_with("/onlineagent/1001"))
        .await;
    h.sim.wait_for_request(is_heartbeat("1001")).await;
    let before = h.sim.current_guid("1001").unwrap();
    h.sim.clear_requests();
    h.sim.kill_session("1001");
    // The next heartbeat is refused (100-006); the bridge signs in again, plainly.
    let again = h
        .sim
        .wait_for_request(|r| r.path.contains("/onlineagent/1001") && r.method == "PUT")
        .await;
    assert!(
        again.path.ends_with("/onlineagent/1001"),
        "never forcelogin"
    );
    h.sim.wait_for_request(is_heartbeat("1001")).await;
    assert_ne!(h.sim.current_guid("1001").unwrap(), before);
    // The new session's events are pushed to the new callback token and arrive.
    let mut all = watch_from_start(&h, "1001").await;
    h.sim.queue_event(
        "1001",
        json!({"eventType": "AgentState_Busy", "workNo": "1001", "content": null}),
    );
    loop {
        if next_event(&mut all).await.event_type == "AgentState_Busy" {
            break;
        }
    }
    assert_eq!(h.sim.stats().other_clients_kicked, 0);
}

#[tokio::test]
async fn simulator_push_faults_lose_and_invent_nothing() {
    let h = Harness::push(fast_sim(), |_| {}).await;
    h.sign_in("1001").await;
    let mut all = watch_from_start(&h, "1001").await;
    let initial = h.sim.wait_pushed("1001", 2).await;
    assert_stream_matches_record(&mut all, &initial, 1).await;
    for fault in [
        PushFault::WrongToken,
        PushFault::WrongGuid,
        PushFault::ConnectionReset,
        PushFault::Slow(Duration::from_millis(100)),
        PushFault::Duplicate,
    ] {
        h.sim.add_push_fault(fault);
    }
    let mut expected = initial.len();
    for i in 0..20 {
        h.sim.queue_event(
            "1001",
            json!({"eventType": format!("AgentState_Test{i}"), "workNo": "1001", "content": {"i": i}}),
        );
        expected += 1;
    }
    // The duplicate delivers one batch twice: wait until everything queued went out at least
    // once, then compare what the watcher saw with the simulator's whole record.
    let pushed = loop {
        let pushed = h.sim.wait_pushed("1001", expected).await;
        let distinct: std::collections::HashSet<String> =
            pushed.iter().map(|e| e["eventType"].to_string()).collect();
        if distinct.len() >= expected {
            break pushed;
        }
        expected = pushed.len() + 1;
    };
    assert_stream_matches_record(&mut all, &pushed[initial.len()..], initial.len() as u64 + 1)
        .await;
    assert!(
        h.sim.push_failures() >= 3,
        "the faults were refused or failed"
    );
    assert!(callbacks(&h, "wrong_token").await >= 1);
    assert!(callbacks(&h, "wrong_guid").await >= 1);
}

/// Sends `body` to `agent`'s callback with the simulator's current Guid and `token`.
async fn post(
    h: &Harness,
    agent: &str,
    token: &str,
    guid: Option<&str>,
    body: impl Into<reqwest::Body>,
) -> (u16, Value) {
    let guid = guid
        .map(str::to_owned)
        .or_else(|| h.sim.current_guid(agent))
        .unwrap_or_default();
    let response = callback_client(h)
        .post(callback_url(h, agent))
        .header("Content-Type", "application/json")
        .header("Guid", guid)
        .header("service_token", token)
        .body(body)
        .send()
        .await
        .expect("the callback server answers");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// The service token the bridge sent at the agent's newest sign-in.
fn token_of(h: &Harness, agent: &str) -> String {
    let login = h
        .sim
        .requests()
        .into_iter()
        .rev()
        .find(|r| r.path.ends_with(&format!("/onlineagent/{agent}")))
        .expect("a sign-in");
    let body: Value = serde_json::from_str(&login.body).unwrap();
    body["serviceToken"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn bad_callbacks_are_refused_counted_and_change_nothing() {
    let h = Harness::push(fast_sim(), |_| {}).await;
    h.sign_in("1001").await;
    h.sign_in("1002").await;
    h.sim.wait_pushed("1001", 2).await;
    h.sim.wait_pushed("1002", 2).await;
    let session = h.session("1001").await;
    let before = session.last_sequence;
    let token = token_of(&h, "1001");
    let good = json!({"workNo": "1001", "eventList": [{"eventType": "AgentState_Busy", "workNo": "1001", "content": null}]}).to_string();

    let cases: Vec<(&str, (u16, Value))> = vec![
        ("wrong_token", post(&h, "1001", "WrongToken", None, good.clone()).await),
        (
            "wrong_token",
            post(&h, "1001", &token_of(&h, "1002"), None, good.clone()).await,
        ),
        (
            "wrong_guid",
            post(
                &h,
                "1001",
                &token,
                Some("00000000-0000-4000-8000-000000000000.AgentGateway0"),
                good.clone(),
            )
            .await,
        ),
        ("unknown_agent", post(&h, "1009", &token, None, good.clone()).await),
        ("malformed", post(&h, "1001", &token, None, "{not json").await),
        (
            "malformed",
            post(&h, "1001", &token, None, r#"{"workNo":"1001","eventList":[{"content":1}]}"#).await,
        ),
        (
            "wrong_work_no",
            post(
                &h,
                "1001",
                &token,
                None,
                r#"{"workNo":"1002","eventList":[{"eventType":"AgentState_Busy"}]}"#,
            )
            .await,
        ),
        (
            "wrong_work_no",
            post(
                &h,
                "1001",
                &token,
                None,
                r#"{"workNo":"1001","eventList":[{"eventType":"AgentState_Busy","workNo":"1002"}]}"#,
            )
            .await,
        ),
        (
            "too_large",
            post(&h, "1001", &token, None, vec![b' '; 128 * 1024]).await,
        ),
    ];
    for (outcome, (status, body)) in &cases {
        assert!(
            matches!(status, 400 | 401 | 403 | 413),
            "{outcome}: HTTP {status}"
        );
        assert_ne!(body["retcode"], "0", "{outcome}: {body}");
        assert!(callbacks(&h, outcome).await >= 1, "{outcome} counted");
    }
    assert_eq!(cases[0].1 .0, 401, "a wrong token is 401");
    assert_eq!(cases[2].1 .0, 403, "a wrong Guid is 403");
    assert_eq!(
        h.session("1001").await.last_sequence,
        before,
        "no refused callback changed anything"
    );
    // Nothing lost for the other agent, and a good callback still works.
    h.sim.queue_event(
        "1002",
        json!({"eventType": "AgentState_Work", "workNo": "1002", "content": null}),
    );
    h.sim.wait_pushed("1002", 3).await;
    let (status, body) = post(&h, "1001", &token, None, good).await;
    assert_eq!((status, body["retcode"].as_str()), (200, Some("0")));
    assert_eq!(h.session("1001").await.last_sequence, before + 1);
}

/// A bare TLS connection to the callback server, for writing HTTP by hand.
async fn raw_tls(h: &Harness) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut h.sim.ca_pem().as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ));
    let tcp = tokio::net::TcpStream::connect(h.callback.unwrap())
        .await
        .unwrap();
    connector
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap()
}

/// A push-mode harness with agent 1001 signed in and its first events pushed; its service
/// token and current Guid.
async fn pushing_1001() -> (Harness, String, String) {
    let h = Harness::push(fast_sim(), |_| {}).await;
    h.sign_in("1001").await;
    h.sim.wait_pushed("1001", 2).await;
    let token = token_of(&h, "1001");
    let guid = h.sim.current_guid("1001").unwrap();
    (h, token, guid)
}

/// Everything the server sends until it closes the connection; `None` if it has not closed
/// it within 5 s.
async fn read_until_closed(
    tls: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
) -> Option<String> {
    let mut bytes = Vec::new();
    let read = tokio::io::AsyncReadExt::read_to_end(tls, &mut bytes);
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .ok()
        .map(|_| String::from_utf8_lossy(&bytes).into_owned())
}

#[tokio::test]
async fn slow_callback_clients_are_cut_off_without_holding_the_agent() {
    use tokio::io::AsyncWriteExt;
    let (h, token, guid) = pushing_1001().await;
    // A body that never completes: headers say 100 bytes, 10 arrive.
    let mut tls = raw_tls(&h).await;
    let head = format!(
        "POST {CALLBACK_PATH}/1001 HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nGuid: {guid}\r\nservice_token: {token}\r\nContent-Length: 100\r\n\r\n{{\"workNo\":"
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    // Meanwhile the agent's pushes go on: another callback of the same agent waits for its
    // turn only as long as the body timeout.
    h.sim.queue_event(
        "1001",
        json!({"eventType": "AgentState_Busy", "workNo": "1001", "content": null}),
    );
    h.sim.wait_pushed("1001", 3).await;
    let answer = read_until_closed(&mut tls)
        .await
        .expect("answered and closed");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(callbacks(&h, "timeout").await >= 1);
    // Headers that never complete: the connection is closed.
    let mut tls = raw_tls(&h).await;
    tls.write_all(b"POST /ccgw/events/1001 HTTP/1.1\r\nHost: loc")
        .await
        .unwrap();
    assert!(
        read_until_closed(&mut tls).await.is_some(),
        "a slow header is cut off by the header timeout"
    );
}

#[tokio::test]
async fn the_token_and_guids_never_reach_logs_or_metrics() {
    let (h, token, guid) = pushing_1001().await;
    // Refusals are where a careless receiver would echo what it was sent.
    let (status, body) = post(&h, "1001", "WrongToken", None, "{}").await;
    assert_eq!(status, 401);
    let (status, answer) = post(&h, "1001", &token, Some("bogus-guid"), "{}").await;
    assert_eq!(status, 403);
    let metrics = h.metrics().await;
    for secret in [&token, &guid] {
        assert!(!metrics.contains(secret.as_str()));
        assert!(!body.to_string().contains(secret.as_str()));
        assert!(!answer.to_string().contains(secret.as_str()));
    }
    let info = format!("{:?}", h.session("1001").await);
    assert!(!info.contains(&token) && !info.contains(&guid));
}

#[tokio::test]
async fn without_heartbeats_the_gateway_signs_out_and_pushes_the_farewell() {
    let h = push_idling_after(Duration::from_secs(2)).await;
    h.sign_in("1001").await;
    let mut all = watch_from_start(&h, "1001").await;
    // From now on no heartbeat reaches the gateway (a proxy answers 503 for it).
    h.sim.add_fault(Fault {
        matcher: FaultMatch::Interface(Interface::Heartbeat),
        kind: FaultKind::HttpStatus(503),
        count: None,
    });
    let ended = loop {
        let event = next_event(&mut all).await;
        if event.event_type == "AgentOther_ShutdownService" {
            break event;
        }
    };
    assert!(ended.sequence >= 3, "after the sign-in events");
    assert!(
        matches!(all.message().await, Ok(None) | Err(_)),
        "the stream ends with the session"
    );
    assert!(h
        .sim
        .session_ends()
        .iter()
        .any(|e| e.agent_id == "1001" && e.cause == ccgw_bridge::sim::EndCause::IdleSignOut));
    assert!(
        h.sim
            .pushed("1001")
            .iter()
            .any(|e| e["eventType"] == "AgentOther_ShutdownService"),
        "the farewell was pushed"
    );
}

/// A hand-over between two bridges (as in the agent pool): the second bridge's sign-in gives the
/// gateway its own callback, and the agent's events go there from then on.
#[tokio::test]
async fn a_new_sign_in_moves_the_callback_to_the_new_bridge() {
    let h = Harness::push(fast_sim(), |_| {}).await;
    h.sign_in("1001").await;
    h.sim.wait_pushed("1001", 2).await;
    h.sessions()
        .await
        .sign_out(SignOutRequest {
            agent_id: "1001".into(),
        })
        .await
        .expect("signed out of the first bridge");
    let mut config = config_for(&h.sim);
    let callback = push_mode(&h.sim, &mut config).await;
    let second_callback = callback.local_addr().unwrap();
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let second = grpc.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(ccgw_bridge::run(
        ccgw_bridge::Listeners {
            grpc,
            admin: None,
            callback: Some(callback),
        },
        config,
        async move {
            let _ = stopped.await;
        },
    ));
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{second}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut sessions =
        agent_session_service_client::AgentSessionServiceClient::new(channel.clone());
    sessions.sign_in(sign_in_request("1001")).await.unwrap();
    let login = h
        .sim
        .requests()
        .into_iter()
        .rev()
        .find(|r| r.path.ends_with("/onlineagent/1001"))
        .unwrap();
    assert!(login
        .body
        .contains(&format!("{second_callback}{CALLBACK_PATH}/1001")));
    // The second session's events (4 so far: 2 per session) reach the second bridge only.
    let pushed = h.sim.wait_pushed("1001", 4).await;
    assert_eq!(pushed.len(), 4, "nothing duplicated across the hand-over");
    let session = sessions
        .get_session(GetSessionRequest {
            agent_id: "1001".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        session.last_sequence, 2,
        "the second bridge got its session's events"
    );
    assert!(
        callbacks(&h, "accepted").await <= 2,
        "the first bridge got nothing of the second session"
    );
    let _ = stop.send(());
    task.await.unwrap().unwrap();
}

/// A push-mode bridge on a simulator that signs an agent out after `idle` without a heartbeat.
async fn push_idling_after(idle: Duration) -> Harness {
    Harness::push(
        SimConfig {
            idle_timeout: idle,
            ..fast_sim()
        },
        |_| {},
    )
    .await
}
