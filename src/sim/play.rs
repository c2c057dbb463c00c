//! Record playback per agent: the state machine behind `/recordplay/{id}/...` and the timed
//! event sequences the vendor documents (notes §4, vectors `play_event_sequences`).
//!
//! Phases: `Idle` → (play) `Starting` → (`_Play_Succ`) `Playing` ⇄ `Paused`; stop or the end of
//! playback go through `Stopping` back to `Idle`. Each sequence runs in one task per agent that
//! is aborted when superseded or when the session ends; every step re-checks, under the agent
//! lock, that it still belongs to the current session and generation, so a superseded task can
//! never interleave its events with its successor's.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::playback::{AbortOnDrop, Phase};
use super::state::{Agent, Session};

/// What sequence tasks need from the simulator: the vendor's timings (from the configuration)
/// and the shutdown signal, so no task outlives the simulator.
#[derive(Debug, Clone)]
pub(crate) struct PlayEnv {
    pub step: Duration,
    pub duration: Duration,
    pub shutdown: CancellationToken,
}

/// A record-play request, already routed.
pub(crate) enum PlayOp<'a> {
    Begin(&'a [u8]),
    Stop,
    Pause,
    Resume,
    Jump { forward: bool, time: &'a str },
}

/// What a sequence task does.
enum Script {
    /// Start events, then playback for the configured duration, then the end events.
    Start,
    /// The failure sequence (voicepath containing "fail").
    Fail,
    /// Playback resumes for `remaining`, then the end events.
    Finish { remaining: Duration },
    /// The end events of an explicit stop.
    Stop,
}

/// Applies `op` to the session; returns the retcode of the HTTP answer. Events follow through
/// the session's queue.
pub(crate) fn apply(
    agent: &Arc<Agent>,
    session: &mut Session,
    op: PlayOp<'_>,
    env: &PlayEnv,
) -> &'static str {
    let phase = session.play.phase;
    match op {
        PlayOp::Begin(body) => {
            let Some(voicepath) = voicepath(body) else {
                return "000-002";
            };
            if phase != Phase::Idle {
                return "500-007";
            }
            if voicepath.contains("fail") {
                start(agent, session, Phase::Stopping, Script::Fail, env);
            } else {
                start(agent, session, Phase::Starting, Script::Start, env);
            }
        }
        PlayOp::Stop => match phase {
            Phase::Starting | Phase::Playing { .. } | Phase::Paused { .. } => {
                start(agent, session, Phase::Stopping, Script::Stop, env)
            }
            Phase::Idle | Phase::Stopping => return "500-009",
        },
        PlayOp::Pause => {
            let Phase::Playing { ends_at } = phase else {
                return "500-003";
            };
            let remaining = ends_at.saturating_duration_since(Instant::now());
            cancel(session, Phase::Paused { remaining });
            session.push_event("AgentMediaEvent_PausePlayDone", Value::Null);
        }
        PlayOp::Resume => {
            let Phase::Paused { remaining } = phase else {
                return "500-005";
            };
            session.push_event("AgentMediaEvent_ResumePlayDone", Value::Null);
            let playing = Phase::Playing {
                ends_at: Instant::now() + remaining,
            };
            start(agent, session, playing, Script::Finish { remaining }, env);
        }
        PlayOp::Jump { forward, time } => {
            if !valid_seconds(time) {
                return "000-002";
            }
            if !matches!(phase, Phase::Playing { .. } | Phase::Paused { .. }) {
                return if forward { "500-002" } else { "500-001" };
            }
            session.push_event("AgentMediaEvent_JumpPlayDone", Value::Null);
        }
    }
    "0"
}

/// `voicepath` of a play body: required, 1–100 characters. Other fields are accepted as given.
fn voicepath(body: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let path = value.get("voicepath")?.as_str()?;
    (1..=100)
        .contains(&path.chars().count())
        .then(|| path.to_owned())
}

/// The `{time}` path segment of forefast/backfast: decimal seconds, 0–2147483647.
fn valid_seconds(time: &str) -> bool {
    !time.is_empty()
        && time.bytes().all(|b| b.is_ascii_digit())
        && time.parse::<u64>().is_ok_and(|t| t <= 2_147_483_647)
}

/// Stops the running sequence (if any) and enters `phase`.
fn cancel(session: &mut Session, phase: Phase) {
    session.play.generation += 1;
    session.play.task = None;
    session.play.phase = phase;
}

