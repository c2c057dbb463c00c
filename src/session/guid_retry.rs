//! The Guid retry policy of operation calls: which refusals are retried, with which Guid, and
//! how long one call may take in all.

use super::{slot_has_creds, EndReason, Session, SessionError, Sessions};
use crate::gateway::{Envelope, GatewayError, Interface};
use crate::secret::Guid;
use bytes::Bytes;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How many times one call follows a newer Guid after a Guid refusal (see [`Sessions::call`]).
pub const GUID_RETRIES: u32 = 16;

impl Sessions {
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
        // Without a client deadline the budget bounds the whole call (all Guid retries and a
        // re-sign-in), so a gateway that keeps refusing cannot hold a caller for minutes.
        let budget = deadline
            .is_none()
            .then_some(self.shared.settings.call_budget);
        let deadline = deadline.or_else(|| budget.map(|b| Instant::now() + b));
        let mut session = self.session_for_call(agent_id, deadline).await?;
        let mut guid_retries = 0;
        let mut signed_in_again = false;
        loop {
            let sent = session.auth.current();
            let refusal = match self
                .send(&session, iface, sent.guid.as_ref(), body.clone(), deadline)
                .await
            {
                Ok(envelope) => return Ok((session, envelope)),
                Err(e) if e.is_auth_rejection() => e,
                Err(e) => return Err(e.into()),
            };
            let wait = remaining(self.shared.settings.auth_retry_wait, deadline);
            let settled = settle_refusal(&session, sent.generation, wait).await;
            if let Some(budget) = budget.filter(|_| deadline.is_some_and(|d| Instant::now() >= d)) {
                // Stop between attempts, the refused one proven without effect, rather than
                // ending the session for a sign-in that could no longer be sent.
                return Err(SessionError::CallBudgetExceeded { budget });
            }
            if guid_retries < GUID_RETRIES && settled == Settled::NewerGuid {
                guid_retries += 1;
                continue;
            }
            if signed_in_again || !slot_has_creds(&*self.slot(agent_id)?) {
                return Err(refusal.into());
            }
            let why = if settled == Settled::StillAccepted {
                EndReason::CallRefused
            } else {
                EndReason::GuidRefused
            };
            session = self
                .resign_in(agent_id, Some((&session, why)), deadline)
                .await?;
            signed_in_again = true;
        }
    }
}

impl Sessions {
    /// One request of `session` with `guid`.
    pub(super) async fn send(
        &self,
        session: &Session,
        iface: Interface,
        guid: Option<&Guid>,
        body: Option<Bytes>,
        deadline: Option<Instant>,
    ) -> Result<Envelope, GatewayError> {
        self.shared
            .gateway
            .call(
                iface,
                &session.agent_id,
                &session.auth,
                guid,
                body,
                deadline,
            )
            .await
    }
}

/// `wait`, shortened to what is left before `deadline`.
pub(super) fn remaining(wait: Duration, deadline: Option<Instant>) -> Duration {
    deadline.map_or(wait, |d| {
        wait.min(d.saturating_duration_since(Instant::now()))
    })
}

/// What the poll loop showed after a Guid refusal (see [`settle_refusal`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Settled {
    /// A newer Guid arrived: send again with it.
    NewerGuid,
    /// A poll was answered after the refusal without a newer Guid: the refusal was for this
    /// call only, or the gateway ended the session meanwhile (the bridge cannot tell which).
    /// Either way the session is replaced only through its own Guid (a `logout` with it).
    StillAccepted,
    /// The poll loop ended, or nothing was answered in time.
    Unknown,
}

/// After a Guid refusal: waits (at most `wait`) until a Guid newer than `generation` arrives,
/// the next poll (heartbeat, in push mode) is answered without one, or the loop ends.
///
/// In dynamic authentication the gateway refuses the old Guid as soon as it has handed the new
/// one to the poll, which the bridge may not have read yet; the poll answer in flight settles
/// whether the Guid was rotated (retry with the new one) or not (sign in again). Only answered
/// polls count (the poll loop does not count transport failures), so a failed poll is never
/// taken for "no rotation".
pub(super) async fn settle_refusal(session: &Session, generation: u64, wait: Duration) -> Settled {
    let mut guids = session.auth.subscribe();
    let mut polls = session.polls.subscribe();
    polls.borrow_and_update();
    if let Some(inbox) = &session.push {
        // Push mode: no poll is in flight to settle it; a heartbeat now does the same.
        inbox.kick();
    }
    let answered = async {
        tokio::select! {
            _ = guids.wait_for(|s| s.generation != generation) => false,
            r = polls.changed() => r.is_ok(),
            () = session.cancel.cancelled() => false,
        }
    };
    let answered = tokio::time::timeout(wait, answered).await.unwrap_or(false);
    if session.auth.current().generation != generation {
        Settled::NewerGuid
    } else if answered && session.is_live() {
        Settled::StillAccepted
    } else {
        Settled::Unknown
    }
}
