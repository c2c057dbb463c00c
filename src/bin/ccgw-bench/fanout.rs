//! Scenario `fanout`: N signed-in agents × M `WatchPlayEvents` streams each. Every round queues one
//! play event per agent through the simulator's control plane (all N at once); the simulator
//! releases each to the agent's held poll, the bridge numbers it and fans it out. Measured: from
//! just before the control request that releases an event to the moment the last of that agent's
//! M watchers (and, per round, the last of all N × M) has it in this process.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ccgw_bridge::proto::record_play_service_client::RecordPlayServiceClient;
use ccgw_bridge::proto::{PlayEventType, WatchPlayEventsRequest};
use futures::StreamExt;
use prost_types::value::Kind;
use serde_json::json;

use crate::clients::{self, Control};
use crate::procs::{self, BoxError, CpuSample, CpuUse};
use crate::report::{round, us, Failures, Report, Samples};

pub struct Opts {
    pub agents: usize,
    pub watchers: usize,
    pub rounds: usize,
}

/// Streams per HTTP/2 connection (below every server's default limit).
const STREAMS_PER_CONN: usize = 200;
/// Unmeasured rounds first.
const WARMUP_ROUNDS: usize = 5;
const EVENT_TYPE: &str = "AgentMediaEvent_JumpPlayDone";

struct Slot {
    count: AtomicU32,
    first: AtomicU64,
    last: AtomicU64,
}

fn number(s: &prost_types::Struct, key: &str) -> Option<usize> {
    match s.fields.get(key)?.kind.as_ref()? {
        Kind::NumberValue(n) => Some(*n as usize),
        _ => None,
    }
}

