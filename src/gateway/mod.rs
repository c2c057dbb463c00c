//! The CC-Gateway HTTPS client: URIs, headers, JSON bodies, `Set-GUID`, retcodes and TLS.
//!
//! One pooled `reqwest::Client` serves every agent, so calls reuse keep-alive connections and pay
//! no TLS handshake each (the sidecar's CPU per call is its price). Per-agent state (Guid,
//! cookies) travels with each call in an [`AgentAuth`] instead of living in the client.

mod auth;
pub mod bodies;
mod envelope;
mod error;
mod interface;
mod observer;
pub mod retcodes;

pub use auth::{parse_set_guid, AgentAuth, GuidState};
pub use envelope::{DecodeError, Envelope, RawEvent};
pub use error::{chain, GatewayError};
pub use interface::Interface;
pub use observer::Observer;

use crate::secret::Guid;
use reqwest::header::{HeaderName, HeaderValue, ACCEPT, CONTENT_TYPE, COOKIE, SET_COOKIE};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument;

/// The least time left before a caller's deadline for a gateway request to be sent at all.
/// A request sent with less would almost surely time out after the gateway may have acted
/// (a play started, and the caller told only DEADLINE_EXCEEDED); refusing it up front tells
/// the caller that nothing happened.
pub const MIN_REQUEST_BUDGET: Duration = Duration::from_millis(10);

/// Where the gateway is and how to talk to it. Built and checked by `config`.
#[derive(Clone)]
pub struct GatewayConfig {
    /// Scheme, host and port only, e.g. `https://10.0.0.5:8043`.
    pub base_url: String,
    /// PEM bundle of CAs trusted for the gateway; `None` uses the system roots.
    pub ca_pem: Option<Vec<u8>>,
    /// PEM client certificate followed by its key, for gateways that require mutual TLS.
    pub client_identity_pem: Option<Vec<u8>>,
    /// Accept any gateway certificate. Only for labs; `main` warns loudly.
    pub insecure_skip_verify: bool,
    /// Upper bound for an operation call when the caller set no shorter deadline.
    pub request_timeout: Duration,
    /// Read timeout for the long poll; must exceed the gateway's hold (10 s by default).
    pub poll_timeout: Duration,
    /// TCP + TLS connect bound.
    pub connect_timeout: Duration,
    /// Answers larger than this are refused (a misbehaving proxy must not exhaust memory).
    pub max_body_bytes: usize,
}

impl std::fmt::Debug for GatewayConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayConfig")
            .field("base_url", &self.base_url)
            .field("custom_ca", &self.ca_pem.is_some())
            .field("client_cert", &self.client_identity_pem.is_some())
            .field("insecure_skip_verify", &self.insecure_skip_verify)
            .field("request_timeout", &self.request_timeout)
            .field("poll_timeout", &self.poll_timeout)
            .finish()
    }
}

/// Why the HTTPS client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientBuildError {
    /// The CA bundle or client identity is not usable PEM.
    #[error("TLS material: {0}")]
    Tls(String),
    /// The gateway URL does not form a valid base for the interface paths.
    #[error("--gateway-url: {0}")]
    Url(String),
}

/// The shared, cheaply clonable gateway client.
#[derive(Clone)]
pub struct GatewayClient {
    http: reqwest::Client,
    base: reqwest::Url,
    config: Arc<GatewayConfig>,
    metrics: Arc<dyn Observer>,
    reachable: Arc<tokio::sync::watch::Sender<bool>>,
}

static JSON_UTF8: HeaderValue = HeaderValue::from_static("application/json; charset=UTF-8");
static JSON: HeaderValue = HeaderValue::from_static("application/json");
/// Request header carrying the Guid (header names are case-insensitive; a static name is not
/// parsed per request).
static GUID: HeaderName = HeaderName::from_static("guid");
static SET_GUID: HeaderName = HeaderName::from_static("set-guid");

