//! The vendor-bridge's gRPC contract: the messages and the client and server
//! stubs generated from `proto/drover/bridge/v1/bridge.proto`, which
//! documents every message and field.

/// `drover.bridge.v1`: the driver ↔ vendor-bridge protocol.
pub mod bridge {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("drover.bridge.v1");
}
