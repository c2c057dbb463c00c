//! The bridge's flags and the standalone simulator's (clap), each with a `CCGW_*` environment
//! twin, and the parsers of their values. Checking what the values mean is `validate`'s job.

use crate::telemetry::LogFormat;
use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Settings of the standalone simulator.
#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// Address to serve HTTPS on.
    #[arg(long, env = "CCGW_SIM_LISTEN", default_value = "127.0.0.1:8043")]
    pub listen: SocketAddr,
    /// Write the simulator's CA certificate (PEM) to FILE, kept after it stops, instead of a
    /// temporary file of a random name: the bridges of a local recipe then take `--ca-cert FILE`.
    #[arg(long, env = "CCGW_SIM_CA_OUT", value_name = "FILE")]
    pub ca_out: Option<PathBuf>,
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
    /// Push mode: PEM CA trusted for bridges' callback servers (besides the simulator's own CA).
    #[arg(long, env = "CCGW_SIM_CALLBACK_CA", value_name = "FILE")]
    pub callback_ca: Option<PathBuf>,
}

/// `--events`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EventsFlag {
    /// Long-poll the gateway per agent.
    Poll,
    /// The gateway calls the bridge back.
    Push,
}

/// The sections of `ccgw-bridge --help`, one per concern an operator looks for.
const GATEWAY: &str = "Gateway";
const AGENTS: &str = "Agents and sessions";
const API: &str = "API listener";
const ADMIN: &str = "Admin listener";
const EVENTS: &str = "Events";
const LIMITS: &str = "Limits";
const PROCESS: &str = "Process";
const POOL: &str = "Agent pool";
const ETCD_SECURITY: &str = "etcd security";
const TRACING: &str = "Logs and tracing";

