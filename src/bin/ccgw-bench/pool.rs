//! Scenario `pool`: the agent pool measured end to end with real processes — one etcd, the
//! simulator (in this process, so its per-agent state can be read directly), and R release
//! bridges built with the `pool` feature, each with an agents file listing all N agents.
//!
//! Phases: cold start; SIGTERM of one replica (hand-over); SIGKILL of one (take-over after the
//! lease expires); a rolling restart of all. A sampler reads every agent's current Guid at the
//! simulator every [`SAMPLE`]: an agent is *served* while a bridge's session is current, and its
//! *gap* is the time from its old session's end to its new session's sign-in (a direct change
//! between two samples counts as no gap, so gaps are exact to one sample). Sign-ins and
//! `forcelogin`s come from the simulator's own counters and session ends; etcd's requests,
//! bytes and DB size from etcd's `/metrics`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ccgw_bridge::proto::agent_session_service_client::AgentSessionServiceClient;
use ccgw_bridge::proto::{ListSessionsRequest, SessionState};
use ccgw_bridge::sim::{EndCause, SimConfig, Simulator};

use crate::procs::{self, BoxError, Proc};
use crate::report::{mib, round, Report, Samples};

pub struct Opts {
    pub agents: usize,
    pub replicas: usize,
    /// Push mode (`--events push`): every bridge with its own callback listener, certificate
    /// and `--callback-url`; no bridge holds a long poll per agent.
    pub push: bool,
    /// `--lease-ttl` of every bridge (the bridge's default).
    pub lease_ttl: Duration,
    /// etcd binary; default `.venv/bin/etcd` of the source tree, then `etcd` on PATH.
    pub etcd_bin: Option<PathBuf>,
}

/// Agents in the pool unless `--agents` says otherwise: the size issue 23 asks for.
pub const DEFAULT_AGENTS: usize = 30_000;
/// How often the sampler reads every agent's Guid: the resolution of every gap and time.
const SAMPLE: Duration = Duration::from_millis(100);
/// Prefix of the pool's keys in etcd.
const PREFIX: &str = "/ccgw-bench/";
/// First agent id (numeric: the gateway only routes numeric ids).
const FIRST_ID: usize = 800_000;
/// RSS formula of docs/memory.md without watchers: 12 MiB + 1.5 × the default 16 MiB event
/// budget, plus [`KIB_PER_AGENT`] per signed-in agent, plus the pool's mirror,
/// [`KIB_PER_POOL_AGENT`] per agent of the pool (docs/running-replicas.md, sizing).
const RSS_BASE_KIB: f64 = 36.0 * 1024.0;
const KIB_PER_AGENT: f64 = 42.0;
/// The same in push mode: issue 24's target per signed-in agent (`ccgw-bench push` measures it).
const KIB_PER_PUSH_AGENT: f64 = 8.0;
const KIB_PER_POOL_AGENT: f64 = 0.15;

pub async fn run(bin: &Path, opts: &Opts) -> Result<Report, BoxError> {
    if opts.replicas < 2 || opts.agents == 0 {
        return Err("pool needs --replicas ≥ 2 and --agents ≥ 1".into());
    }
    let nofile = raise_nofile(opts)?;
    let dir = TempDir::new()?;
    let mut report = Report::new("pool");
    let etcd = Etcd::start(&etcd_bin(opts)?, &dir.0).await?;
    let callback_ca = opts
        .push
        .then(|| crate::push::CallbackCa::new("pool"))
        .transpose()?;
    let sim = Arc::new(start_sim(callback_ca.as_ref()).await?);
    let ids: Arc<Vec<String>> = Arc::new(
        (FIRST_ID..FIRST_ID + opts.agents)
            .map(|i| i.to_string())
            .collect(),
    );
    let tracker = Tracker::spawn(Arc::clone(&sim), Arc::clone(&ids));
    let setup = Setup {
        bin: bin.to_owned(),
        sim_url: sim.url(),
        ca: sim.ca_file()?.to_owned(),
        agents_file: agents_file(&dir.0, &ids)?,
        key_file: key_file(&dir.0)?,
        etcd_url: etcd.url.clone(),
        ttl: opts.lease_ttl,
        callback_ca,
    };
    let mut bench = Bench {
        opts,
        setup,
        sim,
        ids,
        tracker,
        bridges: Vec::new(),
        etcd,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()?,
    };
    let result = bench.phases(&mut report).await;
    report.notes.push(format!(
        "etcd runs with --unsafe-no-fsync (a bench, not a durability test); RLIMIT_NOFILE {nofile} for this process (the simulator) and the bridges; logs in {}",
        std::env::temp_dir().display()
    ));
    if let Err(e) = result {
        let logs: Vec<String> = bench
            .bridges
            .iter()
            .map(|b| b.proc.log.display().to_string())
            .collect();
        return Err(format!("{e} (bridge logs: {})", logs.join(" ")).into());
    }
    Ok(report)
}

