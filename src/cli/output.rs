//! What `ccgw-bridge call` prints: results and events as human-readable lines or JSON lines
//! (field names as in the proto, enums by name, timestamps as RFC 3339), failures as
//! `error: CODE REASON: message` or one `{"error": {…}}` object.

use crate::proto::{AgentEvent, Ownership, PlayEvent, PlayEventType, Session, SessionState};
use serde_json::{json, Map, Value};
use tonic::Status;
use tonic_types::StatusExt;

/// The text printed for a failed call: `error: CODE REASON: message`, then one indented line
/// per `BadRequest` field violation.
pub fn describe_status(status: &Status) -> String {
    let reason = status
        .get_details_error_info()
        .map(|i| i.reason)
        .filter(|r| !r.is_empty());
    let mut out = format!("error: {}", crate::grpc::status::code_label(status.code()));
    if let Some(reason) = reason {
        out.push(' ');
        out.push_str(&reason);
    }
    out.push_str(": ");
    out.push_str(status.message());
    out.push('\n');
    if let Some(bad) = status.get_details_bad_request() {
        for v in bad.field_violations {
            out.push_str(&format!("  {}: {}\n", v.field, v.description));
        }
    }
    out
}

/// A failed call as JSON: `code` (name) and `code_number`, `message`, and from the details
/// `reason`, `domain`, `metadata` (an `ErrorInfo`) and `field_violations` (a `BadRequest`).
pub fn status_json(status: &Status) -> Value {
    let mut obj = json!({
        "code": crate::grpc::status::code_label(status.code()),
        "code_number": status.code() as i32,
        "message": status.message(),
    });
    if let Some(info) = status.get_details_error_info() {
        obj["reason"] = Value::from(info.reason);
        obj["domain"] = Value::from(info.domain);
        obj["metadata"] = Value::Object(
            info.metadata
                .into_iter()
                .map(|(k, v)| (k, Value::from(v)))
                .collect(),
        );
    }
    if let Some(bad) = status.get_details_bad_request() {
        obj["field_violations"] = bad
            .field_violations
            .into_iter()
            .map(|v| json!({"field": v.field, "description": v.description}))
            .collect();
    }
    obj
}

/// Renders results as human-readable lines or JSON lines.
pub(super) struct Output {
    pub(super) json: bool,
}

impl Output {
    pub(super) fn message(&self, message: &str) -> std::io::Result<()> {
        if self.json {
            emit!("{}", json!({ "message": message }))
        } else if message.is_empty() {
            emit!("ok")
        } else {
            emit!("ok: {message}")
        }
    }

    pub(super) fn ownership(&self, o: &Ownership) -> std::io::Result<()> {
        if self.json {
            let mut v = json!({"instance": o.instance, "lease_state": o.lease_state, "agent_ids": o.agent_ids, "waiting_for_gateway": o.waiting_for_gateway});
            if !o.pool_owners.is_empty() {
                // agent -> owner (null: nobody owns it now)
                let owners: Map<String, Value> = o
                    .pool_owners
                    .iter()
                    .map(|a| {
                        let owner = (!a.instance.is_empty()).then(|| a.instance.clone());
                        (a.agent_id.clone(), json!(owner))
                    })
                    .collect();
                v["pool_owners"] = owners.into();
            }
            emit!("{v}")
        } else {
            let agents = if o.agent_ids.is_empty() {
                "-".to_owned()
            } else {
                o.agent_ids.join(",")
            };
            let waiting = if o.waiting_for_gateway.is_empty() {
                String::new()
            } else {
                format!(" waiting_for_gateway={}", o.waiting_for_gateway.join(","))
            };
            emit!(
                "instance={} lease={} agents={agents}{waiting}",
                o.instance,
                o.lease_state
            )?;
            // The pool-wide table (--all): one line per agent, `-` while nobody owns it.
            for a in &o.pool_owners {
                let owner = if a.instance.is_empty() {
                    "-"
                } else {
                    &a.instance
                };
                emit!("{} owner={owner}", a.agent_id)?;
            }
            Ok(())
        }
    }

    pub(super) fn session(&self, s: &Session) -> std::io::Result<()> {
        let state = state_name(s);
        if self.json {
            emit!("{}", session_json(s))
        } else {
            let ts = |t: &Option<prost_types::Timestamp>| {
                t.as_ref().map_or_else(|| "-".to_owned(), |t| t.to_string())
            };
            emit!(
                "{} {} session={} signed_in_at={} last_poll_at={} last_sequence={} watchers={} can_resign_in={}",
                s.agent_id,
                state.trim_start_matches("SESSION_STATE_"),
                s.session_id,
                ts(&s.signed_in_at),
                ts(&s.last_poll_at),
                s.last_sequence,
                s.watchers,
                s.can_resign_in,
            )
        }
    }

