//! Server-streaming event delivery shared by `WatchPlayEvents` and `WatchAgentEvents`.
//!
//! A stream is an `unfold` over the watcher's [`Subscription`]: no task and no queue per
//! watcher, so an open stream costs a cursor, and dropping it (client cancel) releases it at once.

use super::status::{with_info, BRIDGE_DOMAIN};
use super::validate::Violations;
use crate::events::{End, Event, Next, SubscribeError, Subscription};
use crate::session::{Session, Sessions};
use crate::telemetry::Metrics;
use futures::Stream;
use std::pin::Pin;
use std::sync::Arc;
use tonic::{Code, Status};

/// A boxed stream of messages, as tonic's generated traits want it.
pub type EventStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Resuming needs the session the sequence numbers belong to.
pub fn check_resume(v: &mut Violations, resume_after: Option<u64>, session_id: &str) {
    if resume_after.is_some() && session_id.is_empty() {
        v.add(
            "session_id",
            "must be set with resume_after (sequences restart with every session)",
        );
    }
}

/// Where a watch starts, validated against the live session.
pub fn subscribe(
    sessions: &Sessions,
    agent_id: &str,
    resume_after: Option<u64>,
    session_id: &str,
) -> Result<(Arc<Session>, Subscription), Status> {
    let session = sessions.running_session(agent_id)?;
    if !session_id.is_empty() && session_id != &*session.session_id {
        return Err(with_info(
            Code::FailedPrecondition,
            // The bridge keeps no history of ids: it cannot tell an ended session from one it
            // never issued, so it says both (a resume needs the current one either way).
            format!(
                "session {session_id} is not the current session of agent {agent_id}: it is unknown to this bridge or has ended (the current session is {}; sequences restart with every session)",
                session.session_id
            ),
            BRIDGE_DOMAIN,
            "SESSION_CHANGED",
            &[("current_session_id", session.session_id.to_string())],
        ));
    }
    let sub = session.hub.subscribe(resume_after).map_err(|e| match e {
        SubscribeError::OutOfRange { oldest, newest, .. } => with_info(
            Code::OutOfRange,
            e.to_string(),
            BRIDGE_DOMAIN,
            "RESUME_OUT_OF_RANGE",
            &[
                ("oldest_sequence", oldest.to_string()),
                ("newest_sequence", newest.to_string()),
            ],
        ),
    })?;
    Ok((session, sub))
}

struct State<F> {
    sub: Subscription,
    session: Arc<Session>,
    metrics: Arc<Metrics>,
    make: F,
}

/// Turns a subscription into a gRPC stream; `make` picks each event's shared frame (or skips it).
pub fn stream<T, F>(
    session: Arc<Session>,
    sub: Subscription,
    metrics: Arc<Metrics>,
    make: F,
) -> EventStream<T>
where
    T: Send + 'static,
    F: Fn(&Event) -> Option<T> + Send + Sync + 'static,
{
    let state = State {
        sub,
        session,
        metrics,
        make,
    };
    Box::pin(futures::stream::unfold(Some(state), |state| async move {
        let mut st = state?;
        loop {
            match st.sub.next().await {
                Next::Event(event) => {
                    if let Some(msg) = (st.make)(&event) {
                        st.metrics.event_delivered();
                        return Some((Ok(msg), Some(st)));
                    }
                }
                Next::Ended(End::SignedOut) => return None,
                Next::Ended(end) => return Some((Err(ended_status(&st.session, end)), None)),
                Next::Overrun { last_sent, oldest } => {
                    let status = with_info(
                        Code::ResourceExhausted,
                        format!(
                            "watcher fell behind the retained window; last sequence sent {last_sent}, oldest held {oldest}"
                        ),
                        BRIDGE_DOMAIN,
                        "WATCHER_OVERRUN",
                        &[
                            ("last_sequence", last_sent.to_string()),
                            ("oldest_sequence", oldest.to_string()),
                            ("session_id", st.session.session_id.to_string()),
                        ],
                    );
                    return Some((Err(status), None));
                }
            }
        }
    }))
}

/// The status that ends a stream (or an awaited outcome) when the session ends.
pub fn ended_status(session: &Session, end: End) -> Status {
    match end {
        End::Shutdown => with_info(
            Code::Unavailable,
            "the bridge is shutting down; reconnect to another instance",
            BRIDGE_DOMAIN,
            "SHUTTING_DOWN",
            &[],
        ),
        End::Moved { to } => with_info(
            Code::FailedPrecondition,
            format!(
                "agent {} moved to bridge instance {to} (the agent pool rebalanced); watch it there, from the start: its session there is a new one",
                session.agent_id
            ),
            BRIDGE_DOMAIN,
            "AGENT_MOVED",
            &[
                ("agent_id", session.agent_id.to_string()),
                ("owner", to.to_string()),
                ("session_id", session.session_id.to_string()),
            ],
        ),
        End::SessionEnded | End::SignedOut => with_info(
            Code::Aborted,
            format!(
                "the session of agent {} ended (signed out by the gateway or replaced)",
                session.agent_id
            ),
            BRIDGE_DOMAIN,
            "SESSION_ENDED",
            &[("session_id", session.session_id.to_string())],
        ),
    }
}
