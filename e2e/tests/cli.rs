//! The operator CLI, `drover`, as an operator runs it: the built binary
//! against a real fleet (Redis, the vendor-bridge, a driver) and a
//! connected device, then against a fleet on a Redis Cluster. Each
//! outcome of `drover send --wait` is checked by its exit code, with the
//! offline device as the control of the online one.

#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use bytes::Bytes;
use controller_sim::client::Connection;
use controller_sim::device::UploadJob;
use cwp::{
    Block, CommandResult, CommandStatus, DeviceFrame, Event, ServerFrame, Str8, UploadBegin, UploadEnd, UploadId,
    UploadOutcome,
};
use drover_testkit::binaries::binary;
use drover_testkit::cluster_fleet::ClusterFleet;
use drover_testkit::device::{MASTER_KEY_HEX, connect, device_key, serial};
use drover_testkit::fleet::{TestFleet, runtime};
use drover_testkit::process::ChildGuard;
use drover_testkit::redis_cluster::RedisCluster;
use serde_json::Value as Json;

const WAIT: Duration = Duration::from_secs(20);
/// How long a `drover` run may take before the test gives up on it: it
/// ends by itself well before (its own waits are at most `--timeout`).
const RUN_LIMIT: Duration = Duration::from_secs(60);
const COMMAND_ID: &str = "11111111-1111-1111-1111-111111111111";

/// What one `drover` run did.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Json {
        serde_json::from_str(&self.stdout).unwrap_or_else(|err| panic!("{err}: {self:?}"))
    }

    fn json_lines(&self) -> Vec<Json> {
        self.stdout
            .lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|err| panic!("{err}: {line}")))
            .collect()
    }
}

/// A `drover` run in progress; its output goes to files.
struct Running {
    process: ChildGuard,
    dir: tempfile::TempDir,
}

impl Running {
    fn finish(mut self) -> Run {
        let status = self.process.wait_timeout(RUN_LIMIT).expect("drover ends by itself");
        let read = |name| std::fs::read_to_string(self.dir.path().join(name)).unwrap();
        Run {
            code: status.code(),
            stdout: read("stdout"),
            stderr: read("stderr"),
        }
    }
}

/// `drover` with `env` only (no `.env`: it runs in an empty directory).
fn command(env: &[(&str, &str)], args: &[&str], dir: &std::path::Path) -> Command {
    let mut command = Command::new(binary("drover").unwrap());
    command
        .args(args)
        .env_remove("REDIS_URL")
        .env_remove("REDIS_CLUSTER_NODES")
        .env_remove("CWP_MASTER_KEY")
        .env_remove("NO_COLOR")
        .envs(env.iter().copied())
        .current_dir(dir)
        .stdin(Stdio::null());
    command
}

fn spawn(env: &[(&str, &str)], args: &[&str]) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let stdout = std::fs::File::create(dir.path().join("stdout")).unwrap();
    let stderr = std::fs::File::create(dir.path().join("stderr")).unwrap();
    let process = ChildGuard::spawn("drover", command(env, args, dir.path()).stdout(stdout).stderr(stderr)).unwrap();
    Running { process, dir }
}

fn drover(env: &[(&str, &str)], args: &[&str]) -> Run {
    spawn(env, args).finish()
}

/// `drover ARGS --follow`, its stdout read line by line as it comes.
struct Follower {
    process: ChildGuard,
    lines: mpsc::Receiver<String>,
    _dir: tempfile::TempDir,
}

impl Follower {
    fn start(env: &[(&str, &str)], args: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut command = command(env, args, dir.path());
        command.stdout(Stdio::piped()).stderr(Stdio::null());
        let mut process = ChildGuard::spawn("drover --follow", &mut command).unwrap();
        let stdout = process.take_stdout().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            process,
            lines,
            _dir: dir,
        }
    }

    /// Lines until one satisfies `wanted` (which is returned), failing
    /// after `WAIT` without one.
    fn until(&self, wanted: impl Fn(&Json) -> bool) -> Vec<Json> {
        let mut seen = Vec::new();
        loop {
            let line = self
                .lines
                .recv_timeout(WAIT)
                .unwrap_or_else(|_| panic!("no wanted line; saw {seen:?}"));
            let json: Json = serde_json::from_str(&line).unwrap();
            let done = wanted(&json);
            seen.push(json);
            if done {
                return seen;
            }
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.process.kill();
    }
}

async fn recv_command(device: &mut Connection) -> cwp::Command {
    loop {
        match device.recv_timeout(WAIT).await.unwrap() {
            ServerFrame::Command(command) => return command,
            ServerFrame::Ack(_) => {}
            other => panic!("expected COMMAND, got {other:?}"),
        }
    }
}

