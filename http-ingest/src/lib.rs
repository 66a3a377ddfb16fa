//! The pure core of Drover's HTTP ingest (docs/HTTP.md): what an HTTP
//! gateway needs to authenticate devices and read their event batches, with
//! no sockets, no runtime and no clock (the caller passes `now_ms`).
//!
//! Layout, in the order a request flows through it:
//!
//! - [`signature`]: `Authorization: CWP1-HMAC-SHA256 ...`. Parse the
//!   [`Credentials`] (the serial names the device key), [`Credentials::verify`]
//!   them against the request line, `X-Content-SHA256` and the clock, then
//!   stream the body through a [`BodyDigest`]. [`signature::sign`] is the
//!   client side.
//! - [`token`]: `Authorization: Bearer cwp1....`, the stateless
//!   [`BearerToken`]s that `POST /v1/token` issues, verified the same way.
//! - [`ndjson`]: the body, an NDJSON event batch, fed chunk by chunk to a
//!   [`BatchParser`]: a [`Record`] per valid line (its body a slice of the
//!   input or of one arena), a [`LineError`] with a stable reason code per
//!   invalid one.
//! - [`taxi`]: sample batches of taxi-trip events, the input of the
//!   benchmarks (the parser's, and `fleet bench --only http-events`).
//!
//! Both key derivations start from cwp's [`cwp::DeviceKey`]; events come out
//! as cwp's [`cwp::Event`] ([`Record::to_event`]) under the same limits as
//! on a CWP/1 connection.

mod crypto;
pub mod ndjson;
pub mod signature;
pub mod taxi;
pub mod token;

pub use ndjson::{Batch, BatchLimits, BatchParser, BatchStats, Field, LineError, Reason, Record};
pub use signature::{
    AuthorizationError, BodyDigest, BodyDigestMismatch, BodySha256, Credentials, RequestNonce, SignatureError,
    SignedHeaders, Verified,
};
pub use token::{BearerToken, TokenError};
