//! Every RPC's happy path, checked down to the HTTP request the gateway received.

use crate::helpers::*;
use ccgw_bridge::proto::*;
use ccgw_bridge::sim::RecordedRequest;
use serde_json::json;

const BASE: &str = "/agentgateway/resource";

async fn last_request(h: &Harness, method: &str, path: &str) -> RecordedRequest {
    let path = format!("{BASE}{path}");
    let method = method.to_owned();
    h.sim
        .wait_for_request(move |r| r.method == method && r.path == path)
        .await
}

/// Headers every operation request must carry (api-notes §8).
fn assert_operation_headers(h: &Harness, r: &RecordedRequest, agent: &str) {
    assert_eq!(
        r.header("content-type"),
        Some("application/json; charset=UTF-8"),
        "{r:?}"
    );
    assert_eq!(
        r.header("guid").map(str::to_owned),
        h.sim.current_guid(agent),
        "operation requests carry the agent's current Guid"
    );
}

#[tokio::test]
async fn sign_in_sends_login_with_only_the_set_fields() {
    let h = Harness::start().await;
    let mut sessions = h.sessions().await;
    let session = sessions
        .sign_in(SignInRequest {
            agent_id: "1001".into(),
            password: "pw".into(),
            phone_number: "88001".into(),
            status: Some(3),
            auto_answer: Some(false),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(session.agent_id, "1001");
    assert_eq!(session.state, SessionState::SignedIn as i32);
    assert!(!session.session_id.is_empty());
    assert!(session.signed_in_at.is_some());

    let login = last_request(&h, "PUT", "/onlineagent/1001").await;
    assert_eq!(
        login.header("content-type"),
        Some("application/json; charset=UTF-8")
    );
    assert_eq!(login.header("guid"), None, "sign-in has no Guid yet");
    assert_eq!(
        login.json().unwrap(),
        json!({"password": "pw", "phonenum": "88001", "status": 3, "autoanswer": false})
    );
    // The poll loop starts at once and carries the Guid from Set-GUID.
    let poll = last_request(&h, "GET", "/agentevent/1001").await;
    assert_operation_headers(&h, &poll, "1001");

    // Signing in again returns the same session without a second login.
    let again = h.sign_in_with_password("1001", "pw").await;
    assert_eq!(again.session_id, session.session_id);
    let logins = h
        .sim
        .requests()
        .iter()
        .filter(|r| r.path.starts_with(&format!("{BASE}/onlineagent/1001")) && r.method == "PUT")
        .count();
    assert_eq!(logins, 1);
}

#[tokio::test]
async fn force_sign_in_uses_forcelogin() {
    let h = Harness::start().await;
    let mut req = sign_in_request("1002");
    req.force = true;
    h.sessions().await.sign_in(req).await.unwrap();
    let r = last_request(&h, "PUT", "/onlineagent/1002/forcelogin").await;
    assert_eq!(
        r.json().unwrap(),
        json!({"password": "", "phonenum": "88001"})
    );
}

#[tokio::test]
async fn begin_play_maps_every_field_and_omits_unset_ones() {
    let h = Harness::start().await;
    h.sign_in("1001").await;
    let mut play = h.play().await;
    play.begin_play(BeginPlayRequest {
        agent_id: "1001".into(),
        voice_path: "Y:/1/0/20180621/105/1406470.V3".into(),
        start_position_seconds: Some(7),
        volume: Some(20),
        speed: Some(30),
        times: Some(1),
        location_id: Some(-1),
        ..Default::default()
    })
    .await
    .unwrap();
    let r = last_request(&h, "PUT", "/recordplay/1001/play").await;
    assert_operation_headers(&h, &r, "1001");
    assert_eq!(
        r.json().unwrap(),
        json!({
            "voicepath": "Y:/1/0/20180621/105/1406470.V3",
            "startpostion": 7,
            "volumechange": "20",
            "speedchange": "30",
            "times": 1,
            "locationId": -1
        })
    );

    h.sign_in("1002").await;
    play.begin_play(BeginPlayRequest {
        agent_id: "1002".into(),
        voice_path: "/prompts/welcome.wav".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let r = last_request(&h, "PUT", "/recordplay/1002/play").await;
    assert_eq!(
        r.json().unwrap(),
        json!({"voicepath": "/prompts/welcome.wav"})
    );
}

#[tokio::test]
async fn play_controls_use_the_vendor_methods_and_paths() {
    let h = Harness::start().await;
    h.sign_in("1001").await;
    let mut play = h.play().await;
    let agent = || "1001".to_string();
    let started = play
        .begin_play(BeginPlayRequest {
            agent_id: agent(),
            voice_path: "/a.wav".into(),
            await_outcome: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(started.outcome_sequence.is_some(), "awaited Play_Succ");
    play.pause_play(PausePlayRequest { agent_id: agent() })
        .await
        .unwrap();
    assert_operation_headers(
        &h,
        &last_request(&h, "POST", "/recordplay/1001/pauseplay").await,
        "1001",
    );
    play.resume_play(ResumePlayRequest { agent_id: agent() })
        .await
        .unwrap();
    assert_operation_headers(
        &h,
        &last_request(&h, "POST", "/recordplay/1001/resumeplay").await,
        "1001",
    );
    play.fast_forward(FastForwardRequest {
        agent_id: agent(),
        seconds: 15,
    })
    .await
    .unwrap();
    let r = last_request(&h, "POST", "/recordplay/1001/forefast/15").await;
    assert_eq!(r.body, "", "jumps carry no body");
    play.rewind(RewindRequest {
        agent_id: agent(),
        seconds: 5,
    })
    .await
    .unwrap();
    last_request(&h, "POST", "/recordplay/1001/backfast/5").await;
    let stopped = play
        .stop_play(StopPlayRequest { agent_id: agent() })
        .await
        .unwrap();
    assert!(stopped.get_ref().message.is_empty() || stopped.get_ref().message == "success");
    let r = last_request(&h, "DELETE", "/recordplay/1001/stopplay").await;
    assert_operation_headers(&h, &r, "1001");
}

#[tokio::test]
async fn get_list_and_sign_out() {
    let h = Harness::start().await;
    let signed = h.sign_in("1001").await;
    h.sign_in("1002").await;
    let mut sessions = h.sessions().await;
    let got = sessions
        .get_session(GetSessionRequest {
            agent_id: "1001".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.session_id, signed.session_id);
    assert!(got.can_resign_in);
    let list = sessions
        .list_sessions(ListSessionsRequest {})
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<_> = list.sessions.iter().map(|s| s.agent_id.as_str()).collect();
    assert_eq!(ids, ["1001", "1002"]);

    sessions
        .sign_out(SignOutRequest {
            agent_id: "1001".into(),
        })
        .await
        .unwrap();
    let r = last_request(&h, "DELETE", "/onlineagent/1001/logout").await;
    assert_operation_headers_after_logout(&r);
    assert!(!h.sim.signed_in("1001"));
    let s = expect_code(
        sessions
            .get_session(GetSessionRequest {
                agent_id: "1001".into(),
            })
            .await,
        tonic::Code::NotFound,
    );
    assert_eq!(reason(&s), "SESSION_NOT_FOUND");
    let s = expect_code(
        h.play()
            .await
            .stop_play(StopPlayRequest {
                agent_id: "1001".into(),
            })
            .await,
        tonic::Code::FailedPrecondition,
    );
    assert_eq!(reason(&s), "AGENT_NOT_SIGNED_IN");
}

fn assert_operation_headers_after_logout(r: &RecordedRequest) {
    assert_eq!(
        r.header("content-type"),
        Some("application/json; charset=UTF-8")
    );
    assert!(r.header("guid").is_some_and(|g| !g.is_empty()));
}

impl Harness {
    async fn sign_in_with_password(&self, agent: &str, password: &str) -> Session {
        let mut req = sign_in_request(agent);
        req.password = password.into();
        self.sessions()
            .await
            .sign_in(req)
            .await
            .unwrap()
            .into_inner()
    }
}
