//! Scenario `unary`: BeginPlay/StopPlay pairs through the bridge vs the same two HTTPS calls made
//! directly to the simulator, at several client concurrencies, in alternating slices; beside them,
//! in the same slices, the two baselines of `baseline.rs` — the **relay** (the thinnest
//! hand-written glue) and the **echo** (tonic alone) — driven by the same gRPC client. Every
//! bridge figure is given against the relay as well as against direct.
//!
//! The simulator's play state machine: `play` moves an Idle agent to Starting (its start events
//! come one `play_step` = 20 ms later, so an immediate stop cancels them); `stopplay` from
//! Starting moves it to Stopping and queues three events over 3 × 20 ms, then Idle. A second
//! `play` before Idle is refused (500-007). Each pair therefore takes one agent from a FIFO pool
//! and returns it with a 150 ms cool-down (2.5× the 60 ms the simulator needs). Every path (direct,
//! bridge, relay) draws from a pool of the same size, large enough that the cool-down is over when
//! an agent comes round again even on the fastest path. Waits are counted: while a path waited for
//! more than [`MAX_WAITS_PER_PAIR`] of its pairs, the pool (not the path) limited its rate, and no
//! throughput ratio involving it is reported.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ccgw_bridge::proto::record_play_service_client::RecordPlayServiceClient;
use ccgw_bridge::proto::{BeginPlayRequest, StopPlayRequest};
use futures::StreamExt;
use serde_json::Value;
use tonic::transport::Channel;

use crate::clients::{self, Control, Direct, DirectAgent, SimStats, VOICE_PATH};
use crate::procs::{self, BoxError, CpuSample, CpuUse};
use crate::report::{round, us, us_diff, Failures, Report, Samples};

/// Knobs of the scenario.
pub struct Opts {
    pub concurrencies: Vec<usize>,
    /// Measured time per path and concurrency (split into `slices`).
    pub duration: Duration,
    pub slices: u32,
    pub warmup: Duration,
    /// Agents per path.
    pub agents: usize,
    /// Client workers per gRPC channel (HTTP/2 connection).
    pub workers_per_channel: usize,
    /// Slice pairs that may be discarded (and redone) because other processes loaded the CPUs.
    pub max_discards: u32,
}

/// How long an agent rests after its StopPlay answer before it plays again.
const COOL_DOWN: Duration = Duration::from_millis(150);

/// Agents per path. A pool of `n` sustains `n / COOL_DOWN` pairs per second without waits:
/// 4,096 allow ≈ 27,000 pairs/s (54,000 calls/s), above what any path reaches at c=64 on two
/// cores (direct: ≈ 10,000 calls/s).
pub const DEFAULT_AGENTS: usize = 4096;

/// Pool waits per measured pair above which a path's rate is the pool's, not the path's: 0.1 %.
const MAX_WAITS_PER_PAIR: f64 = 0.001;

/// One path's rate over its measured slices.
#[derive(Clone, Copy)]
struct Rate {
    name: &'static str,
    calls: u64,
    waits: u64,
    secs: f64,
}

impl Rate {
    fn of(name: &'static str, t: &Tally) -> Rate {
        Rate {
            name,
            calls: t.calls,
            waits: t.waits,
            secs: t.cpu.wall.as_secs_f64(),
        }
    }

    fn per_s(&self) -> f64 {
        self.calls as f64 / self.secs.max(1e-9)
    }

    /// Why this rate is not the path's own, if it is not: too many pool waits.
    fn limited_by_pool(&self) -> Option<String> {
        let pairs = (self.calls / 2).max(1);
        let allowed = MAX_WAITS_PER_PAIR * pairs as f64;
        (self.waits as f64 > allowed).then(|| {
            format!(
                "{} waited for a cooled-down agent {} times in {pairs} pairs (> {:.1} %); raise --agents",
                self.name,
                self.waits,
                MAX_WAITS_PER_PAIR * 100.0
            )
        })
    }
}

