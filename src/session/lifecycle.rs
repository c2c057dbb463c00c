//! The sign-in lifecycle of one agent: sign-in, the poll loop and what its end means, signing
//! in again, and sign-out. Every step holds the agent's lifecycle lock, so sign-in and sign-out
//! of one agent never overlap; why a session ended is recorded in its slot and decides how the
//! agent is signed in again (see [`EndReason`]).

use super::ending::{Orphan, OrphanEnd};
use super::guid_retry::{remaining, settle_refusal, Settled};
use super::{
    lock_owned, new_session_id, not_signed_in, params::CredentialsHash, EndReason, Ended,
    EventMode, Session, SessionError, Sessions, SignInParams, Slot,
};
use crate::events::{End, Heartbeat, Hub, PollEnd, Poller, PushInbox, SessionLink};
use crate::gateway::{AgentAuth, GatewayError, Interface};
use crate::readiness::Pinned;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

impl Sessions {
    /// Signs an agent in (`forcelogin` when `params.force`: the caller's explicit decision, the
    /// only one the bridge ever sends), or returns the session the bridge already holds for it.
    /// Serialised with every other sign-in/out of the same agent.
    pub async fn sign_in(
        &self,
        agent_id: &str,
        params: SignInParams,
        deadline: Option<Instant>,
    ) -> Result<Arc<Session>, SessionError> {
        self.sign_in_replacing(agent_id, params, None, deadline)
            .await
            .0
    }

    /// [`Sessions::sign_in`] for an agent whose last session may still be held at the gateway
    /// under `orphan` (the agent pool's hand-off from a crashed or frozen holder): that session
    /// is logged out with its own Guid first, then the agent is signed in plainly. Also returns
    /// what the logout showed (`None` when no orphan was logged out).
    pub async fn sign_in_replacing(
        &self,
        agent_id: &str,
        params: SignInParams,
        orphan: Option<Orphan>,
        deadline: Option<Instant>,
    ) -> (Result<Arc<Session>, SessionError>, Option<OrphanEnd>) {
        if self.shared.draining.load(Ordering::Acquire) {
            return (Err(SessionError::ShuttingDown), None);
        }
        let (slot, _guard) = match self.lock_slot(agent_id, true).await {
            Ok(locked) => locked,
            Err(e) => return (Err(e), None),
        };
        if let Some(current) = slot.running() {
            let inner = slot.lock();
            if inner
                .creds_hash
                .as_ref()
                .is_some_and(|held| !held.matches(&params))
            {
                return (
                    Err(SessionError::CredentialsMismatch {
                        agent_id: agent_id.to_owned(),
                    }),
                    None,
                );
            }
            return (Ok(current), None);
        }
        let orphans: Vec<Orphan> = {
            let inner = slot.lock();
            let own = inner.ended.as_ref().and_then(|e| e.orphan.clone());
            own.into_iter().chain(orphan).collect()
        };
        let signing_in = SigningIn::start(&slot);
        let (result, orphan_end) = self
            .login(&slot, agent_id, &params, orphans, deadline)
            .await;
        signing_in.done();
        let mut inner = slot.lock();
        let result = match result {
            Ok(session) => {
                inner.creds_hash = Some(CredentialsHash::of(&params));
                if self.shared.settings.hold_credentials {
                    inner.creds = Some(params);
                }
                Ok(session)
            }
            Err(e) => {
                // A slot that never had a session goes, unless it keeps an orphan to log out
                // (with its own Guid) on the next attempt.
                if inner.session.is_none()
                    && !inner.keep_signed_in
                    && inner.ended.as_ref().is_none_or(|e| e.orphan.is_none())
                {
                    drop(inner);
                    self.slots().remove(agent_id);
                }
                Err(e)
            }
        };
        (result, orphan_end)
    }

