//! The `ccgw-bridge` binary: parse and validate configuration, bind, run until a signal.
//!
//! Everything else lives in the library (`ccgw_bridge::run`), which the tests call too.

use ccgw_bridge::args::{Cli, Command};
use ccgw_bridge::config::{Config, PinnedAgent, SimulateArgs};
use ccgw_bridge::secret::Password;
use ccgw_bridge::session::{EventMode, SignInParams};
use ccgw_bridge::sim::{AuthMode, SimConfig, Simulator};
use ccgw_bridge::telemetry::{self, LogFormat};
use ccgw_bridge::{run, Listeners};
use clap::Parser;
use std::path::Path;
use std::process::ExitCode;

/// `EX_USAGE`: bad configuration, detected before any port is bound.
const EX_USAGE: u8 = 64;
/// `EX_UNAVAILABLE`: a port could not be bound or the bridge failed to start.
const EX_UNAVAILABLE: u8 = 69;

/// Agent signed in automatically under `--simulate`, so one client command can play to it.
const DEMO_AGENT: &str = "1001";
/// Validates the configuration under `--simulate` before the simulator exists (replaced by its
/// URL and CA once the bridge's ports are bound).
const SIMULATOR_PLACEHOLDER: &str = "https://127.0.0.1:8043";

fn main() -> ExitCode {
    let cli = Cli::parse();
    let workers = match cli.command {
        None => usize::from(cli.bridge.worker_threads),
        Some(_) => 2,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ccgw-bridge: cannot start the runtime: {e}");
            return ExitCode::from(EX_UNAVAILABLE);
        }
    };
    runtime.block_on(dispatch(cli))
}

async fn dispatch(cli: Cli) -> ExitCode {
    match cli.command {
        Some(Command::Simulate(args)) => simulate_only(args).await,
        Some(Command::Call(args)) => ccgw_bridge::cli::run(args).await,
        None => bridge(cli).await,
    }
}

async fn bridge(cli: Cli) -> ExitCode {
    let telemetry =
        match telemetry::init(cli.bridge.log_format, cli.bridge.otlp_endpoint.as_deref()) {
            Ok(guard) => guard,
            Err(e) => {
                eprintln!("ccgw-bridge: {e}");
                return ExitCode::from(EX_USAGE);
            }
        };
    // Everything is validated before a port is bound. Under --simulate the gateway is the
    // simulator, started only once the bridge's own ports are bound (a busy --listen must not
    // leave a simulator behind); its URL and CA replace the placeholder then.
    let placeholder = cli
        .bridge
        .simulate
        .then(|| (SIMULATOR_PLACEHOLDER.to_owned(), Vec::new()));
    let mut config: Config = match cli.bridge.validate(placeholder) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ccgw-bridge: {e}");
            return ExitCode::from(EX_USAGE);
        }
    };
    let grpc = match tokio::net::TcpListener::bind(config.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "ccgw-bridge: cannot listen on {} (--listen): {e}",
                config.listen
            );
            return ExitCode::from(EX_UNAVAILABLE);
        }
    };
    let admin = match tokio::net::TcpListener::bind(config.admin_listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "ccgw-bridge: cannot listen on {} (--admin-listen): {e}",
                config.admin_listen
            );
            return ExitCode::from(EX_UNAVAILABLE);
        }
    };
    let callback = match &config.callback {
        Some(callback) => match tokio::net::TcpListener::bind(callback.listen).await {
            Ok(l) => {
                if cli.bridge.simulate && cli.bridge.callback_url.is_none() {
                    // The demo's URL names the port actually bound (`--callback-listen` may
                    // say port 0).
                    if let (EventMode::Push(push), Ok(bound)) =
                        (&mut config.sessions.events, l.local_addr())
                    {
                        push.callback_url = format!("https://{bound}{}", callback.path).into();
                    }
                }
                Some(l)
            }
            Err(e) => {
                eprintln!(
                    "ccgw-bridge: cannot listen on {} (--callback-listen): {e}",
                    callback.listen
                );
                return ExitCode::from(EX_UNAVAILABLE);
            }
        },
        None => None,
    };
    let simulator = if cli.bridge.simulate {
        let sim_config = SimConfig {
            play_duration: std::time::Duration::from_secs(10),
            ..SimConfig::default()
        };
        match Simulator::start(sim_config, ([127, 0, 0, 1], 0).into()).await {
            Ok(sim) => Some(sim),
            Err(e) => {
                eprintln!("ccgw-bridge: cannot start the simulator: {e}");
                return ExitCode::from(EX_UNAVAILABLE);
            }
        }
    } else {
        None
    };
    if let Some(sim) = &simulator {
        config.gateway.base_url = sim.url();
        config.gateway.ca_pem = Some(sim.ca_pem().as_bytes().to_vec());
        if let Some(callback) = config.callback.as_mut() {
            // The demo's callback server presents the simulator's own certificate (loopback
            // names), which the simulator trusts.
            callback.cert_pem = sim.server_cert_pem().as_bytes().to_vec();
            callback.key_pem = sim.server_key_pem().as_bytes().to_vec();
        }
        config.agents.push(PinnedAgent {
            agent_id: DEMO_AGENT.into(),
            params: SignInParams {
                password: Password::new(String::new()),
                phone_number: "88001".into(),
                force: false,
                auto_answer: None,
                auto_enter_idle: None,
                release_phone: None,
                agent_type: None,
                status: None,
            },
        });
        tracing::info!(gateway = %sim.url(), agent = DEMO_AGENT, "simulator started; demo agent will be signed in");
    }
    let listeners = Listeners {
        grpc,
        admin: Some(admin),
        callback,
    };
    let result = run(listeners, config, shutdown_signal()).await;
    // The exporter flush blocks; keep it off the runtime's worker threads.
    let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ccgw-bridge: {e}");
            ExitCode::from(EX_UNAVAILABLE)
        }
    }
}

