//! Property tests of the pure parts every gateway answer and every request goes through:
//! the envelope decoder, `Set-GUID` parsing and the request validators. Each validator is
//! checked against its documented rule, written out independently here: it never panics,
//! accepts exactly what the rule allows, and reports a refusal as one violation of the field.

use ccgw_bridge::events::parse_callback;
use ccgw_bridge::gateway::{parse_set_guid, Envelope};
use ccgw_bridge::grpc::validate::{self, Limits, Violations, VoicePathPolicy};
use proptest::prelude::*;
use serde_json::{json, Map, Value};
use tonic::Code;
use tonic_types::StatusExt;

/// `cases` per property; no failure files (an integration test has no `lib.rs` beside it).
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Runs one validator on a fresh `Violations` and returns whether it accepted the value. A
/// refusal must be exactly one INVALID_ARGUMENT violation naming `field`.
fn accepts(field: &str, f: impl FnOnce(&mut Violations, &str)) -> bool {
    let mut v = Violations::default();
    f(&mut v, field);
    match v.check() {
        Ok(()) => true,
        Err(status) => {
            assert_eq!(status.code(), Code::InvalidArgument);
            let bad = status.get_details_bad_request().expect("BadRequest detail");
            assert_eq!(bad.field_violations.len(), 1, "{status:?}");
            assert_eq!(bad.field_violations[0].field, field);
            assert!(!bad.field_violations[0].description.is_empty());
            false
        }
    }
}

/// Strings that stress the validators: arbitrary Unicode, digit runs with and without noise,
/// and non-ASCII digits.
fn tricky_string() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[0-9]{0,25}",
        "[ 0-9+\\-.eE_x]{0,12}",
        "[0-9]{1,7}[\u{0}-\u{7f}][0-9]{0,3}",
        "[\u{660}-\u{669}\u{ff10}-\u{ff19}\u{966}-\u{96f}0-9]{1,8}",
        "\\PC{0,120}",
        "[a-zé😀/\\\\.\r\n\t\u{85}\u{7f}]{0,110}",
    ]
}

// ---------------------------------------------------------------------------------------------
// Envelope::decode

/// Arbitrary JSON values, nested a little.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        // Binary fractions: exact in decimal, so they survive serde_json's (not bit-exact by
        // default) float parsing and compare equal after a round trip.
        any::<i32>().prop_map(|n| json!(f64::from(n) / 8.0)),
        ".{0,12}".prop_map(Value::String),
        prop_oneof![Just("0"), Just(""), Just("100-006"), Just("500-007")]
            .prop_map(|s| Value::String(s.into())),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec(
                (
                    prop_oneof![
                        Just("retcode".to_owned()),
                        Just("message".to_owned()),
                        Just("result".to_owned()),
                        Just("event".to_owned()),
                        Just("eventType".to_owned()),
                        Just("content".to_owned()),
                        "[a-z]{1,6}",
                    ],
                    inner
                ),
                0..6
            )
            .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// JSON-looking text: fragments of gateway answers glued together, often broken.
fn jsonish() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        Just("{".to_owned()),
        Just("}".to_owned()),
        Just("[".to_owned()),
        Just("]".to_owned()),
        Just(",".to_owned()),
        Just(":".to_owned()),
        Just("\"retcode\"".to_owned()),
        Just("\"message\"".to_owned()),
        Just("\"event\"".to_owned()),
        Just("\"eventType\"".to_owned()),
        Just("\"content\"".to_owned()),
        Just("\"0\"".to_owned()),
        Just("\"\"".to_owned()),
        Just("null".to_owned()),
        Just("0".to_owned()),
        Just("1e999".to_owned()),
        Just("-0.0".to_owned()),
        Just("\"\\u0000\"".to_owned()),
        Just("\"\\ud800\"".to_owned()),
        Just(" ".to_owned()),
        "\"[^\"\\\\]{0,8}\"",
        "[0-9]{1,25}",
    ];
    prop::collection::vec(token, 0..40).prop_map(|t| t.concat())
}

