//! The long poll `GET /agentevent/{id}`: one event per answer, held up to `poll_hold` when none is
//! pending, woken by a new event, a due Guid rotation, a newer poll or the end of the session.
//!
//! Only one poll per agent is served at a time: a newer admitted poll makes an older held one
//! answer empty at once (as when a browser client replaces its XHR), so events are never split
//! between two pollers.

use std::sync::Arc;

use http::header::HeaderName;
use http::StatusCode;
use serde_json::{json, Value};
use tokio::time::Instant;

use super::routes::Dropped;
use super::shared::Shared;
use super::state::{Agent, AgentState, NOT_SIGNED_IN};

/// Retcode for "wrong method used to obtain agent events" (api-notes §7).
const WRONG_METHOD: &str = "000-001";
use super::wire::{self, Reply};
use super::EmptyPollStyle;

/// What a poll answers, before rendering.
enum Answer {
    Event(Value, Option<String>),
    Empty(Option<String>),
    Refused(&'static str),
    /// The answer is lost after its effect (see [`Simulator::rotate_guid_lost`](super::Simulator::rotate_guid_lost)).
    Lost,
}

/// Handles one poll request of `agent_id` carrying `guid`.
/// `Err` when the answer is lost after its effect.
pub(crate) async fn poll(
    shared: &Shared,
    agent_id: &str,
    guid: Option<&str>,
) -> Result<Reply, Dropped> {
    let Some(agent) = shared.agents.get(agent_id) else {
        return Ok(Reply::retcode(NOT_SIGNED_IN));
    };
    let now = Instant::now();
    let (serial, ticket) = {
        let mut state = agent.lock();
        if let Some(answer) = farewell_for_guid(&mut state, guid) {
            return render(shared, answer);
        }
        match state.authenticate(guid, now) {
            // The poll interface is not for push-mode sessions (api-notes §3.1): "wrong method
            // used to obtain agent events".
            Ok(session) if session.push.is_some() => return Ok(Reply::retcode(WRONG_METHOD)),
            Ok(session) => {
                session.polls_in_flight += 1;
                session.poll_ticket += 1;
                (session.serial, session.poll_ticket)
            }
            Err(retcode) => return Ok(Reply::retcode(retcode)),
        }
    };
    // Let an older held poll notice it has been replaced.
    agent.wake();
    let _in_flight = InFlight {
        agent: Arc::clone(&agent),
        serial,
    };
    let deadline = now + shared.config.poll_hold;
    loop {
        let woken = agent.notified();
        tokio::pin!(woken);
        // Register before looking, so a wake-up between the look and the wait is not missed.
        woken.as_mut().enable();
        let last_look = Instant::now() >= deadline;
        let wake_at = match step(shared, &mut agent.lock(), serial, ticket, last_look) {
            Ok(answer) => return render(shared, answer),
            Err(rotation) => rotation.map_or(deadline, |at| at.min(deadline)),
        };
        tokio::select! {
            _ = woken => {}
            _ = tokio::time::sleep_until(wake_at) => {}
            // The connection is going away too; just do not outlive the simulator.
            _ = shared.shutdown.cancelled() => return Ok(Reply::html(StatusCode::SERVICE_UNAVAILABLE)),
        }
    }
}

/// A poll carrying a Guid of a session that ended with notification receives what that session
/// still owes it (queued events, then `AgentOther_ShutdownService`), then `100-006`.
fn farewell_for_guid(state: &mut AgentState, guid: Option<&str>) -> Option<Answer> {
    let guid = guid?;
    let farewell = state.farewell.as_ref()?;
    if !farewell.guids.iter().any(|g| g == guid) {
        return None;
    }
    let (serial, ticket) = (farewell.serial, farewell.poll_ticket);
    Some(take_farewell(state, serial, ticket))
}

/// The next thing the ended session `serial` owes the poll holding `ticket`.
fn take_farewell(state: &mut AgentState, serial: u64, ticket: u64) -> Answer {
    let Some(farewell) = state.farewell.as_mut().filter(|f| f.serial == serial) else {
        return Answer::Refused(NOT_SIGNED_IN);
    };
    if farewell.poll_ticket != ticket {
        // Replaced by a newer poll of the same session, which gets the farewell.
        return Answer::Empty(None);
    }
    let event = farewell.events.pop_front();
    if farewell.events.is_empty() {
        state.farewell = None;
    }
    event.map_or(Answer::Refused(NOT_SIGNED_IN), |e| Answer::Event(e, None))
}

/// Looks at the state on behalf of an admitted poll: `Ok` = answer now, `Err` = keep holding
/// (until the given rotation instant, if any).
fn step(
    shared: &Shared,
    state: &mut AgentState,
    serial: u64,
    ticket: u64,
    last_look: bool,
) -> Result<Answer, Option<Instant>> {
    let Some(session) = state.session.as_mut().filter(|s| s.serial == serial) else {
        return Ok(take_farewell(state, serial, ticket));
    };
    if session.poll_ticket != ticket {
        // Replaced by a newer poll, which gets whatever is pending.
        return Ok(Answer::Empty(None));
    }
    if let Some(retcode) = session.sign_in_again {
        return Ok(Answer::Refused(retcode));
    }
    let now = Instant::now();
    let has_event = !session.events.is_empty();
    let rotation_due = session.rotation_due(now);
    if !has_event && !rotation_due && !last_look {
        return Err(session.next_rotation());
    }
    if rotation_due && std::mem::take(&mut session.lose_rotation_answer) {
        state.replace_guid(&shared.agents, now);
        return Ok(Answer::Lost);
    }
    let event = session.events.pop_front();
    let new_guid = if rotation_due {
        state.replace_guid(&shared.agents, now)
    } else {
        None
    };
    Ok(match event {
        Some(event) => Answer::Event(event, new_guid),
        None => Answer::Empty(new_guid),
    })
}

fn render(shared: &Shared, answer: Answer) -> Result<Reply, Dropped> {
    let (body, new_guid) = match answer {
        Answer::Lost => return Err(Dropped),
        Answer::Refused(retcode) => return Ok(Reply::retcode(retcode)),
        Answer::Event(event, new_guid) => (
            json!({"message": "", "retcode": "0", "event": event}),
            new_guid,
        ),
        Answer::Empty(new_guid) => {
            let body = match shared.next_empty_style() {
                EmptyPollStyle::Absent => json!({"message": "", "retcode": "0"}),
                EmptyPollStyle::EmptyObject => json!({"message": "", "retcode": "0", "event": {}}),
                EmptyPollStyle::Null | EmptyPollStyle::Rotate => {
                    json!({"message": "", "retcode": "0", "event": null})
                }
            };
            (body, new_guid)
        }
    };
    let reply = Reply::json(&body);
    Ok(match new_guid {
        Some(guid) => reply.with_header(
            HeaderName::from_static("set-guid"),
            wire::set_guid(&guid, shared.config.set_guid_attributes),
        ),
        None => reply,
    })
}

/// Marks a poll as held for the idle sign-out, and counts its end as activity.
struct InFlight {
    agent: Arc<Agent>,
    serial: u64,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut state = self.agent.lock();
        if let Some(session) = state.session.as_mut().filter(|s| s.serial == self.serial) {
            session.polls_in_flight = session.polls_in_flight.saturating_sub(1);
            session.last_seen = Instant::now();
        }
    }
}
