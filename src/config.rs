//! The bridge's flags, environment and the agents file, validated into a [`Config`] before any
//! port is bound (a bad value exits with code 64 and one clear message). The binary's whole
//! command line, helper commands included, is `crate::args`.
//!
//! By job: `flags` declares the flags (clap) and their parsers, `validate` turns them into a
//! [`Config`], `agents_file` reads `--agents-file` and its password files, `pem` checks TLS
//! material. This module holds what they share: the validated types and the error.

use crate::gateway::GatewayConfig;
use crate::grpc::validate::Limits;
use crate::pool::PoolConfig;
use crate::session::{SessionSettings, SignInGate, SignInParams};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

mod agents_file;
mod flags;
mod pem;
mod validate;

pub use agents_file::load_agents;
pub use flags::{BridgeArgs, EventsFlag, SimulateArgs};

/// PEM material for TLS on the API listener.
#[derive(Clone)]
pub struct ServerTls {
    /// Server certificate chain.
    pub cert: Vec<u8>,
    /// Its private key.
    pub key: Vec<u8>,
    /// When set, callers must present a certificate signed by this CA (mutual TLS).
    pub client_ca: Option<Vec<u8>>,
}

/// How the gRPC API listener serves and whom it lets in.
#[derive(Clone)]
pub struct ServerSettings {
    /// Request message size cap.
    pub max_request_bytes: usize,
    /// HTTP/2 concurrent streams per connection.
    pub max_concurrent_streams: u32,
    /// Calls in flight across the bridge.
    pub max_concurrent_requests: usize,
    /// HTTP/2 keep-alive ping interval.
    pub keepalive_interval: Duration,
    /// HTTP/2 keep-alive ping timeout.
    pub keepalive_timeout: Duration,
    /// TLS on the API listener.
    pub tls: Option<ServerTls>,
    /// Bearer token callers must present.
    pub auth_token: Option<Vec<u8>>,
}

impl std::fmt::Debug for ServerSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerSettings")
            .field("max_request_bytes", &self.max_request_bytes)
            .field("max_concurrent_streams", &self.max_concurrent_streams)
            .field("max_concurrent_requests", &self.max_concurrent_requests)
            .field("tls", &self.tls.is_some())
            .field(
                "mtls",
                &self.tls.as_ref().is_some_and(|t| t.client_ca.is_some()),
            )
            .field("auth_token", &self.auth_token.is_some())
            .finish()
    }
}

/// A configuration problem, reported before anything starts.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A flag or file is wrong; the text says which and why.
    #[error("{0}")]
    Invalid(String),
}

fn invalid(msg: impl Into<String>) -> ConfigError {
    ConfigError::Invalid(msg.into())
}

/// An agent from `--agents-file`, to sign in at start and keep signed in.
#[derive(Debug, Clone)]
pub struct PinnedAgent {
    /// Agent (work) number.
    pub agent_id: String,
    /// Its sign-in.
    pub params: SignInParams,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// gRPC API address.
    pub listen: SocketAddr,
    /// Admin address.
    pub admin_listen: SocketAddr,
    /// Gateway client settings.
    pub gateway: GatewayConfig,
    /// Session settings.
    pub sessions: SessionSettings,
    /// Validation limits.
    pub limits: Limits,
    /// Agents to keep signed in.
    pub agents: Vec<PinnedAgent>,
    /// Sign agents out when stopping.
    pub sign_out_on_shutdown: bool,
    /// Drain bound.
    pub drain_timeout: Duration,
    /// API listener limits and caller authentication.
    pub server: ServerSettings,
    /// Push mode's callback server (`--events push`); `None` in poll mode.
    pub callback: Option<crate::callback::CallbackSettings>,
    /// The agent pool (`--etcd-endpoints`); `None` when every agent is this bridge's alone.
    pub pool: Option<PoolConfig>,
    /// A coordinator other than the etcd pool that every sign-in must pass, for embedders
    /// (and the tests' scripted coordinators); no flag sets it. Ignored when `pool` is set.
    pub coordinator: Option<Coordinator>,
}

/// A [`SignInGate`] given to [`Config::coordinator`].
#[derive(Clone)]
pub struct Coordinator(pub std::sync::Arc<dyn SignInGate>);

impl std::fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Coordinator")
    }
}

/// The content of the file `flag` names, or an error naming both.
fn read(path: &Path, flag: &str) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|e| invalid(format!("{flag} {}: {e}", path.display())))
}
