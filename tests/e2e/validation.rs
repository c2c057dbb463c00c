//! Request validation, end to end: every bad request is refused with INVALID_ARGUMENT and a
//! `BadRequest` naming exactly the offending field (as spelled in the proto), before anything
//! reaches the gateway; requests about agents the bridge does not hold fail without a gateway
//! call too. The bridge keeps serving throughout.

use crate::helpers::*;
use ccgw_bridge::proto::*;
use ccgw_bridge::sim::RecordedRequest;
use tonic::Code;

/// A signed-in agent the cases use when the agent id itself is not what is being tested.
const AGENT: &str = "1001";

/// One call of any RPC, reduced to "did it fail, and how".
#[derive(Debug, Clone)]
enum Call {
    SignIn(SignInRequest),
    SignOut(SignOutRequest),
    GetSession(GetSessionRequest),
    BeginPlay(BeginPlayRequest),
    StopPlay(StopPlayRequest),
    PausePlay(PausePlayRequest),
    ResumePlay(ResumePlayRequest),
    FastForward(FastForwardRequest),
    Rewind(RewindRequest),
    WatchPlayEvents(WatchPlayEventsRequest),
    WatchAgentEvents(WatchAgentEventsRequest),
}

impl Call {
    async fn invoke(self, h: &Harness) -> Result<(), tonic::Status> {
        let mut play = h.play().await;
        let mut sessions = h.sessions().await;
        match self {
            Call::SignIn(r) => sessions.sign_in(r).await.map(drop),
            Call::SignOut(r) => sessions.sign_out(r).await.map(drop),
            Call::GetSession(r) => sessions.get_session(r).await.map(drop),
            Call::BeginPlay(r) => play.begin_play(r).await.map(drop),
            Call::StopPlay(r) => play.stop_play(r).await.map(drop),
            Call::PausePlay(r) => play.pause_play(r).await.map(drop),
            Call::ResumePlay(r) => play.resume_play(r).await.map(drop),
            Call::FastForward(r) => play.fast_forward(r).await.map(drop),
            Call::Rewind(r) => play.rewind(r).await.map(drop),
            Call::WatchPlayEvents(r) => play.watch_play_events(r).await.map(drop),
            Call::WatchAgentEvents(r) => sessions.watch_agent_events(r).await.map(drop),
        }
    }
}

fn sign_in(agent: &str, f: impl FnOnce(&mut SignInRequest)) -> Call {
    let mut r = sign_in_request(agent);
    f(&mut r);
    Call::SignIn(r)
}

fn begin(f: impl FnOnce(&mut BeginPlayRequest)) -> Call {
    let mut r = BeginPlayRequest {
        agent_id: AGENT.into(),
        voice_path: "/prompts/welcome.wav".into(),
        ..Default::default()
    };
    f(&mut r);
    Call::BeginPlay(r)
}

fn watch_play(types: Vec<i32>) -> Call {
    Call::WatchPlayEvents(WatchPlayEventsRequest {
        agent_id: AGENT.into(),
        types,
        ..Default::default()
    })
}

/// Every agent request the bridge made on a caller's behalf: polls (which run all the time)
/// and the readiness probe (which names no agent) excluded.
fn operations(h: &Harness) -> Vec<RecordedRequest> {
    h.sim
        .requests()
        .into_iter()
        .filter(|r| r.agent_id.is_some() && !r.path.contains("/agentevent/"))
        .collect()
}

