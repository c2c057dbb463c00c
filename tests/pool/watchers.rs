//! Watchers that follow agents across the pool, as an application would: one real tonic client
//! per agent, watching `WatchAgentEvents` from the start of the agent's session on whichever
//! instance holds it, resuming within a session after a broken stream, and moving to the owner
//! an `AGENT_MOVED` or `AGENT_NOT_OWNED` names. What they received is kept per bridge session
//! ([`Segment`]) for the push-mode chaos run to compare with the simulator's push record
//! ([`Watching::finish`]).

use super::harness::Bridge;
use ccgw_bridge::proto::agent_session_service_client::AgentSessionServiceClient;
use ccgw_bridge::proto::{GetSessionRequest, SessionState, WatchAgentEventsRequest};
use ccgw_bridge::sim::{Pushed, Simulator};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tonic_types::StatusExt;

/// The event type of the events the chaos run injects; each carries `{"n": <unique number>}`.
pub const CHAOS_EVENT: &str = "AgentState_Chaos";

/// Each instance's gRPC address now (a restart may move it to another port).
#[derive(Clone, Default)]
pub struct Addresses(Arc<Mutex<BTreeMap<String, SocketAddr>>>);

impl Addresses {
    /// Records where `bridges` serve now.
    pub fn update(&self, bridges: &[Bridge]) {
        let mut map = lock(&self.0);
        for b in bridges {
            map.insert(b.name.clone(), b.grpc);
        }
    }

    fn get(&self, name: &str) -> Option<SocketAddr> {
        lock(&self.0).get(name).copied()
    }

