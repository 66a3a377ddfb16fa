//! CWP/1 §3 Uploads end to end, against real processes: bytes on the wire
//! in, files under `UPLOAD_DIR` and records in `cwp:uploads` out.
//! Reported durable offsets are checked against what the disk holds: every
//! `UPLOAD_STATUS` of the 4,000-block upload and of the full disk, the
//! offsets uploads resume at, and every completed file.

#![allow(clippy::unwrap_used)]

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use controller_sim::client::Connection;
use controller_sim::device::{Behaviour, Control, Device, Endpoint, Stats, UploadJob};
use cwp::{
    Block, ByeReason, DeviceBye, DeviceFrame, ErrorCode, ErrorFrame, FrameType, Ping, Serial, ServerFrame, Str8,
    UploadBegin, UploadDone, UploadEnd, UploadId, UploadOutcome,
};
use drover_testkit::device::{connect, device_key, serial};
use drover_testkit::fleet::{TestFleet, runtime};
use drover_testkit::haproxy_fleet::{env, fleet_spec};
use drover_testkit::local::{FleetSpec, LocalFleet};
use drover_testkit::wait::{eventually, throughout};

const WAIT: Duration = Duration::from_secs(20);
/// Firmware's block: a `BLOCK` frame of exactly 1 KiB.
const BLOCK: usize = 1004;
/// The driver's default `UPLOAD_BUFFER_BYTES`: one write + fdatasync each.
const BUFFER: u64 = 256 * 1024;
/// Bytes in flight beyond the last `UPLOAD_STATUS` (the spec promises one
/// per MiB at least).
const WINDOW: u64 = 1024 * 1024 + 64 * 1024;

/// An upload as a device holds it.
struct Upload {
    id: UploadId,
    content: Bytes,
    sha256: [u8; 32],
}

impl Upload {
    fn new(id: u8, size: usize) -> Self {
        let job = UploadJob::new(UploadJob::content(size, u64::from(id)), BLOCK, "test");
        Self {
            id: UploadId([id; 16]),
            content: job.content,
            sha256: job.sha256,
        }
    }

    fn size(&self) -> u64 {
        self.content.len() as u64
    }

    fn begin(&self, total_size: u64) -> DeviceFrame {
        DeviceFrame::UploadBegin(UploadBegin {
            upload_id: self.id,
            total_size,
            name: Str8::new("sensor-log.bin").unwrap(),
        })
    }

    fn block(&self, offset: u64) -> DeviceFrame {
        let start = offset as usize;
        let end = (start + BLOCK).min(self.content.len());
        DeviceFrame::Block(Block {
            data: self.content.slice(start..end),
        })
    }

    fn end(&self, total_size: u64, sha256: [u8; 32]) -> DeviceFrame {
        DeviceFrame::UploadEnd(UploadEnd {
            upload_id: self.id,
            total_size,
            sha256,
        })
    }

    fn partial_dir(&self, upload_dir: &Path, serial: &Serial) -> PathBuf {
        upload_dir
            .join("partial")
            .join(format!("s-{serial}"))
            .join(self.id.to_string())
    }

    fn completed_path(&self, upload_dir: &Path, serial: &Serial) -> PathBuf {
        upload_dir
            .join("completed")
            .join(format!("s-{serial}"))
            .join(self.id.to_string())
    }
}

/// The next frame that is not a `PONG`.
async fn next_frame(c: &mut Connection) -> ServerFrame {
    loop {
        match c.recv_timeout(WAIT).await.unwrap() {
            ServerFrame::Pong(_) => {}
            frame => return frame,
        }
    }
}

async fn expect_status(c: &mut Connection, upload: &Upload) -> u64 {
    match next_frame(c).await {
        ServerFrame::UploadStatus(status) => {
            assert_eq!(status.upload_id, upload.id);
            status.durable_offset
        }
        other => panic!("expected UPLOAD_STATUS, got {other:?}"),
    }
}

async fn expect_error(c: &mut Connection) -> ErrorFrame {
    match next_frame(c).await {
        ServerFrame::Error(error) => error,
        other => panic!("expected ERROR, got {other:?}"),
    }
}

async fn expect_done(c: &mut Connection) -> UploadDone {
    match next_frame(c).await {
        ServerFrame::UploadDone(done) => done,
        other => panic!("expected UPLOAD_DONE, got {other:?}"),
    }
}

/// The session is alive and has nothing else queued: a `PING` is answered
/// by the next frame.
async fn expect_alive(c: &mut Connection) {
    c.send(&DeviceFrame::Ping(Ping { token: 77 })).await.unwrap();
    match c.recv_timeout(WAIT).await.unwrap() {
        ServerFrame::Pong(pong) => assert_eq!(pong.token, 77),
        other => panic!("expected PONG, got {other:?}"),
    }
}

/// Begins `upload`, of which nothing is stored yet: it starts at 0.
async fn begin_new(c: &mut Connection, upload: &Upload) {
    c.send(&upload.begin(upload.size())).await.unwrap();
    assert_eq!(expect_status(c, upload).await, 0);
}

/// Sends all of `upload`, of which nothing is stored yet, window by
/// window, and ends it: every byte durable, then `UPLOAD_DONE OK`.
async fn upload_whole(c: &mut Connection, upload: &Upload) {
    begin_new(c, upload).await;
    let mut durable = 0;
    send_range(c, upload, 0, upload.size(), &mut durable).await;
    c.send(&upload.end(upload.size(), upload.sha256)).await.unwrap();
    assert_eq!(expect_status(c, upload).await, upload.size());
    assert_eq!(expect_done(c).await.status, UploadOutcome::OK);
}

