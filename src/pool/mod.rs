//! The agent pool: several bridges share one agents file and agree, through a coordinator
//! (etcd), which instance holds each agent.
//!
//! Rules (issue 11, `docs`/README "Running several replicas"):
//! - An instance signs an agent in only while it owns the agent under a lease it knows to be
//!   valid on its own monotonic clock ([`Ownership`] is the session layer's [`SignInGate`]).
//! - Ownership is taken only when free ([`Backend::acquire`] is an atomic create); the owner
//!   that should hold an agent is chosen by rendezvous hashing over the live members.
//! - `forcelogin` is used only when the coordinator proved that the previous holder was a pool
//!   instance whose lease ended without handing the agent over (a crash or a partition): the
//!   gateway session it replaces is then one no live instance runs.
//! - Hand-over is graceful: sign out, then release, so the next owner signs in with `login`.
//! - Losing the lease ends every session here locally (never a sign-out, never a sign-in); an
//!   unreachable coordinator keeps running sessions but allows no new sign-ins.
//!
//! The backend is a small trait ([`Backend`]) so that a Kubernetes Lease backend can be added
//! without touching this loop or the session code.

#[cfg(feature = "pool")]
mod etcd;
mod metrics;
mod rendezvous;

#[cfg(feature = "pool")]
pub use etcd::EtcdBackend;
pub use metrics::PoolMetrics;
pub use rendezvous::choose;

use crate::config::PinnedAgent;
use crate::session::{SessionError, Sessions, SignInGate, SignInParams};
use crate::telemetry::Metrics;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Pool settings from `--etcd-endpoints` and its siblings.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// etcd client URLs.
    pub endpoints: Vec<String>,
    /// Key prefix shared by the instances of one pool (ends with `/`).
    pub prefix: String,
    /// This instance's name (unique in the pool).
    pub instance: String,
    /// Lease time-to-live; renewed every third of it.
    pub lease_ttl: Duration,
}

/// A coordinator failure.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// The coordinator could not be reached or refused the request.
    #[error("coordinator: {0}")]
    Coordinator(String),
    /// This binary was built without the `pool` feature.
    #[error("this ccgw-bridge was built without the `pool` feature (etcd); rebuild with `--features pool`")]
    NotBuilt,
}

/// What a lease renewal found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// The lease lives on for this long from when the renewal was sent.
    Alive(Duration),
    /// The lease is gone (expired or revoked): every ownership under it ended.
    Lost,
}

/// The coordinator's state as one instance reads it.
#[derive(Debug, Default, Clone)]
pub struct View {
    /// Live instances.
    pub members: Vec<String>,
    /// Agent → owning instance.
    pub owners: HashMap<String, String>,
}

/// The result of trying to take an agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquired {
    /// Taken. `crashed_holder` names the pool instance that held the agent last and whose
    /// lease ended without releasing it: its gateway session may still be there.
    Won {
        /// See above.
        crashed_holder: Option<String>,
    },
    /// Someone else holds it.
    Held,
}

/// A coordination engine holding one lease per instance and one ownership record per agent.
pub trait Backend: Send + 'static {
    /// Grants a new lease and registers this instance as a member under it; the granted TTL.
    fn join(&mut self) -> impl Future<Output = Result<Duration, PoolError>> + Send;
    /// Renews the lease once.
    fn renew(&mut self) -> impl Future<Output = Result<Renewal, PoolError>> + Send;
    /// Reads members and owners.
    fn view(&mut self) -> impl Future<Output = Result<View, PoolError>> + Send;
    /// Takes `agent` under the lease if nobody holds it.
    fn acquire(&mut self, agent: &str) -> impl Future<Output = Result<Acquired, PoolError>> + Send;
    /// Gives `agent` up after signing it out, so its next owner signs in without forcing.
    fn release(&mut self, agent: &str) -> impl Future<Output = Result<(), PoolError>> + Send;
    /// Ends the lease (every ownership not released stays marked as crashed).
    fn leave(&mut self) -> impl Future<Output = Result<(), PoolError>> + Send;
    /// Resolves when the pool's records may have changed, so the loop reconciles at once
    /// rather than at its next tick. A hint: it may also never resolve.
    fn changed(&mut self) -> impl Future<Output = ()> + Send;
}