pub async fn run(bin: &Path, opts: &Opts) -> Result<Report, BoxError> {
    let mut report = Report::new("fanout");
    let (n, m) = (opts.agents, opts.watchers);
    let total_rounds = WARMUP_ROUNDS + opts.rounds;
    // Long hold: no poll expires (and pauses 200 ms) during the run, so an event always finds a
    // held poll and the measured path is the bridge's delivery.
    let sim = procs::start_sim(bin, "60s", "600s")?;
    let bridge = procs::start_bridge(bin, &sim, &["--poll-timeout", "90s"]).await?;
    let control = Control::new(&sim)?;
    let ids: Vec<String> = (0..n).map(|i| (400_000 + i).to_string()).collect();
    let ch0 = clients::channel(&bridge.url).await?;
    clients::sign_in_via_bridge(&ch0, &ids, 64).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let streams = n * m;
    let n_conn = streams.div_ceil(STREAMS_PER_CONN);
    let mut channels = Vec::with_capacity(n_conn);
    for _ in 0..n_conn {
        channels.push(clients::channel(&bridge.url).await?);
    }
    let base = Instant::now();
    let slots: Arc<Vec<Slot>> = Arc::new(
        (0..total_rounds * n)
            .map(|_| Slot {
                count: AtomicU32::new(0),
                first: AtomicU64::new(u64::MAX),
                last: AtomicU64::new(0),
            })
            .collect(),
    );
    let failures = Arc::new(Failures::default());
    let stopping = Arc::new(AtomicBool::new(false));
    let t_open = Instant::now();
    let opened: Vec<Result<(usize, tonic::Streaming<_>), BoxError>> =
        futures::stream::iter(0..streams)
            .map(|k| {
                let a = k / m;
                let mut client = RecordPlayServiceClient::new(channels[k % n_conn].clone());
                let id = ids[a].clone();
                async move {
                    let s = client
                        .watch_play_events(WatchPlayEventsRequest {
                            agent_id: id,
                            ..Default::default()
                        })
                        .await
                        .map_err(|s| format!("WatchPlayEvents: {s}"))?;
                    Ok((a, s.into_inner()))
                }
            })
            .buffer_unordered(256)
            .collect()
            .await;
    let mut readers = Vec::with_capacity(streams);
    for o in opened {
        let (a, mut stream) = o?;
        let slots = Arc::clone(&slots);
        let failures = Arc::clone(&failures);
        let stopping = Arc::clone(&stopping);
        let id = ids[a].clone();
        readers.push(tokio::spawn(async move {
            let mut prev: Option<u64> = None;
            loop {
                match stream.message().await {
                    Ok(Some(ev)) => {
                        let t = base.elapsed().as_nanos() as u64;
                        let content = ev.content.unwrap_or_default();
                        let (Some(r), Some(agent)) =
                            (number(&content, "round"), number(&content, "agent"))
                        else {
                            failures.record(format!("{id}: event without round/agent: {}", ev.event_type));
                            continue;
                        };
                        if agent != a
                            || ev.agent_id != id
                            || ev.event_type != EVENT_TYPE
                            || ev.r#type != PlayEventType::PlayJumped as i32
                            || prev.is_some_and(|p| ev.sequence != p + 1)
                            || r >= slots.len() / n
                        {
                            failures.record(format!(
                                "{id}: unexpected event {} seq {} (prev {prev:?}) round {r} agent {agent}",
                                ev.event_type, ev.sequence
                            ));
                        }
                        prev = Some(ev.sequence);
                        if let Some(slot) = slots.get(r * n + agent) {
                            slot.first.fetch_min(t, Ordering::Relaxed);
                            slot.last.fetch_max(t, Ordering::Relaxed);
                            slot.count.fetch_add(1, Ordering::Release);
                        }
                    }
                    Ok(None) | Err(_) if stopping.load(Ordering::Relaxed) => break,
                    Ok(None) => {
                        failures.record(format!("{id}: stream ended early"));
                        break;
                    }
                    Err(s) => {
                        failures.record(format!("{id}: stream error {s}"));
                        break;
                    }
                }
            }
        }));
    }
    let open_time = t_open.elapsed();
    // The bridge must count every stream before events flow.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let w = clients::bridge_watchers(&ch0).await?;
        if w == streams as u64 {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("the bridge reports {w} watchers, expected {streams}").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut per_event = Vec::with_capacity(opts.rounds * n);
    let mut first_watcher = Vec::with_capacity(opts.rounds * n);
    let mut per_round = Vec::with_capacity(opts.rounds);
    let mut release_spread = Vec::with_capacity(opts.rounds);
    let mut cpu = CpuUse::default();
    let mut c0 = CpuSample::take(&bridge.proc, &sim.proc);
    let mut delivered: u64 = 0;
    for r in 0..total_rounds {
        if r == WARMUP_ROUNDS {
            c0 = CpuSample::take(&bridge.proc, &sim.proc);
        }
        let sends: Vec<Result<u64, BoxError>> =
            futures::future::join_all(ids.iter().enumerate().map(|(a, id)| {
                let control = control.clone();
                let event = json!({
                    "eventType": EVENT_TYPE,
                    "workNo": id,
                    "content": {"round": r, "agent": a},
                    "eventGenTime": 0,
                });
                async move {
                    let t = base.elapsed().as_nanos() as u64;
                    control.queue_event(id, &event).await?;
                    Ok(t)
                }
            }))
            .await;
        let mut send_at = Vec::with_capacity(n);
        for (a, s) in sends.into_iter().enumerate() {
            match s {
                Ok(t) => send_at.push(t),
                Err(e) => {
                    failures.record(format!("queue event for {}: {e}", ids[a]));
                    send_at.push(u64::MAX);
                }
            }
        }
        let round_slots = &slots[r * n..(r + 1) * n];
        let wait_until = Instant::now() + Duration::from_secs(10);
        while round_slots
            .iter()
            .any(|s| s.count.load(Ordering::Acquire) < m as u32)
            && Instant::now() < wait_until
        {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        let mut round_last = 0;
        for (a, s) in round_slots.iter().enumerate() {
            let got = s.count.load(Ordering::Acquire) as usize;
            if got < m {
                failures.record(format!(
                    "round {r}: agent {} event reached {got} of {m} watchers within 10 s",
                    ids[a]
                ));
                continue;
            }
            if send_at[a] == u64::MAX {
                continue;
            }
            let last = s.last.load(Ordering::Relaxed);
            round_last = round_last.max(last);
            if r >= WARMUP_ROUNDS {
                delivered += got as u64;
                per_event.push(last.saturating_sub(send_at[a]));
                first_watcher.push(s.first.load(Ordering::Relaxed).saturating_sub(send_at[a]));
            }
        }
        if r >= WARMUP_ROUNDS {
            let first_send = send_at.iter().copied().min().unwrap_or(0);
            let last_send = send_at
                .iter()
                .copied()
                .filter(|&t| t != u64::MAX)
                .max()
                .unwrap_or(0);
            per_round.push(round_last.saturating_sub(first_send));
            release_spread.push(last_send.saturating_sub(first_send));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let c1 = CpuSample::take(&bridge.proc, &sim.proc);
    cpu.add(c0, c1);
    stopping.store(true, Ordering::Relaxed);
    let rss = bridge.proc.rss_kib();
    drop(channels);
    for r in readers {
        r.abort();
    }

    let ev = Samples::new(per_event);
    let fw = Samples::new(first_watcher);
    let rd = Samples::new(per_round);
    let spread = Samples::new(release_spread);
    let cpu_per_delivery = cpu.bridge.as_nanos() as f64 / 1000.0 / delivered.max(1) as f64;
    let shape = format!("{n} agents × {m} watchers");
    report.info(
        "shape (streams over HTTP/2 connections)",
        format!("{shape} = {streams} streams over {n_conn} conns"),
    );
    report.info(
        "rounds measured (after warm-up)",
        format!("{} (+{WARMUP_ROUNDS})", opts.rounds),
    );
    report.info(
        "event → last of its agent's watchers p50 / p99",
        format!(
            "{:.2} / {:.2} ms",
            us(ev.q(0.5)) / 1000.0,
            us(ev.q(0.99)) / 1000.0
        ),
    );
    report.info(
        "event → first of its agent's watchers p50 / p99",
        format!(
            "{:.2} / {:.2} ms",
            us(fw.q(0.5)) / 1000.0,
            us(fw.q(0.99)) / 1000.0
        ),
    );
    report.info(
        format!("round → last of all {streams} watchers p50"),
        format!("{:.2} ms", us(rd.q(0.5)) / 1000.0),
    );
    let p99 = us(rd.q(0.99)) / 1000.0;
    report.target(
        format!("round → last of all {streams} watchers p99"),
        format!("{p99:.2} ms"),
        p99,
        20.0,
        false,
        "≤ 20 ms (at 100 × 100)",
    );
    report.info(
        "release spread within a round (first→last control request sent) p50 / p99",
        format!(
            "{:.2} / {:.2} ms",
            us(spread.q(0.5)) / 1000.0,
            us(spread.q(0.99)) / 1000.0
        ),
    );
    report.info(
        "bridge CPU per delivered event",
        format!("{cpu_per_delivery:.2} µs ({delivered} deliveries)"),
    );
    report.info(
        "CPU share during rounds: bridge / simulator / bench",
        format!(
            "{:.0}% / {:.0}% / {:.0}% of a core",
            CpuUse::pct(cpu.bridge, cpu.wall),
            CpuUse::pct(cpu.sim, cpu.wall),
            CpuUse::pct(cpu.bench, cpu.wall)
        ),
    );
    report.info(
        "CPU of other processes on the machine during rounds",
        format!("{:.0}% of a core", cpu.foreign_pct()),
    );
    report.info(
        "time to open all streams",
        format!("{:.2} s", open_time.as_secs_f64()),
    );
    report.info(
        "bridge RSS with the streams open",
        format!("{:.1} MiB", rss as f64 / 1024.0),
    );
    failures.add_to(&mut report);
    report.set("agents", n);
    report.set("watchers_per_agent", m);
    report.set("streams", streams);
    report.set("rounds", opts.rounds);
    report.set(
        "event_to_last_watcher_p50_ms",
        round(us(ev.q(0.5)) / 1000.0, 3),
    );
    report.set(
        "event_to_last_watcher_p99_ms",
        round(us(ev.q(0.99)) / 1000.0, 3),
    );
    report.set(
        "event_to_first_watcher_p50_ms",
        round(us(fw.q(0.5)) / 1000.0, 3),
    );
    report.set(
        "round_to_last_watcher_p50_ms",
        round(us(rd.q(0.5)) / 1000.0, 3),
    );
    report.set("round_to_last_watcher_p99_ms", round(p99, 3));
    report.set(
        "release_spread_p99_ms",
        round(us(spread.q(0.99)) / 1000.0, 3),
    );
    report.set("bridge_cpu_per_delivery_us", round(cpu_per_delivery, 3));
    report.set("deliveries", delivered);
    report.set(
        "bridge_cpu_pct",
        round(CpuUse::pct(cpu.bridge, cpu.wall), 1),
    );
    report.set("sim_cpu_pct", round(CpuUse::pct(cpu.sim, cpu.wall), 1));
    report.set("bench_cpu_pct", round(CpuUse::pct(cpu.bench, cpu.wall), 1));
    report.set("bridge_rss_kib", rss);
    report.set("foreign_cpu_pct", round(cpu.foreign_pct(), 1));
    report.notes.push(format!(
        "logs: {} {}",
        bridge.proc.log.display(),
        sim.proc.log.display()
    ));
    Ok(report)
}
