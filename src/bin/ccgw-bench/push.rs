//! Scenario `push` (issue 24): poll mode and push mode side by side in one run, against one
//! simulator: memory per signed-in agent, idle CPU with the agents signed in, CPU per event
//! delivered to a watcher, and c=N BeginPlay/StopPlay throughput of each bridge and of the relay
//! (the hand-written glue of `baseline.rs`), whose CPU per gateway exchange (its call minus the
//! echo's) the CPU per event is judged against; then the fan-out scenario (`fanout.rs`) on a
//! push-mode bridge against the floor. Every answer is verified.
//!
//! A push bridge's callback server presents a certificate of a throw-away CA made here, which
//! the simulator is told to trust (`simulate --callback-ca`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ccgw_bridge::proto::record_play_service_client::RecordPlayServiceClient;
use ccgw_bridge::proto::StopPlayRequest;
use futures::StreamExt;

use crate::clients;
use crate::fanout;
use crate::procs::{self, BoxError, CpuSample, CpuUse};
use crate::report::{mib, round, Report};

pub struct Opts {
    /// Agents signed in on each bridge (memory, idle CPU).
    pub agents: usize,
    /// Seconds of idle CPU measured per bridge.
    pub idle: Duration,
    /// Seconds of BeginPlay/StopPlay pairs per path.
    pub duration: Duration,
    /// Client concurrency (one agent per worker).
    pub concurrency: usize,
    /// Agents with one watcher each for the CPU per delivered event (of `agents`).
    pub event_agents: usize,
    /// Rounds of one event per such agent.
    pub event_rounds: usize,
    /// The fan-out scenario on a push bridge.
    pub fanout: fanout::Opts,
}

