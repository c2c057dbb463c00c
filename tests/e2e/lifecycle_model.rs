//! The state-machine test of the agent lifecycle: seeded random interleavings of caller
//! SignIn/SignOut/BeginPlay, forced sign-outs, Guid rotations (delivered or lost), lost answers
//! before and after the gateway acted, DR retcodes, and a final drain. After every step the
//! bridge's view of each agent must agree with the simulator's within a bounded time, no
//! BeginPlay may put more than one play on the wire, and no UNAVAILABLE may follow a play the
//! gateway received.

use crate::helpers::*;
use ccgw_bridge::proto::*;
use ccgw_bridge::sim::{AuthMode, Fault, FaultKind, FaultMatch, SimConfig};
use std::time::Duration;
use tonic::Code;

const AGENTS: [&str; 3] = ["3001", "3002", "3003"];
const STEPS: usize = 30;
/// Bound for the views to agree after a step (a hang guard, not a speed assertion).
const SETTLE: Duration = Duration::from_secs(15);

#[derive(Debug, Clone, Copy)]
enum Step {
    SignIn,
    SignOut,
    BeginPlay,
    ForcedSignOut,
    Rotate,
    RotateLost,
    SignInAgain,
    /// The next request of the agent is answered as lost after the gateway acted.
    LoseNextAnswer,
    /// The next request of the agent is dropped before the gateway acted.
    DropNextRequest,
}

const ALL: [Step; 9] = [
    Step::SignIn,
    Step::SignOut,
    Step::BeginPlay,
    Step::ForcedSignOut,
    Step::Rotate,
    Step::RotateLost,
    Step::SignInAgain,
    Step::LoseNextAnswer,
    Step::DropNextRequest,
];

fn plays(h: &Harness, agent: &str) -> usize {
    h.sim
        .requests()
        .iter()
        .filter(|r| r.path.ends_with(&format!("/recordplay/{agent}/play")))
        .count()
}

/// Whether the bridge reports the agent signed in.
async fn bridge_signed_in(h: &Harness, agent: &str) -> bool {
    h.sessions()
        .await
        .get_session(GetSessionRequest {
            agent_id: agent.into(),
        })
        .await
        .is_ok_and(|s| s.into_inner().state == SessionState::SignedIn as i32)
}

/// Whether the bridge and the simulator agree on `agent`: neither says signed in, or both do
/// and the bridge polls with the gateway's current Guid (waited for at most `poll_wait`).
async fn agree(h: &Harness, agent: &str, poll_wait: Duration) -> bool {
    h.sim.clear_requests();
    if bridge_signed_in(h, agent).await != h.sim.signed_in(agent) {
        return false;
    }
    let Some(guid) = h.sim.current_guid(agent) else {
        return true;
    };
    let poll = format!("/agentevent/{agent}");
    let polled = h
        .sim
        .wait_for_request(|r| r.path.ends_with(&poll) && r.header("guid") == Some(guid.as_str()));
    tokio::time::timeout(poll_wait, polled).await.is_ok()
}

async fn run_model(seed: u64) {
    let sim = SimConfig {
        auth: AuthMode::Dynamic {
            rotate_every: Duration::from_secs(3600),
            strict: true,
            overlap: Duration::ZERO,
        },
        ..fast_sim()
    };
    let mut h = Harness::with(sim, |_| {}).await;
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut trace = Vec::new();
    for _ in 0..STEPS {
        let agent = AGENTS[rng.usize(..AGENTS.len())];
        let step = ALL[rng.usize(..ALL.len())];
        trace.push((agent, step));
        match step {
            Step::SignIn => {
                let _ = h.sessions().await.sign_in(sign_in_request(agent)).await;
            }
            Step::SignOut => {
                let _ = h
                    .sessions()
                    .await
                    .sign_out(SignOutRequest {
                        agent_id: agent.into(),
                    })
                    .await;
            }
            Step::BeginPlay => {
                let before = plays(&h, agent);
                let answer = h
                    .play()
                    .await
                    .begin_play(with_deadline(play_request(agent), Duration::from_secs(5)))
                    .await;
                let sent = plays(&h, agent) - before;
                assert!(
                    sent <= 1,
                    "seed {seed}: {sent} plays for one call; {trace:?}"
                );
                if let Err(s) = &answer {
                    assert!(
                        s.code() != Code::Unavailable || sent == 0,
                        "seed {seed}: UNAVAILABLE after a play reached the gateway: {s:?}; {trace:?}"
                    );
                }
            }
            Step::ForcedSignOut => h.sim.force_sign_out(agent),
            Step::Rotate => h.sim.rotate_guid(agent),
            Step::RotateLost => h.sim.rotate_guid_lost(agent),
            Step::SignInAgain => h.sim.require_sign_in_again(agent, "105-005"),
            Step::LoseNextAnswer | Step::DropNextRequest => {
                let kind = if matches!(step, Step::LoseNextAnswer) {
                    FaultKind::DropAfterEffect
                } else {
                    FaultKind::DropConnection
                };
                // The next sign-out or play. (A lost poll answer is what RotateLost covers; a
                // lost sign-in answer leaves a session only the gateway knows, a known limit.)
                let path = if rng.bool() {
                    format!("/onlineagent/{agent}/logout")
                } else {
                    format!("/recordplay/{agent}/play")
                };
                h.sim.add_fault(Fault {
                    matcher: FaultMatch::PathContains(path),
                    kind,
                    count: Some(1),
                });
            }
        }
        for agent in AGENTS {
            // Re-checked whenever the agent's next request arrives (or a poll hold passes).
            let agreed = tokio::time::timeout(SETTLE, async {
                while !agree(&h, agent, Duration::from_secs(2)).await {
                    let next = h
                        .sim
                        .wait_for_request(|r| r.agent_id.as_deref() == Some(agent));
                    let _ = tokio::time::timeout(Duration::from_millis(500), next).await;
                }
            })
            .await;
            assert!(
                agreed.is_ok(),
                "seed {seed}: agent {agent}: bridge says signed in = {}, gateway = {}; {trace:?}",
                bridge_signed_in(&h, agent).await,
                h.sim.signed_in(agent)
            );
        }
    }
    // Drain: every agent the bridge holds is signed out at the gateway.
    h.begin_stop();
    h.stopped().await.expect("drained");
    for agent in AGENTS {
        assert!(
            !h.sim.signed_in(agent),
            "seed {seed}: {agent} left signed in; {trace:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_interleavings_keep_bridge_and_gateway_in_agreement() {
    for seed in [1, 2] {
        run_model(seed).await;
    }
}
