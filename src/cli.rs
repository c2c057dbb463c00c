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
//!
//! By job: `flags` declares the command line, `connect` turns `--addr` and the TLS and token
//! flags into a channel, `ops` makes the call each subcommand names, `output` prints results
//! and failures. This module runs them and decides the exit code.

use serde_json::json;
use std::process::ExitCode;
use tonic::Status;

/// Writes one line to stdout and flushes it, so a reader of a pipe sees each event at once;
/// a failure (a closed pipe) is returned instead of panicking as `println!` would.
macro_rules! emit {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, $($arg)*).and_then(|()| stdout.flush())
    }};
}

mod connect;
mod flags;
mod ops;
mod output;
mod probe;

pub use connect::endpoint_uri;
pub use flags::{CallArgs, CallOp};
pub use output::{describe_status, status_json, struct_to_json};

/// Exit code of a call the bridge (or the connection to it) failed.
const EXIT_CALL_FAILED: u8 = 1;
/// Exit code of a usage error (bad flag value, unreadable password file), as clap uses.
const EXIT_USAGE: u8 = 2;

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
    match ops::call(&args)
        .await
        .map_err(|f| with_hint(explain_transport(f, &args.addr), &args))
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

/// Adds a hint to a failed call whose status points at a likely mistake: TLS towards a
/// plaintext bridge or plaintext towards a TLS one, a play refused while one still runs, or
/// `--addr` at the admin port instead of the API's.
fn with_hint(failure: Failure, args: &CallArgs) -> Failure {
    let Failure::Call(status) = failure else {
        return failure;
    };
    let text = status.message().to_ascii_lowercase();
    let tls = args.ca_cert.is_some()
        || args.client_cert.is_some()
        || args.addr.trim().starts_with("https://");
    let hint = if tls
        && (text.contains("invalidcontenttype")
            || text.contains("corrupt message")
            || text.contains("wrong version number"))
    {
        Some(format!(
            "the bridge at {} answered without TLS: it serves plaintext; drop --ca-cert (and --client-cert/--client-key), or start the bridge with --tls-cert",
            args.addr
        ))
    } else if !tls
        && (text.contains("broken pipe")
            || text.contains("frame with invalid size")
            || text.contains("connection reset"))
    {
        Some(format!(
            "the connection to {} broke at once: a bridge started with --tls-cert serves TLS only; pass --ca-cert (and --client-cert/--client-key where it wants mutual TLS)",
            args.addr
        ))
    } else if reason(&status).is_some_and(|r| r.ends_with("_STATE_ERROR")) {
        Some("a playback is still running or stopping: wait for PLAY_STOPPED (`call stop --wait`, or `call watch`)".into())
    } else if status.code() == tonic::Code::Unimplemented && text.contains("http status code 404") {
        Some(format!(
            "{} answers HTTP 404 to the API: is it the admin port (--admin-listen, default :9090: probes, /metrics and gRPC health only)? The API listens on --listen (default 127.0.0.1:50051)",
            args.addr
        ))
    } else {
        None
    };
    match hint {
        Some(hint) => Failure::Call(Status::new(
            status.code(),
            format!("{} (hint: {hint})", status.message()),
        )),
        None => Failure::Call(status),
    }
}

/// The `ErrorInfo` reason of a refusal, if it carries one.
fn reason(status: &Status) -> Option<String> {
    use tonic_types::StatusExt;
    status
        .get_error_details()
        .error_info()
        .map(|i| i.reason.clone())
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
