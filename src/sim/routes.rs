//! HTTP handling of gateway requests: routing as the gateway's JAX-RS resources would (404 for an
//! unknown path or a non-numeric agent id, 405 for a wrong method, 415 for a missing or unusable
//! content type), request recording, fault injection, then the interface handlers.

use std::sync::atomic::Ordering;

use axum::body::Body;
use http::{header, Method, Request, Response, StatusCode};
use tokio::time::Instant;

use super::faults::{self, FaultKind, Interface};
use super::play::{self, PlayEnv, PlayOp};
use super::record::RecordedRequest;
use super::shared::{Shared, SignInInProgress};
use super::state::NOT_SIGNED_IN;
use super::wire::{self, Reply};
use super::{control, poll, push, signin};

/// Base path of every gateway interface.
const BASE: &str = "/agentgateway/resource/";
/// Largest request body read; larger ones are answered 413.
const MAX_BODY: usize = 1 << 20;

/// Returned instead of a response to make the connection (HTTP/1.1) or stream (h2) close without
/// an answer.
#[derive(Debug)]
pub(crate) struct Dropped;

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("simulated connection drop")
    }
}

impl std::error::Error for Dropped {}

/// A routed gateway request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op<'a> {
    Login { force: bool },
    Logout,
    UpdateGuid,
    Heartbeat,
    Poll,
    Play,
    StopPlay,
    PausePlay,
    ResumePlay,
    Jump { forward: bool, time: &'a str },
}

impl Op<'_> {
    fn interface(self) -> Interface {
        match self {
            Op::Login { force: false } => Interface::Login,
            Op::Login { force: true } => Interface::ForceLogin,
            Op::Logout => Interface::Logout,
            Op::UpdateGuid => Interface::UpdateGuid,
            Op::Heartbeat => Interface::Heartbeat,
            Op::Poll => Interface::Poll,
            Op::Play => Interface::Play,
            Op::StopPlay => Interface::StopPlay,
            Op::PausePlay => Interface::PausePlay,
            Op::ResumePlay => Interface::ResumePlay,
            Op::Jump { forward: true, .. } => Interface::ForeFast,
            Op::Jump { forward: false, .. } => Interface::BackFast,
        }
    }
}

/// Outcome of routing.
enum Route<'a> {
    Found { op: Op<'a>, agent_id: &'a str },
    WrongMethod { allow: Method, agent_id: &'a str },
    NotFound,
}

/// Matches a path and method against the gateway's resources.
fn route<'a>(method: &Method, path: &'a str) -> Route<'a> {
    let Some(rest) = path.strip_prefix(BASE) else {
        return Route::NotFound;
    };
    let segments: Vec<&str> = rest.split('/').collect();
    let (allow, agent_id, op) = match segments.as_slice() {
        ["onlineagent", id] => (Method::PUT, *id, Op::Login { force: false }),
        ["onlineagent", id, "forcelogin"] => (Method::PUT, *id, Op::Login { force: true }),
        ["onlineagent", id, "logout" | "forcelogout"] => (Method::DELETE, *id, Op::Logout),
        ["onlineagent", id, "updateGuid"] => (Method::PUT, *id, Op::UpdateGuid),
        ["onlineagent", id, "handshake"] => (Method::POST, *id, Op::Heartbeat),
        ["agentevent", id] => (Method::GET, *id, Op::Poll),
        ["recordplay", id, "play"] => (Method::PUT, *id, Op::Play),
        ["recordplay", id, "stopplay"] => (Method::DELETE, *id, Op::StopPlay),
        ["recordplay", id, "pauseplay"] => (Method::POST, *id, Op::PausePlay),
        ["recordplay", id, "resumeplay"] => (Method::POST, *id, Op::ResumePlay),
        ["recordplay", id, "forefast", t] if !t.is_empty() => (
            Method::POST,
            *id,
            Op::Jump {
                forward: true,
                time: t,
            },
        ),
        ["recordplay", id, "backfast", t] if !t.is_empty() => (
            Method::POST,
            *id,
            Op::Jump {
                forward: false,
                time: t,
            },
        ),
        _ => return Route::NotFound,
    };
    // The gateway's route pattern only matches numeric ids.
    if agent_id.is_empty() || !agent_id.bytes().all(|b| b.is_ascii_digit()) {
        return Route::NotFound;
    }
    if *method == allow {
        Route::Found { op, agent_id }
    } else {
        Route::WrongMethod { allow, agent_id }
    }
}

