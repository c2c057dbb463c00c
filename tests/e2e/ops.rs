//! Operating the bridge: health transitions, reflection, metrics, config errors, SIGTERM drain.

use crate::guid::metric;
use crate::helpers::*;
use ccgw_bridge::proto::*;
use ccgw_bridge::sim::{Fault, FaultKind, FaultMatch, Interface, SimConfig, Simulator};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tonic::Code;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckResponse;
use tonic_health::pb::{health_check_response::ServingStatus, HealthCheckRequest};

pub async fn health_watch(
    addr: std::net::SocketAddr,
    service: &str,
) -> tonic::Streaming<HealthCheckResponse> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    HealthClient::new(channel)
        .watch(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .unwrap()
        .into_inner()
}

pub async fn until_status(w: &mut tonic::Streaming<HealthCheckResponse>, want: ServingStatus) {
    loop {
        let r = tokio::time::timeout(Duration::from_secs(15), w.message())
            .await
            .unwrap_or_else(|_| panic!("health did not become {want:?} within 15 s"))
            .expect("health stream ok")
            .expect("health stream open");
        if r.status == want as i32 {
            return;
        }
    }
}

#[tokio::test]
async fn health_follows_the_gateway_and_the_drain() {
    let mut h = Harness::start().await;
    let mut admin = health_watch(h.admin, "").await;
    let mut api = health_watch(h.addr, "ccgw.v1.RecordPlayService").await;
    until_status(&mut admin, ServingStatus::Serving).await;
    until_status(&mut api, ServingStatus::Serving).await;

    h.sign_in("1001").await;
    h.sim.shutdown();
    until_status(&mut admin, ServingStatus::NotServing).await;
    until_status(&mut api, ServingStatus::NotServing).await;
    // Calls meanwhile fail UNAVAILABLE (gateway unreachable), not something vaguer.
    let status = expect_code(
        h.play()
            .await
            .stop_play(StopPlayRequest {
                agent_id: "1001".into(),
            })
            .await,
        Code::Unavailable,
    );
    assert_eq!(reason(&status), "GATEWAY_UNREACHABLE");

    // A fresh bridge sees SERVING, then NOT_SERVING as soon as the drain starts.
    let mut h2 = Harness::start().await;
    let mut w = health_watch(h2.admin, "ccgw.v1.AgentSessionService").await;
    until_status(&mut w, ServingStatus::Serving).await;
    h2.begin_stop();
    until_status(&mut w, ServingStatus::NotServing).await;
    h2.stopped().await.unwrap();
    h.begin_stop();
    h.stopped().await.unwrap();
}