/// Raises this process's `RLIMIT_NOFILE` (the bridges inherit it) to what the run needs: in
/// poll mode the simulator holds one HTTPS connection per agent (the bridges' gateway client is
/// HTTP/1.1, one connection per long poll), a bridge one per agent it holds (N / (R − 1) during
/// a take-over, below the simulator's need); in push mode no connection is held per agent
/// (heartbeats share a few lanes per bridge), so a quarter per agent is margin for the
/// sign-ins' and callbacks' own. Fails at once, with the limit to ask for, when the hard limit
/// is too low and cannot be raised here (no `CAP_SYS_RESOURCE`).
fn raise_nofile(opts: &Opts) -> Result<u64, BoxError> {
    let per_agent = if opts.push {
        opts.agents / 4
    } else {
        opts.agents
    };
    let need = (per_agent + 4096) as u64;
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid, initialised struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        let max = need.max(lim.rlim_max);
        let wanted = libc::rlimit {
            rlim_cur: max,
            rlim_max: max,
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) == 0 {
            return Ok(max);
        }
        let soft = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        if lim.rlim_max >= need && libc::setrlimit(libc::RLIMIT_NOFILE, &soft) == 0 {
            return Ok(lim.rlim_max);
        }
    }
    Err(format!(
        "{} agents need {need} file descriptors in this process (the simulator holds one connection per agent), but the hard limit is {} and cannot be raised here: raise it where the bench runs (`ulimit -Hn {need}` as root with CAP_SYS_RESOURCE, `prlimit --nofile={need}:{need}`, or docker --ulimit nofile={need}:{need}), or run fewer --agents (at most {} here)",
        opts.agents,
        lim.rlim_max,
        lim.rlim_max.saturating_sub(4096)
    )
    .into())
}

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<TempDir, BoxError> {
        let dir = std::env::temp_dir().join(format!("ccgw-bench-{}-pool", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(TempDir(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn etcd_bin(opts: &Opts) -> Result<PathBuf, BoxError> {
    if let Some(b) = &opts.etcd_bin {
        return Ok(b.clone());
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/etcd");
    if venv.is_file() {
        return Ok(venv);
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("etcd"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default()
        .into_iter()
        .find(|p| p.is_file());
    on_path.ok_or_else(|| {
        format!(
            "no etcd: {} is missing (scripts/test-deps installs it), none on PATH; pass --etcd-bin",
            venv.display()
        )
        .into()
    })
}

/// The simulator: any password, and an idle timeout far beyond the run, so only bridges end
/// sessions; in push mode it trusts the bridges' callback certificates.
async fn start_sim(callback_ca: Option<&crate::push::CallbackCa>) -> Result<Simulator, BoxError> {
    let config = SimConfig {
        idle_timeout: Duration::from_secs(24 * 3600),
        callback_ca_pem: callback_ca
            .map(|ca| std::fs::read_to_string(ca.ca_path()))
            .transpose()?,
        ..SimConfig::default()
    };
    Ok(Simulator::start(config, "127.0.0.1:0".parse()?).await?)
}

/// Writes a file readable by its owner only (the bridge refuses secrets others can read).
fn write_private(path: &Path, text: &str) -> Result<(), BoxError> {
    std::fs::write(path, text)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(())
}

fn agents_file(dir: &Path, ids: &[String]) -> Result<PathBuf, BoxError> {
    let pw = dir.join("pw");
    write_private(&pw, "pw\n")?;
    let mut text = String::new();
    for (i, id) in ids.iter().enumerate() {
        writeln!(
            text,
            "[[agent]]\nid = \"{id}\"\nphone_number = \"8{i:05}\"\npassword_file = {:?}\n",
            pw.display().to_string()
        )?;
    }
    let file = dir.join("agents.toml");
    write_private(&file, &text)?;
    Ok(file)
}

/// The pool key the replicas share (a bench key: fastrand is enough, as in the pool tests).
fn key_file(dir: &Path) -> Result<PathBuf, BoxError> {
    let key: String = (0..32)
        .map(|_| format!("{:02x}", fastrand::u8(..)))
        .collect();
    let file = dir.join("pool.key");
    write_private(&file, &key)?;
    Ok(file)
}

/// One etcd member on loopback.
struct Etcd {
    _proc: Proc,
    url: String,
}

/// What etcd's `/metrics` says at one instant.
#[derive(Clone, Copy, Default)]
struct EtcdSample {
    sent_bytes: f64,
    range: f64,
    txn: f64,
    db_bytes: f64,
}

impl EtcdSample {
    fn requests(&self) -> f64 {
        self.range + self.txn
    }
}

impl Etcd {
    async fn start(bin: &Path, dir: &Path) -> Result<Etcd, BoxError> {
        let url = format!("http://127.0.0.1:{}", procs::free_port()?);
        let peer = format!("http://127.0.0.1:{}", procs::free_port()?);
        let mut cmd = Command::new(bin);
        cmd.args(["--name", "bench"])
            .arg("--data-dir")
            .arg(dir.join("etcd"))
            .args([
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
            ])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("bench={peer}")])
            .arg("--unsafe-no-fsync");
        let mut proc = procs::spawn_logged(cmd, "etcd")?;
        let http = reqwest::Client::new();
        let health = format!("{url}/health");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if http
                .get(&health)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return Ok(Etcd { _proc: proc, url });
            }
            if Instant::now() >= deadline || !proc.alive() {
                return Err(format!(
                    "etcd not healthy within 30 s; its log:\n{}",
                    proc.log_tail()
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn sample(&self, http: &reqwest::Client) -> Result<EtcdSample, BoxError> {
        let text = http
            .get(format!("{}/metrics", self.url))
            .send()
            .await?
            .text()
            .await?;
        let mut s = EtcdSample::default();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((name, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let v: f64 = value.parse().unwrap_or(0.0);
            if name.starts_with("etcd_network_client_grpc_sent_bytes_total") {
                s.sent_bytes += v;
            } else if name.starts_with("etcd_mvcc_db_total_size_in_bytes") {
                s.db_bytes = v;
            } else if name.starts_with("grpc_server_handled_total") {
                if name.contains("grpc_method=\"Range\"") {
                    s.range += v;
                } else if name.contains("grpc_method=\"Txn\"") {
                    s.txn += v;
                }
            }
        }
        Ok(s)
    }
}

/// Per agent, as the sampler last saw it.
#[derive(Default)]
struct Seen {
    guid: Option<String>,
    /// When the agent was first seen without a session since its last one.
    down_since: Option<Instant>,
    /// When its current session was first seen.
    since: Option<Instant>,
}

/// The sampler's record.
#[derive(Default)]
struct Record {
    seen: Vec<Seen>,
    /// Every gap seen (agent index, old session's end → new session seen), in order.
    gaps: Vec<(usize, Duration)>,
}

/// Reads every agent's current Guid at the simulator every [`SAMPLE`].
#[derive(Clone)]
struct Tracker {
    record: Arc<Mutex<Record>>,
}

impl Tracker {
    fn spawn(sim: Arc<Simulator>, ids: Arc<Vec<String>>) -> Tracker {
        let record = Arc::new(Mutex::new(Record {
            seen: (0..ids.len()).map(|_| Seen::default()).collect(),
            gaps: Vec::new(),
        }));
        let weak = Arc::downgrade(&record);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SAMPLE);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tick.tick().await;
                let Some(record) = weak.upgrade() else { return };
                let now = Instant::now();
                let guids: Vec<Option<String>> =
                    ids.iter().map(|id| sim.current_guid(id)).collect();
                lock(&record).update(now, guids);
            }
        });
        Tracker { record }
    }

    fn with<T>(&self, f: impl FnOnce(&Record) -> T) -> T {
        f(&lock(&self.record))
    }

    /// Agents with a current session.
    fn served(&self) -> usize {
        self.with(|r| r.seen.iter().filter(|s| s.guid.is_some()).count())
    }

    /// The current Guid of each agent.
    fn guids(&self) -> Vec<Option<String>> {
        self.with(|r| r.seen.iter().map(|s| s.guid.clone()).collect())
    }

    fn gap_count(&self) -> usize {
        self.with(|r| r.gaps.len())
    }

    /// Gaps recorded since `from` (a [`Tracker::gap_count`]).
    fn gaps_since(&self, from: usize) -> Samples {
        self.with(|r| {
            Samples::new(
                r.gaps[from.min(r.gaps.len())..]
                    .iter()
                    .map(|(_, d)| d.as_nanos() as u64)
                    .collect(),
            )
        })
    }

    /// Whether each agent of `moved` has a session other than its one in `before`; the time
    /// the last of them was first seen.
    fn all_replaced(&self, moved: &[usize], before: &[Option<String>]) -> Option<Instant> {
        self.with(|r| {
            let mut last = None;
            for &i in moved {
                let s = &r.seen[i];
                if s.guid.is_none() || s.guid == before[i] {
                    return None;
                }
                last = last.max(s.since);
            }
            Some(last.unwrap_or_else(Instant::now))
        })
    }

    /// When each agent of `moved` was first seen with its current session.
    fn since(&self, moved: &[usize]) -> Vec<Option<Instant>> {
        self.with(|r| moved.iter().map(|&i| r.seen[i].since).collect())
    }
}

impl Record {
    fn update(&mut self, now: Instant, guids: Vec<Option<String>>) {
        for (i, guid) in guids.into_iter().enumerate() {
            let s = &mut self.seen[i];
            if s.guid == guid {
                continue;
            }
            match (&s.guid, &guid) {
                (Some(_), None) => s.down_since = Some(now),
                (old, Some(_)) => {
                    // Down → up: the gap since the end. Up → up between two samples: below
                    // the resolution. The very first sign-in is no gap.
                    let gap = s.down_since.take().map(|d| now - d);
                    if let Some(gap) = gap.or(old.as_ref().map(|_| Duration::ZERO)) {
                        self.gaps.push((i, gap));
                    }
                    s.since = Some(now);
                }
                (None, None) => {}
            }
            s.guid = guid;
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Settings every bridge of the run shares.
struct Setup {
    bin: PathBuf,
    sim_url: String,
    ca: PathBuf,
    agents_file: PathBuf,
    key_file: PathBuf,
    etcd_url: String,
    ttl: Duration,
    /// Push mode: what signs each bridge's callback certificate.
    callback_ca: Option<crate::push::CallbackCa>,
}

/// One replica.
struct Replica {
    name: String,
    proc: Proc,
    grpc_url: String,
    admin_url: String,
}

impl Setup {
    fn spawn(&self, name: &str) -> Result<Replica, BoxError> {
        let listen = format!("127.0.0.1:{}", procs::free_port()?);
        let admin = format!("127.0.0.1:{}", procs::free_port()?);
        let extra = procs::BRIDGE_EXTRA.get_or_init(procs::BridgeExtra::default);
        let push = match &self.callback_ca {
            Some(ca) => ca.push_flags(name)?,
            None => Vec::new(),
        };
        let mut cmd = procs::command(&self.bin);
        cmd.args(["--gateway-url", &self.sim_url])
            .arg("--ca-cert")
            .arg(&self.ca)
            .args(["--listen", &listen, "--admin-listen", &admin])
            .arg("--agents-file")
            .arg(&self.agents_file)
            .args(["--etcd-endpoints", &self.etcd_url, "--etcd-prefix", PREFIX])
            .args(["--instance-name", name])
            .args(["--lease-ttl", &format!("{}ms", self.ttl.as_millis())])
            .arg("--pool-key-file")
            .arg(&self.key_file)
            .args(&push)
            .args(&extra.args)
            .envs(extra.env.iter().map(|(k, v)| (k, v)));
        let proc = procs::spawn_logged(cmd, &format!("pool-{name}-{}", procs::free_port()?))?;
        Ok(Replica {
            name: name.to_owned(),
            proc,
            grpc_url: format!("http://{listen}"),
            admin_url: format!("http://{admin}"),
        })
    }
}

/// Everything the phases share.
struct Bench<'a> {
    opts: &'a Opts,
    setup: Setup,
    sim: Arc<Simulator>,
    ids: Arc<Vec<String>>,
    tracker: Tracker,
    /// Before `etcd`: fields drop in order, and bridges whose etcd vanished log errors.
    bridges: Vec<Replica>,
    etcd: Etcd,
    http: reqwest::Client,
}

/// What one hand-over or take-over phase measured.
struct Moved {
    agents: usize,
    done: Duration,
    gaps: Samples,
    forcelogins: usize,
    etcd_requests: f64,
    etcd_bytes: f64,
}

impl Bench<'_> {
    /// A bound for waits that scale with the pool: `base` plus 10 ms per agent.
    fn bound(&self, base: u64) -> Duration {
        Duration::from_secs(base) + Duration::from_millis(10 * self.opts.agents as u64)
    }

    async fn phases(&mut self, report: &mut Report) -> Result<(), BoxError> {
        let ttl = self.opts.lease_ttl.as_secs_f64();
        report.info(
            "agents / replicas / lease TTL / events",
            format!(
                "{} / {} / {ttl} s / {}",
                self.opts.agents,
                self.opts.replicas,
                if self.opts.push { "push" } else { "poll" }
            ),
        );
        report.set("events", if self.opts.push { "push" } else { "poll" });
        report.set("agents", self.opts.agents);
        report.set("replicas", self.opts.replicas);
        report.set("lease_ttl_s", ttl);
        let e0 = self.etcd.sample(&self.http).await?;

        self.cold_start(report).await?;
        self.sigterm(report).await?;
        self.sigkill(report).await?;
        self.rolling(report).await?;
        self.settled_rows(report).await?;
        let e9 = self.etcd.sample(&self.http).await?;
        report.info(
            "etcd DB size before / after",
            format!("{} / {} MiB", mib_b(e0.db_bytes), mib_b(e9.db_bytes)),
        );
        report.set("etcd_db_bytes_before", e0.db_bytes);
        report.set("etcd_db_bytes_after", e9.db_bytes);
        report.notes.push(format!(
            "gaps are sampled every {} ms at the simulator (a session replaced between two samples counts as 0); etcd requests = grpc_server_handled_total for Range + Txn; per reconcile while settled from the bridges' ccgw_pool_reconciles_total",
            SAMPLE.as_millis()
        ));
        Ok(())
    }

    /// Phase 1: all replicas at once → every agent served; sign-ins per agent until settled.
    async fn cold_start(&mut self, report: &mut Report) -> Result<(), BoxError> {
        let n = self.opts.agents as f64;
        let e0 = self.etcd.sample(&self.http).await?;
        let st0 = self.sim.stats();
        let t0 = Instant::now();
        for i in 0..self.opts.replicas {
            let r = self.setup.spawn(&format!("bench-{i}"))?;
            self.bridges.push(r);
        }
        self.wait_all_served(t0, self.bound(60)).await?;
        let cold = t0.elapsed();
        self.settle().await?;
        let per_agent = (self.sim.stats().sign_ins - st0.sign_ins) as f64 / n;
        report.info(
            format!(
                "cold start of {} replicas → every agent signed in",
                self.opts.replicas
            ),
            format!("{:.2} s", cold.as_secs_f64()),
        );
        report.target(
            "cold start: sign-ins per agent (until settled)",
            format!("{per_agent:.3}"),
            per_agent,
            1.0,
            false,
            "1.0",
        );
        report.set("cold_start_s", round(cold.as_secs_f64(), 2));
        report.set("cold_sign_ins_per_agent", round(per_agent, 3));
        let e1 = self.etcd.sample(&self.http).await?;
        self.etcd_rows(report, "cold start", (e0, e1), (n, "agent"));

        Ok(())
    }

    /// Phase 2: SIGTERM of one replica → its agents handed over to the others; started again.
    async fn sigterm(&mut self, report: &mut Report) -> Result<(), BoxError> {
        let term = self.stop_one(0, libc::SIGTERM).await?;
        report.info(
            format!(
                "SIGTERM: {} agents moved, time until all served",
                term.agents
            ),
            format!("{:.2} s", term.done.as_secs_f64()),
        );
        report.info(
            "SIGTERM: gap per moved agent, p50 / max",
            format!(
                "{:.2} / {:.2} s (n={})",
                secs(term.gaps.q(0.5)),
                secs(term.gaps.q(1.0)),
                term.gaps.len()
            ),
        );
        forcelogin_row(report, "SIGTERM", term.forcelogins);
        self.moved_rows(report, "sigterm", &term);
        self.restart(0).await?;

        Ok(())
    }

    /// Phase 3: SIGKILL of another replica → taken over after its lease expired; started again.
    async fn sigkill(&mut self, report: &mut Report) -> Result<(), BoxError> {
        let ttl = self.opts.lease_ttl.as_secs_f64();
        let kill = self.stop_one(1 % self.opts.replicas, libc::SIGKILL).await?;
        let limit = ttl + 10.0;
        report.target(
            format!(
                "SIGKILL: {} agents moved, time until all served",
                kill.agents
            ),
            format!(
                "{:.2} s (gap p50 {:.2} s)",
                kill.done.as_secs_f64(),
                secs(kill.gaps.q(0.5))
            ),
            kill.done.as_secs_f64(),
            limit,
            false,
            format!("≤ TTL + 10 s = {limit} s"),
        );
        forcelogin_row(report, "SIGKILL", kill.forcelogins);
        self.moved_rows(report, "sigkill", &kill);
        self.restart(1 % self.opts.replicas).await?;
        Ok(())
    }

    /// Waits until every agent has a session.
    async fn wait_all_served(&mut self, from: Instant, limit: Duration) -> Result<(), BoxError> {
        let deadline = from + limit;
        loop {
            let served = self.tracker.served();
            if served == self.opts.agents {
                return Ok(());
            }
            self.check_deadline(
                deadline,
                &format!("{served} of {} agents served", self.opts.agents),
            )?;
            tokio::time::sleep(SAMPLE).await;
        }
    }

    /// Fails when `deadline` passed or a replica died.
    fn check_deadline(&mut self, deadline: Instant, state: &str) -> Result<(), BoxError> {
        for b in &mut self.bridges {
            if !b.proc.alive() {
                return Err(
                    format!("replica {} exited; its log:\n{}", b.name, b.proc.log_tail()).into(),
                );
            }
        }
        if Instant::now() >= deadline {
            return Err(format!("timed out: {state}").into());
        }
        Ok(())
    }

    /// Waits until every replica is ready, every agent served, and the simulator saw no sign-in
    /// for two lease TTLs (rebalancing waits a join grace of one TTL before it moves agents).
    async fn settle(&mut self) -> Result<(), BoxError> {
        let quiet = self.opts.lease_ttl * 2;
        let deadline = Instant::now() + self.bound(60) + quiet;
        let mut last = (self.sim.stats().sign_ins, Instant::now());
        loop {
            let sign_ins = self.sim.stats().sign_ins;
            if sign_ins != last.0 {
                last = (sign_ins, Instant::now());
            }
            let served = self.tracker.served();
            let ready = self.ready_count().await;
            if last.1.elapsed() >= quiet
                && served == self.opts.agents
                && ready == self.bridges.len()
            {
                return Ok(());
            }
            let state = format!(
                "not settled: {served} of {} agents served, {ready} of {} replicas ready, last sign-in {:.1} s ago",
                self.opts.agents,
                self.bridges.len(),
                last.1.elapsed().as_secs_f64()
            );
            self.check_deadline(deadline, &state)?;
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Replicas whose `/readyz` answers 200.
    async fn ready_count(&self) -> usize {
        let mut n = 0;
        for b in &self.bridges {
            let ok = self
                .http
                .get(format!("{}/readyz", b.admin_url))
                .send()
                .await;
            n += usize::from(ok.is_ok_and(|r| r.status().is_success()));
        }
        n
    }

    /// Agents (indexes) replica `i` holds, from its ListSessions.
    async fn held(&self, i: usize) -> Result<Vec<usize>, BoxError> {
        let ch = crate::clients::channel(&self.bridges[i].grpc_url).await?;
        let list = AgentSessionServiceClient::new(ch)
            .max_decoding_message_size(64 << 20)
            .list_sessions(ListSessionsRequest {})
            .await?
            .into_inner();
        let index: HashMap<&str, usize> = self
            .ids
            .iter()
            .enumerate()
            .map(|(i, id)| (id.as_str(), i))
            .collect();
        Ok(list
            .sessions
            .iter()
            .filter(|s| s.state == SessionState::SignedIn as i32)
            .filter_map(|s| index.get(s.agent_id.as_str()).copied())
            .collect())
    }

    /// Signals replica `i` and waits until every agent it held has a new session.
    async fn stop_one(&mut self, i: usize, sig: libc::c_int) -> Result<Moved, BoxError> {
        let moved = self.held(i).await?;
        let before = self.tracker.guids();
        let ends0 = self.sim.session_ends().len();
        self.sim.clear_requests();
        let gaps0 = self.tracker.gap_count();
        let e0 = self.etcd.sample(&self.http).await?;
        let t0 = Instant::now();
        self.bridges[i].proc.signal(sig)?;
        let drain = self.bound(30);
        let status = self.bridges[i].proc.wait_exit(drain).await?;
        if sig == libc::SIGTERM && !status.success() {
            return Err(format!(
                "replica {} exited with {status} after SIGTERM",
                self.bridges[i].name
            )
            .into());
        }
        let deadline = t0 + self.bound(60) + self.opts.lease_ttl;
        let last = loop {
            if let Some(last) = self.tracker.all_replaced(&moved, &before) {
                break last;
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "timed out: the {} agents of replica {} not all served by the others",
                    moved.len(),
                    self.bridges[i].name
                )
                .into());
            }
            tokio::time::sleep(SAMPLE).await;
        };
        let e1 = self.etcd.sample(&self.http).await?;
        let forcelogins = self.forcelogins(ends0);
        // A killed replica's sessions stay at the gateway: its agents' gap runs from the kill.
        let gaps = if sig == libc::SIGKILL {
            Samples::new(
                self.tracker
                    .since(&moved)
                    .into_iter()
                    .map(|s| s.map_or(0, |s| s.saturating_duration_since(t0).as_nanos() as u64))
                    .collect(),
            )
        } else {
            self.tracker.gaps_since(gaps0)
        };
        Ok(Moved {
            agents: moved.len(),
            done: last.saturating_duration_since(t0),
            gaps,
            forcelogins,
            etcd_requests: e1.requests() - e0.requests(),
            etcd_bytes: e1.sent_bytes - e0.sent_bytes,
        })
    }

    /// `forcelogin`s since the request log was cleared and session end `ends0`: the requests
    /// themselves, or the sessions they replaced if the log (bounded) dropped some.
    fn forcelogins(&self, ends0: usize) -> usize {
        let requests = self
            .sim
            .requests()
            .iter()
            .filter(|r| r.path.ends_with("/forcelogin"))
            .count();
        let replaced = self.sim.session_ends()[ends0..]
            .iter()
            .filter(|e| matches!(e.cause, EndCause::ForceLogin { .. }))
            .count();
        requests.max(replaced)
    }

    /// Starts replica `i` again under its name and waits until the pool settled.
    async fn restart(&mut self, i: usize) -> Result<(), BoxError> {
        let name = self.bridges[i].name.clone();
        self.bridges[i] = self.setup.spawn(&name)?;
        self.settle().await
    }

    fn moved_rows(&self, report: &mut Report, key: &str, m: &Moved) {
        let per = |x: f64| {
            if m.agents == 0 {
                0.0
            } else {
                x / m.agents as f64
            }
        };
        report.info(
            format!("{key}: etcd requests / bytes sent per agent moved"),
            format!("{:.2} / {:.0} B", per(m.etcd_requests), per(m.etcd_bytes)),
        );
        report.set(&format!("{key}_agents_moved"), m.agents);
        report.set(&format!("{key}_done_s"), round(m.done.as_secs_f64(), 2));
        report.set(&format!("{key}_gap_p50_s"), round(secs(m.gaps.q(0.5)), 2));
        report.set(&format!("{key}_gap_max_s"), round(secs(m.gaps.q(1.0)), 2));
        report.set(&format!("{key}_forcelogins"), m.forcelogins);
        report.set(
            &format!("{key}_etcd_requests_per_agent_moved"),
            round(per(m.etcd_requests), 2),
        );
        report.set(
            &format!("{key}_etcd_bytes_per_agent_moved"),
            round(per(m.etcd_bytes), 0),
        );
    }

    /// etcd's requests and bytes between `a` and `b`, in all and per `n` (agents or moves).
    fn etcd_rows(
        &self,
        report: &mut Report,
        what: &str,
        (a, b): (EtcdSample, EtcdSample),
        n: (f64, &str),
    ) {
        let (req, bytes) = (b.requests() - a.requests(), b.sent_bytes - a.sent_bytes);
        let (n, unit) = n;
        report.info(
            format!("etcd during {what}: requests (Range/Txn), bytes sent; per {unit}"),
            format!(
                "{req:.0} ({:.0}/{:.0}), {} MiB; {:.2} req, {:.0} B",
                b.range - a.range,
                b.txn - a.txn,
                mib_b(bytes),
                req / n,
                bytes / n
            ),
        );
        let key = what.replace(' ', "_");
        report.set(&format!("etcd_{key}_requests"), req);
        report.set(&format!("etcd_{key}_bytes"), bytes);
    }

    /// SIGTERM, start again, ready and settled — each replica in turn.
    async fn rolling(&mut self, report: &mut Report) -> Result<(), BoxError> {
        let n = self.opts.agents as f64;
        let st0 = self.sim.stats();
        let gaps0 = self.tracker.gap_count();
        let ends0 = self.sim.session_ends().len();
        self.sim.clear_requests();
        let e0 = self.etcd.sample(&self.http).await?;
        let t0 = Instant::now();
        for i in 0..self.bridges.len() {
            self.bridges[i].proc.signal(libc::SIGTERM)?;
            let drain = self.bound(30);
            let status = self.bridges[i].proc.wait_exit(drain).await?;
            if !status.success() {
                return Err(format!(
                    "replica {} exited with {status} after SIGTERM",
                    self.bridges[i].name
                )
                .into());
            }
            self.restart(i).await?;
        }
        let took = t0.elapsed();
        let e1 = self.etcd.sample(&self.http).await?;
        let gaps = self.tracker.gaps_since(gaps0);
        let per_agent = (self.sim.stats().sign_ins - st0.sign_ins) as f64 / n;
        let forcelogins = self.forcelogins(ends0);
        report.target(
            "rolling restart: max gap per agent",
            format!(
                "{:.2} s (p50 {:.2} s, {} moves, {:.1} s in all)",
                secs(gaps.q(1.0)),
                secs(gaps.q(0.5)),
                gaps.len(),
                took.as_secs_f64()
            ),
            secs(gaps.q(1.0)),
            2.0,
            false,
            "≤ 2 s",
        );
        report.info(
            "rolling restart: sign-ins per agent",
            format!("{per_agent:.3}"),
        );
        forcelogin_row(report, "rolling restart", forcelogins);
        report.set("rolling_gap_max_s", round(secs(gaps.q(1.0)), 2));
        report.set("rolling_gap_p50_s", round(secs(gaps.q(0.5)), 2));
        report.set("rolling_moves", gaps.len());
        report.set("rolling_sign_ins_per_agent", round(per_agent, 3));
        report.set("rolling_forcelogins", forcelogins);
        report.set("rolling_s", round(took.as_secs_f64(), 1));
        self.etcd_rows(
            report,
            "rolling restart",
            (e0, e1),
            (gaps.len().max(1) as f64, "agent moved"),
        );
        Ok(())
    }

    /// RSS against the formula for the agents each holds, CPU over 10 s, etcd load meanwhile.
    async fn settled_rows(&mut self, report: &mut Report) -> Result<(), BoxError> {
        let window = Duration::from_secs(10);
        let e0 = self.etcd.sample(&self.http).await?;
        let r0 = self.reconciles().await?;
        let cpu0: Vec<Duration> = self.bridges.iter().map(|b| b.proc.cpu()).collect();
        let t0 = Instant::now();
        tokio::time::sleep(window).await;
        let wall = t0.elapsed();
        let e1 = self.etcd.sample(&self.http).await?;
        let reconciles = self.reconciles().await? - r0;
        let mut json = Vec::new();
        for (i, &c0) in cpu0.iter().enumerate() {
            let held = self.held(i).await?.len();
            let b = &self.bridges[i];
            let cpu = procs::CpuUse::pct(b.proc.cpu().saturating_sub(c0), wall);
            let rss = b.proc.rss_kib();
            let per_agent = if self.opts.push {
                KIB_PER_PUSH_AGENT
            } else {
                KIB_PER_AGENT
            };
            let limit = RSS_BASE_KIB
                + per_agent * held as f64
                + KIB_PER_POOL_AGENT * self.opts.agents as f64;
            report.target(
                format!("{} settled: RSS ({held} agents), CPU", b.name),
                format!("{} MiB, {cpu:.1}% of a core", mib(rss)),
                rss as f64,
                limit,
                false,
                format!("RSS ≤ {} MiB (docs/memory.md + mirror)", mib(limit as u64)),
            );
            json.push(serde_json::json!({
                "name": b.name, "agents": held, "rss_kib": rss, "cpu_pct": round(cpu, 2),
                "rss_limit_kib": limit.round(),
            }));
        }
        report.set("bridges", serde_json::Value::Array(json));
        let per_s = (e1.requests() - e0.requests()) / wall.as_secs_f64();
        let bytes_s = (e1.sent_bytes - e0.sent_bytes) / wall.as_secs_f64();
        report.info(
            "etcd while settled: requests / bytes sent per second",
            format!("{per_s:.1} / {bytes_s:.0} B"),
        );
        report.set("etcd_settled_requests_per_s", round(per_s, 2));
        report.set("etcd_settled_bytes_per_s", round(bytes_s, 0));
        let per = |x: f64| x / reconciles.max(1.0);
        report.info(
            "etcd while settled: requests / bytes sent per reconcile (all replicas)",
            format!(
                "{:.2} / {:.0} B over {reconciles:.0} reconciles",
                per(e1.requests() - e0.requests()),
                per(e1.sent_bytes - e0.sent_bytes)
            ),
        );
        report.set("settled_reconciles", reconciles);
        report.set(
            "etcd_requests_per_reconcile",
            round(per(e1.requests() - e0.requests()), 3),
        );
        report.set(
            "etcd_bytes_per_reconcile",
            round(per(e1.sent_bytes - e0.sent_bytes), 0),
        );
        Ok(())
    }

    /// Reconcile passes of every running replica so far (`ccgw_pool_reconciles_total`).
    async fn reconciles(&self) -> Result<f64, BoxError> {
        let mut total = 0.0;
        for b in &self.bridges {
            let metrics = crate::clients::bridge_metrics(&self.http, &b.admin_url).await?;
            total += metrics
                .get("ccgw_pool_reconciles_total")
                .copied()
                .unwrap_or(0.0);
        }
        Ok(total)
    }
}

/// The pool never uses `forcelogin` (docs/running-replicas.md): target 0.
fn forcelogin_row(report: &mut Report, phase: &str, n: usize) {
    report.target(
        format!("{phase}: forcelogins"),
        n.to_string(),
        n as f64,
        0.0,
        false,
        "0",
    );
}

fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// Bytes as MiB, two decimals.
fn mib_b(bytes: f64) -> f64 {
    round(bytes / (1024.0 * 1024.0), 2)
}
