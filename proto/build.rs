//! Compiles ambit's `.proto` files into Rust at build time, without a system `protoc`.
//!
//! `protox` parses the files (its bundled copies of `google/protobuf/*.proto` satisfy the
//! well-known imports) into a `FileDescriptorSet`; `tonic-prost-build` turns that into
//! prost messages plus tonic clients and servers in `OUT_DIR`, one file per package.
//! prost-build's default extern paths map `.google.protobuf` to `::prost_types`
//! (`Any`, `Struct`, `Duration`; `UInt32Value` becomes `Option<u32>`, `Empty` becomes `()`),
//! so no well-known type is generated here.

use std::path::PathBuf;

const PROTO_DIR: &str = "proto";

/// Every file we compile; the imported ones (core, status) are listed too so a change
/// to any of them re-runs this script.
const PROTOS: &[&str] = &[
    "workload.proto",
    "authorization.proto",
    "zds.proto",
    "citadel.proto",
    "discovery.proto",
    "core.proto",
    "status.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = PathBuf::from(PROTO_DIR);
    let files: Vec<PathBuf> = PROTOS.iter().map(|f| dir.join(f)).collect();
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }
    println!("cargo:rerun-if-changed=build.rs");

    let fds = protox::compile(&files, [&dir])?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
