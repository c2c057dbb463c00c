//! Server limits and optional caller authentication, each at its edge.

use crate::helpers::*;
use ccgw_bridge::proto::*;
use ccgw_bridge::sim::{Fault, FaultKind, FaultMatch, Interface};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use std::time::Duration;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
use tonic::Code;

#[tokio::test]
async fn oversized_requests_are_refused_before_decoding() {
    let h = Harness::with(fast_sim(), |c| c.server.max_request_bytes = 4096).await;
    h.sign_in("1001").await;
    let mut req = play_request("1001");
    req.voice_path = "x".repeat(5000);
    // gRPC's status-code table: a message over the configured limit is RESOURCE_EXHAUSTED.
    let s = expect_code(
        h.play().await.begin_play(req).await,
        Code::ResourceExhausted,
    );
    assert_eq!(reason(&s), "REQUEST_TOO_LARGE");
    assert!(s.message().contains("4096 bytes"), "{s:?}");
    let s = expect_code(
        h.play()
            .await
            .watch_play_events(WatchPlayEventsRequest {
                agent_id: "1001".into(),
                types: vec![1; 5000],
                ..Default::default()
            })
            .await,
        Code::ResourceExhausted,
    );
    assert_eq!(reason(&s), "REQUEST_TOO_LARGE");
    let mut req = play_request("1001");
    req.voice_path = "x".repeat(101);
    expect_code(h.play().await.begin_play(req).await, Code::InvalidArgument);
}

#[tokio::test]
async fn calls_beyond_the_concurrency_limit_are_refused_at_once() {
    let h = Harness::with(fast_sim(), |c| c.server.max_concurrent_requests = 2).await;
    h.sign_in("1001").await;
    h.sign_in("1002").await;
    h.sim.add_fault(Fault {
        matcher: FaultMatch::Interface(Interface::Play),
        kind: FaultKind::Latency(Duration::from_millis(800)),
        count: Some(2),
    });
    let mut slow = Vec::new();
    for agent in ["1001", "1002"] {
        let mut c = h.play().await;
        slow.push(tokio::spawn(async move {
            c.begin_play(play_request(agent)).await
        }));
    }
    for agent in ["1001", "1002"] {
        let path = format!("/recordplay/{agent}/play");
        h.sim
            .wait_for_request(move |r| r.path.ends_with(&path))
            .await;
    }
    let started = std::time::Instant::now();
    let s = expect_code(
        h.sessions()
            .await
            .get_session(GetSessionRequest {
                agent_id: "1001".into(),
            })
            .await,
        Code::ResourceExhausted,
    );
    assert_eq!(reason(&s), "TOO_MANY_REQUESTS");
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "refused, not queued"
    );
    for c in slow {
        c.await.unwrap().expect("the admitted calls complete");
    }
    // Permits come back.
    h.sessions()
        .await
        .get_session(GetSessionRequest {
            agent_id: "1001".into(),
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn streams_per_connection_are_capped() {
    let h = Harness::with(fast_sim(), |c| c.server.max_concurrent_streams = 3).await;
    h.sign_in("1001").await;
    let mut client = h.play().await;
    let watch = || WatchPlayEventsRequest {
        agent_id: "1001".into(),
        ..Default::default()
    };
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(client.watch_play_events(watch()).await.unwrap());
    }
    // The fourth waits for a free stream slot on this connection…
    let mut fourth = tokio::spawn({
        let mut c = client.clone();
        async move { c.watch_play_events(watch()).await }
    });
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut fourth)
            .await
            .is_err(),
        "a fourth stream on one connection must wait"
    );
    // …and another connection is unaffected; closing one stream admits the fourth.
    h.play().await.watch_play_events(watch()).await.unwrap();
    open.pop();
    tokio::time::timeout(Duration::from_secs(5), fourth)
        .await
        .expect("admitted once a slot frees")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn idle_watchers_survive_keepalive_pings() {
    let h = Harness::with(fast_sim(), |c| {
        c.server.keepalive_interval = Duration::from_millis(50);
        c.server.keepalive_timeout = Duration::from_millis(500);
    })
    .await;
    h.sign_in("1001").await;
    let mut w = h
        .sessions()
        .await
        .watch_agent_events(WatchAgentEventsRequest {
            agent_id: "1001".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    // Stay idle across many ping intervals (the pings are what is under test).
    tokio::time::sleep(Duration::from_millis(600)).await;
    h.sim.queue_event(
        "1001",
        serde_json::json!({"eventType": "Late", "workNo": "1001", "content": null}),
    );
    loop {
        let e = tokio::time::timeout(Duration::from_secs(5), w.message())
            .await
            .expect("the idle stream is still alive")
            .unwrap()
            .unwrap();
        if e.event_type == "Late" {
            break;
        }
    }
}

#[tokio::test]
async fn a_bearer_token_guards_the_api_but_not_health() {
    const TOKEN: &str = "0123456789abcdef-token";
    let h = Harness::with(fast_sim(), |c| c.server.auth_token = Some(TOKEN.into())).await;
    let mut sessions = h.sessions().await;
    let s = expect_code(
        sessions.sign_in(sign_in_request("1001")).await,
        Code::Unauthenticated,
    );
    assert_eq!(reason(&s), "MISSING_TOKEN");
    let mut wrong = tonic::Request::new(sign_in_request("1001"));
    wrong
        .metadata_mut()
        .insert("authorization", "Bearer nope".parse().unwrap());
    let s = expect_code(sessions.sign_in(wrong).await, Code::Unauthenticated);
    assert_eq!(reason(&s), "INVALID_TOKEN");
    assert!(
        h.sim.requests().iter().all(|r| r.agent_id.is_none()),
        "no agent request reached the gateway"
    );
    let mut right = tonic::Request::new(sign_in_request("1001"));
    right
        .metadata_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    sessions.sign_in(right).await.unwrap();
    // Probes need no token.
    let health = tonic_health::pb::health_client::HealthClient::new(h.channel().await)
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await;
    assert!(health.is_ok(), "{health:?}");
}

struct Pki {
    ca: String,
    server: (String, String),
    client: (String, String),
}

fn pki() -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf = |names: Vec<String>| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    };
    Pki {
        ca,
        server: leaf(vec!["localhost".into()]),
        client: leaf(vec!["caller".into()]),
    }
}

