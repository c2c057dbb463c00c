//! Why a session ended, and the one rule that follows from it: whether signing the agent in
//! again may take the agent over (`forcelogin`) when the gateway answers `100-002`.
//!
//! The gateway allows one session per agent. A bridge that takes an agent over from another
//! client (a second replica, an agent's desktop) starts a fight: the other client takes it
//! back, and so on. So the bridge answers `100-002` with `forcelogin` only when it knows the
//! session it replaces is its own: the gateway refused a Guid the bridge may never have seen
//! (a poll answer carrying a new Guid was lost), refused a call's Guid while still answering
//! polls with it, told it to sign in again (DR retcodes), or never answered the bridge's own
//! sign-in (which may have signed the agent in under a Guid the bridge never saw).
//! After any other ending — above all after being kicked — signing in again is a plain
//! `login`, retried with back-off by keep-signed-in. A coordinator (the agent pool) may add
//! proof that a previous holder's ownership ended; it decides that outside this rule.
//!
//! The right expires: the gateway signs out a session it has not heard from for its idle limit
//! (`--gateway-idle-timeout`), and a person may sign the agent in after that. So an ending is
//! recorded with the send time of the last request the gateway may have counted for the
//! session ([`Ended`]), and `forcelogin` is allowed only within the idle limit of it.

use std::time::{Duration, Instant};

/// How the bridge's last session of an agent ended, and when the gateway last heard of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ended {
    /// Why it ended.
    pub reason: EndReason,
    /// Send time of the last request with its Guid the gateway may have counted.
    pub last_used: Instant,
}

impl Ended {
    /// Until when a `100-002` may be answered with `forcelogin` (`None`: never): within
    /// `idle_timeout` of the session's last use, if it may still be the bridge's own.
    pub fn take_over_until(self, idle_timeout: Duration) -> Option<Instant> {
        self.reason
            .may_take_over()
            .then(|| self.last_used + idle_timeout)
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
    /// session.
    AnswerLost,
    /// A call was refused for its Guid while polls with that same Guid were still answered:
    /// the gateway holds the bridge's own session, only not for this call.
    CallRefused,
    /// The gateway answered `105-005`/`105-006`/`105-007` (disaster recovery): sign in again.
    SignInAgain,
    /// The answer to the bridge's own sign-in was lost: the gateway may hold a session of the
    /// bridge's whose Guid it never saw.
    SignInAnswerLost,
    /// No session ended: a sign-in found the agent held by another client (`100-002`).
    HeldElsewhere,
}

impl EndReason {
    /// Whether a `100-002` on signing in again may be answered with `forcelogin`: only when the
    /// session the gateway still counts is the bridge's own.
    pub fn may_take_over(self) -> bool {
        matches!(
            self,
            EndReason::AnswerLost
                | EndReason::SignInAgain
                | EndReason::CallRefused
                | EndReason::SignInAnswerLost
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

    #[test]
    fn only_the_bridges_own_session_is_taken_over() {
        assert!(AnswerLost.may_take_over());
        assert!(SignInAgain.may_take_over());
        assert!(CallRefused.may_take_over());
        assert!(SignInAnswerLost.may_take_over());
        for kicked in [SignedOut, SignedOutByGateway, GuidRefused, HeldElsewhere] {
            assert!(!kicked.may_take_over(), "{kicked:?}");
        }
    }

    #[test]
    fn the_right_to_take_over_ends_with_the_gateways_idle_limit() {
        let last_used = std::time::Instant::now();
        let idle = std::time::Duration::from_secs(120);
        let ended = |reason| super::Ended { reason, last_used };
        assert_eq!(
            ended(AnswerLost).take_over_until(idle),
            Some(last_used + idle)
        );
        assert_eq!(ended(GuidRefused).take_over_until(idle), None);
    }
}
