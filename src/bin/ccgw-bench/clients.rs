//! The benchmark's own clients: the direct REST path (reqwest, rustls, HTTP/1.1, pooled — the
//! same stack and settings as the bridge's gateway client), the simulator's control plane, and
//! gRPC helpers for the bridge path.

use std::sync::Arc;
use std::time::Duration;

use ccgw_bridge::proto::agent_session_service_client::AgentSessionServiceClient;
use ccgw_bridge::proto::record_play_service_client::RecordPlayServiceClient;
use ccgw_bridge::proto::SignInRequest;
use futures::StreamExt;
use reqwest::header::{HeaderValue, ACCEPT, CONTENT_TYPE, COOKIE};
use tonic::transport::{Channel, Endpoint};

use crate::procs::{BoxError, Sim};

/// Voice path played by both paths.
pub const VOICE_PATH: &str = "Y:/bench/prompt.V3";
/// Body the bridge sends for `BeginPlay { voice_path: VOICE_PATH }` (unset fields omitted).
const PLAY_BODY: &str = r#"{"voicepath":"Y:/bench/prompt.V3"}"#;
const SIGN_IN_BODY: &str = r#"{"password":"","phonenum":"88001"}"#;

static JSON_UTF8: HeaderValue = HeaderValue::from_static("application/json; charset=UTF-8");
static JSON: HeaderValue = HeaderValue::from_static("application/json");

/// An HTTPS client configured like the bridge's (`src/gateway/mod.rs`).
pub fn https_client(sim: &Sim) -> Result<reqwest::Client, BoxError> {
    https_client_trusting(&sim.ca)
}

/// [`https_client`] trusting the CA certificate at `ca`.
pub fn https_client_trusting(ca: &std::path::Path) -> Result<reqwest::Client, BoxError> {
    let pem = std::fs::read(ca)?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem)?;
    Ok(reqwest::Client::builder()
        .http1_only()
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .pool_idle_timeout(Duration::from_secs(90))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent("ccgw-bench-direct/0.1")
        .tls_certs_only(certs)
        .build()?)
}

/// An agent signed in directly at the simulator.
pub struct DirectAgent {
    pub id: String,
    pub guid: HeaderValue,
    pub play_url: String,
    pub stop_url: String,
}

/// The direct REST path.
#[derive(Clone)]
pub struct Direct {
    http: reqwest::Client,
    base: Arc<str>,
    cookie: HeaderValue,
}

#[derive(serde::Deserialize)]
struct Envelope {
    retcode: String,
}

impl Direct {
    pub fn new(sim: &Sim) -> Result<Direct, BoxError> {
        Direct::at(&sim.url, &sim.ca)
    }

    /// The direct path to the simulator at `url`, whose CA certificate is at `ca`.
    pub fn at(url: &str, ca: &std::path::Path) -> Result<Direct, BoxError> {
        Ok(Direct {
            http: https_client_trusting(ca)?,
            base: format!("{url}/agentgateway/resource").into(),
            cookie: HeaderValue::from_static("ccgwsticky=AgentGateway0"),
        })
    }

