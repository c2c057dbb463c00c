//! Push mode (api-notes §3.3): the gateway POSTs an agent's events to the bridge's callback, and
//! the bridge keeps the session alive with a heartbeat instead of a long poll.
//!
//! This module holds what is independent of HTTP: the per-session [`ServiceToken`], the parser of
//! a callback body ([`parse_callback`]), the [`PushInbox`] that applies a batch to the session's
//! [`Hub`] (the same hub polled events go to) and the [`Heartbeat`] loop. The HTTPS server that
//! receives callbacks is transport and lives in `crate::callback`.
//!
//! Vendor behaviour we are unsure of, and the choice made:
//! - whether the gateway retries a batch the receiver refused, and how often: undocumented. The
//!   bridge refuses only what it cannot apply (wrong token/Guid, malformed body), never a batch
//!   it has applied, so a retry can only bring what was not applied.
//! - whether `AgentOther_ShutdownService` is pushed: we assume yes (as the poll delivers it);
//!   after it the session is over, like in poll mode.
//! - batches carry no ids, so a batch the gateway delivers twice cannot be told from two real
//!   batches: both are applied (the simulator's record counts both deliveries).

use super::poll::{unix_ms, PollEnd, PollSettings};
use super::{phased_grid_pause, AfterFailure, Failures, SessionLink};
use crate::events::event::SHUTDOWN_SERVICE;
use crate::events::hub::Hub;
use crate::gateway::{Interface, RawEvent};
use serde::de::{Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use zeroize::Zeroizing;

/// The vendor's limit for `serviceToken` (api-notes §1.1).
const MAX_TOKEN_LEN: usize = 50;
/// Length of the tokens the bridge makes: 32 alphanumerics, about 190 bits.
const TOKEN_LEN: usize = 32;
const _: () = assert!(
    TOKEN_LEN <= MAX_TOKEN_LEN,
    "tokens within the vendor's limit"
);
const ALPHANUMERIC: &[u8; 62] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// A session's `serviceToken`: random per sign-in, alphanumeric (the vendor refuses special
/// characters with `100-001`), zeroized on drop, never printed.
pub struct ServiceToken(Zeroizing<String>);

impl ServiceToken {
    /// A fresh token from the operating system's random source.
    pub fn generate() -> Self {
        use ring::rand::SecureRandom;
        let rng = ring::rand::SystemRandom::new();
        let mut token = Zeroizing::new(String::with_capacity(TOKEN_LEN));
        let mut buf = Zeroizing::new([0u8; 64]);
        while token.len() < TOKEN_LEN {
            // A failing system RNG is not something to limp on with a weak token.
            rng.fill(&mut buf[..])
                .unwrap_or_else(|_| panic!("the system random source failed"));
            // Rejection sampling (248 = 4 × 62) keeps every character equally likely.
            for &b in buf.iter().filter(|&&b| b < 248) {
                if token.len() == TOKEN_LEN {
                    break;
                }
                token.push(char::from(ALPHANUMERIC[usize::from(b % 62)]));
            }
        }
        Self(token)
    }

    /// The token, for the sign-in body only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether `presented` is this token, in time independent of where they differ.
    pub fn matches(&self, presented: &[u8]) -> bool {
        constant_time_eq(self.0.as_bytes(), presented)
    }
}

impl std::fmt::Debug for ServiceToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServiceToken(<redacted>)")
    }
}

/// Compares two byte strings without an early exit (the length is not secret: tokens are all
/// [`TOKEN_LEN`] long, Guids all of one shape).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// A decoded callback body: `{"workNo": "...", "eventList": [ {eventType, workNo, content}, … ]}`,
/// oldest event first.
#[derive(Debug, Clone, PartialEq)]
pub struct CallbackBatch {
    /// The agent the batch is for.
    pub work_no: String,
    /// Its events, oldest first.
    pub events: Vec<RawEvent>,
}

/// Why a callback body was refused as a whole (nothing of it is applied).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallbackError {
    /// Not JSON, not an object, or fields of the wrong type.
    #[error("the callback body is not the gateway's event list: {0}")]
    Malformed(String),
    /// `workNo` missing or empty.
    #[error("the callback body names no workNo")]
    NoWorkNo,
    /// `eventList` missing.
    #[error("the callback body has no eventList")]
    NoEventList,
    /// An event without `eventType`: what it is cannot be told, and skipping it would break
    /// "whole or not at all".
    #[error("event {0} of the callback has no eventType")]
    NoEventType(usize),
    /// An event names another agent than the batch.
    #[error("event {0} of the callback is for another agent than its workNo")]
    ForeignEvent(usize),
}

