//! Scenario `fanout`: N signed-in agents × M `WatchPlayEvents` streams each. Every round queues one
//! play event per agent through the simulator's control plane (all N at once); the simulator
//! releases each to the agent's held poll, the bridge numbers it and fans it out. Measured: from
//! just before the control request that releases an event to the moment the last of that agent's
//! M watchers (and, per round, the last of all N × M) has it in this process.
//!
//! In the same run the **fan-out floor** (`baseline.rs` `broadcast`: a minimal tonic server that
//! encodes the same event once and broadcasts it to the same streams) is measured the same way,
//! released by a `BeginPlay` call instead of through the simulator.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ccgw_bridge::proto::record_play_service_client::RecordPlayServiceClient;
use ccgw_bridge::proto::{BeginPlayRequest, PlayEventType, WatchPlayEventsRequest};
use futures::StreamExt;
use prost_types::value::Kind;
use serde_json::json;
use tonic::transport::Channel;

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
const EVENT_TYPE: &str = crate::baseline::FANOUT_EVENT_TYPE;

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

/// Where the scenario's events come from and which process fans them out.
enum Target<'a> {
    /// Released through the simulator to the bridge's held polls.
    Bridge {
        control: &'a Control,
        ch0: &'a Channel,
    },
    /// `BeginPlay` on the broadcast baseline, which encodes and broadcasts the same event.
    Floor {
        client: RecordPlayServiceClient<Channel>,
    },
}

impl Target<'_> {
    async fn release(&self, id: &str, r: usize, a: usize) -> Result<(), BoxError> {
        match self {
            Target::Bridge { control, .. } => {
                let event = json!({
                    "eventType": EVENT_TYPE,
                    "workNo": id,
                    "content": {"round": r, "agent": a},
                    "eventGenTime": 0,
                });
                control.queue_event(id, &event).await
            }
            Target::Floor { client } => {
                client
                    .clone()
                    .begin_play(BeginPlayRequest {
                        agent_id: id.to_owned(),
                        voice_path: format!("{r},{a}"),
                        ..Default::default()
                    })
                    .await?;
                Ok(())
            }
        }
    }
}

/// What one measured target gave.
struct Measured {
    per_event: Vec<u64>,
    first_watcher: Vec<u64>,
    per_round: Vec<u64>,
    release_spread: Vec<u64>,
    cpu: CpuUse,
    delivered: u64,
    rss: u64,
    open_time: Duration,
    n_conn: usize,
}

pub async fn run(bin: &Path, opts: &Opts) -> Result<Report, BoxError> {
    let mut report = Report::new("fanout");
    let n = opts.agents;
    // Long hold: no poll expires (and pauses 200 ms) during the run, so an event always finds a
    // held poll and the measured path is the bridge's delivery.
    let sim = procs::start_sim(bin, "60s", "600s")?;
    let bridge = procs::start_bridge(bin, &sim, &["--poll-timeout", "90s"]).await?;
    let ids: Vec<String> = (0..n).map(|i| (400_000 + i).to_string()).collect();
    let ch0 = clients::channel(&bridge.url).await?;
    clients::sign_in_via_bridge(&ch0, &ids, 64).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    bridge_against_floor(&mut report, Prefix::default(), &sim, &bridge, &ids, opts).await?;
    report.notes.push(format!(
        "logs: {} {}",
        bridge.proc.log.display(),
        sim.proc.log.display(),
    ));
    Ok(report)
}

/// How a scenario names the fan-out's rows and JSON keys (`push` measures it in push mode
/// beside its own figures).
#[derive(Default, Clone, Copy)]
pub struct Prefix {
    pub label: &'static str,
    pub key: &'static str,
}

/// The fan-out on `bridge` (`ids` signed in on it; events released through the simulator, so
/// polled or pushed, whichever mode the bridge runs in) and then on the floor, in one run;
/// figures and failures into `report`.
pub async fn bridge_against_floor(
    report: &mut Report,
    prefix: Prefix,
    sim: &procs::Sim,
    bridge: &procs::Bridge,
    ids: &[String],
    opts: &Opts,
) -> Result<(), BoxError> {
    let floor = procs::start_baseline("broadcast", sim, 0, 0)?;
    let failures = Arc::new(Failures::default());
    let b = on_bridge(sim, bridge, ids, opts, &failures).await?;
    let floor_ch = clients::channel(&floor.url).await?;
    let f = measure(
        &Target::Floor {
            client: RecordPlayServiceClient::new(floor_ch),
        },
        &floor.url,
        &floor.proc,
        &sim.proc,
        ids,
        opts,
        &failures,
    )
    .await?;
    summarize(report, prefix, opts, b, f);
    failures.add_to(report);
    report
        .notes
        .push(format!("floor log: {}", floor.proc.log.display()));
    Ok(())
}

