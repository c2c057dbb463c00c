//! The command line of `ccgw-bridge call` (clap), each flag with a `CCGW_*` environment twin.

use clap::{ArgGroup, Args, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

/// The section of every `call` subcommand's help holding how to reach the bridge.
const CONNECTION: &str = "Connection";
/// The section holding how results are printed.
const OUTPUT: &str = "Output";

/// `ccgw-bridge call`: talk to a running bridge over gRPC.
#[derive(Debug, Args)]
pub struct CallArgs {
    /// The bridge's gRPC API, as any gRPC client takes it: `HOST:PORT`, `dns:///HOST:PORT`,
    /// `ipv4:ADDR:PORT`, `ipv6:[ADDR]:PORT`, or a URL (`http://…`, `https://…`).
    #[arg(
        long,
        help_heading = CONNECTION,
        env = "CCGW_ADDR",
        default_value = "127.0.0.1:50051",
        global = true
    )]
    pub addr: String,
    /// Deadline of each call (sent to the bridge as grpc-timeout); for `watch`, of connecting.
    #[arg(long, help_heading = CONNECTION, env = "CCGW_CALL_TIMEOUT", default_value = "10s", value_parser = duration, global = true)]
    pub timeout: Duration,
    /// One JSON object per line, for scripts; a failure too (`{"error": {…}}`).
    #[arg(long, help_heading = OUTPUT, env = "CCGW_CALL_JSON", global = true)]
    pub json: bool,
    /// PEM CA bundle trusted for a bridge serving TLS (`--tls-cert`); implies TLS.
    #[arg(long, help_heading = CONNECTION, env = "CCGW_CALL_CA_CERT", value_name = "PATH", global = true)]
    pub ca_cert: Option<PathBuf>,
    /// PEM client certificate, for a bridge requiring mutual TLS (`--tls-client-ca`).
    #[arg(
        long,
        help_heading = CONNECTION,
        env = "CCGW_CALL_CLIENT_CERT",
        value_name = "PATH",
        requires = "client_key",
        global = true
    )]
    pub client_cert: Option<PathBuf>,
    /// PEM private key of `--client-cert`.
    #[arg(
        long,
        help_heading = CONNECTION,
        env = "CCGW_CALL_CLIENT_KEY",
        value_name = "PATH",
        requires = "client_cert",
        global = true
    )]
    pub client_key: Option<PathBuf>,
    /// File holding the bearer token of a bridge started with `--auth-token-file`.
    #[arg(long, help_heading = CONNECTION, env = "CCGW_CALL_TOKEN_FILE", value_name = "PATH", global = true)]
    pub token_file: Option<PathBuf>,
    /// What to call.
    #[command(subcommand)]
    pub op: CallOp,
}

