//! Scenario `soak`: resident memory at steady state under sustained load.
//!
//! 64 agents signed in through the bridge (its defaults, so the shipped event budget), 16 clients
//! doing BeginPlay/StopPlay pairs (each client owns four agents and rests each one 150 ms after
//! its StopPlay, which the simulator's play state machine needs), and 16 watchers churning: each
//! opens `WatchAgentEvents` on the next agent, reads a few events and hangs up. Every pair makes
//! the gateway emit three events, so the bridge's retained events grow until the bridge-wide
//! budget (`--event-budget`) bounds them; RSS is sampled every second and the figure is the
//! largest sample of the last third of the run, once the budget has filled (~45 s with the
//! defaults; the growth over that third shows whether it has).

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ccgw_bridge::proto::agent_session_service_client::AgentSessionServiceClient;
use ccgw_bridge::proto::record_play_service_client::RecordPlayServiceClient;
use ccgw_bridge::proto::{StopPlayRequest, WatchAgentEventsRequest};

use crate::clients;
use crate::procs::{self, BoxError};
use crate::report::{mib, round, Failures, Report};

pub struct Opts {
    pub duration: Duration,
}

const AGENTS: usize = 64;
const CLIENTS: usize = 16;
const WATCHERS: usize = 16;
const EVENTS_PER_WATCH: usize = 12;
const COOL_DOWN: Duration = Duration::from_millis(150);
/// The goal: 64 busy agents under this with the shipped defaults (issue 12, goal 6).
const LIMIT_MIB: f64 = 64.0;

pub async fn run(bin: &Path, opts: &Opts) -> Result<Report, BoxError> {
    let mut report = Report::new("soak");
    let sim = procs::start_sim(bin, "10s", "600s")?;
    let bridge = procs::start_bridge(bin, &sim, &[]).await?;
    let ids: Vec<String> = (0..AGENTS).map(|i| (600_000 + i).to_string()).collect();
    let channel = clients::channel(&bridge.url).await?;
    clients::sign_in_via_bridge(&channel, &ids, 16).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_start = bridge.proc.rss_kib();
    let http = reqwest::Client::new();
    let events_before = events_received(&http, &bridge.admin_url).await?;

    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(Failures::default());
    let pairs = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let mine: Vec<String> = ids.iter().skip(c).step_by(CLIENTS).cloned().collect();
        let client = RecordPlayServiceClient::new(channel.clone());
        tasks.push(tokio::spawn(play_loop(
            client,
            mine,
            stop.clone(),
            failures.clone(),
            pairs.clone(),
        )));
    }
    for w in 0..WATCHERS {
        let client = AgentSessionServiceClient::new(channel.clone());
        let mine: Vec<String> = ids.iter().skip(w).step_by(WATCHERS).cloned().collect();
        tasks.push(tokio::spawn(watch_loop(
            client,
            mine,
            stop.clone(),
            failures.clone(),
        )));
    }

    let started = Instant::now();
    let mut samples = Vec::new();
    while started.elapsed() < opts.duration {
        tokio::time::sleep(Duration::from_secs(1)).await;
        samples.push(bridge.proc.rss_kib());
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let wall = started.elapsed().as_secs_f64();
    let events = events_received(&http, &bridge.admin_url).await? - events_before;
    let tail = &samples[samples.len() * 2 / 3..];
    let steady = tail.iter().copied().max().unwrap_or(0);
    let tail_growth = tail.last().copied().unwrap_or(0) as i64 - tail[0] as i64;
    let peak = samples.iter().copied().max().unwrap_or(0);

    report.info(
        "load",
        format!(
            "{AGENTS} agents, {CLIENTS} play clients, {WATCHERS} churning watchers, {:.0} s",
            wall
        ),
    );
    report.info(
        "BeginPlay/StopPlay pairs, events polled",
        format!(
            "{:.0} pairs/s, {:.0} events/s ({} events, {:.1} MiB at ~400 B)",
            pairs.load(Ordering::Relaxed) as f64 / wall,
            events as f64 / wall,
            events,
            events as f64 * 400.0 / 1048576.0
        ),
    );
    report.info("RSS after sign-in", format!("{} MiB", mib(rss_start)));
    report.info("RSS peak", format!("{} MiB", mib(peak)));
    report.target(
        "RSS growth over the last third (steady state)",
        format!("{tail_growth:+} KiB"),
        tail_growth as f64,
        1024.0,
        false,
        "≤ 1 MiB",
    );
    report.target(
        "RSS at steady state (largest of the last third)",
        format!("{} MiB", mib(steady)),
        steady as f64 / 1024.0,
        LIMIT_MIB,
        false,
        "≤ 64 MiB (64 busy agents, defaults)",
    );
    report.set("rss_start_kib", rss_start);
    report.set("rss_steady_kib", steady);
    report.set("rss_peak_kib", peak);
    report.set("rss_tail_growth_kib", tail_growth);
    report.set("events", events);
    report.set("seconds", round(wall, 1));
    report.set("rss_samples_kib", samples);
    failures.add_to(&mut report);
    report.notes.push(format!(
        "logs: {} {}",
        bridge.proc.log.display(),
        sim.proc.log.display()
    ));
    Ok(report)
}

