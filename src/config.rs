//! The bridge's flags, environment and the agents file, validated into a [`Config`] before any
//! port is bound (a bad value exits with code 64 and one clear message). The binary's whole
//! command line, helper commands included, is `crate::args`.

use crate::events::EventBudget;
use crate::gateway::GatewayConfig;
use crate::grpc::validate::{self, Limits, Violations, VoicePathPolicy};
use crate::pool::PoolConfig;
use crate::secret::Password;
use crate::session::{SessionSettings, SignInParams};
use crate::telemetry::LogFormat;
use clap::Args;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use zeroize::Zeroizing;

mod pem;

/// Settings of the standalone simulator.
#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// Address to serve HTTPS on.
    #[arg(long, env = "CCGW_SIM_LISTEN", default_value = "127.0.0.1:8043")]
    pub listen: SocketAddr,
    /// Long-poll hold when no event is pending.
    #[arg(long, env = "CCGW_SIM_POLL_HOLD", default_value = "10s", value_parser = duration)]
    pub poll_hold: Duration,
    /// How long a started playback runs before it ends by itself.
    #[arg(long, env = "CCGW_SIM_PLAY_DURATION", default_value = "30s", value_parser = duration)]
    pub play_duration: Duration,
    /// Dynamic authentication: rotate Guids this often (static Guids when unset).
    #[arg(long, env = "CCGW_SIM_ROTATE_EVERY", value_parser = duration)]
    pub rotate_every: Option<Duration>,
    /// With --rotate-every: refuse the old Guid as soon as the new one was delivered.
    #[arg(long, env = "CCGW_SIM_STRICT")]
    pub strict: bool,
}

