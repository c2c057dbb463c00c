//! Deterministic interleavings the real etcd cannot order on demand, on a scripted [`Backend`]
//! (in addition to the real-etcd tests, not in place of them): the real session layer and the
//! simulator over real TLS, an in-memory coordinator whose answers the test chooses.

use super::*;
use ccgw_bridge::gateway::{GatewayClient, GatewayConfig};
use ccgw_bridge::pool::{
    Acquired, Backend, HandOff, HolderWrite, Keyring, LeaseRenewal, Pool, PoolConfig, PoolError,
    Probe, Renewal, View,
};
use ccgw_bridge::secret::Password;
use ccgw_bridge::session::{SessionSettings, Sessions, SignInParams};
use ccgw_bridge::sim::{Client, EndCause, Fault, FaultKind, FaultMatch, Interface, SessionEnd};
use ccgw_bridge::telemetry::Metrics;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

#[derive(Default)]
struct Coordinator {
    members: Vec<String>,
    owners: HashMap<String, String>,
    /// Releases to fail before any succeeds.
    failing_releases: u32,
    failed_releases: u32,
    /// Answer releases as "not this lease's record any more" (nothing released).
    releases_not_mine: bool,
    /// Agent → its holder record (the sealed Guid hand-off `acquire` returns to a next owner).
    holder_records: HashMap<String, Vec<u8>>,
    /// Renewals fail (the coordinator unreachable): the lease runs out TTL after the join.
    renewals_fail: bool,
    /// Sizes of the release batches asked for, in order.
    release_batches: Vec<usize>,
    /// Whether this instance was still a member at each release batch.
    member_at_release: Vec<bool>,
    /// Every member but the scripted instance publishes a passing gateway probe, always newer
    /// than the instance's own (a peer that serves).
    peers_serve: bool,
    /// The scripted instance's last published probe, and the revision counter.
    probe: Option<Probe>,
    revision: i64,
    /// Failed probes the scripted instance published.
    failed_probes: u32,
    /// What the scripted instance published, in order: `Probe(ok)`, and its membership changes.
    history: Vec<Step>,
    /// Agents released with their holder record kept (the sign-out could not reach the
    /// gateway), so their next owner can log the session out with the Guid inside.
    released_with_proof: Vec<String>,
}

/// One thing the scripted instance told the coordinator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Probe(bool),
    In,
    Out,
}

#[derive(Clone, Default)]
struct Script(Arc<Mutex<Coordinator>>);

impl Script {
    fn with<T>(&self, f: impl FnOnce(&mut Coordinator) -> T) -> T {
        f(&mut self.0.lock().unwrap())
    }
}

struct Scripted {
    me: String,
    script: Script,
}

struct Renewer(Script);

impl LeaseRenewal for Renewer {
    async fn renew(&mut self, _bound: Duration) -> Result<Renewal, PoolError> {
        if self.0.with(|c| c.renewals_fail) {
            return Err(PoolError::Coordinator("scripted: unreachable".into()));
        }
        Ok(Renewal::Alive(TTL))
    }
}

impl Backend for Scripted {
    type Lease = Renewer;

    async fn join(&mut self) -> Result<(Duration, Renewer), PoolError> {
        Ok((TTL, Renewer(self.script.clone())))
    }

    async fn set_assignable(&mut self, agents: Option<&[String]>) -> Result<(), PoolError> {
        let me = self.me.clone();
        self.script.with(|c| {
            let was = c.members.contains(&me);
            c.members.retain(|m| *m != me);
            match (was, agents.is_some()) {
                (false, true) => c.history.push(Step::In),
                (true, false) => c.history.push(Step::Out),
                _ => {}
            }
            if agents.is_some() {
                c.members.push(me);
            }
        });
        Ok(())
    }