    pub(super) fn play_event(&self, e: &PlayEvent) -> std::io::Result<()> {
        let kind = PlayEventType::try_from(e.r#type)
            .map(|t| t.as_str_name().to_owned())
            .unwrap_or_else(|_| e.r#type.to_string());
        self.event(
            e.sequence,
            Some(&kind),
            &e.event_type,
            &e.session_id,
            &e.agent_id,
            e.received_at.as_ref(),
            e.content.as_ref(),
        )
    }

    pub(super) fn agent_event(&self, e: &AgentEvent) -> std::io::Result<()> {
        self.event(
            e.sequence,
            None,
            &e.event_type,
            &e.session_id,
            &e.agent_id,
            e.received_at.as_ref(),
            e.content.as_ref(),
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn event(
        &self,
        sequence: u64,
        kind: Option<&str>,
        event_type: &str,
        session_id: &str,
        agent_id: &str,
        received_at: Option<&prost_types::Timestamp>,
        content: Option<&prost_types::Struct>,
    ) -> std::io::Result<()> {
        let content = content.map_or_else(|| Value::Object(Map::new()), struct_to_json);
        let received_at = received_at.map(|t| t.to_string());
        if self.json {
            let mut obj = json!({
                "sequence": sequence,
                "session_id": session_id,
                "agent_id": agent_id,
                "event_type": event_type,
                "received_at": received_at,
                "content": content,
            });
            if let Some(kind) = kind {
                obj["type"] = Value::from(kind);
            }
            emit!("{obj}")
        } else {
            let kind = kind.map(|k| format!(" {k}")).unwrap_or_default();
            emit!(
                "#{sequence}{kind} {event_type} {} {content}",
                received_at.as_deref().unwrap_or("-")
            )
        }
    }
}

fn state_name(s: &Session) -> String {
    SessionState::try_from(s.state)
        .map(|st| st.as_str_name().to_owned())
        .unwrap_or_else(|_| s.state.to_string())
}

pub(super) fn session_json(s: &Session) -> Value {
    json!({
        "agent_id": s.agent_id,
        "session_id": s.session_id,
        "state": state_name(s),
        "signed_in_at": s.signed_in_at.as_ref().map(|t| t.to_string()),
        "watchers": s.watchers,
        "last_poll_at": s.last_poll_at.as_ref().map(|t| t.to_string()),
        "last_sequence": s.last_sequence,
        "can_resign_in": s.can_resign_in,
    })
}

/// A protobuf `Struct` as the JSON object it carries.
pub fn struct_to_json(s: &prost_types::Struct) -> Value {
    Value::Object(
        s.fields
            .iter()
            .map(|(k, v)| (k.clone(), value_to_json(v)))
            .collect(),
    )
}

fn value_to_json(v: &prost_types::Value) -> Value {
    use prost_types::value::Kind;
    match &v.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(b)) => Value::Bool(*b),
        // Struct numbers are doubles; whole ones (the gateway's codes and counters) print as
        // integers, as the gateway sent them.
        Some(Kind::NumberValue(n)) => {
            if n.fract() == 0.0 && n.abs() < 9_007_199_254_740_992.0 {
                Value::from(*n as i64)
            } else {
                serde_json::Number::from_f64(*n).map_or(Value::Null, Value::Number)
            }
        }
        Some(Kind::StringValue(s)) => Value::String(s.clone()),
        Some(Kind::StructValue(s)) => struct_to_json(s),
        Some(Kind::ListValue(l)) => Value::Array(l.values.iter().map(value_to_json).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn struct_numbers_keep_their_integer_form() {
        use prost_types::value::Kind;
        let s = prost_types::Struct {
            fields: [
                (
                    "cause".to_owned(),
                    prost_types::Value {
                        kind: Some(Kind::NumberValue(0.0)),
                    },
                ),
                (
                    "ratio".to_owned(),
                    prost_types::Value {
                        kind: Some(Kind::NumberValue(0.5)),
                    },
                ),
            ]
            .into_iter()
            .collect(),
        };
        assert_eq!(struct_to_json(&s), json!({"cause": 0, "ratio": 0.5}));
    }

    #[test]
    fn status_json_carries_reason_metadata_and_fields() {
        use tonic_types::{ErrorDetails, StatusExt};
        let details = ErrorDetails::with_error_info(
            "OUTCOME_UNKNOWN",
            "ccgw-bridge",
            [("agent_id".to_owned(), "1001".to_owned())],
        );
        let status = Status::with_error_details(Code::Unknown, "lost", details);
        assert_eq!(
            status_json(&status),
            json!({"code": "UNKNOWN", "code_number": 2, "message": "lost",
                   "reason": "OUTCOME_UNKNOWN", "domain": "ccgw-bridge",
                   "metadata": {"agent_id": "1001"}})
        );
    }

    #[test]
    fn status_text_names_code_reason_and_fields() {
        use tonic_types::{ErrorDetails, StatusExt};
        let mut details = ErrorDetails::with_error_info("INVALID_REQUEST", "ccgw.v1", []);
        details.add_bad_request_violation("voice_path", "must not be empty");
        let status = Status::with_error_details(Code::InvalidArgument, "bad request", details);
        assert_eq!(
            describe_status(&status),
            "error: INVALID_ARGUMENT INVALID_REQUEST: bad request\n  voice_path: must not be empty\n"
        );
        assert_eq!(
            describe_status(&Status::unavailable("down")),
            "error: UNAVAILABLE: down\n"
        );
    }
}
