//! The call each `ccgw-bridge call` subcommand names, made with the generated tonic clients.

use super::connect::{bearer, channel, with_deadline, Token};
use super::output::{session_json, Output};
use super::{probe, CallArgs, CallOp, Failure};
use crate::proto::agent_session_service_client::AgentSessionServiceClient;
use crate::proto::record_play_service_client::RecordPlayServiceClient;
use crate::proto::{
    BeginPlayRequest, FastForwardRequest, GetSessionRequest, ListSessionsRequest, PausePlayRequest,
    PlayEventType, ResumePlayRequest, RewindRequest, SignInRequest, SignOutRequest,
    StopPlayRequest, WatchAgentEventsRequest, WatchOwnershipRequest, WatchPlayEventsRequest,
};
use serde_json::{json, Value};
use tonic::Status;

pub(super) async fn call(args: &CallArgs) -> Result<(), Failure> {
    let channel = channel(args)?;
    let token = Token(bearer(args)?);
    let out = Output { json: args.json };
    let t = args.timeout;
    let sessions = || AgentSessionServiceClient::with_interceptor(channel.clone(), token.clone());
    let play = || RecordPlayServiceClient::with_interceptor(channel.clone(), token.clone());
    match &args.op {
        CallOp::SignIn {
            agent,
            phone,
            password_env,
            password_file,
            force,
        } => {
            let password = read_password(password_env.as_deref(), password_file.as_deref())?;
            let session = sessions()
                .sign_in(with_deadline(
                    SignInRequest {
                        agent_id: agent.clone(),
                        password,
                        phone_number: phone.clone(),
                        force: *force,
                        ..Default::default()
                    },
                    t,
                ))
                .await?
                .into_inner();
            out.session(&session)?;
        }
        CallOp::SignOut { agent } => {
            let r = sessions()
                .sign_out(with_deadline(
                    SignOutRequest {
                        agent_id: agent.clone(),
                    },
                    t,
                ))
                .await?
                .into_inner();
            // An empty message: this bridge held the agent and signed it out. Otherwise the
            // bridge says why nothing was sent (e.g. the agent was not signed in here).
            let signed_out = r.message.is_empty();
            let text = if signed_out {
                format!("agent {agent} signed out")
            } else {
                r.message
            };
            if out.json {
                emit!(
                    "{}",
                    json!({"agent_id": agent, "signed_out": signed_out, "message": text})
                )?;
            } else {
                emit!("{text}")?;
            }
        }
        CallOp::Play {
            agent,
            voice_path,
            start,
            volume,
            speed,
            times,
            location,
            wait,
        } => {
            let r = play()
                .begin_play(with_deadline(
                    BeginPlayRequest {
                        agent_id: agent.clone(),
                        voice_path: voice_path.clone(),
                        start_position_seconds: *start,
                        volume: *volume,
                        speed: *speed,
                        times: *times,
                        location_id: *location,
                        await_outcome: *wait,
                    },
                    t,
                ))
                .await?
                .into_inner();
            if out.json {
                emit!(
                    "{}",
                    json!({"message": r.message, "outcome_sequence": r.outcome_sequence})
                )?;
            } else {
                match r.outcome_sequence {
                    Some(seq) => emit!("ok {:?} outcome_sequence={seq}", r.message)?,
                    None => emit!("ok {:?}", r.message)?,
                }
            }
        }
        CallOp::Stop { agent, wait } => {
            // Watching from before the stop: the PLAY_STOPPED it causes cannot slip past.
            let stopped = match wait {
                true => Some(
                    play()
                        .watch_play_events(WatchPlayEventsRequest {
                            agent_id: agent.clone(),
                            types: vec![PlayEventType::PlayStopped as i32],
                            ..Default::default()
                        })
                        .await?
                        .into_inner(),
                ),
                false => None,
            };
            let r = play()
                .stop_play(with_deadline(
                    StopPlayRequest {
                        agent_id: agent.clone(),
                    },
                    t,
                ))
                .await?;
            out.message(&r.into_inner().message)?;
            if let Some(mut stream) = stopped {
                let event = tokio::time::timeout(t, stream.message())
                    .await
                    .map_err(|_| {
                        Status::deadline_exceeded(format!("no PLAY_STOPPED within {t:?}"))
                    })??
                    .ok_or_else(|| Status::aborted("the event stream ended before PLAY_STOPPED"))?;
                out.play_event(&event)?;
            }
        }
        CallOp::Health { service } => probe::health(channel.clone(), service, t, &out).await?,
        CallOp::Ready { admin } => probe::ready(admin, t, &out).await?,
        CallOp::Pause { agent } => {
            let r = play()
                .pause_play(with_deadline(
                    PausePlayRequest {
                        agent_id: agent.clone(),
                    },
                    t,
                ))
                .await?;
            out.message(&r.into_inner().message)?;
        }
        CallOp::Resume { agent } => {
            let r = play()
                .resume_play(with_deadline(
                    ResumePlayRequest {
                        agent_id: agent.clone(),
                    },
                    t,
                ))
                .await?;
            out.message(&r.into_inner().message)?;
        }
        CallOp::Forward { agent, seconds } => {
            let r = play()
                .fast_forward(with_deadline(
                    FastForwardRequest {
                        agent_id: agent.clone(),
                        seconds: *seconds,
                    },
                    t,
                ))
                .await?;
            out.message(&r.into_inner().message)?;
        }
        CallOp::Rewind { agent, seconds } => {
            let r = play()
                .rewind(with_deadline(
                    RewindRequest {
                        agent_id: agent.clone(),
                        seconds: *seconds,
                    },
                    t,
                ))
                .await?;
            out.message(&r.into_inner().message)?;
        }
        CallOp::Sessions => {
            let r = sessions()
                .list_sessions(with_deadline(ListSessionsRequest {}, t))
                .await?
                .into_inner();
            if out.json {
                // One object, so an empty result is explicit: {"sessions": []}.
                let list: Vec<Value> = r.sessions.iter().map(session_json).collect();
                emit!("{}", json!({ "sessions": list }))?;
            } else if r.sessions.is_empty() {
                emit!("no sessions")?;
            } else {
                for s in &r.sessions {
                    out.session(s)?;
                }
            }
        }
        CallOp::Session { agent } => {
            let s = sessions()
                .get_session(with_deadline(
                    GetSessionRequest {
                        agent_id: agent.clone(),
                    },
                    t,
                ))
                .await?
                .into_inner();
            out.session(&s)?;
        }
        CallOp::Ownership { once, all } => {
            let mut stream = sessions()
                .watch_ownership(WatchOwnershipRequest {
                    include_pool_owners: *all,
                })
                .await?
                .into_inner();
            // The table of other instances' agents is not pushed at their changes: a snapshot.
            if *once || *all {
                if let Some(o) = stream.message().await? {
                    out.ownership(&o)?;
                }
            } else {
                watch(stream, |o| out.ownership(&o)).await?;
            }
        }
        CallOp::Watch {
            agent,
            all,
            resume_after,
            session,
        } => {
            let session_id = session.clone().unwrap_or_default();
            if *all {
                let stream = sessions()
                    .watch_agent_events(WatchAgentEventsRequest {
                        agent_id: agent.clone(),
                        resume_after: *resume_after,
                        session_id,
                    })
                    .await?
                    .into_inner();
                watch(stream, |e| out.agent_event(&e)).await?;
            } else {
                let stream = play()
                    .watch_play_events(WatchPlayEventsRequest {
                        agent_id: agent.clone(),
                        types: Vec::new(),
                        resume_after: *resume_after,
                        session_id,
                    })
                    .await?
                    .into_inner();
                watch(stream, |e| out.play_event(&e)).await?;
            }
        }
    }
    Ok(())
}

/// Prints events until the stream ends (OK), fails (its status) or Ctrl-C (OK).
async fn watch<T>(
    mut stream: tonic::Streaming<T>,
    mut print: impl FnMut(T) -> std::io::Result<()>,
) -> Result<(), Failure> {
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            _ = &mut ctrl_c => return Ok(()),
            next = stream.message() => match next? {
                Some(event) => {
                    print(event)?;
                }
                None => return Ok(()),
            },
        }
    }
}

fn read_password(env: Option<&str>, file: Option<&std::path::Path>) -> Result<String, Failure> {
    match (env, file) {
        (Some(var), _) => std::env::var(var)
            .map_err(|_| Failure::Usage(format!("--password-env {var}: not set (or not UTF-8)"))),
        (None, Some(path)) => {
            let raw = std::fs::read(path)
                .map_err(|e| Failure::Usage(format!("--password-file {}: {e}", path.display())))?;
            let text = String::from_utf8(raw).map_err(|_| {
                Failure::Usage(format!("--password-file {}: not UTF-8", path.display()))
            })?;
            Ok(text.trim_end_matches(['\r', '\n']).to_owned())
        }
        // Gateways configured without agent passwords (and the simulator) accept an empty one.
        (None, None) => Ok(String::new()),
    }
}
