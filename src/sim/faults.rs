//! Fault injection: answers a real gateway, a proxy or the network produce rarely, on demand, so
//! the bridge's handling of each can be tested.
//!
//! Apart from [`FaultKind::Latency`], [`FaultKind::DropAfterEffect`] and [`FaultKind::Queued`],
//! a fault *replaces* the request's handling: the operation has no effect on the simulated
//! gateway.

use std::sync::Mutex;
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use futures::StreamExt;
use http::{header, Response, StatusCode};

use super::sync::lock;
use super::wire::{self, Reply};

/// One injected fault: which requests it hits, what happens, how often.
#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    /// Which requests the fault applies to.
    pub matcher: FaultMatch,
    /// What happens to them.
    pub kind: FaultKind,
    /// How many requests it hits; `None` = every matching request until cleared.
    pub count: Option<u32>,
}

/// Selects the requests a fault applies to (control-plane requests are never faulted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FaultMatch {
    /// Every gateway request.
    Any,
    /// Requests whose path (without query) contains this text.
    PathContains(String),
    /// Requests to one interface.
    Interface(Interface),
}

/// The gateway interfaces, as far as the simulator distinguishes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Interface {
    /// `PUT /onlineagent/{id}`
    Login,
    /// `PUT /onlineagent/{id}/forcelogin`
    ForceLogin,
    /// `DELETE /onlineagent/{id}/logout` and `DELETE /onlineagent/{id}/forcelogout`
    Logout,
    /// `GET /agentevent/{id}`
    Poll,
    /// `PUT /recordplay/{id}/play`
    Play,
    /// `DELETE /recordplay/{id}/stopplay`
    StopPlay,
    /// `POST /recordplay/{id}/pauseplay`
    PausePlay,
    /// `POST /recordplay/{id}/resumeplay`
    ResumePlay,
    /// `POST /recordplay/{id}/forefast/{time}`
    ForeFast,
    /// `POST /recordplay/{id}/backfast/{time}`
    BackFast,
    /// `PUT /onlineagent/{id}/updateGuid`
    UpdateGuid,
    /// `POST /onlineagent/{id}/handshake` (push mode's heartbeat)
    Heartbeat,
    /// Anything else (unknown paths, wrong methods).
    Other,
}

/// What a fault does to a request it hits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FaultKind {
    /// Handle the request normally (with its effect), then wait this long before answering.
    Latency(Duration),
    /// Answer this HTTP status with a small HTML body (no effect).
    HttpStatus(u16),
    /// HTTP 200 with this `retcode` and `message` (no effect).
    Retcode {
        /// The retcode, e.g. `"100-007"`.
        retcode: String,
        /// The message text.
        message: String,
    },
    /// HTTP 200, JSON content type, body not JSON (no effect).
    MalformedBody,
    /// HTTP 200 with a `text/html` body, as a proxy's error page would be (no effect).
    NonJsonContentType,
    /// HTTP 200 whose `Content-Length` announces more bytes than are sent: status, headers and
    /// half the body arrive, then the connection closes (on h2: the stream ends early) (no
    /// effect).
    Truncated,
    /// HTTP 200 with a success-looking JSON body padded to this many bytes (no effect).
    Oversized(usize),
    /// The request is read, then the connection is closed without any response (on h2: the
    /// stream is reset) (no effect).
    DropConnection,
    /// The request takes effect (e.g. play starts), then the connection is closed without any
    /// response: "the request reached the gateway, the answer was lost".
    DropAfterEffect,
    /// The request waits this long before it is handled (its effect happens then), as in a
    /// queue in front of a busy gateway; one the client abandons meanwhile is never handled.
    Queued(Duration),
}

/// The active faults, in insertion order.
#[derive(Default)]
pub(crate) struct FaultTable {
    faults: Mutex<Vec<Fault>>,
}

impl FaultTable {
    /// Appends a fault (one with a count of 0 would never fire and is ignored).
    pub fn add(&self, fault: Fault) {
        if fault.count != Some(0) {
            lock(&self.faults).push(fault);
        }
    }

    /// Removes every fault.
    pub fn clear(&self) {
        lock(&self.faults).clear()
    }

    /// The first fault matching the request consumes one use and is returned.
    pub fn take(&self, path: &str, interface: Interface) -> Option<FaultKind> {
        let mut faults = lock(&self.faults);
        let index = faults.iter().position(|f| match &f.matcher {
            FaultMatch::Any => true,
            FaultMatch::PathContains(text) => path.contains(text.as_str()),
            FaultMatch::Interface(i) => *i == interface,
        })?;
        let fault = &mut faults[index];
        let kind = fault.kind.clone();
        if let Some(count) = fault.count.as_mut() {
            *count -= 1;
            if *count == 0 {
                faults.remove(index);
            }
        }
        Some(kind)
    }
}

