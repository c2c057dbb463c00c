//! Gateway retcodes, end to end: each family becomes its gRPC code with an `ErrorInfo` in domain
//! `ccgateway` carrying the stable reason and the gateway's `retcode` and `message` (design §3).
//! Retcodes come from the simulator's real behaviour where it has one (state machine, password,
//! agent already signed in elsewhere) and are injected otherwise.

use crate::helpers::*;
use ccgw_bridge::gateway::retcodes::{self, Class};
use ccgw_bridge::proto::agent_session_service_client::AgentSessionServiceClient;
use ccgw_bridge::proto::*;
use ccgw_bridge::sim::{Fault, FaultKind, FaultMatch, Interface as SimIface, SimConfig};
use ccgw_bridge::{run, Listeners};
use futures::StreamExt;
use tonic::transport::Endpoint;
use tonic::{Code, Status};
use tonic_types::StatusExt;

const AGENT: &str = "1001";

/// Asserts a status caused by a gateway retcode.
#[track_caller]
fn assert_gateway(status: &Status, code: Code, retcode: &str, reason: &str, message: Option<&str>) {
    assert_eq!(status.code(), code, "{retcode}: {status:?}");
    let info = status
        .get_details_error_info()
        .unwrap_or_else(|| panic!("{retcode}: no ErrorInfo in {status:?}"));
    assert_eq!(info.domain, "ccgateway", "{retcode}");
    assert_eq!(info.reason, reason, "{retcode}");
    assert_eq!(
        info.metadata.get("retcode").map(String::as_str),
        Some(retcode)
    );
    let gateway_message = info
        .metadata
        .get("gateway_message")
        .unwrap_or_else(|| panic!("{retcode}: no gateway_message in {:?}", info.metadata));
    if let Some(m) = message {
        assert_eq!(gateway_message, m, "{retcode}");
    }
}

fn inject(h: &Harness, iface: SimIface, retcode: &str, count: u32) {
    h.sim.add_fault(Fault {
        matcher: FaultMatch::Interface(iface),
        kind: FaultKind::Retcode {
            retcode: retcode.into(),
            message: format!("injected {retcode}"),
        },
        count: Some(count),
    });
}

/// How many requests of `method` to a path ending in `suffix` the simulator received.
fn count(h: &Harness, method: &str, suffix: &str) -> usize {
    h.sim
        .requests()
        .iter()
        .filter(|r| r.method == method && r.path.ends_with(suffix))
        .count()
}

/// Which RPC a case calls (on [`AGENT`], or on a fresh agent for the sign-in ones).
#[derive(Debug, Clone, Copy)]
enum Rpc {
    SignIn,
    ForceSignIn,
    SignOut,
    BeginPlay,
    StopPlay,
    PausePlay,
    ResumePlay,
    FastForward,
    Rewind,
}

impl Rpc {
    /// The simulator interface the RPC calls, and the request path suffix it uses.
    fn wire(self, agent: &str) -> (SimIface, &'static str, String) {
        match self {
            Rpc::SignIn => (SimIface::Login, "PUT", format!("/onlineagent/{agent}")),
            Rpc::ForceSignIn => (
                SimIface::ForceLogin,
                "PUT",
                format!("/onlineagent/{agent}/forcelogin"),
            ),
            Rpc::SignOut => (
                SimIface::Logout,
                "DELETE",
                format!("/onlineagent/{agent}/logout"),
            ),
            Rpc::BeginPlay => (SimIface::Play, "PUT", format!("/recordplay/{agent}/play")),
            Rpc::StopPlay => (
                SimIface::StopPlay,
                "DELETE",
                format!("/recordplay/{agent}/stopplay"),
            ),
            Rpc::PausePlay => (
                SimIface::PausePlay,
                "POST",
                format!("/recordplay/{agent}/pauseplay"),
            ),
            Rpc::ResumePlay => (
                SimIface::ResumePlay,
                "POST",
                format!("/recordplay/{agent}/resumeplay"),
            ),
            Rpc::FastForward => (
                SimIface::ForeFast,
                "POST",
                format!("/recordplay/{agent}/forefast/3"),
            ),
            Rpc::Rewind => (
                SimIface::BackFast,
                "POST",
                format!("/recordplay/{agent}/backfast/3"),
            ),
        }
    }

