//! The one long-poll loop per signed-in agent: heartbeat, Guid carrier and event source.
//!
//! Polling never pauses while the agent is signed in, watchers or not: the gateway signs out an
//! agent it has not heard from for 120 s, and in dynamic auth the poll answer is how new Guids
//! arrive. Transport failures back off with jitter (capped well below the 120 s idle limit)
//! and never end the session; only the gateway saying the agent is gone does.

use super::event::SHUTDOWN_SERVICE;
use super::hub::Hub;
use crate::gateway::{AgentAuth, GatewayClient, GatewayError, Interface};
use crate::telemetry::Metrics;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;

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
const SIGN_IN_AGAIN: [&str; 3] = ["105-005", "105-006", "105-007"];

/// Everything one agent's loop needs.
pub struct Poller {
    /// Shared gateway client.
    pub gateway: GatewayClient,
    /// The agent being polled.
    pub agent_id: Arc<str>,
    /// Its Guid and cookies (the loop adopts every `Set-GUID` through it).
    pub auth: Arc<AgentAuth>,
    /// Where events go.
    pub hub: Arc<Hub>,
    /// Unix ms of the last answered poll, for `Session.last_poll_at`.
    pub last_poll_at: Arc<AtomicU64>,
    /// Counts polls the gateway answered and after which the loop goes on (not transport
    /// failures, not the answers that end it), so a call refused for its Guid can wait for the
    /// poll that would carry a newer one.
    pub polls: Arc<tokio::sync::watch::Sender<u64>>,
    /// Stops the loop.
    pub cancel: CancellationToken,
    /// Pacing.
    pub settings: PollSettings,
    /// Poll error counters.
    pub metrics: Arc<Metrics>,
}

impl Poller {
    /// Runs until the agent is signed out or the loop is cancelled.
    pub async fn run(self) -> PollEnd {
        let mut failures: u32 = 0;
        let mut lost_answer = false;
        // One registration with the token for the loop's life, not one per poll and per pause.
        let cancelled = self.cancel.cancelled();
        tokio::pin!(cancelled);
        loop {
            let sent = self.auth.current();
            let answer = tokio::select! {
                biased;
                () = &mut cancelled => return PollEnd::Cancelled,
                a = self.gateway.call(Interface::Poll, &self.agent_id, &self.auth, sent.guid.as_ref(), None, None) => a,
            };
            // Only answers count, and only once the loop knows it goes on: the farewell
            // (`AgentOther_ShutdownService`), a Guid refusal and a "sign in again" end it, and
            // none of them shows the gateway still accepting the session's Guid.
            let answered = answer.is_ok()
                || matches!(&answer, Err(e @ GatewayError::Retcode { .. }) if !e.is_auth_rejection());
            let pause = match answer {
                Ok(envelope) => {
                    failures = 0;
                    lost_answer = false;
                    self.last_poll_at.store(unix_ms(), Ordering::Relaxed);
                    match envelope.event {
                        Some(raw) => {
                            let shutdown = raw.event_type == SHUTDOWN_SERVICE;
                            self.hub.publish(raw);
                            if shutdown {
                                return PollEnd::SignedOutByGateway;
                            }
                            Duration::ZERO
                        }
                        None => idle_pause(self.settings.gap, Instant::now()),
                    }
                }
                Err(e) if e.is_auth_rejection() => {
                    if self.auth.current().generation != sent.generation {
                        // A Guid arrived meanwhile (e.g. from a call's answer); use it.
                        continue;
                    }
                    // Counted by the session layer, which knows whether the bridge itself
                    // signed the agent out (an expected end, not an error).
                    return PollEnd::GuidRefused {
                        after_lost_answer: lost_answer,
                    };
                }
                Err(GatewayError::Retcode { retcode, .. })
                    if SIGN_IN_AGAIN.contains(&retcode.as_str()) =>
                {
                    self.metrics.poll_error("sign_in_again");
                    return PollEnd::SignInAgain(retcode);
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    // The request may have reached the gateway: its answer may have carried a
                    // new Guid.
                    lost_answer |= matches!(
                        e,
                        GatewayError::Timeout(_) | GatewayError::OutcomeUnknown(_)
                    );
                    self.metrics.poll_error(error_kind(&e));
                    tracing::warn!(agent_id = %self.agent_id, error = %e, failures, "event poll failed; backing off");
                    backoff(&self.settings, failures)
                }
            };
            if answered {
                self.polls.send_modify(|n| *n += 1);
            }
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

/// Where every loop's idle pauses are aligned from.
static GRID_EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

/// The pause after an empty answer: `gap`, stretched so it ends on a process-wide grid of
/// `gap / 2` steps, i.e. between `gap` and 1.5 × `gap` (200–300 ms by default, inside the
/// vendor's 200–500 ms). Idle agents then re-poll in batches: one timer wake-up sends many polls,
/// and since the gateway holds each poll equally long, their empty answers come back together
/// too, instead of two wake-ups of the process per idle poll.
fn idle_pause(gap: Duration, now: Instant) -> Duration {
    let step = gap.as_nanos() / 2;
    if step == 0 {
        return gap;
    }
    let earliest = now.saturating_duration_since(*GRID_EPOCH).as_nanos() + gap.as_nanos();
    let aligned = earliest.div_ceil(step) * step;
    gap + Duration::from_nanos((aligned - earliest) as u64)
}

fn error_kind(e: &GatewayError) -> &'static str {
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
        let base = *GRID_EPOCH + Duration::from_secs(7);
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
