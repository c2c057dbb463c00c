//! Scenario `footprint`: time from process start to SERVING, RSS idle, with 100, 1,000 and 10,000
//! signed-in idle agents (and the time to sign them in, 64 at once), with many open watchers,
//! and CPU while the agents sit in idle long polls. The simulator
//! holds polls for the vendor's default 10 s here, so the idle cost is the production one.

use std::path::Path;
use std::time::{Duration, Instant};

use ccgw_bridge::proto::record_play_service_client::RecordPlayServiceClient;
use ccgw_bridge::proto::WatchPlayEventsRequest;
use futures::StreamExt;

use crate::clients::{self, Control};
use crate::procs::{self, BoxError, CpuSample, CpuUse};
use crate::report::{mib, round, Report, Samples};

pub struct Opts {
    /// Cumulative numbers of signed-in agents to measure at.
    pub agent_steps: Vec<usize>,
    /// Cumulative numbers of open watchers to measure at.
    pub watcher_steps: Vec<usize>,
    pub idle: Duration,
    /// Bridge starts timed (start → SERVING).
    pub starts: usize,
    /// Agents in the agents file of the pinned start (start → all signed in, ready).
    pub pinned: usize,
}

const STREAMS_PER_CONN: usize = 200;

pub async fn run(bin: &Path, opts: &Opts) -> Result<Report, BoxError> {
    let mut report = Report::new("footprint");
    let sim = procs::start_sim(bin, "10s", "600s")?;
    let control = Control::new(&sim)?;

    // Start → SERVING, no agents: fresh processes, each killed after measuring.
    let mut starts = Vec::new();
    for _ in 0..opts.starts.saturating_sub(1) {
        let mut b = procs::spawn_bridge(bin, &sim, &[])?;
        starts.push(
            procs::wait_serving(&mut b, Duration::from_secs(30))
                .await?
                .as_nanos() as u64,
        );
    }
    let mut bridge = procs::spawn_bridge(bin, &sim, &[])?;
    starts.push(
        procs::wait_serving(&mut bridge, Duration::from_secs(30))
            .await?
            .as_nanos() as u64,
    );
    let starts = Samples::new(starts);
    let start_ms = starts.q(0.5) as f64 / 1e6;
    report.target(
        "start → SERVING (no agents), median",
        format!(
            "{start_ms:.1} ms (min {:.1}, max {:.1}, n={})",
            starts.q(0.0) as f64 / 1e6,
            starts.q(1.0) as f64 / 1e6,
            starts.len()
        ),
        start_ms,
        50.0,
        false,
        "≤ 50 ms",
    );

    let pinned = pinned_start(bin, &sim, &control, opts.pinned).await?;
    report.info(
        format!(
            "start → ready with {} pinned agents (agents file)",
            opts.pinned
        ),
        format!(
            "{:.2} s; at most {} sign-ins in progress at once at the gateway",
            pinned.0.as_secs_f64(),
            pinned.1
        ),
    );

    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_idle = bridge.proc.rss_kib();
    report.target(
        "RSS idle (SERVING, no agents)",
        format!("{} MiB", mib(rss_idle)),
        rss_idle as f64 / 1024.0,
        15.0,
        false,
        "≤ 15 MiB",
    );

    // Signed-in idle agents in steps (cumulative): RSS and CPU per agent as the count grows.
    let max_agents = opts.agent_steps.iter().copied().max().unwrap_or(0);
    let ids: Vec<String> = (0..max_agents).map(|i| (500_000 + i).to_string()).collect();
    let ch0 = clients::channel(&bridge.url).await?;
    let mut json_agents = Vec::new();
    let (mut n, mut rss_agents, mut idle_pct) = (0, rss_idle, 0.0);
    for &step in &opts.agent_steps {
        let t = Instant::now();
        clients::sign_in_via_bridge(&ch0, &ids[n..step], 64).await?;
        let sign_in_time = t.elapsed();
        n = step;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let st0 = control.stats().await?;
        let c0 = CpuSample::take(&bridge.proc, &sim.proc);
        tokio::time::sleep(opts.idle).await;
        let c1 = CpuSample::take(&bridge.proc, &sim.proc);
        let st1 = control.stats().await?.since(st0);
        let mut idle = CpuUse::default();
        idle.add(c0, c1);
        rss_agents = bridge.proc.rss_kib();
        idle_pct = CpuUse::pct(idle.bridge, idle.wall);
        let per_agent = (rss_agents as f64 - rss_idle as f64) / n as f64;
        let polls = st1.polls as f64 / idle.wall.as_secs_f64();
        report.info(
            format!("{n} signed-in idle agents: RSS, sign-in time"),
            format!(
                "{} MiB ({per_agent:.1} KiB per agent); signed in in {:.2} s at 64 at once",
                mib(rss_agents),
                sign_in_time.as_secs_f64()
            ),
        );
        report.info(
            format!("{n} agents in idle long polls: bridge / simulator / others CPU"),
            format!(
                "{idle_pct:.2}% / {:.2}% / {:.0}% of a core ({polls:.0} polls/s, {:.1} s)",
                CpuUse::pct(idle.sim, idle.wall),
                idle.foreign_pct(),
                idle.wall.as_secs_f64()
            ),
        );
        if n == 1000 {
            report.target(
                "bridge CPU, 1,000 agents in idle long polls",
                format!("{idle_pct:.2}% of a core"),
                idle_pct,
                1.0,
                false,
                "≤ 1 %",
            );
            report.target(
                "memory per signed-in agent (at 1,000)",
                format!("{per_agent:.1} KiB"),
                per_agent,
                24.0,
                false,
                "≤ 24 KiB",
            );
        }
        json_agents.push(serde_json::json!({
            "agents": n, "rss_kib": rss_agents, "kib_per_agent": round(per_agent, 2),
            "idle_cpu_pct": round(idle_pct, 3), "polls_per_s": round(polls, 1),
            "sign_in_s": round(sign_in_time.as_secs_f64(), 2),
        }));
    }

    // Open watchers, spread over the agents and over connections of STREAMS_PER_CONN streams.
    let mut channels = Vec::new();
    let mut held = Vec::new();
    let mut json_steps = Vec::new();
    let mut last_per_stream = 0.0;
    for &target in &opts.watcher_steps {
        let from = held.len();
        while channels.len() < target.div_ceil(STREAMS_PER_CONN) {
            channels.push(clients::channel(&bridge.url).await?);
        }
        let t = Instant::now();
        let opened: Vec<Result<tonic::Streaming<_>, BoxError>> =
            futures::stream::iter(from..target)
                .map(|k| {
                    let mut client =
                        RecordPlayServiceClient::new(channels[k / STREAMS_PER_CONN].clone());
                    let id = ids[k % n].clone();
                    async move {
                        Ok(client
                            .watch_play_events(WatchPlayEventsRequest {
                                agent_id: id,
                                ..Default::default()
                            })
                            .await
                            .map_err(|s| format!("WatchPlayEvents: {s}"))?
                            .into_inner())
                    }
                })
                .buffer_unordered(256)
                .collect()
                .await;
        for o in opened {
            held.push(o?);
        }
        let open_time = t.elapsed();
        let w = clients::bridge_watchers(&ch0).await?;
        if w != target as u64 {
            return Err(format!("the bridge reports {w} watchers, expected {target}").into());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let rss = bridge.proc.rss_kib();
        let per_stream = (rss as f64 - rss_agents as f64) / target as f64;
        last_per_stream = per_stream;
        report.info(
            format!("RSS with {target} open watchers"),
            format!(
                "{} MiB ({per_stream:.2} KiB per stream; opened in {:.1} s over {} conns)",
                mib(rss),
                open_time.as_secs_f64(),
                channels.len()
            ),
        );
        json_steps.push(serde_json::json!({
            "watchers": target, "rss_kib": rss, "kib_per_stream": round(per_stream, 3),
            "open_s": round(open_time.as_secs_f64(), 2),
        }));
    }
    let biggest = opts.watcher_steps.last().copied().unwrap_or(0);
    report.target(
        format!("memory per open watcher (at {biggest})"),
        format!("{last_per_stream:.2} KiB"),
        last_per_stream,
        8.0,
        false,
        "≤ 8 KiB",
    );
    drop(held);
    drop(channels);

    report.set("start_to_serving_ms_median", round(start_ms, 2));
    report.set(
        "start_to_serving_ms_max",
        round(starts.q(1.0) as f64 / 1e6, 2),
    );
    report.set("pinned_agents", opts.pinned);
    report.set("pinned_start_s", round(pinned.0.as_secs_f64(), 2));
    report.set("pinned_max_concurrent_sign_ins", pinned.1);
    report.set("rss_idle_kib", rss_idle);
    report.set("agents", n);
    report.set("rss_agents_kib", rss_agents);
    report.set("idle_cpu_pct", round(idle_pct, 3));
    report.set("agent_steps", serde_json::Value::Array(json_agents));
    report.set("watcher_steps", serde_json::Value::Array(json_steps));
    report.set("kib_per_stream", round(last_per_stream, 3));
    report.notes.push(format!(
        "logs: {} {}",
        bridge.proc.log.display(),
        sim.proc.log.display()
    ));
    Ok(report)
}

/// Starts a bridge whose agents file pins `n` agents and times start → ready (every pinned
/// agent signed in); returns that time and the most sign-ins the simulator saw in progress at
/// once (the bridge bounds them, `--sign-in-concurrency`). The bridge is stopped afterwards.
async fn pinned_start(
    bin: &Path,
    sim: &procs::Sim,
    control: &Control,
    n: usize,
) -> Result<(Duration, u64), BoxError> {
    use std::fmt::Write as _;
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("ccgw-bench-{}-pinned", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let private = std::fs::Permissions::from_mode(0o600);
    let password = dir.join("password");
    std::fs::write(&password, "pw")?;
    std::fs::set_permissions(&password, private.clone())?;
    let mut toml = String::new();
    for i in 0..n {
        writeln!(
            toml,
            "[[agent]]\nid = \"{}\"\nphone_number = \"88005\"\npassword_file = {:?}\n",
            700_000 + i,
            password.display().to_string()
        )?;
    }
    let file = dir.join("agents.toml");
    std::fs::write(&file, toml)?;
    std::fs::set_permissions(&file, private)?;
    let mut bridge = procs::spawn_bridge(bin, sim, &["--agents-file", &file.to_string_lossy()])?;
    let ready = procs::wait_serving(&mut bridge, Duration::from_secs(600)).await?;
    let stats = control.stats().await?;
    drop(bridge);
    std::fs::remove_dir_all(&dir)?;
    Ok((ready, stats.max_concurrent_sign_ins))
}