    /// Logs out each orphan with its own Guid, then signs in with `params` (a plain `login`
    /// unless `params.force`), installs the new session and starts its poll loop. Caller holds
    /// the slot's lifecycle lock. Returns what the orphans' logouts showed (the most telling).
    async fn login(
        &self,
        slot: &Arc<Slot>,
        agent_id: &str,
        params: &SignInParams,
        orphans: Vec<Orphan>,
        deadline: Option<Instant>,
    ) -> (Result<Arc<Session>, SessionError>, Option<OrphanEnd>) {
        // A forced sign-in must land while the coordinator's lease surely lasts: one landing
        // after it could kick the agent's next owner. A plain `login` cannot kick anyone.
        let force_by = match self.check_gate(agent_id) {
            Ok(f) => f,
            Err(e) => return (Err(e), None),
        };
        let mut orphan_end = None;
        let mut unresolved = None;
        for orphan in orphans {
            let end = self.end_orphan(agent_id, &orphan, deadline).await;
            if end == OrphanEnd::Unknown {
                unresolved = Some(orphan);
            }
            orphan_end = Some(match (orphan_end, end) {
                (Some(OrphanEnd::LoggedOut), _) | (_, OrphanEnd::LoggedOut) => OrphanEnd::LoggedOut,
                (Some(OrphanEnd::Unknown), _) | (_, OrphanEnd::Unknown) => OrphanEnd::Unknown,
                _ => OrphanEnd::NotOurs,
            });
        }
        let auth = Arc::new(AgentAuth::default());
        // Push mode: a fresh token per session, so a callback carrying an older session's token
        // is refused (the gateway replaces the callback and token at every sign-in).
        let push = match &self.shared.settings.events {
            EventMode::Poll => None,
            EventMode::Push(p) => Some((
                format!("{}/{agent_id}", p.callback_url),
                Arc::new(PushInbox::new()),
            )),
        };
        let (iface, call_deadline) = if params.force {
            let forced_deadline = match (deadline, force_by) {
                (Some(d), Some(f)) => Some(d.min(f)),
                (d, f) => d.or(f),
            };
            (Interface::ForceLogin, forced_deadline)
        } else {
            (Interface::Login, deadline)
        };
        let result = self
            .shared
            .gateway
            .call(
                iface,
                agent_id,
                &auth,
                None,
                Some(
                    params.body(
                        push.as_ref()
                            .map(|(url, inbox)| (url.as_str(), inbox.token())),
                    ),
                ),
                call_deadline,
            )
            .await;
        let result = result.and_then(|_| match auth.current().guid {
            Some(_) => Ok(()),
            None => Err(GatewayError::OutcomeUnknown(
                "sign-in answer carried no Set-GUID header".into(),
            )),
        });
        if let Err(e) = result {
            let mut inner = slot.lock();
            let reason = if e.retcode() == Some("100-002") {
                // Another client holds the agent (or the bridge's own orphan whose Guid it
                // never saw, until the gateway's idle sign-out): never forced from here.
                Some(EndReason::HeldElsewhere)
            } else if may_have_signed_in(&e) {
                // The gateway may now hold the agent under a Guid the bridge never saw: nothing
                // the bridge may send can end that session; the idle sign-out will.
                Some(EndReason::SignInAnswerLost)
            } else {
                inner.ended.as_ref().map(|e| e.reason)
            };
            inner.ended = reason.map(|reason| Ended {
                reason,
                orphan: unresolved,
                at: Instant::now(),
            });
            return (Err(e.into()), orphan_end);
        }
        let agent: Arc<str> = Arc::from(agent_id);
        let session_id: Arc<str> = Arc::from(new_session_id().as_str());
        let session = Arc::new(Session {
            hub: Arc::new(Hub::new(
                self.shared.settings.event_window,
                &self.shared.settings.event_budget,
                self.shared.metrics.clone(),
                agent.clone(),
                session_id.clone(),
            )),
            agent_id: agent,
            session_id,
            auth,
            push: push.map(|(_, inbox)| inbox),
            signed_in_at: SystemTime::now(),
            last_poll_at: Arc::new(AtomicU64::new(0)),
            polls: Arc::new(tokio::sync::watch::Sender::new(0)),
            cancel: self.shared.shutdown.child_token(),
            signing_out: AtomicBool::new(false),
            signing_out_as: std::sync::Mutex::new(None),
        });
        let previous = {
            let mut inner = slot.lock();
            inner.ended = None;
            inner.session.replace(session.clone())
        };
        if let Some(previous) = previous {
            self.retire(&previous, End::SessionEnded);
        }
        tracing::info!(agent_id, session_id = %session.session_id, "agent signed in");
        self.start_event_source(slot.clone(), session.clone());
        (Ok(session), orphan_end)
    }

