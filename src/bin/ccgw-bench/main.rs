//! `ccgw-bench`: CPU per call, added latency and resident memory of the bridge, side by side with
//! the direct REST call to the gateway.
//!
//! ```text
//! cargo build --release --bins
//! ./target/release/ccgw-bench unary|fanout|footprint|soak|push|all [--quick]
//!
//! cargo build --release --features pool --bins   # the pool scenario needs a pool-enabled bridge
//! ./target/release/ccgw-bench pool [--agents 30000] [--replicas 3]
//! ```
//!
//! The simulator (`ccgw-bridge simulate`) and the bridge (the release `ccgw-bridge` binary next to
//! this one) run as separate processes on loopback; this process drives the load with its own
//! tonic and reqwest clients, verifies every answer, reads CPU time and RSS from `/proc`, and
//! prints one table and one JSON line per scenario. Exit status: 0, or 1 when any call or delivery
//! failed verification (or the setup failed). Missed targets are shown as FAIL in the table and
//! `"targets_met":false` in the JSON, without changing the exit status. A target the run could not
//! measure (e.g. a throughput ratio while agents were scarce) is shown as NOT MEASURED and is not
//! met either.

mod baseline;
mod clients;
mod fanout;
mod footprint;
mod pool;
mod procs;
mod push;
mod report;
mod soak;
mod unary;

use clap::{Parser, ValueEnum};
use std::process::ExitCode;
use std::time::Duration;

/// Where the pool scenario's bridges get events from (the bridge's `--events`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Events {
    Poll,
    Push,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// BeginPlay/StopPlay pairs at concurrency 1 and 64, bridge vs direct.
    Unary,
    /// N agents × M watchers: event release to the last watcher.
    Fanout,
    /// RSS idle / with agents / with watchers, idle CPU, start to SERVING.
    Footprint,
    /// RSS at steady state: 64 busy agents, 16 play clients, churning watchers.
    Soak,
    /// Poll mode against push mode (issue 24): memory per agent, idle CPU, CPU per delivered
    /// event and c=64 throughput against the relay's; the fan-out in push mode against the floor.
    Push,
    /// All five above, one after the other (not `pool`).
    All,
    /// Agent pool: etcd, the simulator in this process and --replicas release bridges sharing
    /// --agents agents (default 30,000): cold start, SIGTERM hand-over, SIGKILL take-over,
    /// rolling restart, etcd cost, RSS/CPU per bridge. Needs `cargo build --release --features
    /// pool --bins` and etcd (.venv/bin/etcd, --etcd-bin or PATH), and a file-descriptor limit
    /// of agents + 4,096, with --events push agents / 4 + 4,096 (raised when allowed; otherwise
    /// it stops and says so).
    Pool,
}

#[derive(Debug, Parser)]
#[command(
    name = "ccgw-bench",
    about = "Benchmark of ccgw-bridge against the direct REST path"
)]
struct Args {
    scenario: Scenario,
    /// Short smoke run (seconds, small sizes): checks the harness, not the targets.
    #[arg(long)]
    quick: bool,
    /// unary: measured seconds per path and concurrency.
    #[arg(long)]
    duration: Option<f64>,
    /// unary: agents per path (direct, bridge, relay each sign in this many; BeginPlay/StopPlay
    /// pairs draw from them). Too few and a throughput ratio is refused (pool waits).
    /// push: agents signed in on each bridge.
    /// pool: agents in the pool (default 30,000; 300 with --quick).
    #[arg(long)]
    agents: Option<usize>,
    /// unary: client concurrencies, comma-separated.
    #[arg(long, value_delimiter = ',')]
    concurrency: Option<Vec<usize>>,
    /// unary: client workers sharing one gRPC channel (HTTP/2 connection).
    #[arg(long, default_value_t = 8)]
    workers_per_channel: usize,
    /// fanout: agents.
    #[arg(long)]
    fanout_agents: Option<usize>,
    /// fanout: watchers per agent.
    #[arg(long)]
    watchers: Option<usize>,
    /// fanout: event rounds (one event per agent per round).
    #[arg(long)]
    rounds: Option<usize>,
    /// Before each scenario, wait up to this many seconds for the machine to be quiet (other
    /// processes using < 15 % of a core), since the benchmark shares the CPUs with them.
    #[arg(long, default_value_t = 120.0)]
    wait_quiet: f64,
    /// Worker threads of the benchmark's own (client) runtime; default: one per CPU.
    #[arg(long)]
    client_threads: Option<usize>,
    /// Environment variable for the bridge processes only (repeatable), e.g.
    /// `--bridge-env TOKIO_WORKER_THREADS=1`.
    #[arg(long, value_name = "KEY=VALUE")]
    bridge_env: Vec<String>,
    /// Extra flag for the bridge processes (repeatable), e.g. `--bridge-arg=--poll-gap=500ms`.
    #[arg(long, value_name = "FLAG", allow_hyphen_values = true)]
    bridge_arg: Vec<String>,
    /// pool: bridge replicas sharing the agents.
    #[arg(long, default_value_t = 3)]
    replicas: usize,
    /// pool: how the bridges get events; `push` gives every bridge its own callback listener,
    /// certificate and `--callback-url` (no connection held per agent, so larger pools fit a
    /// file-descriptor limit).
    #[arg(long, value_enum, default_value_t = Events::Poll)]
    events: Events,
    /// pool: the etcd binary (default: .venv/bin/etcd of the source tree, then etcd on PATH).
    #[arg(long)]
    etcd_bin: Option<std::path::PathBuf>,
    /// footprint: seconds to measure CPU with 1,000 agents in idle long polls.
    #[arg(long)]
    idle_seconds: Option<f64>,
    /// soak: seconds of sustained load.
    #[arg(long)]
    soak_seconds: Option<f64>,
}

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("__serve") {
        // A baseline server started by a scenario (see `baseline.rs`).
        return match baseline::serve_main(std::env::args().skip(1)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ccgw-bench __serve: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let args = Args::parse();
    // The same TLS stack as the bridge's gateway client (ring); idempotent.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = args.client_threads {
        builder.worker_threads(n.max(1));
    }
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ccgw-bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(args))
}

