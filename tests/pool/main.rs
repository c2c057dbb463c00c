//! Acceptance tests of the agent pool (issue 11) with real processes: etcd, bridge binaries
//! and the simulator. The bridge is the test profile's build of the binary (the one cargo
//! builds for these tests anyway): a separate release build would cost CI minutes on two
//! cores and test the same code.

mod harness;

use ccgw_bridge::pool::choose;
use harness::*;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

const TTL: Duration = Duration::from_secs(3);
/// Bound of any wait for something that does not depend on a lease expiring.
const SETTLE: Duration = Duration::from_secs(20);

/// `per` agents for each of `names`, chosen so rendezvous hashing gives each exactly `per`.
fn agents_for(names: &[&str], per: usize) -> Vec<String> {
    let members: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let mut out = Vec::new();
    for name in names {
        out.extend(
            (2001..3000)
                .map(|a| a.to_string())
                .filter(|a| choose(&members, a) == Some(name))
                .take(per),
        );
    }
    out.sort();
    out
}

fn set(agents: &[String]) -> BTreeSet<String> {
    agents.iter().cloned().collect()
}

struct Pool {
    _dir: TempDir,
    sim: ccgw_bridge::sim::Simulator,
    setup: PoolSetup,
    etcd: Vec<Etcd>,
}

async fn pool(agents: &[String], etcd_members: usize) -> Pool {
    let dir = TempDir::new("t");
    let etcd = if etcd_members == 1 {
        vec![Etcd::single(&dir.0)]
    } else {
        Etcd::cluster(&dir.0, etcd_members)
    };
    for m in &etcd {
        wait_until(SETTLE, "etcd healthy", || m.healthy()).await;
    }
    let sim = simulator().await;
    let setup = PoolSetup {
        dir: dir.0.clone(),
        sim_url: sim.url(),
        ca: sim.ca_path().to_path_buf(),
        agents_file: agents_file(&dir.0, agents),
        endpoints: etcd
            .iter()
            .map(|m| m.client_url.clone())
            .collect::<Vec<_>>()
            .join(","),
        lease_ttl: "3s",
    };
    Pool {
        _dir: dir,
        sim,
        setup,
        etcd,
    }
}

/// Waits until `a` holds exactly `want_a` and `b` exactly `want_b` (no agent in both).
async fn settled(a: &Bridge, want_a: &BTreeSet<String>, b: &Bridge, want_b: &BTreeSet<String>) {
    wait_until(
        SETTLE,
        "the pool settles on the rendezvous assignment",
        || async {
            let (ha, hb) = (a.held().await, b.held().await);
            assert!(ha.is_disjoint(&hb), "held by both: {ha:?} / {hb:?}");
            ha == *want_a && hb == *want_b
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_of_two_spreads_agents_fails_over_after_sigkill_and_takes_a_restart_back_gracefully() {
    let agents = agents_for(&["pool-a", "pool-b"], 3);
    let p = pool(&agents, 1).await;
    let mut a = Bridge::start(&p.setup, "pool-a");
    let mut b = Bridge::start(&p.setup, "pool-b");
    let want_a = agents_for_member(&agents, "pool-a");
    let want_b = agents_for_member(&agents, "pool-b");
    settled(&a, &want_a, &b, &want_b).await;
    for agent in &agents {
        assert!(p.sim.signed_in(agent), "{agent} signed in at the gateway");
    }

    // Settled: no sign-in churn over three lease renewals (an observation window).
    let before = p.sim.requests().len();
    tokio::time::sleep(TTL * 2).await;
    let window = p.sim.requests()[before..].to_vec();
    assert_eq!(sign_ins(&window), (0, 0), "no sign-ins once settled");
    eprintln!(
        "figure: sign-ins per minute when settled: 0 (over {:?})",
        TTL * 2
    );

    // SIGKILL b: its lease expires, a takes its agents over (one forcelogin each at most).
    let before = p.sim.requests().len();
    let killed = Instant::now();
    b.sigkill();
    let all = set(&agents);
    let took = wait_until(
        TTL + Duration::from_secs(5),
        "a holds every agent",
        || async { a.held().await == all },
    )
    .await;
    eprintln!("figure: take-over after SIGKILL (TTL 3 s): {took:?}");
    let after_kill = p.sim.requests()[before..].to_vec();
    for agent in &want_b {
        let forced = after_kill
            .iter()
            .filter_map(sign_in_kind)
            .filter(|(x, forced)| x == agent && *forced)
            .count();
        assert!(forced <= 1, "{agent}: {forced} forcelogins");
    }
    for agent in &want_a {
        assert!(
            after_kill
                .iter()
                .filter_map(sign_in_kind)
                .all(|(x, _)| x != agent),
            "a's own agent {agent} was not signed in again"
        );
    }
    assert!(killed.elapsed() < TTL + Duration::from_secs(5));

    // b restarted: its agents come back by hand-over (logout, then plain login), never forced.
    let before = p.sim.requests().len();
    b.restart();
    settled(&a, &want_a, &b, &want_b).await;
    let after_restart = p.sim.requests()[before..].to_vec();
    let (plain, forced) = sign_ins(&after_restart);
    assert_eq!(forced, 0, "no forcelogin when an instance joins");
    assert_eq!(plain, want_b.len(), "one plain login per agent moved back");
    a.sigterm_and_wait().await;
    b.sigterm_and_wait().await;
}

fn agents_for_member(agents: &[String], name: &str) -> BTreeSet<String> {
    let members = vec!["pool-a".to_string(), "pool-b".to_string()];
    agents
        .iter()
        .filter(|a| choose(&members, a) == Some(name))
        .cloned()
        .collect()
}
