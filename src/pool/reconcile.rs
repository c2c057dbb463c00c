//! The reconcile loop: joins, reads the pool, and takes, hands over, reclaims or gives up agents
//! so that each is held by the member rendezvous hashing picks (rules in the parent module's
//! documentation). The lease is renewed elsewhere (`lease.rs`), so nothing here can cost it;
//! every wait here is bounded all the same, so the loop keeps converging.

use super::clock::LeaseTime;
use super::{
    choose_among, lease, Acquired, Backend, LeaseState, Leave, Ownership, PoolError, View,
};
use crate::session::{SessionError, Sessions, SignInGate, SignInParams};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Failed gateway probes in a row (at most one a tick) after which an assignable instance steps
/// out of the members, so its agents move to members that can serve them.
const STEP_OUT_AFTER: u32 = 3;

pub(super) struct Reconciler<B> {
    backend: B,
    ownership: Arc<Ownership>,
    sessions: Sessions,
    agents: Arc<[(String, SignInParams)]>,
    tick: Duration,
    stop: CancellationToken,
    /// The current lease's keep-alive task (it ends when the lease is lost) and its stop.
    keep_alive: Option<(JoinHandle<()>, CancellationToken)>,
    /// Gateway probes in a row that failed while this instance was assignable.
    failed_probes: u32,
    /// When the gateway was last probed: at most once a tick, however often etcd's watch wakes
    /// the loop.
    last_probe: Option<Instant>,
}

/// What the loop hands back at shutdown: the backend, to release and leave with, and the
/// keep-alive, stopped only once the lease has been revoked.
struct Leaving<B> {
    backend: B,
    keep_alive: Option<CancellationToken>,
}

