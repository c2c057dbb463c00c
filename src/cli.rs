//! `ccgw-bridge call …`: an operator's client for a running bridge.
//!
//! Operators and scripts need to sign an agent in, play a prompt or watch events without
//! writing a gRPC client or installing grpcurl in a distroless pod; the same binary that serves
//! the API can call it. It uses the generated tonic clients, so it speaks exactly the API that
//! ships, and reports failures the way the bridge describes them (code, `ErrorInfo` reason,
//! `BadRequest` field violations).
//!
//! Output: one human-readable line per result or event, or with `--json` one JSON object per
//! line (field names as in the proto, enums by name, integers as JSON numbers, timestamps as
//! RFC 3339 strings). Exit codes: 0 success, 1 the call failed (a gRPC status), 2 usage error.

use crate::proto::agent_session_service_client::AgentSessionServiceClient;
use crate::proto::record_play_service_client::RecordPlayServiceClient;
use crate::proto::{
    AgentEvent, BeginPlayRequest, FastForwardRequest, GetSessionRequest, ListSessionsRequest,
    PausePlayRequest, PlayEvent, PlayEventType, ResumePlayRequest, RewindRequest, Session,
    SessionState, SignInRequest, SignOutRequest, StopPlayRequest, WatchAgentEventsRequest,
    WatchPlayEventsRequest,
};
use clap::{ArgGroup, Args, Subcommand};
use serde_json::{json, Map, Value};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use tonic::transport::Endpoint;
use tonic::Status;
use tonic_types::StatusExt;

/// Writes one line to stdout and flushes it, so a reader of a pipe sees each event at once;
/// a failure (a closed pipe) is returned instead of panicking as `println!` would.
macro_rules! emit {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, $($arg)*).and_then(|()| stdout.flush())
    }};
}

/// Exit code of a call the bridge (or the connection to it) failed.
const EXIT_CALL_FAILED: u8 = 1;
/// Exit code of a usage error (bad flag value, unreadable password file), as clap uses.
const EXIT_USAGE: u8 = 2;

/// `ccgw-bridge call`: talk to a running bridge over gRPC.
#[derive(Debug, Args)]
pub struct CallArgs {
    /// The bridge's gRPC API, as any gRPC client takes it: `HOST:PORT`, `dns:///HOST:PORT`,
    /// `ipv4:ADDR:PORT`, `ipv6:[ADDR]:PORT`, or a URL (`http://…`, `https://…`).
    #[arg(
        long,
        env = "CCGW_ADDR",
        default_value = "127.0.0.1:50051",
        global = true
    )]
    pub addr: String,
    /// Deadline of each call (sent to the bridge as grpc-timeout); for `watch`, of connecting.
    #[arg(long, env = "CCGW_CALL_TIMEOUT", default_value = "10s", value_parser = duration, global = true)]
    pub timeout: Duration,
    /// One JSON object per line, for scripts; a failure too (`{"error": {…}}`).
    #[arg(long, env = "CCGW_CALL_JSON", global = true)]
    pub json: bool,
    /// PEM CA bundle trusted for a bridge serving TLS (`--tls-cert`); implies TLS.
    #[arg(long, env = "CCGW_CALL_CA_CERT", value_name = "PATH", global = true)]
    pub ca_cert: Option<PathBuf>,
    /// PEM client certificate, for a bridge requiring mutual TLS (`--tls-client-ca`).
    #[arg(
        long,
        env = "CCGW_CALL_CLIENT_CERT",
        value_name = "PATH",
        requires = "client_key",
        global = true
    )]
    pub client_cert: Option<PathBuf>,
    /// PEM private key of `--client-cert`.
    #[arg(
        long,
        env = "CCGW_CALL_CLIENT_KEY",
        value_name = "PATH",
        requires = "client_cert",
        global = true
    )]
    pub client_key: Option<PathBuf>,
    /// File holding the bearer token of a bridge started with `--auth-token-file`.
    #[arg(long, env = "CCGW_CALL_TOKEN_FILE", value_name = "PATH", global = true)]
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
    /// List the sessions the bridge holds (ListSessions).
    Sessions,
    /// Show one agent's session (GetSession).
    Session {
        /// Agent (work) number.
        #[arg(long)]
        agent: String,
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

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 500ms, 10s, 2m)"))
}

/// Why a call ended unsuccessfully; decides the exit code.
enum Failure {
    /// Bad input detected before calling (exit 2).
    Usage(String),
    /// The bridge answered with (or the transport produced) a gRPC status (exit 1).
    Call(Status),
    /// Standard output failed; a closed pipe (`| head`) just ends the command.
    Output(std::io::Error),
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Failure::Output(e)
    }
}

