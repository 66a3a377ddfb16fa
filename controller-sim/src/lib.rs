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
//! what they measured; `bench-limits` measures the network and storage
//! limits the upload benchmark (`bench/uploads.sh`) compares with;
//! `bench-commands` plays the operator of the commands benchmark
//! (publishes commands, times their results).

pub mod client;
pub mod device;
pub mod mqtt;
pub mod verify;

/// A duration on the command line: a number and a unit (`ms`, `s`, `m`, `h`); a bare number is
/// seconds.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (e.g. 30s, 500ms, 2m)"))?;
    let seconds = match unit.trim() {
        "ms" => number / 1000.0,
        "" | "s" => number,
        "m" | "min" => number * 60.0,
        "h" => number * 3600.0,
        other => return Err(format!("unknown unit {other:?} in {text:?} (ms, s, m, h)")),
    };
    std::time::Duration::try_from_secs_f64(seconds).map_err(|err| format!("{text:?}: {err}"))
}
