use std::{env, fs, path::PathBuf};

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // tonic-prost-build emits no rerun-if-changed of its own.
    println!("cargo:rerun-if-changed=proto");
    // The console's bundle is embedded (rust-embed): a file added to it must rebuild too.
    println!("cargo:rerun-if-changed=web/dist");
    // protox is a pure-Rust protobuf compiler: no protoc needed on the build machine.
    let descriptors = protox::compile(
        [
            "annotask/v1/tasks.proto",
            "annotask/v1/work.proto",
            "annotask/v1/projects.proto",
            "annotask/v1/batches.proto",
        ],
        ["proto"],
    )?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(
        out_dir.join("annotask_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    // For clients (the load generator, tests, embedders): `google.protobuf.Struct` as
    // `prost_types::Struct`.
    tonic_prost_build::configure().compile_fds(descriptors.clone())?;
    // For the server: its `Struct`s are written straight from stored JSON.
    let server_dir = out_dir.join("server");
    fs::create_dir_all(&server_dir)?;
    tonic_prost_build::configure()
        .build_client(false)
        .extern_path(".google.protobuf.Struct", "crate::api::grpc::JsonStruct")
        .out_dir(server_dir)
        .compile_fds(descriptors)?;
    Ok(())
}