/// Every knob of the bridge; each flag has a `CCGW_*` environment twin.
#[derive(Debug, Args, Clone)]
pub struct BridgeArgs {
    /// gRPC API address. Pod-local by default: the caller is the sidecar's neighbour.
    #[arg(long, env = "CCGW_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// Admin address (gRPC health, /metrics, /livez, /readyz); on the pod IP for kubelet probes.
    #[arg(long, env = "CCGW_ADMIN_LISTEN", default_value = "0.0.0.0:9090")]
    pub admin_listen: SocketAddr,
    /// The CC-Gateway: scheme, host and port only, e.g. https://10.0.0.5:8043.
    #[arg(long, env = "CCGW_GATEWAY_URL")]
    pub gateway_url: Option<String>,
    /// PEM bundle of CAs trusted for the gateway (default: the system roots).
    #[arg(long, env = "CCGW_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// PEM client certificate, for gateways that require mutual TLS (with --client-key).
    #[arg(long, env = "CCGW_CLIENT_CERT", requires = "client_key")]
    pub client_cert: Option<PathBuf>,
    /// PEM private key of --client-cert.
    #[arg(long, env = "CCGW_CLIENT_KEY", requires = "client_cert")]
    pub client_key: Option<PathBuf>,
    /// Accept any gateway certificate. Lab use only: logged as a warning at start.
    #[arg(long, env = "CCGW_INSECURE_SKIP_VERIFY")]
    pub insecure_skip_verify: bool,
    /// TOML file of agents to sign in at start and keep signed in (see README).
    #[arg(long, env = "CCGW_AGENTS_FILE")]
    pub agents_file: Option<PathBuf>,
    /// Log format.
    #[arg(long, env = "CCGW_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Export trace spans over OTLP/gRPC to this collector (e.g. http://otel-collector:4317).
    /// Off by default. Callers' W3C `traceparent` metadata becomes the spans' parent.
    #[arg(long, env = "CCGW_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// Start the embedded CC-Gateway simulator on loopback and use it, with demo agent 1001.
    #[arg(long, env = "CCGW_SIMULATE")]
    pub simulate: bool,
    /// Lowest agent id accepted.
    #[arg(long, env = "CCGW_AGENT_ID_MIN", default_value_t = 101)]
    pub agent_id_min: u64,
    /// Highest agent id accepted (59999 for gateways older than the 2025-11 release).
    #[arg(long, env = "CCGW_AGENT_ID_MAX", default_value_t = 999_999)]
    pub agent_id_max: u64,
    /// Voice paths callers may play: comma-separated globs or path prefixes (default: any).
    #[arg(long, env = "CCGW_VOICE_PATH_ALLOW", value_delimiter = ',')]
    pub voice_path_allow: Vec<String>,
    /// Upper bound of one gateway operation call when the caller sets no shorter deadline.
    #[arg(long, env = "CCGW_REQUEST_TIMEOUT", default_value = "30s", value_parser = duration)]
    pub request_timeout: Duration,
    /// Read timeout of the event long poll; must exceed the gateway's hold (10 s).
    #[arg(long, env = "CCGW_POLL_TIMEOUT", default_value = "15s", value_parser = duration)]
    pub poll_timeout: Duration,
    /// Pause between an empty poll answer and the next poll (vendor: 200–500 ms).
    #[arg(long, env = "CCGW_POLL_GAP", default_value = "200ms", value_parser = duration)]
    pub poll_gap: Duration,
    /// TCP + TLS connect timeout to the gateway.
    #[arg(long, env = "CCGW_CONNECT_TIMEOUT", default_value = "5s", value_parser = duration)]
    pub connect_timeout: Duration,
    /// Largest gateway answer accepted, in bytes.
    #[arg(long, env = "CCGW_MAX_RESPONSE_BYTES", default_value_t = 1 << 20)]
    pub max_response_bytes: usize,
    /// Events retained per session for resume.
    #[arg(long, env = "CCGW_EVENT_WINDOW", default_value_t = 4096)]
    pub event_window: usize,
    /// Memory all sessions together may keep in retained events (README "Memory"); the oldest
    /// events bridge-wide are dropped first. Bytes, or with a KiB/MiB/GiB suffix.
    #[arg(long, env = "CCGW_EVENT_BUDGET", default_value = "16MiB", value_parser = byte_size)]
    pub event_budget: usize,
    /// Age after which a retained event is dropped (no longer resumable).
    #[arg(long, env = "CCGW_EVENT_MAX_AGE", default_value = "10m", value_parser = duration)]
    pub event_max_age: Duration,
    /// Do not keep agent passwords after sign-in: a session the gateway ends then needs a new
    /// SignIn instead of an automatic one.
    #[arg(long, env = "CCGW_NO_RESIGN_IN")]
    pub no_resign_in: bool,
    /// Sign-ins the bridge starts by itself (agents-file agents at start, signing in again
    /// after the gateway ended sessions) that may be in progress at once.
    #[arg(long, env = "CCGW_SIGN_IN_CONCURRENCY", default_value_t = 16)]
    pub sign_in_concurrency: usize,
    /// Leave agents signed in at the gateway when the bridge stops.
    #[arg(long, env = "CCGW_NO_SIGN_OUT_ON_SHUTDOWN")]
    pub no_sign_out_on_shutdown: bool,
    /// Runtime worker threads. One suits a sidecar: the bridge mostly waits on I/O, and each
    /// extra thread adds cross-thread wake-ups to every call (measured: a third more CPU per
    /// call with two). Raise it for a shared multi-agent deployment on a larger host.
    #[arg(long, env = "CCGW_WORKER_THREADS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub worker_threads: u16,
    /// Upper bound of the graceful drain after SIGTERM.
    #[arg(long, env = "CCGW_DRAIN_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub drain_timeout: Duration,
    /// Largest gRPC request message accepted, in bytes (requests are small; a cap stops abuse).
    #[arg(long, env = "CCGW_MAX_REQUEST_BYTES", default_value_t = 64 * 1024)]
    pub max_request_bytes: usize,
    /// HTTP/2 streams one client connection may have open at once (watchers count).
    #[arg(long, env = "CCGW_MAX_CONCURRENT_STREAMS", default_value_t = 1000)]
    pub max_concurrent_streams: u32,
    /// Calls the bridge runs at once across all connections; more are refused with
    /// RESOURCE_EXHAUSTED (reason TOO_MANY_REQUESTS) instead of queueing. Open streams do not count.
    #[arg(long, env = "CCGW_MAX_CONCURRENT_REQUESTS", default_value_t = 1024)]
    pub max_concurrent_requests: usize,
    /// HTTP/2 ping interval on client connections (keeps idle watchers alive through proxies).
    #[arg(long, env = "CCGW_HTTP2_KEEPALIVE_INTERVAL", default_value = "30s", value_parser = duration)]
    pub http2_keepalive_interval: Duration,
    /// How long a ping may go unanswered before the connection is closed.
    #[arg(long, env = "CCGW_HTTP2_KEEPALIVE_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub http2_keepalive_timeout: Duration,
    /// PEM certificate for TLS on the gRPC API listener (with --tls-key); off by default.
    #[arg(long, env = "CCGW_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "CCGW_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA bundle: callers must present a client certificate it signed (mutual TLS).
    #[arg(long, env = "CCGW_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// File holding a bearer token every API call must present (`authorization: Bearer …`).
    #[arg(long, env = "CCGW_AUTH_TOKEN_FILE")]
    pub auth_token_file: Option<PathBuf>,
    /// Agent pool: etcd client URLs (comma-separated). Every bridge with the same endpoints and
    /// --etcd-prefix shares the agents file's agents, each held by exactly one instance. Off
    /// when unset. Needs a build with the `pool` feature.
    #[arg(long, env = "CCGW_ETCD_ENDPOINTS", value_delimiter = ',')]
    pub etcd_endpoints: Vec<String>,
    /// Agent pool: etcd key prefix of this pool.
    #[arg(long, env = "CCGW_ETCD_PREFIX", default_value = "/ccgw-bridge/")]
    pub etcd_prefix: String,
    /// Agent pool: this instance's name, unique in the pool (default: the hostname, which is
    /// the pod name in Kubernetes).
    #[arg(long, env = "CCGW_INSTANCE_NAME")]
    pub instance_name: Option<String>,
    /// Agent pool: TTL of this instance's etcd lease (whole seconds, at least 2), renewed every
    /// third of it. A crashed instance's agents move after about this long.
    #[arg(long, env = "CCGW_LEASE_TTL", default_value = "6s", value_parser = duration)]
    pub lease_ttl: Duration,
}