/// Replaces the running sequence by `script`, entering `phase` now.
fn start(agent: &Arc<Agent>, session: &mut Session, phase: Phase, script: Script, env: &PlayEnv) {
    cancel(session, phase);
    let owner = Owner {
        agent: Arc::clone(agent),
        serial: session.serial,
        generation: session.play.generation,
    };
    let (step, duration, shutdown) = (env.step, env.duration, env.shutdown.clone());
    let task = tokio::spawn(async move {
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = owner.run(script, step, duration) => {}
        }
    });
    session.play.task = Some(AbortOnDrop(task.abort_handle()));
}

/// Identifies the session and sequence a task works for.
struct Owner {
    agent: Arc<Agent>,
    serial: u64,
    generation: u64,
}

impl Owner {
    async fn run(self, script: Script, step: Duration, duration: Duration) {
        match script {
            Script::Start => {
                for event in [
                    "AgentState_Busy",
                    "AgentOther_PhoneAlerting",
                    "AgentOther_PhoneOffhook",
                    "AgentMediaEvent_Play",
                ] {
                    tokio::time::sleep(step).await;
                    if !self.emit(event, Value::Null, None) {
                        return;
                    }
                }
                tokio::time::sleep(step).await;
                let ends_at = Instant::now() + duration;
                let playing = Some(Phase::Playing { ends_at });
                if !self.emit("AgentMediaEvent_Play_Succ", Value::Null, playing) {
                    return;
                }
                tokio::time::sleep_until(ends_at).await;
                self.finish(0, step).await;
            }
            Script::Fail => {
                for event in [
                    "AgentState_Busy",
                    "AgentOther_PhoneAlerting",
                    "AgentOther_PhoneOffhook",
                    "AgentOther_PhoneRelease",
                    "AgentState_Ready",
                    "AgentMediaEvent_Play_Fail",
                ] {
                    tokio::time::sleep(step).await;
                    if !self.emit(event, Value::Null, None) {
                        return;
                    }
                }
                tokio::time::sleep(step).await;
                self.emit(
                    "AgentMediaEvent_StopPlayDone",
                    json!({"cause": 2}),
                    Some(Phase::Idle),
                );
            }
            Script::Finish { remaining } => {
                tokio::time::sleep(remaining).await;
                self.finish(0, step).await;
            }
            Script::Stop => self.finish(1, step).await,
        }
    }

    /// The end events (`cause` 0 = played to the end, 1 = stopped), then `Idle`.
    async fn finish(&self, cause: u8, step: Duration) {
        if cause == 0 && !self.set_phase(Phase::Stopping) {
            return;
        }
        for event in ["AgentOther_PhoneRelease", "AgentState_Ready"] {
            tokio::time::sleep(step).await;
            if !self.emit(event, Value::Null, None) {
                return;
            }
        }
        tokio::time::sleep(step).await;
        self.emit(
            "AgentMediaEvent_StopPlayDone",
            json!({"cause": cause}),
            Some(Phase::Idle),
        );
    }

    /// Queues an event and optionally enters a phase, atomically, if this task is still current.
    fn emit(&self, event_type: &str, content: Value, then: Option<Phase>) -> bool {
        let current = self.update(|session| {
            session.push_event(event_type, content);
            if let Some(phase) = then {
                session.play.phase = phase;
            }
        });
        if current {
            self.agent.wake();
        }
        current
    }

    fn set_phase(&self, phase: Phase) -> bool {
        self.update(|session| session.play.phase = phase)
    }

    fn update(&self, change: impl FnOnce(&mut Session)) -> bool {
        let mut state = self.agent.lock();
        match state.session.as_mut() {
            Some(session)
                if session.serial == self.serial && session.play.generation == self.generation =>
            {
                change(session);
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_segment_bounds() {
        assert!(valid_seconds("0"));
        assert!(valid_seconds("2147483647"));
        assert!(!valid_seconds("2147483648"));
        assert!(!valid_seconds("-1"));
        assert!(!valid_seconds("1.5"));
        assert!(!valid_seconds("99999999999999999999999"));
    }

    #[test]
    fn voicepath_rules() {
        assert!(voicepath(br#"{"voicepath":"Y:/1.V3","times":1}"#).is_some());
        assert!(voicepath(br#"{"voicepath":""}"#).is_none());
        assert!(voicepath(br#"{"voicepath":7}"#).is_none());
        assert!(voicepath(b"not json").is_none());
        let long = format!(r#"{{"voicepath":"{}"}}"#, "é".repeat(100));
        assert!(voicepath(long.as_bytes()).is_some());
        let too_long = format!(r#"{{"voicepath":"{}"}}"#, "a".repeat(101));
        assert!(voicepath(too_long.as_bytes()).is_none());
    }
}
