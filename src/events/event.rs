//! An agent event as the bridge keeps it: decoded once, numbered, encoded once for the wire,
//! shared by every watcher.

use crate::gateway::RawEvent;
use crate::proto::{AgentEvent, PlayEvent, PlayEventType};
use bytes::Bytes;
use prost::Message;
use prost_types::value::Kind;
use std::sync::Arc;
use std::time::SystemTime;

/// One numbered event. Watchers share it behind an `Arc`; it is never decoded or encoded twice.
#[derive(Debug)]
pub struct Event {
    /// Per-session number: 1, 2, 3 … without gaps.
    pub sequence: u64,
    /// The vendor's name, e.g. `AgentMediaEvent_Play_Succ`.
    pub event_type: String,
    /// `Some` for the record-play events `WatchPlayEvents` carries.
    pub play_type: Option<PlayEventType>,
    /// The event as an encoded `AgentEvent`.
    pub agent_frame: Bytes,
    /// The event as an encoded `PlayEvent`, for play events.
    pub play_frame: Option<Bytes>,
}

/// The event that says the gateway signed the agent out (api-notes §6).
pub const SHUTDOWN_SERVICE: &str = "AgentOther_ShutdownService";

impl Event {
    /// Numbers, converts and encodes a raw event of the session `session_id` of `agent_id`.
    pub fn new(sequence: u64, raw: RawEvent, agent_id: &str, session_id: &str) -> Self {
        let content = prost_types::Struct {
            fields: raw
                .content_object()
                .into_iter()
                .map(|(k, v)| (k, json_to_proto(v)))
                .collect(),
        };
        let received_at = Some(SystemTime::now().into());
        let play_type = play_type(&raw.event_type);
        let play_frame = play_type.map(|t| {
            Bytes::from(
                PlayEvent {
                    sequence,
                    session_id: session_id.to_owned(),
                    agent_id: agent_id.to_owned(),
                    r#type: t as i32,
                    event_type: raw.event_type.clone(),
                    received_at,
                    content: Some(content.clone()),
                }
                .encode_to_vec(),
            )
        });
        let agent_frame = Bytes::from(
            AgentEvent {
                sequence,
                session_id: session_id.to_owned(),
                agent_id: agent_id.to_owned(),
                event_type: raw.event_type.clone(),
                received_at,
                content: Some(content),
            }
            .encode_to_vec(),
        );
        Event {
            sequence,
            event_type: raw.event_type,
            play_type,
            agent_frame,
            play_frame,
        }
    }
}

impl Event {
    /// Memory this event keeps while retained: the event itself, its `Arc` header, its heap
    /// parts, its slot in the window and its ledger entry. What the byte budget charges.
    pub fn retained_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + 2 * std::mem::size_of::<usize>()
            + self.event_type.capacity()
            + self.agent_frame.len()
            + self.play_frame.as_ref().map_or(0, Bytes::len)
            + std::mem::size_of::<Arc<Self>>()
            + super::budget::ENTRY_BYTES
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

    fn event(name: &str, content: serde_json::Value) -> Event {
        Event::new(
            3,
            RawEvent {
                event_type: name.into(),
                content,
            },
            "1001",
            "s1",
        )
    }

    #[test]
    fn content_shapes_convert_and_frames_decode() {
        let ev = event(
            "AgentMediaEvent_StopRecordDone",
            json!({"taskId": 5451, "jsonKey": ["a"], "n": null, "s": "1"}),
        );
        assert_eq!(ev.play_type, None);
        assert!(ev.play_frame.is_none());
        let agent = AgentEvent::decode(ev.agent_frame.clone()).unwrap();
        assert_eq!(
            (
                agent.sequence,
                agent.agent_id.as_str(),
                agent.session_id.as_str()
            ),
            (3, "1001", "s1")
        );
        let fields = agent.content.unwrap().fields;
        assert_eq!(fields.len(), 4);
        assert!(matches!(fields["jsonKey"].kind, Some(Kind::ListValue(_))));

        let bare = AgentEvent::decode(
            event("AgentEvent_Call_Release", json!("1456403549-15")).agent_frame,
        )
        .unwrap();
        assert_eq!(
            bare.content.unwrap().fields["value"].kind,
            Some(Kind::StringValue("1456403549-15".into()))
        );

        let play = event("AgentMediaEvent_JumpPlayDone", json!(null));
        let p = PlayEvent::decode(play.play_frame.unwrap()).unwrap();
        assert_eq!(p.r#type, PlayEventType::PlayJumped as i32);
        assert!(p.content.unwrap().fields.is_empty());
        assert!(p.received_at.is_some());
    }
}
