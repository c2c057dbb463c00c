//! Behaviour of the CC-Gateway simulator, driven over real HTTPS with a plain reqwest client
//! (no bridge code involved), so the simulator itself is known to follow the vendor notes.

use std::time::{Duration, Instant};

use ccgw_bridge::sim::{
    AuthMode, EmptyPollStyle, Fault, FaultKind, FaultMatch, Interface, SimConfig, Simulator,
};
use reqwest::header::HeaderMap;
use reqwest::Method;
use serde_json::{json, Value};

const BASE: &str = "/agentgateway/resource";
const AGENT: &str = "101";

struct Gateway {
    sim: Simulator,
    http: reqwest::Client,
}

impl Gateway {
    async fn start(config: SimConfig) -> Gateway {
        let sim = Simulator::start(config, "127.0.0.1:0".parse().unwrap())
            .await
            .expect("simulator starts");
        let ca = reqwest::Certificate::from_pem(sim.ca_pem().as_bytes()).expect("CA PEM");
        let http = {
            ccgw_bridge::install_crypto_provider();
            reqwest::Client::builder()
        }
        .tls_certs_only([ca])
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
        Gateway { sim, http }
    }

    fn quick() -> SimConfig {
        SimConfig {
            poll_hold: Duration::from_millis(300),
            play_step: Duration::from_millis(5),
            play_duration: Duration::from_millis(150),
            ..SimConfig::default()
        }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        guid: Option<&str>,
        body: Option<Value>,
    ) -> reqwest::Result<(HeaderMap, Value)> {
        let mut request = self
            .http
            .request(method, format!("{}{BASE}{path}", self.sim.url()))
            .header("Content-Type", "application/json; charset=UTF-8");
        if let Some(guid) = guid {
            request = request.header("Guid", guid);
        }
        if let Some(body) = body {
            request = request.body(body.to_string());
        }
        let response = request.send().await?;
        assert_eq!(response.status(), 200, "HTTP status of {path}");
        let headers = response.headers().clone();
        let body = response.json::<Value>().await?;
        Ok((headers, body))
    }

    async fn call(&self, method: Method, path: &str, guid: &str) -> Value {
        self.send(method, path, Some(guid), None)
            .await
            .expect("answer")
            .1
    }

    async fn login(&self, id: &str) -> String {
        let body = json!({"password": "", "phonenum": "88001"});
        let (headers, answer) = self
            .send(Method::PUT, &format!("/onlineagent/{id}"), None, Some(body))
            .await
            .expect("login answer");
        assert_eq!(answer["retcode"], "0", "{answer}");
        set_guid(&headers).expect("Set-GUID on login")
    }

    async fn poll(&self, id: &str, guid: &str) -> (HeaderMap, Value) {
        self.send(Method::GET, &format!("/agentevent/{id}"), Some(guid), None)
            .await
            .expect("poll answer")
    }

    /// Polls until an empty answer; returns the event types received.
    async fn drain(&self, id: &str, guid: &str) -> Vec<String> {
        let mut types = Vec::new();
        loop {
            let (_, answer) = self.poll(id, guid).await;
            assert_eq!(answer["retcode"], "0", "{answer}");
            match event_type(&answer) {
                Some(t) => types.push(t),
                None => return types,
            }
        }
    }

    /// Polls until an event of type `last` arrived; returns every type received, empty answers
    /// skipped.
    async fn collect_until(&self, id: &str, guid: &str, last: &str) -> Vec<String> {
        let mut types = Vec::new();
        while types.last().map(String::as_str) != Some(last) {
            let (_, answer) = self.poll(id, guid).await;
            assert_eq!(answer["retcode"], "0", "{answer}");
            types.extend(event_type(&answer));
        }
        types
    }
}

fn set_guid(headers: &HeaderMap) -> Option<String> {
    let value = headers.get("set-guid")?.to_str().ok()?;
    let guid = value.strip_prefix("JSESSIONID=")?;
    Some(guid.split(';').next()?.trim().to_owned())
}