    /// `PUT /onlineagent/{id}`: signs the agent in and keeps its Guid.
    pub async fn sign_in(&self, id: &str) -> Result<DirectAgent, BoxError> {
        let response = self
            .http
            .put(format!("{}/onlineagent/{id}", self.base))
            .header(CONTENT_TYPE, JSON_UTF8.clone())
            .header(ACCEPT, JSON.clone())
            .body(SIGN_IN_BODY)
            .send()
            .await?;
        let guid = response
            .headers()
            .get("set-guid")
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or("").trim())
            .map(|v| v.strip_prefix("JSESSIONID=").unwrap_or(v).to_owned())
            .ok_or("sign-in answer without Set-GUID")?;
        let bytes = response.bytes().await?;
        check_retcode(&bytes)?;
        let mut guid = HeaderValue::from_str(&guid)?;
        guid.set_sensitive(true);
        Ok(DirectAgent {
            id: id.to_owned(),
            guid,
            play_url: format!("{}/recordplay/{id}/play", self.base),
            stop_url: format!("{}/recordplay/{id}/stopplay", self.base),
        })
    }

    /// `PUT /recordplay/{id}/play`, verified (HTTP 200, retcode "0").
    pub async fn begin_play(&self, agent: &DirectAgent) -> Result<(), BoxError> {
        let request = self
            .http
            .put(&agent.play_url)
            .body(PLAY_BODY)
            .timeout(Duration::from_secs(30));
        self.exchange(agent, request).await
    }

    /// `DELETE /recordplay/{id}/stopplay`, verified.
    pub async fn stop_play(&self, agent: &DirectAgent) -> Result<(), BoxError> {
        let request = self
            .http
            .delete(&agent.stop_url)
            .timeout(Duration::from_secs(30));
        self.exchange(agent, request).await
    }

    async fn exchange(
        &self,
        agent: &DirectAgent,
        request: reqwest::RequestBuilder,
    ) -> Result<(), BoxError> {
        let response = request
            .header(CONTENT_TYPE, JSON_UTF8.clone())
            .header(ACCEPT, JSON.clone())
            .header("Guid", agent.guid.clone())
            .header(COOKIE, self.cookie.clone())
            .send()
            .await?;
        if !response.status().is_success() {
            return Err(format!("HTTP {}", response.status()).into());
        }
        let bytes = response.bytes().await?;
        check_retcode(&bytes)
    }
}

fn check_retcode(body: &[u8]) -> Result<(), BoxError> {
    let envelope: Envelope = serde_json::from_slice(body)?;
    if envelope.retcode == "0" {
        Ok(())
    } else {
        Err(format!("retcode {}", envelope.retcode).into())
    }
}

/// The simulator's `/_sim/` control plane.
#[derive(Clone)]
pub struct Control {
    http: reqwest::Client,
    base: Arc<str>,
}

/// `GET /_sim/stats`.
#[derive(serde::Deserialize, Debug, Clone, Copy, Default)]
pub struct SimStats {
    pub requests: u64,
    pub polls: u64,
    pub sign_ins: u64,
    pub tls_handshakes: u64,
    pub active_connections: u64,
    /// The most sign-ins ever in progress at once (not a counter: `since` keeps it as is).
    #[serde(default)]
    pub max_concurrent_sign_ins: u64,
}

impl SimStats {
    pub fn since(self, before: SimStats) -> SimStats {
        SimStats {
            requests: self.requests - before.requests,
            polls: self.polls - before.polls,
            sign_ins: self.sign_ins - before.sign_ins,
            tls_handshakes: self.tls_handshakes - before.tls_handshakes,
            active_connections: self.active_connections,
            max_concurrent_sign_ins: self.max_concurrent_sign_ins,
        }
    }

    pub fn add(&mut self, d: SimStats) {
        self.requests += d.requests;
        self.polls += d.polls;
        self.sign_ins += d.sign_ins;
        self.tls_handshakes += d.tls_handshakes;
        self.active_connections = d.active_connections;
        self.max_concurrent_sign_ins = self.max_concurrent_sign_ins.max(d.max_concurrent_sign_ins);
    }
}

impl Control {
    pub fn new(sim: &Sim) -> Result<Control, BoxError> {
        Ok(Control {
            http: https_client(sim)?,
            base: format!("{}/_sim", sim.url).into(),
        })
    }

    pub async fn stats(&self) -> Result<SimStats, BoxError> {
        let r = self
            .http
            .get(format!("{}/stats", self.base))
            .send()
            .await?
            .error_for_status()?;
        Ok(r.json().await?)
    }

