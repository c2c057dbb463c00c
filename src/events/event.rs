//! An agent event as the bridge keeps it: decoded once, numbered, shared by every watcher.
//!
//! The wire frames are not made here: the gRPC layer encodes an event the first time a watcher
//! takes it and keeps the bytes in the event's frame slots (`grpc::frame`), so an event no one
//! watches is never encoded, and one many watch is encoded once.

use crate::gateway::RawEvent;
use crate::proto::PlayEventType;
use bytes::Bytes;
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

/// One numbered event. Watchers share it behind an `Arc`.
#[derive(Debug)]
pub struct Event {
    /// Per-session number: 1, 2, 3 … without gaps.
    pub sequence: u64,
    /// The vendor's name, e.g. `AgentMediaEvent_Play_Succ`.
    pub event_type: String,
    /// `Some` for the record-play events `WatchPlayEvents` carries.
    pub play_type: Option<PlayEventType>,
    /// The event's `content` as the gateway sent it (`null`, an object, or a bare value).
    pub content: serde_json::Value,
    /// When the bridge received it.
    pub received_at: SystemTime,
    /// The agent whose session it belongs to.
    pub agent_id: Arc<str>,
    /// That session.
    pub session_id: Arc<str>,
    /// Encoded `AgentEvent`, filled by the gRPC layer on first use.
    pub agent_frame: OnceLock<Bytes>,
    /// Encoded `PlayEvent` (play events only), filled by the gRPC layer on first use.
    pub play_frame: OnceLock<Bytes>,
}

/// The event that says the gateway signed the agent out (api-notes §6).
pub const SHUTDOWN_SERVICE: &str = "AgentOther_ShutdownService";

impl Event {
    /// Numbers a raw event of the session `session_id` of `agent_id`.
    pub fn new(sequence: u64, raw: RawEvent, agent_id: &Arc<str>, session_id: &Arc<str>) -> Self {
        Event {
            sequence,
            play_type: play_type(&raw.event_type),
            event_type: raw.event_type,
            content: raw.content,
            received_at: SystemTime::now(),
            agent_id: agent_id.clone(),
            session_id: session_id.clone(),
            agent_frame: OnceLock::new(),
            play_frame: OnceLock::new(),
        }
    }

    /// Memory this event keeps while retained: the event, its `Arc` header, its content, the
    /// frames a watcher will have the gRPC layer encode (each about the content's size plus the
    /// names), its slot in the window and its ledger entry. What the byte budget charges.
    pub fn retained_bytes(&self) -> usize {
        let names = self.event_type.len() + self.agent_id.len() + self.session_id.len();
        let frames = if self.play_type.is_some() { 2 } else { 1 };
        std::mem::size_of::<Self>()
            + 2 * std::mem::size_of::<usize>()
            + self.event_type.capacity()
            + json_bytes(&self.content)
            + frames * (json_bytes(&self.content) + names + 32)
            + super::hub::SLOT_BYTES
            + super::budget::ENTRY_BYTES
    }
}

/// Heap a JSON value occupies, roughly: its nodes and its strings.
fn json_bytes(value: &serde_json::Value) -> usize {
    use serde_json::Value as J;
    const NODE: usize = std::mem::size_of::<J>();
    match value {
        J::Null | J::Bool(_) | J::Number(_) => 0,
        J::String(s) => s.capacity(),
        J::Array(items) => items.iter().map(|v| NODE + json_bytes(v)).sum(),
        // A map entry: its key, its value node and the map's own bookkeeping.
        J::Object(map) => map
            .iter()
            .map(|(k, v)| k.capacity() + NODE + 3 * std::mem::size_of::<usize>() + json_bytes(v))
            .sum(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn play_events_are_typed_and_the_charge_grows_with_the_content() {
        let (a, s) = (Arc::from("1001"), Arc::from("s1"));
        let raw = |name: &str, content| RawEvent {
            event_type: name.into(),
            content,
        };
        let small = Event::new(1, raw("AgentEvent_Call_Release", json!(null)), &a, &s);
        assert_eq!(small.play_type, None);
        let big = Event::new(
            2,
            raw(
                "AgentMediaEvent_Play_Fail",
                json!({"reason": "x".repeat(1000), "list": [1, 2, 3]}),
            ),
            &a,
            &s,
        );
        assert_eq!(big.play_type, Some(PlayEventType::PlayFailed));
        assert!(big.retained_bytes() > small.retained_bytes() + 3 * 1000);
        assert!(
            big.agent_frame.get().is_none(),
            "nothing encoded before a watcher asks"
        );
    }
}