/// Sends `EVENT(event_id)` and waits for its `ACK` (it is stored then).
async fn send_event(device: &mut Connection, event_id: u64, kind: u16, body: Bytes) {
    device
        .send(&DeviceFrame::Event(Event {
            event_id,
            time_ms: 1_714_557_600_000,
            kind,
            body,
        }))
        .await
        .unwrap();
    loop {
        match device.recv_timeout(WAIT).await.unwrap() {
            ServerFrame::Ack(ack) if ack.event_id >= event_id => return,
            ServerFrame::Ack(_) => {}
            other => panic!("expected ACK {event_id}, got {other:?}"),
        }
    }
}

/// Answers the next command with `status` and `data` as event `event_id`.
async fn answer(device: &mut Connection, event_id: u64, status: CommandStatus, data: &'static [u8]) -> cwp::Command {
    let command = recv_command(device).await;
    let result = CommandResult {
        command_id: command.command_id,
        status,
        data: Bytes::from_static(data),
    };
    send_event(device, event_id, Event::COMMAND_RESULT_KIND, result.encode()).await;
    command
}

/// A 3-block upload, completed.
async fn upload(device: &mut Connection) -> UploadJob {
    const BLOCK: usize = 1004;
    let job = UploadJob::new(UploadJob::content(3 * BLOCK, 7), BLOCK, "sensor-log.bin");
    let id = UploadId([0x42; 16]);
    let size = job.content.len() as u64;
    device
        .send(&DeviceFrame::UploadBegin(UploadBegin {
            upload_id: id,
            total_size: size,
            name: Str8::new("sensor-log.bin").unwrap(),
        }))
        .await
        .unwrap();
    for chunk in job.content.chunks(BLOCK) {
        device
            .send(&DeviceFrame::Block(Block {
                data: Bytes::copy_from_slice(chunk),
            }))
            .await
            .unwrap();
    }
    device
        .send(&DeviceFrame::UploadEnd(UploadEnd {
            upload_id: id,
            total_size: size,
            sha256: job.sha256,
        }))
        .await
        .unwrap();
    loop {
        match device.recv_timeout(WAIT).await.unwrap() {
            ServerFrame::UploadDone(done) => {
                assert_eq!(done.status, UploadOutcome::OK);
                return job;
            }
            ServerFrame::UploadStatus(_) | ServerFrame::Pong(_) | ServerFrame::Ack(_) => {}
            other => panic!("expected UPLOAD_DONE, got {other:?}"),
        }
    }
}

