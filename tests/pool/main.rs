//! Acceptance tests of the agent pool (issue 11) with real processes: etcd, the release-built
//! bridge (`harness::bridge_bin`, built once per run with `--features pool`) and the simulator.

mod chaos;
mod dashboard;
mod etcd_security;
mod harness;
mod interleavings;
mod ownership_table;
mod renewal;
mod scale;
mod scripted;
mod step_out;
mod watchers;

use ccgw_bridge::pool::choose;
use ccgw_bridge::proto::{GetSessionRequest, SignInRequest};
use harness::*;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use tonic_types::StatusExt;

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
    /// Shared with the chaos test's sampler task.
    sim: std::sync::Arc<ccgw_bridge::sim::Simulator>,
    setup: PoolSetup,
    etcd: Vec<Etcd>,
}

async fn pool(agents: &[String], etcd_members: usize) -> Pool {
    pool_with(agents, etcd_members, simulator().await).await
}

/// [`pool`] on a simulator of the test's own.
async fn pool_with(
    agents: &[String],
    etcd_members: usize,
    sim: ccgw_bridge::sim::Simulator,
) -> Pool {
    let dir = TempDir::new("t");
    let etcd = if etcd_members == 1 {
        vec![Etcd::single(&dir.0)]
    } else {
        Etcd::cluster(&dir.0, etcd_members)
    };
    for m in &etcd {
        wait_until(SETTLE, "etcd healthy", || m.healthy()).await;
    }
    let setup = PoolSetup::new(&dir.0, &sim, agents, &etcd.iter().collect::<Vec<_>>());
    Pool {
        _dir: dir,
        sim: std::sync::Arc::new(sim),
        setup,
        etcd,
    }
}

/// As [`settled`], without the overlap check: right after SIGCONT a resumed bridge may still
/// list the sessions it lost until its first renewal tells it so (a stale view; what it
/// *does* is checked on the gateway's request log instead).
async fn settled_after_resume(
    a: &Bridge,
    want_a: &BTreeSet<String>,
    b: &Bridge,
    want_b: &BTreeSet<String>,
) {
    wait_until(SETTLE, "the pool settles again", || async {
        a.held().await == *want_a && b.held().await == *want_b
    })
    .await;
}

