//! A streamed message encoded once and shared: the fan-out path's unit of work.
//!
//! `EncodedEvent` implements `prost::Message` by writing bytes that already are a complete
//! `PlayEvent`/`AgentEvent` encoding, so tonic's codec frames them without re-encoding. Cloning
//! it is a reference-count increment. [`agent_frame`] and [`play_frame`] encode an event the
//! first time any watcher takes it and keep the bytes in the event, so an event nobody watches
//! costs no encoding and one that 10,000 streams watch is encoded once.

use crate::events::Event;
use crate::proto::{AgentEvent, PlayEvent};
use bytes::{Buf, BufMut, Bytes};
use prost::encoding::{skip_field, DecodeContext, WireType};
use prost::{DecodeError, Message};
use prost_types::value::Kind;

/// The event as an `AgentEvent` frame, encoded on first use.
pub fn agent_frame(event: &Event) -> EncodedEvent {
    EncodedEvent(
        event
            .agent_frame
            .get_or_init(|| {
                Bytes::from(
                    AgentEvent {
                        sequence: event.sequence,
                        session_id: event.session_id.to_string(),
                        agent_id: event.agent_id.to_string(),
                        event_type: event.event_type.clone(),
                        received_at: Some(event.received_at.into()),
                        content: Some(content(&event.content)),
                    }
                    .encode_to_vec(),
                )
            })
            .clone(),
    )
}

/// The event as a `PlayEvent` frame (play events only), encoded on first use.
pub fn play_frame(event: &Event) -> Option<EncodedEvent> {
    let t = event.play_type?;
    Some(EncodedEvent(
        event
            .play_frame
            .get_or_init(|| {
                Bytes::from(
                    PlayEvent {
                        sequence: event.sequence,
                        session_id: event.session_id.to_string(),
                        agent_id: event.agent_id.to_string(),
                        r#type: t as i32,
                        event_type: event.event_type.clone(),
                        received_at: Some(event.received_at.into()),
                        content: Some(content(&event.content)),
                    }
                    .encode_to_vec(),
                )
            })
            .clone(),
    ))
}

/// The contract's `content`: null → empty; an object → its fields; anything else under `value`.
fn content(value: &serde_json::Value) -> prost_types::Struct {
    let fields = match value {
        serde_json::Value::Null => Default::default(),
        serde_json::Value::Object(map) => map
            .iter()
            .map(|(k, v)| (k.clone(), json_to_proto(v)))
            .collect(),
        other => [("value".to_owned(), json_to_proto(other))]
            .into_iter()
            .collect(),
    };
    prost_types::Struct { fields }
}

fn json_to_proto(value: &serde_json::Value) -> prost_types::Value {
    use serde_json::Value as J;
    let kind = match value {
        J::Null => Kind::NullValue(0),
        J::Bool(b) => Kind::BoolValue(*b),
        J::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        J::String(s) => Kind::StringValue(s.clone()),
        J::Array(items) => Kind::ListValue(prost_types::ListValue {
            values: items.iter().map(json_to_proto).collect(),
        }),
        J::Object(map) => Kind::StructValue(prost_types::Struct {
            fields: map
                .iter()
                .map(|(k, v)| (k.clone(), json_to_proto(v)))
                .collect(),
        }),
    };
    prost_types::Value { kind: Some(kind) }
}

/// A pre-encoded `PlayEvent` or `AgentEvent`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct EncodedEvent(pub Bytes);

impl std::fmt::Debug for EncodedEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EncodedEvent({} bytes)", self.0.len())
    }
}

impl prost::Message for EncodedEvent {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        buf.put_slice(&self.0);
    }

    /// The bridge only sends these; a decode (never done) keeps nothing.
    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        self.0.len()
    }

    fn clear(&mut self) {
        self.0 = Bytes::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::RawEvent;
    use crate::proto::PlayEventType;
    use serde_json::json;
    use std::sync::Arc;

    fn event(name: &str, content: serde_json::Value) -> Event {
        Event::new(
            3,
            RawEvent {
                event_type: name.into(),
                content,
            },
            &Arc::from("1001"),
            &Arc::from("s1"),
        )
    }

    #[test]
    fn content_shapes_convert_and_frames_decode() {
        let ev = event(
            "AgentMediaEvent_StopRecordDone",
            json!({"taskId": 5451, "jsonKey": ["a"], "n": null, "s": "1"}),
        );
        assert!(play_frame(&ev).is_none());
        let agent = AgentEvent::decode(agent_frame(&ev).0).unwrap();
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
            agent_frame(&event("AgentEvent_Call_Release", json!("1456403549-15"))).0,
        )
        .unwrap();
        assert_eq!(
            bare.content.unwrap().fields["value"].kind,
            Some(Kind::StringValue("1456403549-15".into()))
        );

        let play = event("AgentMediaEvent_JumpPlayDone", json!(null));
        let p = PlayEvent::decode(play_frame(&play).unwrap().0).unwrap();
        assert_eq!(p.r#type, PlayEventType::PlayJumped as i32);
        assert!(p.content.unwrap().fields.is_empty());
        assert!(p.received_at.is_some());
    }

    #[test]
    fn an_event_is_encoded_once_however_many_watchers_take_it() {
        let ev = event("AgentMediaEvent_Play_Succ", json!({"k": 1}));
        assert!(ev.play_frame.get().is_none() && ev.agent_frame.get().is_none());
        let a = play_frame(&ev).unwrap();
        let b = play_frame(&ev).unwrap();
        assert_eq!(a.0.as_ptr(), b.0.as_ptr(), "the same bytes, shared");
        assert!(ev.agent_frame.get().is_none(), "only the frame asked for");
    }

    #[test]
    fn frames_are_the_message_bytes() {
        let msg = PlayEvent {
            sequence: 7,
            event_type: "AgentMediaEvent_Play".into(),
            ..Default::default()
        };
        let frame = EncodedEvent(Bytes::from(msg.encode_to_vec()));
        assert_eq!(frame.encoded_len(), msg.encoded_len());
        assert_eq!(
            PlayEvent::decode(frame.encode_to_vec().as_slice()).unwrap(),
            msg
        );
    }
}
