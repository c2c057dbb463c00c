//! Fuzzes what every gateway answer goes through before anything else looks at it: the JSON
//! envelope decoder and the `Set-GUID` header parser. Neither may panic on any input, and what
//! they return must keep their documented guarantees.
//!
//! Run (nightly): `cargo +nightly fuzz run decode_envelope` from the repository root.

#![no_main]

use ccgw_bridge::gateway::{parse_set_guid, Envelope};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(envelope) = Envelope::decode(data) {
        if envelope.is_success() {
            assert_eq!(envelope.retcode, "0");
        }
        if let Some(event) = &envelope.event {
            assert!(!event.event_type.is_empty());
        }
        assert!(envelope.result.as_ref().is_none_or(|r| !r.is_null()));
    }
    // Header values reach the parser only as visible text (`to_str`), but the parser itself
    // must hold for any string.
    let text = String::from_utf8_lossy(data);
    if let Some(guid) = parse_set_guid(&text) {
        let g = guid.expose();
        assert!(!g.is_empty());
        assert!(!g.contains(';'));
        assert_eq!(g, g.trim());
    }
});
