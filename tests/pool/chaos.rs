//! The pool under a seeded random schedule of faults, with people in it (issues 16 and 22):
//! three bridges, one etcd, one simulator, a dozen agents. One fault at a time — SIGKILL and
//! restart, SIGSTOP past the TTL, SIGTERM and restart, etcd killed and restarted on its data, a
//! slow gateway on logins and logouts, a replica with a bad CA joining and leaving, callers
//! signing in on random replicas, a person signing a free agent in, a supervisor replacing a
//! bridge's session with a person's, sign-in answers lost or late while a person holds the
//! agent — with the invariants checked from the simulator's own view at every sample:
//!
//! - no session of another client (a person) is ended by a bridge, by any path;
//! - no `forcelogin` at all (no caller of this schedule asks for one);
//! - every agent a bridge reports signed in is held by the instance etcd names as its owner,
//!   except within a bounded hand-over window;
//! - every gap (an agent signed out at the gateway) ends within a bound of the fault that began
//!   it (a later fault does not stretch an earlier gap's bound);
//! - a caller's SignIn on an instance etcd names as a non-owner never answers OK.
//!
//! The gap sampler runs on its own task, every 100 ms, through drains, restarts and caller
//! calls: the schedule never blocks the runtime that hosts the simulator (process starts run in
//! `block_in_place`, `etcdctl` in `spawn_blocking`).
//!
//! The suite runs seeds 7, 8 and 9 (fixed schedules, so a landing is never decided by the
//! draw), and seeds 7 and 9 again in push mode with watchers (issue 24); `CCGW_CHAOS_SEED=<n>` replays or explores another (`random` draws one; each seed is
//! printed first), and `CCGW_CHAOS_SECS=<n>` sets how long faults are injected per seed
//! (default 20 s; soak runs use more).

use super::watchers::{Addresses, Watching};
use super::*;
use ccgw_bridge::sim::{Fault, FaultKind, FaultMatch, Interface};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

const BRIDGES: usize = 3;
/// Longest an agent may stay signed out at the gateway after the fault in force when its gap
/// began has ended (a take-over waits for the TTL).
const GAP_BOUND: Duration = Duration::from_secs(8); // TTL + 5 s
/// The simulator's idle sign-out here: a bridge killed between signing an agent in and handing
/// its Guid on (a window of one etcd write) leaves a session nobody can log out, which only the
/// gateway's idle sign-out ends; the convergence bound allows for it.
const GATEWAY_IDLE: Duration = Duration::from_secs(5);
/// Longest a bridge may report an agent signed in that etcd names another owner of (or none):
/// a lease expiring, a hand-over's sign-out, a resumed process learning its lease is gone.
const OWNER_BOUND: Duration = Duration::from_secs(10);
const PREFIX: &str = "/ccgw-test/";

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok()?.parse().ok()
}

/// What the sampler knows: each agent's current gap (signed out at the gateway) with its bound,
/// the worst gap seen, the fault in force, and the first broken invariant.
struct Monitor {
    gap_since: HashMap<String, (Instant, Instant)>,
    worst: Duration,
    gaps: Vec<Duration>,
    fault_until: Instant,
    log: Vec<String>,
    started: Instant,
    requests_seen: usize,
    ends_seen: usize,
    failure: Option<String>,
}

impl Monitor {
    /// A fault in force until `until`: it bounds the gaps that begin meanwhile (only those).
    fn fault(&mut self, until: Instant) {
        self.fault_until = self.fault_until.max(until);
    }

    fn note(&mut self, what: String) {
        let at = self.started.elapsed();
        eprintln!("chaos {:>6.2}s {what}", at.as_secs_f64());
        self.log.push(format!("{:>6.2}s {what}", at.as_secs_f64()));
    }

    fn fail(&mut self, what: String) {
        if self.failure.is_none() {
            self.failure = Some(format!("{what}\n{}", self.log.join("\n")));
        }
    }

