//! `ccgw-bridge call …` against a real bridge: the built binary is run as an operator would run
//! it, in front of the in-process bridge + simulator of the end-to-end harness.

#[path = "e2e/helpers.rs"]
mod helpers;
#[path = "e2e/venv.rs"]
#[allow(dead_code)] // shared with the e2e binary, which uses the rest
mod venv;

use helpers::Harness;
use serde_json::Value;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio::time::timeout;
use tonic_health::pb::health_check_response::ServingStatus;
use venv::manifest_addr;

const BIN: &str = env!("CARGO_BIN_EXE_ccgw-bridge");
/// Upper bound of any one CLI run (they take milliseconds; this only stops a hang).
const LIMIT: Duration = Duration::from_secs(30);

/// `ccgw-bridge call --addr <bridge> ARGS…`, with no `CCGW_*` variables inherited. The address
/// is given in the form the deploy manifest gives the app (see `manifest_addr`).
fn cli(h: &Harness, args: &[&str]) -> Command {
    let mut cmd = bare_cli();
    cmd.arg("call")
        .arg("--addr")
        .arg(manifest_addr(h.addr.port()))
        .args(args);
    cmd
}

/// The binary with a clean `CCGW_*` environment.
fn bare_cli() -> Command {
    let mut cmd = Command::new(BIN);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("CCGW_") {
            cmd.env_remove(name);
        }
    }
    cmd.stdin(Stdio::null()).kill_on_drop(true);
    cmd
}

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

