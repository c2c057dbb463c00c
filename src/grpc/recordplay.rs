//! `ccgw.v1.RecordPlayService`.

use super::frame::{self, EncodedEvent};
use super::status::{self, with_info, BRIDGE_DOMAIN};
use super::validate::Violations;
use super::watch::{self, EventStream};
use super::{deadline, validate, Bridge};
use crate::events::{End, Next};
use crate::gateway::bodies::{to_bytes, PlayBody};
use crate::gateway::Interface;
use crate::proto::server::record_play_service_server::RecordPlayService;
use crate::proto::*;
use crate::session::Session;
use std::sync::Arc;
use std::time::Instant;
use tonic::metadata::MetadataMap;
use tonic::{Code, Request, Response, Status};

/// The record-play service over a [`Bridge`].
#[derive(Clone)]
pub struct RecordPlayApi(pub Bridge);

impl RecordPlayApi {
    /// A control call without body (stop, pause, resume, jumps).
    async fn control(
        &self,
        method: &'static str,
        agent_id: &str,
        meta: &MetadataMap,
        check: impl FnOnce(&mut Violations),
        iface: Interface,
    ) -> Result<Response<PlayControlResponse>, Status> {
        let deadline = deadline(meta);
        self.0
            .observe(method, agent_id, meta, async {
                let mut v = Violations::default();
                self.0.limits.agent_id(&mut v, "agent_id", agent_id);
                check(&mut v);
                v.check()?;
                let (_, envelope) = self
                    .0
                    .sessions
                    .call(agent_id, iface, None, deadline)
                    .await?;
                Ok(Response::new(PlayControlResponse {
                    message: envelope.message,
                }))
            })
            .await
    }

    /// Waits for the agent's next `_Play_Succ` / `_Play_Fail` from `sub`'s position.
    async fn await_outcome(
        &self,
        session: &Arc<Session>,
        mut sub: crate::events::Subscription,
        deadline: Instant,
    ) -> Result<u64, Status> {
        let wait = async {
            loop {
                match sub.next().await {
                        Next::Event(e) => match e.play_type {
                            Some(PlayEventType::PlaySucceeded) => return Ok(e.sequence),
                            Some(PlayEventType::PlayFailed) => {
                                return Err(with_info(
                                    Code::FailedPrecondition,
                                    format!(
                                    "the gateway reported AgentMediaEvent_Play_Fail (sequence {})",
                                    e.sequence
                                ),
                                    BRIDGE_DOMAIN,
                                    "PLAY_FAILED",
                                    &[("sequence", e.sequence.to_string())],
                                ))
                            }
                            // Stopped before it succeeded or failed: no outcome will follow.
                            Some(PlayEventType::PlayStopped) => {
                                return Err(with_info(
                                    Code::Aborted,
                                    format!(
                                        "the play was stopped before the gateway reported its outcome (sequence {})",
                                        e.sequence
                                    ),
                                    BRIDGE_DOMAIN,
                                    "PLAY_STOPPED",
                                    &[("sequence", e.sequence.to_string())],
                                ))
                            }
                            _ => {}
                        },
                        // The gateway accepted the play: a drain must not answer UNAVAILABLE
                        // ("retry elsewhere"), which would play it twice.
                        Next::Ended(End::Shutdown) => return Err(status::outcome_unknown(
                            "the gateway accepted the play, but the bridge is shutting down and will not observe its outcome; do not send it again",
                        )),
                        // Nor ABORTED when the session ends: the play was accepted, and
                        // ABORTED invites a blind retry that plays it twice.
                        Next::Ended(end) => return Err(outcome_not_observed(&format_args!(
                            "the session of agent {} ended ({}) after the gateway accepted the play; do not send it again blindly",
                            session.agent_id,
                            match end {
                                End::SignedOut => "signed out".into(),
                                End::Moved { to } => format!("moved to bridge instance {to}"),
                                _ => "ended by the gateway".into(),
                            },
                        ))),
                        Next::Overrun { .. } => return Err(with_info(
                            Code::Unknown,
                            "events arrived faster than the retained window; outcome not observed",
                            BRIDGE_DOMAIN,
                            "OUTCOME_NOT_OBSERVED",
                            &[],
                        )),
                    }
            }
        };
        match tokio::time::timeout_at(deadline.into(), wait).await {
            Ok(result) => result,
            Err(_) => Err(with_info(
                Code::DeadlineExceeded,
                "the gateway accepted the play request but reported no outcome before the deadline",
                BRIDGE_DOMAIN,
                "PLAY_OUTCOME_TIMEOUT",
                &[],
            )),
        }
    }
}

/// The play was accepted (or is about to be sent) but its outcome cannot be watched.
fn outcome_not_observed(e: &dyn std::fmt::Display) -> Status {
    with_info(
        Code::Unknown,
        format!("the outcome of the play cannot be observed: {e}"),
        BRIDGE_DOMAIN,
        "OUTCOME_NOT_OBSERVED",
        &[],
    )
}

