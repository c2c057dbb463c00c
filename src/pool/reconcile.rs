//! The reconcile loop: joins, reads the pool, and takes, hands over, reclaims or gives up agents
//! so that each is held by the member rendezvous hashing picks (rules in the parent module's
//! documentation). The lease is renewed elsewhere (`lease.rs`), so nothing here can cost it;
//! every wait here is bounded all the same, so the loop keeps converging.

use super::clock::LeaseTime;
use super::handoff::{now_ms, HandOff, Keyring};
use super::metrics::TakeOver;
use super::{
    choose_among, lease, Acquired, Backend, HolderWrite, LeaseState, Leave, Ownership, PoolConfig,
    PoolError, View,
};
use crate::gateway::retcodes::{self, Class};
use crate::session::{Orphan, OrphanEnd, SessionError, Sessions, SignInGate, SignInParams};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The shortest time between two reconciles the watch asks for: a burst of etcd revisions
/// (a peer releasing 10,000 agents in batches, this instance's own writes) costs one pass over
/// the mirror every 200 ms at most, not one per revision (issue 23 point 2).
const COALESCE: Duration = Duration::from_millis(200);

/// Stale holder records deleted per reconcile at most (see [`Reconciler::sweep_stale_holders`]).
const SWEEP_PER_PASS: usize = 1_000;

/// Failed gateway probes in a row (at most one a tick) after which an assignable instance steps
/// out of the members, so its agents move to members that can serve them, if a member's probe
/// passed meanwhile (see [`Reconciler::update_assignable`]).
const STEP_OUT_AFTER: u32 = 3;

/// Passed probes in a row after which an instance that stepped out for failing ones steps in.
const STEP_IN_AFTER: u32 = 3;

/// The pool's own sign-ins refused in a row, for a reason that is this instance's, after which
/// its probe fails (see [`refuses_this_instance`]).
const SIGN_IN_REFUSALS_FAIL_PROBE: u32 = 3;

pub(super) struct Reconciler<B> {
    backend: B,
    ownership: Arc<Ownership>,
    sessions: Sessions,
    agents: Arc<[(String, SignInParams)]>,
    tick: Duration,
    stop: CancellationToken,
    /// The current lease's keep-alive task (it ends when the lease is lost) and its stop.
    keep_alive: Option<(JoinHandle<()>, CancellationToken)>,
    /// Gateway probes in a row that failed.
    failed_probes: u32,
    /// The revision at which this instance published the first failed probe of the current
    /// run: a member's passed probe published after it is evidence the fault is here.
    failing_since: Option<i64>,
    /// Gateway probes in a row that passed while this instance was not assignable.
    passed_probes: u32,
    /// Whether this instance stepped out for failing probes (it steps in again only after
    /// [`STEP_IN_AFTER`] passes).
    stepped_out_failing: bool,
    /// When the gateway was last probed: at most once a tick, however often etcd's watch wakes
    /// the loop.
    last_probe: Option<Instant>,
    /// Seals the Guid hand-off (`None`: no holder records are written).
    keyring: Option<Arc<Keyring>>,
    /// The holder record this instance wrote last for each agent, and for which session and
    /// Guid generation: a new one is written when either changes.
    recorded: HashMap<String, Recorded>,
    /// Agents whose sessions ran on through a lost lease: not owned (the gate is closed for
    /// them) until the pool shows whether another instance took them (then they end here) or
    /// this instance takes them again (then they go on unchanged; issue 23 point 9).
    kept: HashSet<String>,
    /// When the current lease was granted: for one lease TTL after (the join grace), this
    /// instance takes no agent whose holder record another instance wrote, and, if it found
    /// the pool empty (no agent owned: a cold start, or every lease ended in one etcd stall),
    /// only agents it has since seen owned by another instance (handed over, or their holder's
    /// lease ended while it watched). Replicas starting together, or re-joining after one etcd
    /// stall, thus wait for each other and find their agents where they left them, instead of
    /// the first one up taking the world; a replica joining a running pool (a rolling update,
    /// a restart under the same name) takes what is handed over to it at once.
    joined_at: Option<Instant>,
    /// Whether the pool had no owned agent at this instance's first reconcile after joining
    /// (`None` until then; see `joined_at`).
    found_empty: Option<bool>,
    /// Agents seen owned by another instance since this instance joined (see `joined_at`).
    seen_owned: HashSet<String>,
    /// The join grace (the lease's TTL).
    grace: Duration,
    /// When the last reconcile started (see [`COALESCE`]).
    last_reconcile: Option<Instant>,
    /// How long a rebalancing move waits for the agent's play to end (`--pool-move-wait`).
    move_wait: Duration,
    /// Agents whose move waits for their play to end, and since when.
    waiting_to_move: HashMap<String, Instant>,
}

/// A holder record as this instance wrote it.
struct Recorded {
    session_id: Arc<str>,
    generation: u64,
    record: Vec<u8>,
}

/// What the loop hands back at shutdown: the backend, to release and leave with, and the
/// keep-alive, stopped only once the lease has been revoked.
struct Leaving<B> {
    backend: B,
    keep_alive: Option<CancellationToken>,
    /// The holder records written last, deleted with the release of an agent signed out.
    recorded: HashMap<String, Recorded>,
}

