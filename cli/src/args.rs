//! The command line: every subcommand, its flags and its `--help`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// Shown after the top-level `--help`: what the exit codes mean, so that a
/// script can tell an offline device from a device that said no.
const TOP_AFTER_HELP: &str = "\
Examples:
  drover devices --online               the devices connected now, as a table
  drover device CTRL-0042               one device's registry entry
  drover send CTRL-0042 reboot '{\"delay_s\":5}' --wait
  drover send CTRL-0042 reboot --queue --ttl 1h   durable: delivered when it connects
  drover queue CTRL-0042                its durable commands still pending
  drover events --serial CTRL-0042 --since 10m
  drover events --follow --json | jq .  every new event, one JSON object a line
  drover uploads --follow
  drover key CTRL-0042                  its device key (from CWP_MASTER_KEY)
  drover token CTRL-0042                a bearer token for its HTTP requests

Redis: REDIS_URL (default redis://127.0.0.1:6379), or REDIS_CLUSTER_NODES for
a Redis Cluster (seed nodes; it wins over REDIS_URL); also read from ./.env.

Exit codes:
  0  success (with --wait: the device answered OK)
  1  error (Redis unreachable or refused, unreadable data)
  2  usage error (bad flags or arguments)
  3  the device is offline: no driver is subscribed (PUBLISH answered 0)
  4  --wait timed out: no result came in time
  5  the command never reached the device: REJECTED or UNDELIVERED
  6  the device answered, but not OK (FAILED, UNSUPPORTED, BUSY, INVALID)
  7  not found (drover device: no registry entry for that serial; drover
     cancel: no such command pending)
  8  refused (send --queue: the device's ledger is full, CMD_MAX_QUEUED;
     cancel: the command was sent already)";

/// `drover`: the operators' command line for a Drover deployment. It
/// reads and writes the deployment's Redis (or Redis Cluster), never a
/// driver directly.
#[derive(Debug, Parser)]
#[command(name = "drover", version, after_help = TOP_AFTER_HELP)]
pub struct Cli {
    /// Machine-readable output: a JSON array or object, or for events and
    /// uploads one JSON object per line.
    #[arg(long, global = true)]
    pub json: bool,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// The device registry as a table: serial, online, driver, peer,
    /// firmware, last seen, last event id.
    #[command(
        after_help = "Examples:\n  drover devices\n  drover devices --online --driver driver-1\n  drover devices --json | jq '.[] | select(.online) | .serial'"
    )]
    Devices(DevicesArgs),
    /// One device's registry entry.
    #[command(
        after_help = "Examples:\n  drover device CTRL-0042\n  drover device CTRL-0042 --json | jq .last_event_id\n\nExit code 7 when the registry has no entry for the serial."
    )]
    Device(DeviceArgs),
    /// Sends a command to a device and, with --wait, prints its result.
    #[command(after_help = "\
Examples:
  drover send CTRL-0042 reboot
  drover send CTRL-0042 reboot '{\"delay_s\":5}' --wait
  drover send CTRL-0042 config --body-file config.json --wait --timeout 30s
  drover send CTRL-0042 blink --body-b64 AAEC --wait --json

Without --wait, prints the command's id once a driver received it. With
--wait, prints the device's result (status, then its output), or why none
came. Exit codes: 0 sent (with --wait: OK), 3 offline (0 subscribers:
nothing is queued), 4 no result within --timeout, 5 REJECTED or
UNDELIVERED, 6 the device answered FAILED, UNSUPPORTED, BUSY or INVALID.

With --queue, the command goes into the device's durable ledger (README,
Durable commands): it is sent when the device is online, at once or when it
next connects, and again with the same id after a session that ended before
its result, until the result is stored or --ttl passes. Prints the id; with
--wait, each outcome as it arrives (QUEUED, SENT with its attempt, then the
device's result, EXPIRED, CANCELLED or REJECTED). Enqueueing an id that is
pending already changes nothing. Exit code 8 when the device already has
CMD_MAX_QUEUED commands pending (nothing is queued).
  drover send CTRL-0042 reboot --queue
  drover send CTRL-0042 config --body-file c.json --queue --ttl 7d --wait --timeout 10m")]
    Send(SendArgs),
    /// A device's durable commands still pending, in order.
    #[command(after_help = "Examples:\n  drover queue CTRL-0042\n  drover queue CTRL-0042 --json | jq length")]
    Queue(QueueArgs),
    /// Cancels a durable command that was not sent yet.
    #[command(after_help = "\
Examples:
  drover cancel CTRL-0042 6f1c2b1e-0000-4000-8000-000000000001

Exit codes: 0 cancelled (CANCELLED is published), 7 no such command is
pending, 8 it was sent already (it stays pending: the device may be running it).")]
    Cancel(CancelArgs),
    /// Stored events, decoded: bodies as text where they are UTF-8, hex
    /// otherwise; command results (kind 65535) with their status.
    #[command(after_help = "\
Examples:
  drover events                          the last 20 events
  drover events --serial CTRL-0042 --since 1h
  drover events --since 1714557600000    since a Unix time in ms (or a stream id, or 2024-05-01T10:00:00Z)
  drover events --follow --json          new events as they are stored, one JSON object a line")]
    Events(EventsArgs),
    /// Finished uploads (the cwp:uploads stream).
    #[command(
        after_help = "Examples:\n  drover uploads\n  drover uploads --serial CTRL-0042 --since 1d\n  drover uploads --follow"
    )]
    Uploads(UploadsArgs),
    /// A device's key, derived from the master key (CWP_MASTER_KEY), to
    /// provision into its firmware. The master key is never printed.
    #[command(
        after_help = "Examples:\n  CWP_MASTER_KEY=$(cat master.key) drover key CTRL-0042\n  drover key CTRL-0042 --json"
    )]
    Key(KeyArgs),
    /// A bearer token for a device's HTTP requests (docs/HTTP.md), asked
    /// of the HTTP gateways (HTTP_GATEWAY_URL) with a request signed by the
    /// device's key (derived from CWP_MASTER_KEY): for clients that cannot
    /// sign each request. Bearer tokens belong on HTTPS.
    #[command(after_help = "\
