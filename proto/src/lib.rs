//! The vendor-bridge's gRPC contract: the messages and the client and server
//! stubs generated from `proto/drover/bridge/v1/bridge.proto`, which
//! documents every message and field; [`auth`]: the bearer token every call
//! carries when the bridge requires one; [`MAX_MESSAGE_BYTES`]: the one size
//! both ends must agree on.

pub mod auth;

/// The largest message the vendor-bridge accepts (a driver's `EventBatch`
/// as encoded on the wire): 16 MiB. Larger ones end the stream with
/// `RESOURCE_EXHAUSTED`. A driver splits its batches below it, and must
/// refuse a configuration (`DRIVER_MAX_PAYLOAD`) under which a single
/// event, with its serial and the other fields, could not fit in one.
pub const MAX_MESSAGE_BYTES: usize = 16 << 20;

/// `drover.bridge.v1`: the driver ↔ vendor-bridge protocol.
pub mod bridge {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("drover.bridge.v1");
}
