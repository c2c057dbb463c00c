//! Lease renewal through a network path that dies silently (issue 23 point 3), with a real
//! etcd behind a TCP proxy: one keep-alive that times out must not cost the lease.

use super::*;

/// The proxy swallows the connection the renewals travel on (no reset, no answer). The
/// renewal sent into it times out; the next attempt, a fraction of a second later and on a
/// new connection, renews the lease well before its TTL runs out, so no session ends and
/// nothing is signed in again. Before, the next attempt came a tick later on the dead
/// connection: exactly a TTL after the last renewal, and the lease was lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_lost_in_a_black_hole_costs_no_lease() {
    let agents = agents_for(&["rn-a"], 2);
    let mut p = pool(&agents, 1).await;
    let proxy = Blackhole::start(&p.etcd[0].client_url).await;
    p.setup.endpoints = proxy.url.clone();
    p.setup.lease_ttl = "6s";
    let a = Bridge::start(&p.setup, "rn-a");
    let all = set(&agents);
    wait_until(
        SETTLE,
        "a holds its agents, their Guids handed on",
        || async {
            a.held().await == all
                && tokio::task::block_in_place(|| p.etcd[0].holders("/ccgw-test/"))
                    .is_superset(&all)
        },
    )
    .await;
    let mark = p.sim.requests().len();
    let ends = p.sim.session_ends().len();

    proxy.swallow_open_connections();
    wait_until(SETTLE, "a renewal into the black hole fails", || async {
        a.log_text().contains("retrying the renewal")
    })
    .await;
    wait_until(
        SETTLE,
        "the lease is renewed on a new connection",
        || async {
            a.log_text()
                .contains("coordinator reachable again; lease still held")
        },
    )
    .await;
    let log = a.log_text();
    assert!(!log.contains("pool: lease lost"), "{log}");
    assert_eq!(a.held().await, all);
    assert_eq!(
        sign_ins(&p.sim.requests()[mark..]),
        (0, 0),
        "nothing signed in again"
    );
    let ended = &p.sim.session_ends()[ends..];
    assert!(ended.is_empty(), "sessions ended: {ended:?}");
}