fn event_type(answer: &Value) -> Option<String> {
    answer["event"]["eventType"].as_str().map(str::to_owned)
}

#[tokio::test]
async fn login_issues_a_guid_and_queues_sign_in_events() {
    let gw = Gateway::start(Gateway::quick()).await;
    let body = json!({"password": "", "phonenum": "88001", "status": "3"});
    let (headers, answer) = gw
        .send(Method::PUT, "/onlineagent/101", None, Some(body))
        .await
        .unwrap();
    let raw = headers["set-guid"].to_str().unwrap();
    let guid = raw.strip_prefix("JSESSIONID=").expect("JSESSIONID= prefix");
    let (uuid, node) = guid.split_once('.').expect("uuid.node");
    assert_eq!(node, "AgentGateway0");
    assert_eq!(
        uuid.split('-').map(str::len).collect::<Vec<_>>(),
        [8, 4, 4, 4, 12]
    );
    assert!(headers["set-cookie"]
        .to_str()
        .unwrap()
        .starts_with("ccgwsticky="));
    assert_eq!(answer["result"]["workno"], "101");
    assert_eq!(answer["result"]["mediatype"], "TTF");
    assert!(answer["result"]["loginTime"]
        .as_str()
        .unwrap()
        .parse::<u64>()
        .is_ok());
    assert_eq!(gw.sim.current_guid("101").as_deref(), Some(guid));
    assert!(gw.sim.signed_in("101"));

    assert_eq!(
        gw.drain("101", guid).await,
        [
            "AgentOther_InService",
            "AgentState_Ready",
            "AgentState_SetNotReady_Success"
        ]
    );

    let again = json!({"password": "", "phonenum": "88001"});
    let (_, answer) = gw
        .send(Method::PUT, "/onlineagent/101", None, Some(again))
        .await
        .unwrap();
    assert_eq!(answer["retcode"], "100-002");

    let bad = json!({"password": "", "phonenum": ""});
    let (_, answer) = gw
        .send(Method::PUT, "/onlineagent/102", None, Some(bad))
        .await
        .unwrap();
    assert_eq!(answer["retcode"], "100-001");
    assert_eq!(gw.sim.stats().sign_ins, 1);
}

#[tokio::test]
async fn poll_holds_then_answers_empty_or_with_a_new_event() {
    let gw = Gateway::start(SimConfig {
        empty_poll: EmptyPollStyle::Absent,
        ..Gateway::quick()
    })
    .await;
    let guid = gw.login(AGENT).await;
    gw.drain(AGENT, &guid).await;

    let started = Instant::now();
    let (_, answer) = gw.poll(AGENT, &guid).await;
    assert!(started.elapsed() >= Duration::from_millis(250), "held");
    assert_eq!(answer, json!({"message": "", "retcode": "0"}));

    gw.sim.clear_requests();
    let poll = gw.poll(AGENT, &guid);
    let inject = async {
        gw.sim
            .wait_for_request(|r| r.path.ends_with("/agentevent/101"))
            .await;
        gw.sim.queue_event(
            AGENT,
            json!({"eventType": "Custom", "workNo": AGENT, "content": "x"}),
        );
    };
    let started = Instant::now();
    let ((_, answer), ()) = tokio::join!(poll, inject);
    assert!(
        started.elapsed() < Duration::from_millis(250),
        "woken early"
    );
    assert_eq!(answer["event"]["eventType"], "Custom");
    assert_eq!(answer["event"]["content"], "x");

    let recorded = gw.sim.requests();
    assert_eq!(recorded[0].header("guid"), Some(guid.as_str()));
    assert_eq!(recorded[0].agent_id.as_deref(), Some(AGENT));
}