    fn names(&self) -> Vec<String> {
        lock(&self.0).keys().cloned().collect()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What one watcher received of one bridge session (one stream, or several when it resumed).
#[derive(Debug, Clone)]
pub struct Segment {
    pub instance: String,
    pub session_id: String,
    /// The injected events' numbers, in the order received.
    pub injected: Vec<u64>,
    /// The last sequence received (sequences are checked gap-free as they arrive).
    pub last_sequence: u64,
    /// How the last stream on it ended (`open` while one runs).
    pub end: String,
}

/// Everything the watcher of one agent received, and the first broken promise it saw.
#[derive(Debug, Default)]
pub struct Received {
    pub segments: Vec<Segment>,
    pub failure: Option<String>,
}

pub type Log = Arc<Mutex<Received>>;

/// Reads what `log` holds now.
pub fn read(log: &Log) -> std::sync::MutexGuard<'_, Received> {
    lock(log)
}

/// Where the watcher goes next.
enum Next {
    /// Watch on this instance (from the start of its session unless resuming there).
    Instance(String),
    /// Try the same instance again a little later (not signed in there yet, session ended).
    Again,
    /// The instance does not answer or does not hold the agent: try the next one.
    Elsewhere,
}

/// Follows `agent` across the pool until `stop`, recording into `log`.
pub async fn follow(agent: String, addrs: Addresses, log: Log, stop: CancellationToken) {
    let mut target = addrs.names()[0].clone();
    // (instance, session id) the watcher can resume on, with the last sequence it received.
    let mut resume: Option<(String, String, u64)> = None;
    let mut misses = 0;
    while !stop.is_cancelled() {
        let next = tokio::select! {
            () = stop.cancelled() => break,
            next = watch_once(&agent, &target, &addrs, &mut resume, &log) => next,
        };
        match next {
            Next::Instance(owner) if !owner.is_empty() && owner != target => {
                target = owner;
                misses = 0;
                continue;
            }
            Next::Instance(_) | Next::Again => misses += 1,
            Next::Elsewhere => misses = 3,
        }
        if misses >= 3 {
            // Round robin over the instances until one holds the agent.
            let names = addrs.names();
            let i = names.iter().position(|n| *n == target).unwrap_or(0);
            target = names[(i + 1) % names.len()].clone();
            misses = 0;
        }
        // A retry's pace, not a synchronisation: whatever the watcher missed meanwhile it
        // reads from the session's start or resumes.
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
    let mut received = lock(&log);
    if let Some(open) = received.segments.last_mut().filter(|s| s.end == "open") {
        open.end = "stopped".into();
    }
}

/// One stream on `instance`: opened, read to its end; the end says where to go next.
async fn watch_once(
    agent: &str,
    instance: &str,
    addrs: &Addresses,
    resume: &mut Option<(String, String, u64)>,
    log: &Log,
) -> Next {
    let Some(addr) = addrs.get(instance) else {
        return Next::Elsewhere;
    };
    let Ok(channel) = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_millis(500))
        .connect()
        .await
    else {
        return Next::Elsewhere;
    };
    let mut client = AgentSessionServiceClient::new(channel);
    // Opening is bounded (a frozen instance accepts connections and answers nothing); reading
    // is not: a frozen instance's stream resumes or ends when the process runs again.
    let open = Duration::from_secs(2);
    let request = match resume.clone().filter(|(i, _, _)| i == instance) {
        Some((_, session_id, last)) => WatchAgentEventsRequest {
            agent_id: agent.to_owned(),
            resume_after: Some(last),
            session_id,
        },
        None => {
            let session = tokio::time::timeout(
                open,
                client.get_session(GetSessionRequest {
                    agent_id: agent.to_owned(),
                }),
            )
            .await;
            match session {
                Err(_) => return Next::Elsewhere,
                Ok(Err(status)) => return after(&status, resume),
                Ok(Ok(s)) => {
                    let s = s.into_inner();
                    if s.state != SessionState::SignedIn as i32 || s.session_id.is_empty() {
                        return Next::Again;
                    }
                    WatchAgentEventsRequest {
                        agent_id: agent.to_owned(),
                        resume_after: Some(0),
                        session_id: s.session_id,
                    }
                }
            }
        }
    };
    let session_id = request.session_id.clone();
    let resumed = request.resume_after != Some(0);
    let mut stream = match tokio::time::timeout(open, client.watch_agent_events(request)).await {
        Err(_) => return Next::Elsewhere,
        Ok(Err(status)) => return after(&status, resume),
        Ok(Ok(stream)) => stream.into_inner(),
    };
    {
        let mut received = lock(log);
        let same = received
            .segments
            .last()
            .is_some_and(|s| s.instance == instance && s.session_id == session_id);
        if !(resumed && same) {
            received.segments.push(Segment {
                instance: instance.to_owned(),
                session_id: session_id.clone(),
                injected: Vec::new(),
                last_sequence: 0,
                end: String::new(),
            });
        }
        received.segments.last_mut().unwrap().end = "open".into();
    }
    *resume = Some((instance.to_owned(), session_id.clone(), 0));
    loop {
        let message = stream.message().await;
        let mut received = lock(log);
        let Received { segments, failure } = &mut *received;
        let segment = segments.last_mut().unwrap();
        match message {
            Ok(Some(event)) => {
                if event.sequence != segment.last_sequence + 1 || event.session_id != session_id {
                    failure.get_or_insert(format!(
                        "agent {agent} on {instance}: sequence {} of session {} after {} of session {session_id} (gap, repeat or mix)",
                        event.sequence, event.session_id, segment.last_sequence
                    ));
                }
                segment.last_sequence = event.sequence;
                *resume = Some((instance.to_owned(), session_id.clone(), event.sequence));
                if event.event_type == CHAOS_EVENT {
                    let n = event
                        .content
                        .as_ref()
                        .and_then(|c| c.fields.get("n"))
                        .and_then(|v| match v.kind {
                            Some(prost_types::value::Kind::NumberValue(n)) => Some(n as u64),
                            _ => None,
                        });
                    match n {
                        Some(n) => segment.injected.push(n),
                        None => {
                            failure.get_or_insert(format!(
                                "agent {agent}: a chaos event without its number: {event:?}"
                            ));
                        }
                    }
                }
            }
            Ok(None) => {
                segment.end = "OK".into();
                *resume = None;
                return Next::Again;
            }
            Err(status) => {
                segment.end = describe(&status);
                if matches!(status.code(), tonic::Code::ResourceExhausted) {
                    failure.get_or_insert(format!(
                        "agent {agent} on {instance}: the watcher overran: {status:?}"
                    ));
                }
                return after(&status, resume);
            }
        }
    }
}

/// `CODE REASON` of a status (the reason from its ErrorInfo, if any).
fn describe(status: &tonic::Status) -> String {
    match status.get_details_error_info() {
        Some(info) => format!("{:?} {}", status.code(), info.reason),
        None => format!("{:?}", status.code()),
    }
}

/// Where to go after a stream (or its opening) ended with `status`.
fn after(status: &tonic::Status, resume: &mut Option<(String, String, u64)>) -> Next {
    let info = status.get_details_error_info();
    let reason = info.as_ref().map_or("", |i| i.reason.as_str());
    let owner = || {
        info.as_ref()
            .and_then(|i| i.metadata.get("owner").cloned())
            .unwrap_or_default()
    };
    match reason {
        "AGENT_MOVED" | "AGENT_NOT_OWNED" => {
            *resume = None;
            Next::Instance(owner())
        }
        // The session the watcher was on is over (here or anywhere): its remaining events, if
        // any, are no longer observable; watch the current one from its start.
        "SESSION_ENDED" | "SESSION_CHANGED" => {
            *resume = None;
            Next::Again
        }
        // A broken stream (killed or draining instance, a transport error): resume where it
        // stopped if the same session still runs there.
        _ => match status.code() {
            tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled => {
                Next::Elsewhere
            }
            _ => Next::Again,
        },
    }
}

/// The push-mode chaos run's observers: a watcher per agent and an injector of numbered events.
pub struct Watching {
    logs: BTreeMap<String, Log>,
    watchers: Vec<tokio::task::JoinHandle<()>>,
    injecting: CancellationToken,
    injector: tokio::task::JoinHandle<u64>,
    stop: CancellationToken,
}

/// Between two injected events (round robin over the agents): about 20 a second in all.
const INJECT_EVERY: Duration = Duration::from_millis(50);

/// An injected event with number `n`.
fn chaos_event(agent: &str, n: u64) -> serde_json::Value {
    serde_json::json!({"eventType": CHAOS_EVENT, "workNo": agent, "content": {"n": n}})
}

impl Watching {
    /// Starts a watcher for each of `agents` and the injector.
    pub fn start(agents: &[String], addrs: &Addresses, sim: &Arc<Simulator>) -> Watching {
        let stop = CancellationToken::new();
        let mut logs = BTreeMap::new();
        let mut watchers = Vec::new();
        for agent in agents {
            let log = Log::default();
            logs.insert(agent.clone(), log.clone());
            watchers.push(tokio::spawn(follow(
                agent.clone(),
                addrs.clone(),
                log,
                stop.clone(),
            )));
        }
        let injecting = CancellationToken::new();
        let injector = {
            let (sim, agents, until) = (Arc::clone(sim), agents.to_vec(), injecting.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(INJECT_EVERY);
                let mut n = 0;
                while !until.is_cancelled() {
                    tick.tick().await;
                    let agent = &agents[n as usize % agents.len()];
                    sim.queue_event(agent, chaos_event(agent, n));
                    n += 1;
                }
                n
            })
        };
        Watching {
            logs,
            watchers,
            injecting,
            injector,
            stop,
        }
    }