/// PEM material for TLS on the API listener.
#[derive(Clone)]
pub struct ServerTls {
    /// Server certificate chain.
    pub cert: Vec<u8>,
    /// Its private key.
    pub key: Vec<u8>,
    /// When set, callers must present a certificate signed by this CA (mutual TLS).
    pub client_ca: Option<Vec<u8>>,
}

/// How the gRPC API listener serves and whom it lets in.
#[derive(Clone)]
pub struct ServerSettings {
    /// Request message size cap.
    pub max_request_bytes: usize,
    /// HTTP/2 concurrent streams per connection.
    pub max_concurrent_streams: u32,
    /// Calls in flight across the bridge.
    pub max_concurrent_requests: usize,
    /// HTTP/2 keep-alive ping interval.
    pub keepalive_interval: Duration,
    /// HTTP/2 keep-alive ping timeout.
    pub keepalive_timeout: Duration,
    /// TLS on the API listener.
    pub tls: Option<ServerTls>,
    /// Bearer token callers must present.
    pub auth_token: Option<Vec<u8>>,
}

impl std::fmt::Debug for ServerSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerSettings")
            .field("max_request_bytes", &self.max_request_bytes)
            .field("max_concurrent_streams", &self.max_concurrent_streams)
            .field("max_concurrent_requests", &self.max_concurrent_requests)
            .field("tls", &self.tls.is_some())
            .field(
                "mtls",
                &self.tls.as_ref().is_some_and(|t| t.client_ca.is_some()),
            )
            .field("auth_token", &self.auth_token.is_some())
            .finish()
    }
}

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 250ms, 10s, 2m)"))
}