    async fn publish_probe(&mut self, ok: bool) -> Result<i64, PoolError> {
        Ok(self.script.with(|c| {
            c.revision += 1;
            c.failed_probes += u32::from(!ok);
            c.history.push(Step::Probe(ok));
            c.probe = Some(Probe {
                ok,
                revision: c.revision,
            });
            c.revision
        }))
    }

    async fn view(&mut self) -> Result<View, PoolError> {
        let me = self.me.clone();
        Ok(self.script.with(|c| View {
            probes: c
                .members
                .iter()
                .filter(|m| **m != me && c.peers_serve)
                .map(|m| {
                    let revision = c.revision + 1;
                    (m.clone(), Probe { ok: true, revision })
                })
                .chain(c.probe.map(|p| (me.clone(), p)))
                .collect(),
            members: c.members.clone(),
            // Only this instance publishes a list; the script's peers are taken to list all.
            catalogs: [(me, Arc::default())].into(),
            owners: Arc::new(c.owners.clone()),
            holders: Default::default(),
        }))
    }

    async fn write_holders(&mut self, writes: &[HolderWrite]) -> Vec<Result<(), PoolError>> {
        let me = self.me.clone();
        self.script.with(|c| {
            for w in writes {
                match w {
                    HolderWrite::Put { agent, record } if c.owners.get(agent) == Some(&me) => {
                        c.holder_records.insert(agent.clone(), record.clone());
                    }
                    HolderWrite::Put { .. } => {}
                    HolderWrite::Delete { agent, record } => {
                        if c.holder_records.get(agent) == Some(record) {
                            c.holder_records.remove(agent);
                        }
                    }
                }
            }
        });
        writes.iter().map(|_| Ok(())).collect()
    }

    async fn acquire(&mut self, agents: &[String]) -> Vec<Result<Acquired, PoolError>> {
        let me = self.me.clone();
        self.script.with(|c| {
            agents
                .iter()
                .map(|a| {
                    if c.owners.contains_key(a) {
                        Ok(Acquired::Held)
                    } else {
                        c.owners.insert(a.clone(), me.clone());
                        Ok(Acquired::Won {
                            hand_off: c.holder_records.get(a).cloned(),
                        })
                    }
                })
                .collect()
        })
    }

    async fn release(
        &mut self,
        agents: &[(String, Option<Vec<u8>>)],
    ) -> Vec<Result<bool, PoolError>> {
        let me = self.me.clone();
        self.script.with(|c| {
            let kept: Vec<String> = agents
                .iter()
                .filter(|(a, record)| record.is_none() && c.holder_records.contains_key(a))
                .map(|(a, _)| a.clone())
                .collect();
            c.released_with_proof.extend(kept);
            c.release_batches.push(agents.len());
            let member = c.members.contains(&me);
            c.member_at_release.push(member);
            agents
                .iter()
                .map(|(a, record)| {
                    if c.failing_releases > 0 {
                        c.failing_releases -= 1;
                        c.failed_releases += 1;
                        return Err(PoolError::Coordinator("scripted: release lost".into()));
                    }
                    if c.releases_not_mine || c.owners.get(a) != Some(&me) {
                        return Ok(false);
                    }
                    c.owners.remove(a);
                    if record.is_some() && c.holder_records.get(a) == record.as_ref() {
                        c.holder_records.remove(a);
                    }
                    Ok(true)
                })
                .collect()
        })
    }

    async fn leave(&mut self) -> Result<(), PoolError> {
        Ok(())
    }

    async fn forget_holders(&mut self, _agents: &[String]) -> Result<(), PoolError> {
        // The script's view lists no holder keys, so none is ever stale.
        Ok(())
    }

    async fn changed(&mut self) {
        std::future::pending().await
    }
}

struct InProcess {
    sim: ccgw_bridge::sim::Simulator,
    pool: Pool,
    script: Script,
    sessions: Sessions,
}

impl InProcess {
    /// The agents the pool instance owns now.
    fn owned(&self) -> BTreeSet<String> {
        self.pool.ownership().status().owned.into_iter().collect()
    }
}