impl<B: Backend> Leave for Leaving<B> {
    fn release<'a>(
        &'a mut self,
        agents: Vec<String>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>> {
        Box::pin(async move {
            let released: Vec<(String, Option<Vec<u8>>)> = agents
                .into_iter()
                .map(|a| {
                    let record = self.recorded.remove(&a).map(|r| r.record);
                    (a, record)
                })
                .collect();
            let results = self.backend.release(&released).await;
            for ((agent, _), result) in released.iter().zip(results) {
                if let Err(e) = result {
                    tracing::warn!(agent_id = %agent, error = %e, "pool: release at shutdown failed");
                }
            }
        })
    }

    fn leave<'a>(
        &'a mut self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>> {
        Box::pin(async move {
            if let Err(e) = self.backend.leave().await {
                tracing::warn!(error = %e, "pool: leaving failed; the lease will expire");
            }
            if let Some(stop) = self.keep_alive.take() {
                stop.cancel();
            }
        })
    }
}

impl<B: Backend> Reconciler<B> {
    /// A loop renewing every third of `config.lease_ttl` (its tick), until `stop`.
    pub(super) fn new(
        backend: B,
        ownership: Arc<Ownership>,
        sessions: Sessions,
        agents: Vec<(String, SignInParams)>,
        config: &PoolConfig,
        stop: CancellationToken,
    ) -> Self {
        let tick = config.lease_ttl / 3;
        Self {
            backend,
            ownership,
            sessions,
            agents: agents.into(),
            tick,
            stop,
            keep_alive: None,
            failed_probes: 0,
            failing_since: None,
            passed_probes: 0,
            stepped_out_failing: false,
            last_probe: None,
            keyring: config.keyring.clone(),
            recorded: HashMap::new(),
            kept: HashSet::new(),
            joined_at: None,
            found_empty: None,
            seen_owned: HashSet::new(),
            grace: config.lease_ttl,
            last_reconcile: None,
            move_wait: config.move_wait,
            waiting_to_move: HashMap::new(),
        }
    }

    pub(super) async fn run(mut self) -> Box<dyn Leave> {
        let mut first = true;
        let mut stepped_out = false;
        loop {
            if !first {
                let draining = self.ownership.draining.clone();
                let by_watch = tokio::select! {
                    () = self.stop.cancelled() => break,
                    () = tokio::time::sleep(self.tick) => false,
                    () = self.backend.changed() => true,
                    () = self.ownership.wake.notified() => false,
                    () = draining.cancelled(), if !stepped_out => false,
                };
                if let Some(at) = self
                    .last_reconcile
                    .map(|t| t + COALESCE)
                    .filter(|_| by_watch)
                {
                    tokio::select! {
                        () = self.stop.cancelled() => break,
                        () = tokio::time::sleep_until(at.into()) => {}
                    }
                }
            }
            first = false;
            if self.stop.is_cancelled() {
                break;
            }
            if !self.lease_alive() && !self.join().await {
                continue;
            }
            if self.ownership.draining.is_cancelled() {
                // Step out first, so peers stop counting on this instance; the drain then
                // signs out and releases everything owned here (`Pool::leave`).
                if !stepped_out {
                    stepped_out = self.set_assignable(false).await;
                }
                continue;
            }
            if self.ownership.lock().lease != LeaseState::Held {
                continue;
            }
            self.last_reconcile = Some(Instant::now());
            self.ownership.metrics.reconciled();
            match self.backend.view().await {
                Ok(view) => {
                    self.update_assignable(&view).await;
                    self.reconcile(view).await
                }
                Err(e) => tracing::warn!(error = %e, "pool: reading the pool failed"),
            }
        }
        if self.ownership.draining.is_cancelled() && !stepped_out && self.lease_alive() {
            // Stopped before the loop saw the drain (nothing else was in flight): step out now,
            // or peers keep counting on this instance and leave its released agents alone
            // until its lease ends.
            self.set_assignable(false).await;
        }
        Box::new(Leaving {
            backend: self.backend,
            keep_alive: self.keep_alive.map(|(_, stop)| stop),
            recorded: self.recorded,
        })
    }

    /// Whether the current lease's keep-alive still runs; if it ended (the lease was lost),
    /// closes the gate on every owned agent and keeps their sessions (see [`Self::kept`]).
    fn lease_alive(&mut self) -> bool {
        match &self.keep_alive {
            Some((task, _)) if !task.is_finished() => true,
            Some(_) => {
                self.keep_alive = None;
                self.keep_all();
                false
            }
            None => false,
        }
    }