#[tokio::test]
async fn play_runs_the_documented_sequence_and_refuses_wrong_states() {
    let gw = Gateway::start(Gateway::quick()).await;
    let guid = gw.login(AGENT).await;
    gw.drain(AGENT, &guid).await;

    let answer = gw
        .call(Method::POST, "/recordplay/101/pauseplay", &guid)
        .await;
    assert_eq!(answer["retcode"], "500-003");
    let answer = gw
        .call(Method::DELETE, "/recordplay/101/stopplay", &guid)
        .await;
    assert_eq!(answer["retcode"], "500-009");

    let body = json!({"voicepath": "Y:/6/0/20161025/20011/1902050.V3", "times": 1});
    let (_, answer) = gw
        .send(
            Method::PUT,
            "/recordplay/101/play",
            Some(&guid),
            Some(body.clone()),
        )
        .await
        .unwrap();
    assert_eq!(answer["retcode"], "0", "{answer}");
    let (_, answer) = gw
        .send(Method::PUT, "/recordplay/101/play", Some(&guid), Some(body))
        .await
        .unwrap();
    assert_eq!(answer["retcode"], "500-007");

    let events = gw
        .collect_until(AGENT, &guid, "AgentMediaEvent_StopPlayDone")
        .await;
    assert_eq!(
        events,
        [
            "AgentState_Busy",
            "AgentOther_PhoneAlerting",
            "AgentOther_PhoneOffhook",
            "AgentMediaEvent_Play",
            "AgentMediaEvent_Play_Succ",
            "AgentOther_PhoneRelease",
            "AgentState_Ready",
            "AgentMediaEvent_StopPlayDone",
        ]
    );
    let answer = gw
        .call(Method::POST, "/recordplay/101/forefast/10", &guid)
        .await;
    assert_eq!(answer["retcode"], "500-002", "idle again");
}

#[tokio::test]
async fn pause_resume_jump_and_stop() {
    let gw = Gateway::start(SimConfig {
        play_duration: Duration::from_secs(30),
        ..Gateway::quick()
    })
    .await;
    let guid = gw.login(AGENT).await;
    gw.drain(AGENT, &guid).await;
    let body = json!({"voicepath": "/rec/1.V3"});
    gw.send(Method::PUT, "/recordplay/101/play", Some(&guid), Some(body))
        .await
        .unwrap();
    gw.collect_until(AGENT, &guid, "AgentMediaEvent_Play_Succ")
        .await;

    for (method, path, retcode) in [
        (Method::POST, "/recordplay/101/resumeplay", "500-005"),
        (Method::POST, "/recordplay/101/pauseplay", "0"),
        (Method::POST, "/recordplay/101/pauseplay", "500-003"),
        (Method::POST, "/recordplay/101/backfast/5", "0"),
        (
            Method::POST,
            "/recordplay/101/backfast/2147483648",
            "000-002",
        ),
        (Method::POST, "/recordplay/101/resumeplay", "0"),
        (Method::DELETE, "/recordplay/101/stopplay", "0"),
    ] {
        let answer = gw.call(method, path, &guid).await;
        assert_eq!(answer["retcode"], retcode, "{path}");
    }
    let events = gw
        .collect_until(AGENT, &guid, "AgentMediaEvent_StopPlayDone")
        .await;
    assert_eq!(
        events,
        [
            "AgentMediaEvent_PausePlayDone",
            "AgentMediaEvent_JumpPlayDone",
            "AgentMediaEvent_ResumePlayDone",
            "AgentOther_PhoneRelease",
            "AgentState_Ready",
            "AgentMediaEvent_StopPlayDone",
        ]
    );
}