async fn events_received(http: &reqwest::Client, admin: &str) -> Result<u64, BoxError> {
    let m = clients::bridge_metrics(http, admin).await?;
    Ok(m.get("ccgw_events_received_total").copied().unwrap_or(0.0) as u64)
}

/// BeginPlay/StopPlay over `agents` in turn, each agent resting [`COOL_DOWN`] after its stop.
async fn play_loop(
    mut client: RecordPlayServiceClient<tonic::transport::Channel>,
    agents: Vec<String>,
    stop: Arc<AtomicBool>,
    failures: Arc<Failures>,
    pairs: Arc<AtomicU64>,
) {
    let mut ready = vec![Instant::now(); agents.len()];
    let mut k = 0;
    while !stop.load(Ordering::Relaxed) {
        let i = k % agents.len();
        k += 1;
        tokio::time::sleep_until(ready[i].into()).await;
        let id = &agents[i];
        let begin = clients::begin_play(&mut client, id).await;
        if let Err(s) = begin {
            failures.record(format!("BeginPlay {id}: {s}"));
            return;
        }
        let end = client
            .stop_play(StopPlayRequest {
                agent_id: id.clone(),
            })
            .await;
        if let Err(s) = end {
            failures.record(format!("StopPlay {id}: {s}"));
            return;
        }
        ready[i] = Instant::now() + COOL_DOWN;
        pairs.fetch_add(1, Ordering::Relaxed);
    }
}

/// Opens a watcher on the next agent, reads [`EVENTS_PER_WATCH`] events (or gives up after 2 s
/// of silence), hangs up, repeats.
async fn watch_loop(
    mut client: AgentSessionServiceClient<tonic::transport::Channel>,
    agents: Vec<String>,
    stop: Arc<AtomicBool>,
    failures: Arc<Failures>,
) {
    let mut k = 0;
    while !stop.load(Ordering::Relaxed) {
        let id = agents[k % agents.len()].clone();
        k += 1;
        let mut stream = match client
            .watch_agent_events(WatchAgentEventsRequest {
                agent_id: id.clone(),
                ..Default::default()
            })
            .await
        {
            Ok(s) => s.into_inner(),
            Err(s) => {
                failures.record(format!("WatchAgentEvents {id}: {s}"));
                return;
            }
        };
        for _ in 0..EVENTS_PER_WATCH {
            match tokio::time::timeout(Duration::from_secs(2), stream.message()).await {
                Ok(Ok(Some(_))) => {}
                Ok(Ok(None)) | Err(_) => break,
                Ok(Err(s)) => {
                    failures.record(format!("watcher {id}: {s}"));
                    return;
                }
            }
        }
    }
}
