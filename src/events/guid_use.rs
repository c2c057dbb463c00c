//! When a session's Guid was last sent in a request the gateway may have counted: where the
//! gateway's idle sign-out clock for that session starts, as far as the bridge can know it.
//!
//! After a lost answer the bridge may take its own session back (`forcelogin`), but only while
//! the gateway can still hold it: within its idle sign-out of the last request it counted.
//! The send time is the earliest that request can have counted, so a window measured from it
//! ends no later than the gateway's: the bridge never takes over a session the gateway already
//! dropped and someone else has signed in since.

use crate::gateway::GatewayError;
use std::sync::Mutex;
use std::time::Instant;

/// The send time of the last request with a session's Guid the gateway may have counted.
#[derive(Debug)]
pub struct GuidUse(Mutex<Instant>);

impl GuidUse {
    /// Starts at `sent`, the sign-in request that created the session.
    pub fn new(sent: Instant) -> Self {
        Self(Mutex::new(sent))
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
            let mut last = self.0.lock().unwrap_or_else(|p| p.into_inner());
            *last = (*last).max(sent);
        }
    }

    /// The send time of the last counted request.
    pub fn last(&self) -> Instant {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn refused_or_unsent_requests_do_not_count() {
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
        u.record(start, &Ok(()));
        assert_eq!(u.last(), later, "never earlier");
    }
}