/// Decodes a callback body. Never panics, whatever the bytes; unknown fields are ignored (the
/// vendor adds fields such as `eventGenTime` over versions). `workNo` may be a string or a
/// number (the vendor's examples send numbers as strings and vice versa).
pub fn parse_callback(body: &[u8]) -> Result<CallbackBatch, CallbackError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let wire = de
        .deserialize_map(BatchVisitor)
        .and_then(|w| de.end().map(|()| w))
        .map_err(|e| CallbackError::Malformed(e.to_string()))?;
    let work_no = wire
        .work_no
        .filter(|w| !w.is_empty())
        .ok_or(CallbackError::NoWorkNo)?;
    let list = wire.events.ok_or(CallbackError::NoEventList)?;
    let mut events = Vec::with_capacity(list.len());
    for (index, event) in list.into_iter().enumerate() {
        let event_type = event.event_type.ok_or(CallbackError::NoEventType(index))?;
        if event.work_no.is_some_and(|w| w != work_no) {
            return Err(CallbackError::ForeignEvent(index));
        }
        events.push(RawEvent {
            event_type,
            content: event.content,
        });
    }
    Ok(CallbackBatch { work_no, events })
}

#[derive(Default)]
struct WireBatch {
    work_no: Option<String>,
    events: Option<Vec<WireEvent>>,
}

#[derive(Default)]
struct WireEvent {
    event_type: Option<String>,
    work_no: Option<String>,
    content: Value,
}

/// A JSON string, or a number rendered as text (anything else is an error).
fn text(value: Value) -> Result<String, String> {
    match value {
        Value::String(s) => Ok(s),
        Value::Number(n) => Ok(n.to_string()),
        other => Err(format!("expected a string, found {other}")),
    }
}

struct BatchVisitor;

impl<'de> Visitor<'de> for BatchVisitor {
    type Value = WireBatch;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an object with workNo and eventList")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<WireBatch, A::Error> {
        let mut wire = WireBatch::default();
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match key.as_ref() {
                "workNo" => {
                    wire.work_no = Some(text(map.next_value()?).map_err(serde::de::Error::custom)?)
                }
                "eventList" => wire.events = Some(map.next_value_seed(ListSeed)?),
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(wire)
    }
}

struct ListSeed;

impl<'de> serde::de::DeserializeSeed<'de> for ListSeed {
    type Value = Vec<WireEvent>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for ListSeed {
    type Value = Vec<WireEvent>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a list of events")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        // The hint comes from the peer: never trust it for an allocation.
        let mut events = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(event) = seq.next_element_seed(EventSeed)? {
            events.push(event);
        }
        Ok(events)
    }
}

struct EventSeed;

