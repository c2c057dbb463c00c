//! The sign-in lifecycle of one agent: sign-in, the poll loop and what its end means, signing
//! in again, and sign-out. Every step holds the agent's lifecycle lock, so sign-in and sign-out
//! of one agent never overlap; why a session ended is recorded in its slot and decides how the
//! agent is signed in again (see [`EndReason`]).

use super::guid_retry::{remaining, settle_refusal, Settled};
use super::{
    lock_owned, new_session_id, not_signed_in, params::CredentialsHash, EndReason, Ended, Session,
    SessionError, Sessions, SignInParams, Slot,
};
use crate::events::{End, GuidUse, Hub, PollEnd, Poller};
use crate::gateway::{AgentAuth, GatewayError, Interface};
use crate::readiness::Pinned;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

impl Sessions {
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
        if let Some(current) = slot.running() {
            let inner = slot.lock();
            if inner
                .creds_hash
                .as_ref()
                .is_some_and(|held| !held.matches(&params))
            {
                return Err(SessionError::CredentialsMismatch {
                    agent_id: agent_id.to_owned(),
                });
            }
            return Ok(current);
        }
        let take_over = {
            let mut inner = slot.lock();
            inner.signing_in = true;
            self.take_over_until(inner.ended)
        };
        let result = self
            .login(&slot, agent_id, &params, take_over, deadline)
            .await;
        let mut inner = slot.lock();
        inner.signing_in = false;
        match result {
            Ok(session) => {
                inner.creds_hash = Some(CredentialsHash::of(&params));
                if self.shared.settings.hold_credentials {
                    inner.creds = Some(params);
                }
                Ok(session)
            }
            Err(e) => {
                // A slot that never had a session goes, unless a lost answer left it the
                // proof that the gateway may hold the bridge's own session.
                if inner.session.is_none()
                    && !inner.keep_signed_in
                    && !inner.ended.is_some_and(|e| e.reason.may_take_over())
                {
                    drop(inner);
                    self.slots().remove(agent_id);
                }
                Err(e)
            }
        }
    }

    /// Until when signing in again after `ended` may answer `100-002` with `forcelogin`.
    fn take_over_until(&self, ended: Option<Ended>) -> Option<Instant> {
        ended.and_then(|e| e.take_over_until(self.shared.settings.gateway_idle_timeout))
    }

    /// Signs in with `params`, installs the new session and starts its poll loop; a `100-002`
    /// is answered with `forcelogin` before `take_over` (see [`Ended::take_over_until`]).
    /// Caller holds the slot's lifecycle lock.
    async fn login(
        &self,
        slot: &Arc<Slot>,
        agent_id: &str,
        params: &SignInParams,
        take_over: Option<Instant>,
        deadline: Option<Instant>,
    ) -> Result<Arc<Session>, SessionError> {
        // A forced sign-in must land while the coordinator's lease surely lasts: one landing
        // after it could kick the agent's next owner. A plain `login` cannot kick anyone.
        let force_by = self.check_gate(agent_id)?;
        let forced_deadline = match (deadline, force_by) {
            (Some(d), Some(f)) => Some(d.min(f)),
            (d, f) => d.or(f),
        };
        let auth = Arc::new(AgentAuth::default());
        let gw = &self.shared.gateway;
        let body = params.body();
        let (iface, first_deadline) = if params.force {
            (Interface::ForceLogin, forced_deadline)
        } else {
            (Interface::Login, deadline)
        };
        let mut sent_at = Instant::now();
        let mut result = gw
            .call(
                iface,
                agent_id,
                &auth,
                None,
                Some(body.clone()),
                first_deadline,
            )
            .await;
        if take_over.is_some_and(|until| Instant::now() < until)
            && !params.force
            && matches!(&result, Err(e) if e.retcode() == Some("100-002"))
        {
            // The gateway still counts the agent as signed in under the Guid the bridge lost,
            // and within its idle limit that is the bridge's own session: taking it over is
            // safe.
            sent_at = Instant::now();
            result = gw
                .call(
                    Interface::ForceLogin,
                    agent_id,
                    &auth,
                    None,
                    Some(body),
                    forced_deadline,
                )
                .await;
        }
        let result = result.and_then(|_| match auth.current().guid {
            Some(_) => Ok(()),
            None => Err(GatewayError::OutcomeUnknown(
                "sign-in answer carried no Set-GUID header".into(),
            )),
        });
        if let Err(e) = result {
            let mut inner = slot.lock();
            if e.retcode() == Some("100-002") {
                // Another client holds the agent: remembered, so that a lost answer to a later
                // sign-in is not taken for a session of the bridge's own.
                inner.ended = Some(Ended {
                    reason: EndReason::HeldElsewhere,
                    last_used: sent_at,
                });
            } else if may_have_signed_in(&e)
                && inner.ended.is_none_or(|ended| ended.reason.may_take_over())
            {
                // The gateway may now hold the agent under a Guid the bridge never saw: its
                // own session, which a later sign-in may take back within the idle limit
                // (unless the bridge knows another client held the agent, or had kicked it:
                // then the lost answer may as well have been that client's `100-002`).
                inner.ended = Some(Ended {
                    reason: EndReason::SignInAnswerLost,
                    last_used: sent_at,
                });
            }
            return Err(e.into());
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
            signed_in_at: SystemTime::now(),
            last_poll_at: Arc::new(AtomicU64::new(0)),
            polls: Arc::new(tokio::sync::watch::Sender::new(0)),
            guid_use: Arc::new(GuidUse::new(sent_at)),
            cancel: self.shared.shutdown.child_token(),
            signing_out: AtomicBool::new(false),
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
            guid_use: session.guid_use.clone(),
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

    /// The poll loop ended: records why, ends the session's streams, and signs the agent in
    /// again where that is the rule (keep-signed-in, or the gateway asked for it).
    async fn on_poll_end(&self, slot: Arc<Slot>, session: Arc<Session>, end: PollEnd) {
        let reason = match end {
            PollEnd::Cancelled => return,
            // Even while signing out: the gateway may still hold the session under a Guid the
            // bridge never saw, which the sign-out then takes back to sign it out.
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
                    last_used: session.guid_use.last(),
                });
            }
            is_current
        };
        if session.signing_out.load(Ordering::Acquire) {
            // The sign-out in progress decides what follows (see `sign_out`).
            tracing::info!(agent_id = %session.agent_id, reason = reason.label(), "the poll loop ended during the sign-out");
            self.retire(&session, End::SignedOut);
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
        // Why a still running session is given up decides this sign-in only; the slot keeps
        // what its poll loop records (the session may yet run on if the sign-in fails).
        let ended = match stale.filter(|_| current.as_ref().is_some_and(|c| c.is_live())) {
            Some((stale, why)) => Some(Ended {
                reason: why,
                last_used: stale.guid_use.last(),
            }),
            None => slot.lock().ended,
        };
        // The current session is not retired here: `login` replaces it only once the new one is
        // signed in, so a failed sign-in leaves it running and polled (and, should the gateway
        // have ended it meanwhile, its poll loop's end hands the agent to keep-signed-in).
        // `force` is for the first sign-in only: signing in again never kicks another client.
        creds.force &= current.is_none() && ended.is_none();
        let take_over = self.take_over_until(ended);
        let session = self
            .login(&slot, agent_id, &creds, take_over, deadline)
            .await?;
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
            self.logout(&session, deadline).await?;
        }
        if let Some(orphan) = self.take_back_orphan(&slot, agent_id, deadline).await? {
            self.logout(&orphan, deadline).await?;
        }
        self.remove_if_same(agent_id, &slot);
        self.shared.pinned.remove(agent_id);
        Ok(())
    }

    /// For a sign-out: the bridge's own session the gateway may still hold under a Guid the
    /// bridge lost (a lost answer within the idle limit), signed in again with `forcelogin` so
    /// it can be signed out; `None` when there is none (or another client holds the agent now,
    /// which means the bridge's is gone). Needs held credentials; without them the gateway's
    /// idle sign-out ends such a session.
    pub(super) async fn take_back_orphan(
        &self,
        slot: &Arc<Slot>,
        agent_id: &str,
        deadline: Option<Instant>,
    ) -> Result<Option<Arc<Session>>, SessionError> {
        let (ended, creds) = {
            let inner = slot.lock();
            (inner.ended, inner.creds.clone())
        };
        let (Some(take_over), Some(mut creds)) = (self.take_over_until(ended), creds) else {
            return Ok(None);
        };
        creds.force = false;
        match self
            .login(slot, agent_id, &creds, Some(take_over), deadline)
            .await
        {
            Ok(session) => Ok(Some(session)),
            Err(SessionError::Gateway(e)) if e.retcode() == Some("100-002") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `logout` for a live session; on success its streams end with `End::SignedOut`.
    ///
    /// A sign-out is safe to repeat (a second one answers `100-006`, "already out"), so one
    /// whose answer was lost is sent once more. If the outcome stays unknown the session stays
    /// live and polled: the poll loop then learns from the gateway whether it is still signed
    /// in, and ends the session if not.
    pub(super) async fn logout(
        &self,
        session: &Arc<Session>,
        deadline: Option<Instant>,
    ) -> Result<(), SessionError> {
        session.signing_out.store(true, Ordering::Release);
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
            Err(e) => {
                session.signing_out.store(false, Ordering::Release);
                return Err(e.into());
            }
        }
        tracing::info!(agent_id = %session.agent_id, "agent signed out");
        self.retire(session, End::SignedOut);
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