async fn run(args: Args) -> ExitCode {
    let mut extra = procs::BridgeExtra {
        args: args.bridge_arg.clone(),
        env: Vec::new(),
    };
    for kv in &args.bridge_env {
        let Some((k, v)) = kv.split_once('=') else {
            eprintln!("ccgw-bench: --bridge-env wants KEY=VALUE, got {kv:?}");
            return ExitCode::FAILURE;
        };
        extra.env.push((k.to_owned(), v.to_owned()));
    }
    let _ = procs::BRIDGE_EXTRA.set(extra);
    let bin = match procs::bridge_binary() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("ccgw-bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    let scenarios: &[Scenario] = match args.scenario {
        Scenario::All => &[
            Scenario::Unary,
            Scenario::Fanout,
            Scenario::Footprint,
            Scenario::Soak,
            Scenario::Push,
        ],
        ref one => std::slice::from_ref(one),
    };
    let mut failed = false;
    for &s in scenarios {
        procs::wait_quiet(Duration::from_secs_f64(args.wait_quiet)).await;
        let result = match s {
            Scenario::Unary => unary::run(&bin, &unary_opts(&args)).await,
            Scenario::Fanout => fanout::run(&bin, &fanout_opts(&args)).await,
            Scenario::Footprint => footprint::run(&bin, &footprint_opts(&args)).await,
            Scenario::Soak => {
                let opts = soak::Opts {
                    duration: Duration::from_secs_f64(args.soak_seconds.unwrap_or(if args.quick {
                        10.0
                    } else {
                        120.0
                    })),
                };
                soak::run(&bin, &opts).await
            }
            Scenario::Push => push::run(&bin, &push_opts(&args)).await,
            Scenario::Pool => pool::run(&bin, &pool_opts(&args)).await,
            Scenario::All => unreachable!(),
        };
        match result {
            Ok(mut report) => {
                report.print();
                failed |= report.failures > 0;
            }
            Err(e) => {
                eprintln!("ccgw-bench {s:?}: {e}");
                failed = true;
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn unary_opts(a: &Args) -> unary::Opts {
    unary::Opts {
        concurrencies: a.concurrency.clone().unwrap_or_else(|| vec![1, 64]),
        duration: Duration::from_secs_f64(a.duration.unwrap_or(if a.quick { 1.0 } else { 8.0 })),
        slices: if a.quick { 2 } else { 4 },
        warmup: Duration::from_millis(if a.quick { 300 } else { 1500 }),
        agents: a.agents.unwrap_or(unary::DEFAULT_AGENTS),
        workers_per_channel: a.workers_per_channel.max(1),
        max_discards: if a.quick { 0 } else { 8 },
    }
}

fn push_opts(a: &Args) -> push::Opts {
    push::Opts {
        agents: a.agents.unwrap_or(if a.quick { 100 } else { 10_000 }),
        idle: Duration::from_secs_f64(a.idle_seconds.unwrap_or(if a.quick { 2.0 } else { 30.0 })),
        duration: Duration::from_secs_f64(a.duration.unwrap_or(if a.quick { 1.0 } else { 8.0 })),
        concurrency: a
            .concurrency
            .as_ref()
            .and_then(|c| c.last().copied())
            .unwrap_or(64),
        event_agents: if a.quick { 20 } else { 256 },
        event_rounds: if a.quick { 10 } else { 40 },
        fanout: fanout_opts(a),
    }
}

fn pool_opts(a: &Args) -> pool::Opts {
    pool::Opts {
        agents: a
            .agents
            .unwrap_or(if a.quick { 300 } else { pool::DEFAULT_AGENTS }),
        replicas: a.replicas,
        push: a.events == Events::Push,
        lease_ttl: Duration::from_secs(6),
        etcd_bin: a.etcd_bin.clone(),
    }
}

fn fanout_opts(a: &Args) -> fanout::Opts {
    fanout::Opts {
        agents: a.fanout_agents.unwrap_or(if a.quick { 10 } else { 100 }),
        watchers: a.watchers.unwrap_or(if a.quick { 10 } else { 100 }),
        rounds: a.rounds.unwrap_or(if a.quick { 20 } else { 200 }),
    }
}

fn footprint_opts(a: &Args) -> footprint::Opts {
    footprint::Opts {
        agent_steps: if a.quick {
            vec![100]
        } else {
            vec![100, 1_000, 10_000]
        },
        watcher_steps: if a.quick {
            vec![1_000, 5_000]
        } else {
            vec![10_000, 50_000]
        },
        idle: Duration::from_secs_f64(a.idle_seconds.unwrap_or(if a.quick { 3.0 } else { 20.4 })),
        starts: if a.quick { 3 } else { 7 },
        pinned: if a.quick { 1_000 } else { 10_000 },
    }
}