/// Sends the upload's bytes `from..to` in `BLOCK`s, never more than
/// [`WINDOW`] beyond the last durable offset in flight; returns every
/// `durable_offset` reported meanwhile (checked to increase). `durable`
/// is the offset known when it starts and the last one reported after.
async fn send_range(c: &mut Connection, upload: &Upload, from: u64, to: u64, durable: &mut u64) -> Vec<u64> {
    send_range_checking(c, upload, from, to, durable, None).await
}

/// [`send_range`], and at every `UPLOAD_STATUS`, `data` (the partial
/// upload's data file) is read back: it holds the upload's bytes up to the
/// reported offset, so nothing was reported durable that is not on disk.
async fn send_range_checked_on_disk(
    c: &mut Connection,
    upload: &Upload,
    from: u64,
    to: u64,
    durable: &mut u64,
    data: &Path,
) -> Vec<u64> {
    send_range_checking(c, upload, from, to, durable, Some(data)).await
}

async fn send_range_checking(
    c: &mut Connection,
    upload: &Upload,
    from: u64,
    to: u64,
    durable: &mut u64,
    data: Option<&Path>,
) -> Vec<u64> {
    let mut reported = Vec::new();
    let mut next = from;
    while next < to {
        let mut frames = Vec::new();
        while next < to && next < *durable + WINDOW && frames.len() < 64 {
            frames.push(upload.block(next));
            next = (next + BLOCK as u64).min(to);
        }
        c.send_all(&frames).await.unwrap();
        while next >= *durable + WINDOW {
            let offset = expect_status(c, upload).await;
            assert!(
                offset > *durable && offset <= next,
                "{offset} after {durable}, {next} sent"
            );
            if let Some(data) = data {
                let on_disk = std::fs::read(data).unwrap();
                let reported_end = usize::try_from(offset).unwrap();
                assert!(
                    on_disk.len() >= reported_end && on_disk[..reported_end] == upload.content[..reported_end],
                    "{offset} reported durable with {} bytes on disk",
                    on_disk.len()
                );
            }
            *durable = offset;
            reported.push(offset);
        }
    }
    reported
}

/// Every field of every `cwp:uploads` entry.
async fn upload_records(fleet_redis: &mut redis::aio::MultiplexedConnection) -> Vec<Vec<(String, String)>> {
    let page: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg("cwp:uploads")
        .arg("-")
        .arg("+")
        .query_async(fleet_redis)
        .await
        .unwrap();
    page.ids
        .iter()
        .map(|entry| {
            let mut fields: Vec<(String, String)> = entry
                .map
                .keys()
                .map(|key| (key.clone(), entry.get::<String>(key).unwrap()))
                .collect();
            fields.sort();
            fields
        })
        .collect()
}

fn field<'a>(record: &'a [(String, String)], name: &str) -> &'a str {
    &record.iter().find(|(key, _)| key == name).unwrap().1
}

fn sha256_hex_of_file(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap();
    hex::encode(UploadJob::new(bytes.into(), BLOCK, "").sha256)
}

/// A fleet whose drivers store uploads in a directory of the test's.
fn fleet_with_uploads(drivers: usize, upload_dir: &Path, extra_env: &[(&str, &str)]) -> TestFleet {
    let upload_dir = upload_dir.to_str().unwrap();
    let mut env = vec![("UPLOAD_DIR", upload_dir)];
    env.extend_from_slice(extra_env);
    TestFleet::start(drivers, &env)
}

#[test]
fn four_thousand_blocks_arrive_durably_and_match_their_digest_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = fleet_with_uploads(1, dir.path(), &[]);
    let device = serial("CTRL-0042");
    let upload = Upload::new(1, 4000 * BLOCK);
    runtime().block_on(async {
        let (mut c, _) = connect(fleet.addr(), &device).await;
        c.send(&upload.begin(upload.size())).await.unwrap();
        assert_eq!(expect_status(&mut c, &upload).await, 0, "a new upload starts at 0");

        let mut durable = 0;
        let data = upload.partial_dir(dir.path(), &device).join("data");
        let mut reported = send_range_checked_on_disk(&mut c, &upload, 0, upload.size(), &mut durable, &data).await;
        c.send(&upload.end(upload.size(), upload.sha256)).await.unwrap();
        let done = loop {
            match next_frame(&mut c).await {
                ServerFrame::UploadStatus(status) => reported.push(status.durable_offset),
                ServerFrame::UploadDone(done) => break done,
                other => panic!("expected UPLOAD_STATUS or UPLOAD_DONE, got {other:?}"),
            }
        };
        assert_eq!(done.status, UploadOutcome::OK);
        assert_eq!(done.size, upload.size());
        // One UPLOAD_STATUS per full buffer (one write + fdatasync each),
        // then the rest at UPLOAD_END.
        let full_buffers: Vec<u64> = (1..=upload.size() / BUFFER).map(|n| n * BUFFER).collect();
        assert_eq!(reported[..reported.len() - 1], full_buffers[..]);
        assert_eq!(reported.last(), Some(&upload.size()));

        let path = upload.completed_path(dir.path(), &device);
        assert_eq!(std::fs::read(&path).unwrap(), upload.content.to_vec());
        assert_eq!(sha256_hex_of_file(&path), hex::encode(upload.sha256));
        assert!(
            !upload.partial_dir(dir.path(), &device).exists(),
            "nothing is left in partial/"
        );

        let records = upload_records(&mut fleet.redis().await).await;
        assert_eq!(records.len(), 1);
        let record = &records[0];
        assert_eq!(field(record, "type"), "upload_completed");
        assert_eq!(field(record, "serial"), "CTRL-0042");
        assert_eq!(field(record, "upload_id"), upload.id.to_string());
        assert_eq!(field(record, "name"), "sensor-log.bin");
        assert_eq!(field(record, "size"), upload.size().to_string());
        assert_eq!(field(record, "sha256"), hex::encode(upload.sha256));
        assert_eq!(Path::new(field(record, "path")), path.strip_prefix(dir.path()).unwrap());
        assert_eq!(field(record, "driver"), fleet.drivers[0].driver_id());

        let metrics = &fleet.drivers[0];
        assert_eq!(
            metrics.metric("drover_driver_upload_bytes_total").unwrap(),
            upload.size() as f64
        );
        assert!(
            metrics
                .metrics()
                .unwrap()
                .contains("drover_driver_uploads_total{result=\"ok\"} 1")
        );

        // The answer was lost: the device asks again, on a new connection.
        drop(c);
        let (mut c, _) = connect(fleet.addr(), &device).await;
        c.send(&upload.begin(upload.size())).await.unwrap();
        assert_eq!(
            expect_status(&mut c, &upload).await,
            upload.size(),
            "a completed upload is whole"
        );
        c.send(&upload.end(upload.size(), upload.sha256)).await.unwrap();
        let again = expect_done(&mut c).await;
        assert_eq!((again.status, again.size), (UploadOutcome::OK, upload.size()));
        assert_eq!(upload_records(&mut fleet.redis().await).await.len(), 1, "recorded once");
    });
}