    /// Samples the gateway's view.
    fn sample(&mut self, sim: &ccgw_bridge::sim::Simulator, agents: &[String]) {
        let now = Instant::now();
        if self.fault_until < now {
            self.fault_until = now;
        }
        for agent in agents {
            if sim.signed_in(agent) {
                if let Some((since, _)) = self.gap_since.remove(agent) {
                    self.worst = self.worst.max(now - since);
                    self.gaps.push(now - since);
                }
            } else {
                let (since, fault_end) = *self
                    .gap_since
                    .entry(agent.clone())
                    .or_insert((now, self.fault_until));
                if now >= fault_end + GAP_BOUND {
                    self.fail(format!(
                        "agent {agent} signed out at the gateway for {:?} (since {:?} into the run), more than {GAP_BOUND:?} after the fault that began its gap",
                        now - since,
                        since - self.started,
                    ));
                }
            }
        }
        let kicked = sim.stats().other_clients_kicked;
        if kicked != 0 {
            self.fail(format!(
                "{kicked} sessions of other clients ended by a bridge"
            ));
        }
        let ends = sim.session_ends();
        for end in &ends[self.ends_seen.min(ends.len())..] {
            if end.kicked_someone() {
                self.fail(format!("a bridge ended another client's session: {end:?}"));
            }
        }
        self.ends_seen = ends.len();
        let requests = sim.requests();
        for r in &requests[self.requests_seen.min(requests.len())..] {
            if let Some((agent, true)) = sign_in_kind(r) {
                self.fail(format!("a bridge sent forcelogin for {agent}"));
            }
        }
        self.requests_seen = requests.len();
    }
}

type Shared = Arc<Mutex<Monitor>>;

fn lock(m: &Shared) -> std::sync::MutexGuard<'_, Monitor> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Agents a bridge reports signed in that etcd does not name it the owner of, since when.
struct OwnerCheck {
    wrong_since: HashMap<(String, String), Instant>,
}

impl OwnerCheck {
    async fn check(&mut self, m: &Shared, bridges: &[Bridge], names: &[String], etcd_url: &str) {
        let url = etcd_url.to_owned();
        let owners: BTreeMap<String, String> =
            tokio::task::spawn_blocking(move || owners_at(&url, PREFIX))
                .await
                .unwrap();
        if owners.is_empty() {
            // etcd down (or nothing owned yet): nothing to compare with.
            self.wrong_since.clear();
            return;
        }
        let now = Instant::now();
        let mut wrong = Vec::new();
        for (b, name) in bridges.iter().zip(names) {
            if !b.running() {
                continue;
            }
            for agent in b.held().await {
                if owners.get(&agent) != Some(name) {
                    wrong.push((agent, name.clone()));
                }
            }
        }
        self.wrong_since.retain(|k, _| wrong.contains(k));
        for key in wrong {
            let since = *self.wrong_since.entry(key.clone()).or_insert(now);
            if now - since > OWNER_BOUND {
                lock(m).fail(format!(
                    "{} reports {} signed in for {:?} while etcd names {:?} its owner",
                    key.1,
                    key.0,
                    now - since,
                    owners.get(&key.0)
                ));
            }
        }
    }
}

/// Waits `d` (the sampler runs meanwhile), checking ownership about once a second.
async fn pause(
    m: &Shared,
    owners: &mut OwnerCheck,
    bridges: &[Bridge],
    names: &[String],
    etcd_url: &str,
    d: Duration,
) {
    let until = Instant::now() + d;
    loop {
        owners.check(m, bridges, names, etcd_url).await;
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        tokio::time::sleep(left.min(Duration::from_secs(1))).await;
    }
}

/// The seeds to run: `defaults`, or `CCGW_CHAOS_SEED`'s (`random` draws one).
fn seeds(defaults: &[u64]) -> Vec<u64> {
    match std::env::var("CCGW_CHAOS_SEED").as_deref() {
        Ok("random") => vec![fastrand::u64(..1_000_000)],
        _ => env_u64("CCGW_CHAOS_SEED").map_or(defaults.to_vec(), |s| vec![s]),
    }
}

/// How the bridges of a run get their events (`--events`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Events {
    Poll,
    Push,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seeded_schedule_of_faults_with_people_keeps_every_pool_promise() {
    for seed in seeds(&[7, 8, 9]) {
        run_seed(seed, Events::Poll).await;
    }
}