#[test]
fn an_operator_lists_devices_sends_commands_and_reads_events_and_uploads() {
    let fleet = TestFleet::start(1, &[]);
    let url = fleet.redis.url();
    let env = [("REDIS_URL", url.as_str())];
    let rt = runtime();
    let (mut device, _) = rt.block_on(connect(fleet.addr(), &serial("CTRL-0042")));

    // The registry.
    let devices = drover(&env, &["devices", "--json"]);
    assert_eq!(devices.code, Some(0), "{devices:?}");
    let listed = devices.json();
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["serial"], "CTRL-0042");
    assert_eq!(listed[0]["online"], true);
    assert_eq!(listed[0]["driver"], fleet.drivers[0].driver_id());
    assert_eq!(listed[0]["firmware"], "fw-test");
    let table = drover(&env, &["devices", "--online"]);
    assert_eq!(table.code, Some(0), "{table:?}");
    assert!(table.stdout.starts_with("SERIAL"), "{table:?}");
    assert!(
        !table.stdout.contains('\x1b'),
        "no colour when stdout is not a terminal: {table:?}"
    );
    assert!(
        table.stdout.lines().nth(1).unwrap().starts_with("CTRL-0042  yes"),
        "{table:?}"
    );
    let elsewhere = drover(&env, &["devices", "--json", "--driver", "driver-none"]);
    assert_eq!(elsewhere.json(), serde_json::json!([]));
    let one = drover(&env, &["device", "CTRL-0042", "--json"]);
    assert_eq!(one.code, Some(0), "{one:?}");
    assert_eq!(one.json()["session"].as_str().unwrap().len(), 32, "{one:?}");
    let unknown = drover(&env, &["device", "CTRL-9999"]);
    assert_eq!(unknown.code, Some(7), "not found: {unknown:?}");

    // A command and its result.
    let waiting = spawn(
        &env,
        &[
            "send",
            "CTRL-0042",
            "reboot",
            "{\"delay_s\":5}",
            "--id",
            COMMAND_ID,
            "--wait",
            "--timeout",
            "30s",
        ],
    );
    let command = rt.block_on(answer(&mut device, 1, CommandStatus::OK, b"done"));
    assert_eq!(command.name.as_str(), "reboot");
    assert_eq!(&command.body[..], b"{\"delay_s\":5}");
    assert_eq!(command.command_id.to_string(), COMMAND_ID);
    let sent = waiting.finish();
    assert_eq!(sent.code, Some(0), "{sent:?}");
    assert_eq!(sent.stdout, "OK\ndone\n");

    // The control: the same command to a device that is not connected.
    let offline = drover(&env, &["send", "CTRL-0999", "reboot", "--wait"]);
    assert_eq!(offline.code, Some(3), "{offline:?}");
    assert!(offline.stderr.contains("offline (0 subscribers)"), "{offline:?}");

    // The device says no: its status, and exit code 6.
    let waiting = spawn(&env, &["send", "CTRL-0042", "format-disk", "--wait", "--json"]);
    rt.block_on(answer(&mut device, 2, CommandStatus::FAILED, &[0xff, 0x00]));
    let failed = waiting.finish();
    assert_eq!(failed.code, Some(6), "{failed:?}");
    assert_eq!(failed.json()["status"], "FAILED");
    assert_eq!(failed.json()["data_b64"], "/wA=");

    // A command the driver rejects (larger than the device accepts): 5.
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("body");
    std::fs::write(&big, "x".repeat(70_000)).unwrap();
    let rejected = drover(
        &env,
        &[
            "send",
            "CTRL-0042",
            "flash",
            "--body-file",
            big.to_str().unwrap(),
            "--wait",
        ],
    );
    assert_eq!(rejected.code, Some(5), "{rejected:?}");
    assert!(rejected.stdout.starts_with("REJECTED\n"), "{rejected:?}");

    // No answer: 4.
    let silent = drover(&env, &["send", "CTRL-0042", "ignored", "--wait", "--timeout", "1s"]);
    assert_eq!(silent.code, Some(4), "{silent:?}");
    assert_eq!(rt.block_on(recv_command(&mut device)).name.as_str(), "ignored");

    // Events, decoded: text, hex, and the command results.
    rt.block_on(send_event(&mut device, 3, 7, Bytes::from_static(b"temp=21.5")));
    rt.block_on(send_event(&mut device, 4, 7, Bytes::from_static(&[0xff, 0xfe])));
    let events = drover(&env, &["events", "--serial", "CTRL-0042", "--json"]);
    assert_eq!(events.code, Some(0), "{events:?}");
    let events = events.json_lines();
    let ids: Vec<u64> = events.iter().map(|e| e["event_id"].as_u64().unwrap()).collect();
    assert_eq!(ids, [1, 2, 3, 4], "{events:?}");
    assert_eq!(events[0]["result"]["id"], COMMAND_ID);
    assert_eq!(events[0]["result"]["status"], "OK");
    assert_eq!(events[0]["result"]["data"], "done");
    assert_eq!(events[1]["result"]["data_hex"], "ff00");
    assert_eq!(events[2]["body"], "temp=21.5");
    assert_eq!(events[2]["kind"], 7);
    assert_eq!(events[3]["body_hex"], "fffe");
    assert_eq!(events[3]["driver"], fleet.drivers[0].driver_id());
    let last = drover(&env, &["events", "--limit", "1"]);
    assert_eq!(last.stdout.lines().count(), 1, "{last:?}");
    assert!(last.stdout.contains("CTRL-0042  #4  kind 7  0xfffe"), "{last:?}");
    let none = drover(&env, &["events", "--serial", "CTRL-0999", "--json", "--since", "1d"]);
    assert_eq!((none.code, none.stdout.as_str()), (Some(0), ""), "{none:?}");

    // Following: what is stored next, once.
    let follower = Follower::start(&env, &["events", "--follow", "--json", "--serial", "CTRL-0042"]);
    rt.block_on(send_event(&mut device, 5, 7, Bytes::from_static(b"followed")));
    let seen = follower.until(|event| event["event_id"] == 5);
    let ids: HashSet<u64> = seen.iter().map(|e| e["event_id"].as_u64().unwrap()).collect();
    assert_eq!(ids.len(), seen.len(), "no event twice: {seen:?}");

    // Uploads.
    let empty = drover(&env, &["uploads", "--json"]);
    assert_eq!((empty.code, empty.stdout.as_str()), (Some(0), ""), "{empty:?}");
    let follower = Follower::start(&env, &["uploads", "--follow", "--json"]);
    let job = rt.block_on(upload(&mut device));
    let seen = follower.until(|record| record["serial"] == "CTRL-0042");
    assert_eq!(seen.len(), 1, "{seen:?}");
    let uploads = drover(&env, &["uploads", "--json", "--serial", "CTRL-0042"]).json_lines();
    assert_eq!(uploads.len(), 1, "{uploads:?}");
    assert_eq!(uploads[0]["name"], "sensor-log.bin");
    assert_eq!(uploads[0]["size"], job.content.len());
    assert_eq!(uploads[0]["sha256"], hex::encode(job.sha256));
    assert_eq!(uploads[0], seen[0]);
}

