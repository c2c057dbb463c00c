//! An agent event as the bridge keeps it: decoded once, numbered, shared by every watcher.

use crate::gateway::RawEvent;
use crate::proto::PlayEventType;
use prost_types::value::Kind;
use std::time::SystemTime;

/// One numbered event. Watchers share it behind an `Arc`; it is never decoded twice.
#[derive(Debug)]
pub struct Event {
    /// Per-session number: 1, 2, 3 … without gaps.
    pub sequence: u64,
    /// When the bridge received it.
    pub received_at: SystemTime,
    /// The vendor's name, e.g. `AgentMediaEvent_Play_Succ`.
    pub event_type: String,
    /// `Some` for the record-play events `WatchPlayEvents` carries.
    pub play_type: Option<PlayEventType>,
    /// The vendor's content as a protobuf `Struct` (null → empty; non-object → key `value`).
    pub content: prost_types::Struct,
}

/// The event that says the gateway signed the agent out (api-notes §6).
pub const SHUTDOWN_SERVICE: &str = "AgentOther_ShutdownService";

impl Event {
    /// Builds the shared form of a raw event.
    pub fn new(sequence: u64, raw: RawEvent) -> Self {
        let content = prost_types::Struct {
            fields: raw
                .content_object()
                .into_iter()
                .map(|(k, v)| (k, json_to_proto(v)))
                .collect(),
        };
        Event {
            sequence,
            received_at: SystemTime::now(),
            play_type: play_type(&raw.event_type),
            event_type: raw.event_type,
            content,
        }
    }
}

/// Maps the vendor's play event names onto the contract's enum (design §3).
pub fn play_type(event_type: &str) -> Option<PlayEventType> {
    Some(match event_type {
        "AgentMediaEvent_Play" => PlayEventType::PlayStarted,
        "AgentMediaEvent_Play_Succ" => PlayEventType::PlaySucceeded,
        "AgentMediaEvent_Play_Fail" => PlayEventType::PlayFailed,
        "AgentMediaEvent_StopPlayDone" => PlayEventType::PlayStopped,
        "AgentMediaEvent_PausePlayDone" => PlayEventType::PlayPaused,
        "AgentMediaEvent_ResumePlayDone" => PlayEventType::PlayResumed,
        "AgentMediaEvent_JumpPlayDone" => PlayEventType::PlayJumped,
        _ => return None,
    })
}

fn json_to_proto(value: serde_json::Value) -> prost_types::Value {
    use serde_json::Value as J;
    let kind = match value {
        J::Null => Kind::NullValue(0),
        J::Bool(b) => Kind::BoolValue(b),
        J::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        J::String(s) => Kind::StringValue(s),
        J::Array(items) => Kind::ListValue(prost_types::ListValue {
            values: items.into_iter().map(json_to_proto).collect(),
        }),
        J::Object(map) => Kind::StructValue(prost_types::Struct {
            fields: map
                .into_iter()
                .map(|(k, v)| (k, json_to_proto(v)))
                .collect(),
        }),
    };
    prost_types::Value { kind: Some(kind) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn content_shapes_convert() {
        let ev = Event::new(
            1,
            RawEvent {
                event_type: "AgentMediaEvent_StopRecordDone".into(),
                content: json!({"taskId": 5451, "jsonKey": ["a"], "n": null, "s": "1"}),
            },
        );
        assert_eq!(ev.play_type, None);
        assert_eq!(ev.content.fields.len(), 4);
        assert!(matches!(
            ev.content.fields["jsonKey"].kind,
            Some(Kind::ListValue(_))
        ));
        let bare = Event::new(
            2,
            RawEvent {
                event_type: "AgentEvent_Call_Release".into(),
                content: json!("1456403549-15"),
            },
        );
        assert_eq!(
            bare.content.fields["value"].kind,
            Some(Kind::StringValue("1456403549-15".into()))
        );
        assert_eq!(
            play_type("AgentMediaEvent_JumpPlayDone"),
            Some(PlayEventType::PlayJumped)
        );
    }
}
