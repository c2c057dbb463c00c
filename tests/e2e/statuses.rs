//! Statuses a client integrator meets: each tells the truth about what happened at the gateway.
//!
//! The rule under test (docs/errors.md): UNAVAILABLE only when the call surely did not take
//! effect; once the gateway may have acted, the answer is UNKNOWN (`OUTCOME_UNKNOWN`), which a
//! client must never retry blindly.

use crate::helpers::*;
use ccgw_bridge::proto::*;
use ccgw_bridge::sim::{Fault, FaultKind, FaultMatch, Interface, SimConfig};
use std::time::Duration;
use tonic::Code;

fn plays(h: &Harness) -> usize {
    h.sim
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/play"))
        .count()
}

#[tokio::test]
async fn an_accepted_play_awaiting_its_outcome_is_outcome_unknown_on_drain() {
    // The outcome comes 5 s after the play is accepted: the drain arrives in between.
    let sim = SimConfig {
        play_step: Duration::from_secs(5),
        ..fast_sim()
    };
    let mut h = Harness::with(sim, |_| {}).await;
    h.sign_in("1001").await;
    let mut client = h.play().await;
    let call = tokio::spawn(async move {
        client
            .begin_play(BeginPlayRequest {
                await_outcome: true,
                ..play_request("1001")
            })
            .await
    });
    h.sim.wait_for_request(|r| r.path.ends_with("/play")).await;
    h.begin_stop();
    let status = expect_code(call.await.unwrap(), Code::Unknown);
    assert_eq!(reason(&status), "OUTCOME_UNKNOWN", "{status:?}");
    assert!(status.message().contains("accepted"), "{status:?}");
    h.stopped().await.unwrap();
    assert_eq!(plays(&h), 1);
}

#[tokio::test]
async fn a_call_still_at_the_gateway_when_the_drain_runs_out_is_outcome_unknown() {
    let mut h = Harness::with(fast_sim(), |c| {
        c.drain_timeout = Duration::from_secs(1);
        c.sign_out_on_shutdown = false;
    })
    .await;
    h.sign_in("1001").await;
    // The gateway starts the play, then answers only after the drain has run out.
    h.sim.add_fault(Fault {
        matcher: FaultMatch::Interface(Interface::Play),
        kind: FaultKind::Latency(Duration::from_secs(20)),
        count: Some(1),
    });
    let mut client = h.play().await;
    let call = tokio::spawn(async move { client.begin_play(play_request("1001")).await });
    h.sim.wait_for_request(|r| r.path.ends_with("/play")).await;
    h.begin_stop();
    let status = expect_code(call.await.unwrap(), Code::Unknown);
    assert_eq!(reason(&status), "OUTCOME_UNKNOWN", "{status:?}");
    h.stopped().await.unwrap();
    assert_eq!(plays(&h), 1);
}

#[tokio::test]
async fn a_proxy_502_or_504_after_the_gateway_acted_is_unknown_not_unavailable() {
    let h = Harness::start().await;
    h.sign_in("1001").await;
    let mut client = h.play().await;
    for http in [502, 504] {
        h.sim.add_fault(Fault {
            matcher: FaultMatch::Interface(Interface::StopPlay),
            kind: FaultKind::HttpStatus(http),
            count: Some(1),
        });
        let status = expect_code(
            client
                .stop_play(StopPlayRequest {
                    agent_id: "1001".into(),
                })
                .await,
            Code::Unknown,
        );
        assert_eq!(reason(&status), "GATEWAY_HTTP_STATUS");
        let info = tonic_types::StatusExt::get_details_error_info(&status).unwrap();
        assert_eq!(info.metadata["http_status"], http.to_string());
    }
}

#[tokio::test]
async fn resume_after_the_largest_sequence_is_out_of_range_not_a_panic() {
    let h = Harness::start().await;
    let session = h.sign_in("1001").await;
    let status = expect_code(
        h.play()
            .await
            .watch_play_events(WatchPlayEventsRequest {
                agent_id: "1001".into(),
                resume_after: Some(u64::MAX),
                session_id: session.session_id.clone(),
                ..Default::default()
            })
            .await,
        Code::OutOfRange,
    );
    assert_eq!(reason(&status), "RESUME_OUT_OF_RANGE");
    // The bridge still serves.
    h.watch_play("1001").await;
}

