//! The `/_sim/` control plane: the [`Simulator`](super::Simulator) handle's operations over
//! HTTP, for users outside the test process (benchmarks, scripts). Never recorded, never faulted.

use axum::body::Body;
use http::{Method, Response, StatusCode};
use serde_json::{json, Value};

use super::shared::Shared;
use super::wire::Reply;

/// Path prefix of the control plane.
pub(crate) const PREFIX: &str = "/_sim/";
/// Largest event body accepted.
const MAX_BODY: usize = 1 << 20;

/// Serves one control-plane request (anything under [`PREFIX`]).
pub(crate) async fn handle(
    shared: &Shared,
    method: &Method,
    path: &str,
    body: hyper::body::Incoming,
) -> Response<Body> {
    let rest = path.strip_prefix(PREFIX).unwrap_or_default();
    let segments: Vec<&str> = rest.split('/').collect();
    let reply = match (method, segments.as_slice()) {
        (&Method::GET, ["stats"]) => Reply::json(&json!(shared.stats())),
        (&Method::GET, ["requests"]) => Reply::json(&json!(shared.log.all())),
        (&Method::POST, ["agents", id, action]) => {
            agent_action(shared, id, action, Body::new(body)).await
        }
        _ => Reply::html(StatusCode::NOT_FOUND),
    };
    reply.into_response()
}

async fn agent_action(shared: &Shared, id: &str, action: &str, body: Body) -> Reply {
    let agents = &shared.agents;
    match action {
        "signout" => agents.force_sign_out(id),
        "kill" => agents.kill_session(id),
        "rotate" => agents.rotate_guid(id),
        "events" => {
            let Ok(bytes) = axum::body::to_bytes(body, MAX_BODY).await else {
                return Reply::html(StatusCode::BAD_REQUEST);
            };
            let Ok(event) = serde_json::from_slice::<Value>(&bytes) else {
                return Reply::html(StatusCode::BAD_REQUEST);
            };
            agents.queue_raw_event(id, event);
        }
        _ => return Reply::html(StatusCode::NOT_FOUND),
    }
    Reply::json(&json!({"ok": true, "signedIn": agents.signed_in(id)}))
}
