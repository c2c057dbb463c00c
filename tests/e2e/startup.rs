//! The binary as an operator starts it: the `--simulate` demo on a read-only root, the exit
//! after the drain, and start-up errors that say what to do (exit 64 before any port is bound,
//! naming the flag and the file).

use crate::helpers::play_request;
use crate::ops::{health_watch, until_status};
use clap::Parser;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tonic_health::pb::health_check_response::ServingStatus;

const BIN: &str = env!("CARGO_BIN_EXE_ccgw-bridge");

/// The binary with no `CCGW_*` variable and no `RUST_LOG` inherited.
fn bridge_cmd() -> Command {
    let mut cmd = Command::new(BIN);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("CCGW_") {
            cmd.env_remove(name);
        }
    }
    cmd.env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

/// A bridge process whose JSON log lines arrive, timestamped on arrival, on `lines`.
struct Running {
    child: Child,
    lines: mpsc::UnboundedReceiver<(Instant, serde_json::Value)>,
    /// Every line so far, for failure messages.
    seen: Vec<String>,
}

impl Running {
    /// Starts `cmd` (which must log JSON to stderr) and follows its log.
    fn spawn(mut cmd: Command) -> Running {
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the binary starts");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                let value = serde_json::from_str(&line)
                    .unwrap_or_else(|_| serde_json::Value::String(line.clone()));
                if tx.send((Instant::now(), value)).is_err() {
                    break;
                }
            }
        });
        Running {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits (bounded) for the log line whose message is `message`; returns it and when it came.
    async fn until(&mut self, message: &str) -> (Instant, serde_json::Value) {
        let limit = Duration::from_secs(30);
        loop {
            match tokio::time::timeout(limit, self.lines.recv()).await {
                Ok(Some((at, line))) => {
                    self.seen.push(line.to_string());
                    if line["fields"]["message"] == message {
                        return (at, line);
                    }
                }
                Ok(None) => panic!(
                    "the process ended its log before {message:?} (exit {:?}):\n{}",
                    self.child.try_wait(),
                    self.seen.join("\n")
                ),
                Err(_) => panic!("no {message:?} within {limit:?}:\n{}", self.seen.join("\n")),
            }
        }
    }

    /// The admin address, from the start-up line.
    async fn admin(&mut self) -> SocketAddr {
        let (_, serving) = self.until("ccgw-bridge serving").await;
        serving["fields"]["admin"]
            .as_str()
            .expect("the start-up line names the admin address")
            .parse()
            .unwrap()
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.id().unwrap().to_string();
        assert!(std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
            .success());
    }
}

/// `--simulate` on ephemeral ports with JSON logs, and `extra` arguments.
fn simulate(extra: &[&str]) -> Command {
    let mut cmd = bridge_cmd();
    cmd.args(["--simulate", "--log-format", "json"])
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .args(extra);
    cmd
}

/// A container's read-only root filesystem has no writable temp directory (Kubernetes mounts no
/// tmpfs there): the `--simulate` demo must start, serve and drain without writing a file.
/// (It wrote the simulator's CA to $TMPDIR and exited 69, "Read-only file system", before.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_simulate_demo_needs_no_writable_temp_directory() {
    let tmp = std::env::temp_dir().join(format!("ccgw-no-such-dir-{}", std::process::id()));
    assert!(!tmp.exists());
    let mut cmd = simulate(&[]);
    cmd.env("TMPDIR", &tmp);
    let mut p = Running::spawn(cmd);
    let admin = p.admin().await;
    let mut health = health_watch(admin, "ccgw.v1.RecordPlayService").await;
    until_status(&mut health, ServingStatus::Serving).await;
    p.signal("-TERM");
    p.until("drained").await;
    let exit = tokio::time::timeout(Duration::from_secs(10), p.child.wait())
        .await
        .expect("exits after the drain")
        .unwrap();
    assert!(exit.success(), "{exit:?}\n{}", p.seen.join("\n"));
    assert!(!tmp.exists(), "nothing created the temp directory");
}