#[tokio::test]
async fn mutual_tls_admits_only_callers_with_a_trusted_certificate() {
    let pki = pki();
    let h = Harness::with(fast_sim(), |c| {
        c.server.tls = Some(ccgw_bridge::config::ServerTls {
            cert: pki.server.0.clone().into_bytes(),
            key: pki.server.1.clone().into_bytes(),
            client_ca: Some(pki.ca.clone().into_bytes()),
        })
    })
    .await;
    let url = format!("https://localhost:{}", h.addr.port());
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pki.ca))
        .domain_name("localhost");
    let with_cert = Endpoint::from_shared(url.clone())
        .unwrap()
        .tls_config(
            tls.clone()
                .identity(Identity::from_pem(&pki.client.0, &pki.client.1)),
        )
        .unwrap()
        .connect()
        .await
        .expect("a trusted client certificate is admitted");
    session_client(with_cert)
        .sign_in(sign_in_request("1001"))
        .await
        .unwrap();

    let without = Endpoint::from_shared(url)
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await;
    let refused = match without {
        Err(_) => true,
        Ok(ch) => session_client(ch)
            .list_sessions(ListSessionsRequest {})
            .await
            .is_err(),
    };
    assert!(refused, "no client certificate, no service");
}

fn session_client(
    ch: tonic::transport::Channel,
) -> agent_session_service_client::AgentSessionServiceClient<tonic::transport::Channel> {
    agent_session_service_client::AgentSessionServiceClient::new(ch)
}