/// Resolves on the first SIGTERM or SIGINT; a second one exits the process at once.
async fn shutdown_signal() {
    wait_signal().await;
    tracing::info!("signal received; draining (send it again to exit at once)");
    tokio::spawn(async {
        wait_signal().await;
        eprintln!("ccgw-bridge: second signal; exiting without draining");
        std::process::exit(130);
    });
}

async fn wait_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the bridge can only be killed; never resolve.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

async fn simulate_only(args: SimulateArgs) -> ExitCode {
    let telemetry = telemetry::init(LogFormat::Text, None);
    let callback_ca_pem = match args.callback_ca.as_deref().map(std::fs::read_to_string) {
        None => None,
        Some(Ok(pem)) => Some(pem),
        Some(Err(e)) => {
            eprintln!("ccgw-bridge simulate: --callback-ca: {e}");
            return ExitCode::from(EX_USAGE);
        }
    };
    let config = SimConfig {
        callback_ca_pem,
        poll_hold: args.poll_hold,
        play_duration: args.play_duration,
        auth: match args.rotate_every {
            Some(rotate_every) => AuthMode::Dynamic {
                rotate_every,
                strict: args.strict,
                overlap: if args.strict {
                    std::time::Duration::ZERO
                } else {
                    rotate_every
                },
            },
            None => AuthMode::Static,
        },
        ..SimConfig::default()
    };
    let sim = match Simulator::start(config, args.listen).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ccgw-bridge simulate: cannot start on {}: {e}", args.listen);
            return ExitCode::from(EX_UNAVAILABLE);
        }
    };
    let written = match &args.ca_out {
        Some(path) => std::fs::write(path, sim.ca_pem())
            .map(|()| path.clone())
            .map_err(|e| format!("cannot write the CA file to {} ({e})", path.display())),
        None => sim.ca_file().map(Path::to_path_buf).map_err(|e| {
            format!(
                "cannot write the CA file to {} ({e}); set TMPDIR to a writable directory, or pass --ca-out FILE",
                std::env::temp_dir().display()
            )
        }),
    };
    let ca = match written {
        Ok(path) => path,
        Err(e) => {
            eprintln!("ccgw-bridge simulate: {e}");
            return ExitCode::from(EX_UNAVAILABLE);
        }
    };
    println!("url={}", sim.url());
    println!("ca={}", ca.display());
    wait_signal().await;
    sim.shutdown();
    if let Ok(guard) = telemetry {
        guard.shutdown();
    }
    ExitCode::SUCCESS
}
