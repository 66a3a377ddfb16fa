//! Files to devices (issue 18, README "Rollouts"): a file added with
//! `drover files add` and rolled out with `drover rollout start`, exactly
//! as an operator runs them, reaches devices online now and devices that
//! connect later, on any driver, resumes where the device is after a cut,
//! and follows the rollout's policy (max_active, retries, cancel). The
//! devices here speak CWP/1 frame by frame, so that each test sees exactly
//! what the driver sent.

#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::Duration;

use controller_sim::client::Connection;
use cwp::{
    ByeReason, DeviceFrame, ErrorCode, FileAccept, FileAck, FileAckStatus, FileId, FileOffer, FrameType, Ping,
    ServerFrame,
};
use drover_testkit::binaries::binary;
use drover_testkit::cluster_fleet::ClusterFleet;
use drover_testkit::device::{connect, event, expect_fatal, serial};
use drover_testkit::fleet::{TestFleet, runtime};
use drover_testkit::operator;
use drover_testkit::redis_cluster::RedisCluster;
use drover_testkit::wait::eventually;
use sha2::{Digest as _, Sha256};

const WAIT: Duration = Duration::from_secs(10);

/// The operator: `drover` with a fleet's Redis and FILES_DIR.
struct Operator {
    env: Vec<(String, String)>,
}

impl Operator {
    /// `drover ARGS`: (exit code, stdout, stderr).
    fn drover(&self, args: &[&str]) -> (Option<i32>, String, String) {
        let run = operator::drover(&self.env, args);
        (run.code, run.stdout, run.stderr)
    }

    /// Adds `content` as `name`; its SHA-256 as `drover files add` prints it.
    fn add(&self, name: &str, content: &[u8]) -> String {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, content).unwrap();
        let (code, sha, stderr) = self.drover(&["files", "add", path.to_str().unwrap()]);
        assert_eq!(code, Some(0), "drover files add: {stderr}");
        assert_eq!(sha, hex::encode(Sha256::digest(content)));
        sha
    }

    /// Starts a rollout; its id.
    fn rollout(&self, sha: &str, serials: &str, extra: &[&str]) -> String {
        let mut args = vec!["rollout", "start", "--file", sha, "--serials", serials];
        args.extend_from_slice(extra);
        let (code, id, stderr) = self.drover(&args);
        assert_eq!(code, Some(0), "drover rollout start: {stderr}");
        id
    }

    /// `drover rollout ACTION ID` (pause, resume, cancel).
    fn control(&self, action: &str, id: &str) {
        let (code, _, stderr) = self.drover(&["rollout", action, id]);
        assert_eq!(code, Some(0), "drover rollout {action}: {stderr}");
    }

    /// `drover rollout status ID --json`.
    fn status(&self, id: &str) -> serde_json::Value {
        let (code, json, stderr) = self.drover(&["--json", "rollout", "status", id]);
        assert_eq!(code, Some(0), "drover rollout status: {stderr}");
        serde_json::from_str(&json).unwrap()
    }

    fn count(&self, id: &str, state: &str) -> u64 {
        self.status(id)[state].as_str().unwrap().parse().unwrap()
    }
}

/// A fleet whose drivers serve files from a FILES_DIR the CLI adds to.
struct Rollouts {
    fleet: TestFleet,
    _files: tempfile::TempDir,
    operator: Operator,
}

impl std::ops::Deref for Rollouts {
    type Target = Operator;

    fn deref(&self) -> &Operator {
        &self.operator
    }
}

impl Rollouts {
    fn start(drivers: usize) -> Self {
        Self::start_with(drivers, &[])
    }

    /// `extra_env` goes to every driver.
    fn start_with(drivers: usize, extra_env: &[(&str, &str)]) -> Self {
        let files = tempfile::tempdir().unwrap();
        let dir = files.path().to_str().unwrap().to_owned();
        let mut env = vec![("FILES_DIR", dir.as_str())];
        env.extend_from_slice(extra_env);
        let fleet = TestFleet::start(drivers, &env);
        let operator = Operator {
            env: vec![
                ("REDIS_URL".to_owned(), fleet.redis.url()),
                ("FILES_DIR".to_owned(), dir),
            ],
        };
        Self {
            fleet,
            _files: files,
            operator,
        }
    }

    /// A target's state record.
    async fn target(&self, id: &str, serial: &str) -> serde_json::Value {
        let mut redis = self.fleet.redis().await;
        let raw: String = redis::cmd("HGET")
            .arg(format!("cwp:rollout:{{{id}}}:targets"))
            .arg(serial)
            .query_async(&mut redis)
            .await
            .unwrap();
        serde_json::from_str(&raw).unwrap()
    }
}

/// Content that shows misplaced bytes: every offset's byte differs.
fn content(size: usize) -> Vec<u8> {
    (0..size).map(|i| (i % 251) as u8 ^ (i / 251) as u8).collect()
}

fn file_id(id: &str) -> FileId {
    FileId(*uuid::Uuid::parse_str(id).unwrap().as_bytes())
}

/// The next `FILE_OFFER` (acks and pongs before it are skipped).
async fn expect_offer(device: &mut Connection) -> FileOffer {
    loop {
        match device.recv_timeout(WAIT).await.unwrap() {
            ServerFrame::FileOffer(offer) => return offer,
            ServerFrame::Ack(_) | ServerFrame::Pong(_) => {}
            other => panic!("expected FILE_OFFER, got {other:?}"),
        }
    }
}

/// A device's side of a transfer: the prefix's hash, never the bytes.
struct Receiver {
    offer: FileOffer,
    hasher: Sha256,
    offset: u64,
    acked: u64,
    window: u32,
}

impl Receiver {
    fn new(offer: FileOffer) -> Self {
        Self {
            offer,
            hasher: Sha256::new(),
            offset: 0,
            acked: 0,
            window: 0,
        }
    }

    /// Takes the next offer on `device`, accepts it from 0 with `window`
    /// and receives until it holds `until` bytes.
    async fn started(device: &mut Connection, window: u32, until: u64) -> Self {
        let mut receiver = Self::new(expect_offer(device).await);
        receiver.accept(device, window).await;
        receiver.receive(device, until).await;
        receiver
    }

    async fn accept(&mut self, device: &mut Connection, window: u32) {
        self.window = window;
        self.acked = self.offset;
        let accept = FileAccept {
            file_id: self.offer.file_id,
            offset: self.offset,
            window,
        };
        device.send(&DeviceFrame::FileAccept(accept)).await.unwrap();
    }

    async fn ack(&mut self, device: &mut Connection, status: FileAckStatus) {
        self.acked = self.offset;
        let ack = FileAck {
            file_id: self.offer.file_id,
            offset: self.offset,
            status,
        };
        device.send(&DeviceFrame::FileAck(ack)).await.unwrap();
    }