#[test]
fn the_device_key_is_the_one_the_driver_expects_and_the_master_key_is_never_printed() {
    let expected = hex::encode(device_key(&serial("CTRL-0042")).as_bytes());
    let env = [("CWP_MASTER_KEY", MASTER_KEY_HEX)];
    let key = drover(&env, &["key", "CTRL-0042"]);
    assert_eq!(
        (key.code, key.stdout.as_str()),
        (Some(0), format!("{expected}\n").as_str()),
        "{key:?}"
    );
    assert!(!key.stderr.contains(MASTER_KEY_HEX));
    let json = drover(&env, &["key", "CTRL-0042", "--json"]).json();
    assert_eq!(json, serde_json::json!({"serial": "CTRL-0042", "device_key": expected}));

    // A device really authenticates with it: the fleet's drivers hold the
    // same master key.
    let fleet = TestFleet::start(1, &[]);
    runtime().block_on(async {
        let mut connection = Connection::connect(fleet.addr()).await.unwrap();
        let key = cwp::DeviceKey::from_hex(&expected).unwrap();
        connection
            .handshake(serial("CTRL-0042"), &key, "fw-test")
            .await
            .expect("the derived key is accepted");
    });

    // A malformed master key is described, not shown (one digit short).
    let almost = &MASTER_KEY_HEX[..63];
    let bad = drover(&[("CWP_MASTER_KEY", almost)], &["key", "CTRL-0042"]);
    assert_eq!(bad.code, Some(1), "{bad:?}");
    assert!(bad.stderr.contains("CWP_MASTER_KEY"), "{bad:?}");
    assert!(!bad.stderr.contains(almost) && !bad.stdout.contains(almost), "{bad:?}");
    let unset = drover(&[], &["key", "CTRL-0042"]);
    assert_eq!(unset.code, Some(1), "{unset:?}");
    let usage = drover(&env, &["key", "not a serial"]);
    assert_eq!(usage.code, Some(2), "{usage:?}");
}

#[test]
fn on_a_redis_cluster_commands_travel_sharded_and_every_partition_is_read() {
    let fleet = ClusterFleet::start(RedisCluster::start(3, 0).unwrap(), 3, 1, &[], &[]);
    let seeds = fleet.cluster.seeds();
    // REDIS_URL points nowhere: the cluster's nodes win.
    let env = [
        ("REDIS_CLUSTER_NODES", seeds.as_str()),
        ("REDIS_URL", "redis://unused.invalid:1"),
    ];
    let rt = runtime();
    // Devices in different partitions.
    let serials = ["CTRL-0001", "CTRL-0002", "CTRL-0003", "CTRL-0004"];
    let mut devices = Vec::new();
    for name in serials {
        devices.push(rt.block_on(connect(fleet.addr(), &serial(name))).0);
    }

    let listed = drover(&env, &["devices", "--json"]);
    assert_eq!(listed.code, Some(0), "{listed:?}");
    let listed: Vec<String> = listed
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["serial"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(listed, serials, "every master's devices");

    let follower = Follower::start(&env, &["events", "--follow", "--json"]);
    let waiting = spawn(&env, &["send", "CTRL-0003", "reboot", "--id", COMMAND_ID, "--wait"]);
    rt.block_on(answer(&mut devices[2], 1, CommandStatus::OK, b"done"));
    let sent = waiting.finish();
    assert_eq!((sent.code, sent.stdout.as_str()), (Some(0), "OK\ndone\n"), "{sent:?}");
    let offline = drover(&env, &["send", "CTRL-0999", "reboot", "--wait"]);
    assert_eq!(offline.code, Some(3), "the control: {offline:?}");

    for (index, device) in devices.iter_mut().enumerate() {
        rt.block_on(send_event(device, 10, 7, Bytes::from(format!("from {index}"))));
    }
    let all = drover(&env, &["events", "--json", "--since", "1d"]).json_lines();
    let mut from: Vec<(String, u64)> = all
        .iter()
        .map(|e| {
            (
                e["serial"].as_str().unwrap().to_owned(),
                e["event_id"].as_u64().unwrap(),
            )
        })
        .collect();
    from.sort();
    let mut expected: Vec<(String, u64)> = serials.iter().map(|s| ((*s).to_owned(), 10)).collect();
    expected.push(("CTRL-0003".to_owned(), 1));
    expected.sort();
    assert_eq!(from, expected, "every partition's stream: {all:?}");
    let streams: HashSet<&str> = all.iter().map(|e| e["stream"].as_str().unwrap()).collect();
    assert!(streams.len() > 1, "the devices are spread over partitions: {streams:?}");

    let one = drover(&env, &["events", "--json", "--serial", "CTRL-0003"]).json_lines();
    assert_eq!(one.len(), 2, "{one:?}");
    assert_eq!(one[0]["result"]["id"], COMMAND_ID);
    assert_eq!(one[1]["body"], "from 2");

    // Following every partition: each new event once.
    let seen = follower.until(|event| event["serial"] == "CTRL-0004" && event["event_id"] == 10);
    let mut keys: Vec<(String, u64)> = seen
        .iter()
        .map(|e| {
            (
                e["serial"].as_str().unwrap().to_owned(),
                e["event_id"].as_u64().unwrap(),
            )
        })
        .collect();
    keys.sort();
    assert_eq!(keys, expected, "each event once: {seen:?}");
}

/// The README's ACL line for `drover`'s user, as `ACL SETUSER` arguments
/// with `password`.
fn operator_acl(password: &str) -> Vec<String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let line = readme
        .lines()
        .find(|line| line.starts_with("user drover-operator "))
        .expect("README documents drover's ACL user");
    line.split_whitespace()
        .skip(1)
        .map(|word| {
            if word == "#OPERATOR_PASSWORD_SHA256" {
                format!(">{password}")
            } else {
                word.to_owned()
            }
        })
        .collect()
}