    /// Joins with a new lease (as an observer) and starts its keep-alive; whether it joined.
    async fn join(&mut self) -> bool {
        let sent = LeaseTime::now();
        match self.backend.join().await {
            Ok((ttl, renewal)) => {
                tracing::info!(instance = %self.ownership.instance, ?ttl, "pool: joined (as an observer until the gateway answers)");
                {
                    let mut s = self.ownership.lock();
                    s.assignable = false;
                }
                self.joined_at = Some(Instant::now());
                self.seen_owned.clear();
                self.found_empty = None;
                self.ownership
                    .set_lease(LeaseState::Held, Some(sent.after(ttl)));
                let stop = CancellationToken::new();
                let task = tokio::spawn(lease::keep_alive(
                    renewal,
                    self.ownership.clone(),
                    self.tick,
                    stop.clone(),
                ));
                self.keep_alive = Some((task, stop));
                true
            }
            Err(e) => {
                let mut s = self.ownership.lock();
                let first = s.last_error.is_none();
                s.name_taken = matches!(e, PoolError::NameTaken(_));
                s.last_error = Some(e.to_string());
                drop(s);
                if first {
                    tracing::warn!(error = %e, "pool: joining failed; trying again every tick");
                }
                false
            }
        }
    }

    /// Writes (or removes) this instance's membership; whether the coordinator took it.
    async fn set_assignable(&mut self, assignable: bool) -> bool {
        let agents: Vec<String> = match assignable {
            true => self.agents.iter().map(|(a, _)| a.clone()).collect(),
            false => Vec::new(),
        };
        let published = assignable.then_some(agents.as_slice());
        match self.backend.set_assignable(published).await {
            Ok(()) => {
                self.ownership.lock().assignable = assignable;
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, assignable, "pool: changing membership failed");
                false
            }
        }
    }

    /// Probes the gateway (at most once a tick, however often etcd's watch wakes the loop),
    /// publishes the result for the other instances, and steps in or out on evidence
    /// (issue 23 point 4):
    /// - an observer steps in once the gateway answers it (a replica with a wrong CA or
    ///   address then never takes an agent from one that serves it); after it stepped out for
    ///   failing probes, only after [`STEP_IN_AFTER`] passes in a row, so a flapping route does
    ///   not move agents back and forth;
    /// - an assignable instance steps out only after [`STEP_OUT_AFTER`] failed probes in a row
    ///   *and* a member's probe passed after its own first failure: then the fault is this
    ///   instance's, and its agents move to that member. In an outage of the gateway itself
    ///   every probe fails, no instance has that evidence, and nothing moves.
    ///
    /// A probe passes when the gateway answers and this instance's own sign-ins are not being
    /// refused ([`SIGN_IN_REFUSALS_FAIL_PROBE`] in a row): a replica with wrong passwords
    /// reaches the gateway but cannot serve. Such a replica stays out until it is restarted
    /// (its refusals do not heal by themselves; taking its share again would only cut sessions).
    async fn update_assignable(&mut self, view: &View) {
        if self.last_probe.is_some_and(|t| t.elapsed() < self.tick) {
            return;
        }
        self.last_probe = Some(Instant::now());
        let probe = probe(&self.sessions, &self.ownership).await;
        self.ownership.metrics.probed(probe.is_ok());
        let published = match self.backend.publish_probe(probe.is_ok()).await {
            Ok(revision) => Some(revision),
            Err(e) => {
                tracing::debug!(error = %e, "pool: publishing the gateway probe failed");
                None
            }
        };
        let assignable = self.ownership.lock().assignable;
        match probe {
            Ok(()) => {
                self.failed_probes = 0;
                self.failing_since = None;
                if assignable {
                    return;
                }
                self.passed_probes += 1;
                if self.stepped_out_failing && self.passed_probes < STEP_IN_AFTER {
                    return;
                }
                if self.set_assignable(true).await {
                    tracing::info!(
                        probes = self.passed_probes,
                        "pool: the gateway answers; taking agents"
                    );
                    self.stepped_out_failing = false;
                    self.passed_probes = 0;
                }
            }
            Err(cause) => {
                self.passed_probes = 0;
                if self.failed_probes == 0 {
                    self.failing_since = published;
                }
                self.failed_probes += 1;
                if !assignable {
                    tracing::debug!(%cause, "pool: the gateway probe fails; staying an observer");
                    return;
                }
                if self.failed_probes < STEP_OUT_AFTER {
                    return;
                }
                let me = &self.ownership.instance;
                let since = self.failing_since.unwrap_or(i64::MAX);
                let serving = view.probes.iter().find(|(peer, p)| {
                    *peer != me && p.ok && p.revision > since && view.members.contains(peer)
                });
                let Some((peer, _)) = serving else {
                    if self.failed_probes == STEP_OUT_AFTER {
                        tracing::warn!(%cause, probes = self.failed_probes, "pool: the gateway probe fails here, and no other member's has passed since: staying in, nothing moves (a whole-gateway outage moves no agent)");
                    }
                    return;
                };
                tracing::warn!(%cause, probes = self.failed_probes, serving = %peer, "pool: the gateway probe fails here while another member's passes; stepping out so members that can serve take this instance's agents");
                if self.set_assignable(false).await {
                    self.stepped_out_failing = true;
                }
            }
        }
    }

    /// The lease is gone: every ownership under it ended, so the gate closes on every agent
    /// owned here. Their sessions run on: an etcd stall past the TTL costs no session when
    /// nobody else took the agents meanwhile, and one who did logged the session out with the
    /// Guid handed over in its holder record, so the gateway has already ended it (never a
    /// sign-out or a sign-in from here without ownership).
    fn keep_all(&mut self) {
        let owned: Vec<String> = {
            let mut s = self.ownership.lock();
            s.assignable = false;
            s.handing_over.clear();
            s.owned.drain().collect()
        };
        if !owned.is_empty() {
            tracing::warn!(agents = owned.len(), "pool: lease lost; the agents' sessions run on, no new sign-ins, until the pool shows whether another instance took them");
        }
        self.kept.extend(owned);
        self.ownership.changed();
    }

    /// What a reconcile does with an agent whose session outlived a lost lease; `true` when it
    /// is settled for this pass (nothing else to do with it).
    fn settle_kept(&mut self, agent: &str, owner: Option<&String>, desired_here: bool) -> bool {
        let me = &self.ownership.instance;
        match owner {
            Some(owner) if owner != me => {
                tracing::warn!(agent_id = %agent, owner = %owner, "pool: agent taken by another instance while this one had no lease; ending its session here (the new owner logged it out with its Guid)");
                self.kept.remove(agent);
                self.recorded.remove(agent);
                self.forget(agent.to_owned());
                self.ownership.changed();
                true
            }
            Some(_) => {
                // Ours under the new lease already (an earlier take that answered late).
                self.kept.remove(agent);
                self.ownership.lock().owned.insert(agent.to_owned());
                self.ownership.changed();
                true
            }
            // Taken again in `take`, keeping the session.
            None if desired_here => false,
            // Members are still re-forming (this instance is not assignable yet, or in its
            // join grace): keep it.
            None if self.in_grace() || !self.ownership.lock().assignable => true,
            None => {
                // Another member should hold it: `converge` signs the session out with its own
                // Guid, so the next owner signs in plainly.
                self.kept.remove(agent);
                false
            }
        }
    }

    /// Whether a rebalancing move of `agent` waits, because a play runs on it, for at most
    /// `move_wait` since the first time it was due (issue 23 point 11: a sign-out cuts the
    /// play). An instance that stepped out (the gateway does not answer it) moves at once.
    fn waits_for_idle(&mut self, agent: &str, assignable: bool) -> bool {
        if !assignable || self.move_wait.is_zero() || !self.sessions.is_playing(agent) {
            self.waiting_to_move.remove(agent);
            return false;
        }
        let since = *self
            .waiting_to_move
            .entry(agent.to_owned())
            .or_insert_with(|| {
                tracing::info!(agent_id = %agent, wait = ?self.move_wait, "pool: agent due to move to another instance; waiting for its play to end first");
                Instant::now()
            });
        if since.elapsed() < self.move_wait {
            return true;
        }
        tracing::warn!(agent_id = %agent, wait = ?self.move_wait, "pool: the agent's play did not end within --pool-move-wait; moving it now (the play is cut)");
        self.waiting_to_move.remove(agent);
        false
    }

    fn in_grace(&self) -> bool {
        self.joined_at.is_some_and(|t| t.elapsed() < self.grace)
    }

    /// Ends the agent's session here without signing out, in the background: the session's
    /// lifecycle lock may be held by a slow sign-in, and the loop must not wait for it.
    fn forget(&self, agent: String) {
        let sessions = self.sessions.clone();
        tokio::spawn(async move { sessions.forget(&agent).await });
    }

    async fn reconcile(&mut self, view: View) {
        let me = self.ownership.instance.clone();
        let assignable = self.ownership.lock().assignable;
        let mut members = view.members.clone();
        members.retain(|m| *m != me);
        if assignable {
            if !view.members.contains(&me) || !view.catalogs.contains_key(&me) {
                // Our membership (or the list of agents we can hold) vanished while the lease
                // lives (an etcd that lost an acknowledged write, an operator, a peer with the
                // same list that left): write it again.
                self.set_assignable(true).await;
            }
            members.push(me.clone());
        }
        self.ownership.lock().owners = view.owners.clone();
        let in_grace = self.in_grace();
        let cold = *self.found_empty.get_or_insert(view.owners.is_empty());
        {
            let s = self.ownership.lock();
            self.waiting_to_move.retain(|a, _| s.owned.contains(a));
        }
        let (mut hand_over, mut take, mut reclaim, mut sign_in) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut holder_writes = Vec::new();
        let agents = self.agents.clone();
        for (agent, params) in agents.iter() {
            // Only members whose agents file lists the agent can hold it (this instance's
            // lists every agent it reconciles).
            let desired = choose_among(
                members
                    .iter()
                    .filter(|m| {
                        **m == me || view.catalogs.get(*m).is_none_or(|c| c.contains(agent))
                    })
                    .map(String::as_str),
                agent,
            );
            let should_move = desired.is_some_and(|d| d != me);
            if self.kept.contains(agent) {
                if self.settle_kept(agent, view.owners.get(agent), desired == Some(me.as_str())) {
                    continue;
                }
                if self.kept.contains(agent) {
                    take.push((agent, params));
                    continue;
                }
            }
            let (owned_here, moving) = {
                let s = self.ownership.lock();
                (s.owned.contains(agent), s.handing_over.contains(agent))
            };
            match view.owners.get(agent) {
                Some(owner) if *owner == me => {
                    let signing_in = self.ownership.lock().signing_in.contains(agent);
                    if moving {
                        // A hand-over of it is in progress.
                    } else if should_move && !signing_in {
                        // (Not while its sign-in runs: a take-over must finish, or its proof
                        // would be handed on with nobody having replaced the old session.)
                        if !self.waits_for_idle(agent, assignable) {
                            hand_over.push((agent.clone(), desired.unwrap_or_default().to_owned()));
                        }
                    } else if should_move {
                        // Handed over once its sign-in is done.
                    } else if !owned_here {
                        // etcd says it is ours, this instance had given it up: a release that
                        // failed, or an etcd restored from before a release. Adopt it.
                        tracing::warn!(agent_id = %agent, "pool: the coordinator names this instance the owner of an agent it had let go; adopting it");
                        self.ownership.lock().owned.insert(agent.clone());
                        sign_in.push((agent, params));
                    } else if self.sessions.has_running_session(agent) {
                        holder_writes.extend(self.hand_off_write(agent, &view));
                    } else if !signing_in && !self.sessions.is_kept(agent) {
                        // Owned, without a session, and keep-signed-in is not on it (it
                        // gave up while sign-ins were refused, a caller signed it out, a
                        // stale keeper stepped aside): sign it in again, plainly.
                        sign_in.push((agent, params));
                    }
                }
                Some(owner) if owned_here || moving => {
                    {
                        let mut s = self.ownership.lock();
                        s.owned.remove(agent);
                        s.handing_over.remove(agent);
                    }
                    tracing::warn!(agent_id = %agent, owner = %owner, "pool: agent owned by another instance now; ending its session here");
                    self.recorded.remove(agent);
                    self.forget(agent.clone());
                    self.ownership.changed();
                    continue;
                }
                Some(_) if in_grace => {
                    self.seen_owned.insert(agent.clone());
                }
                Some(_) => {}
                None if owned_here => reclaim.push(agent.clone()),
                // In the join grace: never over another instance's holder record, and after a
                // cold start only what was handed over while this instance watched (see
                // `joined_at`).
                None if in_grace
                    && ((cold && !self.seen_owned.contains(agent))
                        || (view.holders.contains(agent)
                            && !self.recorded.contains_key(agent))) => {}
                None if !moving && desired == Some(me.as_str()) => take.push((agent, params)),
                None => {}
            }
            self.converge(agent);
        }
        if !sign_in.is_empty() {
            self.ownership.changed();
        }
        for (agent, params) in sign_in {
            self.spawn_sign_in(agent, params, None);
        }
        self.settle_waiting();
        holder_writes.extend(self.ended_records());
        if !holder_writes.is_empty() {
            self.write_holders(holder_writes).await;
        }
        if !reclaim.is_empty() {
            self.reclaim(reclaim).await;
        }
        if !take.is_empty() {
            self.take(take).await;
        }
        if !hand_over.is_empty() {
            self.hand_over(hand_over).await;
        }
        if assignable && !in_grace {
            self.seen_owned.clear();
            self.sweep_stale_holders(&view).await;
        }
    }

    /// Deletes holder records of agents that no member lists and nobody owns (agents removed
    /// from the agents files): nobody will take them over, and the pool's state would otherwise
    /// grow with every agent ever removed (issue 23 point 8). Done by one member only (the first
    /// by name), and only while every member's list is known: a member whose list is unknown
    /// may hold any agent.
    async fn sweep_stale_holders(&mut self, view: &View) {
        let me = &self.ownership.instance;
        let first = view.members.iter().min();
        if first != Some(me) || view.members.iter().any(|m| !view.catalogs.contains_key(m)) {
            return;
        }
        let stale: Vec<String> = view
            .holders
            .iter()
            .filter(|a| !view.owners.contains_key(*a))
            .filter(|a| !view.catalogs.values().any(|c| c.contains(*a)))
            .take(SWEEP_PER_PASS)
            .cloned()
            .collect();
        if stale.is_empty() {
            return;
        }
        match self.backend.forget_holders(&stale).await {
            Ok(()) => tracing::info!(
                records = stale.len(),
                "pool: deleted the holder records of agents no member lists any more"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "pool: deleting stale holder records failed; trying again next tick")
            }
        }
    }

    /// A live session here for a pool agent this instance does not own (a sign-in that passed
    /// the gate just before ownership moved): sign it out with its own Guid. The gateway fences
    /// that logout: it can end only this instance's session, never the new owner's.
    fn converge(&self, agent: &str) {
        {
            let s = self.ownership.lock();
            if s.owned.contains(agent) || s.handing_over.contains(agent) {
                return;
            }
        }
        if !self.sessions.has_running_session(agent) {
            return;
        }
        tracing::warn!(agent_id = %agent, "pool: a session runs here for an agent this instance does not own; signing it out");
        let sessions = self.sessions.clone();
        let agent = agent.to_owned();
        let deadline = Instant::now() + self.tick;
        tokio::spawn(async move {
            if let Err(e) = sessions.sign_out(&agent, Some(deadline)).await {
                tracing::warn!(agent_id = %agent, error = %e, "pool: signing out a session not owned here failed; trying again next tick");
            }
        });
    }

    /// Our ownership record vanished while our lease lives (etcd lost a write it had
    /// acknowledged, e.g. without fsync, or an operator deleted the key): claim it again and
    /// keep the session. If another instance claimed it first, end the session here.
    async fn reclaim(&mut self, agents: Vec<String>) {
        let results = self.backend.acquire(&agents).await;
        for (agent, result) in agents.into_iter().zip(results) {
            match result {
                Ok(Acquired::Won { .. }) => {
                    tracing::warn!(agent_id = %agent, "pool: ownership record vanished; claimed it again");
                }
                Ok(Acquired::Held) => {
                    self.ownership.lock().owned.remove(&agent);
                    self.recorded.remove(&agent);
                    tracing::warn!(agent_id = %agent, "pool: ownership record vanished and another instance claimed the agent; ending its session here");
                    self.forget(agent);
                    self.ownership.changed();
                }
                Err(e) => {
                    tracing::warn!(agent_id = %agent, error = %e, "pool: reclaiming the agent failed")
                }
            }
        }
    }

    async fn take(&mut self, agents: Vec<(&String, &SignInParams)>) {
        let names: Vec<String> = agents.iter().map(|(a, _)| (*a).clone()).collect();
        let results = self.backend.acquire(&names).await;
        for ((agent, params), result) in agents.into_iter().zip(results) {
            let hand_off = match result {
                Ok(Acquired::Won { hand_off }) => hand_off,
                Ok(Acquired::Held) => continue,
                Err(e) => {
                    tracing::warn!(agent_id = %agent, error = %e, "pool: taking the agent failed");
                    continue;
                }
            };
            if self.kept.remove(agent.as_str()) && self.sessions.has_running_session(agent) {
                // Nobody signed it in meanwhile (the gateway would have ended this session):
                // it goes on unchanged. Its record is written again if it is not this one.
                if self.recorded.get(agent.as_str()).map(|r| &r.record) != hand_off.as_ref() {
                    self.recorded.remove(agent.as_str());
                }
                tracing::info!(agent_id = %agent, "pool: agent owned here again; its session ran on through the lost lease, unchanged");
                self.ownership.lock().owned.insert(agent.clone());
                self.ownership.changed();
                continue;
            }
            let take_over = hand_off.map(|record| self.open_hand_off(agent, &record));
            self.ownership.lock().owned.insert(agent.clone());
            self.ownership.changed();
            self.spawn_sign_in(agent, params, take_over);
        }
    }

    /// The previous holder's session from its sealed record, as an orphan to log out with its
    /// own Guid; a record that does not open (another pool key, damaged, none set here) counts
    /// as no record: the gateway's idle sign-out frees the agent instead.
    fn open_hand_off(&self, agent: &str, record: &[u8]) -> TakeOverOf {
        let opened = self.keyring.as_ref().and_then(|k| k.open(agent, record));
        match &opened {
            Some(h) => {
                let age = now_ms().saturating_sub(h.written_at_ms);
                tracing::info!(agent_id = %agent, previous = %h.instance, record_age_ms = age, "pool: agent owned here now; logging its previous holder's session out with the handed-off Guid, then signing it in");
            }
            None => {
                tracing::warn!(agent_id = %agent, "pool: agent owned here now; its holder record does not open with this instance's --pool-key-file, so its previous session (if any) ends only at the gateway's idle sign-out");
            }
        }
        TakeOverOf {
            orphan: opened
                .map(|h| Orphan::handed_over(h.guid, h.cookies.as_deref().map(String::as_str))),
        }
    }

    /// The holder record to write for an owned agent whose session runs here: when there is
    /// none yet, or the session or its Guid changed since the last one (`None` without a key).
    fn hand_off_write(&self, agent: &str, view: &View) -> Option<PendingWrite> {
        let keyring = self.keyring.as_ref()?;
        // Most passes change nothing: compare the session and Guid generation first, so the
        // Guid and cookies are copied only when a record is due.
        let (session_id, generation) = self.sessions.session_version(agent)?;
        let current = self
            .recorded
            .get(agent)
            .is_some_and(|r| r.session_id == session_id && r.generation == generation)
            && view.holders.contains(agent);
        if current {
            return None;
        }
        let h = self.sessions.hand_off_of(agent)?;
        let record = keyring.seal(
            agent,
            &HandOff {
                instance: self.ownership.instance.clone(),
                guid: h.guid,
                cookies: h.cookies.map(zeroize::Zeroizing::new),
                written_at_ms: now_ms(),
            },
        );
        Some(PendingWrite {
            write: HolderWrite::Put {
                agent: agent.to_owned(),
                record,
            },
            session: Some((h.session_id, h.generation)),
        })
    }

    /// Deletes of the records of owned agents whose session here ended (signed out, kicked):
    /// the Guid inside is dead. Not while a sign-in runs, nor during a hand-over (its release
    /// deletes the record).
    fn ended_records(&self) -> Vec<PendingWrite> {
        let s = self.ownership.lock();
        self.recorded
            .iter()
            .filter(|(agent, _)| {
                s.owned.contains(*agent)
                    && !s.signing_in.contains(*agent)
                    && !self.sessions.has_running_session(agent)
            })
            .map(|(agent, r)| PendingWrite {
                write: HolderWrite::Delete {
                    agent: agent.clone(),
                    record: r.record.clone(),
                },
                session: None,
            })
            .collect()
    }

    /// Sends holder writes (batched by the backend) and remembers what was written.
    async fn write_holders(&mut self, pending: Vec<PendingWrite>) {
        let writes: Vec<HolderWrite> = pending.iter().map(|p| p.write.clone()).collect();
        let results = self.backend.write_holders(&writes).await;
        for (p, result) in pending.into_iter().zip(results) {
            match (result, p.write, p.session) {
                (Ok(()), HolderWrite::Put { agent, record }, Some((session_id, generation))) => {
                    self.recorded.insert(
                        agent,
                        Recorded {
                            session_id,
                            generation,
                            record,
                        },
                    );
                }
                (Ok(()), HolderWrite::Delete { agent, .. }, _) => {
                    self.recorded.remove(&agent);
                }
                (Ok(()), HolderWrite::Put { .. }, None) => {}
                (Err(e), write, _) => {
                    tracing::warn!(agent_id = %write.agent(), error = %e, "pool: writing the agent's holder record failed; trying again next tick");
                }
            }
        }
    }

    /// Agents that waited for the gateway (`100-002`) and run here now, or are not owned here
    /// any more, stop waiting; those signed in here are counted as `waited_for_gateway`.
    fn settle_waiting(&self) {
        let (done, signed_in) = {
            let mut s = self.ownership.lock();
            let owned = &s.owned;
            let done: Vec<(String, bool)> = s
                .waiting_for_gateway
                .iter()
                .map(|a| (a.clone(), self.sessions.has_running_session(a)))
                .filter(|(a, running)| *running || !owned.contains(a))
                .collect();
            for (agent, _) in &done {
                s.waiting_for_gateway.remove(agent);
            }
            let signed_in = done.iter().filter(|(_, running)| *running).count();
            (done.len(), signed_in)
        };
        for _ in 0..signed_in {
            self.ownership.took_over(TakeOver::WaitedForGateway);
        }
        if done > 0 {
            self.ownership.changed();
        }
    }

    fn spawn_sign_in(&self, agent: &str, params: &SignInParams, take_over: Option<TakeOverOf>) {
        let sessions = self.sessions.clone();
        let ownership = self.ownership.clone();
        let agent = agent.to_owned();
        let params = params.clone();
        if !ownership.lock().signing_in.insert(agent.clone()) {
            return;
        }
        tokio::spawn(async move {
            sign_in_owned(&sessions, &ownership, &agent, params, take_over).await;
            ownership.lock().signing_in.remove(&agent);
        });
    }

    /// Graceful hand-over to the instance that should hold these agents: close the gate, sign
    /// out, then release. An agent whose sign-out fails (or waits on its lifecycle lock longer
    /// than two ticks) is owned here again and tried again next tick.
    async fn hand_over(&mut self, moves: Vec<(String, String)>) {
        let (agents, targets): (Vec<String>, Vec<String>) = moves.into_iter().unzip();
        {
            // The gate closes before the sign-out: a caller's SignIn in between is refused
            // rather than signing the agent in again behind the hand-over's back.
            let mut s = self.ownership.lock();
            for agent in &agents {
                s.owned.remove(agent);
                s.handing_over.insert(agent.clone());
            }
        }
        self.ownership.changed();
        let tick = self.tick;
        let sign_outs = agents.iter().zip(&targets).map(|(agent, to)| {
            let sessions = self.sessions.clone();
            async move {
                let out = sessions.sign_out_moving(agent, Some(Instant::now() + tick), to);
                match tokio::time::timeout(tick * 2, out).await {
                    Ok(
                        Ok(())
                        | Err(
                            SessionError::NotSignedIn { .. }
                            | SessionError::NotOwned { .. }
                            | SessionError::PoolUnsure { .. },
                        ),
                    ) => true,
                    Ok(Err(e)) => {
                        tracing::warn!(agent_id = %agent, error = %e, "pool: sign-out for hand-over failed; keeping the agent");
                        false
                    }
                    Err(_) => {
                        tracing::warn!(agent_id = %agent, "pool: sign-out for hand-over still waiting for the agent's sign-in to finish; keeping the agent for now");
                        false
                    }
                }
            }
        });
        let done = futures::future::join_all(sign_outs).await;
        // An instance that stepped out because the gateway does not answer it cannot sign its
        // agents out: it gives them up with their holder record, so the next owner may take
        // over the sessions this instance can no longer use, and ends them here.
        let unreachable = !self.ownership.lock().assignable;
        let (mut signed_out, mut given_up) = (Vec::new(), Vec::new());
        {
            let mut s = self.ownership.lock();
            for (agent, out) in agents.into_iter().zip(done) {
                if out {
                    signed_out.push(agent);
                } else if unreachable {
                    given_up.push(agent);
                } else {
                    s.handing_over.remove(&agent);
                    s.owned.insert(agent);
                }
            }
        }
        for agent in &given_up {
            tracing::warn!(agent_id = %agent, "pool: the gateway does not answer this instance; releasing the agent with its holder record, so its next owner can log the session out with its Guid");
            self.forget(agent.clone());
        }
        // Signed out: the holder record goes with the release (if it is still this instance's
        // last write). Given up: it stays, with the Guid the next owner logs the session out with.
        let mut releases: Vec<(String, Option<Vec<u8>>)> = signed_out
            .iter()
            .map(|a| (a.clone(), self.recorded.remove(a).map(|r| r.record)))
            .collect();
        for agent in &given_up {
            self.recorded.remove(agent);
            releases.push((agent.clone(), None));
        }
        let results = self.backend.release(&releases).await;
        signed_out.extend(given_up);
        for (agent, result) in signed_out.iter().zip(results) {
            self.ownership.lock().handing_over.remove(agent);
            match result {
                Ok(true) => {
                    self.ownership.lock().hand_overs += 1;
                    self.ownership.metrics.handed_over();
                    tracing::info!(agent_id = %agent, "pool: agent signed out and handed over");
                }
                Ok(false) => {
                    tracing::info!(agent_id = %agent, "pool: agent signed out; its record was no longer this lease's")
                }
                // Still ours in etcd and forgotten here: the next reconcile releases it again
                // (or adopts it if it should stay).
                Err(e) => {
                    tracing::warn!(agent_id = %agent, error = %e, "pool: release failed; trying again next tick")
                }
            }
        }
        self.ownership.changed();
    }
}

