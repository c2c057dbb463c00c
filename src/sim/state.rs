//! Agents and their sessions: Guids (issue, rotation, overlap), queued events, the end of a
//! session, and the idle sign-out.
//!
//! Locking: the registry is an `RwLock` map taken only to find or insert an agent; each agent has
//! its own `Mutex`, held for short, synchronous updates only (never across an await). Waiters
//! (held polls) sleep on the agent's `Notify` and re-check the state when woken.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::futures::Notified;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::playback::Play;
use super::push::PushTarget;
use super::sync::lock;
use super::wire;
use super::{AuthMode, SimConfig};

/// Retired Guids remembered per agent, so that a stale Guid is answered `100-006` (it *was*
/// valid) rather than `000-003` (never valid).
const RETIRED_KEPT: usize = 16;

/// Retcode for "agent not signed in" (also: Guid no longer valid).
pub(crate) const NOT_SIGNED_IN: &str = "100-006";
/// Retcode for "no permission" (a Guid this session never issued).
pub(crate) const WRONG_GUID: &str = "000-003";

/// The registry of agents that ever tried to sign in.
pub(crate) struct Agents {
    map: RwLock<HashMap<String, Arc<Agent>>>,
    auth: AuthMode,
    /// How each session ended, oldest first (see [`SessionEnd`]).
    ends: Mutex<Vec<SessionEnd>>,
}

/// Who created a gateway session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client {
    /// A client of the gateway interface: a bridge.
    Bridge,
    /// A person's softphone ([`super::Simulator::sign_in_elsewhere`]).
    Person,
    /// A supervisor's desk, which replaced someone's session with a person's
    /// ([`super::Simulator::supervisor_replaces`]).
    Supervisor,
}

/// How a gateway session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndCause {
    /// A `logout` (or `forcelogout`) over the interface with one of the session's own Guids.
    OwnGuidLogout,
    /// A `forcelogin` replaced it; `by` created the new session.
    ForceLogin {
        /// Who forced.
        by: Client,
    },
    /// The gateway's idle sign-out.
    IdleSignOut,
    /// An administrator or inspector ([`super::Simulator::force_sign_out`],
    /// [`super::Simulator::kill_session`]).
    Administrator,
    /// The person signed out at their softphone ([`super::Simulator::person_signs_out`]).
    PersonSignedOut,
}

/// One ended session, as the simulator saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionEnd {
    /// The agent.
    pub agent_id: String,
    /// Who created the session.
    pub created_by: Client,
    /// How it ended.
    pub cause: EndCause,
}

impl SessionEnd {
    /// Whether a bridge ended a session another client created: a person kicked.
    pub fn kicked_someone(&self) -> bool {
        self.created_by != Client::Bridge
            && matches!(
                self.cause,
                EndCause::OwnGuidLogout | EndCause::ForceLogin { by: Client::Bridge }
            )
    }
}

impl Agents {
    /// An empty registry following the auth mode of `config`.
    pub fn new(config: &SimConfig) -> Agents {
        Agents {
            map: RwLock::new(HashMap::new()),
            auth: config.auth,
            ends: Mutex::new(Vec::new()),
        }
    }

    /// The agent, if it ever signed in.
    pub fn get(&self, id: &str) -> Option<Arc<Agent>> {
        self.map
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(id)
            .cloned()
    }

    /// The agent, created on its first sign-in.
    pub fn get_or_create(&self, id: &str) -> Arc<Agent> {
        if let Some(agent) = self.get(id) {
            return agent;
        }
        let mut map = self
            .map
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Arc::clone(map.entry(id.to_owned()).or_insert_with(|| {
            Arc::new(Agent {
                id: id.to_owned(),
                state: Mutex::new(AgentState::default()),
                wake: Notify::new(),
            })
        }))
    }

    /// Every agent known so far.
    pub fn all(&self) -> Vec<Arc<Agent>> {
        self.map
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }

    /// Ends the session with `AgentOther_ShutdownService` for its poller.
    pub fn force_sign_out(&self, id: &str) {
        self.with_agent(id, |state| {
            let ended = state.end_with_shutdown();
            self.record_end(id, ended, EndCause::Administrator);
        });
    }

