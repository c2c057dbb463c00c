//! Statuses a client integrator meets: each tells the truth about what happened at the gateway.
//!
//! The rule under test (README "Errors"): UNAVAILABLE only when the call surely did not take
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
