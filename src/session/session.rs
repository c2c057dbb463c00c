//! One signed-in agent: its Guid, its event hub and its poll loop.

use crate::events::{Hub, PushInbox};
use crate::gateway::AgentAuth;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;
use tokio_util::sync::CancellationToken;

/// Where a session is in its life, as `GetSession` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// A sign-in request is under way.
    SigningIn,
    /// Signed in and polled.
    SignedIn,
    /// A sign-out request is under way.
    SigningOut,
    /// Over: signed out by the gateway, replaced, or the bridge is stopping.
    Ended,
}

impl State {
    /// Metrics label.
    pub fn label(self) -> &'static str {
        match self {
            State::SigningIn => "signing_in",
            State::SignedIn => "signed_in",
            State::SigningOut => "signing_out",
            State::Ended => "ended",
        }
    }
}

/// A signed-in agent. Exactly one live `Session` (and one poll loop) exists per agent.
pub struct Session {
    /// Agent (work) number.
    pub agent_id: Arc<str>,
    /// Unique per sign-in; event sequences restart with it.
    pub session_id: Arc<str>,
    /// Guid and cookies, shared with the poll loop.
    pub auth: Arc<AgentAuth>,
    /// Events of this session.
    pub hub: Arc<Hub>,
    /// When the sign-in succeeded.
    pub signed_in_at: SystemTime,
    /// Unix ms of the last answered poll (0 before the first).
    pub last_poll_at: Arc<AtomicU64>,
    /// Answered polls, counted by the poll loop.
    pub polls: Arc<tokio::sync::watch::Sender<u64>>,
    /// Push mode: the session's token and callback order (`None` in poll mode).
    pub push: Option<Arc<PushInbox>>,
    /// Stops the poll loop.
    pub(crate) cancel: CancellationToken,
    /// Set while the bridge signs the agent out, so the poll loop's `100-006` is not taken for
    /// a forced sign-out.
    pub(crate) signing_out: AtomicBool,
    /// How the sign-out in progress ends the session's streams (a pool hand-over names the new
    /// owner): the poll loop, if it sees the session end first, closes them the same way.
    pub(crate) signing_out_as: std::sync::Mutex<Option<crate::events::End>>,
}

impl Session {
    /// Whether the session still runs. Its event streams may already have ended (a drain ends
    /// streams first) while unary calls and the final sign-out still use it.
    pub fn is_live(&self) -> bool {
        !self.cancel.is_cancelled()
    }

    /// The session's state for reporting.
    pub fn state(&self) -> State {
        if !self.is_live() {
            State::Ended
        } else if self.signing_out.load(Ordering::Relaxed) {
            State::SigningOut
        } else {
            State::SignedIn
        }
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("agent_id", &self.agent_id)
            .field("session_id", &self.session_id)
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

/// A point-in-time view of a session for callers (never the Guid or password).
#[derive(Debug, Clone)]
pub struct SessionInfo {
    /// Agent (work) number.
    pub agent_id: String,
    /// Empty while the first sign-in is under way.
    pub session_id: String,
    /// Life-cycle state.
    pub state: State,
    /// When the current sign-in succeeded.
    pub signed_in_at: Option<SystemTime>,
    /// Open event streams.
    pub watchers: u32,
    /// Unix ms of the last answered poll (0 before the first).
    pub last_poll_at_ms: u64,
    /// Newest event sequence.
    pub last_sequence: u64,
    /// Whether the bridge can sign the agent in again by itself.
    pub can_resign_in: bool,
}
