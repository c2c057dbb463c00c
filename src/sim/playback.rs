//! The playback state a session holds (phase, generation, running sequence task). A leaf:
//! the session state (`state.rs`) holds it, the sequences (`play.rs`) drive it.

use std::time::Duration;

use tokio::task::AbortHandle;
use tokio::time::Instant;

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) enum Phase {
    #[default]
    Idle,
    /// Accepted; the phone is being called (start events under way).
    Starting,
    Playing {
        ends_at: Instant,
    },
    Paused {
        remaining: Duration,
    },
    /// Ending (stop, natural end or failure events under way).
    Stopping,
}

/// Playback state of one session.
#[derive(Default)]
pub(crate) struct Play {
    pub phase: Phase,
    pub generation: u64,
    pub task: Option<AbortOnDrop>,
}

/// Aborts the sequence task when the play state (hence the session) goes away.
pub(crate) struct AbortOnDrop(pub AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort()
    }
}
