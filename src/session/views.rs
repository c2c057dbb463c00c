//! Read-only views of the registry for callers, readiness and metrics (never a Guid or a
//! password), and the one view that does carry a Guid: the agent pool's sealed hand-off.

use super::{slot_has_creds, Session, SessionError, SessionInfo, Sessions, Slot, SlotInner, State};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// What the agent pool hands to the next owner of an agent: the running session's Guid and
/// cookies, with what identifies this version of them.
pub struct SessionHandOff {
    /// The session.
    pub session_id: Arc<str>,
    /// Its Guid's generation (bumped on every change).
    pub generation: u64,
    /// The current Guid.
    pub guid: crate::secret::Guid,
    /// The `Cookie` header text, if any.
    pub cookies: Option<String>,
}

impl Sessions {
    /// Which session runs for the agent and its Guid's generation, without copying anything
    /// secret: the pool compares it with what it handed over last before asking for more.
    pub fn session_version(&self, agent_id: &str) -> Option<(Arc<str>, u64)> {
        let session = self.slots().get(agent_id)?.running()?;
        let generation = session.auth.current().generation;
        Some((session.session_id.clone(), generation))
    }

    /// Whether a play runs on the agent's session here (its events say so): a rebalancing
    /// hand-over waits for it to end rather than cutting it.
    pub fn is_playing(&self, agent_id: &str) -> bool {
        let slot = self.slots().get(agent_id).cloned();
        slot.and_then(|s| s.running())
            .is_some_and(|s| s.hub.playing())
    }

    /// The agent's running session as the pool hands it over, if one runs here.
    pub fn hand_off_of(&self, agent_id: &str) -> Option<SessionHandOff> {
        let session = self.slots().get(agent_id)?.running()?;
        let state = session.auth.current();
        Some(SessionHandOff {
            session_id: session.session_id.clone(),
            generation: state.generation,
            guid: state.guid?,
            cookies: session.auth.cookie_text(),
        })
    }

    /// A view of whatever the agent's slot holds now (its running session, or how the last one
    /// ended), for `GetSession` and the pool; [`Sessions::view_of_session`] describes one
    /// particular session instead.
    pub fn view_of_agent(&self, agent_id: &str) -> Result<SessionInfo, SessionError> {
        let slot = self.slot(agent_id)?;
        Ok(info_of(agent_id, &slot))
    }

    /// A view of `session` itself (not of whatever the agent's slot holds by now), so a caller
    /// is told about the session its own call produced.
    pub fn view_of_session(&self, session: &Session) -> SessionInfo {
        let can_resign_in = self
            .slot(&session.agent_id)
            .is_ok_and(|slot| slot_has_creds(&slot));
        view(session, session.state(), can_resign_in)
    }

    /// How many agents are in each state right now (for the `sessions` gauge at scrape time).
    /// Only states are read: no view is built and nothing is sorted, so a scrape of a bridge
    /// holding 10,000 agents allocates one list of slots.
    pub fn count_by_state(&self) -> [(&'static str, i64); 4] {
        let order = [
            State::SigningIn,
            State::SignedIn,
            State::SigningOut,
            State::Ended,
        ];
        let mut counts = order.map(|s| (s.label(), 0i64));
        let slots: Vec<Arc<Slot>> = self.slots().values().cloned().collect();
        for slot in &slots {
            let state = state_of(&slot.lock());
            if let Some(i) = order.iter().position(|s| *s == state) {
                counts[i].1 += 1;
            }
        }
        counts
    }

    /// Whether the bridge holds no agent at all (readiness then probes the gateway itself).
    pub fn is_empty(&self) -> bool {
        self.slots().is_empty()
    }

    /// Views of every agent the bridge holds, ordered by agent id.
    pub fn list(&self) -> Vec<SessionInfo> {
        let slots: Vec<(Arc<str>, Arc<Slot>)> = self
            .slots()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut out: Vec<SessionInfo> = slots.iter().map(|(id, s)| info_of(id, s)).collect();
        out.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
        out
    }
}

/// The state a slot reports: signing in, else its session's, else ended.
fn state_of(inner: &SlotInner) -> State {
    match &inner.session {
        _ if inner.signing_in => State::SigningIn,
        Some(s) => s.state(),
        None => State::Ended,
    }
}

fn info_of(agent_id: &str, slot: &Slot) -> SessionInfo {
    let inner = slot.lock();
    let can_resign_in = inner.creds.is_some();
    let state = state_of(&inner);
    match &inner.session {
        Some(s) => view(s, state, can_resign_in),
        None => SessionInfo {
            agent_id: agent_id.to_owned(),
            session_id: String::new(),
            state,
            signed_in_at: None,
            watchers: 0,
            last_poll_at_ms: 0,
            last_sequence: 0,
            can_resign_in,
        },
    }
}

fn view(s: &Session, state: State, can_resign_in: bool) -> SessionInfo {
    SessionInfo {
        agent_id: s.agent_id.to_string(),
        session_id: s.session_id.to_string(),
        state,
        signed_in_at: Some(s.signed_in_at),
        watchers: s.hub.watchers(),
        last_poll_at_ms: s.last_poll_at.load(Ordering::Relaxed),
        last_sequence: s.hub.last_sequence(),
        can_resign_in,
    }
}