    /// Queues a raw event for `agent` (released to its held poll at once).
    pub async fn queue_event(
        &self,
        agent: &str,
        event: &serde_json::Value,
    ) -> Result<(), BoxError> {
        let r = self
            .http
            .post(format!("{}/agents/{agent}/events", self.base))
            .header(CONTENT_TYPE, JSON.clone())
            .body(event.to_string())
            .send()
            .await?
            .error_for_status()?;
        let answer: serde_json::Value = r.json().await?;
        if answer["signedIn"] != serde_json::Value::Bool(true) {
            return Err(
                format!("event for {agent}: the simulator says it is not signed in").into(),
            );
        }
        Ok(())
    }
}

/// `BeginPlay` of the bench's prompt on `agent` (a bridge's or a baseline's API).
pub async fn begin_play(
    client: &mut RecordPlayServiceClient<Channel>,
    agent: &str,
) -> Result<(), tonic::Status> {
    client
        .begin_play(ccgw_bridge::proto::BeginPlayRequest {
            agent_id: agent.to_owned(),
            voice_path: VOICE_PATH.into(),
            ..Default::default()
        })
        .await
        .map(drop)
}

/// A plain-text HTTP/2 channel to the bridge.
pub async fn channel(url: &str) -> Result<Channel, BoxError> {
    Ok(Endpoint::from_shared(url.to_owned())?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await?)
}

/// Signs `ids` in through the bridge (`AgentSessionService.SignIn`), `concurrency` at a time.
pub async fn sign_in_via_bridge(
    channel: &Channel,
    ids: &[String],
    concurrency: usize,
) -> Result<(), BoxError> {
    let results: Vec<Result<(), BoxError>> = futures::stream::iter(ids.iter().cloned())
        .map(|id| {
            let mut client = AgentSessionServiceClient::new(channel.clone());
            async move {
                client
                    .sign_in(SignInRequest {
                        agent_id: id.clone(),
                        password: String::new(),
                        phone_number: "88001".into(),
                        ..Default::default()
                    })
                    .await
                    .map_err(|s| format!("SignIn {id}: {s}"))?;
                Ok(())
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    results.into_iter().collect()
}

/// Signs `ids` in directly at the simulator.
pub async fn sign_in_direct(
    direct: &Direct,
    ids: &[String],
    concurrency: usize,
) -> Result<Vec<DirectAgent>, BoxError> {
    let results: Vec<Result<DirectAgent, BoxError>> = futures::stream::iter(ids.iter().cloned())
        .map(|id| {
            let direct = direct.clone();
            async move { direct.sign_in(&id).await }
        })
        .buffered(concurrency)
        .collect()
        .await;
    results.into_iter().collect()
}

/// Sum of `watchers` over the bridge's sessions (`ListSessions`).
pub async fn bridge_watchers(channel: &Channel) -> Result<u64, BoxError> {
    let mut client = AgentSessionServiceClient::new(channel.clone());
    let list = client
        .list_sessions(ccgw_bridge::proto::ListSessionsRequest {})
        .await?
        .into_inner();
    Ok(list.sessions.iter().map(|s| u64::from(s.watchers)).sum())
}

/// The bridge's Prometheus text (`/metrics` on the admin listener), as `series → value`.
pub async fn bridge_metrics(
    http: &reqwest::Client,
    admin_url: &str,
) -> Result<std::collections::HashMap<String, f64>, BoxError> {
    let text = http
        .get(format!("{admin_url}/metrics"))
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    Ok(text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect())
}

/// Sum and count of a histogram over the series given by their whole label sets, as `/metrics`
/// writes them (`a="x",b="y"`, without braces).
pub fn histogram_sum_count(
    m: &std::collections::HashMap<String, f64>,
    name: &str,
    label_sets: &[&str],
) -> (f64, f64) {
    let mut sum = 0.0;
    let mut count = 0.0;
    for set in label_sets {
        let labels = format!("{{{set}}}");
        sum += m
            .get(&format!("{name}_sum{labels}"))
            .copied()
            .unwrap_or(0.0);
        count += m
            .get(&format!("{name}_count{labels}"))
            .copied()
            .unwrap_or(0.0);
    }
    (sum, count)
}
