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
//! - [`mqtt`]: [`mqtt::MqttDevice`], the peer's device: an MQTT 3.1.1
//!   client holding an idle connection to a broker with keep-alives (the
//!   idle benchmark's comparison with Mosquitto).
//! - [`verify`]: reads the Redis stream `cwp:events` and checks that every
//!   acknowledged event is stored exactly once.
//!
//! The `controller-sim` binary runs up to hundreds of thousands of devices
//! (over several worker processes) against HAProxy or drivers and prints
//! what they measured. (The benchmarks' other tools, `bench-limits`,
//! `bench-commands` and `bench-stand-in`, are binaries of `fleet`.)

pub mod client;
pub mod device;
pub mod mqtt;
pub mod verify;