#[tokio::test]
async fn probes_answer_on_the_admin_listener() {
    let h = Harness::start().await;
    let mut w = health_watch(h.admin, "").await;
    until_status(&mut w, ServingStatus::Serving).await;
    let get = |path: &str| reqwest::get(format!("http://{}{path}", h.admin));
    assert_eq!(get("/livez").await.unwrap().status(), 200);
    assert_eq!(get("/readyz").await.unwrap().status(), 200);
    h.sim.shutdown();
    // Not ready once the gateway is gone (probed every second while idle).
    until_status(&mut w, ServingStatus::NotServing).await;
    assert_eq!(get("/readyz").await.unwrap().status(), 503);
    // A wrong probe path must fail the probe, even while /readyz is 503 (the gRPC router's
    // fallback used to answer 200 to anything).
    for path in [
        "/healthz",
        "/readyz/",
        "/",
        "/metrics/x",
        "/grpc.health.v1.Nope/Check",
    ] {
        let r = get(path).await.unwrap();
        assert_eq!(r.status(), 404, "GET {path}: {:?}", r.headers());
    }
    // gRPC on the same port keeps working.
    let mut health = HealthClient::new(
        tonic::transport::Endpoint::from_shared(format!("http://{}", h.admin))
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    let status = health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::NotServing as i32);
    let unknown = health
        .check(HealthCheckRequest {
            service: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    assert_eq!(
        get("/livez").await.unwrap().status(),
        200,
        "alive though not ready"
    );
}

#[tokio::test]
async fn reflection_lists_both_services_v1_and_v1alpha() {
    let h = Harness::start().await;
    let channel = h.channel().await;
    {
        use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
        use tonic_reflection::pb::v1::ServerReflectionRequest;
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut resp = ServerReflectionClient::new(channel.clone())
            .server_reflection_info(futures::stream::iter([req]))
            .await
            .unwrap()
            .into_inner();
        let Some(MessageResponse::ListServicesResponse(list)) =
            resp.message().await.unwrap().unwrap().message_response
        else {
            panic!("not a list")
        };
        let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        for want in [
            "ccgw.v1.RecordPlayService",
            "ccgw.v1.AgentSessionService",
            "grpc.health.v1.Health",
        ] {
            assert!(names.iter().any(|n| n == want), "{want} in {names:?}");
        }
    }
    {
        use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
        use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol(
                "ccgw.v1.RecordPlayService".into(),
            )),
        };
        let mut resp = ServerReflectionClient::new(channel)
            .server_reflection_info(futures::stream::iter([req]))
            .await
            .unwrap()
            .into_inner();
        let msg = resp.message().await.unwrap().unwrap().message_response;
        assert!(
            matches!(msg, Some(MessageResponse::FileDescriptorResponse(ref f)) if !f.file_descriptor_proto.is_empty()),
            "{msg:?}"
        );
    }
}

