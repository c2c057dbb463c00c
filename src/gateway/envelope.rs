//! Decoding of the gateway's JSON answers, tolerant of every shape seen in the wild.
//!
//! The gateway's `retcode` is a string (`"0"`, `"100-006"`), `message` may be missing, `result`
//! may be `{}` or `null`, and a poll's `event` may be absent, `null` or `{}` when the long poll
//! expired empty (api-notes §3.1, open question 1). None of that is an error.

use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

/// The common envelope of every operation answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    /// `"0"` for success; anything else is a failure code.
    pub retcode: String,
    /// Free text; never branched on (vectors.json `_about`).
    pub message: String,
    /// Interface-specific payload (sign-in details), `None` when absent or null.
    pub result: Option<Value>,
    /// A poll's event, `None` for an empty poll (absent, null, `{}` or without `eventType`).
    pub event: Option<RawEvent>,
}

/// One agent event as the gateway sent it.
#[derive(Debug, Clone, PartialEq)]
pub struct RawEvent {
    /// The vendor's event name, e.g. `AgentMediaEvent_Play_Succ`.
    pub event_type: String,
    /// `null`, an object, or a bare string depending on the event; kept untouched.
    pub content: Value,
}

/// Why an answer body could not be understood.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DecodeError {
    /// Not JSON at all (HTML error page, truncated text…).
    #[error("answer is not JSON: {0}")]
    NotJson(String),
    /// JSON, but not an object carrying a `retcode`.
    #[error("answer has no retcode")]
    NoRetcode,
}

impl Envelope {
    /// Decodes an answer body. Never panics, whatever the bytes.
    ///
    /// Straight into the typed envelope: the top level and the event are read field by field
    /// (unknown fields skipped, a repeated field's last value kept), so a poll answer builds no
    /// JSON tree except the event's `content`.
    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let mut de = serde_json::Deserializer::from_slice(body);
        let wire = Lenient::<Wire>::deserialize(&mut de)
            .and_then(|w| de.end().map(|()| w))
            .map_err(|e| DecodeError::NotJson(e.to_string()))?;
        let Some(wire) = wire.0 else {
            return Err(DecodeError::NoRetcode);
        };
        let retcode = match wire.retcode {
            Some(Value::String(s)) if !s.is_empty() => s,
            // Lenient: some gateways' serializers may emit a bare number for success.
            Some(Value::Number(n)) => n.to_string(),
            _ => return Err(DecodeError::NoRetcode),
        };
        let message = match wire.message {
            Some(Value::String(s)) => s,
            _ => String::new(),
        };
        Ok(Envelope {
            retcode,
            message,
            result: wire.result.filter(|v| !v.is_null()),
            event: wire.event,
        })
    }

    /// Whether the gateway reported success.
    pub fn is_success(&self) -> bool {
        self.retcode == "0"
    }
}

/// The envelope's fields as read; every one optional, any JSON type accepted.
#[derive(Default)]
struct Wire {
    retcode: Option<Value>,
    message: Option<Value>,
    result: Option<Value>,
    event: Option<RawEvent>,
}

/// `Some` for a JSON object read by `T`'s map visitor, `None` for any other JSON value.
struct Lenient<T>(Option<T>);

/// Reads an object's fields into `Self`; the visitor behind [`Lenient`].
trait FromObject: Sized {
    fn field<'de, A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<(), A::Error>;
    fn finish(self) -> Option<Self>;
}

impl FromObject for Wire {
    fn field<'de, A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<(), A::Error> {
        match key {
            "retcode" => self.retcode = Some(map.next_value()?),
            "message" => self.message = Some(map.next_value()?),
            "result" => self.result = Some(map.next_value()?),
            "event" => {
                self.event = map
                    .next_value::<Lenient<WireEvent>>()?
                    .0
                    .and_then(WireEvent::event)
            }
            _ => {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }

    fn finish(self) -> Option<Self> {
        Some(self)
    }
}

/// A poll's `event` object as read.
#[derive(Default)]
struct WireEvent {
    event_type: Option<Value>,
    content: Option<Value>,
}

impl WireEvent {
    /// `None` for an empty poll: no (or an empty, or a non-string) `eventType`.
    fn event(self) -> Option<RawEvent> {
        match self.event_type {
            Some(Value::String(event_type)) if !event_type.is_empty() => Some(RawEvent {
                event_type,
                content: self.content.unwrap_or(Value::Null),
            }),
            _ => None,
        }
    }
}

impl FromObject for WireEvent {
    fn field<'de, A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<(), A::Error> {
        match key {
            "eventType" => self.event_type = Some(map.next_value()?),
            "content" => self.content = Some(map.next_value()?),
            _ => {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }

    fn finish(self) -> Option<Self> {
        Some(self)
    }
}

impl<'de, T: FromObject + Default> Deserialize<'de> for Lenient<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: FromObject + Default> Visitor<'de> for V<T> {
            type Value = Lenient<T>;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any JSON value")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = T::default();
                while let Some(key) = map.next_key::<Key<'de>>()? {
                    out.field(&key.0, &mut map)?;
                }
                Ok(Lenient(out.finish()))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Lenient(None))
            }

            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(Lenient(None))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                Ok(Lenient(None))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                Ok(Lenient(None))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(Lenient(None))
            }
            fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
                Ok(Lenient(None))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(Lenient(None))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// An object key, borrowed from the body when it has no escapes.