impl From<Status> for Failure {
    fn from(s: Status) -> Self {
        Failure::Call(s)
    }
}

/// Runs one `call` subcommand and returns the process exit code: 0 on success, 1 when the call
/// fails with a gRPC status (printed to stderr as `error: CODE REASON: message`, or with
/// `--json` to stdout as one `{"error": {…}}` object), 2 on usage errors.
pub async fn run(args: CallArgs) -> ExitCode {
    match call(&args)
        .await
        .map_err(|f| explain_transport(f, &args.addr))
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(msg)) if args.json => {
            let _ = emit!("{}", json!({"error": {"code": "USAGE", "message": msg}}));
            ExitCode::from(EXIT_USAGE)
        }
        Err(Failure::Usage(msg)) => {
            eprintln!("error: {msg}");
            ExitCode::from(EXIT_USAGE)
        }
        Err(Failure::Call(status)) if args.json => {
            let _ = emit!("{}", json!({ "error": status_json(&status) }));
            ExitCode::from(EXIT_CALL_FAILED)
        }
        Err(Failure::Call(status)) => {
            eprint!("{}", describe_status(&status));
            ExitCode::from(EXIT_CALL_FAILED)
        }
        Err(Failure::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(Failure::Output(e)) => {
            eprintln!("error: writing to stdout: {e}");
            ExitCode::from(EXIT_CALL_FAILED)
        }
    }
}

/// A status made by the client's transport (the bridge never answered) says only "tcp connect
/// error": add the cause chain and the address, so "nothing listens there" is obvious.
fn explain_transport(failure: Failure, addr: &str) -> Failure {
    let Failure::Call(status) = failure else {
        return failure;
    };
    let mut source = std::error::Error::source(&status);
    if source.is_none() {
        return Failure::Call(status);
    }
    let mut message = status.message().to_owned();
    while let Some(e) = source {
        let text = e.to_string();
        if !message.contains(&text) {
            message = format!("{message}: {text}");
        }
        source = e.source();
    }
    Failure::Call(Status::new(
        status.code(),
        format!("{message} (bridge at {addr})"),
    ))
}

/// The text printed for a failed call: `error: CODE REASON: message`, then one indented line
/// per `BadRequest` field violation.
pub fn describe_status(status: &Status) -> String {
    let reason = status
        .get_details_error_info()
        .map(|i| i.reason)
        .filter(|r| !r.is_empty());
    let mut out = format!("error: {}", crate::grpc::status::code_label(status.code()));
    if let Some(reason) = reason {
        out.push(' ');
        out.push_str(&reason);
    }
    out.push_str(": ");
    out.push_str(status.message());
    out.push('\n');
    if let Some(bad) = status.get_details_bad_request() {
        for v in bad.field_violations {
            out.push_str(&format!("  {}: {}\n", v.field, v.description));
        }
    }
    out
}

/// A failed call as JSON: `code` (name) and `code_number`, `message`, and from the details
/// `reason`, `domain`, `metadata` (an `ErrorInfo`) and `field_violations` (a `BadRequest`).
pub fn status_json(status: &Status) -> Value {
    let mut obj = json!({
        "code": crate::grpc::status::code_label(status.code()),
        "code_number": status.code() as i32,
        "message": status.message(),
    });
    if let Some(info) = status.get_details_error_info() {
        obj["reason"] = Value::from(info.reason);
        obj["domain"] = Value::from(info.domain);
        obj["metadata"] = Value::Object(
            info.metadata
                .into_iter()
                .map(|(k, v)| (k, Value::from(v)))
                .collect(),
        );
    }
    if let Some(bad) = status.get_details_bad_request() {
        obj["field_violations"] = bad
            .field_violations
            .into_iter()
            .map(|v| json!({"field": v.field, "description": v.description}))
            .collect();
    }
    obj
}