/// Events delivered on `bridge`: one watcher on each of `ids`, `rounds` rounds of one event per
/// agent released through the simulator, every delivery checked. The bridge's CPU during the
/// measured rounds and the deliveries counted.
pub async fn deliveries(
    sim: &procs::Sim,
    bridge: &procs::Bridge,
    ids: &[String],
    rounds: usize,
    report: &mut Report,
) -> Result<(CpuUse, u64), BoxError> {
    let failures = Arc::new(Failures::default());
    let opts = Opts {
        agents: ids.len(),
        watchers: 1,
        rounds,
    };
    let m = on_bridge(sim, bridge, ids, &opts, &failures).await?;
    failures.add_to(report);
    Ok((m.cpu, m.delivered))
}

/// [`measure`] on `bridge`, its events released through the simulator's control plane.
async fn on_bridge(
    sim: &procs::Sim,
    bridge: &procs::Bridge,
    ids: &[String],
    opts: &Opts,
    failures: &Arc<Failures>,
) -> Result<Measured, BoxError> {
    let control = Control::new(sim)?;
    let ch0 = clients::channel(&bridge.url).await?;
    measure(
        &Target::Bridge {
            control: &control,
            ch0: &ch0,
        },
        &bridge.url,
        &bridge.proc,
        &sim.proc,
        ids,
        opts,
        failures,
    )
    .await
}

