//! Agent sessions: sign-in and sign-out, Guid adoption, the re-sign-in policy and the registry.
//!
//! Invariants (design §1): one live [`Session`] and one poll loop per agent; sign-in and
//! sign-out for one agent never overlap (a per-agent lifecycle lock); a call refused for its
//! Guid is sent again with each newer Guid the poll loop delivers, or once after signing in
//! again with held credentials; nothing else is retried (see [`Sessions::call`]).

mod gate;
mod params;
#[allow(clippy::module_inception)]
mod session;

pub use gate::SignInGate;
pub use params::SignInParams;
pub use session::{Session, SessionInfo, State};

use crate::events::{End, Hub, PollEnd, PollSettings, Poller};
use crate::gateway::{AgentAuth, Envelope, GatewayClient, GatewayError, Interface};
use crate::telemetry::Metrics;
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How many times one call follows a newer Guid after a Guid refusal (see [`Sessions::call`]).
pub const GUID_RETRIES: u32 = 16;

/// Tunables of the session layer.
#[derive(Debug, Clone)]
pub struct SessionSettings {
    /// Poll loop pacing.
    pub poll: PollSettings,
    /// Events retained per session for resume.
    pub event_window: usize,
    /// After a Guid refusal, the longest wait for the poll loop's next answer to bring a newer
    /// Guid before signing in again (dynamic auth delivers new Guids on poll answers).
    pub auth_retry_wait: Duration,
    /// Keep passwords in memory so the bridge can sign agents in again by itself.
    pub hold_credentials: bool,
    /// Ceiling of the back-off between automatic re-sign-in attempts of pinned agents.
    pub resign_backoff_max: Duration,
}