    async fn call(self, h: &Harness, agent: &str) -> Result<(), Status> {
        let agent_id = agent.to_owned();
        let mut play = h.play().await;
        let mut sessions = h.sessions().await;
        match self {
            Rpc::SignIn => sessions.sign_in(sign_in_request(agent)).await.map(drop),
            Rpc::ForceSignIn => {
                let mut r = sign_in_request(agent);
                r.force = true;
                sessions.sign_in(r).await.map(drop)
            }
            Rpc::SignOut => sessions
                .sign_out(SignOutRequest { agent_id })
                .await
                .map(drop),
            Rpc::BeginPlay => play
                .begin_play(BeginPlayRequest {
                    agent_id,
                    voice_path: "/prompts/welcome.wav".into(),
                    ..Default::default()
                })
                .await
                .map(drop),
            Rpc::StopPlay => play.stop_play(StopPlayRequest { agent_id }).await.map(drop),
            Rpc::PausePlay => play
                .pause_play(PausePlayRequest { agent_id })
                .await
                .map(drop),
            Rpc::ResumePlay => play
                .resume_play(ResumePlayRequest { agent_id })
                .await
                .map(drop),
            Rpc::FastForward => play
                .fast_forward(FastForwardRequest {
                    agent_id,
                    seconds: 3,
                })
                .await
                .map(drop),
            Rpc::Rewind => play
                .rewind(RewindRequest {
                    agent_id,
                    seconds: 3,
                })
                .await
                .map(drop),
        }
    }

    fn signs_in(self) -> bool {
        matches!(self, Rpc::SignIn | Rpc::ForceSignIn)
    }
}

/// Injects `retcode` once on the RPC's interface, calls it, and checks the status, that the
/// request was sent exactly once (no retry for anything but Guid refusals) and what the bridge
/// holds afterwards.
async fn check_injected(h: &Harness, retcode: &str, rpc: Rpc, code: Code, want_reason: &str) {
    // Sign-in cases use an agent the bridge does not hold, so the sign-in really happens.
    let agent = if rpc.signs_in() { "2001" } else { AGENT };
    let (iface, method, suffix) = rpc.wire(agent);
    let before = count(h, method, &suffix);
    inject(h, iface, retcode, 1);
    let status = rpc
        .call(h, agent)
        .await
        .expect_err(&format!("{retcode} on {rpc:?} must fail"));
    assert_gateway(
        &status,
        code,
        retcode,
        want_reason,
        Some(&format!("injected {retcode}")),
    );
    assert_eq!(
        count(h, method, &suffix),
        before + 1,
        "{retcode} on {rpc:?}: sent exactly once"
    );
    let mut sessions = h.sessions().await;
    let held = sessions
        .get_session(GetSessionRequest {
            agent_id: agent.into(),
        })
        .await;
    if rpc.signs_in() {
        let s = expect_code(held, Code::NotFound);
        assert_eq!(reason(&s), "SESSION_NOT_FOUND", "refused sign-in: not held");
    } else {
        assert!(held.is_ok(), "{retcode} on {rpc:?}: session kept: {held:?}");
    }
}