    /// Ends the session without any event.
    pub fn kill_session(&self, id: &str) {
        self.with_agent(id, |state| {
            let ended = state.end_session().map(|s| s.client);
            self.record_end(id, ended, EndCause::Administrator);
        });
    }

    /// Records how a session (created by `created_by`, if one ended) ended.
    pub fn record_end(&self, id: &str, created_by: Option<Client>, cause: EndCause) {
        if let Some(created_by) = created_by {
            lock(&self.ends).push(SessionEnd {
                agent_id: id.to_owned(),
                created_by,
                cause,
            });
        }
    }

    /// Every session end so far, oldest first.
    pub fn ends(&self) -> Vec<SessionEnd> {
        lock(&self.ends).clone()
    }

    /// Requests a rotation, performed by the next poll answer.
    pub fn rotate_guid(&self, id: &str) {
        self.with_agent(id, |state| {
            if let Some(session) = state.session.as_mut() {
                session.rotate_requested = true;
            }
        });
    }

    /// Requests a rotation whose delivering poll answer is lost after the gateway rotated.
    pub fn rotate_guid_lost(&self, id: &str) {
        self.with_agent(id, |state| {
            if let Some(session) = state.session.as_mut() {
                session.rotate_requested = true;
                session.lose_rotation_answer = true;
            }
        });
    }

    /// Makes every later request of the session's Guids answer `retcode` (DR: "sign in
    /// again"); the gateway still counts the agent signed in, so a plain login gets `100-002`.
    pub fn require_sign_in_again(&self, id: &str, retcode: &'static str) {
        self.with_agent(id, |state| {
            if let Some(session) = state.session.as_mut() {
                session.sign_in_again = Some(retcode);
            }
        });
    }

    /// Queues an event object as given (ignored when the agent has no session).
    pub fn queue_raw_event(&self, id: &str, event: Value) {
        self.with_agent(id, |state| {
            if let Some(session) = state.session.as_mut() {
                session.events.push_back(event);
            }
        });
    }

    /// Events queued for the agent's session (0 without one).
    pub fn pending_events(&self, id: &str) -> usize {
        self.get(id)
            .and_then(|agent| agent.lock().session.as_ref().map(|s| s.events.len()))
            .unwrap_or(0)
    }

    /// Whether another client (not the gateway interface) signed in the agent's session.
    /// Ends the agent's session if another client holds it; whether one was ended.
    pub fn end_other_client_session(&self, id: &str) -> bool {
        let Some(agent) = self.get(id) else {
            return false;
        };
        let ended = {
            let mut state = agent.lock();
            if state.session.as_ref().is_some_and(|s| s.other_client()) {
                let ended = state.end_session().map(|s| s.client);
                self.record_end(id, ended, EndCause::PersonSignedOut);
                true
            } else {
                false
            }
        };
        agent.wake();
        ended
    }

    pub fn held_by_other_client(&self, id: &str) -> bool {
        self.get(id).is_some_and(|agent| {
            agent
                .lock()
                .session
                .as_ref()
                .is_some_and(|s| s.other_client())
        })
    }

    /// Whether the agent has a session.
    pub fn signed_in(&self, id: &str) -> bool {
        self.get(id)
            .is_some_and(|agent| agent.lock().session.is_some())
    }

    /// The newest Guid of the agent's session.
    pub fn current_guid(&self, id: &str) -> Option<String> {
        let agent = self.get(id)?;
        let state = agent.lock();
        state.session.as_ref().map(|s| s.guid.clone())
    }

    /// Applies `change` to a known agent and wakes its held poll.
    fn with_agent(&self, id: &str, change: impl FnOnce(&mut AgentState)) {
        if let Some(agent) = self.get(id) {
            change(&mut agent.lock());
            agent.wake();
        }
    }

    /// The Guid rules of the configured mode, for a rotation at `now`.
    pub fn previous_after_rotation(&self, old: String, now: Instant) -> Previous {
        match self.auth {
            AuthMode::Dynamic {
                strict: false,
                overlap,
                ..
            } => Previous::Overlap(old, now + overlap),
            _ => Previous::Retire(old),
        }
    }

