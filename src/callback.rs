//! The push-mode callback server (`--callback-listen`): the HTTPS endpoint the gateway POSTs
//! agents' events to (api-notes §3.3). Transport only: what a batch means is
//! [`crate::events::PushInbox`]'s business, whose session it is the session layer's.
//!
//! Each agent is signed in with `callBackUri = <--callback-url>/<agent id>`, so the agent is
//! known from the path before the body is read: the token and Guid are checked first, then the
//! callback waits for its agent's turn (callbacks of one agent are applied one at a time, in the
//! order they reached that point), then its body is read (bounded in size and time), decoded
//! and applied whole, and only then answered. A refusal changes nothing, is counted in
//! `ccgw_callbacks_total{outcome}` and is answered with an HTTP status and a gateway-style
//! `retcode` (which codes the gateway expects from a receiver is undocumented; it documents
//! only the success answer).
//!
//! Neither the token nor the Guid is ever logged: refusals log the agent and the outcome only.

use crate::events::{constant_time_eq, parse_callback, CallbackError};
use crate::session::Sessions;
use crate::telemetry::Metrics;
use axum::body::Body;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// What the callback server needs besides the sessions.
#[derive(Clone)]
pub struct CallbackSettings {
    /// Where it listens (`--callback-listen`).
    pub listen: std::net::SocketAddr,
    /// Server certificate chain (PEM) the gateway sees.
    pub cert_pem: Vec<u8>,
    /// Its private key (PEM).
    pub key_pem: Vec<u8>,
    /// When set, the gateway must present a client certificate signed by this CA (PEM).
    pub client_ca_pem: Option<Vec<u8>>,
    /// The path of `--callback-url`; callbacks come to `<path>/<agent id>`.
    pub path: String,
    /// Largest body accepted (larger: 413, nothing read beyond).
    pub max_body_bytes: usize,
    /// A client must have sent a request's headers within this (slow-loris bound).
    pub header_timeout: Duration,
    /// ... and its body within this, from the moment its turn came.
    pub body_timeout: Duration,
    /// Connections served at once; more wait in the accept queue.
    pub max_connections: usize,
}

impl std::fmt::Debug for CallbackSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallbackSettings")
            .field("listen", &self.listen)
            .field("path", &self.path)
            .field("client_ca", &self.client_ca_pem.is_some())
            .field("max_body_bytes", &self.max_body_bytes)
            .field("header_timeout", &self.header_timeout)
            .field("body_timeout", &self.body_timeout)
            .finish_non_exhaustive()
    }
}

/// Why the callback server could not start.
#[derive(Debug, thiserror::Error)]
pub enum CallbackServerError {
    /// The certificate, key or client CA is unusable.
    #[error("--callback-cert/--callback-key/--callback-client-ca: {0}")]
    Tls(String),
}

