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
///
/// It carries its `Guid` request header value, built once when the Guid is received (sign-in
/// or rotation), so every later call and poll sends it with a reference-count bump instead of
/// validating and copying the text again.
#[derive(Clone)]
pub struct Guid {
    value: Arc<str>,
    /// `None` when the text is not a valid header value (it is then never sent).
    header: Option<http::HeaderValue>,
}

impl Guid {
    /// Wraps a Guid received from the gateway.
    pub fn new(value: &str) -> Self {
        let header = http::HeaderValue::from_str(value).ok().map(|mut h| {
            // Never printed by HTTP tooling, never indexed by HTTP/2 header compression.
            h.set_sensitive(true);
            h
        });
        Self {
            value: Arc::from(value),
            header,
        }
    }

    /// The clear text (comparisons and tests; requests use [`Guid::header_value`]).
    pub fn expose(&self) -> &str {
        &self.value
    }

    /// The `Guid` request header value (sensitive), or `None` when the text is not a valid
    /// header value.
    pub fn header_value(&self) -> Option<&http::HeaderValue> {
        self.header.as_ref()
    }
}

impl PartialEq for Guid {
    fn eq(&self, other: &Self) -> bool {
        self.value == other.value
    }
}

impl Eq for Guid {}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Guid(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guid_header_value_is_built_once_and_sensitive() {
        let g = Guid::new("279fe21d.AgentGateway0");
        let header = g.header_value().expect("a valid header value");
        assert_eq!(header, "279fe21d.AgentGateway0");
        assert!(header.is_sensitive());
        assert!(!format!("{header:?}").contains("279fe21d"));
        assert!(Guid::new("bad\nguid").header_value().is_none());
        assert_eq!(g, Guid::new("279fe21d.AgentGateway0"));
    }

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
