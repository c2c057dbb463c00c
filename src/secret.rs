//! Values that must never reach a log line, an error message or `Debug` output.
//!
//! Agent passwords and Guids are the two secrets the bridge holds. Wrapping them in types whose
//! `Debug`/`Display` print a placeholder makes a leak a type error rather than a review finding.

use std::fmt;
use std::sync::Arc;
use zeroize::Zeroizing;

/// An agent's CTI password, wiped from memory when dropped.
#[derive(Clone)]
pub struct Password(Arc<Zeroizing<String>>);

impl Password {
    /// Wraps a password; the caller's copy should be dropped promptly.
    pub fn new(value: String) -> Self {
        Self(Arc::new(Zeroizing::new(value)))
    }

    /// The clear text, for the one place that needs it: the sign-in request body.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// The gateway's session token for one agent. Opaque: the bridge only stores and echoes it.
#[derive(Clone, PartialEq, Eq)]
pub struct Guid(Arc<str>);

impl Guid {
    /// Wraps a Guid received from the gateway.
    pub fn new(value: &str) -> Self {
        Self(Arc::from(value))
    }

    /// The clear text, for the `Guid` request header only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Guid(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_hides_secrets() {
        let p = Password::new("s3cret-pw".into());
        let g = Guid::new("279fe21d-2caa-4437-84c3-ab9e9dae20f5.AgentGateway0");
        let shown = format!("{p:?} {g:?} {:?}", (p.clone(), Some(g.clone())));
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(!shown.contains("279fe21d"), "{shown}");
        assert_eq!(p.expose(), "s3cret-pw");
    }
}