/// `a ÷ b` in calls per second, or why it would measure the agent pool instead of the paths.
fn throughput_ratio(a: Rate, b: Rate) -> Result<f64, String> {
    match (a.limited_by_pool(), b.limited_by_pool()) {
        (None, None) => Ok(a.per_s() / b.per_s().max(1e-9)),
        (Some(w), None) | (None, Some(w)) => Err(w),
        (Some(wa), Some(wb)) => Err(format!("{wa}; {wb}")),
    }
}

struct Pool {
    queue: Mutex<VecDeque<(usize, Instant)>>,
    waits: AtomicU64,
    cool_down: Duration,
}

impl Pool {
    /// `n` agents, each resting `cool_down` after its pair.
    fn new(n: usize, cool_down: Duration) -> Pool {
        let now = Instant::now();
        Pool {
            queue: Mutex::new((0..n).map(|i| (i, now)).collect()),
            waits: AtomicU64::new(0),
            cool_down,
        }
    }

    async fn take(&self) -> usize {
        let (i, ready) = {
            let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            q.pop_front().expect("pool larger than the concurrency")
        };
        if ready > Instant::now() {
            self.waits.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep_until(ready.into()).await;
        }
        i
    }

    fn put(&self, i: usize) {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        q.push_back((i, Instant::now() + self.cool_down));
    }
}

enum Way {
    Direct {
        client: Direct,
        agents: Vec<DirectAgent>,
    },
    Bridge {
        clients: Vec<RecordPlayServiceClient<Channel>>,
        agents: Vec<String>,
    },
}

struct PathCtx {
    way: Way,
    pool: Pool,
}

impl PathCtx {
    /// One BeginPlay/StopPlay pair on agent `i` from worker `w`; pushes both latencies.
    async fn pair(&self, w: usize, i: usize, lat: &mut Vec<u64>, failures: &Failures) -> u64 {
        let mut done = 0;
        match &self.way {
            Way::Direct { client, agents } => {
                let a = &agents[i];
                let t = Instant::now();
                let r = client.begin_play(a).await;
                lat.push(t.elapsed().as_nanos() as u64);
                match r {
                    Ok(()) => done += 1,
                    Err(e) => {
                        failures.record(format!("direct play {}: {e}", a.id));
                        return done;
                    }
                }
                let t = Instant::now();
                let r = client.stop_play(a).await;
                lat.push(t.elapsed().as_nanos() as u64);
                match r {
                    Ok(()) => done += 1,
                    Err(e) => failures.record(format!("direct stopplay {}: {e}", a.id)),
                }
            }
            Way::Bridge { clients, agents } => {
                let mut client = clients[w % clients.len()].clone();
                let id = &agents[i];
                let t = Instant::now();
                let r = client
                    .begin_play(BeginPlayRequest {
                        agent_id: id.clone(),
                        voice_path: VOICE_PATH.into(),
                        ..Default::default()
                    })
                    .await;
                lat.push(t.elapsed().as_nanos() as u64);
                match r {
                    Ok(_) => done += 1,
                    Err(s) => {
                        failures.record(format!("bridge BeginPlay {id}: {s}"));
                        return done;
                    }
                }
                let t = Instant::now();
                let r = client
                    .stop_play(StopPlayRequest {
                        agent_id: id.clone(),
                    })
                    .await;
                lat.push(t.elapsed().as_nanos() as u64);
                match r {
                    Ok(_) => done += 1,
                    Err(s) => failures.record(format!("bridge StopPlay {id}: {s}")),
                }
            }
        }
        done
    }
}