/// `65536`, `64KiB`, `16MiB`, `1GiB`.
fn byte_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let shift = match unit.trim() {
        "" | "B" => 0,
        "KiB" => 10,
        "MiB" => 20,
        "GiB" => 30,
        other => {
            return Err(format!(
                "unknown unit {other:?} (examples: 65536, 64KiB, 16MiB)"
            ))
        }
    };
    digits
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .ok_or_else(|| format!("{s:?} is not a size (examples: 65536, 64KiB, 16MiB)"))
}

/// A configuration problem, reported before anything starts.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A flag or file is wrong; the text says which and why.
    #[error("{0}")]
    Invalid(String),
}

fn invalid(msg: impl Into<String>) -> ConfigError {
    ConfigError::Invalid(msg.into())
}

/// An agent from `--agents-file`, to sign in at start and keep signed in.
#[derive(Debug, Clone)]
pub struct PinnedAgent {
    /// Agent (work) number.
    pub agent_id: String,
    /// Its sign-in.
    pub params: SignInParams,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// gRPC API address.
    pub listen: SocketAddr,
    /// Admin address.
    pub admin_listen: SocketAddr,
    /// Gateway client settings.
    pub gateway: GatewayConfig,
    /// Session settings.
    pub sessions: SessionSettings,
    /// Validation limits.
    pub limits: Limits,
    /// Agents to keep signed in.
    pub agents: Vec<PinnedAgent>,
    /// Sign agents out when stopping.
    pub sign_out_on_shutdown: bool,
    /// Drain bound.
    pub drain_timeout: Duration,
    /// API listener limits and caller authentication.
    pub server: ServerSettings,
    /// The agent pool (`--etcd-endpoints`); `None` when every agent is this bridge's alone.
    pub pool: Option<PoolConfig>,
}

