//! Agent sessions: the registry of agents the bridge holds and their lifecycle.
//!
//! Invariants (design §1): one live [`Session`] and one poll loop per agent; sign-in and
//! sign-out for one agent never overlap (a per-agent lifecycle lock); a call refused for its
//! Guid is sent again with each newer Guid the poll loop delivers, or once after signing in
//! again with held credentials; nothing else is retried (see [`Sessions::call`]).
//!
//! Where things are:
//! - this file: the registry (one [`Slot`] per agent) and the settings;
//! - `ending.rs`: why a session ended, and the re-sign-in rule (when `forcelogin` is allowed);
//! - `lifecycle.rs`: sign-in, the end of a poll loop, signing in again, sign-out;
//! - `guid_retry.rs`: the Guid retry policy of operation calls;
//! - `keeper.rs`: keep-signed-in for the agents file;
//! - `views.rs`: what `GetSession`, `ListSessions`, readiness and metrics see;
//! - `drain.rs`: the session layer's part of a drain;
//! - `reaper.rs`: forgetting agents whose session ended and that nothing needs any more.

mod drain;
mod ending;
mod gate;
mod guid_retry;
mod keeper;
mod lifecycle;
mod params;
mod reaper;
#[allow(clippy::module_inception)]
mod session;
mod views;

pub use ending::{EndReason, Ended, Orphan, OrphanEnd};
pub use gate::{GateRefusal, SignInGate};
pub use guid_retry::GUID_RETRIES;
pub use params::SignInParams;
pub use session::{Session, SessionInfo, State};
pub use views::SessionHandOff;

use crate::events::{EventBudget, HeartbeatSettings, PollSettings};
use crate::gateway::{GatewayClient, GatewayError};
use crate::readiness::PinnedAgents;
use crate::telemetry::Metrics;
use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How the events of the bridge's sessions reach it (`--events`).
#[derive(Debug, Clone, Default)]
pub enum EventMode {
    /// Each session long-polls the gateway (one held request per signed-in agent).
    #[default]
    Poll,
    /// The gateway POSTs events to the bridge's callback; each session sends a heartbeat.
    Push(PushSettings),
}

/// Push mode settings: per bridge, handed to every sign-in. This is the seam for the agent
/// pool: each instance has its own `callback_url` (the address the gateway can reach *it* at),
/// so a hand-over's sign-in by the new owner replaces the URL at the gateway.
#[derive(Debug, Clone)]
pub struct PushSettings {
    /// `callBackUri` sent at sign-in (https, ≤ 200 characters; validated by the config).
    pub callback_url: Arc<str>,
    /// Heartbeat pacing.
    pub heartbeat: HeartbeatSettings,
}

/// Tunables of the session layer.
#[derive(Debug, Clone)]
pub struct SessionSettings {
    /// Where events come from.
    pub events: EventMode,
    /// Poll loop pacing.
    pub poll: PollSettings,
    /// Events retained per session for resume.
    pub event_window: usize,
    /// The bridge-wide byte and age bound of retained events, shared by all sessions.
    pub event_budget: EventBudget,
    /// After a Guid refusal, the longest wait for the poll loop's next answer to bring a newer
    /// Guid before signing in again (dynamic auth delivers new Guids on poll answers).
    pub auth_retry_wait: Duration,
    /// Keep passwords in memory so the bridge can sign agents in again by itself.
    pub hold_credentials: bool,
    /// Ceiling of the back-off between automatic re-sign-in attempts of pinned agents.
    pub resign_backoff_max: Duration,
    /// Sign-ins the bridge starts by itself (pinned agents at start, re-sign-in after the
    /// gateway ended sessions) that may be in progress at once, so 10,000 pinned agents do
    /// not reach the gateway as 10,000 simultaneous logins.
    pub sign_in_concurrency: usize,
    /// The longest one call may take, Guid retries and a re-sign-in included, when the client
    /// set no deadline.
    pub call_budget: Duration,
    /// The gateway's idle sign-out (vendor `MAXTIME`): a session the bridge lost track of is
    /// surely gone this long after the last request sent with its Guid, so a `100-002` after
    /// that is another client's session, never the bridge's own (see [`EndReason`]).
    pub gateway_idle_timeout: Duration,
    /// How long an agent whose session ended (and that no keep-signed-in needs) is kept for an
    /// automatic re-sign-in by its next call, counted from its session's last request; at
    /// least `gateway_idle_timeout`, so a take-over proof is never forgotten while it is valid.
    pub dead_slot_ttl: Duration,
}

impl Default for SessionSettings {
    fn default() -> Self {
        Self {
            events: EventMode::Poll,
            poll: PollSettings::default(),
            event_window: 4096,
            event_budget: EventBudget::default(),
            auth_retry_wait: Duration::from_secs(2),
            hold_credentials: true,
            resign_backoff_max: Duration::from_secs(30),
            sign_in_concurrency: 16,
            call_budget: Duration::from_secs(60),
            gateway_idle_timeout: Duration::from_secs(120),
            dead_slot_ttl: Duration::from_secs(600),
        }
    }
}