/// A take-over: the agent was acquired with a previous holder's record left in etcd.
struct TakeOverOf {
    /// That holder's session, if the record opened.
    orphan: Option<Orphan>,
}

/// A holder write on its way, with the session and Guid generation a `Put` records.
struct PendingWrite {
    write: HolderWrite,
    session: Option<(Arc<str>, u64)>,
}

/// One probe: the gateway answers, and this instance's sign-ins are not being refused.
async fn probe(sessions: &Sessions, ownership: &Ownership) -> Result<(), String> {
    sessions.probe_gateway().await?;
    let refused = ownership.lock().refused_sign_ins;
    if refused >= SIGN_IN_REFUSALS_FAIL_PROBE {
        return Err(format!("the gateway refused this instance's last {refused} sign-ins (wrong passwords or parameters in its agents file?); fix them and restart it"));
    }
    Ok(())
}

/// Whether a sign-in refusal is about this instance's configuration (its agents file's
/// passwords or parameters, its rights) rather than the agent's state or the gateway's health:
/// such refusals, many in a row, mean this instance cannot serve its share (see
/// [`SIGN_IN_REFUSALS_FAIL_PROBE`]).
fn refuses_this_instance(e: &SessionError) -> bool {
    let SessionError::Gateway(e) = e else {
        return false;
    };
    e.retcode()
        .and_then(retcodes::lookup)
        .is_some_and(|(_, _, class)| {
            matches!(
                class,
                Class::Unauthenticated | Class::PermissionDenied | Class::InvalidArgument
            )
        })
}