    /// After convergence: a final burst to every agent's running session, which its watcher
    /// must receive whole; then every agent's watchers compared with the simulator's record.
    /// `moved`: the schedule ended some holder's sessions, so agents must have changed sessions
    /// (else the run proved nothing across hand-overs).
    pub async fn finish(self, seed: u64, agents: &[String], sim: &Simulator, moved: bool) {
        self.injecting.cancel();
        let mut n = self.injector.await.unwrap();
        let mut finals = Vec::new();
        for agent in agents {
            sim.queue_event(agent, chaos_event(agent, n));
            finals.push((agent.clone(), n));
            n += 1;
        }
        let injected_of = |agent: &str| -> Vec<(u64, u64)> {
            sim.pushed_records(agent)
                .iter()
                .filter_map(|p| Some((p.session, injected_number(p)?)))
                .collect()
        };
        super::wait_until(super::SETTLE, "the final burst is delivered", || async {
            finals
                .iter()
                .all(|(agent, n)| injected_of(agent).iter().any(|(_, m)| m == n))
        })
        .await;
        let caught_up = |agent: &str| {
            let last_session = injected_of(agent).last().map(|(s, _)| *s);
            let want: Vec<u64> = injected_of(agent)
                .into_iter()
                .filter(|(s, _)| Some(*s) == last_session)
                .map(|(_, n)| n)
                .collect();
            let received = read(&self.logs[agent]);
            want.iter()
                .all(|n| received.segments.iter().any(|s| s.injected.contains(n)))
        };
        let limit = super::SETTLE;
        let until = std::time::Instant::now() + limit;
        while !agents.iter().all(|a| caught_up(a)) && std::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.stop.cancel();
        for w in self.watchers {
            w.await.unwrap();
        }
        let mut total = Tally::default();
        for agent in agents {
            let records = sim.pushed_records(agent);
            let received = read(&self.logs[agent]);
            match compare(agent, &records, &received) {
                Ok(tally) => total.add(&tally),
                Err(broken) => panic!(
                    "seed {seed}: {broken}\nwatcher segments of {agent}: {:#?}",
                    received.segments
                ),
            }
        }
        assert!(
            !moved || total.sessions > agents.len(),
            "seed {seed}: no hand-over happened ({} gateway sessions for {} agents): the run tested nothing across hand-overs",
            total.sessions,
            agents.len()
        );
        eprintln!(
            "figure: push chaos seed {seed}: {} events accepted by bridges, {} received by watchers, 0 lost within a session, 0 duplicated, 0 reordered; {} gateway sessions ({} without injected events): {} received whole, {} cut at their end ({} events), {} ended before their watcher reached them ({} events)",
            total.recorded,
            total.received,
            total.sessions,
            total.sessions - total.whole - total.cut - total.unobserved,
            total.whole,
            total.cut,
            total.cut_events,
            total.unobserved,
            total.unobserved_events
        );
    }
}

