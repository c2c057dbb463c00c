//! The end-to-end harness: simulator and bridge on ephemeral loopback ports, real TLS between
#![allow(dead_code)] // each test module uses part of the shared harness
//! them, real tonic clients in front.

use ccgw_bridge::args::Cli;
use ccgw_bridge::callback::CallbackSettings;
use ccgw_bridge::config::{Config, PinnedAgent};
use ccgw_bridge::events::HeartbeatSettings;
use ccgw_bridge::proto::agent_session_service_client::AgentSessionServiceClient;
use ccgw_bridge::proto::record_play_service_client::RecordPlayServiceClient;
use ccgw_bridge::proto::{
    AgentEvent, BeginPlayRequest, GetSessionRequest, ListSessionsRequest, ListSessionsResponse,
    PlayEvent, Session, SignInRequest, WatchAgentEventsRequest, WatchPlayEventsRequest,
};
use ccgw_bridge::secret::Password;
use ccgw_bridge::session::SignInParams;
use ccgw_bridge::session::{EventMode, PushSettings};
use ccgw_bridge::sim::{SimConfig, Simulator};
use ccgw_bridge::{run, Listeners, RunError};
use clap::Parser;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::{Channel, Endpoint};
use tonic::Code;
use tonic_types::StatusExt;

/// Simulator settings that keep tests fast: short long-poll hold, quick play sequence.
pub fn fast_sim() -> SimConfig {
    SimConfig {
        poll_hold: Duration::from_millis(500),
        play_step: Duration::from_millis(5),
        play_duration: Duration::from_secs(30),
        ..SimConfig::default()
    }
}

/// A bridge configuration pointed at `sim`, with test-friendly pacing.
pub fn config_for(sim: &Simulator) -> Config {
    let cli = Cli::try_parse_from(["ccgw-bridge", "--poll-gap", "10ms", "--drain-timeout", "5s"])
        .expect("flags parse");
    let config = cli
        .bridge
        .validate(Some((sim.url(), sim.ca_pem().as_bytes().to_vec())))
        .expect("valid config");
    config
}

/// The next message of a stream (within 10 s, healthy, not finished).
pub async fn next_event<T>(s: &mut tonic::Streaming<T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), s.message())
        .await
        .expect("an event within 10 s")
        .expect("stream healthy")
        .expect("stream not finished")
}

/// The callback path push-mode tests use.
pub const CALLBACK_PATH: &str = "/ccgw/events";

/// Switches `config` to push mode in front of `sim`: binds the callback listener (returned,
/// for [`Harness::bridge_with`]) on a loopback port, presenting the simulator's own
/// certificate, with 100 ms heartbeats and a 64 KiB body limit and 1 s callback timeouts.
pub async fn push_mode(sim: &Simulator, config: &mut Config) -> tokio::net::TcpListener {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let listen = listener.local_addr().unwrap();
    config.sessions.events = EventMode::Push(PushSettings {
        callback_url: format!("https://{listen}{CALLBACK_PATH}").into(),
        heartbeat: HeartbeatSettings {
            every: Duration::from_millis(100),
            ..HeartbeatSettings::default()
        },
    });
    config.callback = Some(CallbackSettings {
        listen,
        cert_pem: sim.server_cert_pem().as_bytes().to_vec(),
        key_pem: sim.server_key_pem().as_bytes().to_vec(),
        client_ca_pem: None,
        path: CALLBACK_PATH.into(),
        max_body_bytes: 64 * 1024,
        header_timeout: Duration::from_secs(1),
        body_timeout: Duration::from_secs(1),
        max_connections: 64,
    });
    listener
}

/// A running simulator + bridge pair.
pub struct Harness {
    /// The simulated CC-Gateway (inspect requests, inject faults).
    pub sim: Simulator,
    /// The bridge's gRPC address.
    pub addr: SocketAddr,
    /// The bridge's admin address.
    pub admin: SocketAddr,
    /// Push mode: the bridge's callback server.
    pub callback: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), RunError>>>,
}

impl Harness {
    /// Default simulator and configuration.
    pub async fn start() -> Self {
        Self::with(fast_sim(), |_| {}).await
    }

    /// Custom simulator settings and a configuration tweak.
    pub async fn with(sim_config: SimConfig, tweak: impl FnOnce(&mut Config)) -> Self {
        let sim = Simulator::start(sim_config, "127.0.0.1:0".parse().unwrap())
            .await
            .expect("simulator starts");
        let mut config = config_for(&sim);
        tweak(&mut config);
        Self::bridge(sim, config).await
    }

    /// [`Harness::with`] in push mode (`--events push`): the callback server on a loopback
    /// port presenting the simulator's own certificate (which the simulator trusts), 100 ms
    /// heartbeats.
    pub async fn push(sim_config: SimConfig, tweak: impl FnOnce(&mut Config)) -> Self {
        let sim = Simulator::start(sim_config, "127.0.0.1:0".parse().unwrap())
            .await
            .expect("simulator starts");
        let mut config = config_for(&sim);
        let callback = push_mode(&sim, &mut config).await;
        tweak(&mut config);
        Self::bridge_with(sim, config, Some(callback)).await
    }

    /// Starts a bridge with `config` in front of an already running `sim`.
    pub async fn bridge(sim: Simulator, config: Config) -> Self {
        Self::bridge_with(sim, config, None).await
    }

