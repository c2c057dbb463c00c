//! What can go wrong talking to the gateway, split by what it means for the caller.
//!
//! The split that matters (design §3): did the request surely **not** take effect (safe to
//! report UNAVAILABLE), or may it have (outcome unknown: never replayed)?

/// A failed gateway exchange.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// HTTP 200 with a non-zero `retcode`: the gateway refused the operation.
    #[error("gateway answered retcode {retcode}")]
    Retcode {
        /// The vendor code, e.g. `500-007`.
        retcode: String,
        /// The vendor's free text (never branched on).
        message: String,
    },
    /// Connecting or the TLS handshake failed: the request was never sent.
    #[error("gateway unreachable: {0}")]
    Unreachable(String),
    /// The gateway (or a proxy in front of it) answered a non-200 status.
    #[error("gateway answered HTTP {0}")]
    HttpStatus(u16),
    /// No answer within the time allowed (the caller's deadline or the configured timeout).
    #[error("gateway did not answer within {0:?}")]
    Timeout(std::time::Duration),
    /// The caller's deadline left too little time to reach the gateway, so the request was not
    /// sent: it surely did not take effect.
    #[error("the call's deadline left {left:?}, less than the {needed:?} a gateway request needs, so the request was not sent", left = .0, needed = super::MIN_REQUEST_BUDGET)]
    DeadlineTooShort(std::time::Duration),
    /// The request may have reached the gateway, but its answer was lost or is unreadable.
    #[error("gateway answer lost or unreadable (the operation may have taken effect): {0}")]
    OutcomeUnknown(String),
}

impl GatewayError {
    /// The retcode, for failures that carry one.
    pub fn retcode(&self) -> Option<&str> {
        match self {
            GatewayError::Retcode { retcode, .. } => Some(retcode),
            _ => None,
        }
    }

    /// A refusal because of the Guid (or because the agent is not signed in, which the gateway
    /// also answers for a mismatching Guid: api-notes §2).
    pub fn is_auth_rejection(&self) -> bool {
        matches!(self.retcode(), Some("100-006" | "000-003"))
    }
}

/// Renders an error with its whole `source()` chain, so a TLS failure names its cause
/// (e.g. "invalid peer certificate: UnknownIssuer") instead of "error sending request".
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text
}