/// Waits until `a` holds exactly `want_a` and `b` exactly `want_b`; meanwhile no agent is
/// ever reported signed in by both.
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
    let (mut a, want_a, mut b, want_b) = two_settled(&p, &agents, ["pool-a", "pool-b"]).await;
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

    // SIGKILL b: its lease expires, a takes its agents over: each of b's sessions is logged out
    // with the Guid b handed off in its holder record, then signed in plainly (issue 22).
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
    assert_eq!(
        sign_ins(&after_kill),
        (want_b.len(), 0),
        "plain logins only"
    );
    for agent in &want_b {
        assert!(
            after_kill
                .iter()
                .any(|r| r.path.ends_with(&format!("/onlineagent/{agent}/logout"))),
            "{agent}: the crashed holder's session logged out with its Guid"
        );
    }
    assert_eq!(p.sim.stats().other_clients_kicked, 0);
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
    let metrics = a.metrics().await;
    for sample in [
        "ccgw_pool_agents_owned 6".to_string(),
        format!(
            "ccgw_pool_take_overs_total{{outcome=\"guid_logout\"}} {}",
            want_b.len()
        ),
        "ccgw_pool_lease{state=\"held\"} 1".to_string(),
    ] {
        assert!(has_sample(&metrics, &sample), "{sample} in\n{metrics}");
    }

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_update_new_bridge_is_ready_while_the_old_holds_the_agents_and_takes_them_on_sigterm(
) {
    // Three agents the old instance keeps while both run (rendezvous puts them on it), so the
    // new one must pass readiness holding none of them.
    let members = vec!["roll-old".to_string(), "roll-new".to_string()];
    let agents: Vec<String> = (2001..3000)
        .map(|a| a.to_string())
        .filter(|a| choose(&members, a) == Some("roll-old"))
        .take(3)
        .collect();
    let all = set(&agents);
    let p = pool(&agents, 1).await;
    let mut old = Bridge::start(&p.setup, "roll-old");
    wait_until(SETTLE, "the old bridge holds all agents", || async {
        old.held().await == all
    })
    .await;

    let new = Bridge::start(&p.setup, "roll-new");
    wait_until(
        SETTLE,
        "the new bridge passes the manifest's readiness probe",
        || new.ready(),
    )
    .await;
    assert_eq!(
        old.held().await,
        all,
        "the old bridge still holds every agent"
    );
    assert!(new.held().await.is_empty());
    // Callers of the new sidecar are told who owns the agents; it signs nothing in for them.
    let before = p.sim.requests().len();
    let mut client = new.client().await;
    let get = client
        .get_session(GetSessionRequest {
            agent_id: agents[0].clone(),
        })
        .await
        .expect_err("not owned here");
    let sign_in = client
        .sign_in(SignInRequest {
            agent_id: agents[0].clone(),
            password: "secret".into(),
            phone_number: "80000".into(),
            force: true,
            ..Default::default()
        })
        .await
        .expect_err("not owned here");
    for status in [get, sign_in] {
        assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
        let info = status.get_details_error_info().expect("ErrorInfo");
        assert_eq!(info.reason, "AGENT_NOT_OWNED");
        assert_eq!(
            info.metadata.get("owner").map(String::as_str),
            Some("roll-old")
        );
    }
    assert_eq!(sign_ins(&p.sim.requests()[before..]), (0, 0));

    // Both apps follow their sidecar's ownership.
    let mut new_owned = new.watch_ownership().await;
    let mut old_owned = old.watch_ownership().await;
    let first = new_owned.message().await.unwrap().unwrap();
    assert_eq!(first.instance, "roll-new");
    assert!(first.agent_ids.is_empty());
    assert_eq!(first.lease_state, "held");
    assert_eq!(
        old_owned.message().await.unwrap().unwrap().agent_ids,
        agents
    );

    let term = Instant::now();
    old.sigterm_and_wait().await;
    let exited = term.elapsed();
    wait_until(
        Duration::from_secs(15),
        "the new bridge holds all agents",
        || async { new.held().await == all },
    )
    .await;
    eprintln!(
        "figure: hand-over after SIGTERM: {:?} (the old bridge exited after {exited:?})",
        term.elapsed()
    );
    // The old sidecar's stream ended with the drain; the new one saw each agent arrive.
    let mut end = None;
    while let Some(item) = old_owned.message().await.transpose() {
        if let Err(status) = item {
            end = Some(status.code());
            break;
        }
    }
    assert_eq!(end, Some(tonic::Code::Unavailable));
    let mut seen = Vec::new();
    while seen.last() != Some(&agents) {
        seen.push(new_owned.message().await.unwrap().unwrap().agent_ids);
    }
    assert!(seen.iter().all(|s| s.iter().all(|a| all.contains(a))));
    let (plain, forced) = sign_ins(&p.sim.requests());
    assert_eq!(forced, 0, "no forcelogin at any point");
    assert_eq!(
        plain,
        2 * agents.len(),
        "each agent signed in once by each bridge"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_stopped_past_its_ttl_does_not_act_on_agents_it_lost() {
    let agents = agents_for(&["stop-a", "stop-b"], 3);
    let p = pool(&agents, 1).await;
    let (a, want_a, b, want_b) = two_settled(&p, &agents, ["stop-a", "stop-b"]).await;
    let b_guids: Vec<String> = want_b
        .iter()
        .map(|x| p.sim.current_guid(x).expect("signed in"))
        .collect();

    b.sigstop();
    let all = set(&agents);
    wait_until(
        TTL + Duration::from_secs(5),
        "a takes b's agents over",
        || async { a.held().await == all },
    )
    .await;
    let mark = p.sim.requests().len();
    let log_mark = b.log_text().len();
    b.sigcont();
    // b learns its lease is gone, rejoins, and gets its share back by graceful hand-over.
    settled_after_resume(&a, &want_a, &b, &want_b).await;
    let after = p.sim.requests()[mark..].to_vec();
    assert_eq!(sign_ins(&after).1, 0, "no forcelogin after SIGCONT");
    // b sent nothing but its one outstanding poll with a Guid of the sessions it lost.
    for r in &after {
        if let Some(g) = r.header("guid") {
            assert!(
                !b_guids.iter().any(|old| old == g) || r.path.contains("/agentevent/"),
                "b acted on a lost session: {} {}",
                r.method,
                r.path
            );
        }
    }
    // Every sign-in after SIGCONT was a hand-over: a logout of the agent came first.
    for (i, r) in after.iter().enumerate() {
        if let Some((agent, _)) = sign_in_kind(r) {
            assert!(
                after[..i]
                    .iter()
                    .any(|x| x.method == "DELETE" && x.agent_id.as_deref() == Some(agent)),
                "{agent} signed in after SIGCONT without a hand-over"
            );
        }
    }
    // Before rejoining, b signed nothing in: its log shows the lost lease first.
    let log = &b.log_text()[log_mark..];
    let lost = log.find("lease lost").expect("b logged the lost lease");
    let joined = log.find("pool: joined").expect("b rejoined");
    assert!(lost < joined);
    assert!(
        !log[..joined].contains("agent signed in"),
        "b signed an agent in before rejoining:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_leader_loss_keeps_every_session_and_signs_nothing_in_twice() {
    let agents = agents_for(&["lead-a", "lead-b"], 2);
    let mut p = pool(&agents, 3).await;
    let (a, want_a, b, want_b) = two_settled(&p, &agents, ["lead-a", "lead-b"]).await;
    let mark = p.sim.requests().len();

    let leader = p
        .etcd
        .iter()
        .position(Etcd::is_leader)
        .expect("the cluster has a leader");
    p.etcd[leader].kill();
    wait_until(SETTLE, "a new etcd leader", || {
        let others: Vec<&Etcd> = p
            .etcd
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != leader)
            .map(|(_, m)| m)
            .collect();
        let found = others.iter().any(|m| m.is_leader());
        async move { found }
    })
    .await;
    // Three renewals past the election: the same sessions, nothing signed in again.
    hold_steady(&a, &want_a, &b, &want_b, TTL * 3).await;
    assert_eq!(sign_ins(&p.sim.requests()[mark..]), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_stopped_keeps_sessions_refuses_new_sign_ins_and_recovers() {
    let agents = agents_for(&["down-a", "down-b"], 2);
    let mut p = pool(&agents, 1).await;
    let (a, want_a, b, want_b) = two_settled(&p, &agents, ["down-a", "down-b"]).await;
    let mark = p.sim.requests().len();

    p.etcd[0].kill();
    // Past the lease's TTL on the bridges' own clocks, sessions still run and are polled.
    let polls = p.sim.stats().polls;
    hold_steady(&a, &want_a, &b, &want_b, TTL * 2).await;
    assert!(p.sim.stats().polls > polls, "sessions are still polled");
    assert!(a.log_text().contains("coordinator unreachable"));
    assert!(has_sample(
        &a.metrics().await,
        "ccgw_pool_lease{state=\"coordinator_unreachable\"} 1"
    ));
    // Readiness reports it (issue 11 point 4) without failing the probe: the holder still
    // serves its sessions. `/readyz` answers 200 with the warning; the log has it once.
    let degraded = "degraded: agent pool: coordinator (etcd) unreachable";
    let readyz = a.readyz().await;
    assert!(readyz.starts_with("HTTP/1.0 200"), "{readyz}");
    assert!(readyz.contains(degraded), "{readyz}");
    assert!(a.ready().await, "the readiness probe still passes");
    assert!(has_sample(&a.metrics().await, "ccgw_ready 1"));
    let warned = |log: &str| {
        log.lines()
            .filter(|l| {
                l.contains("readiness changed: degraded")
                    && l.contains("coordinator (etcd) unreachable")
            })
            .count()
    };
    assert_eq!(warned(&a.log_text()), 1, "{}", a.log_text());

    // The gateway ends one of a's sessions: with no valid lease, a does not sign it in again.
    let kicked = want_a.iter().next().unwrap().clone();
    p.sim.force_sign_out(&kicked);
    wait_until(SETTLE, "a drops the kicked agent", || async {
        !a.held().await.contains(&kicked)
    })
    .await;
    assert_eq!(
        sign_ins(&p.sim.requests()[mark..]),
        (0, 0),
        "no sign-in without etcd"
    );
    // A caller's sign-in meanwhile is refused naming the keep-alive's last failure, worded as
    // every etcd failure is (src/pool/hints.rs): the cause and the fix, not the client's dump.
    let refused = a
        .caller_sign_in(&kicked)
        .await
        .expect_err("no sign-in without a confirmed lease");
    let message = refused.message();
    assert!(
        message.contains("last error: coordinator: nothing listens at http://127.0.0.1:")
            && message.contains("check --etcd-endpoints")
            && !message.contains("tcp connect error"),
        "{refused:?}"
    );

    // etcd back: the lease is still a's, so it signs its agent in again (plainly), once.
    p.etcd[0].start();
    wait_until(SETTLE, "a holds its agents again", || async {
        a.held().await == want_a
    })
    .await;
    assert_eq!(b.held().await, want_b);
    assert_eq!(sign_ins(&p.sim.requests()[mark..]), (1, 0));
    wait_until(SETTLE, "the warning leaves /readyz", || async {
        a.readyz().await.ends_with("\r\n\r\nready\n")
    })
    .await;
    let log = a.log_text();
    let last = log.lines().rfind(|l| l.contains("readiness changed"));
    assert!(
        last.is_some_and(|l| l.contains("readiness changed: ready")),
        "the recovery is logged: {log}"
    );
}

/// Issue 23 point 9: etcd frozen past the TTL (SIGSTOP of its only member, then SIGCONT) ends
/// every lease. No session may end for it and nothing may be signed in again: the sessions run
/// on with the gate closed, and each instance takes its own agents back unchanged. Before, each
/// instance ended every session when its lease was lost and signed all its agents in again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_stall_past_the_ttl_ends_no_session_and_signs_nothing_in_again() {
    let names = ["stall-a", "stall-b"];
    let agents = agents_for(&names, 3);
    let p = pool(&agents, 1).await;
    let (a, want_a, b, want_b) = two_settled(&p, &agents, names).await;
    let mark = p.sim.requests().len();
    let ends = p.sim.session_ends().len();
    let lost = |br: &Bridge| br.log_text().matches("pool: lease lost").count();

    p.etcd[0].sigstop();
    let unreachable = "ccgw_pool_lease{state=\"coordinator_unreachable\"} 1";
    wait_until(SETTLE, "both bridges find etcd unreachable", || async {
        has_sample(&a.metrics().await, unreachable) && has_sample(&b.metrics().await, unreachable)
    })
    .await;
    // The fault itself: a stall twice the TTL, so etcd expires both leases when it resumes.
    tokio::time::sleep(TTL * 2).await;
    p.etcd[0].sigcont();
    wait_until(SETTLE, "both learn their lease is gone", || async {
        lost(&a) >= 1 && lost(&b) >= 1
    })
    .await;
    let want_owners: std::collections::BTreeMap<String, String> = want_a
        .iter()
        .map(|x| (x.clone(), names[0].to_owned()))
        .chain(want_b.iter().map(|x| (x.clone(), names[1].to_owned())))
        .collect();
    wait_until(
        SETTLE,
        "each owns its agents again under a new lease",
        || async {
            let owners = tokio::task::block_in_place(|| p.etcd[0].owners("/ccgw-test/"));
            owners == want_owners
        },
    )
    .await;
    assert_eq!(a.held().await, want_a);
    assert_eq!(b.held().await, want_b);
    assert_eq!(
        sign_ins(&p.sim.requests()[mark..]),
        (0, 0),
        "nothing signed in again"
    );
    let ended = &p.sim.session_ends()[ends..];
    assert!(ended.is_empty(), "sessions ended by the stall: {ended:?}");
    let log = a.log_text();
    assert!(
        log.contains("its session ran on through the lost lease, unchanged"),
        "{log}"
    );
}

/// Issue 23 point 10: a rebalancing hand-over ends the moved agent's watch streams with
/// FAILED_PRECONDITION `AGENT_MOVED` naming the new owner. Before, they ended with a clean OK,
/// exactly like a deliberate SignOut, so an app stopped watching and never resumed on b. The
/// logout's answer comes 1 s late, so the poll loop sees the session end first: it must close
/// the streams as the hand-over would (a CI run caught it closing them as a plain sign-out).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_over_ends_watch_streams_with_agent_moved_naming_the_new_owner() {
    use ccgw_bridge::proto::WatchPlayEventsRequest;
    let names = ["mv-a", "mv-b"];
    let (p, agents, a) = one_holding_all(names).await;
    let moving = agents_for_member_of(&agents, &names, names[1])
        .into_iter()
        .next()
        .unwrap();
    p.sim.add_fault(ccgw_bridge::sim::Fault {
        matcher: ccgw_bridge::sim::FaultMatch::PathContains(format!(
            "/onlineagent/{moving}/logout"
        )),
        kind: ccgw_bridge::sim::FaultKind::Latency(Duration::from_secs(1)),
        count: Some(1),
    });
    let mut stream = a
        .play()
        .await
        .watch_play_events(WatchPlayEventsRequest {
            agent_id: moving.clone(),
            ..Default::default()
        })
        .await
        .expect("the watch opens on a")
        .into_inner();
    let _b = Bridge::start(&p.setup, names[1]);
    let ended = tokio::time::timeout(SETTLE, async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => break None,
                Err(status) => break Some(status),
            }
        }
    })
    .await
    .expect("the stream ends when the agent moves");
    let status = ended.expect("a status, not a clean end");
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    let info = status.get_details_error_info().expect("ErrorInfo");
    assert_eq!(info.reason, "AGENT_MOVED");
    assert_eq!(
        info.metadata.get("owner").map(String::as_str),
        Some(names[1])
    );
    assert_eq!(info.metadata.get("agent_id"), Some(&moving));
}

