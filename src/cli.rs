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
    /// The bridge's gRPC API.
    #[arg(
        long,
        env = "CCGW_ADDR",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    pub addr: String,
    /// Deadline of each call (sent to the bridge as grpc-timeout); for `watch`, of connecting.
    #[arg(long, default_value = "10s", value_parser = duration, global = true)]
    pub timeout: Duration,
    /// One JSON object per line, for scripts.
    #[arg(long, global = true)]
    pub json: bool,
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
/// fails with a gRPC status (printed to stderr as `error: CODE REASON: message`), 2 on usage
/// errors.
pub async fn run(args: CallArgs) -> ExitCode {
    match call(&args)
        .await
        .map_err(|f| explain_transport(f, &args.addr))
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(msg)) => {
            eprintln!("error: {msg}");
            ExitCode::from(EXIT_USAGE)
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

/// A unary request carrying the `--timeout` deadline (sent as grpc-timeout and enforced by the
/// channel too).
fn with_deadline<T>(msg: T, timeout: Duration) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.set_timeout(timeout);
    req
}

async fn call(args: &CallArgs) -> Result<(), Failure> {
    let channel = Endpoint::from_shared(args.addr.clone())
        .map_err(|e| Failure::Usage(format!("--addr {:?}: {e}", args.addr)))?
        .connect_timeout(args.timeout)
        // Connects on the first call, so an unreachable bridge is reported like any other
        // failed call (UNAVAILABLE, exit 1).
        .connect_lazy();
    let out = Output { json: args.json };
    let t = args.timeout;
    let sessions = || AgentSessionServiceClient::new(channel.clone());
    let play = || RecordPlayServiceClient::new(channel.clone());
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
            if r.sessions.is_empty() && !out.json {
                emit!("no sessions")?;
            }
            for s in &r.sessions {
                out.session(s)?;
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
        let state = SessionState::try_from(s.state)
            .map(|st| st.as_str_name().to_owned())
            .unwrap_or_else(|_| s.state.to_string());
        if self.json {
            emit!(
                "{}",
                json!({
                    "agent_id": s.agent_id,
                    "session_id": s.session_id,
                    "state": state,
                    "signed_in_at": s.signed_in_at.as_ref().map(|t| t.to_string()),
                    "watchers": s.watchers,
                    "last_poll_at": s.last_poll_at.as_ref().map(|t| t.to_string()),
                    "last_sequence": s.last_sequence,
                    "can_resign_in": s.can_resign_in,
                })
            )
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
