//! The processes under test: the simulator (`ccgw-bridge simulate`), the bridge (the release
//! `ccgw-bridge` binary) and the baselines (`ccgw-bench __serve`), started on loopback, observed
//! through `/proc`, killed on drop.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tonic::transport::Endpoint;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The `ccgw-bridge` release binary next to this benchmark's own executable.
pub fn bridge_binary() -> Result<PathBuf, BoxError> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .ok_or("the benchmark executable has no directory")?;
    let bin = dir.join("ccgw-bridge");
    if !bin.is_file() {
        return Err(format!(
            "{} is missing: build both binaries first with `cargo build --release --bins`",
            bin.display()
        )
        .into());
    }
    Ok(bin)
}

/// A child process killed (SIGKILL) and reaped when dropped.
pub struct Proc {
    child: Child,
    /// Its pid, for `/proc`.
    pub pid: u32,
    /// Where its stderr (logs) goes.
    pub log: PathBuf,
    /// When `spawn` was called.
    pub spawned_at: Instant,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    /// CPU time (user + system) consumed so far, from `/proc/<pid>/stat`.
    pub fn cpu(&self) -> Duration {
        cpu_of(&format!("/proc/{}/stat", self.pid))
    }

    /// Resident set size in KiB, from `/proc/<pid>/status`.
    pub fn rss_kib(&self) -> u64 {
        rss_of(&format!("/proc/{}/status", self.pid))
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends `sig` (e.g. `libc::SIGTERM`) to the process.
    pub fn signal(&self, sig: libc::c_int) -> Result<(), BoxError> {
        let pid = libc::pid_t::try_from(self.pid)?;
        // SAFETY: kill(2) with a pid we spawned and have not reaped yet (the child is reaped
        // only in `wait_exit` or on drop), so the pid cannot name another process.
        if unsafe { libc::kill(pid, sig) } != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        Ok(())
    }

    /// Waits (polling every 20 ms, at most `limit`) until the process exited; its exit status.
    pub async fn wait_exit(
        &mut self,
        limit: Duration,
    ) -> Result<std::process::ExitStatus, BoxError> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "pid {} did not exit within {limit:?}; its log:\n{}",
                    self.pid,
                    self.log_tail()
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The last lines of its log, for error messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }
}

/// Clock ticks per second for `/proc/<pid>/stat` (`getconf CLK_TCK`, 100 almost everywhere).
pub fn clk_tck() -> u64 {
    static TCK: OnceLock<u64> = OnceLock::new();
    *TCK.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .filter(|&t| t > 0)
            .unwrap_or(100)
    })
}

fn cpu_of(stat_path: &str) -> Duration {
    let text = std::fs::read_to_string(stat_path).unwrap_or_default();
    // Fields after the command name (which may contain spaces) in parentheses.
    let rest = text.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime is field 14, stime field 15 of the file; `rest` starts at field 3.
    let total = ticks(11) + ticks(12);
    Duration::from_nanos(total * 1_000_000_000 / clk_tck())
}

