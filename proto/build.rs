//! Compiles ambit's `.proto` files into Rust at build time, without a system `protoc`.
//!
//! `protox` parses the files (its bundled copies of `google/protobuf/*.proto` satisfy the
//! well-known imports) into a `FileDescriptorSet`; `tonic-prost-build` turns that into
//! prost messages plus tonic clients and servers in `OUT_DIR`, one file per package.
//! prost-build's default extern paths map `.google.protobuf` to `::prost_types`
//! (`Any`, `Struct`, `Duration`; `UInt32Value` becomes `Option<u32>`, `Empty` becomes `()`),
//! so no well-known type is generated here. Every message also implements `prost::Name`
//! with the `type.googleapis.com` domain, so `prost_types::Any::{from_msg, to_msg}` work.

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

    // `prost::Name` impls let callers pack and unpack `prost_types::Any` with the same
    // type URLs Istio uses (`type.googleapis.com/<package>.<Message>`).
    let mut config = prost_build::Config::new();
    config
        .enable_type_names()
        .type_name_domain(["."], "type.googleapis.com");

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds_with_config(fds, config)?;
    Ok(())
}