async fn in_process(agents: &[String]) -> InProcess {
    in_process_with(simulator().await, agents, SessionSettings::default()).await
}

async fn in_process_with(
    sim: ccgw_bridge::sim::Simulator,
    agents: &[String],
    settings: SessionSettings,
) -> InProcess {
    in_process_scripted(sim, agents, settings, Script::default()).await
}

/// A gateway client of the simulator (real TLS).
fn gateway_client(sim: &ccgw_bridge::sim::Simulator, metrics: &Arc<Metrics>) -> GatewayClient {
    GatewayClient::new(
        GatewayConfig {
            base_url: sim.url(),
            ca_pem: Some(sim.ca_pem().as_bytes().to_vec()),
            client_identity_pem: None,
            insecure_skip_verify: false,
            request_timeout: Duration::from_secs(10),
            poll_timeout: Duration::from_secs(15),
            connect_timeout: Duration::from_secs(5),
            max_body_bytes: 1 << 20,
        },
        metrics.clone(),
    )
    .unwrap()
}

async fn in_process_scripted(
    sim: ccgw_bridge::sim::Simulator,
    agents: &[String],
    settings: SessionSettings,
    script: Script,
) -> InProcess {
    ccgw_bridge::crypto::install_crypto_provider();
    let metrics = Arc::new(Metrics::default());
    let gateway = gateway_client(&sim, &metrics);
    let sessions = Sessions::new(gateway, settings, metrics.clone());
    let pinned = agents
        .iter()
        .enumerate()
        .map(|(i, a)| {
            (
                a.clone(),
                SignInParams::new(Password::new("secret".into()), format!("8{i:04}")),
            )
        })
        .collect();
    let config = PoolConfig {
        endpoints: vec!["scripted".into()],
        prefix: "/".into(),
        instance: "a".into(),
        lease_ttl: TTL,
        move_wait: Duration::ZERO,
        tls: None,
        auth: None,
        keyring: Some(Arc::new(Keyring::from_keys(&[POOL_KEY]))),
    };
    let backend = Scripted {
        me: "a".into(),
        script: script.clone(),
    };
    let pool = Pool::start(backend, &config, sessions.clone(), pinned, &metrics);
    InProcess {
        sim,
        pool,
        script,
        sessions,
    }
}

/// The scripted pool's key (every test instance uses it).
const POOL_KEY: [u8; 32] = [0x5a; 32];

/// A holder record as a crashed instance would have left it: `guid` sealed for `agent`.
fn hand_off_record(agent: &str, guid: &str) -> Vec<u8> {
    Keyring::from_keys(&[POOL_KEY]).seal(
        agent,
        &HandOff {
            instance: "crashed".into(),
            guid: ccgw_bridge::secret::Guid::new(guid),
            cookies: None,
            written_at_ms: 0,
        },
    )
}

/// A pool instance taking `agent` over from a crashed bridge whose session is still at the
/// gateway and whose holder record names it; `meanwhile` acts on the simulator before the pool
/// starts. Returns the instance and the crashed session's Guid.
async fn taking_over(
    agent: &str,
    settings: SessionSettings,
    meanwhile: impl FnOnce(&ccgw_bridge::sim::Simulator),
) -> (InProcess, String) {
    let sim = simulator().await;
    ccgw_bridge::crypto::install_crypto_provider();
    let guid = crashed_bridge_session(&sim, agent).await;
    meanwhile(&sim);
    let script = script_with_record(agent, &guid);
    let t = in_process_scripted(sim, &[agent.to_string()], settings, script).await;
    (t, guid)
}

/// A coordinator holding `agent`'s holder record as a crashed holder of session `guid` left it.
fn script_with_record(agent: &str, guid: &str) -> Script {
    let script = Script::default();
    script.with(|c| {
        c.holder_records
            .insert(agent.into(), hand_off_record(agent, guid))
    });
    script
}