#[test]
fn a_digest_or_size_mismatch_discards_the_upload_and_it_starts_again_at_zero() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = fleet_with_uploads(1, dir.path(), &[]);
    let device = serial("CTRL-0042");
    // More than one buffer: part of it is durable when the mismatch comes.
    let upload = Upload::new(2, 300 * BLOCK);
    runtime().block_on(async {
        let (mut c, _) = connect(fleet.addr(), &device).await;
        let mut wrong_digest = upload.sha256;
        wrong_digest[0] ^= 1;
        let wrong_size = upload.size() + 1;
        for (total_size, sha256, status) in [
            (upload.size(), wrong_digest, UploadOutcome::DIGEST_MISMATCH),
            (wrong_size, upload.sha256, UploadOutcome::SIZE_MISMATCH),
        ] {
            c.send(&upload.begin(0)).await.unwrap();
            assert_eq!(
                expect_status(&mut c, &upload).await,
                0,
                "after a mismatch the upload starts again at 0"
            );
            let mut durable = 0;
            send_range(&mut c, &upload, 0, upload.size(), &mut durable).await;
            c.send(&upload.end(total_size, sha256)).await.unwrap();
            let done = loop {
                match next_frame(&mut c).await {
                    ServerFrame::UploadStatus(status) => assert_eq!(status.durable_offset, BUFFER),
                    ServerFrame::UploadDone(done) => break done,
                    other => panic!("expected UPLOAD_DONE, got {other:?}"),
                }
            };
            assert_eq!((done.status, done.size), (status, upload.size()));
            assert!(
                !upload.partial_dir(dir.path(), &device).exists(),
                "{status}: the stored part is discarded"
            );
            assert!(!upload.completed_path(dir.path(), &device).exists());
        }
        assert!(upload_records(&mut fleet.redis().await).await.is_empty());
        let metrics = fleet.drivers[0].metrics().unwrap();
        assert!(metrics.contains("drover_driver_uploads_total{result=\"digest_mismatch\"} 1"));
        assert!(metrics.contains("drover_driver_uploads_total{result=\"size_mismatch\"} 1"));

        // The right size and digest complete it.
        c.send(&upload.begin(0)).await.unwrap();
        assert_eq!(expect_status(&mut c, &upload).await, 0);
        let mut durable = 0;
        send_range(&mut c, &upload, 0, upload.size(), &mut durable).await;
        c.send(&upload.end(upload.size(), upload.sha256)).await.unwrap();
        assert_eq!(expect_status(&mut c, &upload).await, BUFFER);
        assert_eq!(expect_status(&mut c, &upload).await, upload.size());
        assert_eq!(expect_done(&mut c).await.status, UploadOutcome::OK);
    });
}