/// Every bad request: (what it is, the call, the one field it must name).
fn bad_requests() -> Vec<(&'static str, Call, &'static str)> {
    let id = |s: &str| s.to_owned();
    vec![
        // --- SignIn ---
        ("sign-in: empty agent id", sign_in("", |_| {}), "agent_id"),
        (
            "sign-in: agent id below range",
            sign_in("100", |_| {}),
            "agent_id",
        ),
        (
            "sign-in: agent id above range",
            sign_in("1000000", |_| {}),
            "agent_id",
        ),
        (
            "sign-in: agent id leading zero",
            sign_in("0101", |_| {}),
            "agent_id",
        ),
        (
            "sign-in: agent id with letters",
            sign_in("12a", |_| {}),
            "agent_id",
        ),
        (
            "sign-in: full-width digits",
            sign_in("１０１", |_| {}),
            "agent_id",
        ),
        (
            "sign-in: arabic-indic digits",
            sign_in("٣٠٠", |_| {}),
            "agent_id",
        ),
        (
            "sign-in: agent id with newline",
            sign_in("1001\n", |_| {}),
            "agent_id",
        ),
        (
            "sign-in: agent id overflowing u64",
            sign_in("99999999999999999999999", |_| {}),
            "agent_id",
        ),
        (
            "sign-in: password of 33 characters",
            sign_in(AGENT, |r| r.password = "p".repeat(33)),
            "password",
        ),
        (
            "sign-in: password with a control character",
            sign_in(AGENT, |r| r.password = "pa\u{7}ss".into()),
            "password",
        ),
        (
            "sign-in: empty phone number",
            sign_in(AGENT, |r| r.phone_number.clear()),
            "phone_number",
        ),
        (
            "sign-in: phone number of 25 digits",
            sign_in(AGENT, |r| r.phone_number = "1".repeat(25)),
            "phone_number",
        ),
        (
            "sign-in: phone number with a dash",
            sign_in(AGENT, |r| r.phone_number = "12-34".into()),
            "phone_number",
        ),
        (
            "sign-in: phone number in full-width digits",
            sign_in(AGENT, |r| r.phone_number = "８８００１".into()),
            "phone_number",
        ),
        (
            "sign-in: agent type 5",
            sign_in(AGENT, |r| r.agent_type = Some(5)),
            "agent_type",
        ),
        (
            "sign-in: status 6",
            sign_in(AGENT, |r| r.status = Some(6)),
            "status",
        ),
        (
            "sign-in: status 0",
            sign_in(AGENT, |r| r.status = Some(0)),
            "status",
        ),
        // --- SignOut / GetSession ---
        (
            "sign-out: empty agent id",
            Call::SignOut(SignOutRequest { agent_id: id("") }),
            "agent_id",
        ),
        (
            "sign-out: letters",
            Call::SignOut(SignOutRequest {
                agent_id: id("abc"),
            }),
            "agent_id",
        ),
        (
            "get-session: agent id 99",
            Call::GetSession(GetSessionRequest { agent_id: id("99") }),
            "agent_id",
        ),
        (
            "get-session: leading space",
            Call::GetSession(GetSessionRequest {
                agent_id: id(" 1001"),
            }),
            "agent_id",
        ),
        // --- BeginPlay ---
        (
            "begin: agent id 0",
            begin(|r| r.agent_id = id("0")),
            "agent_id",
        ),
        (
            "begin: agent id 100",
            begin(|r| r.agent_id = id("100")),
            "agent_id",
        ),
        (
            "begin: empty voice path",
            begin(|r| r.voice_path.clear()),
            "voice_path",
        ),
        (
            "begin: voice path of 101 characters",
            begin(|r| r.voice_path = "a".repeat(101)),
            "voice_path",
        ),
        (
            "begin: voice path of 101 two-byte characters",
            begin(|r| r.voice_path = "é".repeat(101)),
            "voice_path",
        ),
        (
            "begin: voice path with CR LF",
            begin(|r| r.voice_path = "/a\r\nb.wav".into()),
            "voice_path",
        ),
        (
            "begin: voice path with NUL",
            begin(|r| r.voice_path = "/a\0b.wav".into()),
            "voice_path",
        ),
        (
            "begin: voice path with a C1 control",
            begin(|r| r.voice_path = "/a\u{85}b.wav".into()),
            "voice_path",
        ),
        (
            "begin: negative start position",
            begin(|r| r.start_position_seconds = Some(-1)),
            "start_position_seconds",
        ),
        (
            "begin: start position i64::MIN",
            begin(|r| r.start_position_seconds = Some(i64::MIN)),
            "start_position_seconds",
        ),
        (
            "begin: volume 100000",
            begin(|r| r.volume = Some(100_000)),
            "volume",
        ),
        (
            "begin: speed u32::MAX",
            begin(|r| r.speed = Some(u32::MAX)),
            "speed",
        ),
        ("begin: times 0", begin(|r| r.times = Some(0)), "times"),
        (
            "begin: times 100000",
            begin(|r| r.times = Some(100_000)),
            "times",
        ),
        (
            "begin: location -2",
            begin(|r| r.location_id = Some(-2)),
            "location_id",
        ),
        (
            "begin: location 65536",
            begin(|r| r.location_id = Some(65_536)),
            "location_id",
        ),
        // --- StopPlay / PausePlay / ResumePlay ---
        (
            "stop: empty agent id",
            Call::StopPlay(StopPlayRequest { agent_id: id("") }),
            "agent_id",
        ),
        (
            "stop: exponent notation",
            Call::StopPlay(StopPlayRequest {
                agent_id: id("1e3"),
            }),
            "agent_id",
        ),
        (
            "pause: plus sign",
            Call::PausePlay(PausePlayRequest {
                agent_id: id("+1001"),
            }),
            "agent_id",
        ),
        (
            "pause: agent id 1000000",
            Call::PausePlay(PausePlayRequest {
                agent_id: id("1000000"),
            }),
            "agent_id",
        ),
        (
            "resume: minus sign",
            Call::ResumePlay(ResumePlayRequest {
                agent_id: id("-1001"),
            }),
            "agent_id",
        ),
        (
            "resume: leading zero",
            Call::ResumePlay(ResumePlayRequest {
                agent_id: id("01001"),
            }),
            "agent_id",
        ),
        // --- FastForward / Rewind ---
        (
            "forward: seconds 2147483648",
            Call::FastForward(FastForwardRequest {
                agent_id: id(AGENT),
                seconds: 2_147_483_648,
            }),
            "seconds",
        ),
        (
            "forward: seconds u32::MAX",
            Call::FastForward(FastForwardRequest {
                agent_id: id(AGENT),
                seconds: u32::MAX,
            }),
            "seconds",
        ),
        (
            "forward: agent id 100",
            Call::FastForward(FastForwardRequest {
                agent_id: id("100"),
                seconds: 5,
            }),
            "agent_id",
        ),
        (
            "rewind: seconds 2147483648",
            Call::Rewind(RewindRequest {
                agent_id: id(AGENT),
                seconds: 2_147_483_648,
            }),
            "seconds",
        ),
        (
            "rewind: hex agent id",
            Call::Rewind(RewindRequest {
                agent_id: id("0x65"),
                seconds: 5,
            }),
            "agent_id",
        ),
        // --- WatchPlayEvents ---
        ("watch-play: type 99", watch_play(vec![99]), "types[0]"),
        (
            "watch-play: type UNSPECIFIED",
            watch_play(vec![0]),
            "types[0]",
        ),
        (
            "watch-play: second type bad",
            watch_play(vec![1, 99]),
            "types[1]",
        ),
        (
            "watch-play: negative type",
            watch_play(vec![2, 3, -1]),
            "types[2]",
        ),
        (
            "watch-play: resume_after without session_id",
            Call::WatchPlayEvents(WatchPlayEventsRequest {
                agent_id: id(AGENT),
                resume_after: Some(0),
                ..Default::default()
            }),
            "session_id",
        ),
        (
            "watch-play: empty agent id",
            Call::WatchPlayEvents(WatchPlayEventsRequest::default()),
            "agent_id",
        ),
        // --- WatchAgentEvents ---
        (
            "watch-agent: resume_after without session_id",
            Call::WatchAgentEvents(WatchAgentEventsRequest {
                agent_id: id(AGENT),
                resume_after: Some(5),
                session_id: String::new(),
            }),
            "session_id",
        ),
        (
            "watch-agent: agent id 100",
            Call::WatchAgentEvents(WatchAgentEventsRequest {
                agent_id: id("100"),
                ..Default::default()
            }),
            "agent_id",
        ),
    ]
}