/// Serves one HTTP request (gateway interface or control plane) that arrived on connection
/// number `connection`.
pub(crate) async fn handle(
    shared: &Shared,
    connection: u64,
    request: Request<hyper::body::Incoming>,
) -> Result<Response<Body>, Dropped> {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path();
    if path.starts_with(control::PREFIX) {
        return Ok(control::handle(shared, &parts.method, path, body).await);
    }
    shared.requests.fetch_add(1, Ordering::Relaxed);
    let body = match axum::body::to_bytes(Body::new(body), MAX_BODY).await {
        Ok(body) => body,
        Err(_) if body_too_large(&parts.headers) => {
            return Ok(Reply::html(StatusCode::PAYLOAD_TOO_LARGE).into_response())
        }
        Err(_) => return Err(Dropped),
    };
    let route = route(&parts.method, path);
    let (interface, agent_id) = match &route {
        Route::Found { op, agent_id } => (op.interface(), Some(*agent_id)),
        Route::WrongMethod { agent_id, .. } => (Interface::Other, Some(*agent_id)),
        Route::NotFound => (Interface::Other, None),
    };
    if interface == Interface::Poll {
        shared.polls.fetch_add(1, Ordering::Relaxed);
    }
    let _sign_in = matches!(interface, Interface::Login | Interface::ForceLogin)
        .then(|| SignInInProgress::start(shared));
    shared.log.push(RecordedRequest {
        method: parts.method.to_string(),
        path: path.to_owned(),
        query: parts.uri.query().map(str::to_owned),
        headers: parts
            .headers
            .iter()
            .map(|(name, value)| {
                let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
                (name.as_str().to_owned(), value)
            })
            .collect(),
        body: String::from_utf8_lossy(&body).into_owned(),
        agent_id: agent_id.map(str::to_owned),
        connection,
    });

    let fault = shared.faults.take(path, interface);
    if fault == Some(FaultKind::DropConnection) {
        return Err(Dropped);
    }
    if let Some(response) = fault.as_ref().and_then(faults::canned_response) {
        return Ok(response);
    }
    if let Some(FaultKind::Queued(delay)) = fault {
        // Dropped with this future if the client gives up first: then never handled.
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shared.shutdown.cancelled() => return Err(Dropped),
        }
    }
    let guid = parts
        .headers
        .get("guid")
        .and_then(|v| v.to_str().ok())
        .map(str::trim);
    let reply = match route {
        Route::NotFound => Reply::html(StatusCode::NOT_FOUND),
        Route::WrongMethod { allow, .. } => Reply::html(StatusCode::METHOD_NOT_ALLOWED)
            .with_header(header::ALLOW, allow.to_string()),
        Route::Found { .. } if !acceptable_content_type(&parts.headers) => {
            Reply::html(StatusCode::UNSUPPORTED_MEDIA_TYPE)
        }
        Route::Found { op, agent_id } => operate(shared, op, agent_id, guid, &body).await?,
    };
    match fault {
        Some(FaultKind::DropAfterEffect) => Err(Dropped),
        Some(FaultKind::Latency(delay)) => {
            tokio::select! {
                _ = tokio::time::sleep(delay) => Ok(reply.into_response()),
                _ = shared.shutdown.cancelled() => Err(Dropped),
            }
        }
        _ => Ok(reply.into_response()),
    }
}

/// The gateway requires `Content-Type: application/json; charset=UTF-8` on every interface;
/// Huawei's own browser client sends `text/plain` on body-less calls and is accepted too.
fn acceptable_content_type(headers: &http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim_start().to_ascii_lowercase())
        .is_some_and(|v| v.starts_with("application/json") || v.starts_with("text/plain"))
}

fn body_too_large(headers: &http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .is_some_and(|len| len > MAX_BODY)
}

/// Runs an interface: its effect on the simulated gateway and its answer (`Err` when the
/// answer is lost after the effect).
async fn operate(
    shared: &Shared,
    op: Op<'_>,
    agent_id: &str,
    guid: Option<&str>,
    body: &[u8],
) -> Result<Reply, Dropped> {
    let play_op = match op {
        Op::Login { force } => return Ok(signin::login(shared, agent_id, body, force)),
        Op::Logout => return Ok(signin::logout(shared, agent_id, guid)),
        Op::UpdateGuid => return Ok(signin::update_guid(shared, agent_id, guid)),
        Op::Heartbeat => return Ok(push::heartbeat(shared, agent_id, guid)),
        Op::Poll => return poll::poll(shared, agent_id, guid).await,
        Op::Play => PlayOp::Begin(body),
        Op::StopPlay => PlayOp::Stop,
        Op::PausePlay => PlayOp::Pause,
        Op::ResumePlay => PlayOp::Resume,
        Op::Jump { forward, time } => PlayOp::Jump { forward, time },
    };
    let Some(agent) = shared.agents.get(agent_id) else {
        return Ok(Reply::retcode(NOT_SIGNED_IN));
    };
    let env = PlayEnv {
        step: shared.config.play_step,
        duration: shared.config.play_duration,
        shutdown: shared.shutdown.clone(),
    };
    let retcode = {
        let mut state = agent.lock();
        match state.authenticate(guid, Instant::now()) {
            Ok(session) => play::apply(&agent, session, play_op, &env),
            Err(retcode) => retcode,
        }
    };
    agent.wake();
    Ok(if retcode == "0" {
        Reply::json(&wire::success())
    } else {
        Reply::retcode(retcode)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(method: Method, path: &str) -> Option<Op<'_>> {
        match route(&method, path) {
            Route::Found { op, .. } => Some(op),
            _ => None,
        }
    }

    #[test]
    fn routes_match_the_vendor_table() {
        let base = "/agentgateway/resource";
        let p = |s: &str| format!("{base}{s}");
        assert_eq!(
            op(Method::PUT, &p("/onlineagent/101")),
            Some(Op::Login { force: false })
        );
        assert_eq!(
            op(Method::DELETE, &p("/onlineagent/101/forcelogout")),
            Some(Op::Logout)
        );
        assert_eq!(op(Method::GET, &p("/agentevent/101")), Some(Op::Poll));
        assert_eq!(
            op(Method::POST, &p("/recordplay/101/backfast/x")),
            Some(Op::Jump {
                forward: false,
                time: "x"
            })
        );
        assert!(matches!(
            route(&Method::POST, &p("/agentevent/101")),
            Route::WrongMethod { .. }
        ));
        assert!(matches!(
            route(&Method::GET, &p("/agentevent/abc")),
            Route::NotFound
        ));
        assert!(matches!(
            route(&Method::GET, &p("/agentevent/101/")),
            Route::NotFound
        ));
        assert!(matches!(
            route(&Method::PUT, "/onlineagent/101"),
            Route::NotFound
        ));
    }
}