#[test]
fn an_upload_split_over_three_connections_resumes_at_each_durable_offset() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = fleet_with_uploads(1, dir.path(), &[]);
    let device = serial("CTRL-0042");
    let upload = Upload::new(3, 800 * BLOCK);
    let rt = runtime();

    // 1: 300 blocks, one buffer durable; then the connection is cut. The
    // bytes beyond the buffer were never reported, and are lost.
    rt.block_on(async {
        let (mut c, _) = connect(fleet.addr(), &device).await;
        begin_new(&mut c, &upload).await;
        let mut durable = 0;
        send_range(&mut c, &upload, 0, 300 * BLOCK as u64, &mut durable).await;
        assert_eq!(expect_status(&mut c, &upload).await, BUFFER);
    });
    rt.block_on(eventually("the cut session to end", WAIT, || async {
        fleet.drivers[0].metric("drover_driver_sessions").unwrap() == 0.0
    }));
    let on_disk = std::fs::metadata(upload.partial_dir(dir.path(), &device).join("data")).unwrap();
    assert_eq!(on_disk.size(), BUFFER, "only reported bytes are on disk");

    // 2: resumes exactly there, sends on to 600 blocks, leaves with BYE:
    // a graceful goodbye makes the buffered bytes durable first.
    let sent = rt.block_on(async {
        let (mut c, _) = connect(fleet.addr(), &device).await;
        c.send(&upload.begin(upload.size())).await.unwrap();
        let mut durable = expect_status(&mut c, &upload).await;
        assert_eq!(durable, BUFFER);
        send_range(&mut c, &upload, durable, 600 * BLOCK as u64, &mut durable).await;
        assert_eq!(expect_status(&mut c, &upload).await, 2 * BUFFER);
        c.send(&DeviceFrame::Bye(DeviceBye {
            reason: ByeReason::NORMAL,
        }))
        .await
        .unwrap();
        // Blocks continue from the resume offset, so the last one ends
        // just past 600 x 1,004 bytes: everything sent is now durable.
        let flushed = expect_status(&mut c, &upload).await;
        assert!((600 * BLOCK as u64..601 * BLOCK as u64).contains(&flushed), "{flushed}");
        assert!(matches!(next_frame(&mut c).await, ServerFrame::Bye(_)));
        assert!(c.closed_within(WAIT).await);
        flushed
    });

    // 3: resumes there (mid-buffer: the next write fills up to the next
    // 256 KiB boundary, then writes whole buffers again) and finishes.
    rt.block_on(async {
        let (mut c, _) = connect(fleet.addr(), &device).await;
        c.send(&upload.begin(upload.size())).await.unwrap();
        let mut durable = expect_status(&mut c, &upload).await;
        assert_eq!(durable, sent);
        let reported = send_range(&mut c, &upload, durable, upload.size(), &mut durable).await;
        assert!(reported.iter().all(|offset| offset % BUFFER == 0), "{reported:?}");
        c.send(&upload.end(upload.size(), upload.sha256)).await.unwrap();
        loop {
            match next_frame(&mut c).await {
                ServerFrame::UploadStatus(_) => {}
                ServerFrame::UploadDone(done) => {
                    assert_eq!(done.status, UploadOutcome::OK);
                    break;
                }
                other => panic!("expected UPLOAD_DONE, got {other:?}"),
            }
        }
        let path = upload.completed_path(dir.path(), &device);
        assert_eq!(std::fs::read(path).unwrap(), upload.content.to_vec());
        assert_eq!(upload_records(&mut fleet.redis().await).await.len(), 1);
    });
}

#[test]
fn a_driver_killed_mid_upload_loses_nothing_reported_and_the_device_finishes_on_another() {
    let state = tempfile::tempdir().unwrap();
    // Small buffers: one fdatasync per 4 KiB makes the upload last long
    // enough to be killed in the middle.
    let mut fleet = LocalFleet::start(FleetSpec {
        driver_env: env(&[("UPLOAD_BUFFER_BYTES", "4096")]),
        haproxy_open_files: 1000,
        ..fleet_spec(2, state.path())
    })
    .unwrap();
    let upload_dir = state.path().join("uploads");
    let job = UploadJob::new(UploadJob::content(4000 * BLOCK, 4), BLOCK, "flight-recorder.bin");
    let stats = Arc::new(Stats::new());
    let control = Arc::new(Control::new());
    let rt = runtime();
    let device_serial = serial("CTRL-0042");
    let task = {
        let (stats, control) = (Arc::clone(&stats), Arc::clone(&control));
        let behaviour = Behaviour {
            upload: Some(job.clone()),
            ..Behaviour::default()
        };
        let endpoint = Endpoint {
            target: fleet.haproxy.addr(),
            source: None,
        };
        let mut device = Device::new(device_serial, device_key(&device_serial)).with_upload_id(UploadId([4; 16]));
        rt.spawn(async move {
            device.run(endpoint, Duration::ZERO, &behaviour, &stats, &control).await;
            device
        })
    };

    // A quarter of it is durable: kill -9 the driver the device is on.
    rt.block_on(eventually("a quarter of the upload to be durable", WAIT, || async {
        stats.upload_bytes_durable() >= job.size() / 4
    }));
    let serving = (0..2)
        .find(|&i| fleet.drivers[i].metric("drover_driver_sessions").unwrap() == 1.0)
        .expect("one driver serves the device");
    fleet.drivers[serving].process().kill();
    let reported_before_kill = stats.upload_bytes_durable();
    assert!(reported_before_kill < job.size(), "killed in the middle");

    // The device reconnects through HAProxy, lands on the other driver,
    // resumes at the durable offset and completes.
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(60), stats.uploads_completed_at_least(1))
            .await
            .expect("the upload completes on the surviving driver");
    });
    control.finish();
    let device = rt.block_on(task).unwrap();
    assert!(device.upload_done());

    let upload = stats.snapshot().upload;
    assert_eq!(upload.offset_regressions, 0, "no reported byte was lost");
    assert!(upload.resumes >= 1, "the second driver resumed it: {upload:?}");
    // Resumed, not started again: only what was in flight (unreported)
    // went twice: at most the window, whose last block may start just
    // below its end.
    assert!(upload.bytes_resent < job.window + BLOCK as u64, "{upload:?}");
    assert_eq!(upload.bytes_durable, job.size(), "durable offsets only ever advanced");
    let path = upload_dir
        .join("completed/s-CTRL-0042")
        .join(UploadId([4; 16]).to_string());
    assert_eq!(sha256_hex_of_file(&path), hex::encode(job.sha256));
    assert_eq!(std::fs::read(&path).unwrap(), job.content.to_vec());

    let survivor = fleet.drivers[1 - serving].driver_id().to_owned();
    let records = rt.block_on(async {
        let mut redis = redis::Client::open(fleet.redis_url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        upload_records(&mut redis).await
    });
    assert_eq!(records.len(), 1);
    assert_eq!(field(&records[0], "driver"), survivor);
    assert_eq!(field(&records[0], "sha256"), hex::encode(job.sha256));
}