impl BridgeArgs {
    /// Validates everything and reads the referenced files. `gateway_override` replaces
    /// `--gateway-url`/`--ca-cert` (used by `--simulate`).
    pub fn validate(
        &self,
        gateway_override: Option<(String, Vec<u8>)>,
    ) -> Result<Config, ConfigError> {
        if self.simulate && !self.etcd_endpoints.is_empty() {
            return Err(invalid(
                "--simulate starts a gateway of this process's own, so with --etcd-endpoints every replica would get its own gateway and the pool would share nothing; run one simulator for all replicas instead: `ccgw-bridge simulate` prints url=… and ca=…, give them to each replica as --gateway-url and --ca-cert",
            ));
        }
        if self.simulate && (self.gateway_url.is_some() || self.ca_cert.is_some()) {
            return Err(invalid(
                "--simulate runs its own gateway: it cannot be combined with --gateway-url or --ca-cert (CCGW_GATEWAY_URL, CCGW_CA_CERT); drop one or the other",
            ));
        }
        let (base_url, ca_pem) = match gateway_override {
            Some((url, ca)) => (url, Some(ca)),
            None => {
                let url = self.gateway_url.clone().ok_or_else(|| {
                    invalid("--gateway-url (CCGW_GATEWAY_URL) is required, e.g. https://10.0.0.5:8043; or use --simulate")
                })?;
                let ca = self
                    .ca_cert
                    .as_deref()
                    .map(|p| pem::ca_bundle(p, "--ca-cert"))
                    .transpose()?;
                (url, ca)
            }
        };
        validate_gateway_url(&base_url)?;
        let client_identity_pem = match (&self.client_cert, &self.client_key) {
            (Some(cert), Some(key)) => {
                let (mut pem, key) = pem::identity((cert, "--client-cert"), (key, "--client-key"))?;
                pem.push(b'\n');
                pem.extend(key);
                Some(pem)
            }
            _ => None,
        };
        if self.poll_timeout <= Duration::from_secs(10) {
            return Err(invalid(format!(
                "--poll-timeout {:?} must exceed the gateway's 10 s long-poll hold",
                self.poll_timeout
            )));
        }
        if self.request_timeout < crate::gateway::MIN_REQUEST_BUDGET {
            return Err(invalid(format!(
                "--request-timeout {:?} must be at least {:?}, the least time a gateway request is sent with",
                self.request_timeout,
                crate::gateway::MIN_REQUEST_BUDGET
            )));
        }
        if self.agent_id_min == 0 || self.agent_id_min > self.agent_id_max {
            return Err(invalid(
                "--agent-id-min must be at least 1 and not above --agent-id-max",
            ));
        }
        if self.event_window == 0 || self.event_window > 1 << 20 {
            return Err(invalid("--event-window must be between 1 and 1048576"));
        }
        if self.sign_in_concurrency == 0 || self.sign_in_concurrency > 1024 {
            return Err(invalid("--sign-in-concurrency must be between 1 and 1024"));
        }
        if self.event_budget < self.max_response_bytes.saturating_mul(2) {
            return Err(invalid(
                "--event-budget must be at least twice --max-response-bytes (one event can be that large)",
            ));
        }
        if self.event_max_age.is_zero() {
            return Err(invalid("--event-max-age must be above zero"));
        }
        if self.max_response_bytes < 1024 {
            return Err(invalid("--max-response-bytes must be at least 1024"));
        }
        let voice_paths = if self.voice_path_allow.is_empty() {
            None
        } else {
            Some(
                VoicePathPolicy::new(&self.voice_path_allow)
                    .map_err(|e| invalid(format!("--voice-path-allow: {e}")))?,
            )
        };
        let limits = Limits {
            agent_id_min: self.agent_id_min,
            agent_id_max: self.agent_id_max,
            voice_paths,
        };
        let agents = match &self.agents_file {
            Some(path) => load_agents(path, &limits, &|name| std::env::var(name).ok())?,
            None => Vec::new(),
        };
        let server = self.server_settings()?;
        let pool = self.pool_config(&agents)?;
        let mut sessions = SessionSettings {
            event_window: self.event_window,
            event_budget: EventBudget::new(self.event_budget, self.event_max_age),
            hold_credentials: !self.no_resign_in,
            sign_in_concurrency: self.sign_in_concurrency,
            ..SessionSettings::default()
        };
        sessions.poll.gap = self.poll_gap;
        Ok(Config {
            listen: self.listen,
            admin_listen: self.admin_listen,
            gateway: GatewayConfig {
                base_url,
                ca_pem,
                client_identity_pem,
                insecure_skip_verify: self.insecure_skip_verify,
                request_timeout: self.request_timeout,
                poll_timeout: self.poll_timeout,
                connect_timeout: self.connect_timeout,
                max_body_bytes: self.max_response_bytes,
            },
            sessions,
            limits,
            agents,
            sign_out_on_shutdown: !self.no_sign_out_on_shutdown,
            drain_timeout: self.drain_timeout,
            server,
            pool,
        })
    }

