//! Step-out with evidence (issue 23 point 4), on a real etcd and real bridges: an instance
//! leaves the members only when its own gateway probe fails while a member's passes, so a
//! whole-gateway outage moves no agent, and a replica that reaches the gateway but cannot sign
//! in (wrong passwords) gives its share to one that can.

use super::*;
use ccgw_bridge::sim::{SimConfig, Simulator};

const PREFIX: &str = "/ccgw-test/";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_sign_ins_are_refused_steps_out_and_its_share_is_served_by_one_that_can() {
    let names = ["good", "bad"];
    let agents = agents_for(&names, 4);
    let sim = Simulator::start(
        SimConfig {
            poll_hold: Duration::from_millis(500),
            password: Some("secret".into()),
            ..SimConfig::default()
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .expect("simulator starts");
    let p = pool_with(&agents, 1, sim).await;
    // "bad" lists the same agents with a password the gateway refuses.
    let bad_dir = p.setup.dir.join("bad");
    std::fs::create_dir_all(&bad_dir).unwrap();
    let bad_setup = PoolSetup {
        agents_file: agents_file(&bad_dir, &agents),
        ..p.setup.clone()
    };
    std::fs::write(bad_dir.join("pw"), "not-the-password\n").unwrap();
    let good = Bridge::start(&p.setup, "good");
    let bad = Bridge::start(&bad_setup, "bad");
    // "bad" takes its share, is refused, steps out; "good" takes and signs in every agent.
    wait_until(SETTLE * 3, "every agent signed in, all on good", || async {
        agents.iter().all(|a| p.sim.signed_in(a)) && good.held().await == set(&agents)
    })
    .await;
    assert!(bad.held().await.is_empty());
    assert_eq!(
        tokio::task::block_in_place(|| p.etcd[0].names(PREFIX, "members")),
        BTreeSet::from(["good".to_string()]),
        "bad stays out of the members"
    );
    assert!(
        bad.log_text().contains("refused this instance's last"),
        "bad's log names the cause"
    );
    assert!(has_sample(
        &bad.metrics().await,
        "ccgw_pool_gateway_probe_ok 0"
    ));
    assert!(has_sample(
        &good.metrics().await,
        "ccgw_pool_gateway_probe_ok 1"
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_gateway_outage_moves_no_agent() {
    let names = ["oa", "ob"];
    let agents = agents_for(&names, 3);
    let p = pool(&agents, 1).await;
    let (a, want_a, b, want_b) = two_settled(&p, &agents, ["oa", "ob"]).await;
    let owners = tokio::task::block_in_place(|| p.etcd[0].owners(PREFIX));
    p.sim.shutdown();
    // Each bridge reaches the number of failed probes after which it would step out, finds no
    // member whose probe passed since, and says so.
    let staying = "no other member's has passed since: staying in";
    wait_until(SETTLE, "both bridges decide to stay in", || async {
        a.log_text().contains(staying) && b.log_text().contains(staying)
    })
    .await;
    assert_eq!(
        tokio::task::block_in_place(|| p.etcd[0].names(PREFIX, "members")),
        BTreeSet::from(["oa".to_string(), "ob".to_string()]),
        "a bridge stepped out in a whole-gateway outage"
    );
    assert_eq!(
        tokio::task::block_in_place(|| p.etcd[0].owners(PREFIX)),
        owners,
        "agents moved in a whole-gateway outage"
    );
    assert_eq!(a.held().await, want_a);
    assert_eq!(b.held().await, want_b);
    for bridge in [&a, &b] {
        assert!(has_sample(
            &bridge.metrics().await,
            "ccgw_pool_gateway_probe_ok 0"
        ));
    }
}