/// An exclusive `flock` on a partial upload's data file, as a live session
/// on another driver sharing `UPLOAD_DIR` holds it.
fn hold_upload_lock(upload_dir: &Path, serial: &Serial, upload: &Upload) -> nix::fcntl::Flock<std::fs::File> {
    let dir = upload.partial_dir(upload_dir, serial);
    std::fs::create_dir_all(&dir).unwrap();
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("data"))
        .unwrap();
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map_err(|(_, errno)| errno)
        .unwrap()
}

#[test]
fn an_upload_open_on_another_session_is_a_conflict_that_does_not_end_the_session() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = fleet_with_uploads(1, dir.path(), &[]);
    let device = serial("CTRL-0042");
    let upload = Upload::new(5, 10 * BLOCK);
    let lock = hold_upload_lock(dir.path(), &device, &upload);
    let rt = runtime();
    let mut c = rt.block_on(async {
        let (mut c, _) = connect(fleet.addr(), &device).await;
        // BEGIN and the first blocks, pipelined as firmware does.
        c.send_all(&[upload.begin(upload.size()), upload.block(0), upload.block(BLOCK as u64)])
            .await
            .unwrap();
        let error = expect_error(&mut c).await;
        assert_eq!(error.code, ErrorCode::UPLOAD_CONFLICT);
        assert!(!error.fatal);
        assert_eq!(error.ref_type, FrameType::UPLOAD_BEGIN);
        // The blocks in flight are ignored, not UNEXPECTED.
        expect_alive(&mut c).await;
        c
    });
    drop(lock);
    rt.block_on(async {
        upload_whole(&mut c, &upload).await;
    });
}

#[test]
fn uploads_beyond_the_limit_are_refused_with_busy_and_the_session_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = fleet_with_uploads(1, dir.path(), &[("UPLOAD_MAX_BYTES", "100000")]);
    let device = serial("CTRL-0042");
    runtime().block_on(async {
        let (mut c, _) = connect(fleet.addr(), &device).await;

        // Announced too large: refused at once, its blocks ignored.
        let big = Upload::new(6, 200 * BLOCK);
        c.send_all(&[big.begin(big.size()), big.block(0)]).await.unwrap();
        let error = expect_error(&mut c).await;
        assert_eq!(
            (error.code, error.fatal, error.ref_type),
            (ErrorCode::BUSY, false, FrameType::UPLOAD_BEGIN)
        );
        assert!(error.message.contains("UPLOAD_MAX_BYTES = 100000"), "{}", error.message);
        expect_alive(&mut c).await;

        // Size unknown: refused at the block that crosses the limit.
        c.send(&big.begin(0)).await.unwrap();
        assert_eq!(expect_status(&mut c, &big).await, 0);
        let frames: Vec<DeviceFrame> = (0..120).map(|i| big.block(i * BLOCK as u64)).collect();
        c.send_all(&frames).await.unwrap();
        let error = expect_error(&mut c).await;
        assert_eq!(
            (error.code, error.fatal, error.ref_type),
            (ErrorCode::BUSY, false, FrameType::BLOCK)
        );
        assert!(error.message.contains("UPLOAD_MAX_BYTES = 100000"), "{}", error.message);
        expect_alive(&mut c).await;

        // Past its own announced size.
        let small = Upload::new(7, 6 * BLOCK);
        c.send(&small.begin(5 * BLOCK as u64)).await.unwrap();
        assert_eq!(expect_status(&mut c, &small).await, 0);
        let frames: Vec<DeviceFrame> = (0..6).map(|i| small.block(i * BLOCK as u64)).collect();
        c.send_all(&frames).await.unwrap();
        let error = expect_error(&mut c).await;
        assert_eq!((error.code, error.ref_type), (ErrorCode::BUSY, FrameType::BLOCK));
        assert!(error.message.contains("total_size 5020"), "{}", error.message);
        expect_alive(&mut c).await;

        // Within the limit all is well.
        let fits = Upload::new(8, 99 * BLOCK);
        upload_whole(&mut c, &fits).await;
    });
}

#[test]
fn upload_frames_out_of_place_are_unexpected_and_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = fleet_with_uploads(1, dir.path(), &[]);
    let upload = Upload::new(9, 10 * BLOCK);
    runtime().block_on(async {
        // BLOCK with no upload open.
        let (mut c, _) = connect(fleet.addr(), &serial("CTRL-0001")).await;
        c.send(&upload.block(0)).await.unwrap();
        let error = expect_error(&mut c).await;
        assert_eq!(
            (error.code, error.fatal, error.ref_type),
            (ErrorCode::UNEXPECTED, true, FrameType::BLOCK)
        );
        assert!(c.closed_within(WAIT).await);

        // UPLOAD_BEGIN while one is open.
        let (mut c, _) = connect(fleet.addr(), &serial("CTRL-0002")).await;
        begin_new(&mut c, &upload).await;
        c.send(&Upload::new(10, BLOCK).begin(0)).await.unwrap();
        let error = expect_error(&mut c).await;
        assert_eq!(
            (error.code, error.fatal, error.ref_type),
            (ErrorCode::UNEXPECTED, true, FrameType::UPLOAD_BEGIN)
        );
        assert!(c.closed_within(WAIT).await);

        // The first session's upload was released when it ended.
        let (mut c, _) = connect(fleet.addr(), &serial("CTRL-0002")).await;
        begin_new(&mut c, &upload).await;
    });
}