#[tokio::test]
async fn metrics_count_what_happened() {
    let h = Harness::start().await;
    h.sign_in("1001").await;
    let mut play = h.play().await;
    let mut watch = play
        .watch_play_events(WatchPlayEventsRequest {
            agent_id: "1001".into(),
            types: vec![PlayEventType::PlayStopped as i32],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    for _ in 0..3 {
        play.begin_play(BeginPlayRequest {
            agent_id: "1001".into(),
            voice_path: "/a.wav".into(),
            await_outcome: true,
            ..Default::default()
        })
        .await
        .unwrap();
        play.stop_play(StopPlayRequest {
            agent_id: "1001".into(),
        })
        .await
        .unwrap();
        // The simulator is idle again once the stop's last event arrived.
        watch.message().await.unwrap().expect("PLAY_STOPPED");
    }
    expect_code(
        play.begin_play(BeginPlayRequest::default()).await,
        Code::InvalidArgument,
    );
    let text = crate::guid::reqwest_metrics(&h).await;
    let line = |l: &str| metric(&text, l);
    assert_eq!(
        line(
            r#"ccgw_grpc_server_handled_total{grpc_type="unary",grpc_service="ccgw.v1.RecordPlayService",grpc_method="BeginPlay",grpc_code="OK"}"#
        ),
        3.0,
        "{text}"
    );
    assert_eq!(
        line(
            r#"ccgw_grpc_server_handled_total{grpc_type="unary",grpc_service="ccgw.v1.RecordPlayService",grpc_method="BeginPlay",grpc_code="INVALID_ARGUMENT"}"#
        ),
        1.0
    );
    assert_eq!(
        line(r#"ccgw_gateway_requests_total{interface="beginPlay",retcode="0"}"#),
        3.0
    );
    assert_eq!(
        line(r#"ccgw_gateway_requests_total{interface="login",retcode="0"}"#),
        1.0
    );
    assert_eq!(line(r#"ccgw_sessions{state="signed_in"}"#), 1.0);
    assert!(line("ccgw_watchers") >= 1.0);
    assert!(line("ccgw_events_received_total") >= 9.0);
    assert_eq!(
        line("ccgw_events_delivered_total"),
        3.0,
        "one filtered watcher, three stops"
    );
    assert!(line("ccgw_grpc_server_handling_seconds_count") >= 8.0);
    assert!(line("ccgw_gateway_request_seconds_count") >= 7.0);
    for series in [
        "ccgw_guid_adoptions_total",
        "ccgw_resign_ins_total",
        "ccgw_watcher_overruns_total",
    ] {
        assert!(text.contains(series), "{series} exported");
    }
    assert!(!text.contains("agent_id"), "no per-agent labels");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Process {
    child: tokio::process::Child,
    addr: std::net::SocketAddr,
    admin: std::net::SocketAddr,
}

async fn spawn_bridge(sim: &Simulator, extra: &[&str]) -> Process {
    let (grpc, admin) = (free_port(), free_port());
    let addr: std::net::SocketAddr = format!("127.0.0.1:{grpc}").parse().unwrap();
    let admin_addr: std::net::SocketAddr = format!("127.0.0.1:{admin}").parse().unwrap();
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_ccgw-bridge"))
        .args(["--gateway-url", &sim.url()])
        .args(["--ca-cert", sim.ca_path().to_str().unwrap()])
        .args([
            "--listen",
            &addr.to_string(),
            "--admin-listen",
            &admin_addr.to_string(),
        ])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Wait for the listener (the process has no readiness pipe; health is the event to await).
    let started = Instant::now();
    loop {
        if let Ok(ch) = tonic::transport::Endpoint::from_shared(format!("http://{admin_addr}"))
            .unwrap()
            .connect()
            .await
        {
            let mut w = HealthClient::new(ch)
                .watch(HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .unwrap()
                .into_inner();
            until_status(&mut w, ServingStatus::Serving).await;
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "bridge did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Process {
        child,
        addr,
        admin: admin_addr,
    }
}

fn signal(child: &tokio::process::Child, sig: &str) {
    let pid = child.id().unwrap().to_string();
    let ok = std::process::Command::new("kill")
        .args([sig, &pid])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {pid}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_calls_ends_streams_and_signs_agents_out() {
    let sim = Simulator::start(fast_sim(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let mut p = spawn_bridge(&sim, &["--drain-timeout", "5s"]).await;
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", p.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut sessions = agent_session_service_client::AgentSessionServiceClient::new(ch.clone());
    let mut play = record_play_service_client::RecordPlayServiceClient::new(ch.clone());
    sessions.sign_in(sign_in_request("1001")).await.unwrap();
    sessions.sign_in(sign_in_request("1002")).await.unwrap();
    let mut stream = play
        .watch_play_events(WatchPlayEventsRequest {
            agent_id: "1001".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    sim.add_fault(Fault {
        matcher: FaultMatch::Interface(Interface::Play),
        kind: FaultKind::Latency(Duration::from_millis(1500)),
        count: Some(1),
    });
    let in_flight = tokio::spawn({
        let mut play = play.clone();
        async move { play.begin_play(play_request("1002")).await }
    });
    sim.wait_for_request(|r| r.path.ends_with("/recordplay/1002/play"))
        .await;
    let t0 = Instant::now();
    signal(&p.child, "-TERM");

    let ended = loop {
        match stream.message().await {
            Ok(Some(_)) => continue,
            other => break other,
        }
    };
    let status = ended.expect_err("stream ends with a status");
    assert_eq!(status.code(), Code::Unavailable);
    in_flight
        .await
        .unwrap()
        .expect("the in-flight call is answered, not cut");
    let exit = tokio::time::timeout(Duration::from_secs(10), p.child.wait())
        .await
        .expect("exits")
        .unwrap();
    assert!(exit.success(), "exit 0, got {exit:?}");
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "inside the drain timeout: {:?}",
        t0.elapsed()
    );
    for agent in ["1001", "1002"] {
        assert!(!sim.signed_in(agent), "{agent} signed out at the gateway");
        let path = format!("/onlineagent/{agent}/logout");
        assert!(sim
            .requests()
            .iter()
            .any(|r| r.method == "DELETE" && r.path.ends_with(&path)));
    }
    let _ = p.admin;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_call_cannot_hold_the_drain_and_a_second_signal_exits_at_once() {
    let sim = Simulator::start(SimConfig { ..fast_sim() }, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    sim.add_fault(Fault {
        matcher: FaultMatch::Interface(Interface::Play),
        kind: FaultKind::Latency(Duration::from_secs(60)),
        count: None,
    });
    for (drain, second_signal) in [("1s", false), ("30s", true)] {
        let mut p = spawn_bridge(
            &sim,
            &["--drain-timeout", drain, "--request-timeout", "60s"],
        )
        .await;
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", p.addr))
            .unwrap()
            .connect()
            .await
            .unwrap();
        agent_session_service_client::AgentSessionServiceClient::new(ch.clone())
            .sign_in(sign_in_request("1001"))
            .await
            .unwrap();
        sim.clear_requests();
        let stuck = tokio::spawn(async move {
            record_play_service_client::RecordPlayServiceClient::new(ch)
                .begin_play(play_request("1001"))
                .await
        });
        sim.wait_for_request(|r| r.path.ends_with("/play")).await;
        let t0 = Instant::now();
        signal(&p.child, "-TERM");
        if second_signal {
            // Let the first signal be handled before the second one arrives.
            let mut w = health_watch(p.admin, "").await;
            until_status(&mut w, ServingStatus::NotServing).await;
            signal(&p.child, "-TERM");
        }
        let exit = tokio::time::timeout(Duration::from_secs(10), p.child.wait())
            .await
            .expect("exits")
            .unwrap();
        let took = t0.elapsed();
        if second_signal {
            assert_eq!(exit.code(), Some(130), "second signal: immediate exit");
            assert!(took < Duration::from_secs(5), "{took:?}");
        } else {
            assert!(exit.success(), "exit 0 after the bounded drain: {exit:?}");
            assert!(
                took < Duration::from_secs(4),
                "bounded by --drain-timeout 1s: {took:?}"
            );
        }
        let _ = stuck.await;
    }
}

#[tokio::test]
async fn invalid_configuration_exits_64_before_binding() {
    // Hold the port: if the bridge bound before validating, it would fail differently.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port().to_string();
    for args in [
        vec!["--gateway-url", "http://10.0.0.5:8043"],
        vec![
            "--gateway-url",
            "https://10.0.0.5:8043",
            "--poll-timeout",
            "5s",
        ],
        vec![
            "--gateway-url",
            "https://10.0.0.5:8043",
            "--ca-cert",
            "/nonexistent.pem",
        ],
        vec![],
        // --simulate replaces the gateway: another one given beside it would be ignored.
        vec!["--simulate", "--gateway-url", "https://10.0.0.5:8043"],
    ] {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_ccgw-bridge"))
            .args(&args)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .env_remove("CCGW_GATEWAY_URL")
            .output()
            .await
            .unwrap();
        assert_eq!(out.status.code(), Some(64), "{args:?}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "one clear message: {err}");
    }
}

#[tokio::test]
async fn a_world_readable_token_file_is_refused_as_what_it_is() {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::temp_dir().join(format!("ccgw-token-{}", std::process::id()));
    std::fs::write(&path, "0123456789abcdef-token\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_ccgw-bridge"))
        .args(["--simulate", "--auth-token-file", path.to_str().unwrap()])
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .output()
        .await
        .unwrap();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--auth-token-file") && err.contains("API token"),
        "{err}"
    );
    assert!(
        !err.contains("password"),
        "a token file holds no password: {err}"
    );
}

#[tokio::test]
async fn under_simulate_a_busy_listen_port_fails_before_the_simulator_starts() {
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_ccgw-bridge"))
        .args([
            "--simulate",
            "--listen",
            &held.local_addr().unwrap().to_string(),
        ])
        .args(["--admin-listen", "127.0.0.1:0"])
        .env_remove("RUST_LOG")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(69), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot listen on") && err.contains("--listen"),
        "{err}"
    );
    assert!(
        !err.contains("simulator started"),
        "no simulator was started: {err}"
    );
}