/// The state of this instance's lease, as readiness and metrics report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseState {
    /// Not joined yet (or re-joining after losing the lease).
    Joining,
    /// Renewed in time.
    Held,
    /// The coordinator is unreachable: sessions run on, no new sign-ins.
    Unreachable,
}

impl LeaseState {
    /// Label for logs, metrics and readiness reasons.
    pub fn label(self) -> &'static str {
        match self {
            LeaseState::Joining => "joining",
            LeaseState::Held => "held",
            LeaseState::Unreachable => "coordinator_unreachable",
        }
    }
}

#[derive(Debug)]
struct OwnershipState {
    lease: LeaseState,
    valid_until: Option<Instant>,
    owned: HashSet<String>,
    owners: HashMap<String, String>,
    hand_overs: u64,
    take_overs: u64,
}

/// Which pool agents this instance owns, and until when its lease is surely valid.
pub struct Ownership {
    instance: String,
    pool: HashSet<String>,
    state: Mutex<OwnershipState>,
    changes: tokio::sync::watch::Sender<u64>,
    metrics: Arc<Metrics>,
    draining: CancellationToken,
}

/// A snapshot of this instance's place in the pool.
#[derive(Debug, Clone)]
pub struct PoolStatus {
    /// This instance's name.
    pub instance: String,
    /// Lease state.
    pub lease: LeaseState,
    /// Agents owned here, sorted.
    pub owned: Vec<String>,
    /// Agents handed over to another instance so far.
    pub hand_overs: u64,
    /// Agents taken over from an instance whose lease ended so far.
    pub take_overs: u64,
}

impl Ownership {
    fn new(instance: String, pool: HashSet<String>, metrics: Arc<Metrics>) -> Self {
        Self {
            instance,
            pool,
            state: Mutex::new(OwnershipState {
                lease: LeaseState::Joining,
                valid_until: None,
                owned: HashSet::new(),
                owners: HashMap::new(),
                hand_overs: 0,
                take_overs: 0,
            }),
            changes: tokio::sync::watch::Sender::new(0),
            metrics,
            draining: CancellationToken::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, OwnershipState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Where this instance stands now.
    pub fn status(&self) -> PoolStatus {
        let s = self.lock();
        let mut owned: Vec<String> = s.owned.iter().cloned().collect();
        owned.sort();
        PoolStatus {
            instance: self.instance.clone(),
            lease: s.lease,
            owned,
            hand_overs: s.hand_overs,
            take_overs: s.take_overs,
        }
    }

    /// Cancelled when the bridge starts draining: ownership changes no more.
    pub fn draining(&self) -> CancellationToken {
        self.draining.clone()
    }

    /// Ticks whenever the set of owned agents or the lease state changes.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn changed(&self) {
        let (owned, lease) = {
            let s = self.lock();
            (s.owned.len(), s.lease)
        };
        self.metrics.pool().set(owned, lease);
        self.changes.send_modify(|n| *n += 1);
    }

    fn set_lease(&self, lease: LeaseState, valid_until: Option<Instant>) {
        let mut s = self.lock();
        let was = s.lease;
        s.lease = lease;
        if valid_until.is_some() || lease != LeaseState::Unreachable {
            s.valid_until = valid_until;
        }
        drop(s);
        if was != lease {
            self.changed();
        }
    }
}

impl SignInGate for Ownership {
    fn may_sign_in(&self, agent_id: &str) -> Result<(), Option<String>> {
        if !self.pool.contains(agent_id) {
            // Agents outside the shared agents file are signed in by callers, as without a pool.
            return Ok(());
        }
        let s = self.lock();
        // Renewed at the last attempt, and surely not expired since (monotonic clock).
        let lease_valid =
            s.lease == LeaseState::Held && s.valid_until.is_some_and(|t| Instant::now() < t);
        if lease_valid && s.owned.contains(agent_id) {
            return Ok(());
        }
        Err(s
            .owners
            .get(agent_id)
            .filter(|o| **o != self.instance)
            .cloned())
    }
}

/// The running pool: its reconcile loop and the view the rest of the bridge reads.
pub struct Pool {
    ownership: Arc<Ownership>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Box<dyn Leave>>,
}

/// The part of a backend that outlives the loop: leaving at shutdown.
trait Leave: Send {
    fn leave_after<'a>(
        &'a mut self,
        released: Vec<String>,
    ) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send + 'a>>;
}