#[tokio::test]
async fn twenty_thousand_bad_types_are_one_invalid_argument_listing_ten() {
    let h = Harness::start().await;
    h.sign_in("1001").await;
    let status = expect_code(
        h.play()
            .await
            .watch_play_events(WatchPlayEventsRequest {
                agent_id: "1001".into(),
                types: vec![99; 20_000],
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
    );
    let fields = violated_fields(&status);
    assert_eq!(fields.len(), 10, "{fields:?}");
    assert_eq!(fields[0], "types[0]");
    assert!(
        status.message().contains("19990 more"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn a_blank_voice_path_is_refused_before_anything_is_sent() {
    let h = Harness::start().await;
    h.sign_in("1001").await;
    h.sim.clear_requests();
    for blank in [" ", "   ", "\u{3000}"] {
        let status = expect_code(
            h.play()
                .await
                .begin_play(BeginPlayRequest {
                    voice_path: blank.into(),
                    ..play_request("1001")
                })
                .await,
            Code::InvalidArgument,
        );
        assert_eq!(violated_fields(&status), ["voice_path"], "{blank:?}");
    }
    assert_eq!(plays(&h), 0);
}

#[tokio::test]
async fn get_session_of_an_agent_never_held_is_not_found() {
    let h = Harness::start().await;
    let status = expect_code(
        h.sessions()
            .await
            .get_session(GetSessionRequest {
                agent_id: "1001".into(),
            })
            .await,
        Code::NotFound,
    );
    assert_eq!(reason(&status), "SESSION_NOT_FOUND");
    // Signed out: held no more, NOT_FOUND again.
    h.sign_in("1001").await;
    h.session("1001").await;
    let mut sessions = h.sessions().await;
    sessions
        .sign_out(SignOutRequest {
            agent_id: "1001".into(),
        })
        .await
        .unwrap();
    let status = expect_code(
        sessions
            .get_session(GetSessionRequest {
                agent_id: "1001".into(),
            })
            .await,
        Code::NotFound,
    );
    assert_eq!(reason(&status), "SESSION_NOT_FOUND");
}

#[tokio::test]
async fn sign_out_of_an_agent_not_signed_in_is_ok_and_sends_nothing() {
    let h = Harness::start().await;
    let mut sessions = h.sessions().await;
    let out = sessions
        .sign_out(SignOutRequest {
            agent_id: "1001".into(),
        })
        .await
        .expect("idempotent: OK")
        .into_inner();
    assert!(out.message.contains("not signed in"), "{out:?}");
    // Twice in a row after a real sign-out (a retry whose first answer was lost) is OK too.
    h.sign_in("1001").await;
    for _ in 0..2 {
        sessions
            .sign_out(SignOutRequest {
                agent_id: "1001".into(),
            })
            .await
            .expect("OK");
    }
    let logouts = h
        .sim
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/logout"))
        .count();
    assert_eq!(logouts, 1, "only the held session was signed out");
}

#[tokio::test]
async fn an_unknown_session_id_is_called_unknown() {
    let h = Harness::start().await;
    let session = h.sign_in("1001").await;
    let status = expect_code(
        h.play()
            .await
            .watch_play_events(WatchPlayEventsRequest {
                agent_id: "1001".into(),
                session_id: "nope".into(),
                ..Default::default()
            })
            .await,
        Code::FailedPrecondition,
    );
    assert_eq!(reason(&status), "SESSION_CHANGED");
    let message = status.message();
    assert!(message.contains("unknown"), "{message}");
    assert!(!message.contains("signed in again"), "{message}");
    assert!(message.contains(&session.session_id), "{message}");
}

#[tokio::test]
async fn a_deadline_too_short_to_reach_the_gateway_sends_nothing_and_says_so() {
    let h = Harness::start().await;
    h.sign_in("1001").await;
    h.sim.clear_requests();
    let mut client = h.play().await;
    // 1–8 ms: tonic's own timer (CANCELLED, no detail) may answer first; either way nothing
    // may reach the gateway, and a bridge answer must say why.
    for ms in 1..=8 {
        let result = client
            .begin_play(with_deadline(
                play_request("1001"),
                Duration::from_millis(ms),
            ))
            .await;
        let status = result.expect_err("no time to play");
        assert!(
            matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
            "{ms} ms: {status:?}"
        );
        if status.code() == Code::DeadlineExceeded {
            assert_eq!(reason(&status), "DEADLINE_TOO_SHORT", "{ms} ms: {status:?}");
        }
    }
    // 14 ms leaves the handler 9 ms (the bridge answers 5 ms early), under the 10 ms a
    // request needs: refused at once. On a starved machine tonic's timer can still answer
    // first (CANCELLED), so the bridge's own answer is asked for until it comes.
    let mut told = None;
    for _ in 0..20 {
        let status = client
            .begin_play(with_deadline(
                play_request("1001"),
                Duration::from_millis(14),
            ))
            .await
            .expect_err("no time to play");
        match status.code() {
            Code::DeadlineExceeded => {
                told = Some(status);
                break;
            }
            code => assert_eq!(code, Code::Cancelled, "{status:?}"),
        }
    }
    let status = told.expect("the bridge answered at least once before tonic's timer");
    assert_eq!(reason(&status), "DEADLINE_TOO_SHORT", "{status:?}");
    assert!(status.message().contains("was not sent"), "{status:?}");
    assert!(!status.message().contains("0ns"), "{status:?}");
    assert_eq!(plays(&h), 0, "no play reached the gateway");
    // With time enough, the same call plays.
    client
        .begin_play(with_deadline(play_request("1001"), Duration::from_secs(5)))
        .await
        .expect("plays");
    assert_eq!(plays(&h), 1);
}

/// Sends and receives raw message bytes, to put what no generated client would on the wire.
#[derive(Clone, Copy, Default)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }
    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        let n = bytes::Buf::remaining(src);
        Ok(Some(bytes::Buf::copy_to_bytes(src, n).to_vec()))
    }
}

#[tokio::test]
async fn an_undecodable_request_is_internal_and_reaches_no_handler() {
    let h = Harness::start().await;
    h.sign_in("1001").await;
    h.sim.clear_requests();
    let mut grpc = tonic::client::Grpc::new(h.channel().await);
    grpc.ready().await.unwrap();
    // Field 1 with wire type 7, which protobuf does not have.
    let status = expect_code(
        grpc.unary(
            tonic::Request::new(vec![0x0f, 0x00]),
            http::uri::PathAndQuery::from_static("/ccgw.v1.RecordPlayService/BeginPlay"),
            RawCodec,
        )
        .await,
        Code::Internal,
    );
    assert!(status.message().contains("decode"), "{status:?}");
    assert_eq!(plays(&h), 0);
}