    /// Ends a session the gateway may still hold for the bridge, with a `logout` carrying that
    /// session's own Guid and cookies: it can end that session only, never another client's.
    async fn end_orphan(
        &self,
        agent_id: &str,
        orphan: &Orphan,
        deadline: Option<Instant>,
    ) -> OrphanEnd {
        let guid = orphan.0.current().guid;
        let result = self
            .shared
            .gateway
            .call(
                Interface::Logout,
                agent_id,
                &orphan.0,
                guid.as_ref(),
                None,
                deadline,
            )
            .await;
        let end = match &result {
            Ok(_) => OrphanEnd::LoggedOut,
            Err(e) if e.is_auth_rejection() || e.retcode() == Some("100-008") => OrphanEnd::NotOurs,
            Err(_) => OrphanEnd::Unknown,
        };
        tracing::info!(
            agent_id,
            outcome = end.label(),
            "logged out a session the gateway may have held for the bridge, with its own Guid"
        );
        end
    }

    /// Starts the session's event source: the poll loop, or in push mode the heartbeat loop
    /// (events then arrive at the callback server). Both end the same way.
    fn start_event_source(&self, slot: Arc<Slot>, session: Arc<Session>) {
        let link = SessionLink {
            gateway: self.shared.gateway.clone(),
            agent_id: session.agent_id.clone(),
            auth: session.auth.clone(),
            last_poll_at: session.last_poll_at.clone(),
            polls: session.polls.clone(),
            cancel: session.cancel.clone(),
            metrics: self.shared.metrics.clone(),
        };
        let this = self.clone();
        match (&self.shared.settings.events, &session.push) {
            (EventMode::Push(push), Some(inbox)) => {
                let heartbeat = Heartbeat {
                    link,
                    inbox: inbox.clone(),
                    settings: push.heartbeat.clone(),
                };
                self.shared.tasks.spawn(async move {
                    let end = heartbeat.run().await;
                    this.on_poll_end(slot, session, end).await;
                });
            }
            _ => {
                let poller = Poller {
                    link,
                    hub: session.hub.clone(),
                    settings: self.shared.settings.poll.clone(),
                };
                self.shared.tasks.spawn(async move {
                    let end = poller.run().await;
                    this.on_poll_end(slot, session, end).await;
                });
            }
        }
    }

