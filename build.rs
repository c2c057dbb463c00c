//! Compiles `proto/ccgw/v1/*.proto` without a system `protoc` (protox is a pure-Rust compiler),
//! and writes the descriptor set for server reflection (prost-build only writes it on the protoc path).
//!
//! Two passes: the messages and clients as usual, then the server traits alone, in which the
//! streamed `PlayEvent`/`AgentEvent` are pre-encoded frames (`grpc::frame::EncodedEvent`), so
//! an event is encoded once and shared by every watcher instead of cloned and encoded per watcher.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let files = [
        "proto/ccgw/v1/recordplay.proto",
        "proto/ccgw/v1/session.proto",
    ];
    let fds = protox::compile(files, ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("ccgw_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        .build_server(false)
        .compile_fds(fds.clone())?;
    let server = out.join("server");
    std::fs::create_dir_all(&server)?;
    tonic_prost_build::configure()
        .build_client(false)
        .out_dir(&server)
        .extern_path(".ccgw.v1", "crate::proto")
        .extern_path(".ccgw.v1.PlayEvent", "crate::grpc::frame::EncodedEvent")
        .extern_path(".ccgw.v1.AgentEvent", "crate::grpc::frame::EncodedEvent")
        .compile_fds(fds)?;
    Ok(())
}