#[tokio::test]
async fn each_retcode_family_maps_to_its_code() {
    let h = Harness::start().await;
    h.sign_in(AGENT).await;
    use Code::*;
    let cases: &[(&str, Rpc, Code, &str)] = &[
        // Parameter errors.
        (
            "000-002",
            Rpc::BeginPlay,
            InvalidArgument,
            "INVALID_PARAMETER",
        ),
        (
            "000-006",
            Rpc::StopPlay,
            InvalidArgument,
            "INVALID_MESSAGE_PARAMETER",
        ),
        (
            "100-001",
            Rpc::SignIn,
            InvalidArgument,
            "INVALID_SIGN_IN_PARAMETER",
        ),
        (
            "100-011",
            Rpc::SignIn,
            InvalidArgument,
            "INVALID_SIGN_IN_PARAMETER",
        ),
        (
            "100-012",
            Rpc::SignIn,
            InvalidArgument,
            "INVALID_AGENT_TYPE",
        ),
        ("100-013", Rpc::SignIn, InvalidArgument, "INVALID_PHONE"),
        (
            "100-014",
            Rpc::SignIn,
            InvalidArgument,
            "PHONE_OUT_OF_RANGE",
        ),
        ("100-016", Rpc::ForceSignIn, InvalidArgument, "INVALID_IP"),
        // 100-015 sits in the parameter block but means "held elsewhere, no takeover allowed".
        (
            "100-015",
            Rpc::ForceSignIn,
            AlreadyExists,
            "FORCE_SIGN_IN_NOT_ALLOWED",
        ),
        (
            "100-002",
            Rpc::SignIn,
            AlreadyExists,
            "AGENT_ALREADY_SIGNED_IN",
        ),
        ("100-004", Rpc::SignIn, Unauthenticated, "WRONG_PASSWORD"),
        // Repeated invocation.
        ("000-007", Rpc::PausePlay, Aborted, "REPEATED_INVOCATION"),
        ("100-021", Rpc::SignIn, Aborted, "SIGN_IN_IN_PROGRESS"),
        // Gateway-side failures.
        (
            "100-007",
            Rpc::StopPlay,
            Unavailable,
            "GATEWAY_OPERATION_FAILED",
        ),
        ("105-001", Rpc::BeginPlay, Unavailable, "AGENT_NOT_CACHED"),
        (
            "105-002",
            Rpc::FastForward,
            Unavailable,
            "DR_RECOVERY_IN_PROGRESS",
        ),
        ("105-003", Rpc::Rewind, Unavailable, "DR_RECOVERY_FINISHED"),
        (
            "105-004",
            Rpc::ResumePlay,
            Unavailable,
            "DR_RECOVERY_QUEUE_FAILED",
        ),
        (
            "105-005",
            Rpc::PausePlay,
            Unavailable,
            "DR_RECOVERY_TIMED_OUT",
        ),
        ("105-006", Rpc::SignOut, Unavailable, "DR_GUID_MISMATCH"),
        ("105-007", Rpc::SignIn, Unavailable, "DR_SWITCH_DISABLED"),
        // Record-play state errors the simulator's state machine does not produce.
        (
            "500-004",
            Rpc::PausePlay,
            FailedPrecondition,
            "PAUSE_RECORD_STATE_ERROR",
        ),
        (
            "500-006",
            Rpc::ResumePlay,
            FailedPrecondition,
            "RESUME_RECORD_STATE_ERROR",
        ),
        (
            "500-008",
            Rpc::BeginPlay,
            FailedPrecondition,
            "BEGIN_RECORD_STATE_ERROR",
        ),
        // Unknown codes keep the retcode.
        ("987-654", Rpc::Rewind, Unknown, "UNKNOWN_RETCODE"),
        ("999-999", Rpc::SignIn, Unknown, "UNKNOWN_RETCODE"),
    ];
    for &(retcode, rpc, code, reason) in cases {
        check_injected(&h, retcode, rpc, code, reason).await;
    }
    // Nothing was left behind: the agent still plays, the refused agent can sign in.
    Rpc::BeginPlay.call(&h, AGENT).await.expect("BeginPlay");
    h.sign_in("2001").await;
}

/// The class → code mapping of design §3, written out independently of `status.rs`.
fn designed_code(class: Class) -> Code {
    match class {
        Class::InvalidArgument => Code::InvalidArgument,
        Class::FailedPrecondition => Code::FailedPrecondition,
        Class::AlreadyExists => Code::AlreadyExists,
        Class::Unauthenticated => Code::Unauthenticated,
        Class::PermissionDenied => Code::PermissionDenied,
        Class::Aborted => Code::Aborted,
        Class::Unavailable => Code::Unavailable,
    }
}

#[tokio::test]
async fn every_table_entry_reaches_the_caller() {
    let h = Harness::start().await;
    h.sign_in(AGENT).await;
    let mut tested = 0;
    for &(retcode, reason, class) in retcodes::TABLE {
        // Guid refusals are retried first; their own tests below.
        if matches!(retcode, "100-006" | "000-003") {
            continue;
        }
        check_injected(&h, retcode, Rpc::StopPlay, designed_code(class), reason).await;
        tested += 1;
    }
    assert!(tested >= 40, "{tested}");
}