impl GatewayClient {
    /// Builds the pooled HTTPS client from validated configuration.
    pub fn new(
        config: GatewayConfig,
        metrics: Arc<dyn Observer>,
    ) -> Result<Self, ClientBuildError> {
        crate::crypto::install_crypto_provider();
        let mut builder = reqwest::Client::builder()
            // The gateway is a Tomcat application; HTTP/1.1 keep-alive is what it speaks, and
            // h2 stream limits would make held polls starve operation calls.
            .http1_only()
            .connect_timeout(config.connect_timeout)
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(90))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("ccgw-bridge/", env!("CARGO_PKG_VERSION")));
        if let Some(pem) = &config.ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| ClientBuildError::Tls(format!("--ca-cert: {}", chain(&e))))?;
            if certs.is_empty() {
                return Err(ClientBuildError::Tls(
                    "--ca-cert holds no PEM certificate".into(),
                ));
            }
            builder = builder.tls_certs_only(certs);
        }
        if let Some(pem) = &config.client_identity_pem {
            let identity = reqwest::Identity::from_pem(pem).map_err(|e| {
                ClientBuildError::Tls(format!("--client-cert/--client-key: {}", chain(&e)))
            })?;
            builder = builder.identity(identity);
        }
        if config.insecure_skip_verify {
            builder = builder.tls_danger_accept_invalid_certs(true);
        }
        let http = builder
            .build()
            .map_err(|e| ClientBuildError::Tls(chain(&e)))?;
        let base = format!(
            "{}/agentgateway/resource",
            config.base_url.trim_end_matches('/')
        );
        let base = reqwest::Url::parse(&base).map_err(|e| ClientBuildError::Url(e.to_string()))?;
        Ok(Self {
            http,
            base,
            config: Arc::new(config),
            metrics,
            reachable: Arc::new(tokio::sync::watch::Sender::new(false)),
        })
    }

    /// Calls one interface for one agent and decodes the answer.
    ///
    /// Adopts any `Set-GUID` into `auth` before returning, whatever the retcode. `guid` is the
    /// Guid to present (the caller snapshots it, so it knows which one a refusal was about).
    /// The request is bounded by `deadline` (the caller's gRPC deadline) and the configured
    /// timeout, whichever is sooner; a deadline already passed is not sent at all.
    pub async fn call(
        &self,
        iface: Interface,
        agent_id: &str,
        auth: &AgentAuth,
        guid: Option<&Guid>,
        body: Option<bytes::Bytes>,
        deadline: Option<Instant>,
    ) -> Result<Envelope, GatewayError> {
        let started = Instant::now();
        let span = tracing::debug_span!(
            "gateway",
            otel.name = iface.name(),
            otel.kind = "client",
            interface = iface.name(),
            agent_id,
            retcode = tracing::field::Empty
        );
        let result = self
            .exchange(iface, agent_id, auth, guid, body, deadline)
            .instrument(span.clone())
            .await;
        let outcome = match &result {
            Ok(_) => "0",
            Err(GatewayError::Retcode { retcode, .. }) => retcodes::label(retcode),
            Err(GatewayError::Unreachable(_)) => "unreachable",
            Err(GatewayError::HttpStatus(_)) => "http_status",
            Err(GatewayError::Timeout(_)) => "timeout",
            Err(GatewayError::OutcomeUnknown(_)) => "outcome_unknown",
            Err(GatewayError::DeadlineTooShort(_)) => "not_sent",
        };
        match &result {
            Err(GatewayError::Unreachable(_)) => self.set_reachable(false),
            Err(GatewayError::Timeout(_) | GatewayError::DeadlineTooShort(_)) => {}
            _ => self.set_reachable(true),
        }
        let elapsed = started.elapsed();
        span.record("retcode", outcome);
        self.metrics.gateway_request(iface.name(), outcome, elapsed);
        tracing::debug!(
            interface = iface.name(),
            agent_id,
            retcode = outcome,
            latency_us = elapsed.as_micros() as u64,
            "gateway request"
        );
        result
    }

    /// Whether the last exchange reached the gateway; watched by readiness.
    pub fn reachability(&self) -> tokio::sync::watch::Receiver<bool> {
        self.reachable.subscribe()
    }

    fn set_reachable(&self, now: bool) {
        self.reachable
            .send_if_modified(|was| std::mem::replace(was, now) != now);
    }

    /// Checks that the gateway answers HTTPS at all (any HTTP status counts), for readiness
    /// while no agent traffic shows it; a failure's cause chain (connect, TLS) is returned for
    /// readiness to report. Touches no agent.
    pub async fn probe(&self) -> Result<(), String> {
        let result = self
            .http
            .get(self.base.clone())
            .timeout(self.config.connect_timeout)
            .send()
            .await
            .map(drop)
            .map_err(|e| chain(&e));
        self.set_reachable(result.is_ok());
        result
    }

    /// The URL of `iface` for `agent_id`.
    fn url(&self, iface: Interface, agent_id: &str) -> reqwest::Url {
        let mut url = self.base.clone();
        iface.push_path(&mut url, agent_id);
        url
    }

    async fn exchange(
        &self,
        iface: Interface,
        agent_id: &str,
        auth: &AgentAuth,
        guid: Option<&Guid>,
        body: Option<bytes::Bytes>,
        deadline: Option<Instant>,
    ) -> Result<Envelope, GatewayError> {
        let default = if iface == Interface::Poll {
            self.config.poll_timeout
        } else {
            self.config.request_timeout
        };
        let timeout = match deadline {
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left < MIN_REQUEST_BUDGET {
                    return Err(GatewayError::DeadlineTooShort(left));
                }
                left.min(default)
            }
            None => default,
        };

        let url = if iface == Interface::Poll {
            // The hot path: the agent's poll URL is built once per session.
            auth.poll_url(|| self.url(iface, agent_id)).clone()
        } else {
            self.url(iface, agent_id)
        };
        let mut request = self
            .http
            .request(iface.method(), url)
            .timeout(timeout)
            .header(CONTENT_TYPE, JSON_UTF8.clone())
            .header(ACCEPT, JSON.clone());
        if iface.sends_guid() {
            if let Some(guid) = guid {
                let value = guid.header_value().ok_or_else(|| {
                    GatewayError::Unreachable("the held Guid is not a valid header value".into())
                })?;
                request = request.header(GUID.clone(), value.clone());
            }
        }
        if let Some(cookie) = auth.cookie_header() {
            request = request.header(COOKIE, cookie);
        }
        if let Some(body) = body {
            request = request.body(body);
        }

        let response = request.send().await.map_err(|e| classify(&e, timeout))?;
        let status = response.status();
        if !status.is_success() {
            return Err(GatewayError::HttpStatus(status.as_u16()));
        }
        let headers = response.headers();
        if let Some(guid) = headers
            .get_all(&SET_GUID)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .rev()
            .find_map(parse_set_guid)
        {
            if auth.adopt(guid) {
                self.metrics.guid_adopted();
            }
        }
        auth.store_cookies(
            headers
                .get_all(SET_COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok()),
        );
        if let Some(ct) = headers.get(CONTENT_TYPE) {
            let ct = ct.to_str().unwrap_or("");
            if !(ct.contains("json") || ct.starts_with("text/plain")) {
                return Err(GatewayError::OutcomeUnknown(format!(
                    "answer has content type {ct:?}, not JSON"
                )));
            }
        }
        let limit = self.config.max_body_bytes;
        if response.content_length().is_some_and(|n| n > limit as u64) {
            return Err(GatewayError::OutcomeUnknown(format!(
                "answer larger than the {limit}-byte limit"
            )));
        }
        let body = if response.content_length().is_some() {
            // Its length was checked above, and hyper ends the body at that length; one chunk
            // (the usual case) is taken without a copy.
            response.bytes().await.map_err(|e| classify(&e, timeout))?
        } else {
            read_limited(response, limit, timeout).await?
        };
        let envelope =
            Envelope::decode(&body).map_err(|e| GatewayError::OutcomeUnknown(e.to_string()))?;
        if envelope.is_success() {
            Ok(envelope)
        } else {
            Err(GatewayError::Retcode {
                retcode: envelope.retcode,
                message: envelope.message,
            })
        }
    }
}

/// Reads a body of unannounced length (chunked), refusing it once it exceeds `limit`.
async fn read_limited(
    mut response: reqwest::Response,
    limit: usize,
    timeout: Duration,
) -> Result<bytes::Bytes, GatewayError> {
    let mut buf = Vec::with_capacity(256);
    while let Some(chunk) = response.chunk().await.map_err(|e| classify(&e, timeout))? {
        if buf.len() + chunk.len() > limit {
            return Err(GatewayError::OutcomeUnknown(format!(
                "answer larger than the {limit}-byte limit"
            )));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.into())
}

/// Sorts a reqwest failure by whether the request can have reached the gateway. A connect-phase
/// failure (TCP or TLS, including a connect timeout, which reqwest flags as both `connect` and
/// `timeout`) surely did not.
fn classify(err: &reqwest::Error, timeout: Duration) -> GatewayError {
    if err.is_connect() {
        GatewayError::Unreachable(chain(err))
    } else if err.is_timeout() {
        GatewayError::Timeout(timeout)
    } else {
        GatewayError::OutcomeUnknown(chain(err))
    }
}
