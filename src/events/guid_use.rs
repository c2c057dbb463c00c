//! When a session's Guid was last sent in a request the gateway may have counted: where the
//! gateway's idle sign-out clock for that session starts, as far as the bridge can know it;
//! and whether an answer was lost since the last one read, which may have carried a newer Guid
//! (so a refusal of the old one does not show the session gone).
//!
//! After a lost answer the bridge may take its own session back (`forcelogin`), but only while
//! the gateway can still hold it: within its idle sign-out of the last request it counted.
//! The send time is the earliest that request can have counted, so a window measured from it
//! ends no later than the gateway's: the bridge never takes over a session the gateway already
//! dropped and someone else has signed in since.

use crate::gateway::GatewayError;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// The send time of the last request with a session's Guid the gateway may have counted.
#[derive(Debug)]
pub struct GuidUse {
    last: Mutex<Instant>,
    answer_lost: AtomicBool,
}

impl GuidUse {
    /// Starts at `sent`, the sign-in request that created the session.
    pub fn new(sent: Instant) -> Self {
        Self {
            last: Mutex::new(sent),
            answer_lost: AtomicBool::new(false),
        }
    }

    /// Records a request sent at `sent` with the session's Guid, unless its outcome shows the
    /// gateway did not count it: refused for the Guid, or never sent.
    pub fn record<T>(&self, sent: Instant, outcome: &Result<T, GatewayError>) {
        let uncounted = matches!(
            outcome,
            Err(e @ GatewayError::Retcode { .. }) if e.is_auth_rejection()
        ) || matches!(
            outcome,
            Err(GatewayError::Unreachable(_) | GatewayError::DeadlineTooShort(_))
        );
        if !uncounted {
            let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
            *last = (*last).max(sent);
        }
        match outcome {
            Err(GatewayError::Timeout(_) | GatewayError::OutcomeUnknown(_)) => {
                self.answer_lost.store(true, Ordering::Release)
            }
            Ok(_) => self.answer_lost.store(false, Ordering::Release),
            Err(_) => {}
        }
    }

    /// The send time of the last counted request.
    pub fn last(&self) -> Instant {
        *self.last.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether an answer was lost after the last one read: it may have carried a newer Guid,
    /// so the gateway may still hold the session although it refuses the Guid the bridge has.
    pub fn answer_lost(&self) -> bool {
        self.answer_lost.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn refused_or_unsent_requests_do_not_count_and_lost_answers_are_remembered() {
        let start = Instant::now();
        let later = start + Duration::from_secs(1);
        let refused = GatewayError::Retcode {
            retcode: "100-006".into(),
            message: String::new(),
        };
        let u = GuidUse::new(start);
        u.record(later, &Err::<(), _>(refused));
        u.record(later, &Err::<(), _>(GatewayError::Unreachable("x".into())));
        assert_eq!(u.last(), start);
        u.record(
            later,
            &Err::<(), _>(GatewayError::OutcomeUnknown("x".into())),
        );
        assert_eq!(u.last(), later, "a lost answer may have been counted");
        assert!(u.answer_lost());
        u.record(start, &Ok(()));
        assert_eq!(u.last(), later, "never earlier");
        assert!(!u.answer_lost(), "an answer read with the Guid settles it");
    }
}
