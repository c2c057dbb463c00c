//! The reconcile loop: renews the lease, reads the pool, and takes, hands over, reclaims or
//! gives up agents so that each is held by the member rendezvous hashing picks (rules in the
//! parent module's documentation).

use super::{choose, Acquired, Backend, LeaseState, Leave, Ownership, Renewal, View};
use crate::session::{SessionError, Sessions, SignInGate, SignInParams};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

pub(super) struct Reconciler<B> {
    pub(super) backend: B,
    pub(super) ownership: Arc<Ownership>,
    pub(super) sessions: Sessions,
    pub(super) agents: Arc<[(String, SignInParams)]>,
    pub(super) tick: Duration,
    pub(super) stop: CancellationToken,
}

impl<B: Backend> Reconciler<B> {
    pub(super) async fn run(mut self) -> Box<dyn Leave> {
        let mut joined = false;
        let mut first = true;
        // Set when the lease is held again after the coordinator was unreachable: sessions
        // given up meanwhile (sign-ins were refused) are signed in again at the next reconcile.
        let mut resync = false;
        loop {
            if !first {
                tokio::select! {
                    () = self.stop.cancelled() => break,
                    () = tokio::time::sleep(self.tick) => {}
                    () = self.backend.changed() => {}
                }
            }
            first = false;
            if self.stop.is_cancelled() {
                break;
            }
            let sent = Instant::now();
            let renewed = if joined {
                self.backend.renew().await
            } else {
                self.backend.join().await.map(Renewal::Alive)
            };
            match renewed {
                Ok(Renewal::Alive(ttl)) => {
                    if !joined {
                        tracing::info!(instance = %self.ownership.instance, ?ttl, "pool: joined");
                    } else if self.ownership.lock().lease == LeaseState::Unreachable {
                        tracing::info!("pool: coordinator reachable again; lease still held");
                        resync = true;
                    }
                    joined = true;
                    self.ownership.set_lease(LeaseState::Held, Some(sent + ttl));
                }
                Ok(Renewal::Lost) => {
                    tracing::warn!("pool: lease lost; ending every owned session here (no sign-out) and joining again");
                    self.ownership.set_lease(LeaseState::Joining, None);
                    self.drop_all().await;
                    joined = false;
                    first = true;
                    continue;
                }
                Err(e) => {
                    if self.ownership.lock().lease != LeaseState::Unreachable {
                        tracing::warn!(error = %e, "pool: coordinator unreachable; keeping running sessions, no new sign-ins");
                    }
                    self.ownership.set_lease(LeaseState::Unreachable, None);
                    continue;
                }
            }
            if self.ownership.draining.is_cancelled() {
                continue;
            }
            match self.backend.view().await {
                Ok(view) => {
                    self.reconcile(view, std::mem::take(&mut resync)).await;
                }
                Err(e) => tracing::warn!(error = %e, "pool: reading the pool failed"),
            }
        }
        Box::new(self.backend)
    }

    async fn drop_all(&mut self) {
        let owned: Vec<String> = self.ownership.lock().owned.drain().collect();
        for agent in &owned {
            tracing::warn!(agent_id = %agent, "pool: ownership lost with the lease");
            self.sessions.forget(agent).await;
        }
        self.ownership.changed();
    }

    async fn reconcile(&mut self, view: View, resync: bool) {
        let me = self.ownership.instance.clone();
        let mut members = view.members.clone();
        if !members.contains(&me) {
            members.push(me.clone());
        }
        self.ownership.lock().owners = view.owners.clone();
        let mut hand_over = Vec::new();
        let agents = self.agents.clone();
        for (agent, params) in agents.iter() {
            let desired = choose(&members, agent).unwrap_or(&me);
            let owned_here = self.ownership.lock().owned.contains(agent);
            match view.owners.get(agent) {
                Some(owner) if *owner == me => {
                    if desired != me && owned_here {
                        hand_over.push(agent.clone());
                    } else if resync && owned_here && self.sessions.view_of_agent(agent).is_err() {
                        // Owned, but its session was given up while new sign-ins were refused
                        // (coordinator unreachable): sign it in again, plainly. (Not at every
                        // tick: a caller's SignOut of an owned agent stays signed out.)
                        self.spawn_sign_in(agent, params, None);
                    }
                }
                Some(owner) => {
                    if owned_here {
                        self.ownership.lock().owned.remove(agent);
                        tracing::warn!(agent_id = %agent, owner = %owner, "pool: agent owned by another instance now; ending its session here");
                        self.sessions.forget(agent).await;
                        self.ownership.changed();
                    }
                }
                None if owned_here => self.reclaim(agent).await,
                None => {
                    if desired == me {
                        self.take(agent, params).await;
                    }
                }
            }
        }
        if !hand_over.is_empty() {
            self.hand_over(hand_over).await;
        }
    }