/// Why a session operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The bridge holds no session for the agent (and cannot sign it in by itself).
    #[error("agent {agent_id} is not signed in through this bridge; call SignIn first")]
    NotSignedIn {
        /// The agent asked for.
        agent_id: String,
    },
    /// The agent is held with other credentials; handing its session over would bypass them.
    #[error("agent {agent_id} is already signed in through this bridge with other credentials")]
    CredentialsMismatch {
        /// The agent asked for.
        agent_id: String,
    },
    /// Another instance of the agent pool owns the agent.
    #[error("agent {agent_id} is not owned by this bridge instance; instance {owner} owns it")]
    NotOwned {
        /// The agent asked for.
        agent_id: String,
        /// The owner's instance name.
        owner: String,
    },
    /// The agent pool cannot tell now whether this instance may sign the agent in (its
    /// coordinator is unreachable, it has not joined yet, or the agent is moving): nothing was
    /// sent, and a retry may succeed.
    #[error("agent {agent_id}: the agent pool cannot confirm this instance owns it now: {detail}")]
    PoolUnsure {
        /// The agent asked for.
        agent_id: String,
        /// Stable reason (`POOL_…`).
        reason: &'static str,
        /// The coordinator's endpoint and the cause.
        detail: String,
    },
    /// The bridge is draining.
    #[error("the bridge is shutting down")]
    ShuttingDown,
    /// A call without a client deadline used up [`SessionSettings::call_budget`] waiting for its
    /// Guid refusals to settle; it stopped between attempts, so nothing is in flight.
    #[error("the call used up the bridge's {budget:?} budget for calls without a deadline while the gateway kept refusing its Guid; the last attempt was refused, so the operation did not take effect (set a deadline to choose the wait)")]
    CallBudgetExceeded {
        /// The budget (`SessionSettings::call_budget`).
        budget: Duration,
    },
    /// The gateway refused or failed.
    #[error(transparent)]
    Gateway(#[from] GatewayError),
}

#[derive(Default)]
struct SlotInner {
    session: Option<Arc<Session>>,
    creds: Option<SignInParams>,
    /// What a SignIn must match to get the held session (kept without `creds` too).
    creds_hash: Option<params::CredentialsHash>,
    keep_signed_in: bool,
    /// A keep-signed-in loop runs for the slot (at most one; see `keeper.rs`).
    keeper: bool,
    signing_in: bool,
    /// How the last session ended (`None` while one runs or before the first), with the
    /// orphan signing in again must log out first (see [`Ended`]).
    ended: Option<Ended>,
}

/// Everything the bridge knows about one agent; lives from its first sign-in to its sign-out.
#[derive(Default)]
struct Slot {
    lifecycle: Arc<tokio::sync::Mutex<()>>,
    inner: Mutex<SlotInner>,
}

impl Slot {
    fn lock(&self) -> std::sync::MutexGuard<'_, SlotInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The slot's session if it still runs.
    fn running(&self) -> Option<Arc<Session>> {
        self.lock().session.clone().filter(|s| s.is_live())
    }
}

struct Shared {
    gateway: GatewayClient,
    settings: SessionSettings,
    metrics: Arc<Metrics>,
    slots: Mutex<HashMap<Arc<str>, Arc<Slot>>>,
    shutdown: CancellationToken,
    draining: AtomicBool,
    tasks: TaskTracker,
    /// Pinned agents' states for readiness (kept up to date here, read in O(1) there).
    pinned: Arc<PinnedAgents>,
    /// The coordinator every sign-in must pass (the agent pool), if any.
    gate: OnceLock<Arc<dyn SignInGate>>,
    /// Permits for background sign-ins (`settings.sign_in_concurrency`).
    background_sign_ins: Semaphore,
}

/// The registry of agent sessions; cheap to clone, shared by every RPC handler.
#[derive(Clone)]
pub struct Sessions {
    shared: Arc<Shared>,
}