    /// Receives chunks until it holds `until` bytes, acknowledging every
    /// half window; panics if a chunk goes beyond the window.
    async fn receive(&mut self, device: &mut Connection, until: u64) {
        loop {
            if self.offset - self.acked >= u64::from(self.window / 2) && self.offset < self.offer.size {
                self.ack(device, FileAckStatus::OK).await;
            }
            if self.offset >= until {
                return;
            }
            match device.recv_timeout(WAIT).await.unwrap() {
                ServerFrame::FileChunk(chunk) => self.take(&chunk.data),
                ServerFrame::Ack(_) | ServerFrame::Pong(_) => {}
                other => panic!("expected FILE_CHUNK, got {other:?}"),
            }
        }
    }

    fn take(&mut self, data: &[u8]) {
        let end = self.offset + data.len() as u64;
        assert!(
            end <= self.acked + u64::from(self.window),
            "a chunk ends at {end}, beyond the window ({} + {})",
            self.acked,
            self.window
        );
        assert!(end <= self.offer.size, "a chunk beyond the file's size");
        self.hasher.update(data);
        self.offset = end;
    }

    fn verified(&self) -> bool {
        self.offset == self.offer.size && <[u8; 32]>::from(self.hasher.clone().finalize()) == self.offer.sha256
    }
}

#[test]
fn an_online_device_gets_the_file_verified_and_its_events_are_acked_meanwhile() {
    let rollouts = Rollouts::start(1);
    let data = content(3_000_000);
    let sha = rollouts.add("fw-2.1.bin", &data);
    runtime().block_on(async {
        let (mut device, _) = connect(rollouts.fleet.addr(), &serial("FILE-1")).await;
        let id = rollouts.rollout(&sha, "FILE-1", &[]);
        let offer = expect_offer(&mut device).await;
        assert_eq!(offer.file_id, file_id(&id), "file_id is the rollout's id");
        assert_eq!((offer.size, hex::encode(offer.sha256)), (3_000_000, sha.clone()));
        assert_eq!(offer.name.as_str(), "fw-2.1.bin");
        let mut receiver = Receiver::new(offer);
        receiver.accept(&mut device, 256 * 1024).await;
        receiver.receive(&mut device, 100_000).await;

        // An event mid-transfer: its ACK comes while the window is full of
        // chunks the device has not acknowledged.
        device.send(&event(1)).await.unwrap();
        loop {
            match device.recv_timeout(WAIT).await.unwrap() {
                ServerFrame::Ack(ack) => {
                    assert_eq!(ack.event_id, 1);
                    break;
                }
                ServerFrame::FileChunk(chunk) => receiver.take(&chunk.data),
                other => panic!("expected ACK or FILE_CHUNK, got {other:?}"),
            }
        }
        assert!(
            receiver.offset < receiver.offer.size,
            "the event was acked during the transfer"
        );

        receiver.receive(&mut device, 3_000_000).await;
        assert!(receiver.verified(), "the device holds the file, digest matched");
        receiver.ack(&mut device, FileAckStatus::OK).await;
        eventually("the rollout records the target done", WAIT, || async {
            rollouts.count(&id, "done") == 1
        })
        .await;
        let status = rollouts.status(&id);
        assert_eq!(status["active"], "0");
        assert_eq!(status["bytes_acked"], "3000000");
        assert_eq!(rollouts.target(&id, "FILE-1").await["state"], "done");
    });
}

#[test]
fn a_cut_transfer_resumes_at_the_devices_offset_on_another_driver() {
    let rollouts = Rollouts::start(2);
    let data = content(2_000_000);
    let sha = rollouts.add("fw.bin", &data);
    let id = rollouts.rollout(&sha, "FILE-CUT", &[]);
    runtime().block_on(async {
        let (mut first, _) = connect(rollouts.fleet.drivers[0].addr(), &serial("FILE-CUT")).await;
        let mut receiver = Receiver::started(&mut first, 128 * 1024, 700_001).await;
        // Cut: the bytes held past the last FILE_ACK are the device's too.
        drop(first);
        let held = receiver.offset;

        let (mut second, _) = connect(rollouts.fleet.drivers[1].addr(), &serial("FILE-CUT")).await;
        let offer = expect_offer(&mut second).await;
        assert_eq!(offer, receiver.offer, "the same file is offered again");
        receiver.accept(&mut second, 128 * 1024).await;
        receiver.receive(&mut second, 2_000_000).await;
        assert!(
            receiver.verified(),
            "resumed at {held}: the digest of both halves matches"
        );
        receiver.ack(&mut second, FileAckStatus::OK).await;
        eventually("done", WAIT, || async { rollouts.count(&id, "done") == 1 }).await;
    });
}

/// A transfer cut at several offsets, each time resumed on the other
/// driver where the device is: after its first chunk, in the middle of a
/// window (bytes held past the last `FILE_ACK`), and after the last byte
/// but before the device's digest (it accepts at the size: no chunk comes,
/// and its `FILE_ACK` at the size ends the transfer; the simulator once
/// waited forever there, and so did the driver).
#[test]
fn a_transfer_cut_at_several_offsets_resumes_at_each_on_either_driver() {
    let rollouts = Rollouts::start(2);
    let size = 1_000_000;
    let sha = rollouts.add("fw.bin", &content(size));
    let id = rollouts.rollout(&sha, "FILE-CUTS", &[]);
    runtime().block_on(async {
        let mut receiver: Option<Receiver> = None;
        for (cut, until) in [1, 300_001, size as u64].into_iter().enumerate() {
            let driver = &rollouts.fleet.drivers[cut % 2];
            let (mut device, _) = connect(driver.addr(), &serial("FILE-CUTS")).await;
            let offer = expect_offer(&mut device).await;
            let receiver = receiver.get_or_insert_with(|| Receiver::new(offer.clone()));
            assert_eq!(offer, receiver.offer, "the same file each time");
            receiver.accept(&mut device, 64 * 1024).await;
            receiver.receive(&mut device, until).await;
            // The stored offset is what the device acknowledged, never
            // more than it holds.
            let stored = rollouts.target(&id, "FILE-CUTS").await["offset"].as_u64().unwrap();
            assert!(stored <= receiver.offset, "stored {stored}, held {}", receiver.offset);
            drop(device);
        }
        let mut receiver = receiver.unwrap();
        assert_eq!(receiver.offset, size as u64, "held whole, not yet verified");
        let (mut device, _) = connect(rollouts.fleet.drivers[1].addr(), &serial("FILE-CUTS")).await;
        assert_eq!(expect_offer(&mut device).await, receiver.offer);
        receiver.accept(&mut device, 64 * 1024).await;
        assert!(receiver.verified(), "the bytes of four sessions make the file");
        receiver.ack(&mut device, FileAckStatus::OK).await;
        eventually("done after four sessions", WAIT, || async {
            rollouts.count(&id, "done") == 1
        })
        .await;
        assert_eq!(rollouts.status(&id)["bytes_acked"], size.to_string());
    });
}