/// Issue 23 point 11: a rebalancing move waits for the agent's play to end instead of cutting
/// it with a sign-out (`--pool-move-wait`, 60 s by default; the simulator's plays last 30 s).
/// Before, a joining replica took its share at once, plays or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebalancing_move_waits_for_the_agents_play_to_end() {
    use ccgw_bridge::proto::{
        BeginPlayRequest, PlayEventType, StopPlayRequest, WatchPlayEventsRequest,
    };
    let names = ["pl-a", "pl-b"];
    let (p, agents, a) = one_holding_all(names).await;
    let want_b = agents_for_member_of(&agents, &names, names[1]);
    let playing = want_b.iter().next().unwrap().clone();
    let mut play = a.play().await;
    let mut events = play
        .watch_play_events(WatchPlayEventsRequest {
            agent_id: playing.clone(),
            ..Default::default()
        })
        .await
        .expect("the watch opens on a")
        .into_inner();
    play.begin_play(BeginPlayRequest {
        agent_id: playing.clone(),
        voice_path: "/prompts/welcome.wav".into(),
        ..Default::default()
    })
    .await
    .expect("the play begins");
    let next_type = |e: Option<ccgw_bridge::proto::PlayEvent>| e.expect("an event").r#type;
    let started = next_type(events.message().await.expect("no error"));
    assert_eq!(started, PlayEventType::PlayStarted as i32);

    let b = Bridge::start(&p.setup, names[1]);
    let others: BTreeSet<String> = want_b.iter().filter(|x| **x != playing).cloned().collect();
    wait_until(
        SETTLE,
        "b holds its share but the playing agent",
        || async { b.held().await == others },
    )
    .await;
    assert!(
        a.held().await.contains(&playing),
        "the playing agent stays on a meanwhile"
    );
    let logouts = |agent: &str| {
        p.sim
            .requests()
            .iter()
            .filter(|r| {
                r.method == "DELETE"
                    && r.agent_id.as_deref() == Some(agent)
                    && r.path.contains("logout")
            })
            .count()
    };
    assert_eq!(logouts(&playing), 0, "the play was not cut by a sign-out");

    play.stop_play(StopPlayRequest {
        agent_id: playing.clone(),
    })
    .await
    .expect("the play stops");
    // The play's own events up to its end, on a: the sign-out did not cut it.
    while next_type(events.message().await.expect("no error")) != PlayEventType::PlayStopped as i32
    {
    }
    wait_until(SETTLE, "the agent moves once idle", || async {
        b.held().await == want_b
    })
    .await;
}

