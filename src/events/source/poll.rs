//! The one long-poll loop per signed-in agent: heartbeat, Guid carrier and event source.
//!
//! Polling never pauses while the agent is signed in, watchers or not: the gateway signs out an
//! agent it has not heard from for 120 s, and in dynamic auth the poll answer is how new Guids
//! arrive. Transport failures back off with jitter (capped well below the 120 s idle limit)
//! and never end the session; only the gateway saying the agent is gone does.

use super::{grid_pause, AfterFailure, Failures, SessionLink};
use crate::events::event::SHUTDOWN_SERVICE;
use crate::events::hub::Hub;
use crate::gateway::{GatewayError, Interface};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Pacing of the loop (api-notes §3.1: re-poll 200–500 ms after an answer).
#[derive(Debug, Clone)]
pub struct PollSettings {
    /// Pause after an empty answer (an event is followed by an immediate re-poll).
    pub gap: Duration,
    /// First back-off after a failure.
    pub backoff_min: Duration,
    /// Back-off ceiling; must stay far below the gateway's idle sign-out (120 s).
    pub backoff_max: Duration,
}

impl Default for PollSettings {
    fn default() -> Self {
        Self {
            gap: Duration::from_millis(200),
            backoff_min: Duration::from_millis(200),
            backoff_max: Duration::from_secs(5),
        }
    }
}

/// Why the loop stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PollEnd {
    /// Cancelled by the bridge (sign-out, replacement, shutdown).
    Cancelled,
    /// The gateway delivered `AgentOther_ShutdownService`.
    SignedOutByGateway,
    /// The poll was refused for its Guid (`100-006`/`000-003`). `after_lost_answer`: a poll
    /// answer was lost since the last answered poll, so the refused Guid may have been rotated
    /// by an answer the bridge never read (the gateway may still hold the bridge's session).
    GuidRefused {
        /// A poll answer was lost since the last answered poll.
        after_lost_answer: bool,
    },
    /// The gateway answered `105-005`/`105-006`/`105-007`: sign in again (disaster recovery).
    SignInAgain(String),
}

/// The DR retcodes after which the vendor says to sign in again (api-notes §7).
pub(super) const SIGN_IN_AGAIN: [&str; 3] = ["105-005", "105-006", "105-007"];

/// Everything one agent's poll loop needs.
pub struct Poller {
    /// What every event source of a session shares.
    pub link: SessionLink,
    /// Where events go.
    pub hub: Arc<Hub>,
    /// Pacing.
    pub settings: PollSettings,
}

impl Poller {
    /// Runs until the agent is signed out or the loop is cancelled.
    pub async fn run(self) -> PollEnd {
        let Poller {
            link,
            hub,
            settings,
        } = self;
        let mut failures = Failures::default();
        // One registration with the token for the loop's life, not one per poll and per pause.
        let cancelled = link.cancel.cancelled();
        tokio::pin!(cancelled);
        loop {
            let sent = link.auth.current();
            let answer = tokio::select! {
                biased;
                () = &mut cancelled => return PollEnd::Cancelled,
                a = link.gateway.call(Interface::Poll, &link.agent_id, &link.auth, sent.guid.as_ref(), None, None) => a,
            };
            let pause = match answer {
                Ok(envelope) => {
                    failures.answered();
                    link.last_poll_at.store(unix_ms(), Ordering::Relaxed);
                    let pause = match envelope.event {
                        Some(raw) => {
                            let shutdown = raw.event_type == SHUTDOWN_SERVICE;
                            hub.publish(raw);
                            if shutdown {
                                return PollEnd::SignedOutByGateway;
                            }
                            Duration::ZERO
                        }
                        None => idle_pause(settings.gap, Instant::now()),
                    };
                    // Only answers count, and only once the loop knows it goes on: the
                    // farewell (`AgentOther_ShutdownService`), a Guid refusal and a "sign in
                    // again" end it, and none of them shows the gateway still accepting the
                    // session's Guid.
                    link.polls.send_modify(|n| *n += 1);
                    pause
                }
                Err(e) => match link.after_failure(
                    e,
                    sent.generation,
                    &mut failures,
                    &settings,
                    "event poll",
                ) {
                    AfterFailure::SendAgain => continue,
                    AfterFailure::End(end) => return end,
                    AfterFailure::Pause(pause) => pause,
                },
            };
            if !pause.is_zero() {
                tokio::select! {
                    biased;
                    () = &mut cancelled => return PollEnd::Cancelled,
                    () = tokio::time::sleep(pause) => {}
                }
            }
        }
    }
}

/// The pause after an empty answer: `gap`, stretched so it ends on a process-wide grid of
/// `gap / 2` steps, i.e. between `gap` and 1.5 × `gap` (200–300 ms by default, inside the
/// vendor's 200–500 ms). Idle agents then re-poll in batches: one timer wake-up sends many polls,
/// and since the gateway holds each poll equally long, their empty answers come back together
/// too, instead of two wake-ups of the process per idle poll.
fn idle_pause(gap: Duration, now: Instant) -> Duration {
    gap + grid_pause(gap / 2, now + gap)
}

pub(super) fn error_kind(e: &GatewayError) -> &'static str {
    match e {
        GatewayError::Retcode { .. } => "retcode",
        GatewayError::Unreachable(_) => "unreachable",
        GatewayError::HttpStatus(_) => "http_status",
        GatewayError::Timeout(_) | GatewayError::DeadlineTooShort(_) => "timeout",
        GatewayError::OutcomeUnknown(_) => "bad_answer",
    }
}

/// Exponential back-off with full jitter: `rand(min, min·2^(n-1))`, capped.
pub fn backoff(settings: &PollSettings, failures: u32) -> Duration {
    let exp = settings
        .backoff_min
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
        .min(settings.backoff_max);
    let lo = settings.backoff_min.min(exp).as_millis() as u64;
    let hi = exp.as_millis() as u64;
    Duration::from_millis(fastrand::u64(lo..=hi.max(lo)))
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_pauses_end_on_a_shared_grid_within_one_and_a_half_gaps() {
        let gap = Duration::from_millis(200);
        let base = *super::super::GRID_EPOCH + Duration::from_secs(7);
        let ends: Vec<Instant> = [1, 37, 99, 100]
            .iter()
            .map(|ms| {
                let now = base + Duration::from_millis(*ms);
                let pause = idle_pause(gap, now);
                assert!(pause >= gap && pause <= gap * 3 / 2, "{ms} ms: {pause:?}");
                now + pause
            })
            .collect();
        assert!(ends.windows(2).all(|w| w[0] == w[1]), "{ends:?}");
        assert_eq!(idle_pause(Duration::ZERO, base), Duration::ZERO);
    }

    #[test]
    fn backoff_grows_and_stays_bounded() {
        let s = PollSettings::default();
        for n in 1..40 {
            let d = backoff(&s, n);
            assert!(d >= s.backoff_min && d <= s.backoff_max, "{n}: {d:?}");
        }
        assert_eq!(backoff(&s, 1), s.backoff_min);
    }
}