#[tokio::test]
async fn failing_voicepath_gives_the_failure_sequence() {
    let gw = Gateway::start(Gateway::quick()).await;
    let guid = gw.login(AGENT).await;
    gw.drain(AGENT, &guid).await;
    let body = json!({"voicepath": "/rec/fail.V3"});
    gw.send(Method::PUT, "/recordplay/101/play", Some(&guid), Some(body))
        .await
        .unwrap();
    let mut causes = Vec::new();
    let mut types = Vec::new();
    while types.last().map(String::as_str) != Some("AgentMediaEvent_StopPlayDone") {
        let (_, answer) = gw.poll(AGENT, &guid).await;
        if let Some(t) = event_type(&answer) {
            causes.push(answer["event"]["content"]["cause"].clone());
            types.push(t);
        }
    }
    assert_eq!(
        types,
        [
            "AgentState_Busy",
            "AgentOther_PhoneAlerting",
            "AgentOther_PhoneOffhook",
            "AgentOther_PhoneRelease",
            "AgentState_Ready",
            "AgentMediaEvent_Play_Fail",
            "AgentMediaEvent_StopPlayDone",
        ]
    );
    assert_eq!(causes.last(), Some(&json!(2)));
}

#[tokio::test]
async fn strict_rotation_delivers_set_guid_on_a_poll_and_refuses_the_old_guid() {
    let gw = Gateway::start(SimConfig {
        auth: AuthMode::Dynamic {
            rotate_every: Duration::from_millis(800),
            strict: true,
            overlap: Duration::ZERO,
        },
        poll_hold: Duration::from_secs(5),
        ..Gateway::quick()
    })
    .await;
    let old = gw.login(AGENT).await;
    // Only the two queued events: an empty (held) poll would already carry the rotation.
    gw.collect_until(AGENT, &old, "AgentState_Ready").await;

    // The held poll is woken by the due rotation, long before the 5 s hold.
    let started = Instant::now();
    let (headers, answer) = gw.poll(AGENT, &old).await;
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(answer["retcode"], "0");
    let new = set_guid(&headers).expect("Set-GUID on the rotating poll");
    assert_ne!(new, old);
    assert_eq!(gw.sim.current_guid(AGENT), Some(new.clone()));

    let answer = gw
        .call(Method::POST, "/recordplay/101/pauseplay", &old)
        .await;
    assert_eq!(answer["retcode"], "100-006");
    let answer = gw
        .call(Method::POST, "/recordplay/101/pauseplay", &new)
        .await;
    assert_eq!(answer["retcode"], "500-003", "authenticated, wrong state");
    let answer = gw
        .call(
            Method::POST,
            "/recordplay/101/pauseplay",
            "nonsense.AgentGateway0",
        )
        .await;
    assert_eq!(answer["retcode"], "000-003");
}

#[tokio::test]
async fn lenient_rotation_keeps_the_old_guid_for_the_overlap() {
    let gw = Gateway::start(SimConfig {
        auth: AuthMode::Dynamic {
            rotate_every: Duration::from_secs(3600),
            strict: false,
            overlap: Duration::from_millis(300),
        },
        set_guid_attributes: true,
        ..Gateway::quick()
    })
    .await;
    let old = gw.login(AGENT).await;
    gw.drain(AGENT, &old).await;
    gw.sim.rotate_guid(AGENT);
    let (headers, _) = gw.poll(AGENT, &old).await;
    assert!(headers["set-guid"]
        .to_str()
        .unwrap()
        .ends_with("; Path=/agentgateway; Secure; HttpOnly"));
    let new = set_guid(&headers).unwrap();
    assert_ne!(new, old);
    let answer = gw
        .call(Method::POST, "/recordplay/101/pauseplay", &old)
        .await;
    assert_eq!(answer["retcode"], "500-003", "old Guid still accepted");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let answer = gw
        .call(Method::POST, "/recordplay/101/pauseplay", &old)
        .await;
    assert_eq!(answer["retcode"], "100-006", "overlap over");
}