#[tokio::test]
async fn already_signed_in_elsewhere_is_already_exists() {
    let h = Harness::start().await;
    h.sign_in(AGENT).await;
    // A second bridge in front of the same gateway: the agent is signed in there already.
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = grpc.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let other = tokio::spawn(run(
        Listeners {
            grpc,
            admin: None,
            callback: None,
        },
        config_for(&h.sim),
        async move {
            let _ = stopped.await;
        },
    ));
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut sessions = AgentSessionServiceClient::new(channel);
    let status = sessions
        .sign_in(sign_in_request(AGENT))
        .await
        .expect_err("the gateway refuses a second sign-in without force");
    assert_gateway(
        &status,
        Code::AlreadyExists,
        "100-002",
        "AGENT_ALREADY_SIGNED_IN",
        None,
    );
    // The first bridge still holds and uses the agent.
    Rpc::BeginPlay.call(&h, AGENT).await.expect("BeginPlay");
    let _ = stop.send(());
    tokio::time::timeout(std::time::Duration::from_secs(10), other)
        .await
        .expect("second bridge stops")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn wrong_password_is_unauthenticated() {
    let h = Harness::with(
        SimConfig {
            password: Some("right".into()),
            ..fast_sim()
        },
        |_| {},
    )
    .await;
    let mut sessions = h.sessions().await;
    let mut req = sign_in_request(AGENT);
    req.password = "wrong".into();
    let status = sessions
        .sign_in(req.clone())
        .await
        .expect_err("wrong password");
    assert_gateway(
        &status,
        Code::Unauthenticated,
        "100-004",
        "WRONG_PASSWORD",
        None,
    );
    let s = expect_code(
        sessions
            .get_session(GetSessionRequest {
                agent_id: AGENT.into(),
            })
            .await,
        Code::NotFound,
    );
    assert_eq!(reason(&s), "SESSION_NOT_FOUND");
    req.password = "right".into();
    sessions.sign_in(req).await.expect("right password");
}

#[tokio::test]
async fn play_state_errors_come_from_the_gateway_state_machine() {
    let h = Harness::start().await;
    let session = h.sign_in(AGENT).await;
    let mut play = h.play().await;
    let agent = || AGENT.to_string();
    #[track_caller]
    fn state_error<T: std::fmt::Debug>(r: Result<T, Status>, retcode: &str, want: &str) {
        let s = expect_code(r, Code::FailedPrecondition);
        assert_gateway(&s, Code::FailedPrecondition, retcode, want, None);
    }
    // Idle.
    state_error(
        play.stop_play(StopPlayRequest { agent_id: agent() }).await,
        "500-009",
        "STOP_PLAY_STATE_ERROR",
    );
    state_error(
        play.pause_play(PausePlayRequest { agent_id: agent() })
            .await,
        "500-003",
        "PAUSE_PLAY_STATE_ERROR",
    );
    state_error(
        play.resume_play(ResumePlayRequest { agent_id: agent() })
            .await,
        "500-005",
        "RESUME_PLAY_STATE_ERROR",
    );
    state_error(
        play.fast_forward(FastForwardRequest {
            agent_id: agent(),
            seconds: 5,
        })
        .await,
        "500-002",
        "FAST_FORWARD_STATE_ERROR",
    );
    state_error(
        play.rewind(RewindRequest {
            agent_id: agent(),
            seconds: 5,
        })
        .await,
        "500-001",
        "REWIND_STATE_ERROR",
    );
    // Playing.
    let begin = || BeginPlayRequest {
        agent_id: agent(),
        voice_path: "/prompts/welcome.wav".into(),
        ..Default::default()
    };
    play.begin_play(BeginPlayRequest {
        await_outcome: true,
        ..begin()
    })
    .await
    .expect("first BeginPlay");
    state_error(
        play.begin_play(begin()).await,
        "500-007",
        "BEGIN_PLAY_STATE_ERROR",
    );
    state_error(
        play.resume_play(ResumePlayRequest { agent_id: agent() })
            .await,
        "500-005",
        "RESUME_PLAY_STATE_ERROR",
    );
    // Paused.
    play.pause_play(PausePlayRequest { agent_id: agent() })
        .await
        .expect("pause");
    state_error(
        play.pause_play(PausePlayRequest { agent_id: agent() })
            .await,
        "500-003",
        "PAUSE_PLAY_STATE_ERROR",
    );
    // State errors end nothing: the session is the same and playback can be stopped.
    play.stop_play(StopPlayRequest { agent_id: agent() })
        .await
        .expect("stop");
    let got = h
        .sessions()
        .await
        .get_session(GetSessionRequest { agent_id: agent() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.session_id, session.session_id);
}

#[tokio::test]
async fn not_signed_in_without_credentials_is_failed_precondition() {
    let h = Harness::with(fast_sim(), |c| c.sessions.hold_credentials = false).await;
    let session = h.sign_in(AGENT).await;
    assert!(!session.can_resign_in);
    // The gateway refuses the Guid once: no newer Guid comes, no credentials to sign in again.
    inject(&h, SimIface::StopPlay, "100-006", 1);
    let status = Rpc::StopPlay.call(&h, AGENT).await.expect_err("100-006");
    assert_gateway(
        &status,
        Code::FailedPrecondition,
        "100-006",
        "AGENT_NOT_SIGNED_IN",
        Some("injected 100-006"),
    );
    assert_eq!(count(&h, "DELETE", "/recordplay/1001/stopplay"), 1);
    assert!(
        count(&h, "PUT", "/onlineagent/1001") + count(&h, "PUT", "/onlineagent/1001/forcelogin")
            == 1,
        "no re-sign-in without credentials"
    );
}

#[tokio::test]
async fn killed_session_without_credentials_is_failed_precondition() {
    let h = Harness::with(fast_sim(), |c| c.sessions.hold_credentials = false).await;
    h.sign_in(AGENT).await;
    let mut events = h
        .sessions()
        .await
        .watch_agent_events(WatchAgentEventsRequest {
            agent_id: AGENT.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    h.sim.kill_session(AGENT);
    // The poll loop learns first (a held poll answers 100-006 at once) and ends the stream.
    let end = loop {
        match tokio::time::timeout(std::time::Duration::from_secs(5), events.next())
            .await
            .expect("the stream ends after the gateway lost the session")
        {
            Some(Ok(_)) => continue,
            Some(Err(s)) => break s,
            None => panic!("stream completed OK; expected SESSION_ENDED"),
        }
    };
    assert_eq!(end.code(), Code::Aborted, "{end:?}");
    assert_eq!(reason(&end), "SESSION_ENDED");
    let status = Rpc::StopPlay
        .call(&h, AGENT)
        .await
        .expect_err("not signed in");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert_eq!(reason(&status), "AGENT_NOT_SIGNED_IN");
    let s = expect_code(
        h.sessions()
            .await
            .get_session(GetSessionRequest {
                agent_id: AGENT.into(),
            })
            .await,
        Code::NotFound,
    );
    assert_eq!(reason(&s), "SESSION_NOT_FOUND");
    // Signing in again works.
    h.sign_in(AGENT).await;
}

#[tokio::test]
async fn guid_refusal_after_the_retry_is_failed_precondition() {
    let h = Harness::start().await;
    h.sign_in(AGENT).await;
    inject(&h, SimIface::StopPlay, "100-006", 2);
    let status = Rpc::StopPlay.call(&h, AGENT).await.expect_err("100-006");
    assert_gateway(
        &status,
        Code::FailedPrecondition,
        "100-006",
        "AGENT_NOT_SIGNED_IN",
        Some("injected 100-006"),
    );
    assert_eq!(
        count(&h, "DELETE", "/recordplay/1001/stopplay"),
        2,
        "retried exactly once"
    );
}

#[tokio::test]
async fn no_permission_after_the_retry_is_permission_denied() {
    let h = Harness::start().await;
    h.sign_in(AGENT).await;
    inject(&h, SimIface::StopPlay, "000-003", 2);
    let status = Rpc::StopPlay.call(&h, AGENT).await.expect_err("000-003");
    assert_gateway(
        &status,
        Code::PermissionDenied,
        "000-003",
        "NO_PERMISSION",
        Some("injected 000-003"),
    );
    assert_eq!(
        count(&h, "DELETE", "/recordplay/1001/stopplay"),
        2,
        "retried exactly once"
    );
    // The retry signed the agent in again; the bridge serves it.
    Rpc::BeginPlay.call(&h, AGENT).await.expect("BeginPlay");
}

#[tokio::test]
async fn no_permission_without_credentials_is_permission_denied() {
    let h = Harness::with(fast_sim(), |c| c.sessions.hold_credentials = false).await;
    h.sign_in(AGENT).await;
    inject(&h, SimIface::PausePlay, "000-003", 1);
    let status = Rpc::PausePlay.call(&h, AGENT).await.expect_err("000-003");
    assert_gateway(
        &status,
        Code::PermissionDenied,
        "000-003",
        "NO_PERMISSION",
        Some("injected 000-003"),
    );
    assert_eq!(count(&h, "POST", "/recordplay/1001/pauseplay"), 1);
}

#[tokio::test]
async fn already_signed_out_counts_as_signed_out() {
    let h = Harness::start().await;
    h.sign_in(AGENT).await;
    inject(&h, SimIface::Logout, "100-008", 1);
    Rpc::SignOut
        .call(&h, AGENT)
        .await
        .expect("100-008 on logout: the goal is reached");
    let s = expect_code(
        h.sessions()
            .await
            .get_session(GetSessionRequest {
                agent_id: AGENT.into(),
            })
            .await,
        Code::NotFound,
    );
    assert_eq!(reason(&s), "SESSION_NOT_FOUND");
}