#[tokio::test]
async fn every_bad_request_names_its_field_and_never_reaches_the_gateway() {
    let h = Harness::start().await;
    let session = h.sign_in(AGENT).await;
    let cases = bad_requests();
    assert!(cases.len() >= 40, "{} cases", cases.len());
    let mut sessions = h.sessions().await;
    for (what, call, field) in cases {
        let before = operations(&h).len();
        let status = expect_code(call.clone().invoke(&h).await, Code::InvalidArgument);
        assert_eq!(
            violated_fields(&status),
            [field],
            "{what}: {call:?} -> {status:?}"
        );
        assert!(
            status.message().contains(field),
            "{what}: message names the field: {}",
            status.message()
        );
        let after = operations(&h);
        assert_eq!(
            after.len(),
            before,
            "{what}: the gateway received {:?}",
            &after[before..]
        );
        // Still serving, and the held session is untouched.
        let got = sessions
            .get_session(GetSessionRequest {
                agent_id: AGENT.into(),
            })
            .await
            .unwrap_or_else(|s| panic!("{what}: bridge stopped serving: {s:?}"))
            .into_inner();
        assert_eq!(got.session_id, session.session_id, "{what}");
    }
    // A valid operation still reaches the gateway afterwards.
    h.play()
        .await
        .begin_play(BeginPlayRequest {
            agent_id: AGENT.into(),
            voice_path: "/prompts/welcome.wav".into(),
            ..Default::default()
        })
        .await
        .expect("valid BeginPlay after the bad ones");
}