#[tokio::test]
async fn forced_sign_out_delivers_shutdown_then_not_signed_in() {
    let gw = Gateway::start(Gateway::quick()).await;
    let guid = gw.login(AGENT).await;
    gw.drain(AGENT, &guid).await;

    gw.sim.force_sign_out(AGENT);
    assert!(!gw.sim.signed_in(AGENT));
    let answer = gw
        .call(Method::POST, "/recordplay/101/pauseplay", &guid)
        .await;
    assert_eq!(answer["retcode"], "100-006");
    let (_, answer) = gw.poll(AGENT, &guid).await;
    assert_eq!(answer["event"]["eventType"], "AgentOther_ShutdownService");
    assert!(answer["event"]["content"]["loginTime"].is_string());
    let (_, answer) = gw.poll(AGENT, &guid).await;
    assert_eq!(answer["retcode"], "100-006");
}

#[tokio::test]
async fn forcelogin_wakes_the_old_sessions_poll_with_shutdown() {
    let gw = Gateway::start(SimConfig {
        poll_hold: Duration::from_secs(5),
        ..Gateway::quick()
    })
    .await;
    let old = gw.login(AGENT).await;
    gw.collect_until(AGENT, &old, "AgentState_Ready").await;
    gw.sim.clear_requests();

    let held = gw.poll(AGENT, &old);
    let replace = async {
        gw.sim
            .wait_for_request(|r| r.header("guid") == Some(old.as_str()) && r.method == "GET")
            .await;
        let body = json!({"password": "", "phonenum": "88001"});
        gw.send(Method::PUT, "/onlineagent/101/forcelogin", None, Some(body))
            .await
            .unwrap()
    };
    let ((_, old_answer), (headers, answer)) = tokio::join!(held, replace);
    assert_eq!(answer["retcode"], "0");
    assert_eq!(
        old_answer["event"]["eventType"],
        "AgentOther_ShutdownService"
    );
    let new = set_guid(&headers).unwrap();
    assert_ne!(new, old);
    let answer = gw
        .call(Method::POST, "/recordplay/101/pauseplay", &old)
        .await;
    assert_eq!(answer["retcode"], "100-006");
    let events = gw.collect_until(AGENT, &new, "AgentState_Ready").await;
    assert_eq!(events, ["AgentOther_InService", "AgentState_Ready"]);
}

#[tokio::test]
async fn logout_ends_the_session_and_a_held_poll_answers_not_signed_in() {
    let gw = Gateway::start(SimConfig {
        poll_hold: Duration::from_secs(5),
        ..Gateway::quick()
    })
    .await;
    let guid = gw.login(AGENT).await;
    gw.collect_until(AGENT, &guid, "AgentState_Ready").await;
    gw.sim.clear_requests();
    let held = gw.poll(AGENT, &guid);
    let logout = async {
        gw.sim
            .wait_for_request(|r| r.method == "GET" && r.header("guid") == Some(guid.as_str()))
            .await;
        gw.call(Method::DELETE, "/onlineagent/101/logout", &guid)
            .await
    };
    let started = Instant::now();
    let ((_, polled), logged_out) = tokio::join!(held, logout);
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(logged_out["retcode"], "0");
    assert_eq!(polled["retcode"], "100-006");
    assert!(!gw.sim.signed_in(AGENT));
}

#[tokio::test]
async fn idle_agent_is_signed_out_with_shutdown() {
    let gw = Gateway::start(SimConfig {
        idle_timeout: Duration::from_millis(200),
        ..Gateway::quick()
    })
    .await;
    let guid = gw.login(AGENT).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!gw.sim.signed_in(AGENT));
    let events = gw
        .collect_until(AGENT, &guid, "AgentOther_ShutdownService")
        .await;
    assert_eq!(events[0], "AgentOther_InService");
}

