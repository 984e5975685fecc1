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
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
