//! Issue 16: the interleavings that broke "one holder per agent" and "agents move only
//! gracefully" (a replica that cannot reach the gateway, a SignIn during a hand-over, a slow
//! gateway during a join, a replica given another's name, an etcd never reached). Real etcd,
//! real bridge processes, the simulator's own view.

use super::*;
use ccgw_bridge::sim::{Fault, FaultKind, FaultMatch, Interface};

fn logouts_of(requests: &[ccgw_bridge::sim::RecordedRequest], agents: &BTreeSet<String>) -> usize {
    requests
        .iter()
        .filter(|r| r.path.contains("logout"))
        .filter(|r| r.agent_id.as_ref().is_some_and(|a| agents.contains(a)))
        .count()
}

/// Checks for `window` that `a` keeps holding exactly `want`, each signed in at the gateway.
async fn holds_steadily(p: &Pool, a: &Bridge, want: &BTreeSet<String>, window: Duration) {
    let until = Instant::now() + window;
    while Instant::now() < until {
        assert_eq!(a.held().await, *want);
        for agent in want {
            assert!(p.sim.signed_in(agent), "{agent} signed in at the gateway");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_cannot_reach_the_gateway_takes_no_agent_away() {
    let agents = agents_for(&["good-a", "bad-b"], 3);
    let all = set(&agents);
    let p = pool(&agents, 1).await;
    let mut a = Bridge::start(&p.setup, "good-a");
    wait_until(SETTLE, "a holds every agent", || async {
        a.held().await == all
    })
    .await;
    // A rollout with a broken secret: b trusts another CA than the one that signed the gateway's
    // certificate (another simulator's).
    let other = simulator().await;
    let broken = PoolSetup {
        ca: other.ca_path().to_path_buf(),
        ..p.setup.clone()
    };
    let before = p.sim.requests().len();
    let mut b = Bridge::start(&broken, "bad-b");
    wait_until(SETTLE, "b joined the pool", || async {
        b.log_text().contains("pool: joined")
    })
    .await;
    holds_steadily(&p, &a, &all, TTL * 3).await;
    assert!(b.held().await.is_empty());
    let after = p.sim.requests()[before..].to_vec();
    assert_eq!(logouts_of(&after, &all), 0, "no agent was signed out");
    assert_eq!(sign_ins(&after), (0, 0), "no agent was signed in again");
    // Not ready, so a rolling update stops here instead of retiring the pod that serves.
    assert!(!b.ready().await, "{}", b.readyz().await);
    b.sigterm_and_wait().await;
    a.sigterm_and_wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sign_in_on_the_old_owner_during_its_hand_over_is_refused_and_the_pool_converges() {
    let names = ["ho-a", "ho-b"];
    let agents = agents_for(&names, 4);
    let all = set(&agents);
    let want_a = agents_for_member_of(&agents, &names, names[0]);
    let want_b = agents_for_member_of(&agents, &names, names[1]);
    let p = pool(&agents, 1).await;
    // Two runtime workers in the bridges: a single one hides races.
    let workers = ["--worker-threads", "2"];
    let mut a = Bridge::start_with(&p.setup, names[0], &workers);
    wait_until(SETTLE, "a holds every agent", || async {
        a.held().await == all
    })
    .await;
    // The hand-over's first sign-out is answered at once, the others slowly: its batch is
    // still open when the first agent is out.
    p.sim.add_fault(Fault {
        matcher: FaultMatch::Interface(Interface::Logout),
        kind: FaultKind::Latency(Duration::ZERO),
        count: Some(1),
    });
    p.sim.add_fault(Fault {
        matcher: FaultMatch::Interface(Interface::Logout),
        kind: FaultKind::Latency(Duration::from_millis(700)),
        count: Some(3),
    });
    let mut b = Bridge::start_with(&p.setup, names[1], &workers);
    let first_out = p
        .sim
        .wait_for_request(|r| {
            r.path.contains("logout") && r.agent_id.as_ref().is_some_and(|a| want_b.contains(a))
        })
        .await;
    let agent = first_out.agent_id.unwrap();
    // A caller on the old owner signs that agent in again at the worst moment.
    let refused = a
        .caller_sign_in(&agent)
        .await
        .expect_err("a SignIn during the hand-over is refused");
    assert!(
        matches!(
            refused.code(),
            tonic::Code::Unavailable | tonic::Code::FailedPrecondition
        ),
        "{refused:?}"
    );
    // Converged on etcd's owners within 3 × TTL, every agent signed in at the gateway.
    wait_until(TTL * 3, "the pool converges on etcd's owners", || async {
        a.held().await == want_a
            && b.held().await == want_b
            && agents.iter().all(|x| p.sim.signed_in(x))
    })
    .await;
    a.sigterm_and_wait().await;
    b.sigterm_and_wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_gateway_during_a_join_costs_no_lease_and_forces_nothing() {
    let names = ["slow-a", "slow-b"];
    let agents = agents_for(&names, 4);
    let all = set(&agents);
    let want_a = agents_for_member_of(&agents, &names, names[0]);
    let want_b = agents_for_member_of(&agents, &names, names[1]);
    let p = pool(&agents, 1).await;
    let mut a = Bridge::start(&p.setup, names[0]);
    wait_until(SETTLE, "a holds every agent", || async {
        a.held().await == all
    })
    .await;
    // The gateway ends every session and becomes slow: each sign-in takes 8 s (> the 3 s TTL).
    p.sim.add_fault(Fault {
        matcher: FaultMatch::Interface(Interface::Login),
        kind: FaultKind::Latency(Duration::from_secs(8)),
        count: Some(agents.len() as u32),
    });
    let before = p.sim.requests().len();
    for agent in &agents {
        p.sim.kill_session(agent);
    }
    wait_until(SETTLE, "a's re-sign-ins reached the gateway", || async {
        sign_ins(&p.sim.requests()[before..]).0 >= agents.len()
    })
    .await;
    // b joins while those sign-ins are in flight.
    let mut b = Bridge::start(&p.setup, names[1]);
    settled(&a, &want_a, &b, &want_b).await;
    for agent in &agents {
        assert!(p.sim.signed_in(agent), "{agent}");
    }
    let after = p.sim.requests()[before..].to_vec();
    assert_eq!(sign_ins(&after).1, 0, "no forcelogin: nobody died");
    assert!(
        !a.log_text().contains("lease lost"),
        "a kept its lease:\n{}",
        a.log_text()
    );
    a.sigterm_and_wait().await;
    b.sigterm_and_wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_with_the_same_name_is_refused_and_takes_nothing() {
    let agents = agents_for(&["dup"], 3);
    let all = set(&agents);
    let p = pool(&agents, 1).await;
    let mut a = Bridge::start(&p.setup, "dup");
    wait_until(SETTLE, "a holds every agent", || async {
        a.held().await == all
    })
    .await;
    let before = p.sim.requests().len();
    let mut twin = Bridge::start(&p.setup, "dup");
    wait_until(SETTLE, "the twin says its name is taken", || async {
        twin.log_text().contains("holds the name")
    })
    .await;
    wait_until(SETTLE, "the twin's readiness names the cause", || async {
        twin.readyz().await.contains("--instance-name")
    })
    .await;
    assert!(!twin.ready().await);
    assert!(twin.held().await.is_empty());
    // The twin's drain must not end the first instance's membership or ownerships.
    twin.sigterm_and_wait().await;
    holds_steadily(&p, &a, &all, TTL * 2).await;
    let after = p.sim.requests()[before..].to_vec();
    assert_eq!(sign_ins(&after), (0, 0));
    assert_eq!(logouts_of(&after, &all), 0);
    a.sigterm_and_wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn before_joining_a_pool_sign_in_is_unavailable_and_names_the_coordinator() {
    let agents = agents_for(&["lonely"], 1);
    let p = pool(&agents, 1).await;
    let nobody = format!("http://127.0.0.1:{}", free_port());
    let unreachable = PoolSetup {
        endpoints: nobody.clone(),
        ..p.setup.clone()
    };
    let mut a = Bridge::start(&unreachable, "lonely");
    wait_until(SETTLE, "the bridge serves", || async {
        a.log_text().contains("ccgw-bridge serving")
    })
    .await;
    let status = a
        .client()
        .await
        .sign_in(SignInRequest {
            agent_id: agents[0].clone(),
            password: "secret".into(),
            phone_number: "80000".into(),
            ..Default::default()
        })
        .await
        .expect_err("not joined");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    let info = status.get_details_error_info().expect("ErrorInfo");
    assert_eq!(info.reason, "POOL_NOT_JOINED");
    assert!(status.message().contains(&nobody), "{}", status.message());
    assert_eq!(sign_ins(&p.sim.requests()), (0, 0), "no sign-in was sent");
    // The readiness probe's reason names the endpoint and the cause: nothing answered there.
    wait_until(
        SETTLE,
        "/readyz names the etcd endpoint and the cause",
        || async {
            let readyz = a.readyz().await;
            readyz.contains("not joined yet")
                && readyz.contains(&format!("nothing listens at {nobody}"))
                && !readyz.contains("answered")
        },
    )
    .await;
    a.sigterm_and_wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_added_in_a_rolling_update_go_to_the_members_that_list_them() {
    let names = ["ver-old", "ver-new"];
    let members: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let listed_by_both = agents_for(&names, 2);
    // Two agents the new version adds that rendezvous over both members would give to the old
    // one, whose agents file does not list them.
    let added: Vec<String> = (3001..4000)
        .map(|a| a.to_string())
        .filter(|a| choose(&members, a) == Some("ver-old"))
        .take(2)
        .collect();
    let all: Vec<String> = listed_by_both.iter().chain(&added).cloned().collect();
    let p = pool(&all, 1).await;
    let old_dir = p.setup.dir.join("old-version");
    std::fs::create_dir_all(&old_dir).unwrap();
    let old_setup = PoolSetup {
        agents_file: agents_file(&old_dir, &listed_by_both),
        ..p.setup.clone()
    };
    let mut old = Bridge::start(&old_setup, names[0]);
    let mut new = Bridge::start(&p.setup, names[1]);
    let want_old = agents_for_member_of(&listed_by_both, &names, names[0]);
    let want_new: BTreeSet<String> = all
        .iter()
        .filter(|a| !want_old.contains(*a))
        .cloned()
        .collect();
    settled(&old, &want_old, &new, &want_new).await;
    for agent in &all {
        assert!(p.sim.signed_in(agent), "{agent} signed in at the gateway");
    }
    old.sigterm_and_wait().await;
    new.sigterm_and_wait().await;
}