struct Key<'de>(std::borrow::Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object key")
            }

            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Self::Value, E> {
                Ok(Key(std::borrow::Cow::Borrowed(s)))
            }

            fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
                Ok(Key(std::borrow::Cow::Owned(s.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vectors() -> Value {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/vectors.json");
        serde_json::from_str(&std::fs::read_to_string(path).expect("vectors.json")).unwrap()
    }

    fn decode(v: &Value) -> Envelope {
        Envelope::decode(v.to_string().as_bytes()).expect("decodes")
    }

    #[test]
    fn every_vector_decodes() {
        let v = vectors();
        assert!(decode(&v["sign_in_success"]).is_success());
        assert_eq!(decode(&v["sign_in_already_signed_in"]).retcode, "100-002");
        for ok in v["operation_success"].as_array().unwrap() {
            let e = decode(ok);
            assert!(e.is_success() && e.event.is_none());
        }
        let fails: Vec<String> = v["operation_failures"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| decode(f).retcode)
            .collect();
        assert_eq!(fails, ["100-006", "000-003", "500-007", "100-007"]);
        for empty in v["poll_empty_variants"].as_array().unwrap() {
            let e = decode(empty);
            assert!(e.is_success() && e.event.is_none(), "{empty}");
        }
        for polled in v["poll_events"].as_array().unwrap() {
            let e = decode(polled);
            let ev = e.event.expect("event");
            assert_eq!(
                ev.event_type,
                polled["event"]["eventType"].as_str().unwrap()
            );
            assert_eq!(ev.content, polled["event"]["content"]);
        }
        assert_eq!(decode(&v["poll_not_signed_in"]).retcode, "100-006");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(matches!(
            Envelope::decode(b"<html>502</html>"),
            Err(DecodeError::NotJson(_))
        ));
        assert_eq!(Envelope::decode(b"[1,2]"), Err(DecodeError::NoRetcode));
        assert_eq!(
            Envelope::decode(br#"{"retcode":""}"#),
            Err(DecodeError::NoRetcode)
        );
        assert_eq!(
            Envelope::decode(b"{\"message\":\"x\"}"),
            Err(DecodeError::NoRetcode)
        );
        assert!(Envelope::decode(b"{\"retcode\":\"0\",\"event\":{}}")
            .unwrap()
            .event
            .is_none());
        for odd in [
            r#"{"retcode":"0","event":[1,{"eventType":"X"}]}"#,
            r#"{"retcode":"0","event":"AgentEvent_X"}"#,
            r#"{"retcode":"0","event":{"eventType":7}}"#,
            r#"{"retcode":"0","event":null,"result":null}"#,
        ] {
            let e = Envelope::decode(odd.as_bytes()).unwrap();
            assert!(e.event.is_none() && e.result.is_none(), "{odd}");
        }
        assert!(matches!(
            Envelope::decode(br#"{"retcode":"0"} trailing"#),
            Err(DecodeError::NotJson(_))
        ));
    }

    #[test]
    fn repeated_and_escaped_fields_decode_like_a_json_object() {
        let e = Envelope::decode(
            br#"{"retcode":"1","ret\u0063ode":"0","message":5,"event":{"eventType":"A","content":{"k":[1]},"eventType":"B","workNo":"1"}}"#,
        )
        .unwrap();
        assert_eq!((e.retcode.as_str(), e.message.as_str()), ("0", ""));
        let ev = e.event.unwrap();
        assert_eq!(ev.event_type, "B");
        assert_eq!(ev.content, serde_json::json!({"k": [1]}));
    }
}
