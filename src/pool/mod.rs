//! The agent pool: several bridges share one agents file and agree, through a coordinator
//! (etcd), which instance holds each agent.
//!
//! Rules (issue 11, docs/running-replicas.md; the design: docs/agent-pool.md):
//! - An instance signs an agent in only while it owns the agent under a lease it knows to be
//!   valid on its own lease clock ([`Ownership`] is the session layer's [`SignInGate`]).
//! - Ownership is taken only when free ([`Backend::acquire`] is an atomic create); the owner
//!   that should hold an agent is chosen by rendezvous hashing over the live members.
//! - The pool never sends `forcelogin`. An owner hands its gateway session's Guid (and cookies)
//!   to whoever takes the agent over next, sealed in `holders/{agent}` (`handoff.rs`), written
//!   after each sign-in and Guid change. A take-over after a crash or a freeze logs that session
//!   out with its own Guid, then signs in plainly; without a Guid that still works it waits for
//!   the gateway's idle sign-out (`100-002` until then), never forcing.
//! - Hand-over is graceful: sign out, then release, so the next owner signs in with `login`.
//! - Losing the lease closes the gate and keeps the sessions (never a sign-out, never a
//!   sign-in); after re-joining, an agent nobody took meanwhile is taken back with its session
//!   unchanged, one another instance took ends here. An unreachable coordinator keeps running
//!   sessions but allows no new sign-ins.
//! - The pool's records are read once into a watch-fed mirror (`mirror.rs`), so no request or
//!   answer grows with the pool; for one TTL after joining an instance takes nothing while
//!   alone and nothing another instance's holder record names (the join grace).
//!
//! The backend is a small trait ([`Backend`]) so that a Kubernetes Lease backend can be added
//! without touching this loop or the session code.

mod clock;
#[cfg(feature = "pool")]
mod etcd;
mod handoff;
#[cfg(feature = "pool")]
mod hints;
mod lease;
mod metrics;
#[cfg(feature = "pool")]
mod mirror;
mod ownership;
mod reconcile;
mod rendezvous;

#[cfg(feature = "pool")]
pub use etcd::EtcdBackend;
pub use handoff::{HandOff, KeyError, Keyring};
pub use metrics::{PoolMetrics, TakeOver};
pub use ownership::{LeaseState, Ownership, PoolStatus};
pub use rendezvous::{choose, choose_among};

use crate::session::{SessionError, Sessions, SignInParams};
use crate::telemetry::Metrics;
use reconcile::Reconciler;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
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
    /// How long a rebalancing move waits for the agent's play to end (`--pool-move-wait`).
    pub move_wait: Duration,
    /// TLS to etcd (`https://` endpoints), if any.
    pub tls: Option<EtcdTls>,
    /// etcd user and password (an etcd with `auth enable`), if any.
    pub auth: Option<EtcdAuth>,
    /// The pool key sealing the Guid hand-off (`--pool-key-file`); without it no holder record
    /// is written, and a take-over after a crash waits for the gateway's idle sign-out.
    pub keyring: Option<Arc<Keyring>>,
}

/// TLS material for etcd, checked at start (`--etcd-ca-cert`, `--etcd-client-cert`/`-key`).
#[derive(Clone)]
pub struct EtcdTls {
    /// PEM CA bundle trusted for etcd's certificate.
    pub ca_pem: Vec<u8>,
    /// PEM client certificate and key, for etcd's `--client-cert-auth`.
    pub identity: Option<(Vec<u8>, zeroize::Zeroizing<Vec<u8>>)>,
}

impl std::fmt::Debug for EtcdTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdTls")
            .field("client_cert", &self.identity.is_some())
            .finish_non_exhaustive()
    }
}

/// An etcd user and its password (`--etcd-user`, `--etcd-password-file`).
#[derive(Clone, Debug)]
pub struct EtcdAuth {
    /// The user.
    pub user: String,
    /// Its password (redacted in `Debug`).
    pub password: crate::secret::Password,
}

/// A coordinator failure.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PoolError {
    /// The coordinator could not be reached or refused the request.
    #[error("coordinator: {0}")]
    Coordinator(String),
    /// Another live lease holds this instance's name: two replicas given one name, or this
    /// instance's previous run whose lease has not ended. The message says which is likely.
    #[error("{0}")]
    NameTaken(String),
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
    /// Live instances that take agents (observers and stepped-out instances are not here).
    pub members: Vec<String>,
    /// Member → the agents its agents file lists, where known. During a rolling update that
    /// adds agents, old and new members list different agents; an agent goes only to a member
    /// that lists it. A member missing here (a bridge version that publishes no list) is taken
    /// to list every agent.
    pub catalogs: HashMap<String, Arc<HashSet<String>>>,
    /// Agent → owning instance (shared with the backend's mirror: a view copies nothing).
    pub owners: Arc<HashMap<String, String>>,
    /// Agents that have a holder record (see [`Backend::write_holders`]).
    pub holders: Arc<HashSet<String>>,
    /// Instance → its last published gateway probe (see [`Backend::publish_probe`]): the
    /// evidence an instance whose own probes fail needs before it steps out.
    pub probes: HashMap<String, Probe>,
}