    /// Our ownership record vanished while our lease lives (etcd lost a write it had
    /// acknowledged, e.g. without fsync, or an operator deleted the key): claim it again and
    /// keep the session. If another instance claimed it first, end the session here.
    async fn reclaim(&mut self, agent: &str) {
        match self.backend.acquire(agent).await {
            Ok(Acquired::Won { .. }) => {
                tracing::warn!(agent_id = %agent, "pool: ownership record vanished; claimed it again");
            }
            Ok(Acquired::Held) => {
                self.ownership.lock().owned.remove(agent);
                tracing::warn!(agent_id = %agent, "pool: ownership record vanished and another instance claimed the agent; ending its session here");
                self.sessions.forget(agent).await;
                self.ownership.changed();
            }
            Err(e) => {
                tracing::warn!(agent_id = %agent, error = %e, "pool: reclaiming the agent failed")
            }
        }
    }

    async fn take(&mut self, agent: &str, params: &SignInParams) {
        let crashed_holder = match self.backend.acquire(agent).await {
            Ok(Acquired::Won { crashed_holder }) => crashed_holder,
            Ok(Acquired::Held) => return,
            Err(e) => {
                tracing::warn!(agent_id = %agent, error = %e, "pool: taking the agent failed");
                return;
            }
        };
        tracing::info!(agent_id = %agent, previous = ?crashed_holder, "pool: agent owned here now; signing it in");
        self.ownership.lock().owned.insert(agent.to_owned());
        self.ownership.changed();
        self.spawn_sign_in(agent, params, crashed_holder);
    }

    fn spawn_sign_in(&self, agent: &str, params: &SignInParams, crashed_holder: Option<String>) {
        let sessions = self.sessions.clone();
        let ownership = self.ownership.clone();
        let agent = agent.to_owned();
        let params = params.clone();
        tokio::spawn(async move {
            sign_in_owned(&sessions, &ownership, &agent, params, crashed_holder).await;
        });
    }

    /// Graceful hand-over to the instance that should hold these agents: sign out, then
    /// release. An agent whose sign-out fails stays owned here and is tried again next tick.
    async fn hand_over(&mut self, agents: Vec<String>) {
        let tick = self.tick;
        let sign_outs = agents.iter().map(|agent| {
            let sessions = self.sessions.clone();
            async move {
                match sessions.sign_out(agent, Some(Instant::now() + tick)).await {
                    Ok(()) | Err(SessionError::NotSignedIn { .. } | SessionError::NotOwned { .. }) => true,
                    Err(e) => {
                        tracing::warn!(agent_id = %agent, error = %e, "pool: sign-out for hand-over failed; keeping the agent");
                        false
                    }
                }
            }
        });
        let done = futures::future::join_all(sign_outs).await;
        for (agent, signed_out) in agents.into_iter().zip(done) {
            if !signed_out {
                continue;
            }
            self.ownership.lock().owned.remove(&agent);
            match self.backend.release(&agent).await {
                Ok(()) => {
                    self.ownership.lock().hand_overs += 1;
                    self.ownership.metrics.pool().handed_over();
                    tracing::info!(agent_id = %agent, "pool: agent signed out and handed over");
                }
                // The lease will end it; the next owner then sees a crashed holder.
                Err(e) => tracing::warn!(agent_id = %agent, error = %e, "pool: release failed"),
            }
            self.ownership.changed();
        }
    }
}

/// Signs an agent this instance just took in and keeps it signed in. A plain `login` first;
/// `forcelogin` only if the gateway still has a session (`100-002`) and that session is the
/// crashed holder's.
async fn sign_in_owned(
    sessions: &Sessions,
    ownership: &Ownership,
    agent: &str,
    params: SignInParams,
    crashed_holder: Option<String>,
) {
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
                ownership.metrics.pool().taken_over();
            }
        }
    }
    if ownership.may_sign_in(agent).is_ok() {
        sessions.keep_signed_in(agent, params);
    }
}
