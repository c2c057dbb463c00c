//! A streamed message encoded once and shared: the fan-out path's unit of work.
//!
//! `EncodedEvent` implements `prost::Message` by writing bytes that already are a complete
//! `PlayEvent`/`AgentEvent` encoding, so tonic's codec frames them without re-encoding. Cloning
//! it is a reference-count increment.

use bytes::{Buf, BufMut, Bytes};
use prost::encoding::{skip_field, DecodeContext, WireType};
use prost::DecodeError;

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
    use crate::proto::PlayEvent;
    use prost::Message;

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