/// A tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(
            status.success(),
            "this test mounts a small tmpfs to fill the disk: it needs root (or CAP_SYS_ADMIN)"
        );
        Self { dir }
    }

    fn resize(&self, size: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(self.dir.path())
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

#[test]
fn a_full_disk_gives_busy_and_nothing_unwritten_is_ever_reported_durable() {
    let disk = Tmpfs::mount("2m");
    let upload_dir = disk.path().join("uploads");
    // No free-space floor: the point is the write that fails.
    let mut fleet = fleet_with_uploads(1, &upload_dir, &[("UPLOAD_MIN_FREE_BYTES", "0")]);
    let device = serial("CTRL-0042");
    let upload = Upload::new(11, 4000 * BLOCK);
    let data_file = upload.partial_dir(&upload_dir, &device).join("data");
    let rt = runtime();
    let (mut c, durable) = rt.block_on(async {
        let (mut c, _) = connect(fleet.addr(), &device).await;
        begin_new(&mut c, &upload).await;
        // Send everything, one window at a time, until the disk refuses.
        let mut durable = 0;
        let mut next = 0;
        let error = 'sending: loop {
            let frames: Vec<DeviceFrame> = (0..64)
                .map(|i| next + i * BLOCK as u64)
                .take_while(|&offset| offset < upload.size())
                .map(|offset| upload.block(offset))
                .collect();
            next += 64 * BLOCK as u64;
            c.send_all(&frames).await.unwrap();
            while next >= durable + WINDOW {
                match next_frame(&mut c).await {
                    ServerFrame::UploadStatus(status) => {
                        let on_disk = std::fs::metadata(&data_file).unwrap().size();
                        assert!(
                            status.durable_offset <= on_disk,
                            "reported {} with {on_disk} bytes on disk",
                            status.durable_offset
                        );
                        durable = status.durable_offset;
                    }
                    ServerFrame::Error(error) => break 'sending error,
                    other => panic!("expected UPLOAD_STATUS or ERROR, got {other:?}"),
                }
            }
        };
        assert_eq!(
            (error.code, error.fatal, error.ref_type),
            (ErrorCode::BUSY, false, FrameType::BLOCK)
        );
        // The blocks still in flight are ignored; the session goes on.
        expect_alive(&mut c).await;
        (c, durable)
    });
    assert!(durable > 0 && durable < 2 * 1024 * 1024, "{durable}");
    let on_disk = std::fs::read(&data_file).unwrap();
    assert_eq!(on_disk.len() as u64, durable, "cut back to the last reported offset");
    assert_eq!(on_disk[..], upload.content[..on_disk.len()]);
    drop(on_disk);

    // Space again: the device begins again and resumes where it was.
    disk.resize("16m");
    rt.block_on(async {
        c.send(&upload.begin(upload.size())).await.unwrap();
        let mut resumed = expect_status(&mut c, &upload).await;
        assert_eq!(resumed, durable);
        send_range_checked_on_disk(&mut c, &upload, resumed, upload.size(), &mut resumed, &data_file).await;
        c.send(&upload.end(upload.size(), upload.sha256)).await.unwrap();
        loop {
            match next_frame(&mut c).await {
                ServerFrame::UploadStatus(_) => {}
                ServerFrame::UploadDone(done) => {
                    assert_eq!(done.status, UploadOutcome::OK);
                    break;
                }
                other => panic!("expected UPLOAD_DONE, got {other:?}"),
            }
        }
    });
    let path = upload.completed_path(&upload_dir, &device);
    assert_eq!(sha256_hex_of_file(&path), hex::encode(upload.sha256));
    // Stop the driver before the tmpfs goes.
    fleet.drivers[0].process().kill();
}