/// A throw-away CA for callback certificates, and the certificates it signed for 127.0.0.1, as
/// files; the simulator trusts it (`--callback-ca`).
pub struct CallbackCa {
    dir: PathBuf,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl CallbackCa {
    pub fn new(tag: &str) -> Result<CallbackCa, BoxError> {
        let dir =
            std::env::temp_dir().join(format!("ccgw-bench-{}-{tag}-callback", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_key = rcgen::KeyPair::generate()?;
        let ca = ca_params.self_signed(&ca_key)?;
        std::fs::write(dir.join("ca.pem"), ca.pem())?;
        Ok(CallbackCa {
            dir,
            issuer: rcgen::Issuer::new(ca_params, ca_key),
        })
    }

    /// The CA certificate, for the simulator's `--callback-ca`.
    pub fn ca_path(&self) -> String {
        self.dir.join("ca.pem").to_string_lossy().into_owned()
    }

    /// Flags putting one bridge (`name`, unique per bridge) in push mode: its own callback
    /// listener on a free loopback port, its own certificate, its own `--callback-url`.
    pub fn push_flags(&self, name: &str) -> Result<Vec<String>, BoxError> {
        let key = rcgen::KeyPair::generate()?;
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])?
            .signed_by(&key, &self.issuer)?;
        let cert_path = self.dir.join(format!("{name}.pem"));
        let key_path = self.dir.join(format!("{name}.key"));
        std::fs::write(&cert_path, cert.pem())?;
        std::fs::write(&key_path, key.serialize_pem())?;
        let port = procs::free_port()?;
        Ok(vec![
            "--events".to_owned(),
            "push".to_owned(),
            "--callback-listen".to_owned(),
            format!("127.0.0.1:{port}"),
            "--callback-url".to_owned(),
            format!("https://127.0.0.1:{port}/ccgw/events"),
            "--callback-cert".to_owned(),
            cert_path.to_string_lossy().into_owned(),
            "--callback-key".to_owned(),
            key_path.to_string_lossy().into_owned(),
        ])
    }
}

impl Drop for CallbackCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// µs of `cpu` per `n`.
fn per(cpu: Duration, n: u64) -> f64 {
    cpu.as_nanos() as f64 / 1000.0 / n.max(1) as f64
}

pub async fn run(bin: &Path, opts: &Opts) -> Result<Report, BoxError> {
    let mut report = Report::new("push");
    let ca = CallbackCa::new("push")?;
    // The vendor's 10 s hold: the poll bridge's idle cost is the production one.
    let sim = procs::start_sim_with(bin, "10s", "600s", &["--callback-ca", &ca.ca_path()])?;
    let modes: [(&str, Vec<String>, usize); 2] = [
        ("poll", Vec::new(), 20_000),
        ("push", ca.push_flags("push")?, 40_000),
    ];
    let control = clients::Control::new(&sim)?;
    let mut rates = Vec::new();
    let mut per_event = Vec::new();
    for (mode, flags, first) in modes {
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let bridge = procs::start_bridge(bin, &sim, &flags).await?;
        let channel = clients::channel(&bridge.url).await?;
        let ids: Vec<String> = (first..first + opts.agents)
            .map(|i| i.to_string())
            .collect();
        let before = bridge.proc.rss_kib();
        clients::sign_in_via_bridge(&channel, &ids, 64).await?;
        // Let the first poll round settle before measuring.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut idle = CpuUse::default();
        let st0 = control.stats().await?;
        let from = CpuSample::take(&bridge.proc, &sim.proc);
        tokio::time::sleep(opts.idle).await;
        idle.add(from, CpuSample::take(&bridge.proc, &sim.proc));
        let st = control.stats().await?.since(st0);
        let idle_pct = CpuUse::pct(idle.bridge, idle.wall);
        report.info(
            format!("{mode}: idle CPU with {} agents", opts.agents),
            format!(
                "{:.2} % of a core (other processes {:.1} %)",
                idle_pct,
                idle.foreign_pct()
            ),
        );
        report
            .json
            .insert(format!("{mode}_idle_cpu_pct"), round(idle_pct, 3).into());
        // Counts, not timings: what the idle agents cost the gateway, and whether each
        // exchange paid a TLS handshake.
        let exchange_us = per(idle.bridge, st.requests);
        report.info(
            format!("{mode}: idle gateway exchanges (polls or heartbeats) / TLS handshakes"),
            format!(
                "{} / {} in {:.0} s; bridge CPU {exchange_us:.1} µs per exchange",
                st.requests,
                st.tls_handshakes,
                idle.wall.as_secs_f64()
            ),
        );
        report
            .json
            .insert(format!("{mode}_idle_exchanges"), st.requests.into());
        report.json.insert(
            format!("{mode}_idle_tls_handshakes"),
            st.tls_handshakes.into(),
        );
        report.json.insert(
            format!("{mode}_idle_cpu_per_exchange_us"),
            round(exchange_us, 2).into(),
        );
        // After the idle window: with the default 30 s it spans a heartbeat period, so what
        // the heartbeats hold (connections) is counted.
        let after = bridge.proc.rss_kib();
        let per_agent = after.saturating_sub(before) as f64 / opts.agents.max(1) as f64;
        report.info(
            format!("{mode}: RSS with {} signed-in agents", opts.agents),
            format!(
                "{:.1} MiB (+{:.1} KiB per agent)",
                mib(after),
                round(per_agent, 1)
            ),
        );
        report
            .json
            .insert(format!("{mode}_kib_per_agent"), round(per_agent, 2).into());
        // The idle agents' own cost (polls, heartbeats) is taken out at the idle rate.
        let watched = &ids[..opts.event_agents.clamp(1, ids.len())];
        let (cpu, delivered) =
            fanout::deliveries(&sim, &bridge, watched, opts.event_rounds, &mut report).await?;
        let idle_share = idle.bridge.as_secs_f64() / idle.wall.as_secs_f64().max(1e-9);
        let net = cpu
            .bridge
            .saturating_sub(cpu.wall.mul_f64(idle_share.min(1.0)));
        let event_us = per(net, delivered);
        report.info(
            format!("{mode}: bridge CPU per delivered event, one watcher"),
            format!(
                "{event_us:.1} µs ({delivered} events to {} watchers; {:.1} µs before the idle share)",
                watched.len(),
                per(cpu.bridge, delivered)
            ),
        );
        report.json.insert(
            format!("{mode}_cpu_per_delivered_event_us"),
            round(event_us, 2).into(),
        );
        per_event.push((mode, event_us));
        let share = opts.agents.min(opts.concurrency * 4).max(opts.concurrency);
        let pairs = pairs(&mut report, &bridge.url, &ids[..share.min(ids.len())], opts).await?;
        report.info(
            format!("{mode}: BeginPlay/StopPlay pairs/s, c={}", opts.concurrency),
            format!("{:.0}", pairs.rate),
        );
        rates.push((mode, pairs.rate));
        drop(bridge);
    }
    let relay_first = 60_000;
    // As many agents as each bridge had for its pairs, at most the bridges' count.
    let relay_agents = opts.agents.min(opts.concurrency * 4).max(opts.concurrency);
    let relay = procs::start_baseline("relay", &sim, relay_first, relay_agents)?;
    let relay_ids: Vec<String> = (relay_first..relay_first + relay_agents)
        .map(|i| i.to_string())
        .collect();
    let c0 = CpuSample::take(&relay.proc, &sim.proc);
    let relay_pairs = pairs(&mut report, &relay.url, &relay_ids, opts).await?;
    let mut relay_cpu = CpuUse::default();
    relay_cpu.add(c0, CpuSample::take(&relay.proc, &sim.proc));
    drop(relay);
    report.info(
        format!("relay: BeginPlay/StopPlay pairs/s, c={}", opts.concurrency),
        format!("{:.0}", relay_pairs.rate),
    );
    // What tonic alone costs per call (the echo answers at once), as `unary` subtracts it.
    let echo = procs::start_baseline("echo", &sim, 0, 0)?;
    let c0 = CpuSample::take(&echo.proc, &sim.proc);
    let echo_pairs = pairs(&mut report, &echo.url, &relay_ids, opts).await?;
    let mut echo_cpu = CpuUse::default();
    echo_cpu.add(c0, CpuSample::take(&echo.proc, &sim.proc));
    drop(echo);
    let (r_call, e_call) = (
        per(relay_cpu.bridge, 2 * relay_pairs.count),
        per(echo_cpu.bridge, 2 * echo_pairs.count),
    );
    let exchange = r_call - e_call;
    report.json.insert(
        "relay_cpu_per_exchange_us".to_owned(),
        round(exchange, 2).into(),
    );
    for (mode, event_us) in per_event {
        let measured = format!(
            "{event_us:.1} vs {exchange:.1} µs (relay {r_call:.1} − echo {e_call:.1} per call)"
        );
        if mode == "push" {
            report.target(
                "push: CPU per delivered event vs the relay's per exchange",
                measured,
                event_us - exchange / 2.0,
                0.0,
                false,
                "≤ half the relay's",
            );
        } else {
            report.info(
                format!("{mode}: CPU per delivered event vs the relay's per exchange"),
                measured,
            );
        }
    }
    for (mode, rate) in rates {
        let ratio = if relay_pairs.rate > 0.0 {
            rate / relay_pairs.rate
        } else {
            0.0
        };
        report.json.insert(
            format!("{mode}_throughput_vs_relay"),
            round(ratio, 3).into(),
        );
        if mode == "push" {
            report.target(
                format!("push: throughput ÷ relay's, c={}", opts.concurrency),
                format!("{ratio:.2}"),
                ratio,
                0.8,
                true,
                "≥ 0.8",
            );
        } else {
            report.info(
                format!("{mode}: throughput ÷ relay's, c={}", opts.concurrency),
                format!("{ratio:.2}"),
            );
        }
    }
    // The fan-out scenario with its own agents on a fresh push bridge, as `fanout` runs it.
    let flags = ca.push_flags("fanout")?;
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let bridge = procs::start_bridge(bin, &sim, &flags).await?;
    let ids: Vec<String> = (80_000..80_000 + opts.fanout.agents)
        .map(|i| i.to_string())
        .collect();
    clients::sign_in_via_bridge(&clients::channel(&bridge.url).await?, &ids, 64).await?;
    fanout::bridge_against_floor(
        &mut report,
        fanout::Prefix {
            label: "push fan-out: ",
            key: "push_fanout_",
        },
        &sim,
        &bridge,
        &ids,
        &opts.fanout,
    )
    .await?;
    drop(bridge);
    drop(sim);
    Ok(report)
}

/// What [`pairs`] did.
struct Pairs {
    /// Pairs per second.
    rate: f64,
    /// Pairs completed.
    count: u64,
}

/// BeginPlay/StopPlay pairs for `opts.duration` at `url`: `opts.concurrency` workers, each
/// going round its own share of `ids` (the simulator's agent takes a moment after a stop before
/// it plays again); pairs per second. A BeginPlay refused because the agent still plays
/// (`500-007`) is counted as a wait, like `unary`'s pool waits; any other failure fails the run.
async fn pairs(
    report: &mut Report,
    url: &str,
    ids: &[String],
    opts: &Opts,
) -> Result<Pairs, BoxError> {
    let channel = clients::channel(url).await?;
    let started = Instant::now();
    let until = started + opts.duration;
    let workers = opts.concurrency.clamp(1, ids.len().max(1));
    let tasks = (0..workers).map(|w| {
        let mut client = RecordPlayServiceClient::new(channel.clone());
        let mine: Vec<String> = ids.iter().skip(w).step_by(workers).cloned().collect();
        async move {
            let (mut done, mut waits, mut failed, mut example) = (0u64, 0u64, 0u64, None);
            for id in mine.iter().cycle() {
                if Instant::now() >= until {
                    break;
                }
                let begin = clients::begin_play(&mut client, id).await;
                if let Err(status) = begin {
                    if status.message().contains("500-007") {
                        waits += 1;
                    } else {
                        failed += 1;
                        example.get_or_insert(format!("BeginPlay {id}: {}", status.message()));
                    }
                    continue;
                }
                match client
                    .stop_play(StopPlayRequest {
                        agent_id: id.clone(),
                    })
                    .await
                {
                    Ok(_) => done += 1,
                    Err(status) => {
                        failed += 1;
                        example.get_or_insert(format!("StopPlay {id}: {}", status.message()));
                    }
                }
            }
            (done, waits, failed, example)
        }
    });
    let results: Vec<_> = futures::stream::iter(tasks)
        .buffer_unordered(workers)
        .collect()
        .await;
    let elapsed = started.elapsed().as_secs_f64();
    let (mut total, mut all_waits) = (0, 0);
    for (done, waits, failed, example) in results {
        total += done;
        all_waits += waits;
        report.failures += failed;
        report.failure_examples.extend(example);
    }
    report.notes.push(format!(
        "{url}: {total} pairs, {all_waits} BeginPlay waits (agent still playing)"
    ));
    Ok(Pairs {
        rate: total as f64 / elapsed.max(1e-9),
        count: total,
    })
}