Examples:
  CWP_MASTER_KEY=$(cat master.key) drover token CTRL-0042
  HTTP_GATEWAY_URL=http://gw.example:8080 drover token CTRL-0042 --json

Exit codes: 0 issued, 8 the gateway refused (its error is printed), 1 unreachable.")]
    Token(TokenArgs),
    /// The file store (FILES_DIR) that rollouts send from.
    #[command(subcommand)]
    Files(FilesCommand),
    /// Rollouts: a stored file sent to a set of devices (README, Rollouts).
    #[command(subcommand)]
    Rollout(RolloutCommand),
}

/// `drover files`.
#[derive(Debug, Subcommand)]
pub enum FilesCommand {
    /// Adds a file to FILES_DIR (atomic, idempotent) and prints its SHA-256.
    #[command(
        after_help = "Examples:\n  drover files add firmware-2.1.bin\n  drover rollout start --file $(drover files add fw.bin) --serials-file fleet.txt"
    )]
    Add(FilesAddArgs),
}

/// `drover files add`.
#[derive(Debug, Args)]
pub struct FilesAddArgs {
    /// The file.
    pub path: PathBuf,
}

/// `drover rollout`.
#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// Starts a rollout of a stored file to devices; prints its id.
    #[command(after_help = "\
Examples:
  drover rollout start --file 3a7b... --serials CTRL-0001,CTRL-0002
  drover rollout start --file 3a7b... --serials-file fleet.txt --max-active 50 --retries 2 --expires 7d

Devices online now are offered the file at once (at most --max-active
transfers at a time, fleet-wide); the others when they next connect, until
--expires.")]
    Start(RolloutStartArgs),
    /// A rollout's state, its targets counted by state, and bytes
    /// acknowledged; with --follow, a live progress line until it settles.
    #[command(
        after_help = "Examples:\n  drover rollout status 6f1c2b1e-0000-4000-8000-000000000001\n  drover rollout status ID --json\n  drover rollout status ID --follow\n\nExit code 7 when there is no such rollout."
    )]
    Status(RolloutStatusArgs),
    /// Pauses a rollout: no transfer starts, active ones stop between
    /// chunks (devices keep what they have).
    Pause(RolloutIdArgs),
    /// Resumes a paused rollout.
    Resume(RolloutIdArgs),
    /// Cancels a rollout for good: active transfers stop between chunks.
    Cancel(RolloutIdArgs),
}

/// `drover rollout start`.
#[derive(Debug, Args)]
pub struct RolloutStartArgs {
    /// The file's SHA-256, as `drover files add` printed it.
    #[arg(long, value_name = "SHA256")]
    pub file: String,
    /// The target devices, comma-separated.
    #[arg(
        long,
        value_name = "S1,S2,...",
        value_delimiter = ',',
        required_unless_present = "serials_file",
        conflicts_with = "serials_file"
    )]
    pub serials: Vec<String>,
    /// The target devices, one serial a line (blank lines and # comments
    /// are skipped).
    #[arg(long, value_name = "FILE")]
    pub serials_file: Option<PathBuf>,
    /// Transfers at once, fleet-wide.
    #[arg(long, default_value_t = drover_schema::rollout::DEFAULT_MAX_ACTIVE, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_active: u32,
    /// Offers again after a DIGEST_MISMATCH, at most.
    #[arg(long, default_value_t = drover_schema::rollout::DEFAULT_RETRIES)]
    pub retries: u32,
    /// Each driver sends this rollout's chunks at most this fast, its
    /// transfers together, in bytes per second (0: no limit).
    #[arg(long, value_name = "BYTES", default_value_t = 0)]
    pub max_bytes_per_s: u64,
    /// No transfer starts after this long (7d, 12h, 30m).
    #[arg(long, default_value = "7d", value_parser = parse_duration)]
    pub expires: Duration,
}