#[test]
fn drover_needs_no_more_than_the_documented_acl_user() {
    let fleet = TestFleet::start(1, &[]);
    let rt = runtime();
    let (mut device, _) = rt.block_on(connect(fleet.addr(), &serial("CTRL-0042")));
    let mut redis = rt.block_on(fleet.redis());
    rt.block_on(async {
        redis::cmd("ACL")
            .arg("SETUSER")
            .arg(operator_acl("operator-secret"))
            .query_async::<()>(&mut redis)
            .await
            .unwrap();
    });
    let url = fleet
        .redis
        .url()
        .replacen("redis://", "redis://drover-operator:operator-secret@", 1);
    let env = [("REDIS_URL", url.as_str())];

    let waiting = spawn(&env, &["send", "CTRL-0042", "reboot", "--wait"]);
    rt.block_on(answer(&mut device, 1, CommandStatus::OK, b"done"));
    let runs = [
        waiting.finish(),
        drover(&env, &["send", "CTRL-0999", "reboot"]),
        drover(&env, &["devices", "--json"]),
        drover(&env, &["device", "CTRL-0042"]),
        drover(&env, &["events", "--serial", "CTRL-0042", "--since", "1d"]),
        drover(&env, &["uploads"]),
    ];
    let codes: Vec<Option<i32>> = runs.iter().map(|run| run.code).collect();
    assert_eq!(
        codes,
        [Some(0), Some(3), Some(0), Some(0), Some(0), Some(0)],
        "{runs:#?}"
    );
    assert!(runs[4].stdout.contains("result OK"), "{runs:#?}");
    let denied: Vec<redis::Value> =
        rt.block_on(async { redis::cmd("ACL").arg("LOG").query_async(&mut redis).await.unwrap() });
    assert!(denied.is_empty(), "Redis denied drover something: {denied:?}");

    // The control: without the user's right to read the registry, the
    // same command is refused, and it shows in the ACL log.
    rt.block_on(async {
        redis::cmd("ACL")
            .arg("SETUSER")
            .arg("drover-operator")
            .arg("-hgetall")
            .query_async::<()>(&mut redis)
            .await
            .unwrap();
    });
    let refused = drover(&env, &["device", "CTRL-0042"]);
    assert_eq!(refused.code, Some(1), "{refused:?}");
    assert!(refused.stderr.contains("no permissions"), "{refused:?}");
    assert!(
        refused.stderr.contains("README, Security"),
        "the error says where to look: {refused:?}"
    );
    let denied: Vec<redis::Value> =
        rt.block_on(async { redis::cmd("ACL").arg("LOG").query_async(&mut redis).await.unwrap() });
    assert!(!denied.is_empty(), "the refusal is in the ACL log");
}