    /// The poll loop ended: records why, ends the session's streams, and signs the agent in
    /// again where that is the rule (keep-signed-in, or the gateway asked for it).
    async fn on_poll_end(&self, slot: Arc<Slot>, session: Arc<Session>, end: PollEnd) {
        let reason = match end {
            PollEnd::Cancelled => return,
            // Even while signing out: the gateway may still hold the session under a Guid the
            // bridge never saw (reachable only through the older Guid's overlap, if any).
            PollEnd::GuidRefused {
                after_lost_answer: true,
            } => EndReason::AnswerLost,
            // The gateway confirms the sign-out in progress (its answer may yet be lost).
            _ if session.signing_out.load(Ordering::Acquire) => EndReason::SignedOut,
            PollEnd::SignedOutByGateway => EndReason::SignedOutByGateway,
            PollEnd::GuidRefused {
                after_lost_answer: false,
            } => EndReason::GuidRefused,
            PollEnd::SignInAgain(_) => EndReason::SignInAgain,
        };
        let is_current = {
            let mut inner = slot.lock();
            let is_current = inner
                .session
                .as_ref()
                .is_some_and(|s| Arc::ptr_eq(s, &session));
            if is_current {
                inner.ended = Some(Ended {
                    reason,
                    orphan: reason
                        .may_still_hold()
                        .then(|| Orphan::of(&session.auth))
                        .flatten(),
                    at: Instant::now(),
                });
            }
            is_current
        };
        if session.signing_out.load(Ordering::Acquire) {
            // The sign-out in progress decides what follows (see `sign_out`).
            tracing::info!(agent_id = %session.agent_id, reason = reason.label(), "the poll loop ended during the sign-out");
            let end = session
                .signing_out_as
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            self.retire(&session, end.unwrap_or(End::SignedOut));
            return;
        }
        if matches!(reason, EndReason::GuidRefused | EndReason::AnswerLost) {
            self.shared.metrics.poll_error("not_signed_in");
        }
        tracing::warn!(agent_id = %session.agent_id, ?end, reason = reason.label(), "the gateway ended the agent's session");
        self.retire(&session, End::SessionEnded);
        if !is_current {
            return;
        }
        let _guard = lock_owned(&slot).await;
        let (still_current, has_creds, keep) = {
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
        if !still_current {
            return;
        }
        if keep {
            self.shared.pinned.set(
                &session.agent_id,
                Pinned::Down(format!(
                    "the gateway ended its session ({}); signing in again",
                    reason.label()
                )),
            );
        }
        if keep || (has_creds && reason.wants_sign_in_again()) {
            self.spawn_keep_signed_in(session.agent_id.clone(), keep);
        } else if !has_creds {
            self.remove_if_same(&session.agent_id, &slot);
        }
    }

    /// Stops a session's poll loop and ends its streams (idempotent).
    pub(super) fn retire(&self, session: &Session, why: End) {
        session.cancel.cancel();
        session.hub.close(why);
    }

    /// The session an operation call runs in: the running one, or, if it ended and the bridge
    /// holds the credentials, a new one signed in first (an operation needs a session, and the
    /// caller's deadline bounds the sign-in). Watchers use [`Sessions::running_session`].
    pub async fn session_for_call(
        &self,
        agent_id: &str,
        deadline: Option<Instant>,
    ) -> Result<Arc<Session>, SessionError> {
        let slot = self.slot(agent_id)?;
        if let Some(s) = slot.running() {
            return Ok(s);
        }
        self.resign_in(agent_id, None, deadline).await
    }

    /// The agent's running session as it is, without any gateway call: a watch never signs an
    /// agent in (it only follows a session some call made), unlike
    /// [`Sessions::session_for_call`].
    pub fn running_session(&self, agent_id: &str) -> Result<Arc<Session>, SessionError> {
        self.slot(agent_id)?
            .running()
            .ok_or_else(|| not_signed_in(agent_id))
    }

    /// Signs the agent in again with held credentials, replacing `stale` (unless another task
    /// already replaced it, in which case that session is returned). `stale` comes with why it
    /// is given up while its poll loop still runs; it keeps running until the new sign-in
    /// succeeded (draining and the gate are checked first).
    pub(super) async fn resign_in(
        &self,
        agent_id: &str,
        stale: Option<(&Arc<Session>, EndReason)>,
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
            if stale.is_none_or(|(s, _)| !Arc::ptr_eq(s, current)) {
                return Ok(current.clone());
            }
        }
        let mut creds = creds.ok_or_else(|| not_signed_in(agent_id))?;
        // The gate before anything changes: a refusal leaves the running session as it is.
        self.check_gate(agent_id)?;
        // A session still running is replaced: the gateway still holds it, so it is logged out
        // with its own Guid first (a plain `login` would meet `100-002`). Otherwise the orphan
        // the last ending left, if any. The current session is not retired here: `login`
        // replaces it only once the new one is signed in, and its poll loop learns from the
        // gateway whether the logout ended it.
        let orphan = match stale.filter(|_| current.as_ref().is_some_and(|c| c.is_live())) {
            Some((stale, why)) => {
                tracing::info!(
                    agent_id,
                    reason = why.label(),
                    "replacing the agent's session"
                );
                Orphan::of(&stale.auth)
            }
            None => slot.lock().ended.as_ref().and_then(|e| e.orphan.clone()),
        };
        // `force` is for the first sign-in only (an agents-file entry's explicit choice):
        // signing in again never kicks another client.
        creds.force &= current.is_none() && slot.lock().ended.is_none();
        let session = self
            .login(
                &slot,
                agent_id,
                &creds,
                orphan.into_iter().collect(),
                deadline,
            )
            .await
            .0?;
        if current.is_some() {
            self.shared.metrics.resigned_in();
            tracing::info!(agent_id, "signed the agent in again with held credentials");
        }
        Ok(session)
    }

    /// Signs an agent out and forgets it (and its credentials). Its streams complete normally.
    pub async fn sign_out(
        &self,
        agent_id: &str,
        deadline: Option<Instant>,
    ) -> Result<(), SessionError> {
        self.sign_out_ending(agent_id, deadline, End::SignedOut)
            .await
    }