/// The number of an injected event the simulator delivered (`None` for its own events).
fn injected_number(p: &Pushed) -> Option<u64> {
    (p.event["eventType"] == CHAOS_EVENT).then(|| p.event["content"]["n"].as_u64())?
}

/// Counts of one agent's (or every agent's) comparison.
#[derive(Default)]
struct Tally {
    recorded: usize,
    received: usize,
    /// Gateway sessions a bridge accepted anything for.
    sessions: usize,
    whole: usize,
    cut: usize,
    cut_events: usize,
    unobserved: usize,
    unobserved_events: usize,
}

impl Tally {
    fn add(&mut self, o: &Tally) {
        self.recorded += o.recorded;
        self.received += o.received;
        self.sessions += o.sessions;
        self.whole += o.whole;
        self.cut += o.cut;
        self.cut_events += o.cut_events;
        self.unobserved += o.unobserved;
        self.unobserved_events += o.unobserved_events;
    }
}

/// Checks the invariant of the push-mode chaos run for one agent (stated on
/// `chaos::a_seeded_schedule_of_faults_in_push_mode_loses_and_duplicates_no_event`).
fn compare(agent: &str, records: &[Pushed], received: &Received) -> Result<Tally, String> {
    if let Some(failure) = &received.failure {
        return Err(failure.clone());
    }
    let mut tally = Tally {
        sessions: records
            .iter()
            .map(|p| p.session)
            .collect::<BTreeSet<_>>()
            .len(),
        ..Tally::default()
    };
    // The record, per gateway session: injected numbers in delivery order.
    let mut delivered: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    let mut session_of: BTreeMap<u64, u64> = BTreeMap::new();
    for p in records {
        let Some(n) = injected_number(p) else {
            continue;
        };
        if session_of.insert(n, p.session).is_some() {
            // No fault of this run makes the simulator deliver a batch twice.
            return Err(format!("{agent}: the simulator delivered event {n} twice"));
        }
        delivered.entry(p.session).or_default().push(n);
        tally.recorded += 1;
    }
    // What the watchers received, per gateway session, in the order received.
    let mut seen: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for segment in &received.segments {
        let mut sessions = BTreeSet::new();
        for n in &segment.injected {
            let Some(session) = session_of.get(n) else {
                return Err(format!(
                    "{agent}: the watcher received event {n} on {}, which no bridge accepted",
                    segment.instance
                ));
            };
            sessions.insert(*session);
            seen.entry(*session).or_default().push(*n);
            tally.received += 1;
        }
        if sessions.len() > 1 {
            return Err(format!(
                "{agent}: bridge session {} on {} carried events of gateway sessions {sessions:?}",
                segment.session_id, segment.instance
            ));
        }
    }
    let last = delivered.keys().next_back().copied();
    for (session, want) in &delivered {
        let got = seen.get(session).map(Vec::as_slice).unwrap_or_default();
        if !want.starts_with(got) {
            return Err(format!(
                "{agent}, gateway session {session}: the watchers received {got:?} of the accepted {want:?}: not a prefix (an event lost in the middle, duplicated or reordered)"
            ));
        }
        if got.len() == want.len() {
            tally.whole += 1;
        } else if Some(*session) == last {
            return Err(format!(
                "{agent}: its running session {session} was received short: {got:?} of the accepted {want:?}"
            ));
        } else if got.is_empty() {
            tally.unobserved += 1;
            tally.unobserved_events += want.len();
        } else {
            tally.cut += 1;
            tally.cut_events += want.len() - got.len();
        }
    }
    Ok(tally)
}
