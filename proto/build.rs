//! Compiles the contract with protox, so building drover needs no `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "drover/v1/common.proto",
        "drover/v1/agent.proto",
        "drover/v1/control.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["."])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Artifact bytes as `Bytes`: the coordinator sends the buffer it
        // read into and the agent gets a slice of the decode buffer, with
        // no copy into a fresh `Vec` per chunk on either side.
        .bytes(".drover.v1.ArtifactChunk.data")
        .compile_fds(fds)?;
    Ok(())
}