    /// [`Self::sign_out`] for a pool hand-over to instance `to`: the agent's watch streams end
    /// with `AGENT_MOVED` naming it, not with a clean end as after a deliberate sign-out.
    pub async fn sign_out_moving(
        &self,
        agent_id: &str,
        deadline: Option<Instant>,
        to: &str,
    ) -> Result<(), SessionError> {
        let end = End::Moved { to: Arc::from(to) };
        self.sign_out_ending(agent_id, deadline, end).await
    }

    async fn sign_out_ending(
        &self,
        agent_id: &str,
        deadline: Option<Instant>,
        end: End,
    ) -> Result<(), SessionError> {
        let (slot, _guard) = match self.lock_slot(agent_id, false).await {
            // No slot here (another instance owns the agent, or the pool cannot tell now): this
            // instance holds nothing, so the goal of a sign-out is reached here (SignOut is
            // idempotent), nothing is sent.
            Err(SessionError::NotOwned { .. } | SessionError::PoolUnsure { .. }) => {
                return Err(not_signed_in(agent_id))
            }
            locked => locked?,
        };
        let session = slot.lock().session.clone();
        if let Some(session) = session.filter(|s| s.is_live()) {
            // What its poll loop records meanwhile decides what follows: `AnswerLost` when the
            // poll was refused after a lost answer ("not signed in" for a Guid whose successor
            // may have been lost does not show the agent out). A refusal the poll loop did not
            // confirm is taken as out: a lost answer alone is no proof (a person may have
            // kicked the bridge meanwhile).
            self.logout(&session, deadline, end).await?;
        }
        self.end_slot_orphan(&slot, agent_id, deadline).await?;
        self.remove_if_same(agent_id, &slot);
        self.shared.pinned.remove(agent_id);
        Ok(())
    }

    /// For a sign-out: logs out, with its own Guid, the session the gateway may still hold for
    /// the bridge after the slot's last ending. An orphan without a usable Guid cannot be ended
    /// by anything the bridge may send; the gateway's idle sign-out ends it.
    pub(super) async fn end_slot_orphan(
        &self,
        slot: &Arc<Slot>,
        agent_id: &str,
        deadline: Option<Instant>,
    ) -> Result<(), SessionError> {
        let orphan = slot.lock().ended.as_ref().and_then(|e| e.orphan.clone());
        let Some(orphan) = orphan else {
            return Ok(());
        };
        match self.end_orphan(agent_id, &orphan, deadline).await {
            OrphanEnd::Unknown => Err(SessionError::Gateway(GatewayError::OutcomeUnknown(
                "the sign-out of the agent's previous session got no clear answer".into(),
            ))),
            OrphanEnd::LoggedOut | OrphanEnd::NotOurs => {
                if let Some(ended) = slot.lock().ended.as_mut() {
                    ended.orphan = None;
                }
                Ok(())
            }
        }
    }

    /// `logout` for a live session; on success its streams end with `end`.
    ///
    /// A sign-out is safe to repeat (a second one answers `100-006`, "already out"), so one
    /// whose answer was lost is sent once more. If the outcome stays unknown the session stays
    /// live and polled: the poll loop then learns from the gateway whether it is still signed
    /// in, and ends the session if not.
    pub(super) async fn logout(
        &self,
        session: &Arc<Session>,
        deadline: Option<Instant>,
        end: End,
    ) -> Result<(), SessionError> {
        let signing_out = SigningOut::start(session);
        *session
            .signing_out_as
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(end.clone());
        let mut result = self.send_logout(session, deadline).await;
        if matches!(&result, Err(e) if e.retcode().is_none()) {
            result = self.send_logout(session, deadline).await;
        }
        match result {
            // Already out at the gateway: the goal is reached.
            Ok(()) => {}
            Err(e) if matches!(e.retcode(), Some("100-006" | "100-008")) => {}
            // The poll loop saw the gateway confirm the sign-out meanwhile.
            Err(_) if !session.is_live() => {}
            Err(e) => return Err(e.into()),
        }
        signing_out.done();
        tracing::info!(agent_id = %session.agent_id, "agent signed out");
        self.retire(session, end);
        Ok(())
    }