/// Issue 23 point 5: the drain releases each agent as soon as its sign-out ended, so one slow
/// sign-out (its answer 8 s late, past a's 5 s drain) holds back only its own agent: b serves
/// a's other agents while a still drains, and a still leaves within its drain time. Before,
/// every release waited for the slowest sign-out, and the drain's deadline cancelled them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_releases_each_agent_as_soon_as_its_sign_out_ends() {
    use ccgw_bridge::sim::{Fault, FaultKind, FaultMatch};
    let names = ["dr-a", "dr-b"];
    let agents = agents_for(&names, 3);
    let p = pool(&agents, 1).await;
    let (mut a, want_a, b, _) = two_settled(&p, &agents, names).await;
    let slow = want_a.iter().next().unwrap().clone();
    p.sim.add_fault(Fault {
        matcher: FaultMatch::PathContains(format!("/onlineagent/{slow}/logout")),
        kind: FaultKind::Latency(Duration::from_secs(8)),
        count: Some(1),
    });
    a.sigterm();
    let fast: BTreeSet<String> = want_a.iter().filter(|x| **x != slow).cloned().collect();
    wait_until(SETTLE, "b serves a's other agents", || async {
        b.held().await.is_superset(&fast)
    })
    .await;
    assert!(!a.exited(), "a still waits for its slow sign-out meanwhile");
    assert!(
        !b.held().await.contains(&slow),
        "the slow agent is not released before its sign-out"
    );
    a.wait_exit().await;
    wait_until(SETTLE, "b serves every agent", || async {
        b.held().await == set(&agents)
    })
    .await;
    assert_eq!(sign_ins(&p.sim.requests()).1, 0, "no forcelogin");
}