#[test]
fn a_device_offline_at_the_start_gets_the_file_when_it_connects_and_a_decline_is_recorded() {
    let rollouts = Rollouts::start(1);
    let sha = rollouts.add("config.tar", &content(10_000));
    let id = rollouts.rollout(&sha, "FILE-LATE,FILE-NO", &[]);
    assert_eq!(rollouts.count(&id, "pending"), 2);
    runtime().block_on(async {
        let (mut late, _) = connect(rollouts.fleet.addr(), &serial("FILE-LATE")).await;
        let mut receiver = Receiver::started(&mut late, 65_536, 10_000).await;
        assert!(receiver.verified());
        receiver.ack(&mut late, FileAckStatus::OK).await;

        let (mut no, _) = connect(rollouts.fleet.addr(), &serial("FILE-NO")).await;
        let mut declining = Receiver::new(expect_offer(&mut no).await);
        declining.accept(&mut no, 0).await;
        eventually("one done, one declined", WAIT, || async {
            rollouts.count(&id, "done") == 1 && rollouts.count(&id, "declined") == 1
        })
        .await;
        assert_eq!(rollouts.target(&id, "FILE-NO").await["state"], "declined");
        // Nothing is offered again on the next session: its index is empty.
        drop(no);
        let (mut again, _) = connect(rollouts.fleet.addr(), &serial("FILE-NO")).await;
        again.send(&DeviceFrame::Ping(Ping { token: 7 })).await.unwrap();
        match again.recv_timeout(WAIT).await.unwrap() {
            ServerFrame::Pong(pong) => assert_eq!(pong.token, 7),
            other => panic!("expected PONG, got {other:?}"),
        }
        let mut redis = rollouts.fleet.redis().await;
        let index: i64 = redis::cmd("ZCARD")
            .arg("cwp:file-offers:FILE-NO")
            .query_async(&mut redis)
            .await
            .unwrap();
        assert_eq!(index, 0);
    });
}

#[test]
fn a_digest_mismatch_is_offered_again_up_to_the_retries_then_fails() {
    let rollouts = Rollouts::start(1);
    let sha = rollouts.add("fw.bin", &content(50_000));
    let id = rollouts.rollout(&sha, "FILE-BAD", &["--retries", "1"]);
    runtime().block_on(async {
        let (mut device, _) = connect(rollouts.fleet.addr(), &serial("FILE-BAD")).await;
        for attempt in 1..=2 {
            let mut receiver = Receiver::started(&mut device, 65_536, 50_000).await;
            assert!(receiver.verified(), "attempt {attempt}: sent whole from 0");
            // The device says its digest did not match (a corrupt flash).
            receiver.ack(&mut device, FileAckStatus::DIGEST_MISMATCH).await;
        }
        eventually("failed after 1 retry", WAIT, || async {
            rollouts.count(&id, "failed") == 1
        })
        .await;
        let target = rollouts.target(&id, "FILE-BAD").await;
        assert_eq!(target["mismatches"], 2);
        assert!(target["why"].as_str().unwrap().contains("digest mismatch"), "{target}");
        let mut redis = rollouts.fleet.redis().await;
        let results: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(format!("cwp:rollout:{{{id}}}:results"))
            .arg("-")
            .arg("+")
            .query_async(&mut redis)
            .await
            .unwrap();
        let states: Vec<String> = results.ids.iter().map(|e| e.get::<String>("state").unwrap()).collect();
        assert_eq!(states, ["retrying", "failed"]);
    });
}

/// How long a device waits for the next chunk before it concludes that
/// the transfer stopped: on loopback, with the window open, a transfer that
/// goes on sends its next chunk within milliseconds (the control below
/// never waits this long), so two seconds of nothing is a stop.
const QUIET: Duration = Duration::from_secs(2);

/// Receives as `Receiver::receive` does until the file is whole or nothing
/// comes for [`QUIET`].
async fn receive_until_quiet(device: &mut Connection, receiver: &mut Receiver) {
    loop {
        if receiver.offset - receiver.acked >= u64::from(receiver.window / 2) {
            receiver.ack(device, FileAckStatus::OK).await;
        }
        if receiver.offset >= receiver.offer.size {
            return;
        }
        match device.recv_timeout(QUIET).await {
            Ok(ServerFrame::FileChunk(chunk)) => receiver.take(&chunk.data),
            Ok(ServerFrame::Ack(_) | ServerFrame::Pong(_)) => {}
            Ok(other) => panic!("expected FILE_CHUNK, got {other:?}"),
            Err(_) => return,
        }
    }
}

#[test]
fn cancel_stops_a_transfer_between_chunks_and_without_it_the_device_gets_the_file() {
    let rollouts = Rollouts::start(1);
    let size = 4_000_000;
    let sha = rollouts.add("fw.bin", &content(size));
    runtime().block_on(async {
        for cancel in [false, true] {
            let name = if cancel { "FILE-STOP" } else { "FILE-GO" };
            let id = rollouts.rollout(&sha, name, &[]);
            let (mut device, _) = connect(rollouts.fleet.addr(), &serial(name)).await;
            let mut receiver = Receiver::started(&mut device, 64 * 1024, 64 * 1024).await;
            if cancel {
                let (code, _, stderr) = rollouts.drover(&["rollout", "cancel", &id]);
                assert_eq!(code, Some(0), "{stderr}");
                assert_eq!(rollouts.count(&id, "cancelled"), 1);
            }
            // The device goes on acknowledging every half window: only the
            // cancel can stop the chunks (the control, `cancel == false`,
            // receives the whole file the same way).
            receiver.ack(&mut device, FileAckStatus::OK).await;
            receive_until_quiet(&mut device, &mut receiver).await;
            if cancel {
                assert!(receiver.offset < size as u64, "the cancelled transfer stopped");
                assert_eq!(rollouts.target(&id, name).await["state"], "cancelled");
            } else {
                assert!(
                    receiver.verified(),
                    "without cancel the same device gets the whole file"
                );
            }
        }
    });
}

#[test]
fn max_active_holds_across_two_drivers_and_a_freed_slot_wakes_the_next_device() {
    let rollouts = Rollouts::start(2);
    let sha = rollouts.add("fw.bin", &content(20_000));
    runtime().block_on(async {
        let (mut a, _) = connect(rollouts.fleet.drivers[0].addr(), &serial("FILE-A")).await;
        let (mut b, _) = connect(rollouts.fleet.drivers[1].addr(), &serial("FILE-B")).await;
        let id = rollouts.rollout(&sha, "FILE-A,FILE-B", &["--max-active", "1"]);
        eventually("one transfer active, the other device waiting", WAIT, || async {
            let mut redis = rollouts.fleet.redis().await;
            let waiting: i64 = redis::cmd("ZCARD")
                .arg(format!("cwp:rollout:{{{id}}}:waiting"))
                .query_async(&mut redis)
                .await
                .unwrap();
            rollouts.count(&id, "active") == 1 && waiting == 1
        })
        .await;
        let a_active = rollouts.target(&id, "FILE-A").await["state"] == "active";
        let (first, second) = if a_active { (&mut a, &mut b) } else { (&mut b, &mut a) };
        let mut receiver = Receiver::started(first, 65_536, 20_000).await;
        receiver.ack(first, FileAckStatus::OK).await;
        // The slot frees: the waiting device, on the other driver, is woken.
        let mut next = Receiver::new(expect_offer(second).await);
        next.accept(second, 65_536).await;
        next.receive(second, 20_000).await;
        assert!(next.verified());
        next.ack(second, FileAckStatus::OK).await;
        eventually("both done", WAIT, || async { rollouts.count(&id, "done") == 2 }).await;
    });
}