impl<'de> serde::de::DeserializeSeed<'de> for EventSeed {
    type Value = WireEvent;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for EventSeed {
    type Value = WireEvent;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an event object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<WireEvent, A::Error> {
        let mut event = WireEvent::default();
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match key.as_ref() {
                "eventType" => match map.next_value::<Value>()? {
                    Value::String(s) if !s.is_empty() => event.event_type = Some(s),
                    _ => event.event_type = None,
                },
                "workNo" => {
                    event.work_no = Some(text(map.next_value()?).map_err(serde::de::Error::custom)?)
                }
                "content" => event.content = map.next_value()?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(event)
    }
}

/// A push session's receiving end: its token, the order callbacks are applied in, and the
/// signals between the callback server and the heartbeat loop.
#[derive(Debug)]
pub struct PushInbox {
    token: ServiceToken,
    /// Callbacks of one agent are applied one at a time, in the order they reach this lock
    /// (tokio's mutex is fair, first come first served).
    order: tokio::sync::Mutex<()>,
    /// Cancelled once a pushed batch carried `AgentOther_ShutdownService`.
    farewell: CancellationToken,
    /// Asks the heartbeat loop to beat now (a call was refused for its Guid: in dynamic
    /// auth the next heartbeat answer is what carries the newer one).
    kick: Notify,
}

/// The session's events ended before the batch could be applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the session's event stream has ended")]
pub struct Closed;

impl Default for PushInbox {
    fn default() -> Self {
        Self::new()
    }
}

impl PushInbox {
    /// An inbox with a fresh token.
    pub fn new() -> Self {
        Self {
            token: ServiceToken::generate(),
            order: tokio::sync::Mutex::new(()),
            farewell: CancellationToken::new(),
            kick: Notify::new(),
        }
    }

    /// The session's token (sent at sign-in, checked on every callback).
    pub fn token(&self) -> &ServiceToken {
        &self.token
    }

    /// Waits for this callback's turn; hold the guard while reading and applying its body.
    pub async fn turn(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.order.lock().await
    }

    /// Publishes a batch (caller holds its [`PushInbox::turn`]): every event, in order, into
    /// the hub the poll loop would have published to. Refused as a whole when the session's
    /// stream already ended. Events after `AgentOther_ShutdownService` are dropped, as the poll
    /// loop stops at it; the heartbeat loop then ends the session.
    pub fn apply(&self, hub: &Arc<Hub>, batch: CallbackBatch) -> Result<usize, Closed> {
        if hub.is_closed() {
            return Err(Closed);
        }
        let mut applied = 0;
        for raw in batch.events {
            let shutdown = raw.event_type == SHUTDOWN_SERVICE;
            // Only a concurrent retirement of the session closes the hub mid-batch; the
            // watchers' streams end then anyway.
            if hub.publish(raw).is_none() {
                break;
            }
            applied += 1;
            if shutdown {
                self.farewell.cancel();
                break;
            }
        }
        Ok(applied)
    }

    /// Asks the heartbeat loop for a heartbeat now.
    pub fn kick(&self) {
        self.kick.notify_one();
    }
}

/// Heartbeats of one bridge in flight at once while the gateway answers promptly. Each lane is
/// one kept-alive HTTPS connection that beat after beat reuses, so 10,000 sessions keep about
/// this many connections busy instead of opening (and holding) one each: without lanes, every
/// session of a slot beats at once and the client's pool grows to the largest slot, each new
/// connection a full TLS handshake (`ccgw-bench push` measured 12 % of a core for 10,000 idle
/// agents, most of it handshakes).
pub const HEARTBEAT_LANES: usize = 8;
/// Longest wait for a lane: a heartbeat that waited this long goes without one (on a new
/// connection if the pool has no idle one), so a slow gateway cannot starve sessions into the
/// 2-minute sign-out; a beat is late by at most this.
pub const LANE_WAIT: Duration = Duration::from_secs(1);
/// Slots a heartbeat period is divided into. A session beats in the slot its agent id hashes to,
/// so sessions of one slot share a timer wake-up and the bridge's heartbeats are spread evenly
/// over the period (each slot keeps the lanes' connections busy well within any keep-alive
/// timeout of the gateway's: Tomcat's default is 20 s).
const HEARTBEAT_SLOTS: u32 = 32;

/// Heartbeat pacing (api-notes §3.3: every 30 s; the gateway signs out after 2 minutes without).
#[derive(Debug, Clone)]
pub struct HeartbeatSettings {
    /// Between two heartbeats; on a process-wide grid, in the session's slot of it.
    pub every: Duration,
    /// Back-off after a failed heartbeat (capped far below the 2-minute limit).
    pub retry: PollSettings,
    /// The bridge's heartbeat lanes, shared by every session (clones share them).
    pub lanes: Arc<Semaphore>,
}

impl Default for HeartbeatSettings {
    fn default() -> Self {
        Self {
            every: Duration::from_secs(30),
            retry: PollSettings::default(),
            lanes: Arc::new(Semaphore::new(HEARTBEAT_LANES)),
        }
    }
}

/// Where in each period `agent_id` beats: its slot's offset (the same agent keeps its slot
/// across sign-ins and restarts; distinct agents spread evenly).
fn heartbeat_phase(agent_id: &str, every: Duration) -> Duration {
    use std::hash::{Hash, Hasher};
    // Fixed keys: the slot is a function of the agent id alone.
    let mut hasher = std::hash::DefaultHasher::new();
    agent_id.hash(&mut hasher);
    let slot = (hasher.finish() % u64::from(HEARTBEAT_SLOTS)) as u32;
    every / HEARTBEAT_SLOTS * slot
}

/// The heartbeat loop of one push-mode session: keeps it alive, carries `Set-GUID` in dynamic
/// auth, and ends like the poll loop (same [`PollEnd`]), so the session layer's rules (a refused
/// heartbeat ends the session; keep-signed-in signs in again) are the poll mode's.
pub struct Heartbeat {
    /// What every event source of a session shares (`polls` counts answered heartbeats).
    pub link: SessionLink,
    /// The session's inbox (farewell and kick signals).
    pub inbox: Arc<PushInbox>,
    /// Pacing.
    pub settings: HeartbeatSettings,
}

impl Heartbeat {
    /// Runs until the session ends or the loop is cancelled.
    pub async fn run(self) -> PollEnd {
        let Heartbeat {
            link,
            inbox,
            settings,
        } = self;
        let mut failures = Failures::default();
        let cancelled = link.cancel.cancelled();
        tokio::pin!(cancelled);
        let farewell = inbox.farewell.cancelled();
        tokio::pin!(farewell);
        let phase = heartbeat_phase(&link.agent_id, settings.every);
        let mut pause = phased_grid_pause(settings.every, phase, Instant::now());
        loop {
            tokio::select! {
                biased;
                () = &mut cancelled => return PollEnd::Cancelled,
                () = &mut farewell => return PollEnd::SignedOutByGateway,
                () = inbox.kick.notified() => {}
                () = tokio::time::sleep(pause) => {}
            }
            let sent = link.auth.current();
            let answer = tokio::select! {
                biased;
                () = &mut cancelled => return PollEnd::Cancelled,
                a = async {
                    // Held until the answer is read, so the next beat finds its connection idle.
                    let _lane = tokio::time::timeout(LANE_WAIT, settings.lanes.acquire()).await;
                    link.gateway.call(Interface::Heartbeat, &link.agent_id, &link.auth, sent.guid.as_ref(), None, None).await
                } => a,
            };
            pause = match answer {
                Ok(_) => {
                    failures.answered();
                    link.last_poll_at.store(unix_ms(), Ordering::Relaxed);
                    link.polls.send_modify(|n| *n += 1);
                    // At least half a period: a kick right after a beat does not beat twice.
                    let half = settings.every / 2;
                    half + phased_grid_pause(settings.every, phase, Instant::now() + half)
                }
                Err(e) => match link.after_failure(
                    e,
                    sent.generation,
                    &mut failures,
                    &settings.retry,
                    "heartbeat",
                ) {
                    AfterFailure::SendAgain => Duration::ZERO,
                    AfterFailure::End(end) => return end,
                    AfterFailure::Pause(pause) => pause,
                },
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_alphanumeric_within_the_vendor_limit_and_distinct() {
        let a = ServiceToken::generate();
        let b = ServiceToken::generate();
        assert_eq!(a.expose().len(), TOKEN_LEN);
        assert!(a.expose().bytes().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a.expose(), b.expose());
        assert!(a.matches(a.expose().as_bytes()));
        assert!(!a.matches(b.expose().as_bytes()));
        assert!(!a.matches(&a.expose().as_bytes()[1..]));
        assert_eq!(format!("{a:?}"), "ServiceToken(<redacted>)");
    }

    #[test]
    fn a_callback_body_decodes_oldest_first_ignoring_unknown_fields() {
        let body = br#"{"workNo":"101","extra":[1],"eventList":[
            {"eventType":"AgentMediaEvent_Play","workNo":"101","content":{"a":1},"eventGenTime":5},
            {"eventType":"AgentState_Ready","content":null}]}"#;
        let batch = parse_callback(body).unwrap();
        assert_eq!(batch.work_no, "101");
        let types: Vec<_> = batch.events.iter().map(|e| e.event_type.as_str()).collect();
        assert_eq!(types, ["AgentMediaEvent_Play", "AgentState_Ready"]);
        assert_eq!(batch.events[0].content, serde_json::json!({"a": 1}));
        let numeric = parse_callback(br#"{"workNo":101,"eventList":[]}"#).unwrap();
        assert_eq!(numeric.work_no, "101");
    }

    #[test]
    fn bad_callback_bodies_are_refused_whole() {
        let malformed =
            |body: &[u8]| matches!(parse_callback(body), Err(CallbackError::Malformed(_)));
        assert!(malformed(b""));
        assert!(malformed(b"[]"));
        assert!(malformed(br#"{"workNo":"101","eventList":["#));
        assert!(malformed(br#"{"workNo":"101","eventList":{}}"#));
        assert!(malformed(br#"{"workNo":[],"eventList":[]}"#));
        let refused = |body: &[u8]| parse_callback(body).unwrap_err();
        assert_eq!(refused(br#"{"eventList":[]}"#), CallbackError::NoWorkNo);
        assert_eq!(
            refused(br#"{"workNo":"","eventList":[]}"#),
            CallbackError::NoWorkNo
        );
        assert_eq!(refused(br#"{"workNo":"101"}"#), CallbackError::NoEventList);
        assert_eq!(
            refused(br#"{"workNo":"101","eventList":[{"eventType":"A"},{"content":1}]}"#),
            CallbackError::NoEventType(1)
        );
        assert_eq!(
            refused(br#"{"workNo":"101","eventList":[{"eventType":"X","workNo":"102"}]}"#),
            CallbackError::ForeignEvent(0)
        );
    }

    #[test]
    fn heartbeat_phases_spread_agents_over_the_period_and_stay_put() {
        let every = Duration::from_secs(32);
        let phases: std::collections::HashSet<Duration> = (0..1000)
            .map(|i| heartbeat_phase(&(1000 + i).to_string(), every))
            .collect();
        assert!(phases.iter().all(|p| *p < every && p.subsec_nanos() == 0));
        assert_eq!(phases.len(), HEARTBEAT_SLOTS as usize, "every slot used");
        assert_eq!(
            heartbeat_phase("1001", every),
            heartbeat_phase("1001", every)
        );
    }

    #[test]
    fn constant_time_eq_is_equality() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(constant_time_eq(b"", b""));
    }
}