/// One instance's last published gateway probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    /// Whether the probe passed (the gateway answered, and this instance's sign-ins are not
    /// being refused).
    pub ok: bool,
    /// The coordinator's revision at which it was published: revisions order publications of
    /// different instances without trusting their clocks.
    pub revision: i64,
}

/// The result of trying to take an agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquired {
    /// Taken. `hand_off` is the previous holder's sealed record, if one was left (a crash, a
    /// partition, a drain that could not sign the agent out): its gateway session may still be
    /// there, reachable through the Guid inside.
    Won {
        /// See above.
        hand_off: Option<Vec<u8>>,
    },
    /// Someone else holds it.
    Held,
}

/// One change of a holder record (see [`Backend::write_holders`]). Its `Debug` shows the
/// sealed bytes only, which mean nothing without the pool key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HolderWrite {
    /// Writes the sealed record, only while this instance owns the agent under its lease.
    Put {
        /// The agent.
        agent: String,
        /// The sealed [`HandOff`].
        record: Vec<u8>,
    },
    /// Deletes the record, only if it is still `record` (this instance's last write): the
    /// session it names ended.
    Delete {
        /// The agent.
        agent: String,
        /// The record this instance wrote last.
        record: Vec<u8>,
    },
}

impl HolderWrite {
    /// The agent whose record this changes.
    pub fn agent(&self) -> &str {
        match self {
            HolderWrite::Put { agent, .. } | HolderWrite::Delete { agent, .. } => agent,
        }
    }
}

/// A coordination engine holding one lease per instance and one ownership record per agent.
///
/// The lease is renewed by its own [`LeaseRenewal`] on its own task, so no reconcile work can
/// delay a renewal.
pub trait Backend: Send + 'static {
    /// Renews the lease granted by [`Backend::join`].
    type Lease: LeaseRenewal;
    /// Grants a new lease and claims this instance's name under it ([`PoolError::NameTaken`]
    /// while another live lease holds the name). The instance joins as an observer: it takes
    /// no agents until [`Backend::set_assignable`].
    fn join(&mut self) -> impl Future<Output = Result<(Duration, Self::Lease), PoolError>> + Send;
    /// Enters the members that rendezvous hashing assigns agents to, publishing the agents this
    /// instance can hold (`Some`), or leaves them (`None`).
    fn set_assignable(
        &mut self,
        agents: Option<&[String]>,
    ) -> impl Future<Output = Result<(), PoolError>> + Send;
    /// Publishes this instance's latest gateway probe under its lease (a small record,
    /// rewritten every probe); returns the coordinator's revision of the write.
    fn publish_probe(&mut self, ok: bool) -> impl Future<Output = Result<i64, PoolError>> + Send;
    /// Reads members and owners.
    fn view(&mut self) -> impl Future<Output = Result<View, PoolError>> + Send;
    /// Writes or deletes holder records (the sealed Guid hand-off), in transactions of bounded
    /// size. A `Put` is written after each sign-in and Guid change; until then the previous
    /// record stands, so a crashed holder's Guid outlives an owner that never signed in.
    fn write_holders(
        &mut self,
        writes: &[HolderWrite],
    ) -> impl Future<Output = Vec<Result<(), PoolError>>> + Send;
    /// Deletes the holder records of `agents`, each only while nobody owns the agent: records
    /// of agents no member lists any more, which nobody will take over (housekeeping, so the
    /// pool's state does not grow with every agent ever removed from the agents file).
    fn forget_holders(
        &mut self,
        agents: &[String],
    ) -> impl Future<Output = Result<(), PoolError>> + Send;
    /// Takes each of `agents` under the lease if nobody holds it (requests sent concurrently).
    fn acquire(
        &mut self,
        agents: &[String],
    ) -> impl Future<Output = Vec<Result<Acquired, PoolError>>> + Send;
    /// Gives each agent up (requests sent concurrently); `Ok(false)` when the ownership record
    /// was not this lease's any more (nothing was released). Normally after signing the agent
    /// out; its holder record is then deleted if it is still the given one (this instance's
    /// last write). With `None` (the sign-out could not reach the gateway) the holder record
    /// stays, so the next owner can log out the session this instance can no longer use.
    fn release(
        &mut self,
        agents: &[(String, Option<Vec<u8>>)],
    ) -> impl Future<Output = Vec<Result<bool, PoolError>>> + Send;
    /// Ends the lease (every ownership not released stays marked as crashed).
    fn leave(&mut self) -> impl Future<Output = Result<(), PoolError>> + Send;
    /// Resolves when the pool's records may have changed, so the loop reconciles at once
    /// rather than at its next tick. A hint: it may also never resolve.
    fn changed(&mut self) -> impl Future<Output = ()> + Send;
}

/// Renews one lease.
pub trait LeaseRenewal: Send + 'static {
    /// Renews the lease once, giving up (an error) after `bound`: the keep-alive bounds each
    /// attempt by the time the lease has left.
    fn renew(&mut self, bound: Duration)
        -> impl Future<Output = Result<Renewal, PoolError>> + Send;
}