#[test]
fn file_frames_that_do_not_fit_the_transfer_are_fatal_and_change_no_stored_state() {
    let rollouts = Rollouts::start(1);
    let sha = rollouts.add("fw.bin", &content(100_000));
    let id = rollouts.rollout(&sha, "FILE-ERR", &[]);
    runtime().block_on(async {
        let addr = rollouts.fleet.addr();
        let device = serial("FILE-ERR");
        let other = FileId([9; 16]);
        // Each case: what the device sends after the offer (and after
        // accepting with window 1000 and receiving it, for the acks).
        let cases: Vec<(&str, FramesAfterOffer, ErrorCode, FrameType)> = vec![
            (
                "accept of another file",
                Box::new(move |_| vec![accept(other, 0, 1000)]),
                ErrorCode::UNEXPECTED,
                FrameType::FILE_ACCEPT,
            ),
            (
                "accept beyond the size",
                Box::new(|id| vec![accept(id, 100_001, 1000)]),
                ErrorCode::UNEXPECTED,
                FrameType::FILE_ACCEPT,
            ),
            (
                "accept twice",
                Box::new(|id| vec![accept(id, 0, 1000), accept(id, 0, 1000)]),
                ErrorCode::UNEXPECTED,
                FrameType::FILE_ACCEPT,
            ),
            (
                "ack before accept",
                Box::new(|id| vec![ack(id, 0, FileAckStatus::OK)]),
                ErrorCode::UNEXPECTED,
                FrameType::FILE_ACK,
            ),
            (
                "ack beyond what was sent",
                Box::new(|id| vec![accept(id, 0, 1000), ack(id, 5000, FileAckStatus::OK)]),
                ErrorCode::UNEXPECTED,
                FrameType::FILE_ACK,
            ),
            (
                "ack of another file",
                Box::new(move |id| vec![accept(id, 0, 1000), ack(other, 0, FileAckStatus::OK)]),
                ErrorCode::UNEXPECTED,
                FrameType::FILE_ACK,
            ),
            (
                "ack going backwards",
                Box::new(|id| vec![accept(id, 500, 1000), ack(id, 100, FileAckStatus::OK)]),
                ErrorCode::UNEXPECTED,
                FrameType::FILE_ACK,
            ),
            (
                "ack with an undefined status",
                Box::new(|id| vec![accept(id, 0, 1000), ack(id, 0, FileAckStatus(7))]),
                ErrorCode::MALFORMED,
                FrameType::FILE_ACK,
            ),
        ];
        for (what, frames, code, ref_type) in cases {
            let (mut connection, _) = connect(addr, &device).await;
            let offer = expect_offer(&mut connection).await;
            for frame in frames(offer.file_id) {
                connection.send(&frame).await.unwrap();
            }
            // Chunks may come before the error.
            let error = loop {
                match connection.recv_timeout(WAIT).await.unwrap() {
                    ServerFrame::Error(error) => break error,
                    ServerFrame::FileChunk(_) | ServerFrame::Ack(_) => {}
                    other => panic!("{what}: expected ERROR, got {other:?}"),
                }
            };
            assert_eq!(
                (error.code, error.ref_type, error.fatal),
                (code, ref_type, true),
                "{what}: {error:?}"
            );
            assert!(connection.closed_within(WAIT).await, "{what}: closed");
            eventually("the transfer is released", WAIT, || async {
                rollouts.target(&id, "FILE-ERR").await["state"] == "pending"
            })
            .await;
        }
        // The rollout is intact: the device gets the whole file after all.
        let (mut connection, _) = connect(addr, &device).await;
        let mut receiver = Receiver::started(&mut connection, 65_536, 100_000).await;
        assert!(receiver.verified());
        receiver.ack(&mut connection, FileAckStatus::OK).await;
        eventually("done", WAIT, || async { rollouts.count(&id, "done") == 1 }).await;

        // With no transfer at all, a file frame is UNEXPECTED too.
        let (mut connection, _) = connect(addr, &serial("FILE-NONE")).await;
        connection
            .send(&ack(FileId([1; 16]), 0, FileAckStatus::OK))
            .await
            .unwrap();
        expect_fatal(&mut connection, ErrorCode::UNEXPECTED, FrameType::FILE_ACK).await;
    });
}

/// What a device sends after an offer, given the offered file's id.
type FramesAfterOffer = Box<dyn Fn(FileId) -> Vec<DeviceFrame>>;

fn accept(file_id: FileId, offset: u64, window: u32) -> DeviceFrame {
    DeviceFrame::FileAccept(FileAccept {
        file_id,
        offset,
        window,
    })
}

fn ack(file_id: FileId, offset: u64, status: FileAckStatus) -> DeviceFrame {
    DeviceFrame::FileAck(FileAck {
        file_id,
        offset,
        status,
    })
}

#[test]
fn the_simulator_receives_verifies_and_resumes_through_drops_and_corruption() {
    let rollouts = Rollouts::start(2);
    let sha = rollouts.add("fw.bin", &content(1_500_000));
    let serials: Vec<String> = (1..=6).map(|i| format!("SIMF-{i:06}")).collect();
    let id = rollouts.rollout(&sha, &serials.join(","), &["--max-active", "3", "--retries", "10"]);
    let output = Command::new(binary("controller-sim").unwrap())
        .args([
            "--scenario",
            "files",
            "--devices",
            "6",
            "--serial-prefix",
            "SIMF-",
            "--duration",
            "60s",
        ])
        .args([
            "--file-window",
            "131072",
            "--file-corrupt",
            "0.3",
            "--file-drop",
            "0.5",
            "--json",
        ])
        .env("SIM_TARGET", rollouts.fleet.drivers[0].addr().to_string())
        .env("CWP_MASTER_KEY", drover_testkit::device::MASTER_KEY_HEX)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "controller-sim: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let files = &summary["files"];
    assert_eq!(files["verified"], 6, "{files}");
    assert_eq!(files["window_violations"], 0, "{files}");
    assert_eq!(files["stray_chunks"], 0, "{files}");
    runtime().block_on(eventually("all done", WAIT, || async {
        rollouts.count(&id, "done") == 6
    }));
}

/// `controller-sim --scenario files` with `args`, to the first driver:
/// its JSON summary's `files`.
fn simulate(rollouts: &Rollouts, devices: u32, prefix: &str, args: &[&str]) -> serde_json::Value {
    let output = Command::new(binary("controller-sim").unwrap())
        .args(["--scenario", "files", "--json", "--duration", "60s"])
        .args(["--devices", &devices.to_string(), "--serial-prefix", prefix])
        .args(args)
        .env("SIM_TARGET", rollouts.fleet.drivers[0].addr().to_string())
        .env("CWP_MASTER_KEY", drover_testkit::device::MASTER_KEY_HEX)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "controller-sim: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    summary["files"].clone()
}

