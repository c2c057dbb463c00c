//! Where a session's events come from: the gateway's long poll (`poll.rs`), or the gateway
//! calling the bridge back (`push.rs`, api-notes §3.3). Both hand events to the same
//! [`Hub`](super::Hub), so sequencing, the retained window, the budget and fan-out are one path
//! and a watcher cannot tell the modes apart. Both loops end with the same [`PollEnd`], so the
//! session layer treats a refused heartbeat exactly like a refused poll.

pub mod poll;
pub mod push;

use crate::gateway::{AgentAuth, GatewayClient, GatewayError};
use crate::telemetry::Metrics;
use poll::{backoff, error_kind, PollEnd, PollSettings, SIGN_IN_AGAIN};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// What a session's event-source loop (poll or heartbeat) shares with the session.
pub struct SessionLink {
    /// Shared gateway client.
    pub gateway: GatewayClient,
    /// The agent.
    pub agent_id: Arc<str>,
    /// Its Guid and cookies (the loop adopts every `Set-GUID` through it).
    pub auth: Arc<AgentAuth>,
    /// Unix ms of the last answered poll or heartbeat, for `Session.last_poll_at`.
    pub last_poll_at: Arc<AtomicU64>,
    /// Counts polls (heartbeats) the gateway answered and after which the loop goes on (not
    /// transport failures, not the answers that end it), so a call refused for its Guid can
    /// wait for the answer that would carry a newer one.
    pub polls: Arc<tokio::sync::watch::Sender<u64>>,
    /// Stops the loop.
    pub cancel: CancellationToken,
    /// Error counters.
    pub metrics: Arc<Metrics>,
}

/// Failures of a loop since its last answered exchange.
#[derive(Default)]
pub(super) struct Failures {
    count: u32,
    /// An answer was lost since the last answered exchange, so the refused Guid may have been
    /// rotated by an answer the bridge never read (the gateway may still hold the session).
    lost_answer: bool,
}

impl Failures {
    /// The gateway answered: the count starts over.
    fn answered(&mut self) {
        *self = Failures::default();
    }
}

/// What a failed poll or heartbeat means for its loop.
pub(super) enum AfterFailure {
    /// A newer Guid arrived meanwhile (e.g. from a call's answer): send again with it now.
    SendAgain,
    /// The session is over at the gateway.
    End(PollEnd),
    /// Try again after this back-off.
    Pause(Duration),
}

impl SessionLink {
    /// What to do after `e`, the failure of an exchange sent with the Guid of generation
    /// `sent` (`what` names the exchange in the log). Transport failures back off and never end
    /// the session; only the gateway saying the agent is gone does.
    fn after_failure(
        &self,
        e: GatewayError,
        sent: u64,
        failures: &mut Failures,
        retry: &PollSettings,
        what: &'static str,
    ) -> AfterFailure {
        match e {
            e if e.is_auth_rejection() => {
                if self.auth.current().generation != sent {
                    return AfterFailure::SendAgain;
                }
                // Counted by the session layer, which knows whether the bridge itself signed
                // the agent out (an expected end, not an error).
                AfterFailure::End(PollEnd::GuidRefused {
                    after_lost_answer: failures.lost_answer,
                })
            }
            GatewayError::Retcode { retcode, .. } if SIGN_IN_AGAIN.contains(&retcode.as_str()) => {
                self.metrics.poll_error("sign_in_again");
                AfterFailure::End(PollEnd::SignInAgain(retcode))
            }
            e => {
                failures.count = failures.count.saturating_add(1);
                // The request may have reached the gateway: its answer may have carried a new
                // Guid.
                failures.lost_answer |= matches!(
                    e,
                    GatewayError::Timeout(_) | GatewayError::OutcomeUnknown(_)
                );
                if matches!(e, GatewayError::Retcode { .. }) {
                    // Answered, and the loop goes on: a call refused for its Guid waiting for
                    // the next answer learns the Guid was not rotated.
                    self.polls.send_modify(|n| *n += 1);
                }
                self.metrics.poll_error(error_kind(&e));
                tracing::warn!(agent_id = %self.agent_id, error = %e, failures = failures.count, "{what} failed; backing off");
                AfterFailure::Pause(backoff(retry, failures.count))
            }
        }
    }
}

/// Where every loop's timers are aligned from (one process-wide grid).
static GRID_EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

/// How long from `at` until the next point of the process-wide grid of `step` (0 when `at` is
/// on it, or `step` is 0). Loops of many agents that wait on the same grid wake together: one
/// timer wake-up serves them all, instead of one per agent.
fn grid_pause(step: Duration, at: Instant) -> Duration {
    phased_grid_pause(step, Duration::ZERO, at)
}

/// Like [`grid_pause`], on the grid of `step` shifted by `phase` (taken modulo `step`): loops
/// with the same phase wake together, loops with different phases at different points.
fn phased_grid_pause(step: Duration, phase: Duration, at: Instant) -> Duration {
    let step = step.as_nanos();
    if step == 0 {
        return Duration::ZERO;
    }
    // Shifted forward by `step - phase`, so the grid's points are `epoch + k·step + phase`
    // without going below the epoch.
    let since =
        at.saturating_duration_since(*GRID_EPOCH).as_nanos() + step - phase.as_nanos() % step;
    let aligned = since.div_ceil(step) * step;
    Duration::from_nanos((aligned - since) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_phased_grid_wakes_at_its_phase_of_every_step() {
        let step = Duration::from_secs(30);
        let phase = Duration::from_secs(7);
        let at = *GRID_EPOCH + Duration::from_secs(61);
        // Grid points: epoch + 7 s, + 37 s, + 67 s, …
        assert_eq!(phased_grid_pause(step, phase, at), Duration::from_secs(6));
        let on_point = *GRID_EPOCH + Duration::from_secs(67);
        assert_eq!(phased_grid_pause(step, phase, on_point), Duration::ZERO);
        // A phase beyond the step wraps; no phase is the plain grid.
        assert_eq!(
            phased_grid_pause(step, phase + step, at),
            Duration::from_secs(6)
        );
        assert_eq!(grid_pause(step, at), Duration::from_secs(29));
        assert_eq!(phased_grid_pause(Duration::ZERO, phase, at), Duration::ZERO);
    }
}