/// The response of a fault that replaces the answer, or `None` for the faults that do not
/// produce a response of their own (latency, dropped connections).
pub(crate) fn canned_response(kind: &FaultKind) -> Option<Response<Body>> {
    let response = match kind {
        FaultKind::Latency(_)
        | FaultKind::DropConnection
        | FaultKind::DropAfterEffect
        | FaultKind::Queued(_) => return None,
        FaultKind::HttpStatus(code) => {
            let status = StatusCode::from_u16(*code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            Reply::html(status).into_response()
        }
        FaultKind::Retcode { retcode, message } => {
            Reply::json(&wire::envelope(retcode, message)).into_response()
        }
        FaultKind::MalformedBody => raw(wire::JSON_CONTENT_TYPE, Bytes::from_static(MALFORMED)),
        FaultKind::NonJsonContentType => Reply::html(StatusCode::OK).into_response(),
        FaultKind::Truncated => truncated(),
        FaultKind::Oversized(size) => raw(wire::JSON_CONTENT_TYPE, oversized_body(*size)),
    };
    Some(response)
}

/// A body that starts like a gateway answer and then stops being JSON.
const MALFORMED: &[u8] = b"{\"message\":\"\",\"retcode\":\"0\",\"result\":{<html>";

/// The body the truncated answer announces; only its first half is sent.
const TRUNCATED_FULL: &[u8] = b"{\"result\":{},\"message\":\"success\",\"retcode\":\"0\"}";

fn raw(content_type: &'static str, body: Bytes) -> Response<Body> {
    let mut response = Response::new(Body::from(body));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}

/// Announces [`TRUNCATED_FULL`] but sends only its first half, then ends the body. The one
/// `Pending` between the two lets the server flush what was sent, so the client really receives
/// the status, the headers and a partial body. On HTTP/1.1 the server then closes the connection
/// (the announced length cannot be met); on h2 the stream ends early and the client reports the
/// content-length mismatch.
fn truncated() -> Response<Body> {
    let half = Bytes::from_static(&TRUNCATED_FULL[..TRUNCATED_FULL.len() / 2]);
    let flush_point = futures::stream::once(tokio::task::yield_now())
        .filter_map(|()| std::future::ready(None::<Result<Bytes, std::io::Error>>));
    let chunks = futures::stream::iter([Ok(half)]).chain(flush_point);
    let mut response = Response::new(Body::from_stream(chunks));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(wire::JSON_CONTENT_TYPE),
    );
    headers.insert(
        header::CONTENT_LENGTH,
        header::HeaderValue::from(TRUNCATED_FULL.len()),
    );
    response
}

/// `{"message":"","retcode":"0","result":{"padding":"xxx…"}}` of exactly `size` bytes: complete,
/// valid JSON when `size` allows it, otherwise a prefix of such a document.
fn oversized_body(size: usize) -> Bytes {
    const HEAD: &[u8] = b"{\"message\":\"\",\"retcode\":\"0\",\"result\":{\"padding\":\"";
    const TAIL: &[u8] = b"\"}}";
    let mut body = Vec::with_capacity(size.max(HEAD.len() + TAIL.len()));
    body.extend_from_slice(HEAD);
    body.resize(size.saturating_sub(TAIL.len()).max(HEAD.len()), b'x');
    body.extend_from_slice(TAIL);
    body.truncate(size);
    Bytes::from(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversized_body_has_exact_size_and_is_json_when_large_enough() {
        let body = oversized_body(4096);
        assert_eq!(body.len(), 4096);
        let value: serde_json::Value = serde_json::from_slice(&body).expect("valid JSON");
        assert_eq!(value["retcode"], "0");
        assert_eq!(oversized_body(10).len(), 10);
    }

    #[test]
    fn counted_faults_are_consumed_in_order() {
        let table = FaultTable::default();
        table.add(Fault {
            matcher: FaultMatch::Interface(Interface::Play),
            kind: FaultKind::MalformedBody,
            count: Some(1),
        });
        table.add(Fault {
            matcher: FaultMatch::Any,
            kind: FaultKind::DropConnection,
            count: None,
        });
        assert_eq!(
            table.take("/x", Interface::Play),
            Some(FaultKind::MalformedBody)
        );
        assert_eq!(
            table.take("/x", Interface::Play),
            Some(FaultKind::DropConnection)
        );
        // A fault without a count stays.
        assert_eq!(
            table.take("/x", Interface::Play),
            Some(FaultKind::DropConnection)
        );
    }
}
