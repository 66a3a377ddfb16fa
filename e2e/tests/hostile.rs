//! Hostile input against a real driver (issue 8): slow and silent
//! connections by the thousand, broken and malicious bytes, replays inside
//! a session, odd serials, password guessing, and commands aimed at the
//! wrong device. Each gets its exact CWP/1 §4 error, nothing panics, and
//! honest devices keep being served.
//!
//! Already covered elsewhere and not repeated here: one example of every
//! error code (`errors.rs`); a wrong mac, an unknown serial and an `AUTH`
//! replayed on a new connection (`auth.rs`); that the codec never buffers
//! more than one header plus `max_payload`, whatever it is fed
//! (`cwp/tests/properties.rs`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::{BufMut as _, BytesMut};
use controller_sim::client::{ClientError, Connection, connect_from};
use cwp::{DeviceCodec, DeviceFrame, ErrorCode, ErrorFrame, FrameType, Ping, ServerFrame};
use drover_testkit::components::DriverProcess;
use drover_testkit::device::{connect, device_key, event, expect_fatal, serial};
use drover_testkit::fleet::{TestFleet, raise_open_file_limit, runtime};
use drover_testkit::inspect::stored_events;
use drover_testkit::wait::eventually;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Generous: only there to fail instead of hanging.
const WAIT: Duration = Duration::from_secs(30);

/// A frame with a correct CRC around an arbitrary type and payload.
fn raw_frame(frame_type: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = BytesMut::new();
    frame.put_slice(&[0x43, 0x57, 0x01, frame_type]);
    frame.put_u32(u32::try_from(payload.len()).unwrap());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&frame[..8]), payload);
    frame.put_u32(crc);
    frame.put_slice(payload);
    frame.to_vec()
}

/// A `HELLO` body with these serial bytes (`str8`), firmware `fw` and a
/// zero nonce.
fn hello_body(serial: &[u8]) -> Vec<u8> {
    let mut body = vec![u8::try_from(serial.len()).unwrap()];
    body.extend_from_slice(serial);
    body.extend_from_slice(b"\x02fw");
    body.extend_from_slice(&[0; 16]);
    body
}

fn loopback(last: u8, third: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, third, last))
}