    fn pool_config(&self, agents: &[PinnedAgent]) -> Result<Option<PoolConfig>, ConfigError> {
        if self.etcd_endpoints.is_empty() {
            return Ok(None);
        }
        if !cfg!(feature = "pool") {
            return Err(invalid(
                "--etcd-endpoints needs a ccgw-bridge built with the `pool` feature (cargo build --features pool)",
            ));
        }
        if self.lease_ttl < Duration::from_secs(2) || self.lease_ttl.subsec_nanos() != 0 {
            return Err(invalid(
                "--lease-ttl must be a whole number of seconds, at least 2s",
            ));
        }
        if let Some(a) = agents.iter().find(|a| a.params.force) {
            return Err(invalid(format!(
                "--agents-file: agent {} has force = true, which would make pool instances kick each other; the pool itself decides when a sign-in may be forced",
                a.agent_id
            )));
        }
        let instance = match &self.instance_name {
            Some(name) => name.trim().to_owned(),
            None => std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_default(),
        };
        if instance.is_empty() || instance.contains('/') {
            return Err(invalid(
                "--instance-name must be non-empty and contain no '/' (default: the hostname)",
            ));
        }
        let mut prefix = self.etcd_prefix.clone();
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        Ok(Some(PoolConfig {
            endpoints: self.etcd_endpoints.clone(),
            prefix,
            instance,
            lease_ttl: self.lease_ttl,
        }))
    }

    fn server_settings(&self) -> Result<ServerSettings, ConfigError> {
        if self.max_request_bytes < 1024 {
            return Err(invalid("--max-request-bytes must be at least 1024"));
        }
        if self.max_concurrent_streams == 0 || self.max_concurrent_requests == 0 {
            return Err(invalid(
                "--max-concurrent-streams and --max-concurrent-requests must be at least 1",
            ));
        }
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => {
                let (cert, key) = pem::identity((cert, "--tls-cert"), (key, "--tls-key"))?;
                Some(ServerTls {
                    cert,
                    key,
                    client_ca: self
                        .tls_client_ca
                        .as_deref()
                        .map(|p| pem::ca_bundle(p, "--tls-client-ca"))
                        .transpose()?,
                })
            }
            _ => None,
        };
        let auth_token = match &self.auth_token_file {
            Some(path) => {
                refuse_world_readable(path, "--auth-token-file", "it holds the API token")?;
                let raw = read(path, "--auth-token-file")?;
                let token = String::from_utf8(raw)
                    .map_err(|_| invalid("--auth-token-file: not UTF-8"))?
                    .trim()
                    .to_owned();
                if token.len() < 16 || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    return Err(invalid(
                        "--auth-token-file: the token must be at least 16 characters without spaces",
                    ));
                }
                Some(token.into_bytes())
            }
            None => None,
        };
        Ok(ServerSettings {
            max_request_bytes: self.max_request_bytes,
            max_concurrent_streams: self.max_concurrent_streams,
            max_concurrent_requests: self.max_concurrent_requests,
            keepalive_interval: self.http2_keepalive_interval,
            keepalive_timeout: self.http2_keepalive_timeout,
            tls,
            auth_token,
        })
    }
}

fn validate_gateway_url(url: &str) -> Result<(), ConfigError> {
    let parsed =
        reqwest::Url::parse(url).map_err(|e| invalid(format!("--gateway-url {url:?}: {e}")))?;
    if parsed.scheme() != "https" {
        return Err(invalid(format!(
            "--gateway-url {url:?}: the CC-Gateway is reached over https only"
        )));
    }
    if parsed.path() != "/" || parsed.query().is_some() {
        return Err(invalid(format!(
            "--gateway-url {url:?}: give scheme, host and port only; the bridge appends /agentgateway/resource/…"
        )));
    }
    Ok(())
}