/// `drover rollout status`.
#[derive(Debug, Args)]
pub struct RolloutStatusArgs {
    /// The rollout's id.
    pub id: String,
    /// Redraw a progress line every second until no target is pending or
    /// active (on a terminal; otherwise one line per change).
    #[arg(long)]
    pub follow: bool,
}

/// `drover rollout pause|resume|cancel`.
#[derive(Debug, Args)]
pub struct RolloutIdArgs {
    /// The rollout's id.
    pub id: String,
}

/// `drover devices`.
#[derive(Debug, Args)]
pub struct DevicesArgs {
    /// Only the devices connected now.
    #[arg(long)]
    pub online: bool,
    /// Only the devices whose current (or last) session is on this driver.
    #[arg(long, value_name = "ID")]
    pub driver: Option<String>,
}

/// `drover device`.
#[derive(Debug, Args)]
pub struct DeviceArgs {
    /// The device's serial.
    pub serial: String,
}

/// `drover send`.
#[derive(Debug, Args)]
pub struct SendArgs {
    /// The device's serial.
    pub serial: String,
    /// The command's name (1-255 bytes).
    pub name: String,
    /// The command's body, as text.
    #[arg(conflicts_with_all = ["body_file", "body_b64"])]
    pub body: Option<String>,
    /// The body from a file (sent as text when it is UTF-8, else as bytes).
    #[arg(long, value_name = "FILE", conflicts_with = "body_b64")]
    pub body_file: Option<PathBuf>,
    /// The body as base64 bytes.
    #[arg(long, value_name = "BASE64")]
    pub body_b64: Option<String>,
    /// The command's id (a UUID); a new one by default.
    #[arg(long)]
    pub id: Option<uuid::Uuid>,
    /// Wait for the device's result and print it (with --queue: print
    /// every outcome until the last).
    #[arg(long)]
    pub wait: bool,
    /// Queue it durably in the device's ledger instead of publishing it.
    #[arg(long)]
    pub queue: bool,
    /// With --queue: how long it may wait for its result (then EXPIRED).
    #[arg(long, default_value = "24h", value_parser = parse_duration, requires = "queue")]
    pub ttl: Duration,
    /// How long --wait waits (250ms, 10s, 2m; a bare number is seconds).
    #[arg(long, default_value = "10s", value_parser = parse_duration, requires = "wait")]
    pub timeout: Duration,
}

/// `drover queue`.
#[derive(Debug, Args)]
pub struct QueueArgs {
    /// The device's serial.
    pub serial: String,
}

/// `drover cancel`.
#[derive(Debug, Args)]
pub struct CancelArgs {
    /// The device's serial.
    pub serial: String,
    /// The command's id.
    pub id: uuid::Uuid,
}

/// Which part of a stream to read: `--since`, `--limit`, `--follow`.
#[derive(Debug, Args)]
pub struct Window {
    /// Start here: a duration ago (10m, 2h, 7d), a Unix time in ms, a
    /// stream id (1714557600000-0) or an RFC 3339 time.
    #[arg(long, value_name = "WHEN")]
    pub since: Option<String>,
    /// At most this many entries (default: the last 20 without --since,
    /// all of them with it).
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Then keep printing new entries as they are stored, until interrupted.
    #[arg(long, short = 'f')]
    pub follow: bool,
}

/// `drover events`.
#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Only this device's events (reads only its partition's stream).
    #[arg(long, value_name = "SERIAL")]
    pub serial: Option<String>,
    /// Which events.
    #[command(flatten)]
    pub window: Window,
}

/// `drover uploads`.
#[derive(Debug, Args)]
pub struct UploadsArgs {
    /// Only this device's uploads.
    #[arg(long, value_name = "SERIAL")]
    pub serial: Option<String>,
    /// Which uploads.
    #[command(flatten)]
    pub window: Window,
}

/// `drover key`.
#[derive(Debug, Args)]
pub struct KeyArgs {
    /// The device's serial.
    pub serial: String,
}

/// `drover token`.
#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The device's serial.
    pub serial: String,
}

fn parse_duration(text: &str) -> Result<Duration, drover_service::duration::InvalidDuration> {
    drover_service::duration::parse_duration(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn a_body_is_given_one_way_only() {
        let parse = |args: &[&str]| Cli::try_parse_from([&["drover", "send", "S-1", "x"], args].concat());
        assert!(parse(&["text"]).is_ok());
        assert!(parse(&["--body-b64", "AA=="]).is_ok());
        assert!(parse(&["text", "--body-b64", "AA=="]).is_err());
        assert!(parse(&["--body-file", "f", "--body-b64", "AA=="]).is_err());
        assert!(parse(&["--timeout", "5s"]).is_err(), "--timeout needs --wait");
        assert!(parse(&["--wait", "--timeout", "5s"]).is_ok());
        assert!(parse(&["--ttl", "1h"]).is_err(), "--ttl needs --queue");
        assert!(parse(&["--queue", "--ttl", "1h", "--wait"]).is_ok());
    }
}
