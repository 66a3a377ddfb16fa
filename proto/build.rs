//! Compiles the `.proto` files with protox, a protobuf compiler written in
//! Rust, so that building needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/drover/bridge/v1/bridge.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure()
        // Event bodies stay `Bytes` from the driver's receive buffer to the
        // bridge's Redis call: no copy per event in the generated code.
        .bytes(".drover.bridge.v1.Event.body")
        .compile_fds(descriptors)?;
    Ok(())
}