impl Default for SessionSettings {
    fn default() -> Self {
        Self {
            poll: PollSettings::default(),
            event_window: 4096,
            auth_retry_wait: Duration::from_secs(2),
            hold_credentials: true,
            resign_backoff_max: Duration::from_secs(30),
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
    /// Another instance of the agent pool owns the agent (or none does yet).
    #[error("agent {agent_id} is not owned by this bridge instance{}", owner.as_deref().map(|o| format!("; instance {o} owns it")).unwrap_or_default())]
    NotOwned {
        /// The agent asked for.
        agent_id: String,
        /// The owner's instance name, if known.
        owner: Option<String>,
    },
    /// The bridge is draining.
    #[error("the bridge is shutting down")]
    ShuttingDown,
    /// The gateway refused or failed.
    #[error(transparent)]
    Gateway(#[from] GatewayError),
}

#[derive(Default)]
struct SlotInner {
    session: Option<Arc<Session>>,
    creds: Option<SignInParams>,
    keep_signed_in: bool,
    signing_in: bool,
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

    fn live(&self) -> Option<Arc<Session>> {
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
    gate: OnceLock<Arc<dyn SignInGate>>,
}

/// The registry of agent sessions; cheap to clone, shared by every RPC handler.
#[derive(Clone)]
pub struct Sessions {
    shared: Arc<Shared>,
}

impl Sessions {
    /// An empty registry.
    pub fn new(gateway: GatewayClient, settings: SessionSettings, metrics: Arc<Metrics>) -> Self {
        Self {
            shared: Arc::new(Shared {
                gateway,
                settings,
                metrics,
                slots: Mutex::new(HashMap::new()),
                shutdown: CancellationToken::new(),
                draining: AtomicBool::new(false),
                tasks: TaskTracker::new(),
                gate: OnceLock::new(),
            }),
        }
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

    fn check_gate(&self, agent_id: &str) -> Result<(), SessionError> {
        match self.shared.gate.get().map(|g| g.may_sign_in(agent_id)) {
            Some(Err(owner)) => Err(SessionError::NotOwned {
                agent_id: agent_id.to_owned(),
                owner,
            }),
            _ => Ok(()),
        }
    }

    /// Ends the agent's session here without signing it out and forgets the agent: the
    /// coordinator gave it to another instance, whose sign-in replaces (or replaced) this one.
    pub async fn forget(&self, agent_id: &str) {
        let Ok((slot, _guard)) = self.lock_slot(agent_id, false).await else {
            return;
        };
        let session = slot.lock().session.clone();
        if let Some(session) = session {
            self.end(&session, End::SessionEnded);
        }
        self.remove_if_same(agent_id, &slot);
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

    /// Signs an agent in (`forcelogin` when `params.force`), or returns the session the bridge
    /// already holds for it. Serialised with every other sign-in/out of the same agent.
    pub async fn sign_in(
        &self,
        agent_id: &str,
        params: SignInParams,
        deadline: Option<Instant>,
    ) -> Result<Arc<Session>, SessionError> {
        if self.shared.draining.load(Ordering::Acquire) {
            return Err(SessionError::ShuttingDown);
        }
        let (slot, _guard) = self.lock_slot(agent_id, true).await?;
        if let Some(current) = slot.live() {
            let inner = slot.lock();
            if inner
                .creds
                .as_ref()
                .is_some_and(|held| !held.same_credentials(&params))
            {
                return Err(SessionError::CredentialsMismatch {
                    agent_id: agent_id.to_owned(),
                });
            }
            return Ok(current);
        }
        slot.lock().signing_in = true;
        let result = self.login(&slot, agent_id, &params, false, deadline).await;
        let mut inner = slot.lock();
        inner.signing_in = false;
        match result {
            Ok(session) => {
                if self.shared.settings.hold_credentials {
                    inner.creds = Some(params);
                }
                Ok(session)
            }
            Err(e) => {
                if inner.session.is_none() && !inner.keep_signed_in {
                    drop(inner);
                    self.slots().remove(agent_id);
                }
                Err(e)
            }
        }
    }

    /// Signs in with `params`, installs the new session and starts its poll loop.
    /// Caller holds the slot's lifecycle lock.
    async fn login(
        &self,
        slot: &Arc<Slot>,
        agent_id: &str,
        params: &SignInParams,
        take_over: bool,
        deadline: Option<Instant>,
    ) -> Result<Arc<Session>, SessionError> {
        self.check_gate(agent_id)?;
        let auth = Arc::new(AgentAuth::default());
        let gw = &self.shared.gateway;
        let body = params.body();
        let iface = if params.force {
            Interface::ForceLogin
        } else {
            Interface::Login
        };
        let mut result = gw
            .call(iface, agent_id, &auth, None, Some(body.clone()), deadline)
            .await;
        if take_over && !params.force && matches!(&result, Err(e) if e.retcode() == Some("100-002"))
        {
            // The gateway still counts the agent as signed in under the Guid the bridge lost:
            // it is the bridge's own session, so taking it over is safe.
            result = gw
                .call(
                    Interface::ForceLogin,
                    agent_id,
                    &auth,
                    None,
                    Some(body),
                    deadline,
                )
                .await;
        }
        result?;
        if auth.current().guid.is_none() {
            return Err(GatewayError::OutcomeUnknown(
                "sign-in answer carried no Set-GUID header".into(),
            )
            .into());
        }
        let agent: Arc<str> = Arc::from(agent_id);
        let session_id: Arc<str> = Arc::from(new_session_id().as_str());
        let session = Arc::new(Session {
            hub: Arc::new(Hub::new(
                self.shared.settings.event_window,
                self.shared.metrics.clone(),
                agent.clone(),
                session_id.clone(),
            )),
            agent_id: agent,
            session_id,
            auth,
            signed_in_at: SystemTime::now(),
            last_poll_at: Arc::new(AtomicU64::new(0)),
            polls: Arc::new(tokio::sync::watch::Sender::new(0)),
            cancel: self.shared.shutdown.child_token(),
            signing_out: AtomicBool::new(false),
        });
        let previous = slot.lock().session.replace(session.clone());
        if let Some(previous) = previous {
            self.end(&previous, End::SessionEnded);
        }
        tracing::info!(agent_id, session_id = %session.session_id, "agent signed in");
        self.start_polling(slot.clone(), session.clone());
        Ok(session)
    }

    fn start_polling(&self, slot: Arc<Slot>, session: Arc<Session>) {
        let poller = Poller {
            gateway: self.shared.gateway.clone(),
            agent_id: session.agent_id.clone(),
            auth: session.auth.clone(),
            hub: session.hub.clone(),
            last_poll_at: session.last_poll_at.clone(),
            polls: session.polls.clone(),
            cancel: session.cancel.clone(),
            settings: self.shared.settings.poll.clone(),
            metrics: self.shared.metrics.clone(),
        };
        let this = self.clone();
        self.shared.tasks.spawn(async move {
            let end = poller.run().await;
            this.on_poll_end(slot, session, end).await;
        });
    }

    /// The gateway ended a session by itself (forced sign-out, idle timeout, lost Guid).
    async fn on_poll_end(&self, slot: Arc<Slot>, session: Arc<Session>, end: PollEnd) {
        if end == PollEnd::Cancelled || session.signing_out.load(Ordering::Acquire) {
            return;
        }
        tracing::warn!(agent_id = %session.agent_id, ?end, "the gateway ended the agent's session");
        self.end(&session, End::SessionEnded);
        let _guard = lock_owned(&slot).await;
        let (is_current, has_creds, keep) = {
            let inner = slot.lock();
            (
                inner
                    .session
                    .as_ref()
                    .is_some_and(|s| Arc::ptr_eq(s, &session)),
                inner.creds.is_some(),
                inner.keep_signed_in,
            )
        };
        if !is_current {
            return;
        }
        if keep {
            self.spawn_keep_signed_in(session.agent_id.clone());
        } else if !has_creds {
            self.remove_if_same(&session.agent_id, &slot);
        }
    }

    fn remove_if_same(&self, agent_id: &str, slot: &Arc<Slot>) {
        let mut slots = self.slots();
        if slots.get(agent_id).is_some_and(|s| Arc::ptr_eq(s, slot)) {
            slots.remove(agent_id);
        }
    }

    /// Stops a session's poll loop and ends its streams (idempotent).
    fn end(&self, session: &Session, why: End) {
        session.cancel.cancel();
        session.hub.close(why);
    }

    /// The live session of an agent, signing it in again first if it ended and the bridge holds
    /// its credentials.
    pub async fn current(
        &self,
        agent_id: &str,
        deadline: Option<Instant>,
    ) -> Result<Arc<Session>, SessionError> {
        let slot = self.slot(agent_id)?;
        if let Some(s) = slot.live() {
            return Ok(s);
        }
        self.resign_in(agent_id, None, deadline).await
    }

    /// The live session of an agent, without any gateway call (for watchers).
    pub fn live(&self, agent_id: &str) -> Result<Arc<Session>, SessionError> {
        self.slot(agent_id)?
            .live()
            .ok_or_else(|| not_signed_in(agent_id))
    }

    /// Signs the agent in again with held credentials, replacing `stale` (unless another task
    /// already replaced it, in which case that session is returned).
    async fn resign_in(
        &self,
        agent_id: &str,
        stale: Option<&Arc<Session>>,
        deadline: Option<Instant>,
    ) -> Result<Arc<Session>, SessionError> {
        if self.shared.draining.load(Ordering::Acquire) {
            return Err(SessionError::ShuttingDown);
        }
        let (slot, _guard) = self.lock_slot(agent_id, false).await?;
        let (current, creds) = {
            let inner = slot.lock();
            (inner.session.clone(), inner.creds.clone())
        };
        if let Some(current) = current.as_ref().filter(|c| c.is_live()) {
            if stale.is_none_or(|s| !Arc::ptr_eq(s, current)) {
                return Ok(current.clone());
            }
        }
        let creds = creds.ok_or_else(|| not_signed_in(agent_id))?;
        let take_over = current.as_ref().is_some_and(|c| c.is_live());
        if let Some(current) = &current {
            self.end(current, End::SessionEnded);
        }
        let session = self
            .login(&slot, agent_id, &creds, take_over, deadline)
            .await?;
        if current.is_some() {
            self.shared.metrics.resigned_in();
            tracing::info!(agent_id, "signed the agent in again with held credentials");
        }
        Ok(session)
    }

    /// Calls an operation interface for a signed-in agent, with the Guid retry policy.
    ///
    /// A refusal for the Guid (`100-006`/`000-003`) proves the operation did not take effect, so
    /// the call is sent again: with each newer Guid the poll loop delivers (at most
    /// [`GUID_RETRIES`] times: under fast rotation a retry can itself race the next rotation),
    /// and once after signing in again with held credentials when no newer Guid comes. Every
    /// other failure is returned as is: an operation that may have reached the gateway is never
    /// replayed.
    ///
    /// Returns the session the call was made in (it differs from the one before the call if the
    /// agent had to be signed in again) and the gateway's answer.
    pub async fn call(
        &self,
        agent_id: &str,
        iface: Interface,
        body: Option<Bytes>,
        deadline: Option<Instant>,
    ) -> Result<(Arc<Session>, Envelope), SessionError> {
        let gw = &self.shared.gateway;
        let mut session = self.current(agent_id, deadline).await?;
        let mut guid_retries = 0;
        let mut signed_in_again = false;
        loop {
            let sent = session.auth.current();
            let refusal = match gw
                .call(
                    iface,
                    agent_id,
                    &session.auth,
                    sent.guid.as_ref(),
                    body.clone(),
                    deadline,
                )
                .await
            {
                Ok(envelope) => return Ok((session, envelope)),
                Err(e) if e.is_auth_rejection() => e,
                Err(e) => return Err(e.into()),
            };
            let wait = remaining(self.shared.settings.auth_retry_wait, deadline);
            if guid_retries < GUID_RETRIES && newer_guid(&session, sent.generation, wait).await {
                guid_retries += 1;
                continue;
            }
            if signed_in_again || !slot_has_creds(&*self.slot(agent_id)?) {
                return Err(refusal.into());
            }
            session = self.resign_in(agent_id, Some(&session), deadline).await?;
            signed_in_again = true;
        }
    }

    /// Signs an agent out and forgets it (and its credentials). Its streams complete normally.
    pub async fn sign_out(
        &self,
        agent_id: &str,
        deadline: Option<Instant>,
    ) -> Result<(), SessionError> {
        let (slot, _guard) = self.lock_slot(agent_id, false).await?;
        let session = slot.lock().session.clone();
        if let Some(session) = session.filter(|s| s.is_live()) {
            self.logout(&session, deadline).await?;
        }
        self.remove_if_same(agent_id, &slot);
        Ok(())
    }

    /// `logout` for a live session; on success its streams end with `End::SignedOut`.
    async fn logout(
        &self,
        session: &Arc<Session>,
        deadline: Option<Instant>,
    ) -> Result<(), SessionError> {
        let gw = &self.shared.gateway;
        session.signing_out.store(true, Ordering::Release);
        let sent = session.auth.current();
        let agent_id = &session.agent_id;
        let mut result = gw
            .call(
                Interface::Logout,
                agent_id,
                &session.auth,
                sent.guid.as_ref(),
                None,
                deadline,
            )
            .await;
        if matches!(&result, Err(e) if e.is_auth_rejection())
            && newer_guid(
                session,
                sent.generation,
                remaining(self.shared.settings.auth_retry_wait, deadline),
            )
            .await
        {
            let guid = session.auth.current().guid;
            result = gw
                .call(
                    Interface::Logout,
                    agent_id,
                    &session.auth,
                    guid.as_ref(),
                    None,
                    deadline,
                )
                .await;
        }
        match result {
            // Already out at the gateway: the goal is reached.
            Ok(_) => {}
            Err(e) if matches!(e.retcode(), Some("100-006" | "100-008")) => {}
            Err(e) => {
                session.signing_out.store(false, Ordering::Release);
                return Err(e.into());
            }
        }
        tracing::info!(agent_id = %agent_id, "agent signed out");
        self.end(session, End::SignedOut);
        Ok(())
    }

    /// Signs an agent in now and keeps it signed in (re-sign-in with back-off after the
    /// gateway ends its session) until it is signed out or the bridge stops. For `--agents-file`.
    pub fn keep_signed_in(&self, agent_id: &str, params: SignInParams) {
        let slot = self.slots().entry(Arc::from(agent_id)).or_default().clone();
        {
            let mut inner = slot.lock();
            inner.creds = Some(params);
            inner.keep_signed_in = true;
        }
        self.spawn_keep_signed_in(Arc::from(agent_id));
    }

    fn spawn_keep_signed_in(&self, agent_id: Arc<str>) {
        let this = self.clone();
        let max = self.shared.settings.resign_backoff_max;
        self.shared.tasks.spawn(async move {
            let settings = PollSettings {
                backoff_max: max,
                ..PollSettings::default()
            };
            let mut failures = 0u32;
            loop {
                match this.resign_in(&agent_id, None, None).await {
                    Ok(_) => return,
                    Err(SessionError::ShuttingDown | SessionError::NotSignedIn { .. }) => return,
                    Err(SessionError::NotOwned { .. }) => return this.forget(&agent_id).await,
                    Err(e) => {
                        failures += 1;
                        tracing::warn!(agent_id = %agent_id, error = %e, failures, "automatic sign-in failed; retrying");
                    }
                }
                tokio::select! {
                    () = this.shared.shutdown.cancelled() => return,
                    () = tokio::time::sleep(crate::events::backoff(&settings, failures)) => {}
                }
            }
        });
    }

    /// Whether every agent the bridge must keep signed in currently is.
    pub fn pinned_ready(&self) -> bool {
        self.slots().values().all(|slot| {
            let inner = slot.lock();
            !inner.keep_signed_in || inner.session.as_ref().is_some_and(|s| s.is_live())
        })
    }

    /// A view of one agent's session.
    pub fn info(&self, agent_id: &str) -> Result<SessionInfo, SessionError> {
        let slot = self.slot(agent_id)?;
        Ok(info_of(agent_id, &slot))
    }

    /// A view of `session` itself (not of whatever the agent's slot holds by now), so a caller
    /// is told about the session its own call produced.
    pub fn describe(&self, session: &Session) -> SessionInfo {
        let can_resign_in = self
            .slot(&session.agent_id)
            .is_ok_and(|slot| slot_has_creds(&slot));
        view(session, session.state(), can_resign_in)
    }

    /// How many agents are in each state right now (for the `sessions` gauge at scrape time).
    pub fn count_by_state(&self) -> [(&'static str, i64); 4] {
        let mut counts = [
            State::SigningIn,
            State::SignedIn,
            State::SigningOut,
            State::Ended,
        ]
        .map(|s| (s.label(), 0i64));
        for info in self.list() {
            if let Some(c) = counts.iter_mut().find(|(l, _)| *l == info.state.label()) {
                c.1 += 1;
            }
        }
        counts
    }

    /// Whether the bridge holds no agent at all (readiness then probes the gateway itself).
    pub fn is_empty(&self) -> bool {
        self.slots().is_empty()
    }

    /// Views of every agent the bridge holds, ordered by agent id.
    pub fn list(&self) -> Vec<SessionInfo> {
        let slots: Vec<(Arc<str>, Arc<Slot>)> = self
            .slots()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut out: Vec<SessionInfo> = slots.iter().map(|(id, s)| info_of(id, s)).collect();
        out.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
        out
    }

    /// Ends every event stream with `End::Shutdown` and refuses new sign-ins; sessions stay
    /// usable for unary calls still in flight. First step of a drain.
    pub fn end_streams(&self) {
        self.shared.draining.store(true, Ordering::Release);
        for session in self.live_sessions() {
            session.hub.close(End::Shutdown);
        }
    }

    /// Signs out every live session (in parallel) and stops all poll loops.
    pub async fn sign_out_all(&self, deadline: Option<Instant>) {
        let sessions = self.live_sessions();
        let logouts = sessions.iter().map(|s| async move {
            if let Err(e) = self.logout(s, deadline).await {
                tracing::warn!(agent_id = %s.agent_id, error = %e, "sign-out at shutdown failed");
            }
        });
        futures::future::join_all(logouts).await;
        self.stop();
    }

    /// Stops every poll loop and background task without signing out.
    pub fn stop(&self) {
        self.shared.shutdown.cancel();
        self.shared.tasks.close();
    }

    /// Waits until every background task (poll loops, re-sign-ins) has finished.
    pub async fn wait_stopped(&self) {
        self.shared.tasks.wait().await;
    }

    fn live_sessions(&self) -> Vec<Arc<Session>> {
        let slots: Vec<Arc<Slot>> = self.slots().values().cloned().collect();
        slots.iter().filter_map(|s| s.live()).collect()
    }
}

fn info_of(agent_id: &str, slot: &Slot) -> SessionInfo {
    let inner = slot.lock();
    let can_resign_in = inner.creds.is_some();
    match &inner.session {
        Some(s) => {
            let state = if inner.signing_in {
                State::SigningIn
            } else {
                s.state()
            };
            view(s, state, can_resign_in)
        }
        None => SessionInfo {
            agent_id: agent_id.to_owned(),
            session_id: String::new(),
            state: if inner.signing_in {
                State::SigningIn
            } else {
                State::Ended
            },
            signed_in_at: None,
            watchers: 0,
            last_poll_at_ms: 0,
            last_sequence: 0,
            can_resign_in,
        },
    }
}

fn view(s: &Session, state: State, can_resign_in: bool) -> SessionInfo {
    SessionInfo {
        agent_id: s.agent_id.to_string(),
        session_id: s.session_id.to_string(),
        state,
        signed_in_at: Some(s.signed_in_at),
        watchers: s.hub.watchers(),
        last_poll_at_ms: s.last_poll_at.load(Ordering::Relaxed),
        last_sequence: s.hub.last_sequence(),
        can_resign_in,
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

/// `wait`, shortened to what is left before `deadline`.
fn remaining(wait: Duration, deadline: Option<Instant>) -> Duration {
    deadline.map_or(wait, |d| {
        wait.min(d.saturating_duration_since(Instant::now()))
    })
}

/// After a Guid refusal: waits (at most `wait`) until either a Guid newer than `generation`
/// arrives, or the next poll is answered without one. True if a newer Guid is there.
///
/// In dynamic authentication the gateway refuses the old Guid as soon as it has handed the new
/// one to the poll, which the bridge may not have read yet; the poll answer in flight settles
/// whether the Guid was rotated (retry with the new one) or is dead (sign in again).
async fn newer_guid(session: &Session, generation: u64, wait: Duration) -> bool {
    let mut guids = session.auth.subscribe();
    let mut polls = session.polls.subscribe();
    polls.borrow_and_update();
    let settled = async {
        tokio::select! {
            _ = guids.wait_for(|s| s.generation != generation) => {}
            _ = polls.changed() => {}
        }
    };
    let _ = tokio::time::timeout(wait, settled).await;
    session.auth.current().generation != generation
}

fn new_session_id() -> String {
    format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..))
}