/// The running pool: its reconcile loop and the view the rest of the bridge reads.
pub struct Pool {
    ownership: Arc<Ownership>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Box<dyn Leave>>,
}

/// The part of the loop that outlives it: releasing what was signed out and leaving at
/// shutdown.
trait Leave: Send {
    /// Releases agents signed out here (their holder records go with them).
    fn release<'a>(
        &'a mut self,
        agents: Vec<String>,
    ) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send + 'a>>;
    /// Ends the lease (last: every agent not released is then free for a take-over).
    fn leave<'a>(&'a mut self) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send + 'a>>;
}

/// The time kept back from the drain's deadline for the releases still due and the lease's
/// revocation: without it, the drain's deadline cancelled the hand-over before anything was
/// released or revoked, and peers waited a whole TTL for every agent.
const LEAVE_RESERVE: Duration = Duration::from_millis(500);

impl Pool {
    /// Connects to the configured coordinator and starts the pool (etcd; needs the `pool`
    /// feature).
    pub async fn connect(
        config: &PoolConfig,
        sessions: Sessions,
        agents: Vec<(String, SignInParams)>,
        metrics: &Metrics,
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
        agents: Vec<(String, SignInParams)>,
        metrics: &Metrics,
    ) -> Pool {
        if config.keyring.is_none() {
            tracing::warn!("agent pool without --pool-key-file: no Guid is handed over, so a crashed or frozen instance's agents wait for the gateway's idle sign-out (--gateway-idle-timeout) before another instance can sign them in");
        }
        let mut pool_metrics = None;
        metrics.register(|registry| pool_metrics = Some(PoolMetrics::registered(registry)));
        let ownership = Arc::new(Ownership::new(
            config.instance.clone(),
            config.endpoints.join(","),
            agents.iter().map(|(id, _)| id.clone()).collect(),
            pool_metrics.unwrap_or_default(),
        ));
        ownership.changed();
        sessions.set_gate(ownership.clone());
        let stop = CancellationToken::new();
        let reconciler = Reconciler::new(
            backend,
            ownership.clone(),
            sessions,
            agents
                .into_iter()
                .map(|(id, params)| {
                    (
                        id,
                        SignInParams {
                            force: false,
                            ..params
                        },
                    )
                })
                .collect(),
            config,
            stop.clone(),
        );
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

    /// Stops taking and handing over agents (first step of a drain) and steps out of the
    /// members agents are assigned to, so peers know at once which agents will come free.
    /// Sessions keep running, and so does the lease's renewal, so the drain's hand-over happens
    /// under a live lease.
    pub fn freeze(&self) {
        self.ownership.draining.cancel();
    }

    /// The drain's hand-over: with `sign_out`, signs every owned agent out, at most
    /// `--sign-in-concurrency` at a time, and releases each as soon as its sign-out ended, so
    /// its next owner signs in with a plain `login` at once and one slow sign-out delays only
    /// its own agent; then ends the lease. Sign-outs still running shortly before `deadline`
    /// are given up ([`LEAVE_RESERVE`]). Agents not released (a failed or given-up sign-out,
    /// or `--no-sign-out-on-shutdown`) are freed by the lease's end: their next owner takes
    /// their gateway session over with the handed-off Guid.
    pub async fn leave(self, sessions: &Sessions, sign_out: bool, deadline: Option<Instant>) {
        self.stop.cancel();
        let Ok(mut backend) = self.task.await else {
            return;
        };
        let owned = self.ownership.status().owned;
        let mut released = 0;
        if sign_out {
            let mut outs = tokio::task::JoinSet::new();
            for agent in owned.iter().cloned() {
                let sessions = sessions.clone();
                outs.spawn(async move {
                    let _permit = sessions.background_sign_in_permit().await;
                    let result = sessions.sign_out(&agent, deadline).await;
                    (agent, result)
                });
            }
            let release_by = deadline.map(|d| d.checked_sub(LEAVE_RESERVE).unwrap_or(d));
            loop {
                let next = match release_by {
                    Some(t) => match tokio::time::timeout_at(t.into(), outs.join_next()).await {
                        Ok(next) => next,
                        Err(_) => {
                            tracing::warn!(still_signing_out = outs.len(), "pool: sign-outs still running at the drain's deadline; their agents are freed by the lease's end");
                            break;
                        }
                    },
                    None => outs.join_next().await,
                };
                let Some(done) = next else {
                    break;
                };
                // Release this one with every other sign-out that has ended meanwhile.
                let mut batch = Vec::new();
                for (agent, result) in std::iter::once(done)
                    .chain(std::iter::from_fn(|| outs.try_join_next()))
                    .flatten()
                {
                    match result {
                        Ok(()) | Err(SessionError::NotSignedIn { .. }) => batch.push(agent),
                        Err(e) => {
                            tracing::warn!(agent_id = %agent, error = %e, "pool: sign-out at shutdown failed; not releasing the agent")
                        }
                    }
                }
                released += batch.len();
                backend.release(batch).await;
            }
        }
        tracing::info!(
            released,
            kept = owned.len() - released,
            "pool: agents handed over; leaving"
        );
        backend.leave().await;
    }
}