#[allow(clippy::too_many_arguments)]
async fn measure(
    target: &Target<'_>,
    url: &str,
    server: &procs::Proc,
    sim: &procs::Proc,
    ids: &[String],
    opts: &Opts,
    failures: &Arc<Failures>,
) -> Result<Measured, BoxError> {
    let (n, m) = (opts.agents, opts.watchers);
    let total_rounds = WARMUP_ROUNDS + opts.rounds;
    let streams = n * m;
    let n_conn = streams.div_ceil(STREAMS_PER_CONN);
    let mut channels = Vec::with_capacity(n_conn);
    for _ in 0..n_conn {
        channels.push(clients::channel(url).await?);
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
        let failures = Arc::clone(failures);
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
    // The bridge must count every stream before events flow (the floor subscribes each stream
    // before answering its call, so an opened stream is counted there).
    if let Target::Bridge { ch0, .. } = target {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let w = clients::bridge_watchers(ch0).await?;
            if w == streams as u64 {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("the bridge reports {w} watchers, expected {streams}").into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut per_event = Vec::with_capacity(opts.rounds * n);
    let mut first_watcher = Vec::with_capacity(opts.rounds * n);
    let mut per_round = Vec::with_capacity(opts.rounds);
    let mut release_spread = Vec::with_capacity(opts.rounds);
    let mut cpu = CpuUse::default();
    let mut c0 = CpuSample::take(server, sim);
    let mut delivered: u64 = 0;
    for r in 0..total_rounds {
        if r == WARMUP_ROUNDS {
            c0 = CpuSample::take(server, sim);
        }
        let sends: Vec<Result<u64, BoxError>> =
            futures::future::join_all(ids.iter().enumerate().map(|(a, id)| async move {
                let t = base.elapsed().as_nanos() as u64;
                target.release(id, r, a).await?;
                Ok(t)
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
    let c1 = CpuSample::take(server, sim);
    cpu.add(c0, c1);
    stopping.store(true, Ordering::Relaxed);
    let rss = server.rss_kib();
    drop(channels);
    for r in readers {
        r.abort();
    }

    Ok(Measured {
        per_event,
        first_watcher,
        per_round,
        release_spread,
        cpu,
        delivered,
        rss,
        open_time,
        n_conn,
    })
}

/// Percentiles (ms) of one target's samples.
struct Figures {
    ev: Samples,
    fw: Samples,
    rd: Samples,
    spread: Samples,
    cpu_per_delivery: f64,
}

fn figures(x: &Measured) -> Figures {
    Figures {
        ev: Samples::new(x.per_event.clone()),
        fw: Samples::new(x.first_watcher.clone()),
        rd: Samples::new(x.per_round.clone()),
        spread: Samples::new(x.release_spread.clone()),
        cpu_per_delivery: x.cpu.bridge.as_nanos() as f64 / 1000.0 / x.delivered.max(1) as f64,
    }
}

fn ms(s: &Samples, q: f64) -> f64 {
    us(s.q(q)) / 1000.0
}

fn summarize(report: &mut Report, prefix: Prefix, opts: &Opts, b: Measured, f: Measured) {
    let Prefix { label: l, key: k } = prefix;
    let (n, m) = (opts.agents, opts.watchers);
    let streams = n * m;
    let (bf, ff) = (figures(&b), figures(&f));
    report.info(
        format!("{l}shape (streams over HTTP/2 connections)"),
        format!(
            "{n} agents × {m} watchers = {streams} streams over {} conns",
            b.n_conn
        ),
    );
    report.info(
        format!("{l}rounds measured (after warm-up)"),
        format!("{} (+{WARMUP_ROUNDS})", opts.rounds),
    );
    for (label, pick) in [
        ("event → last of its agent's watchers", 0),
        ("event → first of its agent's watchers", 1),
    ] {
        let (x, y) = if pick == 0 {
            (&bf.ev, &ff.ev)
        } else {
            (&bf.fw, &ff.fw)
        };
        report.info(
            format!("{l}{label} p50 / p99: bridge; floor"),
            format!(
                "{:.2} / {:.2} ms; {:.2} / {:.2} ms",
                ms(x, 0.5),
                ms(x, 0.99),
                ms(y, 0.5),
                ms(y, 0.99)
            ),
        );
    }
    report.info(
        format!("{l}round → last of all {streams} watchers p50: bridge; floor"),
        format!("{:.2} ms; {:.2} ms", ms(&bf.rd, 0.5), ms(&ff.rd, 0.5)),
    );
    let (bp99, fp99) = (ms(&bf.rd, 0.99), ms(&ff.rd, 0.99));
    report.target(
        format!("{l}round → last of all {streams} watchers p99, bridge vs floor"),
        format!("{bp99:.2} vs {fp99:.2} ms (×{:.2})", bp99 / fp99.max(1e-9)),
        bp99 - fp99,
        0.0,
        false,
        "≤ the floor's",
    );
    report.target(
        format!("{l}CPU per delivered event, bridge vs floor"),
        format!(
            "{:.2} vs {:.2} µs ({} / {} deliveries)",
            bf.cpu_per_delivery, ff.cpu_per_delivery, b.delivered, f.delivered
        ),
        bf.cpu_per_delivery - ff.cpu_per_delivery,
        0.0,
        false,
        "≤ the floor's",
    );
    report.info(
        format!(
            "{l}release spread within a round p99: bridge (simulator control) / floor (BeginPlay)"
        ),
        format!(
            "{:.2} / {:.2} ms",
            ms(&bf.spread, 0.99),
            ms(&ff.spread, 0.99)
        ),
    );
    report.info(
        format!("{l}CPU share during rounds: bridge / simulator / bench; floor"),
        format!(
            "{:.0}% / {:.0}% / {:.0}%; {:.0}% of a core",
            CpuUse::pct(b.cpu.bridge, b.cpu.wall),
            CpuUse::pct(b.cpu.sim, b.cpu.wall),
            CpuUse::pct(b.cpu.bench, b.cpu.wall),
            CpuUse::pct(f.cpu.bridge, f.cpu.wall),
        ),
    );
    report.info(
        format!("{l}CPU of other processes on the machine during rounds (bridge / floor)"),
        format!(
            "{:.0}% / {:.0}% of a core",
            b.cpu.foreign_pct(),
            f.cpu.foreign_pct()
        ),
    );
    report.info(
        format!("{l}time to open all streams (bridge / floor)"),
        format!(
            "{:.2} / {:.2} s",
            b.open_time.as_secs_f64(),
            f.open_time.as_secs_f64()
        ),
    );
    report.info(
        format!("{l}RSS with the streams open (bridge / floor)"),
        format!(
            "{:.1} / {:.1} MiB",
            b.rss as f64 / 1024.0,
            f.rss as f64 / 1024.0
        ),
    );
    report.set(&format!("{k}agents"), n);
    report.set(&format!("{k}watchers_per_agent"), m);
    report.set(&format!("{k}streams"), streams);
    report.set(&format!("{k}rounds"), opts.rounds);
    for (who, x, fig) in [("bridge", &b, &bf), ("floor", &f, &ff)] {
        report.set(
            &format!("{k}{who}_event_to_last_watcher_p50_ms"),
            round(ms(&fig.ev, 0.5), 3),
        );
        report.set(
            &format!("{k}{who}_event_to_last_watcher_p99_ms"),
            round(ms(&fig.ev, 0.99), 3),
        );
        report.set(
            &format!("{k}{who}_round_to_last_watcher_p50_ms"),
            round(ms(&fig.rd, 0.5), 3),
        );
        report.set(
            &format!("{k}{who}_round_to_last_watcher_p99_ms"),
            round(ms(&fig.rd, 0.99), 3),
        );
        report.set(
            &format!("{k}{who}_cpu_per_delivery_us"),
            round(fig.cpu_per_delivery, 3),
        );
        report.set(&format!("{k}{who}_deliveries"), x.delivered);
        report.set(
            &format!("{k}{who}_cpu_pct"),
            round(CpuUse::pct(x.cpu.bridge, x.cpu.wall), 1),
        );
        report.set(&format!("{k}{who}_rss_kib"), x.rss);
        report.set(
            &format!("{k}{who}_foreign_cpu_pct"),
            round(x.cpu.foreign_pct(), 1),
        );
    }
}