/// The same schedule in push mode (issue 24), with watchers: every promise above, and what the
/// watchers received matches the simulator's record of what bridges accepted.
///
/// Each agent has one watcher, a real tonic client that follows the agent as an application
/// would ([`super::watchers`]): it watches the agent's session from its start on whichever
/// instance holds it, resumes within the session after a broken stream, and moves to the
/// instance an `AGENT_MOVED` / `AGENT_NOT_OWNED` names (round robin when none is named, e.g.
/// after a SIGKILL). Injected events (`AgentState_Chaos`, each with a unique number) go to
/// whatever session the gateway holds; the simulator records each one a bridge accepted, with
/// its gateway session. The invariant, per agent and per gateway session S, with R(S) the
/// injected events the simulator recorded as accepted for S, in order:
///
/// - nothing invented or mixed: every event a watcher received is in R(S) of exactly one S,
///   and all events of one bridge session belong to one S;
/// - nothing duplicated, nothing reordered, nothing lost in the middle: what the watchers
///   received of S, in the order received (over every stream and resume on S), is a **prefix**
///   of R(S); bridge sequences are gap-free from 1 on every stream;
/// - nothing lost where the bridge promises it: the agent's last session (the one running
///   after convergence, which receives a final burst) is received **whole**.
///
/// What a prefix leaves out is what the bridge does not promise (docs/events-poll-or-push.md,
/// docs/errors.md `SESSION_CHANGED`): events of a session after its end. A watch can start or
/// resume only on a running session, so a session that ended before its watcher reached it
/// (the watcher was still on a frozen or killed instance) is unobserved, and events a bridge
/// accepted and then could not hand on are gone with it — a SIGKILLed process's, a batch
/// cut by the session ending under it, events after `AgentOther_ShutdownService`. The figures
/// line counts such sessions. The outcome does not depend on timing: how many events and
/// sessions there are does, the invariant does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seeded_schedule_of_faults_in_push_mode_loses_and_duplicates_no_event() {
    // 7: SIGKILL, SIGTERM, etcd, slow gateway, bad CA, a supervisor; 9: SIGSTOP past the TTL
    // (a watcher's stream stalls while its agent moves), SIGTERM twice, etcd, slow gateway.
    for seed in seeds(&[7, 9]) {
        run_seed(seed, Events::Push).await;
    }
}