#[tokio::test]
async fn http_routing_mimics_jax_rs() {
    let gw = Gateway::start(Gateway::quick()).await;
    let url = |p: &str| format!("{}{BASE}{p}", gw.sim.url());
    let status = |r: reqwest::Response| r.status().as_u16();
    let wrong_method = gw
        .http
        .post(url("/agentevent/101"))
        .header("Content-Type", "application/json")
        .send();
    assert_eq!(status(wrong_method.await.unwrap()), 405);
    let bad_id = gw
        .http
        .get(url("/agentevent/12a"))
        .header("Content-Type", "application/json")
        .send();
    assert_eq!(status(bad_id.await.unwrap()), 404);
    let unknown = gw.http.get(format!("{}/other", gw.sim.url())).send();
    assert_eq!(status(unknown.await.unwrap()), 404);
    let no_type = gw.http.get(url("/agentevent/101")).send();
    assert_eq!(status(no_type.await.unwrap()), 415);
    let not_signed_in = gw.call(Method::GET, "/agentevent/101", "x").await;
    assert_eq!(not_signed_in["retcode"], "100-006");
}

#[tokio::test]
async fn drop_connection_fault_closes_without_answer_and_has_no_effect() {
    let gw = Gateway::start(Gateway::quick()).await;
    let guid = gw.login(AGENT).await;
    gw.sim.add_fault(Fault {
        matcher: FaultMatch::Interface(Interface::Play),
        kind: FaultKind::DropConnection,
        count: Some(1),
    });
    let body = json!({"voicepath": "/rec/1.V3"});
    let dropped = gw
        .send(
            Method::PUT,
            "/recordplay/101/play",
            Some(&guid),
            Some(body.clone()),
        )
        .await;
    assert!(dropped.is_err(), "no answer: {dropped:?}");
    let (_, answer) = gw
        .send(Method::PUT, "/recordplay/101/play", Some(&guid), Some(body))
        .await
        .unwrap();
    assert_eq!(answer["retcode"], "0", "the dropped play had no effect");
}

#[tokio::test]
async fn drop_after_effect_fault_performs_the_operation() {
    let gw = Gateway::start(Gateway::quick()).await;
    let guid = gw.login(AGENT).await;
    gw.sim.add_fault(Fault {
        matcher: FaultMatch::PathContains("/play".into()),
        kind: FaultKind::DropAfterEffect,
        count: Some(1),
    });
    let body = json!({"voicepath": "/rec/1.V3"});
    let dropped = gw
        .send(
            Method::PUT,
            "/recordplay/101/play",
            Some(&guid),
            Some(body.clone()),
        )
        .await;
    assert!(dropped.is_err());
    let (_, answer) = gw
        .send(Method::PUT, "/recordplay/101/play", Some(&guid), Some(body))
        .await
        .unwrap();
    assert_eq!(answer["retcode"], "500-007", "the first play did start");
}

#[tokio::test]
async fn answer_faults_on_the_wire() {
    let gw = Gateway::start(Gateway::quick()).await;
    let guid = gw.login(AGENT).await;
    let url = format!("{}{BASE}/recordplay/101/pauseplay", gw.sim.url());
    let send = || {
        gw.http
            .post(&url)
            .header("Content-Type", "application/json; charset=UTF-8")
            .header("Guid", &guid)
            .send()
    };
    let fault = |kind| Fault {
        matcher: FaultMatch::Any,
        kind,
        count: Some(1),
    };

    gw.sim.add_fault(fault(FaultKind::HttpStatus(503)));
    assert_eq!(send().await.unwrap().status(), 503);

    gw.sim.add_fault(fault(FaultKind::Retcode {
        retcode: "100-007".into(),
        message: "boom".into(),
    }));
    let answer: Value = send().await.unwrap().json().await.unwrap();
    assert_eq!(answer["retcode"], "100-007");

    gw.sim.add_fault(fault(FaultKind::MalformedBody));
    let response = send().await.unwrap();
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    assert!(serde_json::from_str::<Value>(&response.text().await.unwrap()).is_err());

    gw.sim.add_fault(fault(FaultKind::NonJsonContentType));
    let response = send().await.unwrap();
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));

    gw.sim.add_fault(fault(FaultKind::Oversized(100_000)));
    let body = send().await.unwrap().bytes().await.unwrap();
    assert_eq!(body.len(), 100_000);

    gw.sim.add_fault(fault(FaultKind::Truncated));
    let response = send().await.expect("status and headers arrive");
    assert_eq!(response.status(), 200);
    assert!(response.bytes().await.is_err(), "the body is cut short");

    gw.sim
        .add_fault(fault(FaultKind::Latency(Duration::from_millis(200))));
    let started = Instant::now();
    let answer: Value = send().await.unwrap().json().await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(answer["retcode"], "500-003");
}