/// Simulated devices that hold a prefix of the file before its first
/// offer accept at that offset and receive only the rest; the control
/// holds another file's prefix: its digest fails, and each device then
/// takes the whole file from 0.
#[test]
fn simulated_devices_start_at_the_offset_they_hold_and_a_wrong_prefix_is_a_mismatch() {
    let rollouts = Rollouts::start(1);
    let size = 600_000u64;
    let data = content(size as usize);
    let sha = rollouts.add("fw.bin", &data);
    let held = tempfile::tempdir().unwrap();
    let right = held.path().join("right.bin");
    std::fs::write(&right, &data).unwrap();
    let wrong = held.path().join("wrong.bin");
    std::fs::write(&wrong, &content(size as usize + 1)[1..]).unwrap();
    let start = 400_000u64;
    for (prefix, path, mismatches) in [("SIMS-", &right, 0), ("SIMW-", &wrong, 3)] {
        let serials: Vec<String> = (1..=3).map(|i| format!("{prefix}{i:06}")).collect();
        let id = rollouts.rollout(&sha, &serials.join(","), &["--retries", "1"]);
        let files = simulate(
            &rollouts,
            3,
            prefix,
            &[
                "--file-start",
                &start.to_string(),
                "--file-prefix-from",
                path.to_str().unwrap(),
            ],
        );
        assert_eq!(files["verified"], 3, "{prefix}: {files}");
        assert_eq!(files["mismatches"], mismatches, "{prefix}: {files}");
        assert_eq!(
            files["resumes"], 3,
            "{prefix}: each accepted its first offer at {start}"
        );
        let received = if mismatches == 0 {
            size - start
        } else {
            size - start + size
        };
        assert_eq!(files["bytes"], 3 * received, "{prefix}: {files}");
        runtime().block_on(eventually("all done", WAIT, || async {
            rollouts.count(&id, "done") == 3
        }));
    }
}

/// The frames up to `BYE` on a connection the driver closes: chunks
/// already on their way are the device's too.
async fn receive_until_bye(device: &mut Connection, receiver: &mut Receiver) -> ByeReason {
    loop {
        match device.recv_timeout(WAIT).await.unwrap() {
            ServerFrame::Bye(bye) => return bye.reason,
            ServerFrame::FileChunk(chunk) => receiver.take(&chunk.data),
            ServerFrame::Ack(_) | ServerFrame::Pong(_) => {}
            other => panic!("expected FILE_CHUNK or BYE, got {other:?}"),
        }
    }
}

/// Accepts the offer on `device` where `receiver` is, receives the rest
/// and says the digest matched.
async fn finish_on(device: &mut Connection, receiver: &mut Receiver) {
    assert_eq!(expect_offer(device).await, receiver.offer, "the same file again");
    receiver.accept(device, 64 * 1024).await;
    let size = receiver.offer.size;
    receiver.receive(device, size).await;
    assert!(receiver.verified(), "the digest of every session's bytes matches");
    receiver.ack(device, FileAckStatus::OK).await;
}

#[test]
fn a_drain_mid_transfer_says_bye_and_the_device_resumes_on_another_driver() {
    let mut rollouts = Rollouts::start_with(2, &[("DRIVER_DRAIN_PERIOD", "1s")]);
    let sha = rollouts.add("fw.bin", &content(2_000_000));
    let id = rollouts.rollout(&sha, "FILE-DRAIN", &[]);
    let rt = runtime();
    let (mut device, mut receiver) = rt.block_on(async {
        let (mut device, _) = connect(rollouts.fleet.drivers[0].addr(), &serial("FILE-DRAIN")).await;
        let receiver = Receiver::started(&mut device, 64 * 1024, 500_000).await;
        (device, receiver)
    });
    rollouts.fleet.drivers[0]
        .process()
        .signal(nix::sys::signal::Signal::SIGTERM)
        .unwrap();
    rt.block_on(async {
        assert_eq!(receive_until_bye(&mut device, &mut receiver).await, ByeReason::DRAINING);
        assert!(receiver.offset < 2_000_000, "the drain came mid-transfer");
        drop(device);
        let (mut device, _) = connect(rollouts.fleet.drivers[1].addr(), &serial("FILE-DRAIN")).await;
        finish_on(&mut device, &mut receiver).await;
        eventually("done", WAIT, || async { rollouts.count(&id, "done") == 1 }).await;
    });
}

/// kill -9 of the driver mid-transfer: nothing is said to the device, its
/// session is never closed, and its rollout slot is still held by the dead
/// session. The device reconnects to the other driver, is offered the same
/// file and resumes at the offset it holds.
#[test]
fn a_driver_killed_mid_transfer_leaves_the_device_to_resume_on_another_driver() {
    let mut rollouts = Rollouts::start(2);
    let sha = rollouts.add("fw.bin", &content(2_000_000));
    let id = rollouts.rollout(&sha, "FILE-KILLED", &["--max-active", "1"]);
    let rt = runtime();
    let (mut device, mut receiver) = rt.block_on(async {
        let (mut device, _) = connect(rollouts.fleet.drivers[0].addr(), &serial("FILE-KILLED")).await;
        let receiver = Receiver::started(&mut device, 64 * 1024, 600_000).await;
        (device, receiver)
    });
    rollouts.fleet.drivers[0].process().kill();
    rt.block_on(async {
        // What was in flight when the driver died is the device's too.
        loop {
            match device.recv_timeout(WAIT).await {
                Ok(ServerFrame::FileChunk(chunk)) => receiver.take(&chunk.data),
                Ok(ServerFrame::Ack(_) | ServerFrame::Pong(_)) => {}
                Ok(other) => panic!("expected FILE_CHUNK or the end of the connection, got {other:?}"),
                Err(_) => break,
            }
        }
        let held = receiver.offset;
        assert!(held < 2_000_000, "the driver died mid-transfer");
        drop(device);
        let (mut device, _) = connect(rollouts.fleet.drivers[1].addr(), &serial("FILE-KILLED")).await;
        finish_on(&mut device, &mut receiver).await;
        eventually("done", WAIT, || async { rollouts.count(&id, "done") == 1 }).await;
        let status = rollouts.status(&id);
        assert_eq!(
            status["active"], "0",
            "the dead session's slot was taken over, then freed"
        );
        assert_eq!(status["bytes_acked"], "2000000");
    });
}

#[test]
fn a_supersede_mid_transfer_moves_the_transfer_to_the_new_connection_on_either_driver() {
    let rollouts = Rollouts::start(2);
    let sha = rollouts.add("fw.bin", &content(1_000_000));
    runtime().block_on(async {
        for (name, second_driver) in [("FILE-SUP-SAME", 0), ("FILE-SUP-OTHER", 1)] {
            let id = rollouts.rollout(&sha, name, &[]);
            let (mut old, _) = connect(rollouts.fleet.drivers[0].addr(), &serial(name)).await;
            let mut receiver = Receiver::started(&mut old, 64 * 1024, 300_000).await;
            // The device comes back on a new connection while the old one
            // still lives: what it took from the old one is what it holds.
            let (mut new, _) = connect(rollouts.fleet.drivers[second_driver].addr(), &serial(name)).await;
            finish_on(&mut new, &mut receiver).await;
            eventually("done", WAIT, || async { rollouts.count(&id, "done") == 1 }).await;
            let reason = loop {
                match old.recv_timeout(WAIT).await.unwrap() {
                    ServerFrame::Bye(bye) => break bye.reason,
                    ServerFrame::FileChunk(_) | ServerFrame::Ack(_) => {}
                    other => panic!("{name}: expected BYE, got {other:?}"),
                }
            };
            assert_eq!(reason, ByeReason::SUPERSEDED, "{name}");
            let status = rollouts.status(&id);
            assert_eq!(
                (status["active"].as_str(), status["pending"].as_str()),
                (Some("0"), Some("0"))
            );
        }
    });
}