/// Everything the server sends until it closes the connection, decoded as
/// a device would (unsealed: these connections never reach `WELCOME`).
async fn frames_until_closed(connection: &mut tokio::net::tcp::OwnedReadHalf) -> Vec<ServerFrame> {
    let mut buf = BytesMut::new();
    loop {
        buf.reserve(4096);
        match connection.read_buf(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    let mut codec = DeviceCodec::new();
    let mut frames = Vec::new();
    while let Ok(Some(frame)) = codec.decode(&mut buf) {
        frames.push(frame);
    }
    frames
}

/// A steady pace for what a test's own client does (an attacker's drip, a
/// device's readings): ticks `period` apart, the first at once, late ticks
/// delayed rather than bunched up.
fn pace(period: Duration) -> tokio::time::Interval {
    let mut interval = tokio::time::interval(period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval
}

/// Waits for `ACK(id)` or a later one.
async fn expect_ack(connection: &mut Connection, id: u64) {
    loop {
        match connection.recv_timeout(WAIT).await.unwrap() {
            ServerFrame::Ack(ack) if ack.event_id >= id => return,
            ServerFrame::Ack(_) => {}
            other => panic!("expected ACK {id}, got {other:?}"),
        }
    }
}

fn labelled(driver: &DriverProcess, name: &str, label: &str) -> f64 {
    let metrics = driver.metrics().unwrap();
    metrics
        .lines()
        .filter(|line| line.starts_with(&format!("{name}{{")) && line.contains(label))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

// --- Slow and silent connections -----------------------------------------

/// How one attacking connection misbehaves.
#[derive(Debug, Clone, Copy)]
enum Slowloris {
    /// Connects and never sends a byte.
    Silent,
    /// Sends a `HELLO` one byte a second.
    Drip,
    /// Sends `HELLO`, reads `CHALLENGE`, never answers.
    MidHandshake,
}

/// One attacking connection, to its end: what the driver sent before it
/// closed the connection.
async fn slowloris(
    addr: SocketAddr,
    source: IpAddr,
    kind: Slowloris,
    connects: Arc<tokio::sync::Semaphore>,
) -> Vec<ServerFrame> {
    let stream = {
        let _permit = connects.acquire().await.unwrap();
        connect_from(addr, source).await.expect("attacker connects")
    };
    let (mut reader, mut writer) = stream.into_split();
    let hello = raw_frame(0x01, &hello_body(b"CTRL-EVIL"));
    let misbehave = async move {
        match kind {
            Slowloris::Silent => {}
            Slowloris::Drip => {
                // The attack's own pace, one byte a second (the first a
                // second after connecting).
                let mut every_second = pace(Duration::from_secs(1));
                every_second.tick().await;
                for byte in &hello {
                    every_second.tick().await;
                    if writer.write_all(&[*byte]).await.is_err() {
                        break;
                    }
                }
            }
            Slowloris::MidHandshake => {
                let _ = writer.write_all(&hello).await;
            }
        }
        // Keep the write side open: a closed one would be a clean goodbye.
        std::future::pending::<()>().await;
    };
    tokio::select! {
        frames = frames_until_closed(&mut reader) => frames,
        () = misbehave => unreachable!("misbehaving never ends"),
    }
}

/// One honest device for the whole attack: connects (retrying after
/// `BUSY`, as devices do), then sends events one at a time and waits for
/// each `ACK` until the attack is over. Returns how many were acknowledged.
async fn honest_device(addr: SocketAddr, name: String, attack_over: Arc<AtomicBool>) -> u64 {
    let serial = serial(&name);
    let mut attempts = 0;
    let mut connection = loop {
        attempts += 1;
        let mut connection = Connection::connect(addr).await.unwrap();
        match connection.handshake(serial, &device_key(&serial), "fw").await {
            Ok(_) => break connection,
            // Pushed out by newer connections: `BUSY`, or a reset that
            // overtook it when the device's AUTH crossed the close.
            Err(ClientError::Refused(error)) if error.code == ErrorCode::BUSY => {}
            Err(ClientError::Io(_) | ClientError::Closed) => {}
            Err(err) => panic!("{name}: handshake failed: {err:?}"),
        }
        assert!(attempts < 100, "{name}: no handshake in 100 attempts");
    };
    // A reading every 200 ms: 500 events/s from the 100 devices.
    let mut readings = pace(Duration::from_millis(200));
    let mut id = 0;
    while id < 3 || !attack_over.load(Ordering::Acquire) {
        readings.tick().await;
        id += 1;
        connection.send(&event(id)).await.unwrap();
        expect_ack(&mut connection, id).await;
    }
    id
}

#[test]
fn ten_thousand_slow_connections_are_closed_by_the_deadline_the_cap_holds_and_honest_devices_are_served() {
    const ATTACKERS: usize = 10_000;
    const CAP: usize = 1_000;
    raise_open_file_limit(ATTACKERS + 1_000);
    let fleet = TestFleet::start(
        1,
        &[
            ("DRIVER_HANDSHAKE_TIMEOUT", "2s"),
            ("DRIVER_MAX_HANDSHAKES", &CAP.to_string()),
        ],
    );
    let addr = fleet.addr();
    let admin = fleet.drivers[0].admin_addr();
    runtime().block_on(async {
        let attack_over = Arc::new(AtomicBool::new(false));
        // Half the honest devices are connected before the attack starts...
        let mut honest = Vec::new();
        for i in 0..50 {
            let device = tokio::spawn(honest_device(addr, format!("HONEST-{i}"), attack_over.clone()));
            honest.push(device);
        }
        eventually("50 sessions", WAIT, || async {
            fleet.drivers[0].metric("drover_driver_sessions").unwrap() >= 50.0
        })
        .await;

        // ... the attack: 10,000 connections, a third of each kind, from ten
        // addresses (for ephemeral ports) ...
        let connects = Arc::new(tokio::sync::Semaphore::new(256));
        let kinds = [Slowloris::Silent, Slowloris::Drip, Slowloris::MidHandshake];
        let attackers: Vec<_> = (0..ATTACKERS)
            .map(|i| {
                let source = loopback(u8::try_from(1 + i % 10).unwrap(), 1);
                let kind = kinds[i % 3];
                let connects = connects.clone();
                tokio::spawn(async move { (kind, tokio::time::timeout(WAIT * 4, slowloris(addr, source, kind, connects)).await) })
            })
            .collect();

        // ... and the other half connect while it goes on.
        for i in 50..100 {
            honest.push(tokio::spawn(honest_device(addr, format!("HONEST-{i}"), attack_over.clone())));
        }

        // The cap holds all along: the gauge is sampled every 20 ms for as
        // long as the attack lasts.
        let sampling = Arc::new(AtomicBool::new(true));
        let sampler = {
            let sampling = sampling.clone();
            tokio::spawn(async move {
                let mut samples = pace(Duration::from_millis(20));
                let mut highest = 0.0_f64;
                while sampling.load(Ordering::Acquire) {
                    samples.tick().await;
                    let (_, metrics) = tokio::task::spawn_blocking(move || drover_testkit::http::get(admin, "/metrics"))
                        .await
                        .unwrap()
                        .unwrap();
                    let in_progress = metrics
                        .lines()
                        .find_map(|line| line.strip_prefix("drover_driver_handshakes_in_progress "))
                        .and_then(|value| value.parse::<f64>().ok())
                        .expect("drover_driver_handshakes_in_progress");
                    highest = highest.max(in_progress);
                }
                highest
            })
        };

        let mut outcomes: BTreeMap<&str, usize> = BTreeMap::new();
        for attacker in attackers {
            let (kind, frames) = attacker.await.unwrap();
            let frames = frames.unwrap_or_else(|_| panic!("a {kind:?} connection was not closed"));
            let mut frames = frames.into_iter().peekable();
            // Unless evicted before its HELLO was read, a mid-handshake
            // connection got its CHALLENGE first.
            if matches!(kind, Slowloris::MidHandshake) {
                frames.next_if(|frame| matches!(frame, ServerFrame::Challenge(_)));
            }
            match frames.next() {
                Some(ServerFrame::Error(error)) => {
                    assert!(
                        error.code == ErrorCode::TIMEOUT || error.code == ErrorCode::BUSY,
                        "{kind:?}: {error:?}"
                    );
                    *outcomes.entry(error.code.name().unwrap()).or_default() += 1;
                }
                // A dripping connection's byte may cross the driver's close
                // and turn it into a reset, which can take the ERROR with it.
                None if matches!(kind, Slowloris::Drip) => *outcomes.entry("reset").or_default() += 1,
                other => panic!("{kind:?}: expected ERROR TIMEOUT or BUSY, got {other:?}"),
            }
            assert!(frames.next().is_none(), "nothing after the ERROR");
        }
        attack_over.store(true, Ordering::Release);
        sampling.store(false, Ordering::Release);
        let highest = sampler.await.unwrap();

        let mut acknowledged = 0;
        for device in honest {
            acknowledged += tokio::time::timeout(WAIT, device).await.expect("honest device finishes").unwrap();
        }
        eprintln!("attack outcomes: {outcomes:?}; highest handshakes in progress: {highest}; {acknowledged} honest events acknowledged");

        assert!(highest <= CAP as f64, "at most {CAP} handshakes in progress, saw {highest}");
        assert!(outcomes.get("BUSY").copied().unwrap_or(0) > 0, "the cap evicted some: {outcomes:?}");
        let driver = &fleet.drivers[0];
        let ended = labelled(driver, "drover_driver_handshakes_total", "result=\"evicted\"")
            + labelled(driver, "drover_driver_handshakes_total", "result=\"timeout\"");
        assert!(ended >= ATTACKERS as f64, "every attacker ended evicted or timed out: {ended}");
        assert_eq!(driver.metric("drover_driver_handshakes_in_progress").unwrap(), 0.0);

        // Every honest event was stored, exactly once.
        let stored = stored_events(&mut fleet.redis().await).await;
        let distinct: BTreeSet<_> = stored.iter().collect();
        assert_eq!(distinct.len(), stored.len(), "no event stored twice");
        assert_eq!(stored.len() as u64, acknowledged, "every acknowledged event is stored");
    });
}

// --- Broken and malicious bytes ------------------------------------------

/// What a driver answers to bytes sent on a fresh connection (which then
/// stays open, silent, until the driver closes it).
async fn answer_to(addr: SocketAddr, bytes: &[u8]) -> Vec<ServerFrame> {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    writer.write_all(bytes).await.unwrap();
    let frames = tokio::time::timeout(WAIT, frames_until_closed(&mut reader))
        .await
        .expect("the driver closes the connection");
    drop(writer);
    frames
}

fn only_error(frames: Vec<ServerFrame>) -> ErrorFrame {
    match <[ServerFrame; 1]>::try_from(frames) {
        Ok([ServerFrame::Error(error)]) => error,
        other => panic!("expected one ERROR, got {other:?}"),
    }
}

#[test]
fn garbage_truncation_bit_flips_and_length_bombs_get_their_exact_error() {
    let fleet = TestFleet::start(1, &[("DRIVER_HANDSHAKE_TIMEOUT", "2s")]);
    let addr = fleet.addr();
    runtime().block_on(async {
        // Garbage: whatever does not start with `CW` is BAD_MAGIC.
        for garbage in [
            &b"\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"[..],
            b"SSH-2.0-OpenSSH_9.6\r\n",
            &[0xFF; 64],
        ] {
            let error = only_error(answer_to(addr, garbage).await);
            assert_eq!((error.code, error.ref_type), (ErrorCode::BAD_MAGIC, FrameType(0)));
        }

        // A length bomb: 4 GiB announced, refused from the 12-byte header
        // alone (nothing of the payload was sent).
        let bomb = [0x43, 0x57, 0x01, 0x01, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0];
        let error = only_error(answer_to(addr, &bomb).await);
        assert_eq!(
            (error.code, error.ref_type),
            (ErrorCode::FRAME_TOO_LARGE, FrameType::HELLO)
        );

        // Truncated: a HELLO cut anywhere waits for the rest, and the rest
        // never comes: TIMEOUT. All at once, so the test waits one deadline.
        let hello = raw_frame(0x01, &hello_body(b"CTRL-0042"));
        let cuts = (1..hello.len()).map(|cut| {
            let truncated = hello[..cut].to_vec();
            async move { (cut, only_error(answer_to(addr, &truncated).await)) }
        });
        for (cut, error) in futures::future::join_all(cuts).await {
            assert_eq!(
                (error.code, error.ref_type),
                (ErrorCode::TIMEOUT, FrameType(0)),
                "cut at {cut}"
            );
        }

        // Every single bit of a valid HELLO flipped, one connection each.
        // The error follows from which field the bit is in (CWP/1 §1: magic,
        // version and length are checked from the header, then the crc,
        // which covers the header and the payload).
        let flips = (0..hello.len() * 8).map(|bit| {
            let mut flipped = hello.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            async move { (bit, flipped.clone(), only_error(answer_to(addr, &flipped).await)) }
        });
        let length = u32::try_from(hello.len() - 12).unwrap();
        for (bit, flipped, error) in futures::future::join_all(flips).await {
            let announced = u32::from_be_bytes(flipped[4..8].try_into().unwrap());
            let expected = match bit / 8 {
                0 | 1 => (ErrorCode::BAD_MAGIC, FrameType(0)),
                2 => (ErrorCode::BAD_VERSION, FrameType(0)),
                4..=7 if announced > 65_536 => (ErrorCode::FRAME_TOO_LARGE, FrameType(flipped[3])),
                // More announced than sent: it waits for bytes that never come.
                4..=7 if announced > length => (ErrorCode::TIMEOUT, FrameType(0)),
                // Type, shorter length, crc, payload: the crc no longer matches.
                _ => (ErrorCode::BAD_CRC, FrameType(flipped[3])),
            };
            assert_eq!((error.code, error.ref_type), expected, "bit {bit} flipped");
        }
    });
}

#[test]
fn odd_serials_are_malformed_and_nothing_is_built_from_them() {
    let fleet = TestFleet::start(1, &[]);
    let addr = fleet.addr();
    let odd: [&[u8]; 7] = [b"*", b"a:b", b"../x", b"CTRL-1*", &[b'A'; 33], b"\xFF\xFE", b""];
    // Everything Redis is asked while the odd serials try their luck.
    let monitor = fleet.redis.monitor().unwrap();

    runtime().block_on(async {
        for serial in odd {
            let error = only_error(answer_to(addr, &raw_frame(0x01, &hello_body(serial))).await);
            assert_eq!(
                (error.code, error.ref_type),
                (ErrorCode::MALFORMED, FrameType::HELLO),
                "serial {:?}",
                String::from_utf8_lossy(serial)
            );
        }
        // An honest device after them, so that the monitor demonstrably saw
        // the driver's Redis traffic.
        connect(addr, &serial("CTRL-HONEST")).await;
        eventually("the honest device's traffic in MONITOR", WAIT, || async {
            monitor.text().unwrap().contains("CTRL-HONEST")
        })
        .await;
    });
    let seen = monitor.stop().unwrap();
    // MONITOR quotes every argument and escapes bytes that are not
    // printable, so an argument built from an odd serial ends in it.
    let long = "A".repeat(33);
    for needle in [
        ":*\"",
        "a:b\"",
        "../x\"",
        "CTRL-1*\"",
        &long,
        "\\xff\\xfe",
        "cwp:cmd:\"",
        "cwp:device:\"",
    ] {
        assert!(
            !seen.contains(needle),
            "Redis was asked something built from an odd serial ({needle:?}):\n{seen}"
        );
    }
    let upload_dir = std::env::temp_dir().join(format!("drover-uploads-{}", addr.port()));
    let mut entries = Vec::new();
    let mut pending = vec![upload_dir.clone()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            entries.push(entry.path());
            if entry.path().is_dir() {
                pending.push(entry.path());
            }
        }
    }
    assert!(
        entries.iter().all(|path| {
            let name = path.file_name().unwrap().to_string_lossy();
            !(name.contains('*')
                || name.contains(':')
                || name == "x"
                || name.contains("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"))
        }),
        "a file named after an odd serial: {entries:?}"
    );
}

/// Sends `wire` one byte per write, a millisecond apart. TCP_NODELAY sends
/// each write in its own segment, and the spacing makes it likely that the
/// driver reads each byte on its own; the test holds however the reads
/// fall, the spacing only makes the hardest split the likely one.
async fn send_byte_by_byte(connection: &mut Connection, wire: &[u8]) {
    let mut every_millisecond = pace(Duration::from_millis(1));
    for byte in wire {
        every_millisecond.tick().await;
        connection.send_raw(&[*byte]).await.unwrap();
    }
}

#[test]
fn frames_split_at_every_byte_are_reassembled() {
    let fleet = TestFleet::start(1, &[]);
    runtime().block_on(async {
        let serial = serial("CTRL-SPLIT");
        let mut connection = Connection::connect(fleet.addr()).await.unwrap();
        let nonce_d = cwp::Nonce([7; 16]);
        let (handshake, hello) =
            cwp::DeviceHandshake::start(serial, cwp::Str8::new("fw").unwrap(), device_key(&serial), nonce_d);
        let mut codec = DeviceCodec::new();
        let mut wire = BytesMut::new();
        codec.encode(&hello, &mut wire);
        send_byte_by_byte(&mut connection, &wire).await;
        let ServerFrame::Challenge(challenge) = connection.recv_timeout(WAIT).await.unwrap() else {
            panic!("expected CHALLENGE")
        };
        let (auth, session_key) = handshake.answer(&challenge);
        wire.clear();
        codec.encode(&auth, &mut wire);
        codec.start_sealing(&session_key);
        connection.codec_mut().start_sealing(&session_key);
        send_byte_by_byte(&mut connection, &wire).await;
        assert!(matches!(
            connection.recv_timeout(WAIT).await.unwrap(),
            ServerFrame::Welcome(_)
        ));
        wire.clear();
        for id in 1..=3 {
            codec.encode(&event(id), &mut wire);
        }
        send_byte_by_byte(&mut connection, &wire).await;
        expect_ack(&mut connection, 3).await;
    });
}

#[test]
fn a_ping_flood_is_answered_in_order_and_the_session_goes_on() {
    let fleet = TestFleet::start(1, &[]);
    runtime().block_on(async {
        let (mut connection, _) = connect(fleet.addr(), &serial("CTRL-PING")).await;
        for batch in 0..10_u64 {
            let pings: Vec<_> = (0..1_000)
                .map(|i| {
                    DeviceFrame::Ping(Ping {
                        token: batch * 1_000 + i,
                    })
                })
                .collect();
            connection.send_all(&pings).await.unwrap();
            for i in 0..1_000 {
                match connection.recv_timeout(WAIT).await.unwrap() {
                    ServerFrame::Pong(pong) => assert_eq!(pong.token, batch * 1_000 + i),
                    other => panic!("expected PONG, got {other:?}"),
                }
            }
        }
        connection.send(&event(1)).await.unwrap();
        expect_ack(&mut connection, 1).await;
    });
}

#[test]
fn a_sealed_frame_replayed_or_reordered_is_bad_tag() {
    let fleet = TestFleet::start(1, &[]);
    runtime().block_on(async {
        // Replayed: the same sealed EVENT twice. Its tag was for device
        // frame 0; the second copy arrives as frame 1.
        let (mut connection, _) = connect(fleet.addr(), &serial("CTRL-REPLAY")).await;
        let mut recorded = BytesMut::new();
        connection.codec_mut().encode(&event(1), &mut recorded);
        connection.send_raw(&recorded).await.unwrap();
        expect_ack(&mut connection, 1).await;
        connection.send_raw(&recorded).await.unwrap();
        expect_fatal(&mut connection, ErrorCode::BAD_TAG, FrameType::EVENT).await;

        // Reordered: frames 0 and 1 sent as 1, 0.
        let (mut connection, _) = connect(fleet.addr(), &serial("CTRL-REORDER")).await;
        let mut first = BytesMut::new();
        let mut second = BytesMut::new();
        connection.codec_mut().encode(&event(1), &mut first);
        connection.codec_mut().encode(&event(2), &mut second);
        second.extend_from_slice(&first);
        connection.send_raw(&second).await.unwrap();
        expect_fatal(&mut connection, ErrorCode::BAD_TAG, FrameType::EVENT).await;

        // From an earlier session of the same serial into a new one: another
        // session key.
        let (mut connection, _) = connect(fleet.addr(), &serial("CTRL-REPLAY")).await;
        connection.send_raw(&recorded).await.unwrap();
        expect_fatal(&mut connection, ErrorCode::BAD_TAG, FrameType::EVENT).await;

        // A length bomb inside the session: sealed or not, refused from
        // the header.
        let (mut connection, _) = connect(fleet.addr(), &serial("CTRL-BOMB")).await;
        connection
            .send_raw(&[0x43, 0x57, 0x01, 0x03, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0])
            .await
            .unwrap();
        expect_fatal(&mut connection, ErrorCode::FRAME_TOO_LARGE, FrameType::EVENT).await;

        let stored = stored_events(&mut fleet.redis().await).await;
        assert_eq!(
            stored,
            vec![("CTRL-REPLAY".to_owned(), 1)],
            "only the genuine event is stored"
        );
    });
}

// --- Password guessing -----------------------------------------------------

/// A handshake as `serial` with a wrong key, from `source`: the driver's
/// answer (`UNAUTHORIZED` until a limit is reached, then `BUSY`).
async fn guess(addr: SocketAddr, source: IpAddr, serial: &cwp::Serial) -> ErrorFrame {
    let mut connection = Connection::connect_from(addr, source).await.unwrap();
    let wrong = cwp::DeviceKey::from_bytes([0x55; 32]);
    let err = connection.handshake(*serial, &wrong, "fw").await.unwrap_err();
    let ClientError::Refused(error) = err else {
        panic!("expected a refusal, got {err:?}")
    };
    assert!(connection.closed_within(WAIT).await, "closed after {error:?}");
    error
}

#[test]
fn failed_authentications_are_limited_per_address_and_per_serial() {
    let fleet = TestFleet::start(
        1,
        &[
            ("DRIVER_AUTH_FAILURES_PER_ADDRESS", "3"),
            ("DRIVER_AUTH_FAILURES_PER_SERIAL", "2"),
            ("DRIVER_AUTH_FAILURE_WINDOW", "10m"),
        ],
    );
    let addr = fleet.addr();
    let driver = &fleet.drivers[0];
    runtime().block_on(async {
        // Per serial: two failures from two addresses, then the serial is
        // refused from anywhere, even with the right key, before any
        // CHALLENGE.
        let victim = serial("CTRL-VICTIM");
        for source in [loopback(2, 2), loopback(3, 2)] {
            assert_eq!(guess(addr, source, &victim).await.code, ErrorCode::UNAUTHORIZED);
        }
        let mut connection = Connection::connect_from(addr, loopback(4, 2)).await.unwrap();
        let err = connection
            .handshake(victim, &device_key(&victim), "fw")
            .await
            .unwrap_err();
        let ClientError::Refused(error) = err else {
            panic!("expected BUSY, got {err:?}")
        };
        assert_eq!(
            (error.code, error.ref_type, error.fatal),
            (ErrorCode::BUSY, FrameType::HELLO, false)
        );
        assert!(connection.closed_within(WAIT).await);
        assert_eq!(
            labelled(driver, "drover_driver_auth_rate_limited_total", "limiter=\"serial\""),
            1.0
        );
        // Another serial from the same addresses is not affected.
        let mut other = Connection::connect_from(addr, loopback(4, 2)).await.unwrap();
        other
            .handshake(serial("CTRL-OTHER"), &device_key(&serial("CTRL-OTHER")), "fw")
            .await
            .unwrap();

        // Per address: three failures for three serials, then the address
        // is refused whatever it claims.
        let attacker = loopback(9, 2);
        for name in ["CTRL-A1", "CTRL-A2", "CTRL-A3"] {
            assert_eq!(guess(addr, attacker, &serial(name)).await.code, ErrorCode::UNAUTHORIZED);
        }
        let honest_serial = serial("CTRL-HONEST");
        let mut connection = Connection::connect_from(addr, attacker).await.unwrap();
        let err = connection
            .handshake(honest_serial, &device_key(&honest_serial), "fw")
            .await
            .unwrap_err();
        let ClientError::Refused(error) = err else {
            panic!("expected BUSY, got {err:?}")
        };
        assert_eq!((error.code, error.ref_type), (ErrorCode::BUSY, FrameType::HELLO));
        assert!(connection.closed_within(WAIT).await);
        assert_eq!(
            labelled(driver, "drover_driver_auth_rate_limited_total", "limiter=\"address\""),
            1.0
        );
        // The same serial from another address: welcome.
        let mut honest = Connection::connect_from(addr, loopback(10, 2)).await.unwrap();
        honest
            .handshake(honest_serial, &device_key(&honest_serial), "fw")
            .await
            .unwrap();

        assert_eq!(
            labelled(driver, "drover_driver_auth_failures_total", "reason=\"wrong_mac\""),
            5.0
        );
        assert_eq!(
            labelled(driver, "drover_driver_handshakes_total", "result=\"rate_limited\""),
            2.0
        );
    });
}

// --- Commands reach their own device only ----------------------------------

async fn publish(redis: &mut redis::aio::MultiplexedConnection, channel: &str, command_id: u8) -> i64 {
    let id = format!("{:02x}", command_id).repeat(16);
    let id = format!(
        "{}-{}-{}-{}-{}",
        &id[..8],
        &id[8..12],
        &id[12..16],
        &id[16..20],
        &id[20..32]
    );
    redis::cmd("PUBLISH")
        .arg(channel)
        .arg(format!(r#"{{"id":"{id}","name":"probe","body":""}}"#))
        .query_async(redis)
        .await
        .unwrap()
}

async fn next_command(connection: &mut Connection) -> u8 {
    match connection.recv_timeout(WAIT).await.unwrap() {
        ServerFrame::Command(command) => command.command_id.0[0],
        other => panic!("expected COMMAND, got {other:?}"),
    }
}

#[test]
fn a_command_reaches_only_its_own_serial() {
    let fleet = TestFleet::start(1, &[]);
    runtime().block_on(async {
        // Serials that are prefixes of each other.
        let names = ["CTRL-1", "CTRL-10", "CTRL-1.0"];
        let mut devices = Vec::new();
        for name in names {
            devices.push(connect(fleet.addr(), &serial(name)).await.0);
        }
        let mut redis = fleet.redis().await;
        // Glob characters and patterns in the channel name are literal to
        // PUBLISH, and the driver subscribes to exact channels only.
        for (n, channel) in [
            "cwp:cmd:CTRL-1*",
            "cwp:cmd:CTRL-1?",
            "cwp:cmd:CTRL-[1]*",
            "cwp:cmd:*",
            "cwp:cmd:CTRL-1 ",
            "cwp:cmd:ctrl-1",
        ]
        .into_iter()
        .enumerate()
        {
            assert_eq!(
                publish(&mut redis, channel, 0x10 + u8::try_from(n).unwrap()).await,
                0,
                "{channel} reaches nobody"
            );
        }
        // Each device's own command, one each.
        for (n, name) in names.iter().enumerate() {
            assert_eq!(
                publish(&mut redis, &format!("cwp:cmd:{name}"), 0x01 + u8::try_from(n).unwrap()).await,
                1
            );
        }
        // Redis delivers in publish order over the driver's one connection:
        // a device's first command is its own, so nothing came before it.
        for (n, device) in devices.iter_mut().enumerate() {
            assert_eq!(
                next_command(device).await,
                0x01 + u8::try_from(n).unwrap(),
                "{}",
                names[n]
            );
        }
        // And nothing after it either: a PING's PONG comes next.
        for device in &mut devices {
            device.send(&DeviceFrame::Ping(Ping { token: 7 })).await.unwrap();
            assert!(matches!(device.recv_timeout(WAIT).await.unwrap(), ServerFrame::Pong(p) if p.token == 7));
        }
    });
}

/// A driver started with limits still welcomes a device (a smoke check of
/// the variables' parsing).
#[test]
fn the_limits_parse_and_a_device_is_welcomed() {
    let mut fleet = TestFleet::start(0, &[]);
    let mut options = fleet.driver_options.clone();
    options.extra_env.extend([
        ("DRIVER_MAX_HANDSHAKES".to_owned(), "1".to_owned()),
        ("DRIVER_AUTH_FAILURES_PER_ADDRESS".to_owned(), "0".to_owned()),
        ("DRIVER_AUTH_FAILURES_PER_SERIAL".to_owned(), "0".to_owned()),
    ]);
    fleet.drivers.push(DriverProcess::start(&options).unwrap());
    runtime().block_on(async {
        connect(fleet.addr(), &serial("CTRL-0001")).await;
    });
}

// --- Bytes held before WELCOME ----------------------------------------------

/// The driver's resident memory once it has settled: sampled every 100 ms
/// for a second after `settle` held, the largest sample (the point is that
/// it does not grow, so there is no event to wait for; a second of samples
/// covers the driver's reads of what the sockets already hold).
fn settled_rss_kib(pid: u32) -> u64 {
    let mut highest = 0;
    for _ in 0..10 {
        highest = highest.max(drover_testkit::process::rss_kib(pid).unwrap());
        std::thread::sleep(Duration::from_millis(100));
    }
    highest
}

/// 64 KiB announced, half of it sent: what each attacker writes, `frame`
/// being a whole 64 KiB frame of some type.
const HALF: usize = 12 + 32 * 1024;

#[test]
fn ten_thousand_half_sent_64_kib_handshake_frames_cost_a_few_mib_and_get_the_specs_errors() {
    const ATTACKERS: usize = 10_000;
    raise_open_file_limit(ATTACKERS + 1_000);
    let mut fleet = TestFleet::start(
        1,
        &[("DRIVER_HANDSHAKE_TIMEOUT", "120s"), ("DRIVER_MAX_HANDSHAKES", "20000")],
    );
    let addr = fleet.addr();
    let pid = fleet.drivers[0].process().pid();
    let rt = runtime();
    // Each attacker announces a 64 KiB HELLO (the handshake's limit is
    // max_payload, 65,536, as CWP/1 says); a hundred of them carry an
    // EVENT or a wrong CRC instead, to check the answers at the end.
    let oversized_hello = {
        let mut body = hello_body(b"CTRL-EVIL");
        body.resize(65_536, 0xAA);
        raw_frame(0x01, &body)
    };
    let oversized_event = raw_frame(0x03, &vec![0x11; 65_536]);
    let mut bad_crc = oversized_hello.clone();
    bad_crc[8] ^= 0xFF;
    let frame_of = |i: usize| match i % 100 {
        0 => &oversized_event,
        1 => &bad_crc,
        _ => &oversized_hello,
    };

    // Phase 1: the connections, each with only the 12-byte header sent.
    let mut attackers = rt.block_on(async {
        let connects = Arc::new(tokio::sync::Semaphore::new(256));
        let opened = (0..ATTACKERS).map(|i| {
            let source = loopback(u8::try_from(1 + i % 10).unwrap(), 3);
            let header = frame_of(i)[..12].to_vec();
            let connects = connects.clone();
            tokio::spawn(async move {
                let _permit = connects.acquire().await.unwrap();
                let mut stream = connect_from(addr, source).await.expect("attacker connects");
                stream.write_all(&header).await.unwrap();
                stream
            })
        });
        let mut attackers = Vec::new();
        for attacker in futures::future::join_all(opened).await {
            attackers.push(attacker.unwrap());
        }
        eventually("every attacker in its handshake", WAIT, || async {
            fleet.drivers[0].metric("drover_driver_handshakes_in_progress").unwrap() >= ATTACKERS as f64
        })
        .await;
        attackers
    });
    let rss_headers = settled_rss_kib(pid);

    // Phase 2: half of each announced frame.
    rt.block_on(async {
        for (i, stream) in attackers.iter_mut().enumerate() {
            stream.write_all(&frame_of(i)[12..HALF]).await.unwrap();
        }
    });
    let rss_half = settled_rss_kib(pid);
    let growth = rss_half.saturating_sub(rss_headers);
    eprintln!(
        "{ATTACKERS} handshakes: driver RSS {rss_headers} KiB with headers only, {rss_half} KiB with 32 KiB each \
         sent: {growth} KiB for {} MiB received",
        (ATTACKERS * (HALF - 12)) >> 20
    );
    // The kept prefix (at most a HELLO, 305 bytes) and a small read
    // buffer per connection: a few MiB, where holding each announced frame
    // would take 320 MiB and more.
    assert!(
        growth <= 16 * 1024,
        "the driver held {growth} KiB more for half-sent frames"
    );

    rt.block_on(async {
        // An honest device is served meanwhile.
        let (mut honest, _) = connect(addr, &serial("CTRL-HONEST")).await;
        honest.send(&event(1)).await.unwrap();
        expect_ack(&mut honest, 1).await;

        // Every answer is the spec's once a frame is complete: the rest of
        // a HELLO too long to be one is MALFORMED, a wrong CRC is BAD_CRC,
        // and a well-formed EVENT before WELCOME is UNEXPECTED.
        let mut answers: BTreeMap<(u16, u8), usize> = BTreeMap::new();
        for (i, mut stream) in attackers
            .drain(..)
            .enumerate()
            .filter(|(i, _)| i % 50 == 0 || i % 100 == 1)
        {
            stream.write_all(&frame_of(i)[HALF..]).await.unwrap();
            let (mut reader, _writer) = stream.into_split();
            let frames = tokio::time::timeout(WAIT, frames_until_closed(&mut reader))
                .await
                .unwrap();
            let error = only_error(frames);
            let expected = match i % 100 {
                0 => (ErrorCode::UNEXPECTED, FrameType::EVENT),
                1 => (ErrorCode::BAD_CRC, FrameType::HELLO),
                _ => (ErrorCode::MALFORMED, FrameType::HELLO),
            };
            assert_eq!((error.code, error.ref_type), expected, "attacker {i}");
            assert!(error.fatal);
            *answers.entry((error.code.0, error.ref_type.0)).or_default() += 1;
        }
        eprintln!("answers (code, ref type): {answers:?}");
        assert_eq!(answers.len(), 3, "all three kinds answered: {answers:?}");
    });
    drop(attackers);
}

/// The control of the test above: after `WELCOME` a device may send frames
/// up to its `max_payload`, and the driver holds what it announces; the
/// same half-sent 64 KiB frames from authenticated devices do cost their
/// size, so the measurement above would see it.
#[test]
fn after_welcome_half_sent_64_kib_frames_are_held_the_control() {
    const DEVICES: usize = 4_000;
    raise_open_file_limit(DEVICES + 1_000);
    let mut fleet = TestFleet::start(1, &[("DRIVER_MAX_HANDSHAKES", "20000"), ("DRIVER_PARK_AFTER", "0s")]);
    let addr = fleet.addr();
    let pid = fleet.drivers[0].process().pid();
    let rt = runtime();
    let mut devices = rt.block_on(async {
        let connects = Arc::new(tokio::sync::Semaphore::new(128));
        let opened = (0..DEVICES).map(|i| {
            let connects = connects.clone();
            tokio::spawn(async move {
                let _permit = connects.acquire().await.unwrap();
                connect(addr, &serial(&format!("CTRL-HELD-{i}"))).await.0
            })
        });
        let mut devices = Vec::new();
        for device in futures::future::join_all(opened).await {
            devices.push(device.unwrap());
        }
        devices
    });
    let before = settled_rss_kib(pid);
    rt.block_on(async {
        for device in &mut devices {
            // A sealed frame's header: EVENT announcing 65,536 bytes.
            let mut header = [0x43, 0x57, 0x01, 0x03, 0, 1, 0, 0, 0, 0, 0, 0];
            header[4..8].copy_from_slice(&65_536u32.to_be_bytes());
            device.send_raw(&header).await.unwrap();
            device.send_raw(&vec![0x22; HALF - 12]).await.unwrap();
        }
    });
    let after = settled_rss_kib(pid);
    let growth = after.saturating_sub(before);
    eprintln!(
        "{DEVICES} sessions with half a 64 KiB frame each: driver RSS {before} KiB -> {after} KiB (+{growth} KiB)"
    );
    assert!(
        growth >= (DEVICES * 32) as u64,
        "authenticated devices' frames are held: +{growth} KiB for {DEVICES} × 32 KiB"
    );
    drop(devices);
}

// --- No lockout by strangers ------------------------------------------------

/// A stranger at 127.0.5.2 fails `failures` times for `CTRL-1`; then the
/// real `CTRL-1` connects from 127.0.5.3: its welcome, or the refusal.
fn stranger_then_device(driver_env: &[(&str, &str)], failures: usize) -> Result<(), ErrorFrame> {
    let fleet = TestFleet::start(1, driver_env);
    let addr = fleet.addr();
    let target = serial("CTRL-1");
    runtime().block_on(async {
        let stranger = loopback(2, 5);
        for _ in 0..failures {
            let error = guess(addr, stranger, &target).await;
            assert!(
                error.code == ErrorCode::UNAUTHORIZED || error.code == ErrorCode::BUSY,
                "{error:?}"
            );
        }
        let mut device = Connection::connect_from(addr, loopback(3, 5)).await.unwrap();
        match device.handshake(target, &device_key(&target), "fw").await {
            Ok(_) => Ok(()),
            Err(ClientError::Refused(error)) => Err(error),
            Err(err) => panic!("{err:?}"),
        }
    })
}

#[test]
fn a_stranger_failing_a_thousand_times_for_a_serial_does_not_keep_that_device_out() {
    // The defaults: per address and per (serial, address), no per-serial
    // limit.
    assert_eq!(stranger_then_device(&[], 1_000), Ok(()));
}

/// The control: with the opt-in per-serial limit the same stranger does
/// keep the device out, which is why it is not the default.
#[test]
fn with_the_opt_in_per_serial_limit_a_stranger_keeps_the_device_out_the_control() {
    let refused = stranger_then_device(&[("DRIVER_AUTH_FAILURES_PER_SERIAL", "10")], 1_000).unwrap_err();
    assert_eq!((refused.code, refused.ref_type), (ErrorCode::BUSY, FrameType::HELLO));
}
