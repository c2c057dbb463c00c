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

/// Issue 23 point 1: a pool state larger than one etcd answer may carry (tonic's 4 MiB):
/// 60,000 holder keys of other instances with 64-character ids, about 6 MB of keys. Before the
/// mirror, every reconcile asked for all of them in one answer, failed ("decoded message length
/// too large"), and the bridge never signed its three agents in; now the first read comes in
/// pages and later ones read nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_state_larger_than_one_etcd_answer_is_read_in_pages() {
    let agents = agents_for(&["big-a"], 3);
    let p = pool(&agents, 1).await;
    p.etcd[0].pad("/ccgw-test/", "holders", 60_000, 64).await;
    let a = Bridge::start(&p.setup, "big-a");
    wait_until(SETTLE, "a signs its three agents in", || async {
        a.held().await == set(&agents)
    })
    .await;
    let log = a.log_text();
    assert!(!log.contains("reading the pool failed"), "{log}");
}

/// Issue 23 point 2: a reconcile reads the mirror, not etcd, so moving agents costs etcd
/// answers the size of the changes, not of the pool. 20,000 owner records of another pool's
/// agents make one full read about 2 MB; before, each revision of the move made every instance
/// read all of it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_agents_reads_the_changes_from_etcd_not_the_whole_pool() {
    let names = ["rd-a", "rd-b"];
    let agents = agents_for(&names, 20);
    let p = pool(&agents, 1).await;
    p.etcd[0].pad("/ccgw-test/", "owners", 20_000, 64).await;
    let (a, _, mut b, _) = two_settled(&p, &agents, names).await;
    let before = p.etcd[0].sent_bytes().await;
    assert!(
        before > 2_000_000.0,
        "etcd's byte counter saw the bridges' first reads: {before}"
    );
    b.sigterm_and_wait().await;
    wait_until(SETTLE, "a serves every agent", || async {
        a.held().await == set(&agents)
    })
    .await;
    let sent = p.etcd[0].sent_bytes().await - before;
    eprintln!(
        "figure: 20 agents moved on a pool state of 20,000 stale keys: etcd sent {sent} bytes"
    );
    assert!(
        sent < 500_000.0,
        "etcd sent {sent} bytes to move 20 agents: a reconcile read the whole pool (about 2 MB) again"
    );
}

/// Issue 23 point 8: holder records of agents no member lists any more (removed from the agents
/// file) are deleted, so the pool's state does not grow with every agent ever removed. Before,
/// they stayed for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holder_records_of_agents_no_member_lists_are_deleted() {
    let agents = agents_for(&["sweep-a"], 3);
    let p = pool(&agents, 1).await;
    p.etcd[0].pad("/ccgw-test/", "holders", 1_500, 8).await;
    let a = Bridge::start(&p.setup, "sweep-a");
    wait_until(
        SETTLE,
        "only the records of the pool's own agents remain",
        || async {
            a.held().await == set(&agents)
                && tokio::task::block_in_place(|| p.etcd[0].holders("/ccgw-test/")) == set(&agents)
        },
    )
    .await;
    assert!(a
        .log_text()
        .contains("deleted the holder records of agents no member lists"));
}

/// Issue 23 point 6: replicas started together sign each agent in once, on its final owner.
/// Before, the first one up took every agent and handed two thirds of them over again. The
/// join grace is one TTL; 9 s here, so the three processes start well within it however loaded
/// the machine is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_started_together_sign_each_agent_in_once() {
    let names = ["cold-a", "cold-b", "cold-c"];
    let agents = agents_for(&names, 4);
    let mut p = pool(&agents, 1).await;
    p.setup.lease_ttl = "9s";
    let bridges: Vec<Bridge> = names.iter().map(|n| Bridge::start(&p.setup, n)).collect();
    let wants: Vec<BTreeSet<String>> = names
        .iter()
        .map(|n| agents_for_member_of(&agents, &names, n))
        .collect();
    wait_until(
        Duration::from_secs(60),
        "each replica holds its share",
        || async {
            for (b, want) in bridges.iter().zip(&wants) {
                if b.held().await != *want {
                    return false;
                }
            }
            true
        },
    )
    .await;
    assert_eq!(
        sign_ins(&p.sim.requests()),
        (agents.len(), 0),
        "each agent signed in once, none forced"
    );
}