#[test]
fn pause_stops_a_transfer_between_chunks_and_resume_continues_it_at_the_devices_offset() {
    let rollouts = Rollouts::start(1);
    let size = 4_000_000;
    let sha = rollouts.add("fw.bin", &content(size));
    let id = rollouts.rollout(&sha, "FILE-PAUSE", &[]);
    runtime().block_on(async {
        let (mut device, _) = connect(rollouts.fleet.addr(), &serial("FILE-PAUSE")).await;
        let mut receiver = Receiver::started(&mut device, 64 * 1024, 64 * 1024).await;
        rollouts.control("pause", &id);
        // The device acknowledges every half window: only the pause stops
        // the chunks (cancel's test has the control: without it, the file
        // comes whole the same way).
        receiver.ack(&mut device, FileAckStatus::OK).await;
        receive_until_quiet(&mut device, &mut receiver).await;
        let held = receiver.offset;
        assert!(held < size as u64, "the paused transfer stopped at {held}");
        assert_eq!(rollouts.target(&id, "FILE-PAUSE").await["state"], "pending");
        let status = rollouts.status(&id);
        assert_eq!(
            (status["state"].as_str(), status["active"].as_str()),
            (Some("paused"), Some("0"))
        );

        rollouts.control("resume", &id);
        // Offered again on the same connection; it resumes where it is.
        finish_on(&mut device, &mut receiver).await;
        eventually("done", WAIT, || async { rollouts.count(&id, "done") == 1 }).await;
        assert_eq!(receiver.offer.size, size as u64);
    });
}

#[test]
fn an_expired_rollout_starts_no_transfer_and_a_live_one_for_the_same_device_does() {
    let rollouts = Rollouts::start(1);
    let sha = rollouts.add("fw.bin", &content(10_000));
    let expired = rollouts.rollout(&sha, "FILE-EXP", &["--expires", "1s"]);
    runtime().block_on(async {
        let mut redis = rollouts.fleet.redis().await;
        let expires_ms: u64 = redis::cmd("HGET")
            .arg(format!("cwp:rollout:{{{expired}}}"))
            .arg("expires_ms")
            .query_async(&mut redis)
            .await
            .unwrap();
        eventually("the first rollout's expiry passed", WAIT, || async {
            drover_service::clock::unix_ms() > expires_ms
        })
        .await;
        // The control: a rollout with the default expiry, started after.
        let live = rollouts.rollout(&sha, "FILE-EXP", &[]);
        let (mut device, _) = connect(rollouts.fleet.addr(), &serial("FILE-EXP")).await;
        let mut receiver = Receiver::new(expect_offer(&mut device).await);
        assert_eq!(receiver.offer.file_id, file_id(&live), "the live rollout is offered");
        let target = rollouts.target(&expired, "FILE-EXP").await;
        assert_eq!(
            (target["state"].as_str(), target["why"].as_str()),
            (Some("failed"), Some("the rollout expired"))
        );
        receiver.accept(&mut device, 65_536).await;
        receiver.receive(&mut device, 10_000).await;
        receiver.ack(&mut device, FileAckStatus::OK).await;
        eventually("the live one done", WAIT, || async {
            rollouts.count(&live, "done") == 1
        })
        .await;
        assert_eq!(
            (rollouts.count(&expired, "failed"), rollouts.count(&expired, "pending")),
            (1, 0)
        );
    });
}

/// For each window: the driver fills it exactly and sends nothing more
/// until the device acknowledges (then exactly up to the new limit).
#[test]
fn the_driver_fills_the_window_exactly_and_never_beyond_it() {
    let rollouts = Rollouts::start(1);
    let size = 200_000u64;
    let sha = rollouts.add("fw.bin", &content(size as usize));
    runtime().block_on(async {
        for (n, window) in [1u32, 1_000, 65_553].into_iter().enumerate() {
            let name = format!("FILE-WIN-{n}");
            rollouts.rollout(&sha, &name, &[]);
            let (mut device, _) = connect(rollouts.fleet.addr(), &serial(&name)).await;
            let mut receiver = Receiver::new(expect_offer(&mut device).await);
            receiver.accept(&mut device, window).await;
            for _ in 0..2 {
                // `take` panics on a chunk beyond the window.
                loop {
                    match device.recv_timeout(QUIET).await {
                        Ok(ServerFrame::FileChunk(chunk)) => receiver.take(&chunk.data),
                        Ok(ServerFrame::Ack(_) | ServerFrame::Pong(_)) => {}
                        Ok(other) => panic!("expected FILE_CHUNK, got {other:?}"),
                        Err(_) => break,
                    }
                }
                let limit = (receiver.acked + u64::from(window)).min(size);
                assert_eq!(
                    receiver.offset, limit,
                    "window {window}: filled to its limit, no further"
                );
                // The acknowledgement opens the window again.
                receiver.ack(&mut device, FileAckStatus::OK).await;
            }
        }
    });
}

/// README "Rollouts": a transfer runs at most 8 MiB ahead of the offset
/// its rollout recorded, so an outage pauses it there.
const AHEAD_OF_RECORD: u64 = 8 << 20;

/// A file that an outage cuts off well before its end.
const OUTAGE_FILE: u64 = 3 * AHEAD_OF_RECORD;

#[test]
fn a_redis_outage_pauses_a_transfer_where_it_was_recorded_and_the_same_session_finishes_it_after() {
    let mut rollouts = Rollouts::start(1);
    let size = OUTAGE_FILE;
    let sha = rollouts.add("fw.bin", &content(size as usize));
    let id = rollouts.rollout(&sha, "FILE-REDIS", &[]);
    let rt = runtime();
    let (mut device, mut receiver) = rt.block_on(async {
        let (mut device, _) = connect(rollouts.fleet.addr(), &serial("FILE-REDIS")).await;
        let receiver = Receiver::started(&mut device, 256 * 1024, 300_000).await;
        (device, receiver)
    });
    rollouts.fleet.redis.stop();
    rt.block_on(async {
        // Progress reports go unanswered: the transfer stops at most
        // AHEAD_OF_RECORD beyond what was recorded (the accepted offset,
        // 0), the session stays open, and nothing fails.
        receive_until_quiet(&mut device, &mut receiver).await;
        assert!(
            receiver.offset <= AHEAD_OF_RECORD,
            "{} bytes sent with Redis down",
            receiver.offset
        );
        device.send(&DeviceFrame::Ping(Ping { token: 7 })).await.unwrap();
        assert!(
            matches!(device.recv_timeout(WAIT).await.unwrap(), ServerFrame::Pong(_)),
            "the session lives through the outage"
        );
    });
    let paused_at = receiver.offset;
    rollouts.fleet.redis.start_again().unwrap();
    rt.block_on(async {
        // The control: the same receive, once a report is answered, goes
        // to the end of the file on the same connection.
        receiver.receive(&mut device, size).await;
        assert!(receiver.verified(), "paused at {paused_at}, then the rest");
        receiver.ack(&mut device, FileAckStatus::OK).await;
        eventually("done once Redis is back", Duration::from_secs(30), || async {
            rollouts.count(&id, "done") == 1
        })
        .await;
        assert_eq!(rollouts.count(&id, "failed"), 0);
        assert_eq!(rollouts.status(&id)["bytes_acked"], size.to_string());
    });
}