/// A pool with two agents for each of `names`, and `names[0]` started and holding all four.
async fn one_holding_all(names: [&str; 2]) -> (Pool, Vec<String>, Bridge) {
    let agents = agents_for(&names, 2);
    let p = pool(&agents, 1).await;
    let a = Bridge::start(&p.setup, names[0]);
    wait_until(SETTLE, "the first bridge holds every agent", || async {
        a.held().await == set(&agents)
    })
    .await;
    (p, agents, a)
}

/// Starts bridges `names[0]` and `names[1]` on `p` and waits until each holds its share.
async fn two_settled(
    p: &Pool,
    agents: &[String],
    names: [&str; 2],
) -> (Bridge, BTreeSet<String>, Bridge, BTreeSet<String>) {
    let a = Bridge::start(&p.setup, names[0]);
    let b = Bridge::start(&p.setup, names[1]);
    let want_a = agents_for_member_of(agents, &names, names[0]);
    let want_b = agents_for_member_of(agents, &names, names[1]);
    settled(&a, &want_a, &b, &want_b).await;
    // Settled includes the Guid hand-off: a test that kills a bridge next must not kill it
    // between a sign-in and its holder record (then its agents wait for the gateway's idle
    // sign-out, the documented price).
    let all = set(agents);
    wait_until(SETTLE, "every session's Guid is handed on", || async {
        tokio::task::block_in_place(|| p.etcd[0].holders("/ccgw-test/")).is_superset(&all)
    })
    .await;
    (a, want_a, b, want_b)
}