    /// One `logout` request, sent again with a newer Guid if the first was refused for a Guid
    /// the poll loop had just replaced.
    async fn send_logout(
        &self,
        session: &Arc<Session>,
        deadline: Option<Instant>,
    ) -> Result<(), GatewayError> {
        let sent = session.auth.current();
        let mut result = self
            .send(
                session,
                Interface::Logout,
                sent.guid.as_ref(),
                None,
                deadline,
            )
            .await;
        if matches!(&result, Err(e) if e.is_auth_rejection())
            && settle_refusal(
                session,
                sent.generation,
                remaining(self.shared.settings.auth_retry_wait, deadline),
            )
            .await
                == Settled::NewerGuid
        {
            let guid = session.auth.current().guid;
            result = self
                .send(session, Interface::Logout, guid.as_ref(), None, deadline)
                .await;
        }
        result.map(|_| ())
    }
}

/// Marks a slot as signing in until [`SigningIn::done`]: however the sign-in ends, including a
/// handler dropped mid-await (a cancelled RPC), the mark is cleared, so the slot never reports
/// `signing_in` for ever nor escapes the reaper. A sign-in dropped before it was answered may
/// have signed the agent in (a lost answer): the slot records that, without an orphan (no Guid
/// was seen).
struct SigningIn<'a> {
    slot: &'a Slot,
    done: bool,
}

impl<'a> SigningIn<'a> {
    fn start(slot: &'a Slot) -> Self {
        slot.lock().signing_in = true;
        Self { slot, done: false }
    }

    /// The sign-in was answered (either way) and its result is being recorded.
    fn done(mut self) {
        self.done = true;
    }
}

impl Drop for SigningIn<'_> {
    fn drop(&mut self) {
        let mut inner = self.slot.lock();
        inner.signing_in = false;
        if !self.done && inner.session.is_none() && inner.ended.is_none() {
            inner.ended = Some(Ended {
                reason: EndReason::SignInAnswerLost,
                orphan: None,
                at: Instant::now(),
            });
        }
    }
}

/// Marks a session as signing out until [`SigningOut::done`]: dropped before (a failed logout,
/// or a handler dropped mid-await), the mark is cleared, so the poll loop's later end is not
/// taken for the sign-out's confirmation.
struct SigningOut<'a> {
    session: &'a Session,
    done: bool,
}

impl<'a> SigningOut<'a> {
    fn start(session: &'a Session) -> Self {
        session.signing_out.store(true, Ordering::Release);
        Self {
            session,
            done: false,
        }
    }

    /// The sign-out reached its goal: the mark stays.
    fn done(mut self) {
        self.done = true;
    }
}

impl Drop for SigningOut<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.session.signing_out.store(false, Ordering::Release);
        }
    }
}

/// Whether a failed sign-in may have signed the agent in at the gateway: the answer was lost,
/// late or unreadable, or a proxy's 5xx may have followed the gateway's work (429 and 503 say
/// the request was not processed).
fn may_have_signed_in(e: &GatewayError) -> bool {
    match e {
        GatewayError::Timeout(_) | GatewayError::OutcomeUnknown(_) => true,
        GatewayError::HttpStatus(status) => (500..=599).contains(status) && *status != 503,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::super::keeper::tests::unreachable_gateway;
    use super::*;
    use crate::session::{GateRefusal, SignInGate};

    /// A coordinator that gives every agent to another instance.
    struct OwnedElsewhere;

    impl SignInGate for OwnedElsewhere {
        fn may_sign_in(&self, _agent_id: &str) -> Result<Option<Instant>, GateRefusal> {
            Err(GateRefusal::Owner("bridge-b".into()))
        }
    }

    /// Issue 17 defect 9: signing out an agent another pool instance owns reaches the goal
    /// (this instance holds no session for it), so it is "not signed in here" (answered OK
    /// by SignOut), never `NotOwned`.
    #[tokio::test]
    async fn signing_out_an_agent_another_instance_owns_is_not_signed_in_here() {
        let sessions = unreachable_gateway();
        sessions.set_gate(Arc::new(OwnedElsewhere));
        let out = sessions.sign_out("1001", None).await;
        assert!(
            matches!(out, Err(SessionError::NotSignedIn { .. })),
            "{out:?}"
        );
    }
}