impl<B: Backend> Leave for Leaving<B> {
    fn leave_after<'a>(
        &'a mut self,
        released: Vec<String>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>> {
        Box::pin(async move {
            let results = self.backend.release(&released, false).await;
            for (agent, result) in released.iter().zip(results) {
                if let Err(e) = result {
                    tracing::warn!(agent_id = %agent, error = %e, "pool: release at shutdown failed");
                }
            }
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
    pub(super) fn new(
        backend: B,
        ownership: Arc<Ownership>,
        sessions: Sessions,
        agents: Vec<(String, SignInParams)>,
        tick: Duration,
        stop: CancellationToken,
    ) -> Self {
        Self {
            backend,
            ownership,
            sessions,
            agents: agents.into(),
            tick,
            stop,
            keep_alive: None,
            failed_probes: 0,
            last_probe: None,
        }
    }

    pub(super) async fn run(mut self) -> Box<dyn Leave> {
        let mut first = true;
        let mut stepped_out = false;
        loop {
            if !first {
                let draining = self.ownership.draining.clone();
                tokio::select! {
                    () = self.stop.cancelled() => break,
                    () = tokio::time::sleep(self.tick) => {}
                    () = self.backend.changed() => {}
                    () = self.ownership.wake.notified() => {}
                    () = draining.cancelled(), if !stepped_out => {}
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
            self.update_assignable().await;
            match self.backend.view().await {
                Ok(view) => self.reconcile(view).await,
                Err(e) => tracing::warn!(error = %e, "pool: reading the pool failed"),
            }
        }
        Box::new(Leaving {
            backend: self.backend,
            keep_alive: self.keep_alive.map(|(_, stop)| stop),
        })
    }

    /// Whether the current lease's keep-alive still runs; if it ended (the lease was lost),
    /// ends every owned session here.
    fn lease_alive(&mut self) -> bool {
        match &self.keep_alive {
            Some((task, _)) if !task.is_finished() => true,
            Some(_) => {
                self.keep_alive = None;
                self.drop_all();
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

    /// An observer becomes assignable once the gateway answers it (a replica with a wrong CA
    /// or address then never takes an agent away from one that serves it); an assignable
    /// instance that fails [`STEP_OUT_AFTER`] probes in a row (at most one a tick: a GET that any
    /// answer satisfies) steps out, so rendezvous moves its agents to members that can serve
    /// them. In an outage of the gateway itself every instance steps out and nothing moves
    /// (rendezvous has no member to move to); each steps in again once the gateway answers.
    async fn update_assignable(&mut self) {
        if self.last_probe.is_some_and(|t| t.elapsed() < self.tick) {
            return;
        }
        self.last_probe = Some(Instant::now());
        let assignable = self.ownership.lock().assignable;
        match (assignable, self.sessions.probe_gateway().await) {
            (false, Ok(())) => {
                self.failed_probes = 0;
                if self.set_assignable(true).await {
                    tracing::info!("pool: the gateway answers; taking agents");
                }
            }
            (false, Err(cause)) => {
                tracing::debug!(%cause, "pool: the gateway does not answer; staying an observer")
            }
            (true, Ok(())) => self.failed_probes = 0,
            (true, Err(cause)) => {
                self.failed_probes += 1;
                if self.failed_probes >= STEP_OUT_AFTER {
                    tracing::warn!(%cause, probes = self.failed_probes, "pool: the gateway does not answer this instance; stepping out so other instances take its agents");
                    self.set_assignable(false).await;
                }
            }
        }
    }

    /// Ends every owned session here without signing out (the lease is gone: another instance
    /// may own the agents by now, and its sign-in replaces these sessions).
    fn drop_all(&mut self) {
        let owned: Vec<String> = {
            let mut s = self.ownership.lock();
            s.assignable = false;
            s.handing_over.clear();
            s.owned.drain().collect()
        };
        for agent in owned {
            tracing::warn!(agent_id = %agent, "pool: ownership lost with the lease");
            self.forget(agent);
        }
        self.ownership.changed();
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
        let (mut hand_over, mut take, mut reclaim, mut sign_in, mut mark) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
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
                        hand_over.push(agent.clone());
                    } else if should_move {
                        // Handed over once its sign-in is done.
                    } else if !owned_here {
                        // etcd says it is ours, this instance had given it up: a release that
                        // failed, or an etcd restored from before a release. Adopt it.
                        tracing::warn!(agent_id = %agent, "pool: the coordinator names this instance the owner of an agent it had let go; adopting it");
                        self.ownership.lock().owned.insert(agent.clone());
                        sign_in.push((agent, params));
                    } else if self.sessions.has_running_session(agent) {
                        if view.holders.get(agent) != Some(&me) {
                            mark.push(agent.clone());
                        }
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
                    self.forget(agent.clone());
                    self.ownership.changed();
                    continue;
                }
                Some(_) => {}
                None if owned_here => reclaim.push(agent.clone()),
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
        if !mark.is_empty() {
            for (agent, result) in mark.iter().zip(self.backend.mark_held(&mark).await) {
                if let Err(e) = result {
                    tracing::warn!(agent_id = %agent, error = %e, "pool: recording this instance as the agent's holder failed; trying again next tick");
                }
            }
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
            let crashed_holder = match result {
                Ok(Acquired::Won { crashed_holder }) => crashed_holder,
                Ok(Acquired::Held) => continue,
                Err(e) => {
                    tracing::warn!(agent_id = %agent, error = %e, "pool: taking the agent failed");
                    continue;
                }
            };
            tracing::info!(agent_id = %agent, previous = ?crashed_holder, "pool: agent owned here now; signing it in");
            self.ownership.lock().owned.insert(agent.clone());
            self.ownership.changed();
            self.spawn_sign_in(agent, params, crashed_holder);
        }
    }

    fn spawn_sign_in(&self, agent: &str, params: &SignInParams, crashed_holder: Option<String>) {
        let sessions = self.sessions.clone();
        let ownership = self.ownership.clone();
        let agent = agent.to_owned();
        let params = params.clone();
        if !ownership.lock().signing_in.insert(agent.clone()) {
            return;
        }
        tokio::spawn(async move {
            sign_in_owned(&sessions, &ownership, &agent, params, crashed_holder).await;
            ownership.lock().signing_in.remove(&agent);
        });
    }

    /// Graceful hand-over to the instance that should hold these agents: close the gate, sign
    /// out, then release. An agent whose sign-out fails (or waits on its lifecycle lock longer
    /// than two ticks) is owned here again and tried again next tick.
    async fn hand_over(&mut self, agents: Vec<String>) {
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
        let sign_outs = agents.iter().map(|agent| {
            let sessions = self.sessions.clone();
            async move {
                let out = sessions.sign_out(agent, Some(Instant::now() + tick));
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
            tracing::warn!(agent_id = %agent, "pool: the gateway does not answer this instance; releasing the agent with its holder record for a take-over");
            self.forget(agent.clone());
        }
        let mut results = self.backend.release(&signed_out, false).await;
        if !given_up.is_empty() {
            results.extend(self.backend.release(&given_up, true).await);
        }
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

/// Signs an agent this instance just took in and keeps it signed in. A plain `login` first;
/// `forcelogin` only if the gateway still has a session (`100-002`) and that session is the
/// crashed holder's. Shares the bound of background sign-ins (`--sign-in-concurrency`), so a
/// take-over of many agents does not reach the gateway as one burst.
async fn sign_in_owned(
    sessions: &Sessions,
    ownership: &Ownership,
    agent: &str,
    params: SignInParams,
    crashed_holder: Option<String>,
) {
    {
        let _permit = sessions.background_sign_in_permit().await;
        let first = sessions.sign_in(agent, params.clone(), None).await;
        if let (Err(SessionError::Gateway(e)), Some(holder)) = (&first, &crashed_holder) {
            if e.retcode() == Some("100-002") {
                tracing::info!(agent_id = %agent, previous = %holder, "pool: the previous holder's lease ended with the agent signed in; taking its session over (forcelogin)");
                let forced = SignInParams {
                    force: true,
                    ..params.clone()
                };
                if sessions.sign_in(agent, forced, None).await.is_ok() {
                    ownership.lock().take_overs += 1;
                    ownership.metrics.taken_over();
                }
            }
        }
    }
    if ownership.may_sign_in(agent).is_ok() {
        sessions.keep_signed_in(agent, params);
    }
}