/// Signs an agent this instance just took in and keeps it signed in. On a take-over, the
/// previous holder's session is logged out first with its handed-off Guid; then a plain
/// `login`, never `forcelogin`. `100-002` means the gateway still counts the agent signed in
/// elsewhere (a session without a usable Guid, or a person): the agent waits, retried by
/// keep-signed-in with back-off, and is counted as waiting. Shares the bound of background
/// sign-ins (`--sign-in-concurrency`), so a take-over of many agents is not one burst.
async fn sign_in_owned(
    sessions: &Sessions,
    ownership: &Ownership,
    agent: &str,
    params: SignInParams,
    take_over: Option<TakeOverOf>,
) {
    {
        let _permit = sessions.background_sign_in_permit().await;
        let orphan = take_over.as_ref().and_then(|t| t.orphan.clone());
        let (result, orphan_end) = sessions
            .sign_in_replacing(agent, params.clone(), orphan, None)
            .await;
        if result.is_ok() {
            // Hand the new session's Guid on at once rather than at the next tick: until its
            // record is written, a crash here leaves a session the next owner cannot log out.
            ownership.wake.notify_one();
        }
        match &result {
            Ok(_) => ownership.lock().refused_sign_ins = 0,
            Err(e) if refuses_this_instance(e) => ownership.lock().refused_sign_ins += 1,
            Err(_) => {}
        }
        match &result {
            Ok(_) if take_over.is_some() => ownership.took_over(match orphan_end {
                Some(OrphanEnd::LoggedOut) => TakeOver::GuidLogout,
                _ => TakeOver::Free,
            }),
            Err(SessionError::Gateway(e)) if e.retcode() == Some("100-002") => {
                tracing::warn!(agent_id = %agent, "pool: the gateway counts the agent as signed in elsewhere; waiting for it to free the agent (retried with back-off, never forced)");
                ownership
                    .lock()
                    .waiting_for_gateway
                    .insert(agent.to_owned());
                ownership.changed();
            }
            _ => {}
        }
    }
    if ownership.may_sign_in(agent).is_ok() {
        sessions.keep_signed_in(agent, params);
    }
}
