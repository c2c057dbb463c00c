//! ccgw-bridge: a gRPC bridge in front of the Huawei CC-Gateway agent REST API.
//!
//! Callers speak gRPC (`proto/ccgw/v1`); the bridge signs agents in, keeps their Guids fresh,
//! polls their events and fans them out, so no caller ever handles a Guid.

pub mod args;
pub mod callback;
pub mod cli;
pub mod config;
pub mod crypto;
pub mod events;
pub mod gateway;
pub mod grpc;
pub mod pool;
pub mod readiness;
pub mod secret;
pub mod server;
pub mod session;
pub mod telemetry;
pub mod version;

/// Generated gRPC types and services of `ccgw.v1`.
#[allow(missing_docs, clippy::all)]
pub mod proto {
    tonic::include_proto!("ccgw.v1");

    /// Server traits, whose event streams carry pre-encoded frames (see `build.rs`).
    pub mod server {
        include!(concat!(env!("OUT_DIR"), "/server/ccgw.v1.rs"));
    }

    /// Encoded descriptor set of the `ccgw.v1` protos, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/ccgw_descriptor.bin"));
}
pub mod sim;
pub use crypto::install_crypto_provider;
pub use server::{run, Listeners, RunError};