/// A TLS acceptor offering TLS 1.3 and 1.2 only (the vendor requires ≥ 1.2), HTTP/1.1.
pub fn acceptor(settings: &CallbackSettings) -> Result<TlsAcceptor, CallbackServerError> {
    let tls = |e: &dyn std::fmt::Display| CallbackServerError::Tls(e.to_string());
    let certs = rustls_pemfile::certs(&mut &settings.cert_pem[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls(&e))?;
    let key = rustls_pemfile::private_key(&mut &settings.key_pem[..])
        .map_err(|e| tls(&e))?
        .ok_or_else(|| tls(&"no private key in --callback-key"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| tls(&e))?;
    let builder = match &settings.client_ca_pem {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in rustls_pemfile::certs(&mut &ca[..]) {
                roots.add(cert.map_err(|e| tls(&e))?).map_err(|e| tls(&e))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| tls(&e))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| tls(&e))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Serves callbacks on `listener` until `stop` is cancelled.
pub async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    settings: CallbackSettings,
    sessions: Sessions,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let state = Arc::new(State {
        settings,
        sessions,
        metrics,
    });
    let slots = Arc::new(Semaphore::new(state.settings.max_connections.max(1)));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => {
                let (acceptor, state, stop) = (acceptor.clone(), state.clone(), stop.clone());
                tokio::spawn(async move {
                    connection(stream, acceptor, state, stop).await;
                    drop(permit);
                });
            }
            Err(error) => {
                // Typically EMFILE: back off briefly instead of spinning.
                tracing::warn!(%error, "callback listener: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

struct State {
    settings: CallbackSettings,
    sessions: Sessions,
    metrics: Arc<Metrics>,
}

async fn connection(
    stream: TcpStream,
    acceptor: TlsAcceptor,
    state: Arc<State>,
    stop: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let handshake = tokio::time::timeout(state.settings.header_timeout, acceptor.accept(stream));
    let tls = tokio::select! {
        () = stop.cancelled() => return,
        result = handshake => match result {
            Ok(Ok(tls)) => tls,
            Ok(Err(error)) => {
                tracing::debug!(%error, "callback listener: TLS handshake failed");
                return;
            }
            Err(_) => return,
        },
    };
    let service_state = state.clone();
    let service = hyper::service::service_fn(move |request| {
        let state = service_state.clone();
        async move { Ok::<_, std::convert::Infallible>(handle(&state, request).await) }
    });
    let served = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(state.settings.header_timeout)
        .serve_connection(TokioIo::new(tls), service);
    tokio::pin!(served);
    tokio::select! {
        () = stop.cancelled() => served.as_mut().graceful_shutdown(),
        result = served.as_mut() => {
            if let Err(error) = result {
                tracing::debug!(%error, "callback connection ended with an error");
            }
            return;
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), served).await;
}

/// A refusal: HTTP status, gateway retcode, metric outcome.
struct Refusal(StatusCode, &'static str, &'static str);

const WRONG_METHOD: Refusal = Refusal(StatusCode::METHOD_NOT_ALLOWED, "000-002", "wrong_method");
const NOT_FOUND: Refusal = Refusal(StatusCode::NOT_FOUND, "000-002", "not_found");
const UNKNOWN_AGENT: Refusal = Refusal(StatusCode::FORBIDDEN, "100-006", "unknown_agent");
const WRONG_TOKEN: Refusal = Refusal(StatusCode::UNAUTHORIZED, "000-003", "wrong_token");
const WRONG_GUID: Refusal = Refusal(StatusCode::FORBIDDEN, "100-006", "wrong_guid");
const TOO_LARGE: Refusal = Refusal(StatusCode::PAYLOAD_TOO_LARGE, "000-006", "too_large");
const TIMEOUT: Refusal = Refusal(StatusCode::REQUEST_TIMEOUT, "000-006", "timeout");
const SESSION_ENDED: Refusal = Refusal(StatusCode::FORBIDDEN, "100-006", "session_ended");
const WRONG_WORK_NO: Refusal = Refusal(StatusCode::BAD_REQUEST, "000-002", "wrong_work_no");
const MALFORMED: Refusal = Refusal(StatusCode::BAD_REQUEST, "000-006", "malformed");

async fn handle(state: &State, request: Request<hyper::body::Incoming>) -> Response<Body> {
    match receive(state, request).await {
        Ok(()) => {
            state.metrics.callback("accepted");
            answer(StatusCode::OK, Body::from(SUCCESS))
        }
        Err((Refusal(status, retcode, outcome), agent_id)) => {
            state.metrics.callback(outcome);
            tracing::debug!(agent_id, outcome, "callback refused");
            let body = format!(r#"{{"message":"{outcome}","retcode":"{retcode}"}}"#);
            answer(status, Body::from(body))
        }
    }
}

/// The receiver's success answer (api-notes §3.3).
const SUCCESS: &str = r#"{"message":"success","retcode":"0"}"#;

fn answer(status: StatusCode, body: Body) -> Response<Body> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json;charset=UTF-8"),
    );
    response
}

/// Checks, reads and applies one callback; the refusal and the agent (when known) otherwise.
async fn receive(
    state: &State,
    request: Request<hyper::body::Incoming>,
) -> Result<(), (Refusal, Option<String>)> {
    let (parts, body) = request.into_parts();
    if parts.method != Method::POST {
        return Err((WRONG_METHOD, None));
    }
    let agent_id = parts
        .uri
        .path()
        .strip_prefix(state.settings.path.trim_end_matches('/'))
        .and_then(|rest| rest.strip_prefix('/'))
        .filter(|id| !id.is_empty() && id.len() <= 12 && id.bytes().all(|b| b.is_ascii_digit()))
        .ok_or((NOT_FOUND, None))?;
    let refuse = |r: Refusal| (r, Some(agent_id.to_owned()));
    let session = state
        .sessions
        .running_session(agent_id)
        .map_err(|_| refuse(UNKNOWN_AGENT))?;
    let inbox = session.push.as_ref().ok_or_else(|| refuse(UNKNOWN_AGENT))?;
    let token = parts.headers.get("service_token").map(|v| v.as_bytes());
    if !token.is_some_and(|t| inbox.token().matches(t)) {
        return Err(refuse(WRONG_TOKEN));
    }
    // The gateway's current Guid for the session: the newest the bridge adopted.
    // [Unsure: whether a gateway pushes with a Guid it rotated before the heartbeat answer
    // carrying it reached the bridge. Such a callback is refused (403) and changes nothing; a
    // gateway that retries delivers it with the Guid the bridge then holds.]
    let presented = parts.headers.get("guid").map(|v| v.as_bytes());
    let held = session.auth.current().guid;
    let guid_matches = match (presented, &held) {
        (Some(p), Some(h)) => constant_time_eq(p, h.expose().as_bytes()),
        _ => false,
    };
    if !guid_matches {
        return Err(refuse(WRONG_GUID));
    }
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > state.settings.max_body_bytes) {
        return Err(refuse(TOO_LARGE));
    }
    let _turn = inbox.turn().await;
    let read = Limited::new(body, state.settings.max_body_bytes).collect();
    let bytes = match tokio::time::timeout(state.settings.body_timeout, read).await {
        Err(_) => return Err(refuse(TIMEOUT)),
        Ok(Err(e)) if e.is::<LengthLimitError>() => return Err(refuse(TOO_LARGE)),
        // The connection failed mid-body: nothing is applied, and no one reads the answer.
        Ok(Err(_)) => return Err(refuse(MALFORMED)),
        Ok(Ok(collected)) => collected.to_bytes(),
    };
    let batch = parse_callback(&bytes).map_err(|e| {
        refuse(match e {
            CallbackError::ForeignEvent(_) => WRONG_WORK_NO,
            _ => MALFORMED,
        })
    })?;
    if batch.work_no != agent_id {
        return Err(refuse(WRONG_WORK_NO));
    }
    inbox
        .apply(&session.hub, batch)
        .map(|_| ())
        .map_err(|_| refuse(SESSION_ENDED))
}
