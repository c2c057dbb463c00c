//! Compiles `proto/ccgw/v1/*.proto` without a system `protoc` (protox is a pure-Rust compiler),
//! and writes the descriptor set for server reflection (prost-build only writes it on the protoc path).
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
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
