//! Decoding of the gateway's JSON answers, tolerant of every shape seen in the wild.
//!
//! The gateway's `retcode` is a string (`"0"`, `"100-006"`), `message` may be missing, `result`
//! may be `{}` or `null`, and a poll's `event` may be absent, `null` or `{}` when the long poll
//! expired empty (api-notes §3.1, open question 1). None of that is an error.

use serde_json::{Map, Value};

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
    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let value: Value =
            serde_json::from_slice(body).map_err(|e| DecodeError::NotJson(e.to_string()))?;
        let Value::Object(mut map) = value else {
            return Err(DecodeError::NoRetcode);
        };
        let retcode = match map.remove("retcode") {
            Some(Value::String(s)) if !s.is_empty() => s,
            // Lenient: some gateways' serializers may emit a bare number for success.
            Some(Value::Number(n)) => n.to_string(),
            _ => return Err(DecodeError::NoRetcode),
        };
        let message = match map.remove("message") {
            Some(Value::String(s)) => s,
            _ => String::new(),
        };
        let result = map.remove("result").filter(|v| !v.is_null());
        let event = map.remove("event").and_then(RawEvent::from_value);
        Ok(Envelope {
            retcode,
            message,
            result,
            event,
        })
    }

    /// Whether the gateway reported success.
    pub fn is_success(&self) -> bool {
        self.retcode == "0"
    }
}

impl RawEvent {
    fn from_value(value: Value) -> Option<Self> {
        let Value::Object(mut map) = value else {
            return None;
        };
        let event_type = match map.remove("eventType") {
            Some(Value::String(s)) if !s.is_empty() => s,
            _ => return None,
        };
        let content = map.remove("content").unwrap_or(Value::Null);
        Some(RawEvent {
            event_type,
            content,
        })
    }

    /// The content as an object map: null → empty; a non-object under the key `value`.
    pub fn content_object(&self) -> Map<String, Value> {
        match &self.content {
            Value::Null => Map::new(),
            Value::Object(m) => m.clone(),
            other => {
                let mut m = Map::new();
                m.insert("value".to_owned(), other.clone());
                m
            }
        }
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
    fn content_shapes_become_objects() {
        let ev = |c: Value| RawEvent {
            event_type: "X".into(),
            content: c,
        };
        assert!(ev(Value::Null).content_object().is_empty());
        assert_eq!(
            ev(serde_json::json!("1456403549-15")).content_object()["value"],
            "1456403549-15"
        );
        assert_eq!(
            ev(serde_json::json!({"cause": 0})).content_object()["cause"],
            0
        );
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
    }
}