/// The URI tonic connects to for `addr`, which may be written in gRPC's name syntax (what
/// grpcio, grpc-js, grpc-go and grpc-java take: `HOST:PORT`, `dns:[//AUTHORITY/]HOST[:PORT]`,
/// `ipv4:ADDR[:PORT]`, `ipv6:[ADDR][:PORT]`) or as an `http://`/`https://` URL. Without a
/// scheme the connection uses TLS when `tls` (a CA or client certificate was given). A missing
/// port is 443, as in gRPC's name resolution.
pub fn endpoint_uri(addr: &str, tls: bool) -> Result<String, String> {
    let hint = "expected HOST:PORT (e.g. 127.0.0.1:50051), dns:///HOST:PORT or http(s)://HOST:PORT";
    let scheme = if tls { "https" } else { "http" };
    let target = addr.trim();
    if let Some(rest) = target
        .strip_prefix("http://")
        .or_else(|| target.strip_prefix("https://"))
    {
        if tls && target.starts_with("http://") {
            return Err(format!(
                "{addr:?} is plaintext (http://) but a TLS option was given; use https:// or HOST:PORT"
            ));
        }
        if rest.is_empty() {
            return Err(format!("{addr:?} names no host; {hint}"));
        }
        return Ok(target.to_owned());
    }
    let host_port = if let Some(rest) = target.strip_prefix("dns:") {
        // dns://AUTHORITY/HOST:PORT names a DNS server to ask; the system resolver is used.
        match rest.strip_prefix("//") {
            Some(with_authority) => match with_authority.split_once('/') {
                Some((_, name)) => name,
                None => {
                    return Err(format!(
                        "{addr:?}: dns://AUTHORITY must be followed by /HOST:PORT; {hint}"
                    ))
                }
            },
            None => rest,
        }
    } else if let Some(rest) = target
        .strip_prefix("ipv4:")
        .or_else(|| target.strip_prefix("ipv6:"))
    {
        if rest.contains(',') {
            return Err(format!(
                "{addr:?}: one address only (this client does no load balancing)"
            ));
        }
        rest
    } else if target.contains("://") || target.starts_with("unix:") {
        return Err(format!("{addr:?}: unsupported scheme; {hint}"));
    } else {
        target
    };
    if host_port.is_empty() || host_port.contains('/') {
        return Err(format!("{addr:?} is not a gRPC target; {hint}"));
    }
    // A port is present unless the text ends in a bare host (an IPv6 literal ends in `]`).
    let has_port = match host_port.rsplit_once(':') {
        Some((host, port)) => {
            !port.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit())
                && (!host.contains(':') || host.ends_with(']'))
        }
        None => false,
    };
    let uri = if has_port {
        format!("{scheme}://{host_port}")
    } else {
        format!("{scheme}://{host_port}:443")
    };
    uri.parse::<http::Uri>()
        .map_err(|e| format!("{addr:?}: {e}; {hint}"))?;
    Ok(uri)
}

/// The channel `call` uses: `--addr` in any accepted form, TLS from `--ca-cert` /
/// `--client-cert`, `--timeout` as the connect timeout. Connects on the first call, so an
/// unreachable bridge is reported like any other failed call (UNAVAILABLE, exit 1).
fn channel(args: &CallArgs) -> Result<tonic::transport::Channel, Failure> {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    let tls = args.ca_cert.is_some() || args.client_cert.is_some();
    let uri = endpoint_uri(&args.addr, tls).map_err(|e| Failure::Usage(format!("--addr {e}")))?;
    let mut endpoint = Endpoint::from_shared(uri)
        .map_err(|e| Failure::Usage(format!("--addr {:?}: {e}", args.addr)))?
        .connect_timeout(args.timeout);
    if uri_is_tls(&args.addr, tls) {
        let read = |flag: &str, path: &std::path::Path| {
            std::fs::read(path)
                .map_err(|e| Failure::Usage(format!("{flag} {}: {e}", path.display())))
        };
        let Some(ca) = &args.ca_cert else {
            return Err(Failure::Usage(
                "a TLS bridge (https://) needs --ca-cert: the CA that signed its --tls-cert".into(),
            ));
        };
        let mut config =
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read("--ca-cert", ca)?));
        if let (Some(cert), Some(key)) = (&args.client_cert, &args.client_key) {
            config = config.identity(Identity::from_pem(
                read("--client-cert", cert)?,
                read("--client-key", key)?,
            ));
        }
        endpoint = endpoint
            .tls_config(config)
            .map_err(|e| Failure::Usage(format!("--ca-cert/--client-cert: {e}")))?;
    }
    Ok(endpoint.connect_lazy())
}

fn uri_is_tls(addr: &str, tls: bool) -> bool {
    addr.trim().starts_with("https://") || (tls && !addr.trim().starts_with("http://"))
}

/// The `authorization` metadata for `--token-file` (content trimmed, as the bridge reads it).
fn bearer(
    args: &CallArgs,
) -> Result<Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>, Failure> {
    let Some(path) = &args.token_file else {
        return Ok(None);
    };
    let raw = std::fs::read_to_string(path)
        .map_err(|e| Failure::Usage(format!("--token-file {}: {e}", path.display())))?;
    format!("Bearer {}", raw.trim())
        .parse()
        .map(Some)
        .map_err(|_| {
            Failure::Usage(format!(
                "--token-file {}: not a valid token",
                path.display()
            ))
        })
}