    /// [`Harness::bridge`] with push mode's callback listener (see [`push_mode`]).
    pub async fn bridge_with(
        sim: Simulator,
        config: Config,
        callback: Option<tokio::net::TcpListener>,
    ) -> Self {
        // Before any client of the test is built: the bridge installs it too, but in its own
        // task, which may run after a test's first request (reqwest panics without a provider).
        ccgw_bridge::crypto::install_crypto_provider();
        let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = grpc.local_addr().unwrap();
        let admin_addr = admin.local_addr().unwrap();
        let callback_addr = callback.as_ref().map(|l| l.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(run(
            Listeners {
                grpc,
                admin: Some(admin),
                callback,
            },
            config,
            async move {
                let _ = stopped.await;
            },
        ));
        Harness {
            sim,
            addr,
            admin: admin_addr,
            callback: callback_addr,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// A fresh HTTP/2 channel to the bridge.
    pub async fn channel(&self) -> Channel {
        Endpoint::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .expect("bridge accepts connections")
    }

    /// `n` separate HTTP/2 connections, for tests that spread many calls or streams.
    pub async fn channels(&self, n: usize) -> Vec<Channel> {
        let mut channels = Vec::with_capacity(n);
        for _ in 0..n {
            channels.push(self.channel().await);
        }
        channels
    }

    /// A RecordPlayService client.
    pub async fn play(&self) -> RecordPlayServiceClient<Channel> {
        RecordPlayServiceClient::new(self.channel().await)
    }

    /// An AgentSessionService client.
    pub async fn sessions(&self) -> AgentSessionServiceClient<Channel> {
        AgentSessionServiceClient::new(self.channel().await)
    }

    /// Signs `agent` in with the demo phone number and an empty password.
    pub async fn sign_in(&self, agent: &str) -> Session {
        self.sessions()
            .await
            .sign_in(sign_in_request(agent))
            .await
            .expect("sign-in succeeds")
            .into_inner()
    }

    /// A live `WatchPlayEvents` stream of every play event of `agent`.
    pub async fn watch_play(&self, agent: &str) -> tonic::Streaming<PlayEvent> {
        self.play()
            .await
            .watch_play_events(WatchPlayEventsRequest {
                agent_id: agent.into(),
                ..Default::default()
            })
            .await
            .expect("watch opens")
            .into_inner()
    }

    /// A live `WatchAgentEvents` stream of `agent`.
    pub async fn watch_all(&self, agent: &str) -> tonic::Streaming<AgentEvent> {
        self.sessions()
            .await
            .watch_agent_events(WatchAgentEventsRequest {
                agent_id: agent.into(),
                ..Default::default()
            })
            .await
            .expect("watch opens")
            .into_inner()
    }

    /// `GetSession` for an agent the test expects the bridge to hold.
    pub async fn session(&self, agent: &str) -> Session {
        self.sessions()
            .await
            .get_session(GetSessionRequest {
                agent_id: agent.into(),
            })
            .await
            .expect("the bridge holds the agent")
            .into_inner()
    }

    /// `ListSessions`.
    pub async fn list(&self) -> ListSessionsResponse {
        self.sessions()
            .await
            .list_sessions(ListSessionsRequest {})
            .await
            .expect("ListSessions")
            .into_inner()
    }

    /// The admin listener's `/metrics` text.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.admin))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Signals shutdown and waits for `run` to return (bounded).
    pub async fn stop(mut self) -> Result<(), RunError> {
        self.stop_inner().await
    }

    async fn stop_inner(&mut self) -> Result<(), RunError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .expect("run() returns within 30 s")
                .expect("run() does not panic"),
            None => Ok(()),
        }
    }

    /// Signals shutdown without waiting (the caller awaits [`Harness::stopped`]).
    pub fn begin_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Waits for `run` to return after [`Harness::begin_stop`].
    pub async fn stopped(&mut self) -> Result<(), RunError> {
        self.stop_inner().await
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// A SignIn request with the harness's defaults.
pub fn sign_in_request(agent: &str) -> SignInRequest {
    SignInRequest {
        agent_id: agent.into(),
        password: String::new(),
        phone_number: "88001".into(),
        ..Default::default()
    }
}

/// A BeginPlay of a prompt with the gateway's defaults for every optional field.
pub fn play_request(agent: &str) -> BeginPlayRequest {
    BeginPlayRequest {
        agent_id: agent.into(),
        voice_path: "/prompts/welcome.wav".into(),
        ..Default::default()
    }
}

/// `msg` sent with a client deadline (`grpc-timeout`).
pub fn with_deadline<T>(msg: T, deadline: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(msg);
    request.set_timeout(deadline);
    request
}

/// Asserts the code of a failed call and returns the status.
#[track_caller]
pub fn expect_code<T: std::fmt::Debug>(r: Result<T, tonic::Status>, code: Code) -> tonic::Status {
    match r {
        Ok(v) => panic!("expected {code:?}, got OK: {v:?}"),
        Err(s) => {
            assert_eq!(s.code(), code, "status: {s:?}");
            s
        }
    }
}

/// The `ErrorInfo` reason of a status ("" when absent).
pub fn reason(status: &tonic::Status) -> String {
    status
        .get_details_error_info()
        .map(|i| i.reason)
        .unwrap_or_default()
}

/// The fields named by a status's `BadRequest` violations.
pub fn violated_fields(status: &tonic::Status) -> Vec<String> {
    status
        .get_details_bad_request()
        .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}

/// An agents-file entry for `agent` (password `pw`, phone 88005, no `force`).
pub fn pinned_agent(agent: &str) -> PinnedAgent {
    PinnedAgent {
        agent_id: agent.into(),
        params: SignInParams::new(Password::new("pw".into()), "88005".into()),
    }
}