#[test]
fn abandoned_partial_uploads_expire_and_open_ones_stay() {
    /// `UPLOAD_EXPIRE_AFTER`.
    const EXPIRE_AFTER: Duration = Duration::from_secs(2);
    /// How often the driver looks for uploads that old: a quarter of it,
    /// but at least every second (driver/src/upload/mod.rs
    /// `expiry_interval`).
    const EXPIRY_PASSES_EVERY: Duration = Duration::from_secs(1);
    let dir = tempfile::tempdir().unwrap();
    let fleet = fleet_with_uploads(1, dir.path(), &[("UPLOAD_EXPIRE_AFTER", "2s")]);
    let abandoned_device = serial("CTRL-0001");
    let open_device = serial("CTRL-0002");
    let upload = Upload::new(12, 300 * BLOCK);
    let rt = runtime();
    let mut open = rt.block_on(async {
        for device in [&abandoned_device, &open_device] {
            let (mut c, _) = connect(fleet.addr(), device).await;
            begin_new(&mut c, &upload).await;
            let mut durable = 0;
            send_range(&mut c, &upload, 0, 300 * BLOCK as u64, &mut durable).await;
            assert_eq!(expect_status(&mut c, &upload).await, BUFFER);
            if *device == open_device {
                return c;
            }
        }
        unreachable!("the open device's connection is returned")
    });
    let abandoned = upload.partial_dir(dir.path(), &abandoned_device);
    let kept = upload.partial_dir(dir.path(), &open_device);
    rt.block_on(eventually("the abandoned upload to expire", WAIT, || async {
        !abandoned.exists()
    }));
    // The open upload was last written a moment after the abandoned one, so
    // right now it may merely be too young to expire. It must stay until it
    // is older than UPLOAD_EXPIRE_AFTER by two expiry intervals: at least
    // one pass has then found it as old as the abandoned one was, and would
    // have removed it, were it not open.
    let last_write = std::fs::metadata(kept.join("data")).unwrap().modified().unwrap();
    let old_enough = last_write + EXPIRE_AFTER + 2 * EXPIRY_PASSES_EVERY;
    let until_old_enough = old_enough
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    rt.block_on(throughout(
        "an upload open on a live session is never expired",
        until_old_enough,
        || async { kept.join("data").exists() },
    ));
    assert!(
        last_write.elapsed().unwrap() > EXPIRE_AFTER + 2 * EXPIRY_PASSES_EVERY,
        "the open upload got old enough to expire"
    );
    rt.block_on(async {
        // Keep the session alive, then finish: the kept upload is intact.
        expect_alive(&mut open).await;
        let mut durable = BUFFER;
        send_range(&mut open, &upload, 300 * BLOCK as u64, upload.size(), &mut durable).await;
        open.send(&upload.end(upload.size(), upload.sha256)).await.unwrap();
        loop {
            match next_frame(&mut open).await {
                ServerFrame::UploadStatus(_) => {}
                ServerFrame::UploadDone(done) => {
                    assert_eq!(done.status, UploadOutcome::OK);
                    break;
                }
                other => panic!("expected UPLOAD_DONE, got {other:?}"),
            }
        }
    });
}

#[test]
fn a_completed_upload_the_bridge_did_not_record_is_busy_until_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let mut fleet = fleet_with_uploads(1, dir.path(), &[]);
    let device = serial("CTRL-0042");
    let upload = Upload::new(13, 10 * BLOCK);
    let rt = runtime();
    let mut c = rt.block_on(async {
        let (mut c, _) = connect(fleet.addr(), &device).await;
        begin_new(&mut c, &upload).await;
        let mut durable = 0;
        send_range(&mut c, &upload, 0, upload.size(), &mut durable).await;
        c
    });
    fleet.bridge.process().kill();
    rt.block_on(async {
        c.send(&upload.end(upload.size(), upload.sha256)).await.unwrap();
        assert_eq!(expect_status(&mut c, &upload).await, upload.size());
        let error = expect_error(&mut c).await;
        assert_eq!(
            (error.code, error.fatal, error.ref_type),
            (ErrorCode::BUSY, false, FrameType::UPLOAD_END)
        );
        // What it says is what works (below): the upload is closed, like
        // after any BUSY, and begun again it is found completed.
        assert!(
            error.message.contains("UPLOAD_BEGIN, then UPLOAD_END"),
            "{}",
            error.message
        );
        expect_alive(&mut c).await;
    });
    assert!(
        upload.completed_path(dir.path(), &device).exists(),
        "stored, not yet recorded"
    );
    fleet.restart_bridge();
    rt.block_on(async {
        c.send(&upload.begin(upload.size())).await.unwrap();
        assert_eq!(expect_status(&mut c, &upload).await, upload.size());
        c.send(&upload.end(upload.size(), upload.sha256)).await.unwrap();
        assert_eq!(expect_done(&mut c).await.status, UploadOutcome::OK);
        assert_eq!(upload_records(&mut fleet.redis().await).await.len(), 1);
    });
}

#[test]
fn a_device_over_its_quota_of_bytes_in_progress_gets_busy_and_other_devices_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let quota = 50 * BLOCK as u64;
    let fleet = fleet_with_uploads(1, dir.path(), &[("UPLOAD_MAX_BYTES_PER_SERIAL", &quota.to_string())]);
    let greedy = serial("CTRL-0001");
    let other = serial("CTRL-0002");
    runtime().block_on(async {
        let (mut c, _) = connect(fleet.addr(), &greedy).await;
        // 40 blocks of a first upload stay on disk, in progress.
        let first = Upload::new(21, 60 * BLOCK);
        c.send(&first.begin(0)).await.unwrap();
        assert_eq!(expect_status(&mut c, &first).await, 0);
        let mut durable = 0;
        send_range(&mut c, &first, 0, 40 * BLOCK as u64, &mut durable).await;
        c.send(&DeviceFrame::Bye(DeviceBye {
            reason: ByeReason::NORMAL,
        }))
        .await
        .unwrap();
        drop(c);
        let partial = first.partial_dir(dir.path(), &greedy).join("data");
        eventually("the first upload's blocks are on disk", WAIT, || async {
            std::fs::metadata(&partial).is_ok_and(|meta| meta.len() == 40 * BLOCK as u64)
        })
        .await;

        let (mut c, _) = connect(fleet.addr(), &greedy).await;
        // Announced beyond what the quota leaves: refused at once.
        let second = Upload::new(22, 20 * BLOCK);
        c.send(&second.begin(second.size())).await.unwrap();
        let error = expect_error(&mut c).await;
        assert_eq!(
            (error.code, error.fatal, error.ref_type),
            (ErrorCode::BUSY, false, FrameType::UPLOAD_BEGIN)
        );
        assert!(
            error.message.contains("UPLOAD_MAX_BYTES_PER_SERIAL"),
            "{}",
            error.message
        );
        expect_alive(&mut c).await;
        // Size unknown: accepted up to what the quota leaves, then BUSY.
        c.send(&second.begin(0)).await.unwrap();
        assert_eq!(expect_status(&mut c, &second).await, 0);
        let frames: Vec<DeviceFrame> = (0..20).map(|i| second.block(i * BLOCK as u64)).collect();
        c.send_all(&frames).await.unwrap();
        let error = expect_error(&mut c).await;
        assert_eq!((error.code, error.ref_type), (ErrorCode::BUSY, FrameType::BLOCK));
        assert!(
            error.message.contains("UPLOAD_MAX_BYTES_PER_SERIAL"),
            "{}",
            error.message
        );
        expect_alive(&mut c).await;

        // Another device's quota is its own.
        let (mut c, _) = connect(fleet.addr(), &other).await;
        let theirs = Upload::new(23, 45 * BLOCK);
        upload_whole(&mut c, &theirs).await;
    });
}

