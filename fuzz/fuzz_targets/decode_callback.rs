//! Fuzzes the body of a push-mode callback, what the gateway (or anyone reaching the callback
//! port with a valid token) sends the bridge: the parser may not panic on any input, and a
//! batch it accepts keeps its guarantees (a workNo, every event typed, none for another agent).
//!
//! Run (nightly): `cargo +nightly fuzz run decode_callback` from the repository root.

#![no_main]

use ccgw_bridge::events::parse_callback;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(batch) = parse_callback(data) {
        assert!(!batch.work_no.is_empty());
        assert!(batch.events.iter().all(|e| !e.event_type.is_empty()));
    }
});