    /// Time between automatic rotations (dynamic mode only).
    pub fn rotation_period(&self) -> Option<Duration> {
        match self.auth {
            AuthMode::Dynamic { rotate_every, .. } => Some(rotate_every),
            AuthMode::Static => None,
        }
    }
}

/// What happens to the Guid a rotation replaces.
pub(crate) enum Previous {
    /// Refused from now on.
    Retire(String),
    /// Still accepted until the instant.
    Overlap(String, Instant),
}

/// One agent id: its session (if any) and the wake-up for its held poll.
pub(crate) struct Agent {
    pub id: String,
    state: Mutex<AgentState>,
    wake: Notify,
}

impl Agent {
    /// Locks the agent's state (never hold the guard across an await).
    pub fn lock(&self) -> MutexGuard<'_, AgentState> {
        lock(&self.state)
    }

    /// Wakes every held poll of this agent so it re-checks the state.
    pub fn wake(&self) {
        self.wake.notify_waiters()
    }

    /// A future completing at the next [`Agent::wake`].
    pub fn notified(&self) -> Notified<'_> {
        self.wake.notified()
    }
}

/// The mutable part of an agent.
#[derive(Default)]
pub(crate) struct AgentState {
    pub session: Option<Session>,
    /// What the poller of a session that was ended *with* notification still has to receive.
    pub farewell: Option<Farewell>,
    next_serial: u64,
    /// Guids this agent was issued that are no longer valid (newest last, bounded), so a stale
    /// Guid is answered `100-006` ("not signed in" from that Guid's point of view) and only a
    /// Guid never issued gets `000-003`.
    retired: VecDeque<String>,
}

impl AgentState {
    /// Starts a new session (the caller made sure none exists or ended the old one).
    pub fn start_session(&mut self, work_no: &str, rotation: Option<Duration>) -> &mut Session {
        self.next_serial += 1;
        let now = Instant::now();
        self.session.insert(Session {
            serial: self.next_serial,
            work_no: work_no.to_owned(),
            guid: wire::new_guid(),
            previous: None,
            rotate_requested: false,
            next_rotation: rotation.map(|every| now + every),
            login_time_ms: wire::now_ms(),
            events: VecDeque::new(),
            last_seen: now,
            polls_in_flight: 0,
            poll_ticket: 0,
            lose_rotation_answer: false,
            sign_in_again: None,
            play: Play::default(),
            client: Client::Bridge,
            push: None,
        })
    }

    /// Checks the `guid` header of an operation request; on success the request counts as
    /// activity of the agent.
    pub fn authenticate(
        &mut self,
        guid: Option<&str>,
        now: Instant,
    ) -> Result<&mut Session, &'static str> {
        let session = self.session.as_mut().ok_or(NOT_SIGNED_IN)?;
        let guid = guid.ok_or(WRONG_GUID)?;
        if session.accepts(guid, now) {
            if let Some(retcode) = session.sign_in_again {
                return Err(retcode);
            }
            session.last_seen = now;
            return Ok(session);
        }
        let stale = session.previous.as_ref().is_some_and(|(p, _)| p == guid)
            || self.retired.iter().any(|r| r == guid);
        Err(if stale { NOT_SIGNED_IN } else { WRONG_GUID })
    }

    /// Replaces the session's Guid now (rotation or updateGuid); the old one is refused or kept
    /// for the overlap per the auth mode. Returns the new Guid.
    pub fn replace_guid(&mut self, agents: &Agents, now: Instant) -> Option<String> {
        let session = self.session.as_mut()?;
        let old = std::mem::replace(&mut session.guid, wire::new_guid());
        let mut retire: Vec<String> = session
            .previous
            .take()
            .map(|(older, _)| older)
            .into_iter()
            .collect();
        match agents.previous_after_rotation(old, now) {
            Previous::Retire(old) => retire.push(old),
            Previous::Overlap(old, until) => session.previous = Some((old, until)),
        }
        session.rotate_requested = false;
        session.next_rotation = agents.rotation_period().map(|every| now + every);
        let new_guid = session.guid.clone();
        retire.into_iter().for_each(|g| self.retire(g));
        Some(new_guid)
    }

    fn retire(&mut self, guid: String) {
        if self.retired.len() >= RETIRED_KEPT {
            self.retired.pop_front();
        }
        self.retired.push_back(guid);
    }

    /// Ends the session without any event (active sign-out, killed session). Its Guids become
    /// stale.
    pub fn end_session(&mut self) -> Option<Session> {
        let mut session = self.session.take()?;
        for guid in session.take_guids() {
            self.retire(guid);
        }
        Some(session)
    }

    /// Ends the session as a forced sign-out does: the poller still receives the queued events
    /// and then `AgentOther_ShutdownService`; the session's Guids are refused for everything else.
    /// Returns who had created the session, if one ended.
    pub fn end_with_shutdown(&mut self) -> Option<Client> {
        let mut session = self.session.take()?;
        let client = session.client;
        let shutdown = wire::event(
            "AgentOther_ShutdownService",
            &session.work_no,
            json!({"loginTime": session.login_time_ms.to_string()}),
        );
        let guids = session.take_guids();
        for guid in &guids {
            self.retire(guid.clone());
        }
        let mut events = std::mem::take(&mut session.events);
        events.push_back(shutdown);
        self.farewell = Some(Farewell {
            serial: session.serial,
            poll_ticket: session.poll_ticket,
            guids,
            events,
            push: session.push.take(),
        });
        Some(client)
    }
}

