//! Scenario `push` (issue 24): poll mode and push mode side by side in one run, against one
//! simulator: memory per signed-in agent, idle CPU with the agents signed in, and c=N
//! BeginPlay/StopPlay throughput of each bridge and of the relay (the hand-written glue of
//! `baseline.rs`). Every answer is verified.
//!
//! The push bridge's callback server presents a certificate of a throw-away CA made here, which
//! the simulator is told to trust (`simulate --callback-ca`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ccgw_bridge::proto::record_play_service_client::RecordPlayServiceClient;
use ccgw_bridge::proto::StopPlayRequest;
use futures::StreamExt;

use crate::clients;
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
}

/// A callback CA and the server certificate it signed for 127.0.0.1, as files.
struct CallbackCerts {
    dir: PathBuf,
}

impl CallbackCerts {
    fn write() -> Result<CallbackCerts, BoxError> {
        let dir = std::env::temp_dir().join(format!("ccgw-bench-{}-callback", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_key = rcgen::KeyPair::generate()?;
        let ca = ca_params.self_signed(&ca_key)?;
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let leaf_key = rcgen::KeyPair::generate()?;
        let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])?
            .signed_by(&leaf_key, &issuer)?;
        std::fs::write(dir.join("ca.pem"), ca.pem())?;
        std::fs::write(dir.join("cert.pem"), leaf.pem())?;
        std::fs::write(dir.join("key.pem"), leaf_key.serialize_pem())?;
        Ok(CallbackCerts { dir })
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).to_string_lossy().into_owned()
    }
}

impl Drop for CallbackCerts {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub async fn run(bin: &Path, opts: &Opts) -> Result<Report, BoxError> {
    let mut report = Report::new("push");
    let certs = CallbackCerts::write()?;
    // The vendor's 10 s hold: the poll bridge's idle cost is the production one.
    let sim = procs::start_sim_with(
        bin,
        "10s",
        "600s",
        &["--callback-ca", &certs.path("ca.pem")],
    )?;
    let port = procs::free_port()?;
    let push_flags = [
        "--events".to_owned(),
        "push".to_owned(),
        "--callback-listen".to_owned(),
        format!("127.0.0.1:{port}"),
        "--callback-url".to_owned(),
        format!("https://127.0.0.1:{port}/ccgw/events"),
        "--callback-cert".to_owned(),
        certs.path("cert.pem"),
        "--callback-key".to_owned(),
        certs.path("key.pem"),
    ];
    let push_flags: Vec<&str> = push_flags.iter().map(String::as_str).collect();
    let modes: [(&str, &[&str], usize); 2] = [("poll", &[], 20_000), ("push", &push_flags, 40_000)];
    let mut rates = Vec::new();
    for (mode, flags, first) in modes {
        let bridge = procs::start_bridge(bin, &sim, flags).await?;
        let channel = clients::channel(&bridge.url).await?;
        let ids: Vec<String> = (first..first + opts.agents)
            .map(|i| i.to_string())
            .collect();
        let before = bridge.proc.rss_kib();
        clients::sign_in_via_bridge(&channel, &ids, 64).await?;
        // Let the first poll/heartbeat round settle before reading RSS.
        tokio::time::sleep(Duration::from_millis(500)).await;
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
        let mut idle = CpuUse::default();
        let from = CpuSample::take(&bridge.proc, &sim.proc);
        tokio::time::sleep(opts.idle).await;
        idle.add(from, CpuSample::take(&bridge.proc, &sim.proc));
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
        let share = opts.agents.min(opts.concurrency * 4).max(opts.concurrency);
        let rate = pairs(&mut report, &bridge.url, &ids[..share.min(ids.len())], opts).await?;
        report.info(
            format!("{mode}: BeginPlay/StopPlay pairs/s, c={}", opts.concurrency),
            format!("{rate:.0}"),
        );
        rates.push((mode, rate));
        drop(bridge);
    }
    let relay_first = 60_000;
    // As many agents as each bridge had for its pairs, at most the bridges' count.
    let relay_agents = opts.agents.min(opts.concurrency * 4).max(opts.concurrency);
    let relay = procs::start_baseline("relay", &sim, relay_first, relay_agents)?;
    let relay_ids: Vec<String> = (relay_first..relay_first + relay_agents)
        .map(|i| i.to_string())
        .collect();
    let relay_rate = pairs(&mut report, &relay.url, &relay_ids, opts).await?;
    report.info(
        format!("relay: BeginPlay/StopPlay pairs/s, c={}", opts.concurrency),
        format!("{relay_rate:.0}"),
    );
    for (mode, rate) in rates {
        let ratio = if relay_rate > 0.0 {
            rate / relay_rate
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
    drop(relay);
    drop(sim);
    Ok(report)
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
) -> Result<f64, BoxError> {
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
    Ok(total as f64 / elapsed.max(1e-9))
}
