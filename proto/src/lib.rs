//! The vendor-bridge's gRPC contract: the messages and the client and server
//! stubs generated from `proto/drover/bridge/v1/bridge.proto`, which
//! documents every message and field; [`auth`]: the bearer token every call
//! carries when the bridge requires one.

pub mod auth;

/// `drover.bridge.v1`: the driver ↔ vendor-bridge protocol.
pub mod bridge {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("drover.bridge.v1");
}
