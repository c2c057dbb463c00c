//! Figures for issue 16 point 2: a pool of 1,000 agents (printed, never asserted on time).

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_agents_are_taken_and_half_handed_over() {
    let names = ["k-a", "k-b"];
    let agents: Vec<String> = (10_001..11_001).map(|a| a.to_string()).collect();
    let all = set(&agents);
    let want_a = agents_for_member_of(&agents, &names, names[0]);
    let want_b = agents_for_member_of(&agents, &names, names[1]);
    let p = pool(&agents, 1).await;
    let started = Instant::now();
    let mut a = Bridge::start(&p.setup, names[0]);
    wait_until(
        Duration::from_secs(120),
        "a holds all 1,000 agents",
        || async { a.held().await == all },
    )
    .await;
    let took = started.elapsed();
    let joined = Instant::now();
    let mut b = Bridge::start(&p.setup, names[1]);
    wait_until(
        Duration::from_secs(120),
        "half the agents moved to b",
        || async { a.held().await == want_a && b.held().await == want_b },
    )
    .await;
    let moved = joined.elapsed();
    assert!(!a.log_text().contains("lease lost"), "a kept its lease");
    assert_eq!(sign_ins(&p.sim.requests()).1, 0, "no forcelogin");
    eprintln!(
        "figure: 1,000 pool agents: start -> all signed in {took:?}; b joins -> {} moved {moved:?}",
        want_b.len()
    );
    a.sigterm_and_wait().await;
    b.sigterm_and_wait().await;
}