#[tokio::test]
async fn every_violation_is_reported_at_once() {
    let h = Harness::start().await;
    let status = expect_code(
        h.play()
            .await
            .begin_play(BeginPlayRequest {
                agent_id: "0".into(),
                voice_path: String::new(),
                start_position_seconds: Some(-5),
                volume: Some(100_000),
                speed: Some(100_000),
                times: Some(0),
                location_id: Some(-7),
                await_outcome: false,
            })
            .await,
        Code::InvalidArgument,
    );
    assert_eq!(
        violated_fields(&status),
        [
            "agent_id",
            "voice_path",
            "start_position_seconds",
            "volume",
            "speed",
            "times",
            "location_id"
        ]
    );
    let status = expect_code(
        h.sessions()
            .await
            .sign_in(SignInRequest {
                agent_id: "abc".into(),
                password: "x".repeat(40),
                phone_number: String::new(),
                agent_type: Some(1),
                status: Some(9),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
    );
    assert_eq!(
        violated_fields(&status),
        [
            "agent_id",
            "password",
            "phone_number",
            "agent_type",
            "status"
        ]
    );
    assert!(operations(&h).is_empty(), "{:?}", operations(&h));
}

#[tokio::test]
async fn boundary_values_are_accepted() {
    let h = Harness::start().await;
    // Agent ids at both ends of the default range, with the longest password and phone number.
    for agent in ["101", "999999"] {
        let s = h
            .sessions()
            .await
            .sign_in(SignInRequest {
                agent_id: agent.into(),
                password: "ü".repeat(32),
                phone_number: "9".repeat(24),
                agent_type: Some(11),
                status: Some(5),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|s| panic!("{agent}: {s:?}"))
            .into_inner();
        assert_eq!(s.agent_id, agent);
    }
    h.sign_in("1001").await;
    h.sign_in("1002").await;
    let mut play = h.play().await;
    // 100 characters of 2 and of 4 bytes each: length counts characters, not bytes.
    for (agent, path) in [("1001", "é".repeat(100)), ("1002", "😀".repeat(100))] {
        play.begin_play(BeginPlayRequest {
            agent_id: agent.into(),
            voice_path: path.clone(),
            start_position_seconds: Some(0),
            volume: Some(99_999),
            speed: Some(0),
            times: Some(99_999),
            location_id: Some(-1),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|s| panic!("{agent}: 100 multi-byte characters must pass: {s:?}"));
        let path_on_wire = format!("/agentgateway/resource/recordplay/{agent}/play");
        let r = h
            .sim
            .wait_for_request(move |r| r.path == path_on_wire)
            .await;
        assert_eq!(r.json().unwrap()["voicepath"], path.as_str());
    }
    play.fast_forward(FastForwardRequest {
        agent_id: "1001".into(),
        seconds: 2_147_483_647,
    })
    .await
    .map(drop)
    .or_else(|s| {
        // The jump reaches the gateway; only its state answer may refuse it.
        (s.code() == Code::FailedPrecondition)
            .then_some(())
            .ok_or(s)
    })
    .expect("seconds 2147483647 passes validation");
    h.sim
        .wait_for_request(|r| r.path.ends_with("/recordplay/1001/forefast/2147483647"))
        .await;
    let types = (1..=7).collect::<Vec<i32>>();
    play.watch_play_events(WatchPlayEventsRequest {
        agent_id: "1001".into(),
        types,
        ..Default::default()
    })
    .await
    .expect("every defined play event type is accepted");
}

#[tokio::test]
async fn agents_the_bridge_does_not_hold_fail_without_a_gateway_call() {
    let h = Harness::start().await;
    let unknown = "4242";
    // SignOut is idempotent (OK) and GetSession NOT_FOUND: `statuses.rs`.
    let calls = vec![
        Call::BeginPlay(BeginPlayRequest {
            agent_id: unknown.into(),
            voice_path: "/a.wav".into(),
            ..Default::default()
        }),
        Call::StopPlay(StopPlayRequest {
            agent_id: unknown.into(),
        }),
        Call::PausePlay(PausePlayRequest {
            agent_id: unknown.into(),
        }),
        Call::ResumePlay(ResumePlayRequest {
            agent_id: unknown.into(),
        }),
        Call::FastForward(FastForwardRequest {
            agent_id: unknown.into(),
            seconds: 1,
        }),
        Call::Rewind(RewindRequest {
            agent_id: unknown.into(),
            seconds: 1,
        }),
        Call::WatchPlayEvents(WatchPlayEventsRequest {
            agent_id: unknown.into(),
            ..Default::default()
        }),
        Call::WatchAgentEvents(WatchAgentEventsRequest {
            agent_id: unknown.into(),
            ..Default::default()
        }),
    ];
    for call in calls {
        let status = expect_code(call.clone().invoke(&h).await, Code::FailedPrecondition);
        assert_eq!(reason(&status), "AGENT_NOT_SIGNED_IN", "{call:?}");
        assert!(violated_fields(&status).is_empty(), "{call:?}");
    }
    Call::SignOut(SignOutRequest {
        agent_id: unknown.into(),
    })
    .invoke(&h)
    .await
    .expect("SignOut of an agent not held is OK");
    let status = expect_code(
        Call::GetSession(GetSessionRequest {
            agent_id: unknown.into(),
        })
        .invoke(&h)
        .await,
        Code::NotFound,
    );
    assert_eq!(reason(&status), "SESSION_NOT_FOUND");
    let about_agent: Vec<_> = h
        .sim
        .requests()
        .into_iter()
        .filter(|r| r.agent_id.as_deref() == Some(unknown))
        .collect();
    assert!(about_agent.is_empty(), "{about_agent:?}");
    // Still serving.
    h.sign_in(unknown).await;
}

#[tokio::test]
async fn repeated_sign_out_is_ok_and_sends_nothing() {
    let h = Harness::start().await;
    h.sign_in("1003").await;
    let mut sessions = h.sessions().await;
    let out = || SignOutRequest {
        agent_id: "1003".into(),
    };
    sessions.sign_out(out()).await.expect("first sign-out");
    let logouts = || {
        h.sim
            .requests()
            .iter()
            .filter(|r| r.path.ends_with("/onlineagent/1003/logout"))
            .count()
    };
    assert_eq!(logouts(), 1);
    let again = sessions
        .sign_out(out())
        .await
        .expect("idempotent")
        .into_inner();
    assert!(again.message.contains("not signed in"), "{again:?}");
    assert_eq!(
        logouts(),
        1,
        "the second sign-out never reached the gateway"
    );
    // Signing in again works.
    h.sign_in("1003").await;
}

#[tokio::test]
async fn sign_in_with_other_credentials_is_refused_without_a_gateway_call() {
    let h = Harness::start().await;
    let held = h.sign_in("1004").await;
    let before = operations(&h).len();
    let mut sessions = h.sessions().await;
    let mut other = sign_in_request("1004");
    other.password = "someone-else".into();
    let status = expect_code(sessions.sign_in(other).await, Code::AlreadyExists);
    assert_eq!(reason(&status), "AGENT_HELD_WITH_OTHER_CREDENTIALS");
    let info = tonic_types::StatusExt::get_details_error_info(&status).expect("ErrorInfo");
    assert_eq!(info.domain, "ccgw-bridge");
    assert_eq!(info.metadata["agent_id"], "1004");
    assert_eq!(operations(&h).len(), before);
    // The held session is untouched and the right credentials still get it.
    let again = h.sign_in("1004").await;
    assert_eq!(again.session_id, held.session_id);
}

/// Issue 17 defect 8: with `--no-resign-in` the bridge keeps no password, yet another SignIn
/// with other credentials must not get the held session either (it is compared with a salted
/// hash of the credentials the session was signed in with).
#[tokio::test]
async fn without_held_credentials_other_credentials_are_still_refused() {
    let h = Harness::with(fast_sim(), |c| c.sessions.hold_credentials = false).await;
    let held = h.sign_in("1004").await;
    let mut sessions = h.sessions().await;
    let mut other = sign_in_request("1004");
    other.password = "someone-else".into();
    let status = expect_code(sessions.sign_in(other).await, Code::AlreadyExists);
    assert_eq!(reason(&status), "AGENT_HELD_WITH_OTHER_CREDENTIALS");
    let mut other_phone = sign_in_request("1004");
    other_phone.phone_number = "88002".into();
    expect_code(sessions.sign_in(other_phone).await, Code::AlreadyExists);
    let again = h.sign_in("1004").await;
    assert_eq!(again.session_id, held.session_id);
}