fn read(path: &Path, flag: &str) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|e| invalid(format!("{flag} {}: {e}", path.display())))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentsFile {
    #[serde(default)]
    agent: Vec<AgentEntry>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentEntry {
    id: String,
    phone_number: String,
    password_file: Option<PathBuf>,
    password_env: Option<String>,
    #[serde(default)]
    force: bool,
    auto_answer: Option<bool>,
    auto_enter_idle: Option<bool>,
    release_phone: Option<bool>,
    agent_type: Option<u32>,
    status: Option<u32>,
}

/// Reads the agents file; `env` looks up `password_env` names (injected so tests need not
/// touch the process environment).
pub fn load_agents(
    path: &Path,
    limits: &Limits,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<PinnedAgent>, ConfigError> {
    refuse_world_readable(path, "--agents-file", "it holds or points at passwords")?;
    let text = String::from_utf8(read(path, "--agents-file")?)
        .map_err(|_| invalid(format!("--agents-file {}: not UTF-8", path.display())))?;
    let file: AgentsFile = toml::from_str(&text)
        .map_err(|e| invalid(format!("--agents-file {}: {e}", path.display())))?;
    let mut seen = std::collections::HashSet::new();
    file.agent
        .into_iter()
        .map(|a| {
            let ctx = format!("--agents-file {}: agent {:?}", path.display(), a.id);
            let mut v = Violations::default();
            limits.agent_id(&mut v, "id", &a.id);
            validate::phone_number(&mut v, "phone_number", &a.phone_number);
            validate::agent_type(&mut v, "agent_type", a.agent_type);
            validate::status(&mut v, "status", a.status);
            v.into_result().map_err(|m| invalid(format!("{ctx}: {m}")))?;
            if !seen.insert(a.id.clone()) {
                return Err(invalid(format!("{ctx}: listed twice")));
            }
            let password = match (&a.password_file, &a.password_env) {
                (Some(file), None) => {
                    refuse_world_readable(file, &ctx, "it holds a password")?;
                    read_password_file(file, &ctx)?
                }
                (None, Some(name)) => Password::new(env(name).ok_or_else(|| {
                    invalid(format!("{ctx}: environment variable {name} is not set"))
                })?),
                _ => {
                    return Err(invalid(format!(
                        "{ctx}: give exactly one of password_file or password_env (never the password itself)"
                    )))
                }
            };
            let mut v = Violations::default();
            validate::password(&mut v, "password", password.expose());
            v.into_result().map_err(|m| invalid(format!("{ctx}: {m}")))?;
            Ok(PinnedAgent {
                agent_id: a.id,
                params: SignInParams {
                    password,
                    phone_number: a.phone_number,
                    force: a.force,
                    auto_answer: a.auto_answer,
                    auto_enter_idle: a.auto_enter_idle,
                    release_phone: a.release_phone,
                    agent_type: a.agent_type,
                    status: a.status,
                },
            })
        })
        .collect()
}

/// A password file's content without its trailing newline. Every buffer that held it is wiped
/// (the file's bytes on drop, the password itself with the [`Password`]), and the password is
/// copied once into a string of exactly its size, so no copy is left in freed memory.
fn read_password_file(file: &Path, ctx: &str) -> Result<Password, ConfigError> {
    let raw = Zeroizing::new(read(file, &format!("{ctx}: password_file"))?);
    let text = std::str::from_utf8(&raw)
        .map_err(|_| invalid(format!("{ctx}: password_file is not UTF-8")))?
        .trim_end_matches(['\r', '\n']);
    let mut password = String::with_capacity(text.len());
    password.push_str(text);
    Ok(Password::new(password))
}

#[cfg(unix)]
fn refuse_world_readable(path: &Path, what: &str, holds: &str) -> Result<(), ConfigError> {
    use std::os::unix::fs::PermissionsExt;
    let meta =
        std::fs::metadata(path).map_err(|e| invalid(format!("{what} {}: {e}", path.display())))?;
    if meta.permissions().mode() & 0o004 != 0 {
        return Err(invalid(format!(
            "{what} {}: readable by every user (mode {:o}); {holds}: chmod o-r it",
            path.display(),
            meta.permissions().mode() & 0o777
        )));
    }
    Ok(())
}

#[cfg(not(unix))]
fn refuse_world_readable(_: &Path, _: &str, _: &str) -> Result<(), ConfigError> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::Cli;
    use clap::Parser;
    use std::os::unix::fs::PermissionsExt;

    fn args(extra: &[&str]) -> Result<Config, String> {
        let mut argv = vec!["ccgw-bridge", "--gateway-url", "https://10.0.0.5:8043"];
        argv.extend_from_slice(extra);
        let cli = Cli::try_parse_from(argv).map_err(|e| e.to_string())?;
        cli.bridge.validate(None).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_are_sane() {
        let c = args(&[]).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:50051");
        assert_eq!(c.admin_listen.to_string(), "0.0.0.0:9090");
        assert_eq!(c.limits.agent_id_max, 999_999);
        assert!(c.sign_out_on_shutdown && c.sessions.hold_credentials);
        assert_eq!(c.sessions.event_budget.max_bytes(), 16 << 20);
        let c = args(&["--event-budget", "64KiB", "--max-response-bytes", "4096"]).unwrap();
        assert_eq!(c.sessions.event_budget.max_bytes(), 64 << 10);
    }

    #[test]
    fn bad_values_are_refused_with_the_flag_named() {
        for (extra, needle) in [
            (&["--poll-timeout", "5s"][..], "--poll-timeout"),
            (
                &["--agent-id-min", "5000", "--agent-id-max", "10"][..],
                "--agent-id-min",
            ),
            (&["--ca-cert", "/nonexistent/ca.pem"][..], "--ca-cert"),
            (&["--event-window", "0"][..], "--event-window"),
            (&["--sign-in-concurrency", "0"][..], "--sign-in-concurrency"),
            (&["--event-budget", "1MiB"][..], "--event-budget"),
            (&["--event-budget", "16MB"][..], "event-budget"),
            (&["--event-max-age", "0s"][..], "--event-max-age"),
            (&["--request-timeout", "soon"][..], "request-timeout"),
            (&["--request-timeout", "5ms"][..], "request-timeout"),
        ] {
            let err = args(extra).unwrap_err();
            assert!(err.contains(needle), "{extra:?}: {err}");
        }
        for url in ["http://h:1", "https://h:1/agentgateway", "not a url"] {
            let cli = Cli::try_parse_from(["ccgw-bridge", "--gateway-url", url]).unwrap();
            assert!(cli.bridge.validate(None).is_err(), "{url}");
        }
    }

    #[test]
    fn agents_file_reads_passwords_from_files_or_env_only() {
        let dir = std::env::temp_dir().join(format!("ccgw-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pw = dir.join("pw");
        std::fs::write(&pw, "secret\n").unwrap();
        std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
        let file = dir.join("agents.toml");
        let write = |text: &str, mode: u32| {
            std::fs::write(&file, text).unwrap();
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        let env = |name: &str| (name == "PW_1002").then(|| "envpw".to_owned());
        let limits = Limits::default();
        write(
            &format!(
                "[[agent]]\nid = \"1001\"\nphone_number = \"88001\"\npassword_file = \"{}\"\n\n[[agent]]\nid = \"1002\"\nphone_number = \"88002\"\npassword_env = \"PW_1002\"\nforce = true\n",
                pw.display()
            ),
            0o600,
        );
        let agents = load_agents(&file, &limits, &env).unwrap();
        assert_eq!(agents[0].params.password.expose(), "secret");
        assert_eq!(agents[1].params.password.expose(), "envpw");
        assert!(agents[1].params.force);

        write(
            "[[agent]]\nid = \"1001\"\nphone_number = \"1\"\npassword = \"x\"\n",
            0o600,
        );
        assert!(
            load_agents(&file, &limits, &env).is_err(),
            "inline passwords refused"
        );
        write(
            "[[agent]]\nid = \"1001\"\nphone_number = \"1\"\npassword_env = \"NOPE\"\n",
            0o600,
        );
        assert!(load_agents(&file, &limits, &env)
            .unwrap_err()
            .to_string()
            .contains("NOPE"));
        write(
            "[[agent]]\nid = \"1001\"\nphone_number = \"1\"\npassword_env = \"PW_1002\"\n",
            0o644,
        );
        assert!(load_agents(&file, &limits, &env)
            .unwrap_err()
            .to_string()
            .contains("readable by every user"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