/// Runs `c` workers on `path` for `dur`; returns (latencies, successful calls).
async fn slice(
    path: &Arc<PathCtx>,
    c: usize,
    dur: Duration,
    failures: &Arc<Failures>,
) -> (Vec<u64>, u64) {
    let end = Instant::now() + dur;
    let tasks: Vec<_> = (0..c)
        .map(|w| {
            let path = Arc::clone(path);
            let failures = Arc::clone(failures);
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(4096);
                let mut calls = 0;
                while Instant::now() < end {
                    let i = path.pool.take().await;
                    calls += path.pair(w, i, &mut lat, &failures).await;
                    path.pool.put(i);
                }
                (lat, calls)
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut calls = 0;
    for t in tasks {
        if let Ok((lat, n)) = t.await {
            all.extend(lat);
            calls += n;
        }
    }
    (all, calls)
}

#[derive(Default)]
struct Tally {
    lat: Vec<u64>,
    calls: u64,
    cpu: CpuUse,
    sim: SimStats,
    waits: u64,
    /// From the bridge's /metrics: (handler seconds, handler count, gateway seconds, count).
    inside: [f64; 4],
}

impl Tally {
    fn merge(&mut self, o: Tally) {
        self.lat.extend(o.lat);
        self.calls += o.calls;
        self.cpu.wall += o.cpu.wall;
        self.cpu.bridge += o.cpu.bridge;
        self.cpu.sim += o.cpu.sim;
        self.cpu.bench += o.cpu.bench;
        self.cpu.machine += o.cpu.machine;
        self.sim.add(o.sim);
        self.waits += o.waits;
        for j in 0..4 {
            self.inside[j] += o.inside[j];
        }
    }
}

const RPC_HIST: &str = "ccgw_grpc_server_handling_seconds";
const GW_HIST: &str = "ccgw_gateway_request_seconds";
/// The label sets of the two measured calls, exactly as `/metrics` writes them (a series
/// missing here would read as 0 and silently shrink the "inside the bridge" figure).
const RPC_SERIES: [&str; 2] = [
    r#"grpc_type="unary",grpc_service="ccgw.v1.RecordPlayService",grpc_method="BeginPlay""#,
    r#"grpc_type="unary",grpc_service="ccgw.v1.RecordPlayService",grpc_method="StopPlay""#,
];

fn inside(m: &std::collections::HashMap<String, f64>) -> [f64; 4] {
    let (rs, rc) = clients::histogram_sum_count(m, RPC_HIST, &RPC_SERIES);
    let (gs, gc) = clients::histogram_sum_count(
        m,
        GW_HIST,
        &[r#"interface="beginPlay""#, r#"interface="stopPlay""#],
    );
    [rs, rc, gs, gc]
}

pub async fn run(bin: &Path, opts: &Opts) -> Result<Report, BoxError> {
    let mut report = Report::new("unary");
    // Long hold: an idle agent's poll costs nothing during the run; long play: nothing ends by
    // itself. The measured path is then the two calls (plus the events they cause).
    let sim = procs::start_sim(bin, "60s", "600s")?;
    let bridge = procs::start_bridge(bin, &sim, &["--poll-timeout", "90s"]).await?;
    let n = opts.agents;
    let relay = procs::start_baseline("relay", &sim, 700_000, n)?;
    let echo = procs::start_baseline("echo", &sim, 0, 0)?;
    let control = Control::new(&sim)?;
    control.stats().await?;
    let admin = reqwest::Client::builder().build()?;

    let bridge_ids: Vec<String> = (0..n).map(|i| (200_000 + i).to_string()).collect();
    let direct_ids: Vec<String> = (0..n).map(|i| (300_000 + i).to_string()).collect();
    let max_c = opts.concurrencies.iter().copied().max().unwrap_or(1);
    let n_channels = max_c.div_ceil(opts.workers_per_channel).max(1);
    let mut channels = Vec::new();
    let mut relay_channels = Vec::new();
    let mut echo_channels = Vec::new();
    for _ in 0..n_channels {
        channels.push(clients::channel(&bridge.url).await?);
        relay_channels.push(clients::channel(&relay.url).await?);
        echo_channels.push(clients::channel(&echo.url).await?);
    }
    let relay_ids: Vec<String> = (0..n).map(|i| (700_000 + i).to_string()).collect();
    let t = Instant::now();
    clients::sign_in_via_bridge(&channels[0], &bridge_ids, 64).await?;
    let direct = Direct::new(&sim)?;
    let direct_agents = clients::sign_in_direct(&direct, &direct_ids, 64).await?;
    eprintln!(
        "unary: {n} + {n} agents signed in in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    // Let every bridge poller drain the sign-in events and settle into a held poll.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let direct_path = Arc::new(PathCtx {
        way: Way::Direct {
            client: direct,
            agents: direct_agents,
        },
        pool: Pool::new(n, COOL_DOWN),
    });
    let failures = Arc::new(Failures::default());

    // Calibration: what one polled event (no watcher) costs the bridge, so that the CPU of the
    // events a pair causes can be told apart from the CPU of the calls themselves.
    let poll_cpu_us = {
        let events = if opts.duration < Duration::from_secs(3) {
            2_000
        } else {
            20_000
        };
        let st0 = control.stats().await?;
        let c0 = CpuSample::take(&bridge.proc, &sim.proc);
        let sent: Vec<Result<(), BoxError>> = futures::stream::iter(0..events)
            .map(|k| {
                let control = control.clone();
                let id = bridge_ids[k % n].clone();
                async move {
                    let event = serde_json::json!({
                        "eventType": "AgentState_Ready", "workNo": id, "content": null, "eventGenTime": 0
                    });
                    control.queue_event(&id, &event).await
                }
            })
            .buffer_unordered(16)
            .collect()
            .await;
        for r in sent {
            r?;
        }
        let until = Instant::now() + Duration::from_secs(10);
        while control.stats().await?.since(st0).polls < events as u64 && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let c1 = CpuSample::take(&bridge.proc, &sim.proc);
        let polls = control.stats().await?.since(st0).polls;
        let mut cpu = CpuUse::default();
        cpu.add(c0, c1);
        let per = cpu.bridge.as_nanos() as f64 / 1000.0 / polls.max(1) as f64;
        report.info(
            "bridge CPU per polled event, no watcher (calibration)",
            format!("{per:.1} µs ({polls} polls)"),
        );
        report.set("bridge_cpu_per_polled_event_us", round(per, 1));
        per
    };

    let mut first_c = true;
    let mut discarded = 0;
    for &c in &opts.concurrencies {
        let nch = c.div_ceil(opts.workers_per_channel).clamp(1, n_channels);
        let grpc_path = |chs: &[Channel], agents: &[String], cool_down| {
            Arc::new(PathCtx {
                way: Way::Bridge {
                    clients: chs[..nch]
                        .iter()
                        .map(|ch| RecordPlayServiceClient::new(ch.clone()))
                        .collect(),
                    agents: agents.to_vec(),
                },
                pool: Pool::new(agents.len(), cool_down),
            })
        };
        let paths = [
            direct_path.clone(),
            grpc_path(&channels, &bridge_ids, COOL_DOWN),
            grpc_path(&relay_channels, &relay_ids, COOL_DOWN),
            // The echo answers without the gateway: its agents need no rest.
            grpc_path(&echo_channels, &relay_ids, Duration::ZERO),
        ];
        // Whose CPU a path's slices are charged to: the process serving it.
        let servers = [&bridge.proc, &bridge.proc, &relay.proc, &echo.proc];
        if first_c {
            // Warm every path at the highest concurrency: connection pools, allocator, caches.
            for p in &paths {
                let (_, _) = slice(p, max_c, opts.warmup, &failures).await;
            }
            first_c = false;
        }
        let mut tallies: [Tally; 4] = Default::default();
        let per_slice = opts.duration / opts.slices;
        let (mut accepted, mut s) = (0, 0);
        while accepted < opts.slices {
            // Rotate the order so no path always follows the same one.
            let order = [0, 1, 2, 3].map(|k| (k + s) % 4);
            s += 1;
            let mut round: [Tally; 4] = Default::default();
            for k in order {
                let path = &paths[k];
                let waits0 = path.pool.waits.load(Ordering::Relaxed);
                let st0 = control.stats().await?;
                let m0 = inside(&clients::bridge_metrics(&admin, &bridge.admin_url).await?);
                let c0 = CpuSample::take(servers[k], &sim.proc);
                let (lat, calls) = slice(path, c, per_slice, &failures).await;
                let c1 = CpuSample::take(servers[k], &sim.proc);
                let m1 = inside(&clients::bridge_metrics(&admin, &bridge.admin_url).await?);
                let st1 = control.stats().await?;
                let tally = &mut round[k];
                for j in 0..4 {
                    tally.inside[j] += m1[j] - m0[j];
                }
                tally.lat.extend(lat);
                tally.calls += calls;
                tally.cpu.add(c0, c1);
                tally.sim.add(st1.since(st0));
                tally.waits += path.pool.waits.load(Ordering::Relaxed) - waits0;
            }
            let foreign = round
                .iter()
                .map(|t| t.cpu.foreign_pct())
                .fold(0.0, f64::max);
            if foreign > procs::FOREIGN_LIMIT && discarded < opts.max_discards {
                discarded += 1;
                eprintln!("unary c={c}: other processes used {foreign:.0}% of a core during a slice round; discarding it");
                procs::wait_quiet(Duration::from_secs(30)).await;
                continue;
            }
            for (t, r) in tallies.iter_mut().zip(round) {
                t.merge(r);
            }
            accepted += 1;
        }
        let [d, b, r, e] = tallies;
        let b_call_only = summarize(&mut report, c, nch, &d, &b, poll_cpu_us);
        against_baselines(&mut report, c, &d, &b, b_call_only, &r, &e, poll_cpu_us);
    }
    failures.add_to(&mut report);
    report.info(
        "agents per path (direct, bridge, relay); cool-down after stop",
        format!("{n}; {} ms", COOL_DOWN.as_millis()),
    );
    report.info(
        "slice pairs discarded for load from other processes",
        format!("{discarded} (limit {:.0}% of a core)", procs::FOREIGN_LIMIT),
    );
    report.set("discarded_slice_pairs", discarded);
    report.set("agents_per_path", n);
    report.set("sim_poll_hold_s", 60);
    report.notes.push(
        "each pair makes the simulator emit 3 events (PhoneRelease, Ready, StopPlayDone) that the bridge polls; 'the call itself' subtracts them at the calibrated cost per polled event".into(),
    );
    report.notes.push(format!(
        "logs: {} {}",
        bridge.proc.log.display(),
        sim.proc.log.display()
    ));
    Ok(report)
}

/// The bridge against direct; returns the bridge's CPU per call, the call itself (µs).
fn summarize(
    report: &mut Report,
    c: usize,
    channels: usize,
    d: &Tally,
    b: &Tally,
    poll_cpu_us: f64,
) -> f64 {
    let (dn, bn) = ("direct", "bridge");
    let ds = Samples::new(d.lat.clone());
    let bs = Samples::new(b.lat.clone());
    let (d_rate, b_rate) = (Rate::of(dn, d), Rate::of(bn, b));
    let (d_tput, b_tput) = (d_rate.per_s(), b_rate.per_s());
    let per_call = |cpu: Duration, calls: u64| cpu.as_nanos() as f64 / 1000.0 / calls.max(1) as f64;
    let b_cpu_call = per_call(b.cpu.bridge, b.calls);
    let hs_per_1000 = b.sim.tls_handshakes as f64 * 1000.0 / b.calls.max(1) as f64;
    let p = format!("c={c}");

    for (name, q) in [("p50", 0.5), ("p99", 0.99), ("p999", 0.999)] {
        let added = us_diff(bs.q(q), ds.q(q));
        let measured = format!(
            "{added:+.1} µs ({bn} {:.1} − {dn} {:.1})",
            us(bs.q(q)),
            us(ds.q(q))
        );
        report.info(format!("{p} added latency {name}"), measured);
        report.set(&format!("c{c}_{name}_direct_us"), us(ds.q(q)));
        report.set(&format!("c{c}_{name}_bridge_us"), us(bs.q(q)));
        report.set(&format!("c{c}_{name}_added_us"), added);
    }
    let polls_per_call = b.sim.polls as f64 / b.calls.max(1) as f64;
    let call_only = b_cpu_call - polls_per_call * poll_cpu_us;
    report.info(
        format!("{p} bridge CPU per call, all included"),
        format!(
            "{b_cpu_call:.1} µs (incl. {polls_per_call:.2} polled events × {poll_cpu_us:.1} µs)"
        ),
    );
    report.info(
        format!("{p} bridge CPU per call, the call itself"),
        format!("{call_only:.1} µs"),
    );
    match throughput_ratio(b_rate, d_rate) {
        Ok(ratio) => {
            report.info(
                format!("{p} throughput {bn}÷{dn}"),
                format!("{ratio:.2} ({bn} {b_tput:.0}/s ÷ {dn} {d_tput:.0}/s)"),
            );
            report.set(&format!("c{c}_throughput_ratio"), round(ratio, 3));
        }
        Err(why) => {
            eprintln!("unary c={c}: throughput {bn}÷{dn} not measured: {why}");
            report.info(
                format!("{p} throughput {bn}÷{dn}"),
                format!("not measured: {why}"),
            );
            report.set(&format!("c{c}_throughput_ratio"), Value::Null);
        }
    }
    report.target(
        format!("{p} new gateway TLS handshakes /1000 calls"),
        format!(
            "{hs_per_1000:.2} ({} in {} calls)",
            b.sim.tls_handshakes, b.calls
        ),
        hs_per_1000,
        1.0,
        false,
        "≤ 1",
    );
    let gw_per_call = b.sim.requests as f64 / b.calls.max(1) as f64;
    report.info(
        format!("{p} gateway requests per call via {bn}"),
        format!("{gw_per_call:.2} (of which polls {polls_per_call:.2})"),
    );
    let sim_d = per_call(d.cpu.sim, d.calls);
    let sim_b = per_call(b.cpu.sim, b.calls);
    report.info(
        format!("{p} simulator CPU per call ({dn} / {bn})"),
        format!(
            "{sim_d:.1} / {sim_b:.1} µs ({:.0}% / {:.0}% of a core)",
            CpuUse::pct(d.cpu.sim, d.cpu.wall),
            CpuUse::pct(b.cpu.sim, b.cpu.wall)
        ),
    );
    report.info(
        format!("{p} bench client CPU per call ({dn} / {bn})"),
        format!(
            "{:.1} / {:.1} µs",
            per_call(d.cpu.bench, d.calls),
            per_call(b.cpu.bench, b.calls)
        ),
    );
    report.info(
        format!("{p} bridge CPU share during {bn} slices"),
        format!("{:.0}% of a core", CpuUse::pct(b.cpu.bridge, b.cpu.wall)),
    );
    let mean = |lat: &Samples| lat.mean_us();
    let handler = b.inside[0] / b.inside[1].max(1.0) * 1e6;
    let exchange = b.inside[2] / b.inside[3].max(1.0) * 1e6;
    report.info(
        format!("{p} mean latency: {bn} client / handler / its gateway exchange; {dn}"),
        format!(
            "{:.0} / {handler:.0} / {exchange:.0} µs; {:.0} µs",
            mean(&bs),
            mean(&ds)
        ),
    );
    report.info(
        format!("{p} CPU of other processes on the machine ({dn} / {bn} slices)"),
        format!(
            "{:.0}% / {:.0}% of a core",
            d.cpu.foreign_pct(),
            b.cpu.foreign_pct()
        ),
    );
    report.info(
        format!("{p} calls measured ({dn} / {bn}); pool waits"),
        format!(
            "{} / {} in {:.1}+{:.1} s; {} / {}; {channels} gRPC conn",
            ds.len(),
            bs.len(),
            d.cpu.wall.as_secs_f64(),
            b.cpu.wall.as_secs_f64(),
            d.waits,
            b.waits
        ),
    );
    report.set(&format!("c{c}_direct_calls_per_s"), round(d_tput, 0));
    report.set(&format!("c{c}_bridge_calls_per_s"), round(b_tput, 0));
    report.set(
        &format!("c{c}_bridge_cpu_per_call_us"),
        round(b_cpu_call, 1),
    );
    report.set(&format!("c{c}_handshakes_per_1000"), round(hs_per_1000, 3));
    report.set(
        &format!("c{c}_gateway_requests_per_call"),
        round(gw_per_call, 3),
    );
    report.set(&format!("c{c}_sim_cpu_per_call_direct_us"), round(sim_d, 1));
    report.set(&format!("c{c}_sim_cpu_per_call_bridge_us"), round(sim_b, 1));
    report.set(
        &format!("c{c}_sim_cpu_pct_direct"),
        round(CpuUse::pct(d.cpu.sim, d.cpu.wall), 1),
    );
    report.set(
        &format!("c{c}_sim_cpu_pct_bridge"),
        round(CpuUse::pct(b.cpu.sim, b.cpu.wall), 1),
    );
    report.set(&format!("c{c}_bridge_handler_mean_us"), round(handler, 1));
    report.set(
        &format!("c{c}_bridge_gateway_exchange_mean_us"),
        round(exchange, 1),
    );
    report.set(&format!("c{c}_direct_mean_us"), round(ds.mean_us(), 1));
    report.set(&format!("c{c}_bridge_mean_us"), round(bs.mean_us(), 1));
    report.set(
        &format!("c{c}_foreign_cpu_pct"),
        round(d.cpu.foreign_pct().max(b.cpu.foreign_pct()), 1),
    );
    report.set(&format!("c{c}_calls_direct"), d.calls);
    report.set(&format!("c{c}_calls_bridge"), b.calls);
    report.set(&format!("c{c}_pool_waits_direct"), d.waits);
    report.set(&format!("c{c}_pool_waits_bridge"), b.waits);
    call_only
}

/// The bridge against the relay (issue 12 goals 2 and 3) and both baselines against direct.
#[allow(clippy::too_many_arguments)]
fn against_baselines(
    report: &mut Report,
    c: usize,
    d: &Tally,
    b: &Tally,
    b_call_only: f64,
    r: &Tally,
    e: &Tally,
    poll_cpu_us: f64,
) {
    let p = format!("c={c}");
    let ds = Samples::new(d.lat.clone());
    let bs = Samples::new(b.lat.clone());
    let rs = Samples::new(r.lat.clone());
    let es = Samples::new(e.lat.clone());
    for (name, q, limit) in [("p50", 0.5, 30.0), ("p99", 0.99, 150.0)] {
        report.info(
            format!("{p} added latency {name} over direct: relay / echo"),
            format!(
                "{:+.1} / {:+.1} µs",
                us_diff(rs.q(q), ds.q(q)),
                us_diff(es.q(q), ds.q(q))
            ),
        );
        let over = us_diff(bs.q(q), rs.q(q));
        let measured = format!(
            "{over:+.1} µs (bridge {:.1} − relay {:.1})",
            us(bs.q(q)),
            us(rs.q(q))
        );
        if c == 1 {
            report.target(
                format!("{p} bridge {name} over the relay's"),
                measured,
                over,
                limit,
                false,
                format!("≤ +{limit:.0} µs"),
            );
        } else {
            report.info(format!("{p} bridge {name} over the relay's"), measured);
        }
        report.set(&format!("c{c}_{name}_relay_us"), us(rs.q(q)));
        report.set(&format!("c{c}_{name}_echo_us"), us(es.q(q)));
        report.set(&format!("c{c}_{name}_bridge_over_relay_us"), over);
    }
    let per_call = |cpu: Duration, calls: u64| cpu.as_nanos() as f64 / 1000.0 / calls.max(1) as f64;
    let r_cpu = per_call(r.cpu.bridge, r.calls);
    let e_cpu = per_call(e.cpu.bridge, e.calls);
    report.info(
        format!("{p} CPU per call: relay / echo"),
        format!("{r_cpu:.1} / {e_cpu:.1} µs"),
    );
    let cpu_ratio = b_call_only / r_cpu.max(1e-9);
    let measured = format!("×{cpu_ratio:.2} (bridge {b_call_only:.1} ÷ relay {r_cpu:.1} µs)");
    if c >= 64 {
        report.target(
            format!("{p} bridge CPU per call (itself) ÷ relay's"),
            measured,
            cpu_ratio,
            1.2,
            false,
            "≤ ×1.2",
        );
        // The relay's CPU for one gateway exchange: its call minus what tonic alone costs.
        let exchange = r_cpu - e_cpu;
        report.target(
            "bridge CPU per polled event vs the relay's per exchange",
            format!("{poll_cpu_us:.1} vs {exchange:.1} µs (relay {r_cpu:.1} − echo {e_cpu:.1})"),
            poll_cpu_us - exchange,
            0.0,
            false,
            "≤ the relay's",
        );
        report.set("relay_cpu_per_exchange_us", round(exchange, 1));
    } else {
        report.info(
            format!("{p} bridge CPU per call (itself) ÷ relay's"),
            measured,
        );
    }
    let (dr, br, rr, er) = (
        Rate::of("direct", d),
        Rate::of("bridge", b),
        Rate::of("relay", r),
        Rate::of("echo", e),
    );
    let (bt, rt, et) = (br.per_s(), rr.per_s(), er.per_s());
    let shown = |x: Result<f64, String>| x.map_or_else(|_| "n/m".to_owned(), |x| format!("{x:.2}"));
    report.info(
        format!("{p} throughput ÷ direct: relay / echo"),
        format!(
            "{} / {} ({rt:.0}/s, {et:.0}/s)",
            shown(throughput_ratio(rr, dr)),
            shown(throughput_ratio(er, dr))
        ),
    );
    let figure = format!("{p} throughput bridge ÷ relay");
    let ratio = throughput_ratio(br, rr);
    match &ratio {
        Ok(ratio) => {
            let measured = format!("{ratio:.2} (bridge {bt:.0}/s ÷ relay {rt:.0}/s)");
            if c >= 64 {
                report.target(figure, measured, *ratio, 0.6, true, "≥ 0.6");
            } else {
                report.info(figure, measured);
            }
        }
        Err(why) => {
            eprintln!("unary c={c}: throughput bridge÷relay not measured: {why}");
            if c >= 64 {
                report.not_measured(figure, why, "≥ 0.6");
            } else {
                report.info(figure, format!("not measured: {why}"));
            }
        }
    }
    report.set(&format!("c{c}_relay_cpu_per_call_us"), round(r_cpu, 1));
    report.set(&format!("c{c}_echo_cpu_per_call_us"), round(e_cpu, 1));
    report.set(&format!("c{c}_bridge_cpu_over_relay"), round(cpu_ratio, 3));
    report.set(&format!("c{c}_relay_calls_per_s"), round(rt, 0));
    report.set(&format!("c{c}_echo_calls_per_s"), round(et, 0));
    report.set(
        &format!("c{c}_throughput_bridge_over_relay"),
        ratio.map_or(Value::Null, |x| round(x, 3).into()),
    );
    report.set(&format!("c{c}_pool_waits_relay"), r.waits);
    report.set(&format!("c{c}_pool_waits_echo"), e.waits);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(name: &'static str, calls: u64, waits: u64) -> Rate {
        Rate {
            name,
            calls,
            waits,
            secs: 2.0,
        }
    }

    #[test]
    fn a_ratio_is_given_when_neither_path_waited_beyond_the_threshold() {
        // 10,000 pairs each: 10 waits is exactly 0.1 %, still the path's own rate.
        let r = throughput_ratio(rate("bridge", 20_000, 10), rate("relay", 40_000, 0));
        assert_eq!(r, Ok(0.5));
    }

    #[test]
    fn a_ratio_is_refused_while_either_path_waited_for_agents() {
        let why = throughput_ratio(rate("bridge", 20_000, 11), rate("relay", 40_000, 0))
            .expect_err("bridge waited for 0.11 % of its pairs");
        assert!(
            why.contains("bridge waited") && why.contains("11 times in 10000 pairs"),
            "{why}"
        );
        let why = throughput_ratio(rate("bridge", 20_000, 0), rate("relay", 40_000, 5_000))
            .expect_err("relay waited");
        assert!(why.starts_with("relay waited"), "{why}");
        let why = throughput_ratio(rate("bridge", 2, 1), rate("relay", 2, 1)).unwrap_err();
        assert!(why.contains("bridge") && why.contains("relay"), "{why}");
    }

    #[test]
    fn a_path_without_calls_but_with_waits_is_refused() {
        assert!(rate("bridge", 0, 1).limited_by_pool().is_some());
        assert!(rate("bridge", 0, 0).limited_by_pool().is_none());
    }
}