/// Adds the bearer token to every request of a client.
#[derive(Clone)]
struct Token(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Token {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(token) = &self.0 {
            req.metadata_mut().insert("authorization", token.clone());
        }
        Ok(req)
    }
}

/// A unary request carrying the `--timeout` deadline (sent as grpc-timeout and enforced by the
/// channel too).
fn with_deadline<T>(msg: T, timeout: Duration) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.set_timeout(timeout);
    req
}

async fn call(args: &CallArgs) -> Result<(), Failure> {
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
            out.message(&r.message)?;
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
        CallOp::Stop { agent } => {
            let r = play()
                .stop_play(with_deadline(
                    StopPlayRequest {
                        agent_id: agent.clone(),
                    },
                    t,
                ))
                .await?;
            out.message(&r.into_inner().message)?;
        }
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

/// Renders results as human-readable lines or JSON lines.
struct Output {
    json: bool,
}

impl Output {
    fn message(&self, message: &str) -> std::io::Result<()> {
        if self.json {
            emit!("{}", json!({ "message": message }))
        } else {
            emit!("ok {message:?}")
        }
    }

    fn session(&self, s: &Session) -> std::io::Result<()> {
        let state = state_name(s);
        if self.json {
            emit!("{}", session_json(s))
        } else {
            let ts = |t: &Option<prost_types::Timestamp>| {
                t.as_ref().map_or_else(|| "-".to_owned(), |t| t.to_string())
            };
            emit!(
                "{} {} session={} signed_in_at={} last_poll_at={} last_sequence={} watchers={} can_resign_in={}",
                s.agent_id,
                state.trim_start_matches("SESSION_STATE_"),
                s.session_id,
                ts(&s.signed_in_at),
                ts(&s.last_poll_at),
                s.last_sequence,
                s.watchers,
                s.can_resign_in,
            )
        }
    }

    fn play_event(&self, e: &PlayEvent) -> std::io::Result<()> {
        let kind = PlayEventType::try_from(e.r#type)
            .map(|t| t.as_str_name().to_owned())
            .unwrap_or_else(|_| e.r#type.to_string());
        self.event(
            e.sequence,
            Some(&kind),
            &e.event_type,
            &e.session_id,
            &e.agent_id,
            e.received_at.as_ref(),
            e.content.as_ref(),
        )
    }

    fn agent_event(&self, e: &AgentEvent) -> std::io::Result<()> {
        self.event(
            e.sequence,
            None,
            &e.event_type,
            &e.session_id,
            &e.agent_id,
            e.received_at.as_ref(),
            e.content.as_ref(),
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn event(
        &self,
        sequence: u64,
        kind: Option<&str>,
        event_type: &str,
        session_id: &str,
        agent_id: &str,
        received_at: Option<&prost_types::Timestamp>,
        content: Option<&prost_types::Struct>,
    ) -> std::io::Result<()> {
        let content = content.map_or_else(|| Value::Object(Map::new()), struct_to_json);
        let received_at = received_at.map(|t| t.to_string());
        if self.json {
            let mut obj = json!({
                "sequence": sequence,
                "session_id": session_id,
                "agent_id": agent_id,
                "event_type": event_type,
                "received_at": received_at,
                "content": content,
            });
            if let Some(kind) = kind {
                obj["type"] = Value::from(kind);
            }
            emit!("{obj}")
        } else {
            let kind = kind.map(|k| format!(" {k}")).unwrap_or_default();
            emit!(
                "#{sequence}{kind} {event_type} {} {content}",
                received_at.as_deref().unwrap_or("-")
            )
        }
    }
}

fn state_name(s: &Session) -> String {
    SessionState::try_from(s.state)
        .map(|st| st.as_str_name().to_owned())
        .unwrap_or_else(|_| s.state.to_string())
}

fn session_json(s: &Session) -> Value {
    json!({
        "agent_id": s.agent_id,
        "session_id": s.session_id,
        "state": state_name(s),
        "signed_in_at": s.signed_in_at.as_ref().map(|t| t.to_string()),
        "watchers": s.watchers,
        "last_poll_at": s.last_poll_at.as_ref().map(|t| t.to_string()),
        "last_sequence": s.last_sequence,
        "can_resign_in": s.can_resign_in,
    })
}

/// A protobuf `Struct` as the JSON object it carries.
pub fn struct_to_json(s: &prost_types::Struct) -> Value {
    Value::Object(
        s.fields
            .iter()
            .map(|(k, v)| (k.clone(), value_to_json(v)))
            .collect(),
    )
}

fn value_to_json(v: &prost_types::Value) -> Value {
    use prost_types::value::Kind;
    match &v.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(b)) => Value::Bool(*b),
        // Struct numbers are doubles; whole ones (the gateway's codes and counters) print as
        // integers, as the gateway sent them.
        Some(Kind::NumberValue(n)) => {
            if n.fract() == 0.0 && n.abs() < 9_007_199_254_740_992.0 {
                Value::from(*n as i64)
            } else {
                serde_json::Number::from_f64(*n).map_or(Value::Null, Value::Number)
            }
        }
        Some(Kind::StringValue(s)) => Value::String(s.clone()),
        Some(Kind::StructValue(s)) => struct_to_json(s),
        Some(Kind::ListValue(l)) => Value::Array(l.values.iter().map(value_to_json).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn struct_numbers_keep_their_integer_form() {
        use prost_types::value::Kind;
        let s = prost_types::Struct {
            fields: [
                (
                    "cause".to_owned(),
                    prost_types::Value {
                        kind: Some(Kind::NumberValue(0.0)),
                    },
                ),
                (
                    "ratio".to_owned(),
                    prost_types::Value {
                        kind: Some(Kind::NumberValue(0.5)),
                    },
                ),
            ]
            .into_iter()
            .collect(),
        };
        assert_eq!(struct_to_json(&s), json!({"cause": 0, "ratio": 0.5}));
    }

    #[test]
    fn grpc_targets_and_urls_become_uris() {
        let ok = |addr: &str, tls: bool| endpoint_uri(addr, tls).unwrap();
        assert_eq!(ok("127.0.0.1:50051", false), "http://127.0.0.1:50051");
        assert_eq!(ok("127.0.0.1:50051", true), "https://127.0.0.1:50051");
        assert_eq!(ok("dns:///bridge:7", false), "http://bridge:7");
        assert_eq!(ok("dns://8.8.8.8/bridge:7", false), "http://bridge:7");
        assert_eq!(ok("dns:bridge:7", false), "http://bridge:7");
        assert_eq!(ok("ipv4:10.0.0.1:7", false), "http://10.0.0.1:7");
        assert_eq!(ok("ipv6:[::1]:7", false), "http://[::1]:7");
        assert_eq!(ok("[::1]:7", false), "http://[::1]:7");
        assert_eq!(ok("bridge", false), "http://bridge:443");
        assert_eq!(ok("[::1]", false), "http://[::1]:443");
        assert_eq!(ok("http://h:1", false), "http://h:1");
        assert_eq!(ok("https://h:1", false), "https://h:1");
        for bad in [
            "",
            "unix:/x",
            "ftp://h:1",
            "http://",
            "h:1/x",
            "ipv4:a:1,b:2",
            "dns://x",
        ] {
            assert!(endpoint_uri(bad, false).is_err(), "{bad:?}");
        }
        assert!(
            endpoint_uri("http://h:1", true).is_err(),
            "plaintext URL with TLS flags"
        );
    }

    #[test]
    fn status_json_carries_reason_metadata_and_fields() {
        use tonic_types::{ErrorDetails, StatusExt};
        let details = ErrorDetails::with_error_info(
            "OUTCOME_UNKNOWN",
            "ccgw-bridge",
            [("agent_id".to_owned(), "1001".to_owned())],
        );
        let status = Status::with_error_details(Code::Unknown, "lost", details);
        assert_eq!(
            status_json(&status),
            json!({"code": "UNKNOWN", "code_number": 2, "message": "lost",
                   "reason": "OUTCOME_UNKNOWN", "domain": "ccgw-bridge",
                   "metadata": {"agent_id": "1001"}})
        );
    }

    #[test]
    fn status_text_names_code_reason_and_fields() {
        use tonic_types::{ErrorDetails, StatusExt};
        let mut details = ErrorDetails::with_error_info("INVALID_REQUEST", "ccgw.v1", []);
        details.add_bad_request_violation("voice_path", "must not be empty");
        let status = Status::with_error_details(Code::InvalidArgument, "bad request", details);
        assert_eq!(
            describe_status(&status),
            "error: INVALID_ARGUMENT INVALID_REQUEST: bad request\n  voice_path: must not be empty\n"
        );
        assert_eq!(
            describe_status(&Status::unavailable("down")),
            "error: UNAVAILABLE: down\n"
        );
    }
}