async fn run(h: &Harness, args: &[&str]) -> Run {
    let out = timeout(LIMIT, cli(h, args).output())
        .await
        .unwrap_or_else(|_| panic!("`call {args:?}` finished within {LIMIT:?}"))
        .expect("the binary runs");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

#[track_caller]
fn ok(r: &Run) {
    assert_eq!(
        r.code,
        Some(0),
        "stdout: {}\nstderr: {}",
        r.stdout,
        r.stderr
    );
}

#[tokio::test]
async fn sign_in_play_watch_and_list_sessions() {
    let h = Harness::start().await;
    let dir = std::env::temp_dir().join(format!("ccgw-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let password = dir.join("agent-1001");
    std::fs::write(&password, "secret\n").unwrap();

    let signed_in = run(
        &h,
        &[
            "sign-in",
            "--agent",
            "1001",
            "--phone",
            "88001",
            "--password-file",
            password.to_str().unwrap(),
            "--json",
        ],
    )
    .await;
    ok(&signed_in);
    let session: Value = serde_json::from_str(signed_in.stdout.trim()).expect("one JSON line");
    assert_eq!(session["agent_id"], "1001");
    assert_eq!(session["state"], "SESSION_STATE_SIGNED_IN");
    let session_id = session["session_id"].as_str().unwrap().to_owned();

    // Watch from the start of the session: whether the stream opens before or after the play,
    // the retained window delivers PLAY_SUCCEEDED.
    let mut watch = cli(
        &h,
        &[
            "watch",
            "--agent",
            "1001",
            "--resume-after",
            "0",
            "--session",
            &session_id,
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("watch starts");

    let played = run(
        &h,
        &[
            "play",
            "--agent",
            "1001",
            "--voice-path",
            "/prompts/welcome.wav",
            "--volume",
            "60",
            "--wait",
        ],
    )
    .await;
    ok(&played);
    assert!(
        played.stdout.starts_with("ok ") && played.stdout.contains("outcome_sequence="),
        "{}",
        played.stdout
    );

    let mut lines = BufReader::new(watch.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    let succeeded = timeout(LIMIT, async {
        while let Some(line) = lines.next_line().await.expect("readable stdout") {
            let hit = line.contains(" PLAY_SUCCEEDED AgentMediaEvent_Play_Succ ");
            seen.push(line);
            if hit {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    assert!(succeeded, "watch printed {seen:#?}");
    let line = seen.last().unwrap();
    assert!(line.starts_with('#'), "{line}");
    assert!(line.ends_with(" {}"), "content printed as JSON: {line}");
    watch.kill().await.expect("watch is killed");

    let listed = run(&h, &["sessions", "--json"]).await;
    ok(&listed);
    let listed: Value = serde_json::from_str(listed.stdout.trim()).expect("one JSON object");
    let sessions = listed["sessions"].as_array().expect("a sessions array");
    assert_eq!(sessions.len(), 1, "{listed}");
    assert_eq!(sessions[0]["agent_id"], "1001");
    assert_eq!(sessions[0]["session_id"], session_id.as_str());
    assert!(sessions[0]["last_sequence"].as_u64().unwrap() >= 1);

    let human = run(&h, &["session", "--agent", "1001"]).await;
    ok(&human);
    assert!(
        human
            .stdout
            .starts_with(&format!("1001 SIGNED_IN session={session_id} ")),
        "{}",
        human.stdout
    );

    let out = run(&h, &["sign-out", "--agent", "1001"]).await;
    ok(&out);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_refused_call_prints_code_and_fields_and_exits_1() {
    let h = Harness::start().await;
    h.sign_in("1001").await;
    let r = run(&h, &["play", "--agent", "1001", "--voice-path", ""]).await;
    assert_eq!(r.code, Some(1), "stderr: {}", r.stderr);
    assert!(
        r.stderr.starts_with("error: INVALID_ARGUMENT"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("voice_path"), "{}", r.stderr);
    assert!(r.stdout.is_empty(), "{}", r.stdout);

    // A gRPC error with an ErrorInfo reason names it after the code.
    let r = run(&h, &["session", "--agent", "1002"]).await;
    assert_eq!(r.code, Some(1), "stderr: {}", r.stderr);
    assert!(
        r.stderr.starts_with("error: NOT_FOUND SESSION_NOT_FOUND: "),
        "{}",
        r.stderr
    );
}

#[tokio::test]
async fn json_covers_errors_and_empty_results_and_has_environment_twins() {
    let h = Harness::start().await;
    // Empty: one explicit object, not silence.
    let r = run(&h, &["sessions", "--json"]).await;
    ok(&r);
    assert_eq!(r.stdout.trim(), r#"{"sessions":[]}"#);
    let r = run(&h, &["sessions"]).await;
    ok(&r);
    assert_eq!(r.stdout.trim(), "no sessions");

    // A refusal: one JSON object with code, reason, domain, metadata and message (exit 1).
    let r = run(&h, &["session", "--agent", "1002", "--json"]).await;
    assert_eq!(r.code, Some(1), "stderr: {}", r.stderr);
    let e: Value = serde_json::from_str(r.stdout.trim()).expect("one JSON object");
    assert_eq!(e["error"]["code"], "NOT_FOUND", "{e}");
    assert_eq!(e["error"]["code_number"], 5, "{e}");
    assert_eq!(e["error"]["reason"], "SESSION_NOT_FOUND", "{e}");
    assert_eq!(e["error"]["domain"], "ccgw-bridge", "{e}");
    assert_eq!(e["error"]["metadata"]["agent_id"], "1002", "{e}");
    assert!(
        e["error"]["message"].as_str().unwrap().contains("1002"),
        "{e}"
    );

    // Bad input: field violations.
    h.sign_in("1001").await;
    let r = run(
        &h,
        &["play", "--agent", "1001", "--voice-path", "", "--json"],
    )
    .await;
    assert_eq!(r.code, Some(1));
    let e: Value = serde_json::from_str(r.stdout.trim()).expect("one JSON object");
    assert_eq!(e["error"]["code"], "INVALID_ARGUMENT", "{e}");
    assert_eq!(
        e["error"]["field_violations"][0]["field"], "voice_path",
        "{e}"
    );

    // Environment twins of --json and --timeout (and --addr).
    let out = timeout(
        LIMIT,
        bare_cli()
            .args(["call", "sessions"])
            .env("CCGW_ADDR", manifest_addr(h.addr.port()))
            .env("CCGW_CALL_JSON", "true")
            .env("CCGW_CALL_TIMEOUT", "5s")
            .output(),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(out.status.success(), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON via CCGW_CALL_JSON");
    assert_eq!(v["sessions"][0]["agent_id"], "1001");
    let out = bare_cli()
        .args(["call", "sessions"])
        .env("CCGW_ADDR", manifest_addr(h.addr.port()))
        .env("CCGW_CALL_TIMEOUT", "soon")
        .output()
        .await
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "a bad CCGW_CALL_TIMEOUT is a usage error"
    );

    // Nothing listening: UNAVAILABLE as JSON, naming the address.
    let r = timeout(
        LIMIT,
        bare_cli()
            .args([
                "call",
                "--json",
                "--addr",
                &free_addr().to_string(),
                "sessions",
            ])
            .output(),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(r.status.code(), Some(1));
    let e: Value = serde_json::from_slice(&r.stdout).expect("one JSON object");
    assert_eq!(e["error"]["code"], "UNAVAILABLE", "{e}");
}

/// Every address form a gRPC client takes (and URLs) reaches the bridge; others are usage
/// errors with a hint.
#[tokio::test]
async fn addr_accepts_grpc_targets_and_urls() {
    let h = Harness::start().await;
    let port = h.addr.port();
    for addr in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("dns:///localhost:{port}"),
        format!("dns:localhost:{port}"),
        format!("ipv4:127.0.0.1:{port}"),
        format!("http://127.0.0.1:{port}"),
    ] {
        let out = timeout(
            LIMIT,
            bare_cli()
                .args(["call", "--addr", &addr, "sessions"])
                .output(),
        )
        .await
        .unwrap()
        .unwrap();
        assert!(out.status.success(), "--addr {addr}: {out:?}");
    }
    for bad in ["unix:/tmp/x.sock", "ftp://x:1", "http://", "a b:1"] {
        let out = bare_cli()
            .args(["call", "--addr", bad, "sessions"])
            .output()
            .await
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "--addr {bad}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--addr"), "{err}");
    }
}

#[tokio::test]
async fn call_reaches_a_bridge_with_mutual_tls_and_a_token() {
    use ccgw_bridge::config::ServerTls;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    const TOKEN: &str = "0123456789abcdef-token";
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf = |names: Vec<String>| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let server = leaf(vec!["localhost".into(), "127.0.0.1".into()]);
    let client = leaf(vec!["caller".into()]);
    let h = Harness::with(helpers::fast_sim(), |c| {
        c.server.auth_token = Some(TOKEN.into());
        c.server.tls = Some(ServerTls {
            cert: server.0.clone().into_bytes(),
            key: server.1.clone().into_bytes(),
            client_ca: Some(ca.clone().into_bytes()),
        });
    })
    .await;
    let dir = std::env::temp_dir().join(format!("ccgw-cli-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = |name: &str, body: &str| {
        let path = dir.join(name);
        std::fs::write(&path, body).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let (ca, cert, key) = (
        file("ca.pem", &ca),
        file("client.pem", &client.0),
        file("client.key", &client.1),
    );
    let token = file("token", &format!("{TOKEN}\n"));
    let tls = [
        "--ca-cert",
        ca.as_str(),
        "--client-cert",
        cert.as_str(),
        "--client-key",
        key.as_str(),
    ];
    let call = |extra: &[&str]| {
        let mut cmd = bare_cli();
        cmd.args(["call", "--json", "--addr", &manifest_addr(h.addr.port())])
            .args(tls)
            .args(extra);
        cmd
    };
    let out = timeout(LIMIT, call(&["--token-file", &token, "sessions"]).output())
        .await
        .unwrap()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        r#"{"sessions":[]}"#
    );
    // Without the token the bridge refuses, and says why.
    let out = timeout(LIMIT, call(&["sessions"]).output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let e: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(e["error"]["reason"], "MISSING_TOKEN", "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn usage_errors_exit_2_before_calling() {
    let h = Harness::start().await;
    // --resume-after without --session (sequences are per session).
    let r = run(&h, &["watch", "--agent", "1001", "--resume-after", "3"]).await;
    assert_eq!(r.code, Some(2), "stderr: {}", r.stderr);
    // The password never comes from argv.
    let r = run(
        &h,
        &[
            "sign-in",
            "--agent",
            "1001",
            "--phone",
            "88001",
            "--password",
            "x",
        ],
    )
    .await;
    assert_eq!(r.code, Some(2), "stderr: {}", r.stderr);
    let r = run(
        &h,
        &[
            "sign-in",
            "--agent",
            "1001",
            "--phone",
            "88001",
            "--password-env",
            "CCGW_TEST_UNSET_PASSWORD_VARIABLE",
        ],
    )
    .await;
    assert_eq!(r.code, Some(2), "stderr: {}", r.stderr);
    assert!(r.stderr.contains("--password-env"), "{}", r.stderr);
}

/// The README's promise: `ccgw-bridge --simulate`, then one `call` command plays an
/// announcement, and `call watch` shows the live play sequence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulate_then_one_command_plays_and_watch_shows_it() {
    let (grpc, admin) = (free_addr(), free_addr());
    let mut bridge = Command::new(BIN)
        .args(["--simulate", "--listen", &grpc.to_string()])
        .args(["--admin-listen", &admin.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let addr = grpc.to_string();
    // Ready once the demo agent is signed in: the session command succeeds.
    let started = std::time::Instant::now();
    loop {
        let out = Command::new(BIN)
            .args(["call", "--addr", &addr, "session", "--agent", "1001"])
            .output()
            .await
            .unwrap();
        if out.status.success() && String::from_utf8_lossy(&out.stdout).contains("SIGNED_IN") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "demo agent never signed in"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut watch = Command::new(BIN)
        .args(["call", "--addr", &addr, "watch", "--agent", "1001"])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(watch.stdout.take().unwrap()).lines();
    // The watch is registered once the bridge reports a watcher on the session.
    loop {
        let out = Command::new(BIN)
            .args([
                "call", "--addr", &addr, "--json", "session", "--agent", "1001",
            ])
            .output()
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if v["watchers"].as_u64().unwrap_or(0) >= 1 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "watch never registered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let play = Command::new(BIN)
        .args(["call", "--addr", &addr, "play", "--agent", "1001"])
        .args(["--voice-path", "/prompts/welcome.wav", "--wait"])
        .output()
        .await
        .unwrap();
    assert!(play.status.success(), "{play:?}");
    let mut seen = Vec::new();
    while !seen.iter().any(|l: &String| l.contains("PLAY_SUCCEEDED")) {
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .expect("watch prints the sequence")
            .unwrap()
            .expect("watch still running");
        seen.push(line);
    }
    assert!(seen.iter().any(|l| l.contains("PLAY_STARTED")), "{seen:?}");
    watch.kill().await.unwrap();
    bridge.kill().await.unwrap();
}

/// A failed call that has a likely cause says so: TLS towards a plaintext bridge, and the admin
/// port instead of the API's.
#[tokio::test]
async fn call_hints_at_a_tls_mismatch_and_at_the_admin_port() {
    let h = Harness::start().await;
    let dir = std::env::temp_dir().join(format!("ccgw-cli-hints-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, h.sim.ca_pem()).unwrap();
    let r = run(&h, &["--ca-cert", ca.to_str().unwrap(), "sessions"]).await;
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(
        r.stderr.contains("hint:")
            && r.stderr.contains("plaintext")
            && r.stderr.contains("--ca-cert"),
        "says the bridge serves plaintext and what to drop: {}",
        r.stderr
    );
    std::fs::remove_dir_all(&dir).unwrap();

    let out = timeout(
        LIMIT,
        bare_cli()
            .args(["call", "--addr", &h.admin.to_string(), "sessions"])
            .output(),
    )
    .await
    .unwrap()
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("hint:") && err.contains("admin") && err.contains("--listen"),
        "says this is the admin port and where the API is: {err}"
    );
}

/// `sign-out` says what happened instead of `ok ""`.
#[tokio::test]
async fn sign_out_says_what_happened() {
    let h = Harness::start().await;
    h.sign_in("1001").await;
    let r = run(&h, &["sign-out", "--agent", "1001"]).await;
    ok(&r);
    assert_eq!(r.stdout.trim(), "agent 1001 signed out", "{}", r.stdout);
    let r = run(&h, &["sign-out", "--agent", "1001"]).await;
    ok(&r);
    assert!(
        r.stdout.contains("1001 was not signed in") && !r.stdout.contains("ok \""),
        "{}",
        r.stdout
    );
    h.sign_in("1001").await;
    let r = run(&h, &["sign-out", "--agent", "1001", "--json"]).await;
    ok(&r);
    let v: Value = serde_json::from_str(r.stdout.trim()).expect("one JSON object");
    assert_eq!(v["agent_id"], "1001", "{v}");
    assert_eq!(v["signed_out"], true, "{v}");
}

/// Without a pool, `call ownership` fails as the RPC does: FAILED_PRECONDITION POOL_DISABLED.
#[tokio::test]
async fn call_ownership_without_a_pool_says_so() {
    let h = Harness::start().await;
    let r = run(&h, &["ownership", "--json"]).await;
    assert_eq!(r.code, Some(1), "{} {}", r.stdout, r.stderr);
    let e: Value = serde_json::from_str(r.stdout.trim()).expect("one JSON object");
    assert_eq!(e["error"]["reason"], "POOL_DISABLED", "{e}");
}

fn free_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// `--help` as sections: each heading line (`Name:` at column 0) and the long flags under it.
fn help_sections(help: &str) -> Vec<(String, Vec<String>)> {
    let mut sections: Vec<(String, Vec<String>)> = Vec::new();
    for line in help.lines() {
        if let Some(heading) = line.strip_suffix(':').filter(|_| !line.starts_with(' ')) {
            sections.push((heading.to_owned(), Vec::new()));
        } else if let (Some((_, flags)), Some(at)) = (sections.last_mut(), line.find("--")) {
            if line.trim_start().starts_with('-') {
                let name = line[at..].split([' ', '=', ',', '<']).next().unwrap();
                flags.push(name.to_owned());
            }
        }
    }
    sections
}

async fn stdout_of(args: &[&str]) -> String {
    let out = timeout(LIMIT, bare_cli().args(args).output())
        .await
        .unwrap()
        .unwrap();
    assert!(out.status.success(), "{args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// The bridge's ~45 flags read like a manual: grouped under headings, none left in the generic
/// "Options" section, and each where an operator looks for it.
#[tokio::test]
async fn bridge_help_groups_every_flag_under_a_heading() {
    let help = stdout_of(&["--help"]).await;
    let sections = help_sections(&help);
    let names: Vec<&str> = sections.iter().map(|(h, _)| h.as_str()).collect();
    for heading in [
        "Gateway",
        "Agents and sessions",
        "API listener",
        "Admin listener",
        "Events",
        "Limits",
        "Process",
        "Agent pool",
        "etcd security",
        "Logs and tracing",
    ] {
        assert!(
            names.contains(&heading),
            "{heading} missing: {names:?}\n{help}"
        );
    }
    let options = &sections.iter().find(|(h, _)| h == "Options").unwrap().1;
    assert_eq!(options, &["--help", "--version"], "{help}");
    let under = |heading: &str| &sections.iter().find(|(h, _)| h == heading).unwrap().1;
    for (heading, flag) in [
        ("Gateway", "--gateway-url"),
        ("Gateway", "--simulate"),
        ("API listener", "--tls-cert"),
        ("Admin listener", "--admin-listen"),
        ("Events", "--event-budget"),
        ("Limits", "--max-concurrent-requests"),
        ("Agent pool", "--etcd-endpoints"),
        ("etcd security", "--etcd-client-key"),
        ("Logs and tracing", "--otlp-endpoint"),
    ] {
        assert!(
            under(heading).iter().any(|f| f == flag),
            "{flag} not under {heading}:\n{help}"
        );
    }
    let total: usize = sections.iter().map(|(_, f)| f.len()).sum();
    assert!(total >= 45, "{total} flags:\n{help}");
}

/// Every `call` subcommand shows how to reach the bridge in a section of its own.
#[tokio::test]
async fn call_help_shows_connection_flags_in_their_own_section() {
    for op in ["play", "sign-in", "sessions", "watch", "ownership"] {
        let help = stdout_of(&["call", op, "--help"]).await;
        let sections = help_sections(&help);
        let connection = &sections
            .iter()
            .find(|(h, _)| h == "Connection")
            .unwrap_or_else(|| panic!("call {op}: no Connection section:\n{help}"))
            .1;
        for flag in [
            "--addr",
            "--timeout",
            "--ca-cert",
            "--client-cert",
            "--token-file",
        ] {
            assert!(
                connection.iter().any(|f| f == flag),
                "call {op}: {flag}:\n{help}"
            );
        }
        let options = &sections.iter().find(|(h, _)| h == "Options").unwrap().1;
        assert!(!options.iter().any(|f| f == "--addr"), "call {op}:\n{help}");
    }
}

/// `--version` (bridge and `call`) prints the version, the features and the commit, the same
/// facts as `ccgw_build_info`, and the commit is the checkout's.
#[tokio::test]
async fn version_names_features_and_commit_like_build_info() {
    let git = std::process::Command::new("git")
        .args(["rev-parse", "--short=7", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let commit = String::from_utf8(git.stdout).unwrap().trim().to_owned();
    let want = format!(
        "{} (features: pool; commit {commit})\n",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(
        stdout_of(&["--version"]).await,
        format!("ccgw-bridge {want}")
    );
    assert_eq!(
        stdout_of(&["call", "--version"]).await,
        format!("ccgw-bridge-call {want}")
    );
    let h = Harness::start().await;
    let metrics = h.metrics().await;
    let info = format!(
        r#"ccgw_build_info{{version="{}",features="pool",commit="{commit}"}} 1"#,
        env!("CARGO_PKG_VERSION")
    );
    assert!(metrics.lines().any(|l| l == info), "{info}\n{metrics}");
}

/// `call health` and `call ready` answer what the kubelet's probes ask, from the same binary.
#[tokio::test]
async fn health_and_ready_say_what_the_probes_see() {
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
    let h = Harness::start().await;
    // Ready once the gateway answered: wait for it on the health stream, as a kubelet would see.
    let mut health = HealthClient::new(h.channel().await)
        .watch(HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    while health.message().await.unwrap().unwrap().status() != ServingStatus::Serving {}
    for service in ["", "ccgw.v1.RecordPlayService"] {
        let r = run(&h, &["health", "--service", service]).await;
        ok(&r);
        assert_eq!(r.stdout.trim(), "SERVING", "{service:?}");
    }
    let r = run(&h, &["health", "--service", "no.such.Service"]).await;
    assert_eq!(r.code, Some(1), "{} {}", r.stdout, r.stderr);
    let admin = h.admin.to_string();
    let r = run(&h, &["--json", "ready", "--admin", &admin]).await;
    ok(&r);
    let v: Value = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(v["ready"], true, "{v}");
    assert_eq!(v["http_status"], 200, "{v}");
}

/// A play refused because one still runs says what to wait for, and `stop --wait` returns only
/// once the gateway reported PLAY_STOPPED: the next play is accepted at once.
#[tokio::test]
async fn stop_wait_ends_with_play_stopped_and_a_state_error_says_what_to_wait_for() {
    let h = Harness::start().await;
    h.sign_in("1001").await;
    let play = ["play", "--agent", "1001", "--voice-path", "/prompts/a.wav"];
    ok(&run(&h, &play).await);
    let refused = run(&h, &play).await;
    assert_eq!(refused.code, Some(1), "{}", refused.stderr);
    assert!(
        refused.stderr.contains("STATE_ERROR")
            && refused
                .stderr
                .contains("hint: a playback is still running or stopping")
            && refused.stderr.contains("call stop --wait"),
        "{}",
        refused.stderr
    );
    let stop = run(&h, &["stop", "--agent", "1001", "--wait"]).await;
    ok(&stop);
    assert!(stop.stdout.contains("PLAY_STOPPED"), "{}", stop.stdout);
    ok(&run(&h, &play).await);
}

/// `call` without --ca-cert towards a bridge serving TLS says to pass it, instead of a bare
/// "broken pipe" or "frame with invalid size".
#[tokio::test]
async fn plaintext_towards_a_tls_bridge_hints_at_ca_cert() {
    use ccgw_bridge::config::ServerTls;
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let h = Harness::with(helpers::fast_sim(), |c| {
        c.server.tls = Some(ServerTls {
            cert: cert.pem().into_bytes(),
            key: key.serialize_pem().into_bytes(),
            client_ca: None,
        });
    })
    .await;
    let r = run(&h, &["sessions"]).await;
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(
        r.stderr.contains("hint:") && r.stderr.contains("pass --ca-cert"),
        "{}",
        r.stderr
    );
}