fn rss_of(status_path: &str) -> u64 {
    std::fs::read_to_string(status_path)
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// CPU time of the benchmark process itself.
pub fn self_cpu() -> Duration {
    cpu_of("/proc/self/stat")
}

/// CPU time the whole machine spent in user and system mode (all CPUs, `/proc/stat` user +
/// nice + system; interrupts and steal are left out), to see load from processes other than the
/// three of the benchmark.
pub fn machine_busy() -> Duration {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let line = text.lines().next().unwrap_or("");
    let busy: u64 = line
        .split_whitespace()
        .skip(1)
        .take(3)
        .filter_map(|f| f.parse::<u64>().ok())
        .sum();
    Duration::from_nanos(busy * 1_000_000_000 / clk_tck())
}

/// Other processes may use at most this much of one core (%) during a measured window.
pub const FOREIGN_LIMIT: f64 = 25.0;

/// Waits (bounded) until processes other than the benchmark's use less than [`FOREIGN_LIMIT`]
/// of one core over a one-second window (the bench itself must be idle meanwhile).
pub async fn wait_quiet(limit: Duration) -> bool {
    let start = Instant::now();
    loop {
        let (t0, b0) = (Instant::now(), machine_busy());
        tokio::time::sleep(Duration::from_secs(1)).await;
        let busy = machine_busy().saturating_sub(b0);
        let pct = 100.0 * busy.as_secs_f64() / t0.elapsed().as_secs_f64();
        if pct < FOREIGN_LIMIT {
            return true;
        }
        if start.elapsed() >= limit {
            eprintln!("ccgw-bench: the machine is still busy ({pct:.0}% of a core used by other processes); measuring anyway — see the 'other processes' rows");
            return false;
        }
        eprintln!(
            "ccgw-bench: other processes use {pct:.0}% of a core; waiting for a quiet machine"
        );
    }
}

/// CPU time counters of the three processes (and the machine) at one instant.
#[derive(Clone, Copy)]
pub struct CpuSample {
    pub at: Instant,
    pub bridge: Duration,
    pub sim: Duration,
    pub bench: Duration,
    pub machine: Duration,
}

impl CpuSample {
    pub fn take(bridge: &Proc, sim: &Proc) -> CpuSample {
        CpuSample {
            at: Instant::now(),
            bridge: bridge.cpu(),
            sim: sim.cpu(),
            bench: self_cpu(),
            machine: machine_busy(),
        }
    }
}

/// CPU consumed between two samples, accumulated over several windows.
#[derive(Clone, Copy, Default, Debug)]
pub struct CpuUse {
    pub wall: Duration,
    pub bridge: Duration,
    pub sim: Duration,
    pub bench: Duration,
    pub machine: Duration,
}

impl CpuUse {
    pub fn add(&mut self, from: CpuSample, to: CpuSample) {
        self.wall += to.at - from.at;
        self.bridge += to.bridge - from.bridge;
        self.sim += to.sim - from.sim;
        self.bench += to.bench - from.bench;
        self.machine += to.machine.saturating_sub(from.machine);
    }

    /// Machine CPU used by other processes (not bridge, simulator or bench), in % of one core.
    pub fn foreign_pct(&self) -> f64 {
        let ours = self.bridge + self.sim + self.bench;
        Self::pct(self.machine.saturating_sub(ours), self.wall)
    }

    /// Share of one core, in percent.
    pub fn pct(d: Duration, wall: Duration) -> f64 {
        if wall.is_zero() {
            0.0
        } else {
            100.0 * d.as_secs_f64() / wall.as_secs_f64()
        }
    }
}

/// Spawns `cmd` (stdin and stdout closed) with its stderr in a log named `name`.
pub fn spawn_logged(mut cmd: Command, name: &str) -> Result<Proc, BoxError> {
    let log = log_path(name);
    let spawned_at = Instant::now();
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .map_err(|e| format!("{:?} does not start: {e}", cmd.get_program()))?;
    let pid = child.id();
    Ok(Proc {
        child,
        pid,
        log,
        spawned_at,
    })
}

fn log_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("ccgw-bench-{}-{name}.log", std::process::id()))
}

/// A command for the bridge binary with a clean environment: no `CCGW_*` variable of the caller
/// leaks in, and logging stays at its production default (info).
pub fn command(bin: &Path) -> Command {
    let mut cmd = Command::new(bin);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("CCGW_") {
            cmd.env_remove(&key);
        }
    }
    cmd.env_remove("RUST_LOG");
    cmd
}

/// A running simulator and what it printed.
pub struct Sim {
    pub proc: Proc,
    pub url: String,
    pub ca: PathBuf,
}

/// Starts `ccgw-bridge simulate` on an ephemeral loopback port.
pub fn start_sim(bin: &Path, poll_hold: &str, play_duration: &str) -> Result<Sim, BoxError> {
    start_sim_with(bin, poll_hold, play_duration, &[])
}

/// [`start_sim`] with `extra` flags for the simulator.
pub fn start_sim_with(
    bin: &Path,
    poll_hold: &str,
    play_duration: &str,
    extra: &[&str],
) -> Result<Sim, BoxError> {
    let mut cmd = command(bin);
    cmd.args(["simulate", "--listen", "127.0.0.1:0"])
        .args(["--poll-hold", poll_hold, "--play-duration", play_duration])
        .args(extra);
    let (proc, lines) = spawn_announcing(cmd, "sim", &["url=", "ca="], Duration::from_secs(20))?;
    Ok(Sim {
        proc,
        url: lines[0].clone(),
        ca: PathBuf::from(&lines[1]),
    })
}

/// Spawns `cmd` with its stderr in a log named `name` and waits until its stdout has printed a
/// line starting with each of `keys`; returns the rest of those lines, in the order of `keys`.
fn spawn_announcing(
    mut cmd: Command,
    name: &str,
    keys: &[&str],
    limit: Duration,
) -> Result<(Proc, Vec<String>), BoxError> {
    let log = log_path(name);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log)?)
        .spawn()?;
    let pid = child.id();
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let proc = Proc {
        child,
        pid,
        log,
        spawned_at: Instant::now(),
    };
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        // Forward the first lines, then keep draining so the child never blocks on stdout.
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    let mut found: Vec<Option<String>> = vec![None; keys.len()];
    let deadline = Instant::now() + limit;
    while found.iter().any(Option::is_none) {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx.recv_timeout(left).map_err(|_| {
            format!(
                "{name} printed no {keys:?} lines within {limit:?}; its log:\n{}",
                proc.log_tail()
            )
        })?;
        for (k, slot) in keys.iter().zip(found.iter_mut()) {
            if let Some(v) = line.strip_prefix(k) {
                *slot = Some(v.to_owned());
            }
        }
    }
    Ok((proc, found.into_iter().flatten().collect()))
}

