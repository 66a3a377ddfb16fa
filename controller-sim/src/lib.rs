//! Simulated CWP/1 controllers, for tests and benchmarks.
//!
//! Layout, from the wire up:
//!
//! - [`client`]: [`client::Connection`], one TCP connection with the
//!   device's codec and buffers. Sends exactly what it is told (frames or
//!   raw bytes) and returns every server frame: the tool for tests that
//!   provoke server behaviour.
//! - [`device`]: [`device::Device`], a controller that behaves as the spec
//!   requires (events kept until acknowledged and resent after reconnects,
//!   the event window, `BUSY`, commands, heartbeats, `BYE`, an upload
//!   resumed at the server's durable offset), on top of a
//!   `Connection`, one tokio task per device. Devices share a
//!   [`device::Behaviour`] (what they do) and a [`device::Stats`] (what
//!   they measure).
//! - [`verify`]: reads the Redis stream `cwp:events` and checks that every
//!   acknowledged event is stored exactly once.
//!
//! The `controller-sim` binary runs thousands of devices against HAProxy
//! or a driver and prints what they measured; `bench-limits` measures the
//! network and storage limits the upload benchmark (`bench/uploads.sh`)
//! compares with.

pub mod client;
pub mod device;
pub mod verify;
