//! What the gateway client reports about its exchanges, to whoever counts them.
//!
//! A trait rather than the metrics registry itself, so the client depends on nothing above it:
//! `telemetry` implements it, and tests or tools can pass their own.

use std::time::Duration;

/// Receives one report per finished gateway request and per adopted Guid.
pub trait Observer: Send + Sync {
    /// A request to `interface` (the vendor's name, e.g. `beginPlay`) finished with `outcome`
    /// (`0`, a retcode label, or a transport outcome such as `timeout`) after `elapsed`.
    fn gateway_request(&self, interface: &'static str, outcome: &'static str, elapsed: Duration);

    /// A new Guid was adopted from a `Set-GUID` header.
    fn guid_adopted(&self);
}