/// A baseline server (`ccgw-bench __serve KIND`, see `baseline.rs`) and its gRPC URL.
pub struct Baseline {
    pub proc: Proc,
    pub url: String,
}

/// Starts a baseline server of `kind` (`relay`, `echo`, `broadcast`) in its own process; a relay
/// signs agents `first .. first+count` in at `sim` before it announces itself.
pub fn start_baseline(
    kind: &str,
    sim: &Sim,
    first: usize,
    count: usize,
) -> Result<Baseline, BoxError> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args(["__serve", kind, "--sim-url", &sim.url])
        .arg("--ca")
        .arg(&sim.ca)
        .args(["--first", &first.to_string(), "--count", &count.to_string()]);
    let (proc, lines) = spawn_announcing(cmd, kind, &["url="], Duration::from_secs(60))?;
    Ok(Baseline {
        proc,
        url: lines[0].clone(),
    })
}

/// A free loopback port (bound and released; the race with other programs is accepted).
pub fn free_port() -> Result<u16, BoxError> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Extra environment variables and flags for every bridge process (`--bridge-env`,
/// `--bridge-arg`), for A/B experiments such as `TOKIO_WORKER_THREADS=1`.
#[derive(Default, Debug)]
pub struct BridgeExtra {
    pub env: Vec<(String, String)>,
    pub args: Vec<String>,
}

/// Set once by `main`.
pub static BRIDGE_EXTRA: OnceLock<BridgeExtra> = OnceLock::new();

/// A running bridge.
pub struct Bridge {
    pub proc: Proc,
    /// `http://127.0.0.1:PORT` of the gRPC API.
    pub url: String,
    /// `http://127.0.0.1:PORT` of the admin listener (`/metrics`).
    pub admin_url: String,
}

/// Starts the bridge binary in front of `sim` (no agents); `extra` are additional flags.
pub fn spawn_bridge(bin: &Path, sim: &Sim, extra: &[&str]) -> Result<Bridge, BoxError> {
    let listen = format!("127.0.0.1:{}", free_port()?);
    let admin = format!("127.0.0.1:{}", free_port()?);
    let log = log_path(&format!("bridge-{}", free_port()?));
    let ca = sim.ca.to_string_lossy().into_owned();
    let more = BRIDGE_EXTRA.get_or_init(BridgeExtra::default);
    let spawned_at = Instant::now();
    let child = command(bin)
        .args(["--gateway-url", &sim.url, "--ca-cert", &ca])
        .args(["--listen", &listen, "--admin-listen", &admin])
        .args(extra)
        .args(&more.args)
        .envs(more.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()?;
    let pid = child.id();
    Ok(Bridge {
        proc: Proc {
            child,
            pid,
            log,
            spawned_at,
        },
        url: format!("http://{listen}"),
        admin_url: format!("http://{admin}"),
    })
}

/// Waits until the bridge's gRPC health (overall service `""`) answers SERVING; returns the time
/// from spawning the process to that answer. Polls every 0.5 ms.
pub async fn wait_serving(bridge: &mut Bridge, limit: Duration) -> Result<Duration, BoxError> {
    let endpoint = Endpoint::from_shared(bridge.url.clone())?
        .connect_timeout(Duration::from_millis(200))
        .tcp_nodelay(true);
    let deadline = Instant::now() + limit;
    let mut client = None;
    let debug = std::env::var_os("CCGW_BENCH_DEBUG").is_some();
    loop {
        if Instant::now() > deadline || !bridge.proc.alive() {
            return Err(format!(
                "the bridge did not become SERVING within {limit:?}; its log:\n{}",
                bridge.proc.log_tail()
            )
            .into());
        }
        if client.is_none() {
            if let Ok(channel) = endpoint.connect().await {
                if debug {
                    eprintln!(
                        "wait_serving: connected at {:?}",
                        bridge.proc.spawned_at.elapsed()
                    );
                }
                client = Some(HealthClient::new(channel));
            }
        }
        if let Some(c) = client.as_mut() {
            let answer = c
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await;
            match answer {
                Ok(r) if r.get_ref().status == ServingStatus::Serving as i32 => {
                    return Ok(bridge.proc.spawned_at.elapsed());
                }
                Ok(r) => {
                    if debug {
                        eprintln!(
                            "wait_serving: {:?} at {:?}",
                            r.get_ref().status,
                            bridge.proc.spawned_at.elapsed()
                        );
                    }
                }
                Err(_) => client = None,
            }
        }
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
}

/// Starts the bridge and waits for SERVING.
pub async fn start_bridge(bin: &Path, sim: &Sim, extra: &[&str]) -> Result<Bridge, BoxError> {
    let mut bridge = spawn_bridge(bin, sim, extra)?;
    wait_serving(&mut bridge, Duration::from_secs(30)).await?;
    Ok(bridge)
}
