//! What a device-facing front end of Drover needs to authenticate devices
//! and store their events through the vendor-bridge. The CWP/1 driver and
//! the HTTP gateway both build on it; neither copies any of it.
//!
//! - [`bridge`]: [`BridgeClient`], the connection to the vendor-bridge
//!   (one per process, cheap to clone): [`bridge::channel`] opens the gRPC
//!   channel, plaintext or (mutual) TLS as [`bridge::BridgeTls`] says
//!   ([`bridge::BridgeTls::read`] reads the `VENDOR_BRIDGE_*` variables);
//!   [`bridge::describe`] spells out a failed call's causes;
//!   [`bridge::batcher::Batcher`] coalesces concurrent unary calls of one
//!   kind into batch calls.
//! - [`stream`]: the one long-lived `StreamEvents` stream per process.
//!   [`BatchStream`] (from [`batch_stream`]) takes batches and answers each
//!   with the bridge's [`BatchDurable`] once it is durable; a caller with
//!   its own batching implements [`stream::BatchSource`] instead.
//!   [`batch_limits`] says how large one batch may be.
//! - [`keys`]: [`KeyStore`], the device keys accepted (master key, keys
//!   file, revocations, reload on demand).
//! - [`auth_limits`]: [`AuthLimits`], failed authentications counted per
//!   source address, per serial and address, and (opt-in) per serial.
//!
//! Metrics are the caller's: the crate counts into the `prometheus-client`
//! values it is given ([`StreamMetrics`]) and registers nothing itself.
//!
//! # Storing a request's events (the HTTP gateway's use)
//!
//! Each submission is a batch of its own, never merged with another, so
//! the answer's `stored` and `duplicates` are that submission's:
//!
//! ```no_run
//! use drover_edge::{BridgeClient, StreamMetrics, batch_stream, bridge};
//! use drover_proto::bridge::Event;
//! use drover_service::drain;
//! use tokio_util::task::TaskTracker;
//!
//! # async fn example() -> anyhow::Result<()> {
//! let tasks = TaskTracker::new();
//! let (stop, watch) = drain::channel();
//! let bridge = BridgeClient::new(
//!     bridge::channel("http://127.0.0.1:50051", None)?,
//!     None,                   // the bridge's token (VENDOR_BRIDGE_TOKEN)
//!     "gateway-1".to_owned(), // this front end's id, as a driver's
//!     "instance-uuid".to_owned(),
//!     &tasks,
//!     &watch,
//! );
//! let (events, stream) = batch_stream(bridge, StreamMetrics::default(), watch);
//! tasks.spawn(stream.run());
//!
//! // One request's events, in id order: at most MAX_BATCH_EVENTS and
//! // about MAX_BATCH_BYTES of bodies per batch (split larger requests
//! // and add up the answers).
//! let batch = vec![Event {
//!     serial: "CTRL-1".to_owned(),
//!     event_id: 7,
//!     time_ms: 1_700_000_000_000,
//!     kind: 1,
//!     body: bytes::Bytes::from_static(b"21.5C"),
//!     received_ms: 1_700_000_000_100,
//! }];
//! match events.store(batch).await {
//!     Ok(durable) => println!("{} stored, {} duplicates", durable.stored, durable.duplicates),
//!     Err(drover_edge::NotStored) => println!("503: nothing acknowledged, retry"),
//! }
//!
//! stop.signal(); // the stream stores what it holds (within STOP_GRACE)
//! tasks.close();
//! tasks.wait().await;
//! # Ok(())
//! # }
//! ```
//!
//! # Authenticating a device
//!
//! ```
//! use std::net::IpAddr;
//! use std::time::Duration;
//!
//! use drover_edge::{AuthLimits, FailureLimits, KeyStore};
//! use cwp::{MasterKey, Serial};
//!
//! let keys = KeyStore::new(Some(MasterKey::from_bytes([7; 32])), None).expect("no keys file");
//! let limits = AuthLimits::new(
//!     FailureLimits { per_address: 20, per_serial_address: 10, per_serial: 0 },
//!     Duration::from_secs(60),
//! );
//! let serial: Serial = "CTRL-1".parse().expect("a valid serial");
//! let source: IpAddr = "192.0.2.1".parse().expect("an address");
//! // A limit reached: refuse before looking the key up (same answer
//! // whether the serial exists or not).
//! assert_eq!(limits.refuses(source, &serial), None);
//! let key = keys.device_key(&serial).expect("derived from the master key");
//! // ... check the device's MAC with `key`; on a mismatch (or no key):
//! limits.failed(source, &serial);
//! # let _ = key;
//! ```

pub mod auth_limits;
pub mod batch_limits;
pub mod bridge;
pub mod keys;
pub mod stream;

use prometheus_client::encoding::EncodeLabelSet;

pub use auth_limits::{AuthLimits, FailureLimits, Limiter};
pub use bridge::BridgeClient;
pub use drover_proto::bridge::BatchDurable;
pub use keys::KeyStore;
pub use stream::{BatchStream, NotStored, StreamMetrics, batch_stream};

/// A label with one value, e.g. `result="ok"`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// The outcome.
    pub result: &'static str,
}