#[test]
fn below_the_free_space_floor_an_upload_gets_busy_at_begin_and_nothing_is_written() {
    let disk = Tmpfs::mount("2m");
    let upload_dir = disk.path().join("uploads");
    let fleet = fleet_with_uploads(1, &upload_dir, &[("UPLOAD_MIN_FREE_BYTES", "4194304")]);
    let device = serial("CTRL-0042");
    let upload = Upload::new(24, 10 * BLOCK);
    let rt = runtime();
    let mut c = rt.block_on(async {
        let (mut c, _) = connect(fleet.addr(), &device).await;
        c.send(&upload.begin(upload.size())).await.unwrap();
        let error = expect_error(&mut c).await;
        assert_eq!(
            (error.code, error.fatal, error.ref_type),
            (ErrorCode::BUSY, false, FrameType::UPLOAD_BEGIN)
        );
        expect_alive(&mut c).await;
        c
    });
    assert!(
        !upload.partial_dir(&upload_dir, &device).exists(),
        "nothing of a refused upload is written"
    );
    // The control: with room above the floor the same upload goes through.
    disk.resize("16m");
    rt.block_on(async {
        upload_whole(&mut c, &upload).await;
    });
}

#[test]
fn a_draining_driver_makes_buffered_upload_bytes_durable_before_its_bye() {
    let dir = tempfile::tempdir().unwrap();
    let mut fleet = fleet_with_uploads(1, dir.path(), &[("DRIVER_DRAIN_PERIOD", "1s")]);
    let device = serial("CTRL-0042");
    let upload = Upload::new(7, 100 * BLOCK);
    let rt = runtime();
    let mut c = rt.block_on(async {
        let (mut c, _) = connect(fleet.addr(), &device).await;
        begin_new(&mut c, &upload).await;
        // 60 blocks: less than one 256 KiB buffer, so nothing is durable yet.
        let frames: Vec<DeviceFrame> = (0..60).map(|i| upload.block(i * BLOCK as u64)).collect();
        c.send_all(&frames).await.unwrap();
        expect_alive(&mut c).await;
        c
    });
    fleet.drivers[0]
        .process()
        .signal(nix::sys::signal::Signal::SIGTERM)
        .unwrap();
    rt.block_on(async {
        // Everything the device sent is made durable and reported, then BYE.
        assert_eq!(expect_status(&mut c, &upload).await, 60 * BLOCK as u64);
        match next_frame(&mut c).await {
            ServerFrame::Bye(bye) => assert_eq!(bye.reason, ByeReason::DRAINING),
            other => panic!("expected BYE DRAINING, got {other:?}"),
        }
    });
    let data = upload.partial_dir(dir.path(), &device).join("data");
    assert_eq!(std::fs::read(data).unwrap(), &upload.content[..60 * BLOCK]);
}

#[test]
fn uploads_beyond_upload_max_open_are_busy() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = fleet_with_uploads(1, dir.path(), &[("UPLOAD_MAX_OPEN", "1")]);
    let first = Upload::new(1, 10 * BLOCK);
    let second = Upload::new(2, 10 * BLOCK);
    runtime().block_on(async {
        let (mut a, _) = connect(fleet.addr(), &serial("CTRL-A")).await;
        a.send(&first.begin(first.size())).await.unwrap();
        assert_eq!(expect_status(&mut a, &first).await, 0);

        let (mut b, _) = connect(fleet.addr(), &serial("CTRL-B")).await;
        b.send(&second.begin(second.size())).await.unwrap();
        let error = expect_error(&mut b).await;
        assert_eq!(error.code, ErrorCode::BUSY);
        assert!(!error.fatal);
        assert!(error.message.contains("UPLOAD_MAX_OPEN"), "{error:?}");
        expect_alive(&mut b).await;

        // The first upload ends: its slot is free again.
        let frames: Vec<DeviceFrame> = (0..10).map(|i| first.block(i * BLOCK as u64)).collect();
        a.send_all(&frames).await.unwrap();
        a.send(&first.end(first.size(), first.sha256)).await.unwrap();
        loop {
            match next_frame(&mut a).await {
                ServerFrame::UploadStatus(_) => {}
                ServerFrame::UploadDone(done) => {
                    assert_eq!(done.status, UploadOutcome::OK);
                    break;
                }
                other => panic!("expected UPLOAD_DONE, got {other:?}"),
            }
        }
        b.send(&second.begin(second.size())).await.unwrap();
        assert_eq!(expect_status(&mut b, &second).await, 0);
    });
}