/// A drain with nothing in flight ends at once, although a client still watches health on the
/// admin port (a monitoring system's `Watch`; it held the drain for the whole --drain-timeout),
/// and once `drained` is logged the process exits, while the gateway (a separate simulator
/// holding every poll for 10 s, as the vendor's does) still holds the agent's long poll.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_drain_ends_at_once_and_the_process_exits_with_it() {
    use ccgw_bridge::sim::{SimConfig, Simulator};
    let sim = Simulator::start(SimConfig::default(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let dir = scratch("drain");
    let agents = dir.join("agents.toml");
    let pw = dir.join("pw");
    std::fs::write(&pw, "pw\n").unwrap();
    std::fs::write(
        &agents,
        format!(
            "[[agent]]\nid = \"1001\"\nphone_number = \"88001\"\npassword_file = \"{}\"\n",
            pw.display()
        ),
    )
    .unwrap();
    for f in [&agents, &pw] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let mut cmd = bridge_cmd();
    cmd.args(["--gateway-url", &sim.url()])
        .args(["--ca-cert", sim.ca_path().to_str().unwrap()])
        .args([
            "--agents-file",
            agents.to_str().unwrap(),
            "--log-format",
            "json",
        ])
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"]);
    let mut p = Running::spawn(cmd);
    let admin = p.admin().await;
    let mut health = health_watch(admin, "ccgw.v1.RecordPlayService").await;
    // Ready: the pinned agent is signed in, so its poll is held at the gateway.
    until_status(&mut health, ServingStatus::Serving).await;
    sim.wait_for_request(|r| r.path.contains("/agentevent/"))
        .await;
    p.signal("-TERM");
    let (drained, line) = p.until("drained").await;
    let drain_ms = line["fields"]["elapsed_ms"].as_u64().unwrap();
    assert!(
        drain_ms < 3000,
        "the drain (sign-out of one agent) took {drain_ms} ms of the 10 s --drain-timeout"
    );
    let exit = tokio::time::timeout(Duration::from_secs(10), p.child.wait())
        .await
        .expect("exits after the drain")
        .unwrap();
    let after = drained.elapsed();
    assert!(exit.success(), "{exit:?}");
    // Generous for a loaded 2-core machine.
    assert!(
        after < Duration::from_millis(600),
        "exited {after:?} after logging `drained`"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A scratch directory for files a test writes.
fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ccgw-startup-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A self-signed certificate and its key, PEM.
fn self_signed(name: &str) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    (cert.pem(), key.serialize_pem())
}

/// Runs the binary to completion with `args` while the `--listen` port is held by someone
/// else: a bridge that bound before checking would fail with 69 ("cannot listen").
async fn refused(args: &[&str]) -> (Option<i32>, String) {
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        bridge_cmd()
            .args(args)
            .args(["--listen", &held.local_addr().unwrap().to_string()])
            .args(["--admin-listen", "127.0.0.1:0"])
            .output(),
    )
    .await
    .expect("exits")
    .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Bad TLS material is a configuration error: exit 64 before any port is bound, one line naming
/// the flag and the file (it was exit 69, "transport error", after binding).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tls_material_exits_64_naming_the_file_before_binding() {
    let dir = scratch("tls");
    let (cert, key) = self_signed("localhost");
    let (_, other_key_pem) = self_signed("localhost");
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let files = [
        write("cert.pem", &cert),
        write("key.pem", &key),
        write("other-key.pem", &other_key_pem),
        write("garbage.pem", "not a certificate\n"),
        write("key-as-cert.pem", &key),
    ];
    let [good_cert, good_key, other_key, garbage, key_as_cert] =
        files.each_ref().map(String::as_str);
    let cases: [(Vec<&str>, &str, &str); 5] = [
        (
            vec!["--tls-cert", garbage, "--tls-key", good_key],
            "--tls-cert",
            garbage,
        ),
        (
            vec!["--tls-cert", key_as_cert, "--tls-key", good_key],
            "--tls-cert",
            key_as_cert,
        ),
        (
            vec!["--tls-cert", good_cert, "--tls-key", garbage],
            "--tls-key",
            garbage,
        ),
        (
            vec!["--tls-cert", good_cert, "--tls-key", other_key],
            "--tls-key",
            other_key,
        ),
        (
            vec![
                "--tls-cert",
                good_cert,
                "--tls-key",
                good_key,
                "--tls-client-ca",
                garbage,
            ],
            "--tls-client-ca",
            garbage,
        ),
    ];
    for (args, flag, file) in &cases {
        let mut all = vec!["--simulate"];
        all.extend(args.iter().copied());
        let (code, err) = refused(&all).await;
        assert_eq!(code, Some(64), "{args:?}: {err}");
        assert!(
            err.contains(flag) && err.contains(file),
            "{args:?}: names {flag} and {file}: {err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    }
    // The gateway's side too: --ca-cert and --client-cert/--client-key.
    for (args, flag, file) in [
        (
            vec!["--gateway-url", "https://127.0.0.1:1", "--ca-cert", garbage],
            "--ca-cert",
            garbage,
        ),
        (
            vec![
                "--gateway-url",
                "https://127.0.0.1:1",
                "--client-cert",
                good_cert,
                "--client-key",
                other_key,
            ],
            "--client-key",
            other_key,
        ),
    ] {
        let (code, err) = refused(&args).await;
        assert_eq!(code, Some(64), "{args:?}: {err}");
        assert!(
            err.contains(flag) && err.contains(file),
            "{args:?}: names {flag} and {file}: {err}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `--simulate --events push` (issue 24): the two-command demo in push mode, on ephemeral
/// ports: a play with `await_outcome` gets its outcome from pushed events, counted as accepted
/// callbacks, and the simulated agent is never polled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_simulate_demo_runs_in_push_mode() {
    let mut p = Running::spawn(simulate(&[
        "--events",
        "push",
        "--callback-listen",
        "127.0.0.1:0",
    ]));
    let (_, serving) = p.until("ccgw-bridge serving").await;
    let listen = serving["fields"]["listen"].as_str().unwrap().to_owned();
    let admin: SocketAddr = serving["fields"]["admin"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    p.until("readiness changed: ready").await;
    let mut play =
        ccgw_bridge::proto::record_play_service_client::RecordPlayServiceClient::connect(format!(
            "http://{listen}"
        ))
        .await
        .unwrap();
    let begun = play
        .begin_play(ccgw_bridge::proto::BeginPlayRequest {
            await_outcome: true,
            ..play_request("1001")
        })
        .await
        .expect("BeginPlay in the push demo")
        .into_inner();
    assert!(begun.outcome_sequence.is_some(), "{begun:?}");
    ccgw_bridge::crypto::install_crypto_provider();
    let metrics = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let accepted = metrics
        .lines()
        .find_map(|l| l.strip_prefix("ccgw_callbacks_total{outcome=\"accepted\"} "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .expect("the callback metric");
    assert!(accepted >= 1, "events were pushed: {metrics}");
    let polls = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix(
                "ccgw_gateway_requests_total{interface=\"getAgentEvent\",retcode=\"0\"} ",
            )
        })
        .unwrap_or("0");
    assert_eq!(polls.trim(), "0", "no poll in push mode");
    p.signal("-TERM");
    p.until("drained").await;
}

/// Push mode's flags are checked before any port is bound: exit 64, one line, with a hint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_flags_are_refused_before_binding_with_hints() {
    let dir = scratch("push");
    let (cert, key) = self_signed("10.0.0.7");
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    std::fs::write(&cert_path, cert).unwrap();
    std::fs::write(&key_path, key).unwrap();
    let (cert_path, key_path) = (cert_path.to_str().unwrap(), key_path.to_str().unwrap());
    let gateway = ["--gateway-url", "https://127.0.0.1:1"];
    let tls = ["--callback-cert", cert_path, "--callback-key", key_path];
    let long = format!("https://10.0.0.7:9443/{}", "p".repeat(172));
    let cases: Vec<(Vec<&str>, &[&str])> = vec![
        (vec!["--events", "push"], &["--callback-url", "pod IP"]),
        (
            vec![
                "--events",
                "push",
                "--callback-url",
                "http://10.0.0.7:9443/cb",
            ],
            &["must be https", "TLS 1.2"],
        ),
        (
            vec!["--events", "push", "--callback-url", &long],
            &["200", "shorten"],
        ),
        (
            vec![
                "--events",
                "push",
                "--callback-url",
                "https://0.0.0.0:9443/cb",
            ],
            &["0.0.0.0", "status.podIP"],
        ),
        (
            vec![
                "--events",
                "push",
                "--callback-url",
                "https://10.0.0.7:9443/cb?x=1",
            ],
            &["query"],
        ),
        (
            vec![
                "--events",
                "push",
                "--callback-url",
                "https://10.0.0.7:9443/cb",
            ],
            &["--callback-cert"],
        ),
        (
            vec!["--callback-url", "https://10.0.0.7:9443/cb"],
            &["--events push"],
        ),
        (
            vec![
                "--events",
                "push",
                "--callback-url",
                "https://10.0.0.7:9443/cb",
                "--heartbeat-interval",
                "90s",
            ],
            &["--heartbeat-interval", "a third"],
        ),
    ];
    for (args, hints) in &cases {
        let mut all: Vec<&str> = gateway.to_vec();
        all.extend(args.iter().copied());
        if args.contains(&"--heartbeat-interval") {
            all.extend(tls);
        }
        let (code, err) = refused(&all).await;
        assert_eq!(code, Some(64), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        for hint in *hints {
            assert!(err.contains(hint), "{args:?}: says {hint:?}: {err}");
        }
    }
    // 200 characters with the id is accepted (parses and validates; the run then starts).
    let fits = format!("https://10.0.0.7:9443/{}", "p".repeat(171));
    assert_eq!(fits.len() + 1 + 6, 200);
    let cli = ccgw_bridge::args::Cli::try_parse_from(
        ["ccgw-bridge", "--events", "push", "--callback-url", &fits]
            .into_iter()
            .chain(gateway)
            .chain(tls),
    )
    .unwrap();
    assert!(cli.bridge.validate(None).is_ok());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `--simulate` starts a gateway of the process's own: with `--etcd-endpoints`, each replica
/// would get its own gateway and the pool would share nothing. Refused, with the way to share one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulate_with_etcd_endpoints_is_refused_with_a_hint() {
    let (code, err) = refused(&[
        "--simulate",
        "--etcd-endpoints",
        "http://127.0.0.1:2379",
        "--instance-name",
        "a",
    ])
    .await;
    assert_eq!(code, Some(64), "{err}");
    assert!(
        err.contains("--simulate") && err.contains("--etcd-endpoints"),
        "{err}"
    );
    assert!(
        err.contains("ccgw-bridge simulate") && err.contains("--gateway-url"),
        "the hint says how replicas share one simulated gateway: {err}"
    );
}

/// The local recipe of docs/running-replicas.md without a copied random path: `simulate
/// --ca-out FILE` writes the CA where the bridges' `--ca-cert` expects it, and an agents file's
/// relative `password_file` is found beside it, whatever the bridge's working directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulate_ca_out_and_a_relative_password_file_make_the_local_recipe() {
    let dir = scratch("recipe");
    let ca = dir.join("sim-ca.pem");
    let mut sim = bridge_cmd()
        .args(["simulate", "--listen", "127.0.0.1:0", "--ca-out"])
        .arg(&ca)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(sim.stdout.take().unwrap()).lines();
    let mut printed = Vec::new();
    for _ in 0..2 {
        let line = tokio::time::timeout(Duration::from_secs(30), out.next_line())
            .await
            .expect("simulate prints url= and ca=")
            .unwrap()
            .expect("simulate still running");
        printed.push(line);
    }
    let url = printed[0]
        .strip_prefix("url=")
        .expect("url= first")
        .to_owned();
    assert_eq!(printed[1], format!("ca={}", ca.display()));
    assert!(std::fs::read_to_string(&ca)
        .unwrap()
        .starts_with("-----BEGIN CERTIFICATE-----"));
    let private = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path
    };
    private("agent.pw", "any\n");
    let agents = private(
        "agents.toml",
        "[[agent]]\nid = \"1001\"\nphone_number = \"81001\"\npassword_file = \"agent.pw\"\n",
    );
    let mut cmd = bridge_cmd();
    cmd.args(["--gateway-url", &url, "--log-format", "json"])
        .arg("--ca-cert")
        .arg(&ca)
        .arg("--agents-file")
        .arg(&agents)
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .current_dir("/");
    let mut bridge = Running::spawn(cmd);
    let admin = bridge.admin().await;
    // Ready only once its agent is signed in: the password file was found.
    let mut health = health_watch(admin, "ccgw.v1.RecordPlayService").await;
    until_status(&mut health, ServingStatus::Serving).await;
    bridge.signal("-TERM");
    bridge.until("drained").await;
    sim.kill().await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// An agents file that lists no agent (a wrong or emptied file) is a mistake, not a bridge
/// without agents: refused at start, saying what it must hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agents_file_listing_no_agent_is_refused() {
    let dir = scratch("no-agents");
    let agents = dir.join("agents.toml");
    std::fs::write(&agents, "# agents go here\n").unwrap();
    std::fs::set_permissions(&agents, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (code, err) = refused(&[
        "--gateway-url",
        "https://127.0.0.1:8043",
        "--agents-file",
        agents.to_str().unwrap(),
    ])
    .await;
    assert_eq!(code, Some(64), "{err}");
    assert!(
        err.contains("lists no agent") && err.contains("[[agent]]"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