/// The last events owed to the poller of an ended session.
pub(crate) struct Farewell {
    pub serial: u64,
    /// The ticket of the session's newest poll when it ended.
    pub poll_ticket: u64,
    pub guids: Vec<String>,
    pub events: VecDeque<Value>,
    /// A push session's callback: its pusher delivers the farewell there.
    pub push: Option<PushTarget>,
}

/// A signed-in agent.
pub(crate) struct Session {
    /// Distinguishes this session from earlier and later sessions of the same agent.
    pub serial: u64,
    pub work_no: String,
    guid: String,
    /// The Guid before the last rotation and until when it is still accepted (non-strict
    /// dynamic mode only).
    previous: Option<(String, Instant)>,
    rotate_requested: bool,
    next_rotation: Option<Instant>,
    pub login_time_ms: u64,
    pub events: VecDeque<Value>,
    pub last_seen: Instant,
    pub polls_in_flight: u32,
    /// Incremented by every admitted poll; a held poll with an older ticket has been replaced.
    pub poll_ticket: u64,
    /// The poll answer that delivers the next rotation is lost after the rotation happened.
    pub lose_rotation_answer: bool,
    /// A DR retcode (`105-005/006/007`) every request with this session's Guids gets.
    pub sign_in_again: Option<&'static str>,
    pub play: Play,
    /// Who signed it in.
    pub client: Client,
    /// Push mode: where its events go (`None`: they wait for polls).
    pub push: Option<PushTarget>,
}

impl Session {
    /// Signed in by another client than a bridge (a person's softphone, a supervisor's desk).
    pub fn other_client(&self) -> bool {
        self.client != Client::Bridge
    }

    /// The current Guid.
    pub fn guid(&self) -> &str {
        &self.guid
    }

    /// Whether `guid` is one of this session's valid Guids at `now`.
    pub fn accepts(&self, guid: &str, now: Instant) -> bool {
        guid == self.guid
            || self
                .previous
                .as_ref()
                .is_some_and(|(previous, until)| guid == previous && now < *until)
    }

    /// The session's valid Guids, taken out as the session ends.
    fn take_guids(&mut self) -> Vec<String> {
        let mut guids = vec![std::mem::take(&mut self.guid)];
        guids.extend(self.previous.take().map(|(previous, _)| previous));
        guids
    }

    /// Queues an event of this agent.
    pub fn push_event(&mut self, event_type: &str, content: Value) {
        let event = wire::event(event_type, &self.work_no, content);
        self.events.push_back(event);
    }

    /// Whether a rotation should ride on the next poll answer.
    pub fn rotation_due(&self, now: Instant) -> bool {
        self.rotate_requested || self.next_rotation.is_some_and(|at| now >= at)
    }

    /// When a held poll must wake up to deliver a rotation.
    pub fn next_rotation(&self) -> Option<Instant> {
        self.next_rotation
    }
}