#[test]
fn a_bridge_outage_pauses_a_transfer_and_the_device_resumes_after_it_on_another_driver() {
    let mut rollouts = Rollouts::start(2);
    let size = OUTAGE_FILE;
    let sha = rollouts.add("fw.bin", &content(size as usize));
    let id = rollouts.rollout(&sha, "FILE-BRIDGE", &[]);
    let rt = runtime();
    let (mut device, mut receiver) = rt.block_on(async {
        let (mut device, _) = connect(rollouts.fleet.drivers[0].addr(), &serial("FILE-BRIDGE")).await;
        let receiver = Receiver::started(&mut device, 256 * 1024, 300_000).await;
        (device, receiver)
    });
    let port = rollouts.fleet.bridge.port();
    rollouts.fleet.bridge.process().kill();
    rt.block_on(async {
        // The transfer pauses where the rollout recorded it; then the
        // link drops.
        receive_until_quiet(&mut device, &mut receiver).await;
        assert!(
            receiver.offset <= AHEAD_OF_RECORD,
            "{} bytes sent with the bridge down",
            receiver.offset
        );
        drop(device);
    });
    rollouts.fleet.bridge = drover_testkit::components::BridgeProcess::start_on(
        port,
        &rollouts.fleet.redis.url(),
        &drover_testkit::fleet::logs(),
        &[],
    )
    .unwrap();
    rt.block_on(async {
        // The driver's report of the cut reaches the bridge when it is
        // back (or the new session takes the slot over); either way the
        // device resumes where it is, on the other driver.
        let (mut device, _) = eventually_connect(rollouts.fleet.drivers[1].addr(), "FILE-BRIDGE").await;
        finish_on(&mut device, &mut receiver).await;
        assert!(receiver.verified());
        eventually("done", WAIT, || async { rollouts.count(&id, "done") == 1 }).await;
        assert_eq!(rollouts.count(&id, "failed"), 0);
    });
}

/// Connects once the driver lets sessions open again (its bridge may be
/// reconnecting).
async fn eventually_connect(addr: std::net::SocketAddr, name: &str) -> (Connection, cwp::Welcome) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut connection = Connection::connect(addr).await.unwrap();
        let device = serial(name);
        match connection
            .handshake(device, &drover_testkit::device::device_key(&device), "fw-test")
            .await
        {
            Ok(welcome) => return (connection, welcome),
            Err(_) if tokio::time::Instant::now() < deadline => {
                // Refused while the driver's bridge reconnects: try again.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(err) => panic!("no session within 30 s: {err}"),
        }
    }
}

#[test]
fn on_a_redis_cluster_a_rollout_reaches_devices_of_several_partitions_one_slot_at_a_time() {
    let files = tempfile::tempdir().unwrap();
    let dir = files.path().to_str().unwrap().to_owned();
    let fleet = ClusterFleet::start(RedisCluster::start(3, 0).unwrap(), 3, 2, &[], &[("FILES_DIR", &dir)]);
    let operator = Operator {
        env: vec![
            ("REDIS_CLUSTER_NODES".to_owned(), fleet.cluster.seeds()),
            ("REDIS_URL".to_owned(), "redis://unused.invalid:1".to_owned()),
            ("FILES_DIR".to_owned(), dir),
        ],
    };
    let sha = operator.add("fw.bin", &content(300_000));
    runtime().block_on(async {
        // Devices in different partitions, on both drivers; the third is
        // offline when the rollout starts.
        let (a, _) = connect(fleet.drivers[0].addr(), &serial("CTRL-0001")).await;
        let (b, _) = connect(fleet.drivers[1].addr(), &serial("CTRL-0002")).await;
        let id = operator.rollout(&sha, "CTRL-0001,CTRL-0002,CTRL-0003", &["--max-active", "1"]);
        // One slot: one device is offered the file; the other is woken
        // when it frees (across slots: the waiting set is the rollout's,
        // the wake-up goes to the device's sharded channel).
        let target_state = |serial: &'static str| {
            let id = id.clone();
            let mut redis = fleet.redis();
            async move {
                let raw: Option<String> = redis::cmd("HGET")
                    .arg(format!("cwp:rollout:{{{id}}}:targets"))
                    .arg(serial)
                    .query_async(&mut redis)
                    .await
                    .unwrap();
                serde_json::from_str::<serde_json::Value>(&raw.unwrap()).unwrap()["state"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            }
        };
        eventually("one active, one waiting", WAIT, || async {
            operator.count(&id, "active") == 1 && operator.count(&id, "pending") == 2
        })
        .await;
        let a_active = target_state("CTRL-0001").await == "active";
        let (mut first, mut second) = if a_active { (a, b) } else { (b, a) };
        let offer = expect_offer(&mut first).await;
        assert_eq!(operator.count(&id, "active"), 1);
        let mut receiver = Receiver::new(offer);
        receiver.accept(&mut first, 65_536).await;
        receiver.receive(&mut first, 300_000).await;
        receiver.ack(&mut first, FileAckStatus::OK).await;
        let mut next = Receiver::new(expect_offer(&mut second).await);
        next.accept(&mut second, 65_536).await;
        next.receive(&mut second, 300_000).await;
        assert!(receiver.verified() && next.verified());
        next.ack(&mut second, FileAckStatus::OK).await;

        let (mut late, _) = connect(fleet.drivers[1].addr(), &serial("CTRL-0003")).await;
        let mut third = Receiver::new(expect_offer(&mut late).await);
        third.accept(&mut late, 65_536).await;
        third.receive(&mut late, 300_000).await;
        assert!(third.verified());
        third.ack(&mut late, FileAckStatus::OK).await;
        eventually("all three done", WAIT, || async { operator.count(&id, "done") == 3 }).await;
    });
}

/// Receives for `span`, acknowledging every half window: the chunk bytes
/// that came.
async fn receive_for(mut device: Connection, mut receiver: Receiver, span: Duration) -> u64 {
    let start = receiver.offset;
    let deadline = tokio::time::Instant::now() + span;
    loop {
        if receiver.offset - receiver.acked >= u64::from(receiver.window / 2) && receiver.offset < receiver.offer.size {
            receiver.ack(&mut device, FileAckStatus::OK).await;
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return receiver.offset - start;
        }
        match device.recv_timeout(left).await {
            Ok(ServerFrame::FileChunk(chunk)) => receiver.take(&chunk.data),
            Ok(ServerFrame::Ack(_) | ServerFrame::Pong(_)) => {}
            Ok(other) => panic!("expected FILE_CHUNK, got {other:?}"),
            Err(_) => return receiver.offset - start,
        }
    }
}