/// Checks for `window` that `a` and `b` keep holding exactly what they hold.
async fn hold_steady(
    a: &Bridge,
    want_a: &BTreeSet<String>,
    b: &Bridge,
    want_b: &BTreeSet<String>,
    window: Duration,
) {
    let until = Instant::now() + window;
    while Instant::now() < until {
        assert_eq!(a.held().await, *want_a);
        assert_eq!(b.held().await, *want_b);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn agents_for_member_of(agents: &[String], names: &[&str], name: &str) -> BTreeSet<String> {
    let members: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    agents
        .iter()
        .filter(|a| choose(&members, a) == Some(name))
        .cloned()
        .collect()
}

#[test]
fn pool_flags_are_validated_before_anything_starts() {
    let dir = TempDir::new("cfg");
    let agents = agents_file(&dir.0, &["2001".to_string()]);
    let validate = |extra: &[&str]| validate_flags(&agents, extra);
    assert!(
        validate(&[]).unwrap().pool.is_none(),
        "off without endpoints"
    );
    let pool = validate(&[
        "--etcd-endpoints",
        "http://127.0.0.1:2379,http://127.0.0.1:2380",
        "--etcd-prefix",
        "/p",
        "--instance-name",
        "pod-1",
    ])
    .unwrap()
    .pool
    .unwrap();
    assert_eq!(pool.endpoints.len(), 2);
    assert_eq!(pool.prefix, "/p/");
    assert_eq!(pool.instance, "pod-1");
    assert_eq!(pool.lease_ttl, Duration::from_secs(6));
    let e = ["--etcd-endpoints", "http://127.0.0.1:2379"];
    for bad in [
        ["--lease-ttl", "1s"],
        ["--lease-ttl", "2500ms"],
        ["--instance-name", "a/b"],
    ] {
        let err = validate(&[e[0], e[1], bad[0], bad[1]]).unwrap_err();
        assert!(err.contains(bad[0]), "{err}");
    }
    // force = true would make instances kick each other: refused in pool mode.
    let text = std::fs::read_to_string(&agents).unwrap() + "force = true\n";
    std::fs::write(&agents, text).unwrap();
    assert!(validate(&[]).is_ok());
    let err = validate(&e).unwrap_err();
    assert!(err.contains("force = true"), "{err}");
}

/// An Ownership snapshot of `b` (the current one of its WatchOwnership stream).
async fn ownership_of(b: &Bridge) -> ccgw_bridge::proto::Ownership {
    let mut w = b.watch_ownership().await;
    w.message().await.expect("ownership").expect("a snapshot")
}

/// Issue 22 path 2 (fails on 7c74dba: one `forcelogin` kicks the person): a person holds an
/// agent before any bridge starts. Its owner's logins get `100-002`, so it never signs the
/// agent in and hands off no Guid. It is SIGKILLed; the instance that takes its agents over has
/// no Guid that could end a session, so it signs in plainly, meets `100-002` and waits, never
/// forcing: the person keeps the agent, and the wait is visible in WatchOwnership, `/readyz`
/// and the metrics. When the person signs out, the new owner signs the agent in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_take_over_of_an_agent_a_person_holds_never_kicks_the_person() {
    let agents = agents_for(&["kp-a", "kp-b"], 2);
    let p = pool(&agents, 1).await;
    let names = ["kp-a", "kp-b"];
    let want_a = agents_for_member_of(&agents, &names, "kp-a");
    let held = want_a.iter().next().unwrap().clone();
    p.sim
        .sign_in_elsewhere(&held, false)
        .expect("the person signs in");
    let person = p.sim.current_guid(&held);
    let mut a = Bridge::start(&p.setup, "kp-a");
    let b = Bridge::start(&p.setup, "kp-b");
    let serving_a: BTreeSet<String> = want_a.iter().filter(|x| **x != held).cloned().collect();
    let want_b = agents_for_member_of(&agents, &names, "kp-b");
    settled(&a, &serving_a, &b, &want_b).await;
    wait_until(SETTLE, "a has handed its sessions' Guids on", || async {
        tokio::task::block_in_place(|| p.etcd[0].holders("/ccgw-test/")).is_superset(&serving_a)
    })
    .await;
    let before = p.sim.requests().len();
    a.sigkill();
    let serving_b: BTreeSet<String> = agents.iter().filter(|x| **x != held).cloned().collect();
    wait_until(
        TTL + SETTLE,
        "b serves every agent but the person's, and waits for that one",
        || async {
            b.held().await == serving_b
                && ownership_of(&b).await.waiting_for_gateway == [held.clone()]
        },
    )
    .await;
    let after_kill = p.sim.requests()[before..].to_vec();
    assert_eq!(sign_ins(&after_kill).1, 0, "no forcelogin");
    assert_eq!(
        p.sim.current_guid(&held),
        person,
        "the person keeps the agent"
    );
    assert_eq!(p.sim.stats().other_clients_kicked, 0);
    let metrics = b.metrics().await;
    assert!(
        has_sample(&metrics, "ccgw_pool_agents_waiting_for_gateway 1"),
        "{metrics}"
    );
    wait_until(SETTLE, "/readyz names the wait", || async {
        b.readyz().await.contains("wait for the gateway")
    })
    .await;
    // The person signs out: keep-signed-in's next plain login takes the agent.
    assert!(p.sim.person_signs_out(&held));
    wait_until(SETTLE, "b signs the freed agent in", || async {
        b.held().await == set(&agents) && ownership_of(&b).await.waiting_for_gateway.is_empty()
    })
    .await;
    assert_eq!(sign_ins(&p.sim.requests()[before..]).1, 0, "no forcelogin");
    assert_eq!(p.sim.stats().other_clients_kicked, 0);
    let person_ends: Vec<_> = p
        .sim
        .session_ends()
        .into_iter()
        .filter(|e| e.agent_id == held)
        .collect();
    assert_eq!(person_ends.len(), 1, "{person_ends:?}");
    assert_eq!(
        person_ends[0].cause,
        ccgw_bridge::sim::EndCause::PersonSignedOut,
        "only the person ended their session"
    );
    let metrics = b.metrics().await;
    assert!(
        has_sample(
            &metrics,
            "ccgw_pool_take_overs_total{outcome=\"waited_for_gateway\"} 1"
        ),
        "{metrics}"
    );
}

/// The price of a take-over without a usable Guid (issue 22, "say the price"): the crashed
/// holder's records are gone (as if stale, or no `--pool-key-file`), so its sessions can only end
/// at the gateway's idle sign-out (4 s here). The survivor signs in plainly, meets `100-002`,
/// waits, and takes every agent once the gateway has freed it: TTL + idle + a back-off, never
/// `forcelogin`. Prints the figure beside the take-over with a current record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_take_over_without_a_usable_record_waits_for_the_gateways_idle_sign_out() {
    const IDLE: Duration = Duration::from_secs(4);
    let sim = simulator_idling_after(IDLE).await;
    let agents = agents_for(&["st-a", "st-b"], 2);
    let p = pool_with(&agents, 1, sim).await;
    let (mut a, want_a, b, _) = two_settled(&p, &agents, ["st-a", "st-b"]).await;
    let before = p.sim.requests().len();
    a.sigkill();
    let killed = Instant::now();
    let deleted =
        tokio::task::block_in_place(|| p.etcd[0].ctl(&["del", "--prefix", "/ccgw-test/holders/"]));
    let deleted = deleted.status.success();
    assert!(deleted, "holder records deleted");
    for agent in &want_a {
        assert!(
            p.sim.signed_in(agent),
            "{agent}: the crashed holder's session is still there"
        );
    }
    let all = set(&agents);
    let took = wait_until(
        TTL + IDLE + Duration::from_secs(30),
        "b holds every agent once the gateway signed a's sessions out",
        || async { b.held().await == all },
    )
    .await;
    eprintln!(
        "figure: take-over after SIGKILL without a usable record (TTL 3 s, gateway idle sign-out 4 s): {took:?}"
    );
    assert!(
        killed.elapsed() >= IDLE,
        "not before the gateway freed the agents"
    );
    assert_eq!(sign_ins(&p.sim.requests()[before..]).1, 0, "no forcelogin");
    // Counted at the reconcile after the sign-ins.
    let taken = format!(
        "ccgw_pool_take_overs_total{{outcome=\"waited_for_gateway\"}} {}",
        want_a.len()
    );
    wait_until(SETTLE, "the waits are counted as take-overs", || async {
        let metrics = b.metrics().await;
        has_sample(&metrics, &taken)
            && has_sample(&metrics, "ccgw_pool_agents_waiting_for_gateway 0")
    })
    .await;
}