impl Sessions {
    /// An empty registry, with its reaper running (see `reaper.rs`; needs a Tokio runtime).
    pub fn new(gateway: GatewayClient, settings: SessionSettings, metrics: Arc<Metrics>) -> Self {
        metrics.set_retained_event_budget(settings.event_budget.max_bytes());
        let sessions = Self {
            shared: Arc::new(Shared {
                gateway,
                metrics,
                slots: Mutex::new(HashMap::new()),
                shutdown: CancellationToken::new(),
                draining: AtomicBool::new(false),
                tasks: TaskTracker::new(),
                pinned: Arc::default(),
                gate: OnceLock::new(),
                background_sign_ins: Semaphore::new(settings.sign_in_concurrency),
                settings,
            }),
        };
        sessions.spawn_reaper();
        sessions
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Arc<Slot>>> {
        self.shared.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn slot(&self, agent_id: &str) -> Result<Arc<Slot>, SessionError> {
        let slot = self.slots().get(agent_id).cloned();
        match slot {
            Some(slot) => Ok(slot),
            None => Err(self
                .check_gate(agent_id)
                .err()
                .unwrap_or_else(|| not_signed_in(agent_id))),
        }
    }

    /// Installs the coordinator every later sign-in must pass (the agent pool); once.
    pub fn set_gate(&self, gate: Arc<dyn SignInGate>) {
        let _ = self.shared.gate.set(gate);
    }

    /// Asks the coordinator (if any) whether the agent may be signed in here; `Ok` carries the
    /// instant by which a forced sign-in must be answered (see [`SignInGate::may_sign_in`]).
    fn check_gate(&self, agent_id: &str) -> Result<Option<std::time::Instant>, SessionError> {
        let Some(gate) = self.shared.gate.get() else {
            return Ok(None);
        };
        gate.may_sign_in(agent_id).map_err(|refusal| match refusal {
            GateRefusal::Owner(owner) => SessionError::NotOwned {
                agent_id: agent_id.to_owned(),
                owner,
            },
            GateRefusal::Unsure { reason, detail } => SessionError::PoolUnsure {
                agent_id: agent_id.to_owned(),
                reason,
                detail,
            },
        })
    }

    /// Ends the agent's session here without signing it out and forgets the agent: the
    /// coordinator gave it to another instance, whose sign-in replaces (or replaced) this one.
    pub async fn forget(&self, agent_id: &str) {
        let Ok((slot, _guard)) = self.lock_slot(agent_id, false).await else {
            self.shared.pinned.remove(agent_id);
            return;
        };
        let session = slot.lock().session.clone();
        if let Some(session) = session {
            self.retire(&session, crate::events::End::SessionEnded);
        }
        self.remove_if_same(agent_id, &slot);
        self.shared.pinned.remove(agent_id);
    }

    /// Whether the agent has a running session here (the coordinator is not consulted).
    pub fn has_running_session(&self, agent_id: &str) -> bool {
        let slot = self.slots().get(agent_id).cloned();
        slot.is_some_and(|s| s.running().is_some())
    }

    /// Whether a keep-signed-in loop is at work on the agent (signing it in again).
    pub fn is_kept(&self, agent_id: &str) -> bool {
        let slot = self.slots().get(agent_id).cloned();
        slot.is_some_and(|s| s.lock().keeper)
    }

    /// Forgets the agent if it has no running session (keep-signed-in giving up on an agent the
    /// coordinator does not let it sign in): unlike [`Sessions::forget`], a session signed in
    /// meanwhile by the agent's owner is left alone.
    pub(super) async fn forget_idle(&self, agent_id: &str) {
        let Ok((slot, _guard)) = self.lock_slot(agent_id, false).await else {
            self.shared.pinned.remove(agent_id);
            return;
        };
        if slot.running().is_none() {
            self.remove_if_same(agent_id, &slot);
            self.shared.pinned.remove(agent_id);
        }
    }

    /// A permit for one background sign-in (see [`SessionSettings::sign_in_concurrency`]):
    /// sign-ins the agent pool starts by itself share the bound with keep-signed-in's.
    pub async fn background_sign_in_permit(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        self.shared.background_sign_ins.acquire().await.ok()
    }

    /// Asks the gateway for any answer (see [`GatewayClient::probe`]): whether this bridge can
    /// reach it at all (address, TLS trust), without signing anything in.
    pub async fn probe_gateway(&self) -> Result<(), String> {
        self.shared.gateway.probe().await
    }

    /// Locks the agent's lifecycle, creating its slot if needed, and makes sure the slot is
    /// still registered once the lock is held (a sign-out may have removed it meanwhile).
    async fn lock_slot(
        &self,
        agent_id: &str,
        create: bool,
    ) -> Result<(Arc<Slot>, tokio::sync::OwnedMutexGuard<()>), SessionError> {
        loop {
            let slot = if create {
                self.slots().entry(Arc::from(agent_id)).or_default().clone()
            } else {
                self.slot(agent_id)?
            };
            let guard = lock_owned(&slot).await;
            let current = self.slots().get(agent_id).cloned();
            if current.is_some_and(|c| Arc::ptr_eq(&c, &slot)) {
                return Ok((slot, guard));
            }
        }
    }

    fn remove_if_same(&self, agent_id: &str, slot: &Arc<Slot>) {
        let mut slots = self.slots();
        if slots.get(agent_id).is_some_and(|s| Arc::ptr_eq(s, slot)) {
            slots.remove(agent_id);
        }
    }
}

fn slot_has_creds(slot: &Slot) -> bool {
    slot.lock().creds.is_some()
}

fn not_signed_in(agent_id: &str) -> SessionError {
    SessionError::NotSignedIn {
        agent_id: agent_id.to_owned(),
    }
}

async fn lock_owned(slot: &Slot) -> tokio::sync::OwnedMutexGuard<()> {
    slot.lifecycle.clone().lock_owned().await
}

fn new_session_id() -> String {
    format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..))
}
