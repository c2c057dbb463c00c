//! Issue 23 point 7: the event budget bounds everything it retains, a publish costs O(1)
//! amortised whatever watchers protect, and the ledger never drifts from what the windows hold,
//! however sessions, watchers and worker threads interleave.

use super::budget::EventBudget;
use super::hub::tests::{charge_of_one, hub_in, raw};
use super::hub::{End, Hub, Next};
use crate::gateway::RawEvent;
use futures::FutureExt;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;

const AN_HOUR: Duration = Duration::from_secs(3600);

#[tokio::test]
async fn a_stalled_watcher_holds_no_more_than_the_budget_and_is_told_it_fell_behind() {
    let one = charge_of_one();
    let budget = EventBudget::new(8 * one, AN_HOUR);
    let h = hub_in(100_000, &budget);
    let mut stalled = h.subscribe(None).unwrap();
    for _ in 0..1000 {
        h.publish(raw("X"));
        assert!(budget.used() <= budget.max_bytes(), "{}", budget.used());
    }
    assert!(h.held_bytes() <= budget.max_bytes(), "{}", h.held_bytes());
    assert_eq!(h.held_bytes(), budget.used());
    // The very ending the window cap gives (WATCHER_OVERRUN on the wire).
    match stalled.next().await {
        Next::Overrun { last_sent, oldest } => assert_eq!((last_sent, oldest), (0, 993)),
        other => panic!("expected an overrun, got {other:?}"),
    }
}

#[tokio::test]
async fn a_publish_looks_at_a_bounded_number_of_entries_whatever_watchers_protect() {
    const PROTECTED: usize = 1000;
    const PUBLISHES: u64 = 200;
    let one = charge_of_one();
    let budget = EventBudget::new((PROTECTED + 8) * one, AN_HOUR);
    let lagging = hub_in(2 * PROTECTED, &budget);
    let _stalled = lagging.subscribe(None).unwrap();
    for _ in 0..PROTECTED {
        lagging.publish(raw("X"));
    }
    let start = budget.examined();
    let busy = hub_in(2 * PROTECTED, &budget);
    for _ in 0..PUBLISHES {
        busy.publish(raw("X"));
    }
    let settled = budget.examined();
    assert!(
        settled - start <= PROTECTED as u64 + 4 * PUBLISHES,
        "{} entries looked at for {PUBLISHES} publishes past {PROTECTED} protected ones",
        settled - start
    );
    for _ in 0..PUBLISHES {
        busy.publish(raw("X"));
    }
    let per_publish = (budget.examined() - settled) as f64 / PUBLISHES as f64;
    assert!(per_publish <= 4.0, "{per_publish} entries per publish");
    assert_eq!(
        lagging.held_bytes(),
        PROTECTED * one,
        "the watcher's events fit in the budget: they stay"
    );
    assert_eq!(lagging.held_bytes() + busy.held_bytes(), budget.used());
}

/// What one task of the stress test does with its session.
#[derive(Clone, Copy, Debug)]
enum Role {
    /// Publishes a few events of random sizes.
    Publish,
    /// Reads whatever is there, a bounded number of times, then leaves.
    Read,
    /// Reads now and then, falling behind.
    Lag,
    /// Subscribes and never reads until it leaves.
    Stall,
}

/// One task: what `role` does with `hub`, with yields at random points (its own seed). Every
/// wait is bounded, so the outcome does not depend on how fast anything runs.
async fn act(role: Role, hub: Arc<Hub>, budget: EventBudget, seed: u64) {
    let mut rng = fastrand::Rng::with_seed(seed);
    match role {
        Role::Publish => {
            for _ in 0..rng.usize(1..40) {
                let size = rng.usize(0..400);
                hub.publish(RawEvent {
                    event_type: "X".into(),
                    content: json!({ "pad": "x".repeat(size) }),
                });
                assert!(budget.used() <= budget.max_bytes(), "{}", budget.used());
                if rng.bool() {
                    tokio::task::yield_now().await;
                }
            }
        }
        Role::Read | Role::Lag | Role::Stall => {
            let resume = rng.bool().then(|| hub.last_sequence().saturating_sub(4));
            let Ok(mut sub) = hub.subscribe(resume) else {
                return;
            };
            for _ in 0..rng.usize(1..60) {
                let read = match role {
                    Role::Read => true,
                    Role::Lag => rng.usize(0..4) == 0,
                    _ => false,
                };
                if read {
                    match sub.next().now_or_never() {
                        Some(Next::Event(_)) | None => {}
                        Some(Next::Overrun { .. } | Next::Ended(_)) => return,
                    }
                }
                tokio::task::yield_now().await;
            }
        }
    }
}

/// Issue 23 point 7: with 4 worker threads, sessions publishing (two publishers each), watchers
/// reading, lagging and stalling, and sessions ending, all at once, the ledger charges exactly
/// what the windows hold whenever the tasks are done, and nothing once every session is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_ledger_never_drifts_from_what_the_windows_hold() {
    const ROUNDS: usize = 40;
    const SESSIONS: usize = 12;
    let seed = std::env::var("CCGW_STRESS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    println!("seed {seed} (rerun with CCGW_STRESS_SEED={seed})");
    let mut rng = fastrand::Rng::with_seed(seed);
    let one = charge_of_one();
    let budget = EventBudget::new(64 * one, AN_HOUR);
    let mut live: Vec<Arc<Hub>> = Vec::new();
    for round in 0..ROUNDS {
        while live.len() < SESSIONS {
            live.push(hub_in(rng.usize(1..=48), &budget));
        }
        let mut tasks = JoinSet::new();
        // A few sessions end during the round: their last handles are the tasks' own.
        let ending: Vec<Arc<Hub>> = (0..rng.usize(0..4))
            .map(|_| live.swap_remove(rng.usize(..live.len())))
            .collect();
        for (hub, ends) in live
            .iter()
            .map(|h| (h, false))
            .chain(ending.iter().map(|h| (h, true)))
        {
            let roles = [
                Role::Publish,
                Role::Publish,
                Role::Read,
                Role::Lag,
                Role::Stall,
            ];
            for role in roles {
                if rng.usize(0..5) > 0 {
                    tasks.spawn(act(role, hub.clone(), budget.clone(), rng.u64(..)));
                }
            }
            if ends {
                let (hub, seed) = (hub.clone(), rng.u64(..));
                tasks.spawn(async move {
                    let mut rng = fastrand::Rng::with_seed(seed);
                    for _ in 0..rng.usize(0..20) {
                        tokio::task::yield_now().await;
                    }
                    hub.close(End::SessionEnded);
                });
            }
        }
        drop(ending);
        while let Some(done) = tasks.join_next().await {
            done.expect("a stress task panicked");
        }
        let held: usize = live.iter().map(|h| h.held_bytes()).sum();
        assert_eq!(budget.used(), held, "seed {seed}, round {round}");
        assert!(held <= budget.max_bytes(), "seed {seed}, round {round}");
    }
    drop(live);
    assert_eq!(budget.used(), 0, "seed {seed}: every session is gone");
}
