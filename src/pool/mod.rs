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
mod reconcile;
mod rendezvous;

#[cfg(feature = "pool")]
pub use etcd::EtcdBackend;
pub use metrics::PoolMetrics;
pub use rendezvous::choose;

use crate::config::PinnedAgent;
use crate::readiness::Condition;
use crate::session::{SessionError, Sessions, SignInGate};
use crate::telemetry::Metrics;
use reconcile::Reconciler;
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
    /// Whether the lease was ever held (an instance that never joined is not ready).
    joined_once: bool,
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
                joined_once: false,
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

    /// What readiness reports about the pool (O(1)): nothing while the lease is held. An
    /// instance that never joined is not ready, so a rolling update does not stop the old pod
    /// (which still holds the agents) for a new one that cannot reach the coordinator. Once
    /// joined, an unreachable coordinator or a lost lease is a warning only: the sessions held
    /// here and the calls on them keep working, only new sign-ins wait for the lease.
    pub fn readiness(&self) -> Condition {
        let s = self.lock();
        match (s.lease, s.joined_once) {
            (LeaseState::Held, _) => Condition::Fine,
            (_, false) => Condition::Blocking(
                "agent pool: not joined yet (the coordinator, etcd, has not granted a lease)",
            ),
            (LeaseState::Unreachable, true) => Condition::Degraded(
                "agent pool: coordinator (etcd) unreachable; running sessions are kept, no new sign-ins of pool agents",
            ),
            (LeaseState::Joining, true) => Condition::Degraded(
                "agent pool: lease lost; its agents' sessions here were ended, joining again",
            ),
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
        s.joined_once |= lease == LeaseState::Held;
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
