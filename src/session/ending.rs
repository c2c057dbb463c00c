//! Why a session ended, and the one rule that governs every session the bridge did not end
//! itself: **the bridge ends a gateway session only with that session's own Guid**.
//!
//! The gateway allows one session per agent and has exactly one fence: the Guid. A request
//! carrying a session's Guid can act only on that session, so a `logout` with the Guid of a
//! session the bridge *believes* is its own can never end anybody else's (a person's softphone,
//! a supervisor's desk, another replica): if that session is gone, the gateway answers
//! `100-006`/`000-003` and nothing happens. Any other "proof" that a session is the bridge's
//! own (a lost answer, a holder record, a time window) can be overtaken by the gateway ending
//! it and a person signing in; a `forcelogin` sent on such a proof kicks that person. So:
//!
//! - the bridge never sends `forcelogin` on its own: only a caller's `SignIn(force = true)`
//!   (or an agents-file entry with `force = true`, for its first sign-in) sends it;
//! - a session the gateway may still hold for the bridge (an [`Orphan`]) is ended with a
//!   `logout` carrying its own Guid and cookies before the agent is signed in again with a
//!   plain `login`;
//! - without a Guid that may still work (a lost sign-in answer, a lost rotation under strict
//!   Guids) the bridge cannot end its orphan: it signs in plainly, and `100-002` then means
//!   "held elsewhere" until the gateway's idle sign-out frees the agent (keep-signed-in retries
//!   with back-off; a caller is told the truth).

use crate::gateway::AgentAuth;
use std::sync::Arc;
use std::time::Instant;

/// How the bridge's last session of an agent ended.
#[derive(Debug, Clone)]
pub struct Ended {
    /// Why it ended.
    pub reason: EndReason,
    /// The session the gateway may still hold for the bridge, to be logged out with its own
    /// Guid before signing in again (see [`EndReason::may_still_hold`]).
    pub orphan: Option<Orphan>,
    /// When it ended (for forgetting the agent later, never for deciding a take-over).
    pub at: Instant,
}

/// A gateway session the bridge may still hold under a Guid (and cookies) it knows: the only
/// handle with which it may end that session.
#[derive(Debug, Clone)]
pub struct Orphan(pub Arc<AgentAuth>);

impl Orphan {
    /// The orphan of a session another instance handed over (its Guid and cookies).
    pub fn handed_over(guid: crate::secret::Guid, cookies: Option<&str>) -> Orphan {
        Orphan(Arc::new(AgentAuth::restored(guid, cookies)))
    }

    /// The orphan of a session whose credentials are `auth`, if it ever had a Guid.
    pub fn of(auth: &Arc<AgentAuth>) -> Option<Orphan> {
        auth.current().guid.is_some().then(|| Orphan(auth.clone()))
    }
}

/// What a `logout` with an orphan's own Guid showed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrphanEnd {
    /// Answered `0`: the session was the bridge's and is now signed out.
    LoggedOut,
    /// Refused for the Guid (`100-006`/`000-003`): the session is gone (or never was).
    NotOurs,
    /// No clear answer: a plain `login` follows all the same (it cannot kick anyone).
    Unknown,
}

impl OrphanEnd {
    /// Label for logs and metrics.
    pub fn label(self) -> &'static str {
        match self {
            OrphanEnd::LoggedOut => "logged_out",
            OrphanEnd::NotOurs => "not_ours",
            OrphanEnd::Unknown => "unknown",
        }
    }
}

/// Why the bridge's session of an agent ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// The bridge signed the agent out (or the gateway confirmed it out while the bridge was
    /// signing out).
    SignedOut,
    /// The gateway sent `AgentOther_ShutdownService`: an inspector, another client's
    /// `forcelogin` or the idle sign-out ended the session.
    SignedOutByGateway,
    /// The gateway refused the session's Guid after answering every earlier poll: another
    /// client signed the agent in, or the gateway dropped the session.
    GuidRefused,
    /// The gateway refused the session's Guid after a poll answer was lost: it may have
    /// carried a new Guid, so the gateway may still hold the agent under the bridge's own
    /// session (reachable only through the older Guid's overlap, where the gateway keeps one).
    AnswerLost,
    /// A call was refused for its Guid while polls with that same Guid were still answered.
    CallRefused,
    /// The gateway answered `105-005`/`105-006`/`105-007` (disaster recovery): sign in again.
    SignInAgain,
    /// The answer to the bridge's own sign-in was lost: the gateway may hold a session of the
    /// bridge's whose Guid it never saw, which only the gateway's idle sign-out can end.
    SignInAnswerLost,
    /// No session ended: a sign-in found the agent held by another client (`100-002`).
    HeldElsewhere,
}

impl EndReason {
    /// Whether the gateway may still hold the ended session for the bridge, so that signing in
    /// again first logs it out with its own Guid.
    pub fn may_still_hold(self) -> bool {
        matches!(
            self,
            EndReason::AnswerLost | EndReason::SignInAgain | EndReason::CallRefused
        )
    }

    /// Whether the agent is signed in again at once when the bridge holds its credentials:
    /// when the gateway asked for it, or may still hold the bridge's own session (which would
    /// otherwise linger there, unpolled, until the idle sign-out). After the other endings the
    /// gateway no longer holds the agent for the bridge, and its next call (or keep-signed-in)
    /// signs it in again.
    pub fn wants_sign_in_again(self) -> bool {
        matches!(self, EndReason::SignInAgain | EndReason::AnswerLost)
    }

    /// Label for logs.
    pub fn label(self) -> &'static str {
        match self {
            EndReason::SignedOut => "signed_out",
            EndReason::SignedOutByGateway => "signed_out_by_gateway",
            EndReason::GuidRefused => "guid_refused",
            EndReason::AnswerLost => "answer_lost",
            EndReason::CallRefused => "call_refused",
            EndReason::SignInAgain => "sign_in_again",
            EndReason::SignInAnswerLost => "sign_in_answer_lost",
            EndReason::HeldElsewhere => "held_elsewhere",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::EndReason::*;
    use super::*;
    use crate::secret::Guid;

    #[test]
    fn only_endings_that_may_leave_the_bridges_session_keep_an_orphan() {
        for kept in [AnswerLost, SignInAgain, CallRefused] {
            assert!(kept.may_still_hold(), "{kept:?}");
        }
        for gone in [
            SignedOut,
            SignedOutByGateway,
            GuidRefused,
            SignInAnswerLost,
            HeldElsewhere,
        ] {
            assert!(!gone.may_still_hold(), "{gone:?}");
        }
    }

    #[test]
    fn a_session_without_a_guid_leaves_no_orphan() {
        let auth = Arc::new(AgentAuth::default());
        assert!(Orphan::of(&auth).is_none());
        auth.adopt(Guid::new("g"));
        assert!(Orphan::of(&auth).is_some());
    }
}