fn check_decoded(bytes: &[u8]) {
    if let Ok(e) = Envelope::decode(bytes) {
        if e.is_success() {
            assert_eq!(e.retcode, "0", "a success is retcode \"0\"");
        }
        if let Some(ev) = &e.event {
            assert!(!ev.event_type.is_empty(), "an event always has a type");
        }
        assert!(e.result.as_ref().is_none_or(|r| !r.is_null()));
    }
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn decode_never_panics_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        check_decoded(&bytes);
    }

    #[test]
    fn decode_never_panics_on_jsonish_text(text in jsonish()) {
        check_decoded(text.as_bytes());
    }

    #[test]
    fn decode_never_panics_on_json_values(value in json_value()) {
        check_decoded(value.to_string().as_bytes());
    }

    /// A well-formed answer decodes to exactly what it carries.
    #[test]
    fn decode_keeps_what_the_gateway_said(
        retcode in prop_oneof![Just("0".to_owned()), "[0-9]{3}-[0-9]{3}"],
        message in any::<Option<String>>(),
        event_type in prop::option::of("[A-Za-z_]{1,30}"),
        content in json_value(),
        result in json_value(),
    ) {
        let mut body = json!({"retcode": retcode, "result": result});
        if let Some(m) = &message {
            body["message"] = json!(m);
        }
        if let Some(t) = &event_type {
            body["event"] = json!({"eventType": t, "content": content});
        }
        let e = Envelope::decode(body.to_string().as_bytes()).expect("decodes");
        prop_assert_eq!(&e.retcode, &retcode);
        prop_assert_eq!(e.is_success(), retcode == "0");
        prop_assert_eq!(e.message, message.unwrap_or_default());
        prop_assert_eq!(e.result, (!result.is_null()).then_some(result));
        match event_type {
            Some(t) => {
                let ev = e.event.expect("event");
                prop_assert_eq!(ev.event_type, t);
                prop_assert_eq!(ev.content, content);
            }
            None => prop_assert!(e.event.is_none()),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// parse_callback (push mode)

fn check_callback(bytes: &[u8]) {
    if let Ok(batch) = parse_callback(bytes) {
        assert!(!batch.work_no.is_empty(), "a batch names its agent");
        assert!(batch.events.iter().all(|e| !e.event_type.is_empty()));
    }
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn callback_parser_never_panics_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        check_callback(&bytes);
    }

    #[test]
    fn callback_parser_never_panics_on_jsonish_text(text in jsonish()) {
        check_callback(text.as_bytes());
    }

    /// A well-formed batch decodes to exactly its events, oldest first.
    #[test]
    fn callback_parser_keeps_the_batch(
        work_no in "[0-9]{3,6}",
        events in prop::collection::vec(("[A-Za-z_]{1,30}", json_value()), 0..8),
    ) {
        let list: Vec<Value> = events
            .iter()
            .map(|(t, c)| json!({"eventType": t, "workNo": work_no, "content": c}))
            .collect();
        let body = json!({"workNo": work_no, "eventList": list});
        let batch = parse_callback(body.to_string().as_bytes()).expect("decodes");
        prop_assert_eq!(&batch.work_no, &work_no);
        prop_assert_eq!(batch.events.len(), events.len());
        for (got, (t, c)) in batch.events.iter().zip(&events) {
            prop_assert_eq!(&got.event_type, t);
            prop_assert_eq!(&got.content, c);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// parse_set_guid

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn set_guid_is_never_empty_padded_or_with_attributes(value in prop_oneof![
        any::<String>(),
        "[ \t]*(JSESSIONID)?=?[ \t]*[A-Za-z0-9.=;\u{a0}\u{3000} -]{0,20}(; ?[A-Za-z]+(=[^;]*)?)*",
    ]) {
        if let Some(guid) = parse_set_guid(&value) {
            let g = guid.expose();
            prop_assert!(!g.is_empty());
            prop_assert!(!g.contains(';'), "{g:?}");
            prop_assert_eq!(g, g.trim(), "no surrounding whitespace");
        }
    }

    /// The vendor's shape, with or without attributes, yields the Guid itself.
    #[test]
    fn set_guid_vendor_shape_round_trips(
        guid in "[A-Za-z0-9][A-Za-z0-9.=_-]{0,40}",
        attrs in prop::collection::vec("[A-Za-z]{1,8}(=[A-Za-z0-9/]{0,8})?", 0..3),
    ) {
        let mut header = format!("JSESSIONID={guid}");
        for a in &attrs {
            header.push_str("; ");
            header.push_str(a);
        }
        let parsed = parse_set_guid(&header).expect("a Guid");
        prop_assert_eq!(parsed.expose(), guid.as_str());
    }
}

// ---------------------------------------------------------------------------------------------
// Validators

fn is_control_free(s: &str) -> bool {
    !s.chars().any(char::is_control)
}

/// The documented `agent_id` rule: decimal ASCII digits, no leading zero, in `[min, max]`.
fn agent_id_rule(s: &str, min: u64, max: u64) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| b.is_ascii_digit())
        && !s.starts_with('0')
        && s.parse::<u128>()
            .is_ok_and(|n| (min as u128..=max as u128).contains(&n))
}

proptest! {
    #![proptest_config(config(1024))]

    #[test]
    fn agent_id_accepts_exactly_the_rule(s in tricky_string()) {
        let l = Limits::default();
        let ok = accepts("agent_id", |v, f| l.agent_id(v, f, &s));
        prop_assert_eq!(ok, agent_id_rule(&s, 101, 999_999), "{:?}", s);
        if ok {
            let n: u64 = s.parse().unwrap();
            prop_assert!((101..=999_999).contains(&n));
        }
    }

    #[test]
    fn agent_id_respects_configured_ranges(
        s in prop_oneof!["[1-9][0-9]{0,20}", tricky_string()],
        min in 0u64..100_000,
        span in prop_oneof![0u64..1000, Just(u64::MAX / 2)],
    ) {
        let l = Limits {
            agent_id_min: min,
            agent_id_max: min.saturating_add(span),
            ..Limits::default()
        };
        let ok = accepts("agent_id", |v, f| l.agent_id(v, f, &s));
        prop_assert_eq!(ok, agent_id_rule(&s, l.agent_id_min, l.agent_id_max), "{:?} in {:?}", s, l);
    }

    #[test]
    fn voice_path_accepts_exactly_the_rule(s in tricky_string()) {
        let l = Limits::default();
        let ok = accepts("voice_path", |v, f| l.voice_path(v, f, &s));
        let n = s.chars().count();
        // Blank (only white space) is refused: the gateway would be asked to play nothing.
        let blank = s.chars().all(char::is_whitespace);
        prop_assert_eq!(ok, (1..=100).contains(&n) && is_control_free(&s) && !blank, "{:?}", s);
    }

    /// With an allow-list, nothing outside it and no `..` segment ever passes.
    #[test]
    fn voice_path_policy_never_lets_traversal_through(
        s in prop_oneof![
            tricky_string(),
            "/prompts/([a-z.]{0,4}[/\\\\]){0,4}[a-z.]{0,6}",
            "(/[a-z.]{0,3}){0,5}",
        ],
    ) {
        let l = Limits {
            voice_paths: Some(VoicePathPolicy::new(&["/prompts/".to_owned()]).unwrap()),
            ..Limits::default()
        };
        if accepts("voice_path", |v, f| l.voice_path(v, f, &s)) {
            prop_assert!(s.starts_with("/prompts/"), "{:?}", s);
            prop_assert!(!s.split(['/', '\\']).any(|seg| seg == ".."), "{:?}", s);
            prop_assert!((1..=100).contains(&s.chars().count()) && is_control_free(&s));
        }
    }

    #[test]
    fn password_accepts_exactly_the_rule(s in tricky_string()) {
        let ok = accepts("password", |v, f| validate::password(v, f, &s));
        prop_assert_eq!(ok, s.chars().count() <= 32 && is_control_free(&s), "{:?}", s);
    }

    #[test]
    fn phone_number_accepts_exactly_the_rule(s in tricky_string()) {
        let ok = accepts("phone_number", |v, f| validate::phone_number(v, f, &s));
        let rule = (1..=24).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit());
        prop_assert_eq!(ok, rule, "{:?}", s);
    }

    #[test]
    fn numeric_fields_accept_exactly_the_rule(
        n in prop::option::of(any::<u32>()),
        seconds in prop_oneof![any::<u32>(), Just(i32::MAX as u32), Just(i32::MAX as u32 + 1)],
        pos in prop::option::of(any::<i64>()),
        loc in prop::option::of(prop_oneof![any::<i32>(), -3i32..70_000]),
        small in prop::option::of(prop_oneof![any::<u32>(), 0u32..200_000]),
    ) {
        let ok = accepts("volume", |v, f| validate::five_digits(v, f, small));
        prop_assert_eq!(ok, small.is_none_or(|x| x <= 99_999));
        let ok = accepts("seconds", |v, f| validate::jump_seconds(v, f, seconds));
        prop_assert_eq!(ok, seconds <= 2_147_483_647);
        let ok = accepts("start_position_seconds", |v, f| validate::start_position(v, f, pos));
        prop_assert_eq!(ok, pos.is_none_or(|x| x >= 0));
        let ok = accepts("times", |v, f| validate::times(v, f, small));
        prop_assert_eq!(ok, small.is_none_or(|x| (1..=99_999).contains(&x)));
        let ok = accepts("location_id", |v, f| validate::location_id(v, f, loc));
        prop_assert_eq!(ok, loc.is_none_or(|x| (-1..=65_535).contains(&x)));
        let ok = accepts("agent_type", |v, f| validate::agent_type(v, f, n));
        prop_assert_eq!(ok, n.is_none_or(|x| x == 4 || x == 11));
        let ok = accepts("status", |v, f| validate::status(v, f, n.map(|x| x % 8)));
        prop_assert_eq!(ok, n.map(|x| x % 8).is_none_or(|x| (3..=5).contains(&x)));
    }

    /// Several violations become one status listing each field once, in order.
    #[test]
    fn violations_keep_every_field_in_order(
        fields in prop::collection::vec("[a-z_]{1,12}(\\[[0-9]\\])?", 0..6),
    ) {
        let mut v = Violations::default();
        for f in &fields {
            v.add(f.clone(), format!("{f} is wrong"));
        }
        match v.check() {
            Ok(()) => prop_assert!(fields.is_empty()),
            Err(status) => {
                prop_assert_eq!(status.code(), Code::InvalidArgument);
                let got: Vec<String> = status
                    .get_details_bad_request()
                    .expect("BadRequest")
                    .field_violations
                    .into_iter()
                    .map(|fv| fv.field)
                    .collect();
                prop_assert_eq!(&got, &fields);
                for f in &fields {
                    prop_assert!(status.message().contains(f.as_str()));
                }
            }
        }
    }
}