impl<B: Backend> Leave for B {
    fn leave_after<'a>(
        &'a mut self,
        released: Vec<String>,
    ) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        Box::pin(async move {
            for agent in released {
                if let Err(e) = self.release(&agent).await {
                    tracing::warn!(agent_id = %agent, error = %e, "pool: release at shutdown failed");
                }
            }
            if let Err(e) = self.leave().await {
                tracing::warn!(error = %e, "pool: leaving failed; the lease will expire");
            }
        })
    }
}

impl Pool {
    /// Connects to the configured coordinator and starts the pool (etcd; needs the `pool`
    /// feature).
    pub async fn connect(
        config: &PoolConfig,
        sessions: Sessions,
        agents: Vec<PinnedAgent>,
        metrics: Arc<Metrics>,
    ) -> Result<Pool, PoolError> {
        #[cfg(feature = "pool")]
        {
            let backend = EtcdBackend::connect(config).await?;
            Ok(Pool::start(backend, config, sessions, agents, metrics))
        }
        #[cfg(not(feature = "pool"))]
        {
            let _ = (config, sessions, agents, metrics);
            Err(PoolError::NotBuilt)
        }
    }

    /// Starts the reconcile loop on `backend` and installs the sign-in gate.
    pub fn start<B: Backend>(
        backend: B,
        config: &PoolConfig,
        sessions: Sessions,
        agents: Vec<PinnedAgent>,
        metrics: Arc<Metrics>,
    ) -> Pool {
        let ownership = Arc::new(Ownership::new(
            config.instance.clone(),
            agents.iter().map(|a| a.agent_id.clone()).collect(),
            metrics,
        ));
        ownership.changed();
        sessions.set_gate(ownership.clone());
        let stop = CancellationToken::new();
        let reconciler = Reconciler {
            backend,
            ownership: ownership.clone(),
            sessions,
            agents: agents
                .into_iter()
                .map(|mut a| {
                    a.params.force = false;
                    (a.agent_id, a.params)
                })
                .collect::<Vec<_>>()
                .into(),
            tick: config.lease_ttl / 3,
            stop: stop.clone(),
        };
        let task = tokio::spawn(reconciler.run());
        Pool {
            ownership,
            stop,
            task,
        }
    }

    /// This instance's ownership (the gate, status and change notifications).
    pub fn ownership(&self) -> &Arc<Ownership> {
        &self.ownership
    }

    /// Stops taking and handing over agents (first step of a drain). Sessions keep running,
    /// and so does the lease's renewal, so the drain's hand-over happens under a live lease.
    pub fn freeze(&self) {
        self.ownership.draining.cancel();
    }

    /// The drain's hand-over: with `sign_out`, signs every owned agent out (in parallel) and
    /// releases those signed out, so their next owner signs in with a plain `login`; then ends
    /// the lease. Agents still signed in (a failed sign-out, or `--no-sign-out-on-shutdown`)
    /// are not released: the lease's end marks them crashed, so their next owner may take
    /// their gateway session over.
    pub async fn leave(self, sessions: &Sessions, sign_out: bool, deadline: Option<Instant>) {
        self.stop.cancel();
        let Ok(mut backend) = self.task.await else {
            return;
        };
        let owned = self.ownership.status().owned;
        let mut released = Vec::new();
        if sign_out {
            let outs = owned.iter().map(|a| sessions.sign_out(a, deadline));
            for (agent, result) in owned.iter().zip(futures::future::join_all(outs).await) {
                match result {
                    Ok(()) | Err(SessionError::NotSignedIn { .. }) => released.push(agent.clone()),
                    Err(e) => {
                        tracing::warn!(agent_id = %agent, error = %e, "pool: sign-out at shutdown failed; not releasing the agent")
                    }
                }
            }
        }
        tracing::info!(
            released = released.len(),
            kept = owned.len() - released.len(),
            "pool: handing agents over and leaving"
        );
        backend.leave_after(released).await;
    }
}

struct Reconciler<B> {
    backend: B,
    ownership: Arc<Ownership>,
    sessions: Sessions,
    agents: Arc<[(String, SignInParams)]>,
    tick: Duration,
    stop: CancellationToken,
}

impl<B: Backend> Reconciler<B> {
    async fn run(mut self) -> Box<dyn Leave> {
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
                    } else if resync && owned_here && self.sessions.info(agent).is_err() {
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