#[tokio::test]
async fn control_plane_queues_events_and_reports_stats() {
    let gw = Gateway::start(Gateway::quick()).await;
    let guid = gw.login(AGENT).await;
    gw.drain(AGENT, &guid).await;
    let event = json!({"eventType": "AgentEvent_Call_Release", "workNo": AGENT, "content": "1456403549-15"});
    let response = gw
        .http
        .post(format!("{}/_sim/agents/101/events", gw.sim.url()))
        .body(event.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let (_, answer) = gw.poll(AGENT, &guid).await;
    assert_eq!(answer["event"], event);

    let stats: Value = gw
        .http
        .get(format!("{}/_sim/stats", gw.sim.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["sign_ins"], 1);
    assert!(stats["polls"].as_u64().unwrap() >= 4);
    assert!(stats["tls_handshakes"].as_u64().unwrap() >= 1);
    assert!(gw.sim.stats().active_connections >= 1);

    let response = gw
        .http
        .post(format!("{}/_sim/agents/101/kill", gw.sim.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(!gw.sim.signed_in(AGENT));
}

#[tokio::test]
async fn serves_h2_and_http1() {
    let sim = Simulator::start(Gateway::quick(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let ca = reqwest::Certificate::from_pem(sim.ca_pem().as_bytes()).unwrap();
    for (client, version) in [
        (
            {
                ccgw_bridge::install_crypto_provider();
                reqwest::Client::builder()
            }
            .tls_certs_only([ca.clone()])
            .build(),
            reqwest::Version::HTTP_2,
        ),
        (
            {
                ccgw_bridge::install_crypto_provider();
                reqwest::Client::builder()
            }
            .tls_certs_only([ca])
            .http1_only()
            .build(),
            reqwest::Version::HTTP_11,
        ),
    ] {
        let client = client.unwrap();
        let response = client
            .get(format!("{}/_sim/stats", sim.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(response.version(), version);
        // A truncated answer looks the same on both protocols: headers, then a failing body.
        sim.add_fault(Fault {
            matcher: FaultMatch::Any,
            kind: FaultKind::Truncated,
            count: Some(1),
        });
        let response = client
            .get(format!("{}{BASE}/agentevent/101", sim.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(response.headers()["content-length"], "47");
        assert!(response.bytes().await.is_err());
    }
    assert!(std::fs::read_to_string(sim.ca_path())
        .unwrap()
        .contains("BEGIN CERTIFICATE"));
}

#[tokio::test]
async fn a_newer_poll_replaces_a_held_one() {
    let gw = Gateway::start(SimConfig {
        poll_hold: Duration::from_secs(5),
        ..Gateway::quick()
    })
    .await;
    let guid = gw.login(AGENT).await;
    gw.collect_until(AGENT, &guid, "AgentState_Ready").await;
    gw.sim.clear_requests();

    let started = Instant::now();
    let first = async {
        let answer = gw.poll(AGENT, &guid).await.1;
        (answer, started.elapsed())
    };
    let second = async {
        gw.sim.wait_for_request(|r| r.method == "GET").await;
        let path = "/agentevent/101?calldata=second";
        let poll = gw.send(Method::GET, path, Some(&guid), None);
        let inject = async {
            gw.sim
                .wait_for_request(|r| r.query.as_deref() == Some("calldata=second"))
                .await;
            gw.sim.queue_event(AGENT, json!({"eventType": "Late"}));
        };
        tokio::join!(poll, inject).0.unwrap().1
    };
    let ((first, first_took), second) = tokio::join!(first, second);
    assert!(first_took < Duration::from_secs(2), "replaced at once");
    assert!(
        event_type(&first).is_none(),
        "replaced poll answers empty: {first}"
    );
    assert_eq!(second["event"]["eventType"], "Late");
}

#[tokio::test]
async fn update_guid_returns_the_new_guid_in_the_body() {
    let gw = Gateway::start(Gateway::quick()).await;
    let old = gw.login(AGENT).await;
    let (headers, answer) = gw
        .send(Method::PUT, "/onlineagent/101/updateGuid", Some(&old), None)
        .await
        .unwrap();
    assert!(headers.get("set-guid").is_none());
    assert_eq!(answer["retcode"], "0");
    let new = answer["result"]["guid"].as_str().unwrap().to_owned();
    assert_ne!(new, old);
    assert_eq!(gw.sim.current_guid(AGENT), Some(new.clone()));
    let answer = gw
        .call(Method::POST, "/recordplay/101/pauseplay", &old)
        .await;
    assert_eq!(answer["retcode"], "100-006");
    let answer = gw
        .call(Method::POST, "/recordplay/101/pauseplay", &new)
        .await;
    assert_eq!(answer["retcode"], "500-003");
}

/// Issue 22: the simulator records who created each session and how it ended, so tests check
/// "no bridge ended another client's session" from the gateway's own view.
#[tokio::test]
async fn every_session_end_is_recorded_with_its_creator_and_cause() {
    use ccgw_bridge::sim::{Client, EndCause, SessionEnd};
    let gw = Gateway::start(Gateway::quick()).await;
    let end = |created_by, cause| SessionEnd {
        agent_id: AGENT.into(),
        created_by,
        cause,
    };
    // A bridge signs in and out with its own Guid.
    let guid = gw.login(AGENT).await;
    let out = gw
        .call(
            Method::DELETE,
            &format!("/onlineagent/{AGENT}/logout"),
            &guid,
        )
        .await;
    assert_eq!(out["retcode"], "0", "{out}");
    // A person signs in; a bridge's logout with a stale Guid cannot end that session.
    gw.sim.sign_in_elsewhere(AGENT, false).unwrap();
    let refused = gw
        .call(
            Method::DELETE,
            &format!("/onlineagent/{AGENT}/logout"),
            &guid,
        )
        .await;
    assert_eq!(refused["retcode"], "100-006", "{refused}");
    // A supervisor replaces the person's session; then the person signs out.
    gw.sim.supervisor_replaces(AGENT);
    assert!(gw.sim.person_signs_out(AGENT));
    // A bridge signs in and an administrator forces it out.
    gw.login(AGENT).await;
    gw.sim.force_sign_out(AGENT);
    assert_eq!(
        gw.sim.session_ends(),
        [
            end(Client::Bridge, EndCause::OwnGuidLogout),
            end(
                Client::Person,
                EndCause::ForceLogin {
                    by: Client::Supervisor
                }
            ),
            end(Client::Supervisor, EndCause::PersonSignedOut),
            end(Client::Bridge, EndCause::Administrator),
        ]
    );
    assert!(gw.sim.session_ends().iter().all(|e| !e.kicked_someone()));
    assert_eq!(gw.sim.stats().other_clients_kicked, 0);
    // A bridge's forcelogin over a person's session is what the record calls a kick.
    gw.sim.sign_in_elsewhere(AGENT, false).unwrap();
    let body = json!({"password": "", "phonenum": "88001"});
    gw.send(
        Method::PUT,
        &format!("/onlineagent/{AGENT}/forcelogin"),
        None,
        Some(body),
    )
    .await
    .expect("forcelogin answer");
    assert!(gw.sim.session_ends().last().unwrap().kicked_someone());
    assert_eq!(gw.sim.stats().other_clients_kicked, 1);
}
