//! The binary's command line: the bridge's flags, or one of its helper commands.
//!
//! Kept apart from `config` so that configuration does not depend on the operator client
//! (`crate::cli`): this module is the one place that knows both.

use crate::cli::CallArgs;
use crate::config::{BridgeArgs, SimulateArgs};
use crate::version;
use clap::{Parser, Subcommand};

/// `ccgw-bridge`: gRPC in front of the Huawei CC-Gateway agent interface.
#[derive(Debug, Parser)]
#[command(name = "ccgw-bridge", version = version::LONG, about, long_about = None)]
pub struct Cli {
    /// Run a helper command instead of the bridge.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Bridge settings (when no command is given).
    #[command(flatten)]
    pub bridge: BridgeArgs,
}

/// Helper commands of the same binary.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run only the CC-Gateway simulator, printing its URL and CA path.
    Simulate(SimulateArgs),
    /// Call a running bridge's gRPC API (operators and scripts; no grpcurl needed in the pod).
    #[command(version = version::LONG)]
    Call(CallArgs),
}