/// A member that should hold `agent` beside "a" (the script's other members never act).
fn other_member_for(agent: &str) -> String {
    (0..)
        .map(|i| format!("peer-{i}"))
        .find(|m| choose(&["a".to_string(), m.clone()], agent) == Some(m.as_str()))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_release_is_adopted_again_not_forgotten() {
    let agents = vec!["2101".to_string(), "2102".to_string()];
    let t = in_process(&agents).await;
    let all = set(&agents);
    wait_until(SETTLE, "a owns and signed in every agent", || async {
        t.owned() == all && agents.iter().all(|x| t.sim.signed_in(x))
    })
    .await;
    // A peer appears that should hold 2101; the releases after its sign-out are lost.
    let peer = other_member_for("2101");
    t.script.with(|c| {
        c.failing_releases = u32::MAX;
        c.members.push(peer.clone());
    });
    wait_until(SETTLE, "the release was tried and failed", || async {
        t.script.with(|c| c.failed_releases >= 1)
    })
    .await;
    assert!(!t.sim.signed_in("2101"), "signed out for the hand-over");
    // The peer leaves before taking it: etcd still names "a", so "a" adopts and signs it in.
    t.script.with(|c| {
        c.members.retain(|m| *m != peer);
        c.failing_releases = 0;
    });
    wait_until(SETTLE, "a owns 2101 again and signed it in", || async {
        t.owned() == all && t.sim.signed_in("2101") && t.sessions.has_running_session("2101")
    })
    .await;
    assert_eq!(t.pool.ownership().status().hand_overs, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_that_did_not_apply_is_not_counted_as_a_hand_over() {
    let agents = vec!["2201".to_string()];
    let t = in_process(&agents).await;
    wait_until(SETTLE, "a signed the agent in", || async {
        t.sessions.has_running_session("2201")
    })
    .await;
    let peer = other_member_for("2201");
    t.script.with(|c| {
        c.releases_not_mine = true;
        c.members.push(peer);
    });
    wait_until(
        SETTLE,
        "a signed the agent out for the hand-over",
        || async { !t.sim.signed_in("2201") },
    )
    .await;
    wait_until(SETTLE, "the hand-over finished", || async {
        t.pool.ownership().status().owned.is_empty() && !t.sessions.has_running_session("2201")
    })
    .await;
    assert_eq!(
        t.pool.ownership().status().hand_overs,
        0,
        "no-op release not counted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_sign_ins_share_the_sign_in_concurrency_bound() {
    const LIMIT: usize = 2;
    let sim = simulator().await;
    sim.add_fault(Fault {
        matcher: FaultMatch::Interface(Interface::Login),
        kind: FaultKind::Latency(Duration::from_millis(50)),
        count: None,
    });
    let agents: Vec<String> = (2301..2311).map(|a| a.to_string()).collect();
    let settings = SessionSettings {
        sign_in_concurrency: LIMIT,
        ..SessionSettings::default()
    };
    let t = in_process_with(sim, &agents, settings).await;
    wait_until(SETTLE, "every agent taken and signed in", || async {
        agents.iter().all(|a| t.sessions.has_running_session(a))
    })
    .await;
    let stats = t.sim.stats();
    assert_eq!(stats.sign_ins, agents.len() as u64);
    assert!(
        (1..=LIMIT as u64).contains(&stats.max_concurrent_sign_ins),
        "{} sign-ins at once",
        stats.max_concurrent_sign_ins
    );
}

/// A gateway session of a bridge that crashed: signed in over the gateway interface by a
/// session layer that then stopped without signing out. Returns its Guid.
async fn crashed_bridge_session(sim: &ccgw_bridge::sim::Simulator, agent: &str) -> String {
    let metrics = Arc::new(Metrics::default());
    let gateway = gateway_client(sim, &metrics);
    let crashed = Sessions::new(gateway, SessionSettings::default(), metrics);
    let params = SignInParams::new(Password::new("secret".into()), "80000".into());
    crashed
        .sign_in(agent, params, None)
        .await
        .expect("signed in");
    crashed.stop_polling();
    sim.current_guid(agent).expect("held by the crashed bridge")
}

/// Issue 22 path 2, pool side: a take-over finds the crashed holder's session still at the
/// gateway; it logs that session out with the Guid handed off in the holder record, then signs
/// in plainly. Nothing is forced, and no other client's session is touched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_take_over_logs_the_crashed_holders_session_out_with_its_guid_and_never_forces() {
    let agent = "2401";
    let before = std::cell::Cell::new(0);
    let (t, guid) = taking_over(agent, SessionSettings::default(), |sim| {
        before.set(sim.requests().len())
    })
    .await;
    let before = before.get();
    wait_until(SETTLE, "the agent is signed in here", || async {
        t.sessions.has_running_session(agent)
    })
    .await;
    let requests = t.sim.requests()[before..].to_vec();
    let kinds: Vec<&str> = requests
        .iter()
        .filter_map(|r| match sign_in_kind(r) {
            Some((_, true)) => Some("forcelogin"),
            Some((_, false)) => Some("login"),
            None if r.path.ends_with("/logout") => Some("logout"),
            None => None,
        })
        .collect();
    assert_eq!(
        kinds,
        ["logout", "login"],
        "the handed-off Guid's logout, then a plain login: {requests:?}"
    );
    assert_ne!(t.sim.current_guid(agent), Some(guid), "a new session");
    assert_eq!(t.sim.stats().other_clients_kicked, 0);
    assert_eq!(
        t.sim.session_ends(),
        [SessionEnd {
            agent_id: agent.into(),
            created_by: Client::Bridge,
            cause: EndCause::OwnGuidLogout,
        }],
        "the crashed bridge's session, ended with its own Guid"
    );
    assert_eq!(t.pool.ownership().status().take_overs, 1);
    // The new owner hands its own session on: the record is rewritten with its Guid.
    let current = t.sim.current_guid(agent).unwrap();
    wait_until(
        SETTLE,
        "the holder record names the new session",
        || async {
            t.script
                .with(|c| c.holder_records.get(agent).cloned())
                .and_then(|r| Keyring::from_keys(&[POOL_KEY]).open(agent, &r))
                .is_some_and(|h| h.guid.expose() == current && h.instance == "a")
        },
    )
    .await;
}

/// Issue 22 path 2 and rule 4: a person holds the agent, and the holder record's Guid is
/// stale. The take-over's logout with it is refused (it can end nobody's session), the plain
/// login meets `100-002`, and the agent waits for the gateway, never forced, counted as
/// waiting, until the person signs out; then it is signed in here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_take_over_with_a_stale_record_waits_while_a_person_holds_the_agent() {
    let agent = "2402";
    // The gateway ended the crashed holder's session and a person signed in.
    let person = std::cell::RefCell::new(None);
    let (t, _) = taking_over(agent, SessionSettings::default(), |sim| {
        sim.supervisor_replaces(agent);
        *person.borrow_mut() = sim.current_guid(agent);
    })
    .await;
    let person = person.into_inner().unwrap();
    wait_until(SETTLE, "the agent waits for the gateway", || async {
        t.pool.ownership().status().waiting_for_gateway == [agent.to_string()]
    })
    .await;
    assert_eq!(
        t.sim.current_guid(agent),
        Some(person),
        "the person is not kicked"
    );
    assert!(t.sim.held_by_other_client(agent));
    assert_eq!(t.sim.stats().other_clients_kicked, 0);
    assert_eq!(sign_ins(&t.sim.requests()).1, 0, "no forcelogin");
    // The person signs out: keep-signed-in's next attempt takes the free agent.
    assert!(t.sim.person_signs_out(agent));
    wait_until(SETTLE, "signed in here once the person left", || async {
        t.sessions.has_running_session(agent)
            && t.pool.ownership().status().waiting_for_gateway.is_empty()
    })
    .await;
    assert_eq!(sign_ins(&t.sim.requests()).1, 0, "no forcelogin");
    assert_eq!(t.sim.stats().other_clients_kicked, 0);
}

/// Issue 22 review finding (the take-over proof used only on the first attempt, 7c74dba
/// `pool/reconcile.rs:534-561`): the first `logout` with the handed-off Guid gets no usable
/// answer (a 503), so the plain `login` meets `100-002`. The handed-off session is kept as the
/// agent's orphan: keep-signed-in's next attempt logs it out with that Guid again and signs in,
/// rather than waiting for the gateway's idle sign-out. Never forced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_take_over_whose_first_logout_is_lost_uses_the_handed_off_guid_again() {
    let agent = "2403";
    let settings = SessionSettings {
        resign_backoff_max: Duration::from_millis(500),
        ..SessionSettings::default()
    };
    let (t, _) = taking_over(agent, settings, |sim| {
        sim.add_fault(Fault {
            matcher: FaultMatch::Interface(Interface::Logout),
            kind: FaultKind::HttpStatus(503),
            count: Some(1),
        })
    })
    .await;
    wait_until(SETTLE, "the agent is signed in here", || async {
        t.sessions.has_running_session(agent)
    })
    .await;
    let logouts = t
        .sim
        .requests()
        .iter()
        .filter(|r| r.path.ends_with(&format!("/onlineagent/{agent}/logout")))
        .count();
    assert_eq!(logouts, 2, "the handed-off Guid's logout, sent again");
    assert_eq!(sign_ins(&t.sim.requests()).1, 0, "no forcelogin");
    assert!(t
        .sim
        .session_ends()
        .iter()
        .any(|e| e.agent_id == agent && e.cause == EndCause::OwnGuidLogout));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_steps_out_of_the_members_first_and_releases_each_agent_once() {
    let agents: Vec<String> = (2501..2505).map(|a| a.to_string()).collect();
    let t = in_process(&agents).await;
    wait_until(SETTLE, "every agent signed in", || async {
        agents.iter().all(|a| t.sessions.has_running_session(a))
    })
    .await;
    t.pool.freeze();
    wait_until(SETTLE, "the draining instance left the members", || async {
        t.script.with(|c| c.members.is_empty())
    })
    .await;
    assert_eq!(
        t.script.with(|c| c.owners.len()),
        agents.len(),
        "stepped out before releasing anything"
    );
    let InProcess {
        pool,
        sessions,
        script,
        sim,
        ..
    } = t;
    pool.leave(&sessions, true, None).await;
    script.with(|c| {
        assert!(c.owners.is_empty(), "every agent released: {:?}", c.owners);
        // Released as their sign-outs end (issue 23 point 5): in batches of whatever ended
        // together, every agent once.
        assert_eq!(
            c.release_batches.iter().sum::<usize>(),
            agents.len(),
            "each agent released once: {:?}",
            c.release_batches
        );
        assert!(
            c.member_at_release.iter().all(|m| !m),
            "stepped out before every release"
        );
    });
    for agent in &agents {
        assert!(
            !sim.signed_in(agent),
            "{agent} signed out before its release"
        );
    }
}

/// `agents` signed in by "a" alone, then a peer joins the members (its probes passing when
/// `serves`) and "a" hands it its share; the agents "a" keeps.
async fn a_and_a_peer(t: &InProcess, agents: &[String], serves: bool) -> BTreeSet<String> {
    wait_until(SETTLE, "every agent signed in", || async {
        agents.iter().all(|a| t.sessions.has_running_session(a))
    })
    .await;
    let peer = "peer".to_string();
    let members = vec!["a".to_string(), peer.clone()];
    let mine: BTreeSet<String> = agents
        .iter()
        .filter(|x| choose(&members, x) == Some("a"))
        .cloned()
        .collect();
    assert!(!mine.is_empty() && mine.len() < agents.len(), "{mine:?}");
    t.script.with(|c| {
        c.members.push(peer);
        c.peers_serve = serves;
    });
    wait_until(SETTLE, "a hands the peer its share", || async {
        t.owned() == mine
            && t.script
                .with(|c| c.owners.keys().cloned().collect::<BTreeSet<_>>() == mine)
    })
    .await;
    mine
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_the_gateway_stops_answering_steps_out_and_gives_its_agents_up_with_their_proof(
) {
    let agents: Vec<String> = (2601..2607).map(|a| a.to_string()).collect();
    let t = in_process(&agents).await;
    // A peer that serves joins; "a" keeps its rendezvous share.
    let mine = a_and_a_peer(&t, &agents, true).await;
    // The gateway stops answering "a" (its TLS trust rotated wrongly, a network policy…).
    t.sim.shutdown();
    wait_until(SETTLE, "a stepped out and gave its agents up", || async {
        t.script
            .with(|c| !c.members.contains(&"a".to_string()) && c.owners.is_empty())
    })
    .await;
    let with_proof: BTreeSet<String> = t
        .script
        .with(|c| c.released_with_proof.iter().cloned().collect());
    // Every agent given up carries its holder record (the Guid its next owner logs out with).
    // Seen once (CI run of issue 22's stop): an agent handed over gracefully earlier also
    // released leaving a record. Harmless (its Guid was signed out, so a logout with it is
    // refused), cause not found yet; see that stop's closing note.
    assert!(
        with_proof.is_superset(&mine),
        "given up with their holder records: {with_proof:?} ⊉ {mine:?}"
    );
    assert!(t.owned().is_empty());
    assert!(mine.iter().all(|x| !t.sessions.has_running_session(x)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_whole_gateway_outage_an_instance_without_a_serving_peer_stays_in_and_nothing_moves() {
    let agents: Vec<String> = (2611..2617).map(|a| a.to_string()).collect();
    let t = in_process(&agents).await;
    // A peer is a member, but its probes fail too (it publishes none that pass).
    let mine = a_and_a_peer(&t, &agents, false).await;
    let owners = t.script.with(|c| c.owners.clone());
    t.sim.shutdown();
    // Twice the failed probes after which an instance with evidence steps out.
    wait_until(SETTLE, "a published six failed probes", || async {
        t.script.with(|c| c.failed_probes >= 6)
    })
    .await;
    t.script.with(|c| {
        assert!(c.members.contains(&"a".to_string()), "a stepped out");
        assert_eq!(c.owners, owners, "agents moved in a whole-gateway outage");
    });
    assert_eq!(t.owned(), mine);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_stepped_out_for_failed_probes_steps_in_only_after_three_passes() {
    let agents: Vec<String> = (2621..2627).map(|a| a.to_string()).collect();
    let t = in_process(&agents).await;
    a_and_a_peer(&t, &agents, true).await;
    // The gateway drops "a"'s next three probes (a plain GET of the base URL), then answers.
    t.sim.add_fault(Fault {
        matcher: FaultMatch::Interface(Interface::Other),
        kind: FaultKind::DropConnection,
        count: Some(3),
    });
    wait_until(SETTLE, "a stepped out and came back", || async {
        t.script.with(|c| {
            let out = c.history.iter().position(|s| *s == Step::Out);
            out.is_some_and(|o| c.history[o..].contains(&Step::In))
        })
    })
    .await;
    let history = t.script.with(|c| c.history.clone());
    let out = history.iter().rposition(|s| *s == Step::Out).unwrap();
    let back = out + history[out..].iter().position(|s| *s == Step::In).unwrap();
    let passes = history[out..back]
        .iter()
        .filter(|s| **s == Step::Probe(true))
        .count();
    assert!(
        passes >= 3,
        "stepped in after {passes} passed probes: {history:?}"
    );
    assert_eq!(
        history[back - 3..back],
        [Step::Probe(true); 3],
        "the three probes before stepping in passed: {history:?}"
    );
}