async fn run_seed(seed: u64, mode: Events) {
    let secs = env_u64("CCGW_CHAOS_SECS").unwrap_or(20);
    eprintln!(
        "chaos: seed {seed} ({secs} s of faults, {mode:?} mode); replay with CCGW_CHAOS_SEED={seed}"
    );
    let mut rng = fastrand::Rng::with_seed(seed);
    let names: Vec<String> = (0..BRIDGES).map(|i| format!("chaos-{i}")).collect();
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let agents = agents_for(&name_refs, 4);
    let sim = simulator_idling_after(GATEWAY_IDLE).await;
    let mut p = pool_with(&agents, 1, sim).await;
    let setup = match mode {
        Events::Poll => p.setup.clone(),
        Events::Push => p.setup.in_push_mode(&p.sim),
    };
    let etcd_url = p.etcd[0].client_url.clone();
    let workers = ["--worker-threads", "2"];
    let mut bridges: Vec<Bridge> = tokio::task::block_in_place(|| {
        names
            .iter()
            .map(|n| Bridge::start_with(&setup, n, &workers))
            .collect()
    });
    let other = simulator().await;
    let broken = PoolSetup {
        ca: other.ca_path().to_path_buf(),
        ..setup.clone()
    };
    let addrs = Addresses::default();
    addrs.update(&bridges);
    let watching = (mode == Events::Push).then(|| Watching::start(&agents, &addrs, &p.sim));
    wait_until(SETTLE, "every agent signed in at first", || async {
        agents.iter().all(|a| p.sim.signed_in(a))
    })
    .await;
    let m: Shared = Arc::new(Mutex::new(Monitor {
        gap_since: HashMap::new(),
        worst: Duration::ZERO,
        gaps: Vec::new(),
        fault_until: Instant::now(),
        log: Vec::new(),
        started: Instant::now(),
        requests_seen: 0,
        ends_seen: 0,
        failure: None,
    }));
    let sampling = tokio_util::sync::CancellationToken::new();
    let sampler = {
        let (m, sim, agents, stop) = (m.clone(), p.sim.clone(), agents.clone(), sampling.clone());
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                lock(&m).sample(&sim, &agents);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let mut owners = OwnerCheck {
        wrong_since: HashMap::new(),
    };
    // People holding agents now, and until when.
    let mut people: Vec<(String, Instant, Instant)> = Vec::new();
    let end = Instant::now() + Duration::from_secs(secs);
    let mut caller_sign_ins = (0, 0);
    // Faults that end a holder's sessions (SIGKILL, SIGSTOP past the TTL, SIGTERM): agents
    // move to new sessions on other instances.
    let mut moving_faults = 0;
    let note = |what: String| lock(&m).note(what);
    let fault = |until: Instant| lock(&m).fault(until);
    while Instant::now() < end {
        if let Some(failure) = lock(&m).failure.clone() {
            panic!("seed {seed}: {failure}");
        }
        // People whose time is up sign out; the agent is free for its owner again (its next
        // keep-signed-in attempt comes within its back-off: the hold time plus a little).
        let now = Instant::now();
        let (leaving, staying) = people.into_iter().partition(|(_, _, until)| *until <= now);
        people = staying;
        for (agent, since, _) in leaving {
            note(format!("the person holding {agent} signs out"));
            let held_for = now.saturating_duration_since(since);
            fault(now + held_for + Duration::from_secs(3));
            p.sim.person_signs_out(&agent);
        }
        let fault_len = Duration::from_millis(rng.u64(1000..3000));
        let i = rng.usize(..BRIDGES);
        match rng.u8(..10) {
            0 => {
                note(format!("SIGKILL {}", names[i]));
                moving_faults += 1;
                fault(Instant::now() + fault_len);
                bridges[i].sigkill();
                pause(&m, &mut owners, &bridges, &names, &etcd_url, fault_len).await;
                note(format!("restart {}", names[i]));
                tokio::task::block_in_place(|| bridges[i].restart());
                addrs.update(&bridges);
            }
            1 => {
                let frozen = TTL + fault_len;
                note(format!("SIGSTOP {} for {frozen:?}", names[i]));
                moving_faults += 1;
                fault(Instant::now() + frozen);
                bridges[i].sigstop();
                tokio::time::sleep(frozen).await;
                note(format!("SIGCONT {}", names[i]));
                bridges[i].sigcont();
            }
            2 => {
                note(format!("SIGTERM {}", names[i]));
                moving_faults += 1;
                fault(Instant::now() + fault_len + Duration::from_secs(5));
                bridges[i].sigterm_and_wait().await;
                pause(&m, &mut owners, &bridges, &names, &etcd_url, fault_len).await;
                note(format!("restart {}", names[i]));
                tokio::task::block_in_place(|| bridges[i].restart());
                addrs.update(&bridges);
            }
            3 => {
                note("etcd killed".into());
                fault(Instant::now() + fault_len);
                tokio::task::block_in_place(|| p.etcd[0].kill());
                tokio::time::sleep(fault_len).await;
                note("etcd restarted on its data".into());
                tokio::task::block_in_place(|| p.etcd[0].start());
            }
            4 => {
                note("gateway slow on logins and logouts (1.5 s, 6 each)".into());
                fault(Instant::now() + fault_len + Duration::from_secs(3));
                for iface in [Interface::Login, Interface::Logout] {
                    p.sim.add_fault(Fault {
                        matcher: FaultMatch::Interface(iface),
                        kind: FaultKind::Latency(Duration::from_millis(1500)),
                        count: Some(6),
                    });
                }
            }
            5 => {
                note("a replica with a bad CA joins".into());
                fault(Instant::now() + fault_len);
                let mut bad = tokio::task::block_in_place(|| Bridge::start(&broken, "chaos-bad"));
                pause(&m, &mut owners, &bridges, &names, &etcd_url, fault_len).await;
                note("the bad replica leaves".into());
                bad.sigterm_and_wait().await;
            }
            6 => {
                // A supervisor replaces a bridge's session with a person's, who holds the
                // agent for a while; meanwhile the owner's plain logins meet `100-002`.
                let agent = &agents[rng.usize(..agents.len())];
                if p.sim.signed_in(agent) && !p.sim.held_by_other_client(agent) {
                    let hold = Duration::from_millis(rng.u64(500..3000));
                    note(format!(
                        "a supervisor gives {agent} to a person for {hold:?}"
                    ));
                    p.sim.supervisor_replaces(agent);
                    people.push((agent.clone(), Instant::now(), Instant::now() + hold));
                }
            }
            7 => {
                // A person signs a free agent in (it is free only in a gap).
                let agent = &agents[rng.usize(..agents.len())];
                if p.sim.sign_in_elsewhere(agent, false).is_ok() {
                    let hold = Duration::from_millis(rng.u64(500..2000));
                    note(format!("a person signs the free {agent} in for {hold:?}"));
                    people.push((agent.clone(), Instant::now(), Instant::now() + hold));
                }
            }
            8 => {
                // Sign-in answers lost or late while a person holds an agent: whatever the
                // bridge makes of them, it must not kick the person.
                if let Some((agent, _, _)) = people.first() {
                    note(format!(
                        "sign-in answers lost and late while a person holds {agent}"
                    ));
                    fault(Instant::now() + fault_len + Duration::from_secs(3));
                    p.sim.add_fault(Fault {
                        matcher: FaultMatch::Interface(Interface::Login),
                        kind: FaultKind::DropAfterEffect,
                        count: Some(2),
                    });
                    p.sim.add_fault(Fault {
                        matcher: FaultMatch::Interface(Interface::Login),
                        kind: FaultKind::Latency(Duration::from_millis(1500)),
                        count: Some(2),
                    });
                }
            }
            _ => {
                let agent = &agents[rng.usize(..agents.len())];
                if bridges[i].running() {
                    note(format!("caller signs {agent} in on {}", names[i]));
                    let url = etcd_url.clone();
                    let before = tokio::task::spawn_blocking(move || owners_at(&url, PREFIX))
                        .await
                        .unwrap();
                    let mut client = bridges[i].client().await;
                    let call = client.sign_in(SignInRequest {
                        agent_id: agent.clone(),
                        password: "secret".into(),
                        phone_number: "80000".into(),
                        ..Default::default()
                    });
                    match tokio::time::timeout(Duration::from_secs(5), call).await {
                        Ok(Ok(_)) => {
                            caller_sign_ins.0 += 1;
                            let url = etcd_url.clone();
                            let after =
                                tokio::task::spawn_blocking(move || owners_at(&url, PREFIX))
                                    .await
                                    .unwrap();
                            let elsewhere = |o: &BTreeMap<String, String>| {
                                o.get(agent).is_some_and(|owner| *owner != names[i])
                            };
                            assert!(
                                !(elsewhere(&before) && elsewhere(&after)),
                                "seed {seed}: SignIn of {agent} answered OK on {}, a non-owner (etcd: {:?})",
                                names[i],
                                after.get(agent)
                            );
                        }
                        Ok(Err(s)) => {
                            assert!(
                                matches!(
                                    s.code(),
                                    tonic::Code::FailedPrecondition
                                        | tonic::Code::Unavailable
                                        | tonic::Code::AlreadyExists
                                        | tonic::Code::DeadlineExceeded
                                        | tonic::Code::Unknown
                                ),
                                "seed {seed}: caller SignIn: {s:?}"
                            );
                            caller_sign_ins.1 += 1;
                        }
                        Err(_) => caller_sign_ins.1 += 1,
                    }
                }
            }
        }
        let calm = Duration::from_millis(rng.u64(500..2500));
        pause(&m, &mut owners, &bridges, &names, &etcd_url, calm).await;
    }
    note("faults over; the people leave; converging".into());
    let now = Instant::now();
    for (agent, since, _) in people.drain(..) {
        fault(now + now.saturating_duration_since(since) + Duration::from_secs(3));
        p.sim.person_signs_out(&agent);
    }
    // After the faults: every agent signed in, each held by exactly the instance etcd names.
    let limit = Duration::from_secs(40);
    let until = Instant::now() + limit;
    loop {
        if let Some(failure) = lock(&m).failure.clone() {
            panic!("seed {seed}: {failure}");
        }
        let url = etcd_url.clone();
        let owners: BTreeMap<String, String> =
            tokio::task::spawn_blocking(move || owners_at(&url, PREFIX))
                .await
                .unwrap();
        let mut held = Vec::new();
        for b in &bridges {
            held.push(b.held().await);
        }
        let agree = agents.iter().all(|a| {
            let holders: Vec<&String> = names
                .iter()
                .zip(&held)
                .filter(|(_, h)| h.contains(a))
                .map(|(n, _)| n)
                .collect();
            p.sim.signed_in(a) && holders.len() == 1 && owners.get(a) == Some(holders[0])
        });
        if agree {
            break;
        }
        assert!(
            Instant::now() < until,
            "not converged within {limit:?} (seed {seed}): etcd {owners:?}, held {held:?}\n{}",
            lock(&m).log.join("\n")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    sampling.cancel();
    sampler.await.unwrap();
    if let Some(watching) = watching {
        watching
            .finish(seed, &agents, &p.sim, moving_faults > 0)
            .await;
    }
    let (failure, worst, mut gaps) = {
        let monitor = lock(&m);
        (monitor.failure.clone(), monitor.worst, monitor.gaps.clone())
    };
    if let Some(failure) = failure {
        panic!("seed {seed}: {failure}");
    }
    gaps.sort();
    eprintln!(
        "figure: chaos seed {seed}: worst gap {:?}, median gap {:?} over {} gaps, 0 forcelogins, 0 sessions of others ended, caller sign-ins {} accepted / {} refused",
        worst,
        gaps.get(gaps.len() / 2).copied().unwrap_or_default(),
        gaps.len(),
        caller_sign_ins.0,
        caller_sign_ins.1
    );
    for b in &mut bridges {
        if b.running() {
            b.sigterm_and_wait().await;
        }
    }
}