/// One operation of `ccgw-bridge call`, named after the RPC it makes.
#[derive(Debug, Subcommand)]
pub enum CallOp {
    /// Sign an agent in (SignIn). The password comes from an env var or a file, never argv
    /// (with neither, it is empty, for gateways without agent passwords).
    #[command(group(ArgGroup::new("password").args(["password_env", "password_file"])))]
    SignIn {
        /// Agent (work) number.
        #[arg(long)]
        agent: String,
        /// Softphone number.
        #[arg(long)]
        phone: String,
        /// Environment variable holding the password.
        #[arg(long, value_name = "VAR")]
        password_env: Option<String>,
        /// File holding the password (a trailing newline is ignored).
        #[arg(long, value_name = "PATH")]
        password_file: Option<PathBuf>,
        /// Take the agent over from another client (forcelogin).
        #[arg(long)]
        force: bool,
    },
    /// Sign an agent out (SignOut).
    SignOut {
        /// Agent (work) number.
        #[arg(long)]
        agent: String,
    },
    /// Play a recording to the agent's phone (BeginPlay).
    Play {
        /// Agent (work) number.
        #[arg(long)]
        agent: String,
        /// File path on the media server.
        #[arg(long)]
        voice_path: String,
        /// Start offset in seconds.
        #[arg(long, value_name = "SECONDS")]
        start: Option<i64>,
        /// Volume, 0-99999.
        #[arg(long)]
        volume: Option<u32>,
        /// Speed, 0-99999.
        #[arg(long)]
        speed: Option<u32>,
        /// Play count.
        #[arg(long)]
        times: Option<u32>,
        /// Distributed call-center node (locationId).
        #[arg(long)]
        location: Option<i32>,
        /// Return only after the gateway reports the playback's outcome (await_outcome).
        #[arg(long)]
        wait: bool,
    },
    /// Stop playback (StopPlay).
    Stop {
        /// Agent (work) number.
        #[arg(long)]
        agent: String,
        /// Return only once the gateway reports the playback stopped (PLAY_STOPPED), so the next
        /// play is not refused with BEGIN_PLAY_STATE_ERROR; bounded by --timeout.
        #[arg(long)]
        wait: bool,
    },
    /// Pause playback (PausePlay).
    Pause {
        /// Agent (work) number.
        #[arg(long)]
        agent: String,
    },
    /// Resume paused playback (ResumePlay).
    Resume {
        /// Agent (work) number.
        #[arg(long)]
        agent: String,
    },
    /// Skip forward (FastForward).
    Forward {
        /// Agent (work) number.
        #[arg(long)]
        agent: String,
        /// Seconds to skip.
        #[arg(long)]
        seconds: u32,
    },
    /// Skip back (Rewind).
    Rewind {
        /// Agent (work) number.
        #[arg(long)]
        agent: String,
        /// Seconds to skip.
        #[arg(long)]
        seconds: u32,
    },
    /// The bridge's gRPC health (grpc.health.v1 Check) at --addr: SERVING exits 0, anything
    /// else 1.
    Health {
        /// Service to check: `ccgw.v1.RecordPlayService` is what the manifests' readiness probe
        /// asks; empty (the default) is the whole server.
        #[arg(long, default_value = "")]
        service: String,
    },
    /// What the kubelet's readiness probe sees: the admin listener's /readyz, printed, exit 0
    /// when ready (usable through `kubectl exec` in the shell-less image).
    Ready {
        /// The admin listener (--admin-listen of the bridge).
        #[arg(long, env = "CCGW_CALL_ADMIN", default_value = "127.0.0.1:9090")]
        admin: String,
    },
    /// List the sessions the bridge holds (ListSessions).
    Sessions,
    /// Show one agent's session (GetSession).
    Session {
        /// Agent (work) number.
        #[arg(long)]
        agent: String,
    },
    /// This instance's place in the agent pool (WatchOwnership): its name, lease state and the
    /// agents it owns, then again at every change, until the stream ends or Ctrl-C. Without a
    /// pool the bridge answers FAILED_PRECONDITION (POOL_DISABLED).
    Ownership {
        /// Print the current snapshot only, then exit.
        #[arg(long)]
        once: bool,
        /// Also the pool-wide table: every agent of the pool and the instance that owns it, as
        /// this instance last read etcd (at most one reconcile tick old); a snapshot, as --once.
        #[arg(long)]
        all: bool,
    },
    /// Print the agent's play events as they arrive, until the stream ends or Ctrl-C
    /// (WatchPlayEvents; WatchAgentEvents with --all).
    Watch {
        /// Agent (work) number.
        #[arg(long)]
        agent: String,
        /// Every event of the agent, not only play events.
        #[arg(long)]
        all: bool,
        /// Replay retained events after this sequence first (needs --session).
        #[arg(long, value_name = "N", requires = "session")]
        resume_after: Option<u64>,
        /// Session the --resume-after sequence belongs to.
        #[arg(long, value_name = "ID", requires = "resume_after")]
        session: Option<String>,
    },
}

pub(super) fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 500ms, 10s, 2m)"))
}