/// A rollout's `--max-bytes-per-s` holds for a driver's transfers of it
/// together. The bound is an upper one (a slow machine only receives
/// less): the limit over the time measured, plus the bucket (a tenth of a
/// second) and one chunk the last token may let go. The control, the same
/// two devices of a rollout without the limit, receives more than four
/// times that bound in the same time (loopback moves megabytes a second
/// even in a debug build).
#[test]
fn a_rollouts_limit_holds_for_a_drivers_transfers_together_and_without_it_they_go_faster() {
    const LIMIT: u64 = 100_000;
    const SPAN: Duration = Duration::from_secs(2);
    let rollouts = Rollouts::start(1);
    let sha = rollouts.add("fw.bin", &content(8_000_000));
    runtime().block_on(async {
        for limited in [true, false] {
            let names = if limited {
                ["FILE-SLOW-1", "FILE-SLOW-2"]
            } else {
                ["FILE-FAST-1", "FILE-FAST-2"]
            };
            let limit = LIMIT.to_string();
            let extra: &[&str] = if limited { &["--max-bytes-per-s", &limit] } else { &[] };
            let id = rollouts.rollout(&sha, &names.join(","), extra);
            let started = std::time::Instant::now();
            let mut tasks = Vec::new();
            for name in names {
                let (mut device, _) = connect(rollouts.fleet.addr(), &serial(name)).await;
                let mut receiver = Receiver::new(expect_offer(&mut device).await);
                receiver.accept(&mut device, 256 * 1024).await;
                tasks.push(tokio::spawn(receive_for(device, receiver, SPAN)));
            }
            let mut received = 0;
            for task in tasks {
                received += task.await.unwrap();
            }
            let elapsed = started.elapsed().as_secs_f64();
            let chunk = cwp::DEFAULT_MAX_PAYLOAD as u64 - cwp::TAG_LEN as u64;
            let bound = (LIMIT as f64 * elapsed) as u64 + LIMIT / 10 + chunk;
            if limited {
                assert!(received > 0, "the limited transfers go on");
                assert!(
                    received <= bound,
                    "{received} bytes in {elapsed:.2} s: more than {bound}"
                );
            } else {
                assert!(
                    received > 4 * bound,
                    "without the limit: {received} bytes in {elapsed:.2} s"
                );
            }
            rollouts.control("cancel", &id);
        }
    });
}

/// One thread of a process, from `/proc/PID/task/TID/stat`.
#[derive(Debug)]
struct ThreadStat {
    name: String,
    nice: i64,
    /// User and system time, clock ticks.
    cpu_ticks: u64,
}

fn threads_of(pid: u32) -> Vec<ThreadStat> {
    let mut threads = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let Ok(stat) = std::fs::read_to_string(task.unwrap().path().join("stat")) else {
            continue;
        };
        // `TID (NAME) STATE PPID ...`: the fields after the name, from
        // the third (state): utime is the 14th, stime the 15th, nice the 19th.
        let (head, rest) = stat.rsplit_once(')').unwrap();
        let name = head.split_once('(').unwrap().1.to_owned();
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |n: usize| fields[n - 3];
        threads.push(ThreadStat {
            name,
            nice: field(19).parse().unwrap(),
            cpu_ticks: field(14).parse::<u64>().unwrap() + field(15).parse::<u64>().unwrap(),
        });
    }
    threads
}

/// CPU ticks of a process's threads named `name`, and their nice values.
fn cpu_of(threads: &[ThreadStat], name: &str) -> (u64, Vec<i64>) {
    let named = threads.iter().filter(|thread| thread.name == name);
    (
        named.clone().map(|thread| thread.cpu_ticks).sum(),
        named.map(|thread| thread.nice).collect(),
    )
}

/// README "Rollouts": a session sending a file runs on the driver's
/// transfers' thread, at `DRIVER_TRANSFER_NICE` (19 by default), so that
/// sealing chunks waits for the event path's threads, which stay at the
/// process's own priority; once its transfer is done it goes back to the
/// sessions' runtime (`drover_driver_file_transfers` counts the sessions
/// there). The control: at `DRIVER_TRANSFER_NICE=0` the thread is an
/// equal of the others.
#[test]
fn a_transfer_is_sealed_on_the_transfers_thread_at_its_nice_value() {
    let mut rollouts = Rollouts::start(1);
    let size = 40_000_000;
    let sha = rollouts.add("fw.bin", &content(size));
    let pid = rollouts.fleet.drivers[0].process().pid();
    let before = threads_of(pid);
    let (_, nice) = cpu_of(&before, "transfers");
    assert_eq!(nice, [19], "one transfers' thread, at nice 19");
    let (_, workers_nice) = cpu_of(&before, "tokio-rt-worker");
    assert!(
        !workers_nice.is_empty() && workers_nice.iter().all(|&nice| nice == 0),
        "the sessions' runtime stays at nice 0: {workers_nice:?}"
    );
    runtime().block_on(async {
        let (mut device, _) = connect(rollouts.fleet.addr(), &serial("FILE-NICE")).await;
        let id = rollouts.rollout(&sha, "FILE-NICE", &[]);
        let mut receiver = Receiver::started(&mut device, 4 << 20, 1 << 20).await;
        let transfers = || {
            rollouts.fleet.drivers[0]
                .metric("drover_driver_file_transfers")
                .unwrap()
        };
        assert_eq!(transfers(), 1.0, "the session is on the transfers' thread");
        receiver.receive(&mut device, size as u64).await;
        assert!(receiver.verified());
        receiver.ack(&mut device, FileAckStatus::OK).await;
        eventually("the rollout records the target done", WAIT, || async {
            rollouts.count(&id, "done") == 1
        })
        .await;
        // The session went back to the sessions' runtime: its events are
        // acknowledged there as before.
        device.send(&event(1)).await.unwrap();
        match device.recv_timeout(WAIT).await.unwrap() {
            ServerFrame::Ack(ack) => assert_eq!(ack.event_id, 1),
            other => panic!("expected ACK, got {other:?}"),
        }
        eventually("the session leaves the transfers' thread", WAIT, || async {
            transfers() == 0.0
        })
        .await;
    });
    let after = threads_of(pid);
    let transfers = cpu_of(&after, "transfers").0 - cpu_of(&before, "transfers").0;
    let workers = cpu_of(&after, "tokio-rt-worker").0 - cpu_of(&before, "tokio-rt-worker").0;
    assert!(
        transfers > workers,
        "40 MB sealed and sent on the transfers' thread ({transfers} ticks), not on the sessions' runtime ({workers} ticks)"
    );

    let mut equal = Rollouts::start_with(1, &[("DRIVER_TRANSFER_NICE", "0")]);
    let pid = equal.fleet.drivers[0].process().pid();
    assert_eq!(cpu_of(&threads_of(pid), "transfers").1, [0]);
}