#[tonic::async_trait]
impl RecordPlayService for RecordPlayApi {
    async fn begin_play(
        &self,
        request: Request<BeginPlayRequest>,
    ) -> Result<Response<BeginPlayResponse>, Status> {
        let (meta, _, r) = request.into_parts();
        let deadline = deadline(&meta);
        let bridge = &self.0;
        bridge
            .observe("BeginPlay", &r.agent_id, &meta, async {
                let mut v = Violations::default();
                bridge.limits.agent_id(&mut v, "agent_id", &r.agent_id);
                bridge
                    .limits
                    .voice_path(&mut v, "voice_path", &r.voice_path);
                validate::start_position(
                    &mut v,
                    "start_position_seconds",
                    r.start_position_seconds,
                );
                validate::five_digits(&mut v, "volume", r.volume);
                validate::five_digits(&mut v, "speed", r.speed);
                validate::times(&mut v, "times", r.times);
                validate::location_id(&mut v, "location_id", r.location_id);
                v.check()?;
                let body = to_bytes(&PlayBody {
                    voicepath: &r.voice_path,
                    startpostion: r.start_position_seconds,
                    volumechange: r.volume.map(|n| n.to_string()),
                    speedchange: r.speed.map(|n| n.to_string()),
                    times: r.times,
                    location_id: r.location_id,
                });
                // Subscribe before sending, so an outcome arriving before the answer is seen.
                let before = if r.await_outcome {
                    let session = bridge
                        .sessions
                        .session_for_call(&r.agent_id, deadline)
                        .await?;
                    let sub = session
                        .hub
                        .subscribe(None)
                        .map_err(|e| outcome_not_observed(&e))?;
                    Some((session, sub))
                } else {
                    None
                };
                let (used, envelope) = bridge
                    .sessions
                    .call(&r.agent_id, Interface::BeginPlay, Some(body), deadline)
                    .await?;
                let outcome_sequence = match before {
                    None => None,
                    Some((session, sub)) => {
                        let (session, sub) = if Arc::ptr_eq(&session, &used) {
                            (session, sub)
                        } else {
                            // Signed in again during the call: the outcome is in the new session.
                            let sub = used
                                .hub
                                .subscribe(Some(0))
                                .map_err(|e| outcome_not_observed(&e))?;
                            (used, sub)
                        };
                        let until =
                            deadline.unwrap_or_else(|| Instant::now() + bridge.default_timeout);
                        Some(self.await_outcome(&session, sub, until).await?)
                    }
                };
                Ok(Response::new(BeginPlayResponse {
                    message: envelope.message,
                    outcome_sequence,
                }))
            })
            .await
    }

    async fn stop_play(
        &self,
        request: Request<StopPlayRequest>,
    ) -> Result<Response<PlayControlResponse>, Status> {
        let (meta, _, r) = request.into_parts();
        self.control("StopPlay", &r.agent_id, &meta, |_| {}, Interface::StopPlay)
            .await
    }

    async fn pause_play(
        &self,
        request: Request<PausePlayRequest>,
    ) -> Result<Response<PlayControlResponse>, Status> {
        let (meta, _, r) = request.into_parts();
        self.control(
            "PausePlay",
            &r.agent_id,
            &meta,
            |_| {},
            Interface::PausePlay,
        )
        .await
    }

    async fn resume_play(
        &self,
        request: Request<ResumePlayRequest>,
    ) -> Result<Response<PlayControlResponse>, Status> {
        let (meta, _, r) = request.into_parts();
        self.control(
            "ResumePlay",
            &r.agent_id,
            &meta,
            |_| {},
            Interface::ResumePlay,
        )
        .await
    }

    async fn fast_forward(
        &self,
        request: Request<FastForwardRequest>,
    ) -> Result<Response<PlayControlResponse>, Status> {
        let (meta, _, r) = request.into_parts();
        self.control(
            "FastForward",
            &r.agent_id,
            &meta,
            |v| validate::jump_seconds(v, "seconds", r.seconds),
            Interface::FastForward(r.seconds),
        )
        .await
    }

    async fn rewind(
        &self,
        request: Request<RewindRequest>,
    ) -> Result<Response<PlayControlResponse>, Status> {
        let (meta, _, r) = request.into_parts();
        self.control(
            "Rewind",
            &r.agent_id,
            &meta,
            |v| validate::jump_seconds(v, "seconds", r.seconds),
            Interface::Rewind(r.seconds),
        )
        .await
    }

    type WatchPlayEventsStream = EventStream<EncodedEvent>;

    async fn watch_play_events(
        &self,
        request: Request<WatchPlayEventsRequest>,
    ) -> Result<Response<Self::WatchPlayEventsStream>, Status> {
        let (meta, _, r) = request.into_parts();
        let bridge = &self.0;
        bridge
            .observe("WatchPlayEvents", &r.agent_id, &meta, async {
                let mut v = Violations::default();
                bridge.limits.agent_id(&mut v, "agent_id", &r.agent_id);
                let mut types = Vec::with_capacity(r.types.len());
                for (i, t) in r.types.iter().enumerate() {
                    match PlayEventType::try_from(*t) {
                        Ok(PlayEventType::Unspecified) | Err(_) => v.add(
                            format!("types[{i}]"),
                            format!("{t} is not a play event type"),
                        ),
                        Ok(t) => types.push(t),
                    }
                }
                watch::check_resume(&mut v, r.resume_after, &r.session_id);
                v.check()?;
                let (session, sub) =
                    watch::subscribe(&bridge.sessions, &r.agent_id, r.resume_after, &r.session_id)?;
                let stream = watch::stream(session, sub, bridge.metrics.clone(), move |e| {
                    let t = e.play_type?;
                    if types.is_empty() || types.contains(&t) {
                        frame::play_frame(e)
                    } else {
                        None
                    }
                });
                Ok(Response::new(stream))
            })
            .await
    }
}
