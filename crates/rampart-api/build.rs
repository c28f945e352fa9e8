//! Generates the Rust code of Rampart's gRPC APIs from `proto/` at the
//! workspace root: etcd v3's client API (packages `mvccpb`, `authpb`,
//! `etcdserverpb`, `v3lockpb`, `v3electionpb`), Rampart's own peer
//! protocol (`rampart.peer.v1`) and its test-only fault control
//! (`rampart.faults.v1`), with both client and server code.
//!
//! protoc comes from the `protoc-bin-vendored` crate, so a fresh machine needs
//! nothing installed. It overrides any `PROTOC` already set (for instance by
//! `.cargo/config.toml`, which points other crates' build scripts at
//! `tools/protoc`).

use std::env;
use std::path::PathBuf;

/// The .proto files to compile, relative to the proto root.
const PROTOS: &[&str] = &[
    "etcd/mvccpb/kv.proto",
    "etcd/authpb/auth.proto",
    "etcd/etcdserverpb/rpc.proto",
    "etcd/v3lockpb/v3lock.proto",
    "etcd/v3electionpb/v3election.proto",
    "rampart/peer.proto",
    "rampart/faults.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let proto_root = manifest_dir.join("../../proto");
    println!("cargo:rerun-if-changed={}", proto_root.display());

    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // Edition 2021: set_var is safe (the workspace forbids unsafe code).
    env::set_var("PROTOC", &protoc);

    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let protos: Vec<PathBuf> = PROTOS.iter().map(|p| proto_root.join(p)).collect();

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .file_descriptor_set_path(out_dir.join("rampart_api_descriptor.bin"))
        .compile_protos(&protos, &[proto_root])?;
    Ok(())
}