/// Every knob of the bridge; each flag has a `CCGW_*` environment twin.
#[derive(Debug, Args, Clone)]
pub struct BridgeArgs {
    /// The CC-Gateway: scheme, host and port only, e.g. https://10.0.0.5:8043.
    #[arg(long, help_heading = GATEWAY, env = "CCGW_GATEWAY_URL")]
    pub gateway_url: Option<String>,
    /// PEM bundle of CAs trusted for the gateway (default: the system roots).
    #[arg(long, help_heading = GATEWAY, env = "CCGW_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// PEM client certificate, for gateways that require mutual TLS (with --client-key).
    #[arg(long, help_heading = GATEWAY, env = "CCGW_CLIENT_CERT", requires = "client_key")]
    pub client_cert: Option<PathBuf>,
    /// PEM private key of --client-cert.
    #[arg(long, help_heading = GATEWAY, env = "CCGW_CLIENT_KEY", requires = "client_cert")]
    pub client_key: Option<PathBuf>,
    /// Accept any gateway certificate. Lab use only: logged as a warning at start.
    #[arg(long, help_heading = GATEWAY, env = "CCGW_INSECURE_SKIP_VERIFY")]
    pub insecure_skip_verify: bool,
    /// Start the embedded CC-Gateway simulator on loopback and use it, with demo agent 1001.
    #[arg(long, help_heading = GATEWAY, env = "CCGW_SIMULATE")]
    pub simulate: bool,
    /// Upper bound of one gateway operation call when the caller sets no shorter deadline.
    #[arg(long, help_heading = GATEWAY, env = "CCGW_REQUEST_TIMEOUT", default_value = "30s", value_parser = duration)]
    pub request_timeout: Duration,
    /// TCP + TLS connect timeout to the gateway.
    #[arg(long, help_heading = GATEWAY, env = "CCGW_CONNECT_TIMEOUT", default_value = "5s", value_parser = duration)]
    pub connect_timeout: Duration,
    /// Largest gateway answer accepted, in bytes.
    #[arg(long, help_heading = GATEWAY, env = "CCGW_MAX_RESPONSE_BYTES", default_value_t = 1 << 20)]
    pub max_response_bytes: usize,
    /// TOML file of agents to sign in at start and keep signed in (see docs/configuration.md,
    /// "Agents file").
    #[arg(long, help_heading = AGENTS, env = "CCGW_AGENTS_FILE")]
    pub agents_file: Option<PathBuf>,
    /// Do not keep agent passwords after sign-in: a session the gateway ends then needs a new
    /// SignIn instead of an automatic one.
    #[arg(long, help_heading = AGENTS, env = "CCGW_NO_RESIGN_IN")]
    pub no_resign_in: bool,
    /// Sign-ins the bridge starts by itself (agents-file agents at start, signing in again
    /// after the gateway ended sessions) that may be in progress at once.
    #[arg(long, help_heading = AGENTS, env = "CCGW_SIGN_IN_CONCURRENCY", default_value_t = 16)]
    pub sign_in_concurrency: usize,
    /// The gateway's idle sign-out (vendor `MAXTIME`): a session the bridge lost the Guid of
    /// (a lost sign-in answer) ends at the gateway this long after its last request, and only
    /// then can the agent be signed in again (the bridge never forces). Bounds how long an
    /// ended agent's slot is kept.
    #[arg(long, help_heading = AGENTS, env = "CCGW_GATEWAY_IDLE_TIMEOUT", default_value = "120s", value_parser = duration)]
    pub gateway_idle_timeout: Duration,
    /// Leave agents signed in at the gateway when the bridge stops.
    #[arg(long, help_heading = AGENTS, env = "CCGW_NO_SIGN_OUT_ON_SHUTDOWN")]
    pub no_sign_out_on_shutdown: bool,
    /// gRPC API address. Pod-local by default: the caller is the sidecar's neighbour.
    #[arg(long, help_heading = API, env = "CCGW_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// HTTP/2 ping interval on client connections (keeps idle watchers alive through proxies).
    #[arg(long, help_heading = API, env = "CCGW_HTTP2_KEEPALIVE_INTERVAL", default_value = "30s", value_parser = duration)]
    pub http2_keepalive_interval: Duration,
    /// How long a ping may go unanswered before the connection is closed.
    #[arg(long, help_heading = API, env = "CCGW_HTTP2_KEEPALIVE_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub http2_keepalive_timeout: Duration,
    /// PEM certificate for TLS on the gRPC API listener (with --tls-key); off by default.
    #[arg(long, help_heading = API, env = "CCGW_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, help_heading = API, env = "CCGW_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA bundle: callers must present a client certificate it signed (mutual TLS).
    #[arg(long, help_heading = API, env = "CCGW_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// File holding a bearer token every API call must present (`authorization: Bearer …`).
    #[arg(long, help_heading = API, env = "CCGW_AUTH_TOKEN_FILE")]
    pub auth_token_file: Option<PathBuf>,
    /// Admin address (gRPC health, /metrics, /livez, /readyz); on the pod IP for kubelet probes.
    /// [default: 0.0.0.0:9090; 127.0.0.1:9090 with --simulate, a demo nobody else probes]
    #[arg(long, help_heading = ADMIN, env = "CCGW_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,
    /// How events reach the bridge: `poll` (each signed-in agent holds a long poll to the
    /// gateway) or `push` (the gateway POSTs events to --callback-url; see
    /// docs/events-poll-or-push.md).
    #[arg(long, help_heading = EVENTS, env = "CCGW_EVENTS", value_enum, default_value = "poll")]
    pub events: EventsFlag,
    /// Push mode: address of the HTTPS server the gateway calls back (its own certificate,
    /// --callback-cert/--callback-key; TLS 1.2+). [default: 0.0.0.0:9443; 127.0.0.1:9443 with
    /// --simulate]
    #[arg(long, help_heading = EVENTS, env = "CCGW_CALLBACK_LISTEN")]
    pub callback_listen: Option<SocketAddr>,
    /// Push mode: the https URL the gateway is told to call (an address the gateway can reach:
    /// in Kubernetes the pod IP or the pod's own name). Each agent's callback is this URL plus
    /// `/<agent id>`; with it at most 200 characters (the vendor's limit).
    #[arg(long, help_heading = EVENTS, env = "CCGW_CALLBACK_URL")]
    pub callback_url: Option<String>,
    /// Push mode: PEM certificate chain of the callback server (with --callback-key).
    #[arg(long, help_heading = EVENTS, env = "CCGW_CALLBACK_CERT", requires = "callback_key")]
    pub callback_cert: Option<PathBuf>,
    /// Push mode: PEM private key of --callback-cert.
    #[arg(long, help_heading = EVENTS, env = "CCGW_CALLBACK_KEY", requires = "callback_cert")]
    pub callback_key: Option<PathBuf>,
    /// Push mode: PEM CA bundle; the gateway must present a client certificate it signed.
    #[arg(long, help_heading = EVENTS, env = "CCGW_CALLBACK_CLIENT_CA", requires = "callback_cert")]
    pub callback_client_ca: Option<PathBuf>,
    /// Push mode: largest callback body accepted (bytes, or with KiB/MiB).
    #[arg(long, help_heading = EVENTS, env = "CCGW_CALLBACK_MAX_BODY", default_value = "1MiB", value_parser = byte_size)]
    pub callback_max_body: usize,
    /// Push mode: a callback's headers must arrive within this, and its body within this
    /// again (slow clients are cut off).
    #[arg(long, help_heading = EVENTS, env = "CCGW_CALLBACK_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub callback_timeout: Duration,
    /// Push mode: heartbeat period (vendor: 30 s; the gateway signs an agent out after
    /// 2 minutes without one). At most a third of --gateway-idle-timeout.
    #[arg(long, help_heading = EVENTS, env = "CCGW_HEARTBEAT_INTERVAL", default_value = "30s", value_parser = duration)]
    pub heartbeat_interval: Duration,
    /// Read timeout of the event long poll; must exceed the gateway's hold (10 s).
    #[arg(long, help_heading = EVENTS, env = "CCGW_POLL_TIMEOUT", default_value = "15s", value_parser = duration)]
    pub poll_timeout: Duration,
    /// Pause between an empty poll answer and the next poll (vendor: 200–500 ms).
    #[arg(long, help_heading = EVENTS, env = "CCGW_POLL_GAP", default_value = "200ms", value_parser = duration)]
    pub poll_gap: Duration,
    /// Events retained per session for resume.
    #[arg(long, help_heading = EVENTS, env = "CCGW_EVENT_WINDOW", default_value_t = 4096)]
    pub event_window: usize,
    /// Memory all sessions together may keep in retained events (docs/memory.md); the oldest
    /// events bridge-wide are dropped first. Bytes, or with a KiB/MiB/GiB suffix.
    #[arg(long, help_heading = EVENTS, env = "CCGW_EVENT_BUDGET", default_value = "16MiB", value_parser = byte_size)]
    pub event_budget: usize,
    /// Age after which a retained event is dropped (no longer resumable).
    #[arg(long, help_heading = EVENTS, env = "CCGW_EVENT_MAX_AGE", default_value = "10m", value_parser = duration)]
    pub event_max_age: Duration,
    /// Lowest agent id accepted.
    #[arg(long, help_heading = LIMITS, env = "CCGW_AGENT_ID_MIN", default_value_t = 101)]
    pub agent_id_min: u64,
    /// Highest agent id accepted (59999 for gateways older than the 2025-11 release).
    #[arg(long, help_heading = LIMITS, env = "CCGW_AGENT_ID_MAX", default_value_t = 999_999)]
    pub agent_id_max: u64,
    /// Voice paths callers may play: comma-separated globs or path prefixes (default: any).
    #[arg(long, help_heading = LIMITS, env = "CCGW_VOICE_PATH_ALLOW", value_delimiter = ',')]
    pub voice_path_allow: Vec<String>,
    /// Largest gRPC request message accepted, in bytes (requests are small; a cap stops abuse).
    #[arg(long, help_heading = LIMITS, env = "CCGW_MAX_REQUEST_BYTES", default_value_t = 64 * 1024)]
    pub max_request_bytes: usize,
    /// HTTP/2 streams one client connection may have open at once (watchers count).
    #[arg(long, help_heading = LIMITS, env = "CCGW_MAX_CONCURRENT_STREAMS", default_value_t = 1000)]
    pub max_concurrent_streams: u32,
    /// Calls the bridge runs at once across all connections; more are refused with
    /// RESOURCE_EXHAUSTED (reason TOO_MANY_REQUESTS) instead of queueing. Open streams do not count.
    #[arg(long, help_heading = LIMITS, env = "CCGW_MAX_CONCURRENT_REQUESTS", default_value_t = 1024)]
    pub max_concurrent_requests: usize,
    /// Runtime worker threads. One suits a sidecar: the bridge mostly waits on I/O, and each
    /// extra thread adds cross-thread wake-ups to every call (measured: a third more CPU per
    /// call with two). Raise it for a shared multi-agent deployment on a larger host.
    #[arg(long, help_heading = PROCESS, env = "CCGW_WORKER_THREADS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub worker_threads: u16,
    /// Upper bound of the graceful drain after SIGTERM.
    #[arg(long, help_heading = PROCESS, env = "CCGW_DRAIN_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub drain_timeout: Duration,
    /// Agent pool: etcd client URLs (comma-separated). Every bridge with the same endpoints and
    /// --etcd-prefix shares the agents file's agents, each held by exactly one instance. Off
    /// when unset. Needs a build with the `pool` feature.
    #[arg(long, help_heading = POOL, env = "CCGW_ETCD_ENDPOINTS", value_delimiter = ',')]
    pub etcd_endpoints: Vec<String>,
    /// Agent pool: etcd key prefix of this pool.
    #[arg(long, help_heading = POOL, env = "CCGW_ETCD_PREFIX", default_value = "/ccgw-bridge/")]
    pub etcd_prefix: String,
    /// Agent pool: this instance's name, unique in the pool (default: the hostname, which is
    /// the pod name in Kubernetes).
    #[arg(long, help_heading = POOL, env = "CCGW_INSTANCE_NAME")]
    pub instance_name: Option<String>,
    /// Agent pool: TTL of this instance's etcd lease (whole seconds, at least 2), renewed every
    /// third of it. A crashed instance's agents move after about this long.
    #[arg(long, help_heading = POOL, env = "CCGW_LEASE_TTL", default_value = "6s", value_parser = duration)]
    pub lease_ttl: Duration,
    /// Agent pool: how long a rebalancing move (a replica joined, or the pool's membership
    /// changed) waits for the agent's play to end before signing it out; `0s` moves at once.
    /// A drain (SIGTERM) and an instance the gateway stopped answering move at once.
    #[arg(long, help_heading = POOL, env = "CCGW_POOL_MOVE_WAIT", default_value = "60s", value_parser = duration)]
    pub pool_move_wait: Duration,
    /// Agent pool: PEM CA bundle trusted for etcd's server certificate. Needed with `https://`
    /// endpoints (etcd started with `--cert-file`), refused with `http://` ones.
    #[arg(long, help_heading = ETCD_SECURITY, env = "CCGW_ETCD_CA_CERT")]
    pub etcd_ca_cert: Option<PathBuf>,
    /// Agent pool: PEM client certificate for etcd's mutual TLS (`--client-cert-auth`); with
    /// --etcd-client-key.
    #[arg(long, help_heading = ETCD_SECURITY, env = "CCGW_ETCD_CLIENT_CERT", requires = "etcd_client_key")]
    pub etcd_client_cert: Option<PathBuf>,
    /// Agent pool: the PEM private key of --etcd-client-cert (not readable by every user).
    #[arg(long, help_heading = ETCD_SECURITY, env = "CCGW_ETCD_CLIENT_KEY", requires = "etcd_client_cert")]
    pub etcd_client_key: Option<PathBuf>,
    /// Agent pool: etcd user, for an etcd with `auth enable`; its password is read from
    /// --etcd-password-file.
    #[arg(long, help_heading = ETCD_SECURITY, env = "CCGW_ETCD_USER", requires = "etcd_password_file")]
    pub etcd_user: Option<String>,
    /// Agent pool: file holding the --etcd-user's password (trailing newline ignored; not
    /// readable by every user, like agents' password files).
    #[arg(long, help_heading = ETCD_SECURITY, env = "CCGW_ETCD_PASSWORD_FILE", requires = "etcd_user")]
    pub etcd_password_file: Option<PathBuf>,
    /// Agent pool: file holding the pool key, 32 bytes as 64 hex digits (`openssl rand -hex
    /// 32`), the same for every replica (a Kubernetes Secret). It seals each agent's gateway
    /// Guid in etcd (`holders/`), so the instance that takes an agent over after a crash can
    /// log that session out with its own Guid within a lease TTL. Without it a crashed
    /// instance's agents wait for the gateway's idle sign-out (--gateway-idle-timeout).
    #[arg(long, help_heading = POOL, env = "CCGW_POOL_KEY_FILE")]
    pub pool_key_file: Option<PathBuf>,
    /// Agent pool: the previous pool key during a key rotation: records sealed with it still
    /// open; new ones are sealed with --pool-key-file.
    #[arg(long, help_heading = POOL, env = "CCGW_POOL_KEY_PREVIOUS_FILE", requires = "pool_key_file")]
    pub pool_key_previous_file: Option<PathBuf>,
    /// Log format.
    #[arg(long, help_heading = TRACING, env = "CCGW_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Export trace spans over OTLP/gRPC to this collector (e.g. http://otel-collector:4317).
    /// Off by default. Callers' W3C `traceparent` metadata becomes the spans' parent.
    #[arg(long, help_heading = TRACING, env = "CCGW_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
}

pub(super) fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 250ms, 10s, 2m)"))
}

/// `65536`, `64KiB`, `16MiB`, `1GiB`.
pub(super) fn byte_size(s: &str) -> Result<usize, String> {
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
