//! The simulated device against a scripted CWP/1 server (built from the
//! `cwp` codec's server half): each test plays the server's side of the
//! spec step by step and checks what the device does. The real driver is
//! exercised by the fleet's end-to-end tests.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use controller_sim::client::{ClientError, Connection};
use controller_sim::device::{Backoff, Behaviour, Control, Device, Endpoint, EventLoad, Pacing, Stats};
use cwp::{
    Ack, ByeReason, Command, CommandId, CommandResult, CommandStatus, DeviceFrame, DeviceKey, ErrorCode, ErrorFrame,
    Event, FrameType, MasterKey, Nonce, Ping, Serial, ServerBye, ServerCodec, ServerFrame, ServerHandshake, ServerStep,
    SessionId, Str8, Welcome,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Longest wait for anything that should happen.
const DEADLINE: Duration = Duration::from_secs(5);

fn master() -> MasterKey {
    MasterKey::from_bytes([7; 32])
}

fn serial() -> Serial {
    "SIM-000001".parse().expect("a valid serial")
}

/// The server's end of one connection, after the handshake.
struct ServerSide {
    stream: TcpStream,
    codec: ServerCodec,
    rx: BytesMut,
}

/// What the scripted server announces in `WELCOME`.
#[derive(Clone, Copy)]
struct Limits {
    heartbeat_s: u16,
    event_window: u16,
    last_event_id: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            heartbeat_s: 60,
            event_window: 16,
            last_event_id: 0,
        }
    }
}

impl ServerSide {
    /// Accepts a connection and runs CWP/1 §2 from the server's side.
    async fn accept(listener: &TcpListener, limits: Limits) -> Self {
        let (stream, _) = tokio::time::timeout(DEADLINE, listener.accept())
            .await
            .expect("the device connects")
            .expect("accept succeeds");
        let mut side = Self {
            stream,
            codec: ServerCodec::new(),
            rx: BytesMut::new(),
        };
        let mut handshake = ServerHandshake::default();
        let key = |serial: &Serial| Some(DeviceKey::derive(&master(), serial));
        let hello = side.recv().await.expect("HELLO");
        let Ok(ServerStep::Challenge(challenge)) = handshake.receive(hello, || Nonce(rand::random()), key) else {
            panic!("HELLO accepted");
        };
        side.send(&ServerFrame::Challenge(challenge)).await;
        let auth = side.recv().await.expect("AUTH");
        match handshake.receive(auth, || Nonce(rand::random()), key) {
            Ok(ServerStep::Authenticated { session_key, .. }) => {
                side.codec.start_sealing(&session_key);
                side.send(&ServerFrame::Welcome(Welcome {
                    session: SessionId([1; 16]),
                    heartbeat_s: limits.heartbeat_s,
                    max_payload: 65_536,
                    event_window: limits.event_window,
                    last_event_id: limits.last_event_id,
                    server: Str8::truncating("scripted"),
                }))
                .await;
            }
            other => panic!("AUTH verifies: {other:?}"),
        }
        side
    }

    /// The next frame, `None` when the device closed.
    async fn recv(&mut self) -> Option<DeviceFrame> {
        tokio::time::timeout(DEADLINE, async {
            loop {
                if let Some(frame) = self.codec.decode(&mut self.rx).expect("the device sends valid frames") {
                    return Some(frame);
                }
                self.rx.reserve(4096);
                if self.stream.read_buf(&mut self.rx).await.ok()? == 0 {
                    return None;
                }
            }
        })
        .await
        .expect("the device sends a frame or closes in time")
    }

    /// The next frame that is not a heartbeat.
    async fn recv_busy(&mut self) -> Option<DeviceFrame> {
        loop {
            match self.recv().await? {
                DeviceFrame::Ping(_) => {}
                frame => return Some(frame),
            }
        }
    }

    /// The next `EVENT`.
    async fn recv_event(&mut self) -> Event {
        match self.recv_busy().await {
            Some(DeviceFrame::Event(event)) => event,
            other => panic!("expected an EVENT, got {other:?}"),
        }
    }

    async fn send(&mut self, frame: &ServerFrame) {
        let mut tx = BytesMut::new();
        self.codec.encode(frame, &mut tx);
        self.stream.write_all(&tx).await.expect("the device reads");
    }

    async fn ack(&mut self, event_id: u64) {
        self.send(&ServerFrame::Ack(Ack { event_id })).await;
    }

    /// Answers the device's `BYE` as CWP/1 §3 says: `BYE`, then close.
    async fn expect_bye(mut self) {
        match self.recv_busy().await {
            Some(DeviceFrame::Bye(bye)) => assert_eq!(bye.reason, ByeReason::NORMAL),
            other => panic!("expected BYE, got {other:?}"),
        }
        self.send(&ServerFrame::Bye(ServerBye {
            reason: ByeReason::NORMAL,
            reconnect_after_ms: 0,
        }))
        .await;
    }

    /// Whether the device sends nothing (but heartbeats) for `quiet`.
    async fn silent_for(&mut self, quiet: Duration) -> bool {
        tokio::time::timeout(quiet, self.recv_busy()).await.is_err()
    }
}

/// A device with quick retries, running in its own task.
struct Running {
    stats: Arc<Stats>,
    control: Control,
    task: JoinHandle<Device>,
}

fn quick(behaviour: Behaviour) -> Behaviour {
    let quick = Backoff::new(Duration::from_millis(10), Duration::from_millis(20));
    Behaviour {
        reconnect: quick,
        busy: quick,
        ..behaviour
    }
}

fn start(mut device: Device, addr: SocketAddr, behaviour: Behaviour) -> Running {
    let stats = Arc::new(Stats::new());
    let control = Control::new();
    let task = {
        let (stats, control) = (Arc::clone(&stats), control.clone());
        let endpoint = Endpoint {
            target: addr,
            source: None,
        };
        tokio::spawn(async move {
            device
                .run(endpoint, Duration::ZERO, &quick(behaviour), &stats, &control)
                .await;
            device
        })
    };
    Running { stats, control, task }
}

impl Running {
    /// Tells the device to finish and waits for it.
    async fn finish(self) -> (Device, Arc<Stats>) {
        self.control.finish();
        let device = tokio::time::timeout(DEADLINE, self.task)
            .await
            .expect("the device finishes in time")
            .expect("the device task does not panic");
        (device, self.stats)
    }
}

async fn listener() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("a free port");
    let addr = listener.local_addr().expect("a bound listener has an address");
    (listener, addr)
}

fn device_with(events: u64) -> Device {
    let mut device = Device::new(serial(), DeviceKey::derive(&master(), &serial())).with_ack_log();
    for _ in 0..events {
        device.queue_event(1, Bytes::from_static(b"reading"));
    }
    device
}

#[tokio::test]
async fn the_client_handshake_ends_in_a_sealed_welcome() {
    let (listener, addr) = listener().await;
    let server = tokio::spawn(async move {
        let mut side = ServerSide::accept(
            &listener,
            Limits {
                last_event_id: 41,
                ..Limits::default()
            },
        )
        .await;
        // Sealed in both directions: a PING in, a PONG out.
        assert_eq!(side.recv().await, Some(DeviceFrame::Ping(Ping { token: 9 })));
        side.send(&ServerFrame::Pong(cwp::Pong { token: 9 })).await;
    });
    let mut connection = Connection::connect(addr).await.unwrap();
    let welcome = connection
        .handshake(serial(), &DeviceKey::derive(&master(), &serial()), "fw")
        .await
        .unwrap();
    assert_eq!((welcome.last_event_id, welcome.event_window), (41, 16));
    connection.send(&DeviceFrame::Ping(Ping { token: 9 })).await.unwrap();
    assert_eq!(
        connection.recv_timeout(DEADLINE).await.unwrap(),
        ServerFrame::Pong(cwp::Pong { token: 9 })
    );
    server.await.unwrap();
    assert!(connection.closed_within(DEADLINE).await);
}

#[tokio::test]
async fn a_refused_handshake_is_a_refused_error() {
    let (listener, addr) = listener().await;
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let mut side = ServerSide {
            stream,
            codec: ServerCodec::new(),
            rx: BytesMut::new(),
        };
        let mut handshake = ServerHandshake::default();
        let hello = side.recv().await.unwrap();
        let Ok(ServerStep::Challenge(challenge)) = handshake.receive(hello, || Nonce([3; 16]), |_| None) else {
            panic!("HELLO accepted");
        };
        side.send(&ServerFrame::Challenge(challenge)).await;
        let auth = side.recv().await.unwrap();
        let refusal = handshake.receive(auth, || Nonce([4; 16]), |_| None).unwrap_err();
        // CWP/1 §1: an ERROR before WELCOME is not sealed.
        side.send(&ServerFrame::Error(refusal.to_frame())).await;
    });
    let mut connection = Connection::connect(addr).await.unwrap();
    let refused = connection
        .handshake(serial(), &DeviceKey::from_bytes([0; 32]), "fw")
        .await;
    match refused {
        Err(ClientError::Refused(error)) => assert_eq!(error.code, ErrorCode::UNAUTHORIZED),
        other => panic!("expected UNAUTHORIZED, got {other:?}"),
    }
    server.await.unwrap();
    assert!(connection.closed_within(DEADLINE).await);
}

#[tokio::test]
async fn events_go_out_within_the_window_and_leave_only_when_acknowledged() {
    let (listener, addr) = listener().await;
    let running = start(device_with(10), addr, Behaviour::default());
    let mut side = ServerSide::accept(
        &listener,
        Limits {
            event_window: 4,
            ..Limits::default()
        },
    )
    .await;

    for expected in [1..=4, 5..=8] {
        for id in expected.clone() {
            assert_eq!(side.recv_event().await.event_id, id);
        }
        // The window is full: nothing more until an ACK.
        assert!(side.silent_for(Duration::from_millis(200)).await);
        side.ack(*expected.end()).await;
    }
    for id in 9..=10 {
        assert_eq!(side.recv_event().await.event_id, id);
    }
    // A cumulative ACK below the last id drops only what it covers.
    side.ack(9).await;
    side.ack(10).await;
    let server = tokio::spawn(side.expect_bye());
    let (device, stats) = running.finish().await;
    server.await.unwrap();

    assert_eq!(device.unacked(), 0);
    assert_eq!(device.ack_log().unwrap().ranges(), [(1, 10)]);
    let stats = stats.snapshot();
    assert_eq!(
        (stats.events_sent, stats.events_acked, stats.events_resent),
        (10, 10, 0)
    );
    assert_eq!(stats.ack_latency.count, 10);
}

#[tokio::test]
async fn unacknowledged_events_are_resent_with_the_same_ids_after_a_reconnect() {
    let (listener, addr) = listener().await;
    let running = start(device_with(3), addr, Behaviour::default());

    let mut first = ServerSide::accept(&listener, Limits::default()).await;
    for id in 1..=3 {
        assert_eq!(first.recv_event().await.event_id, id);
    }
    first.ack(1).await;
    drop(first); // the connection dies; the ACKs for 2 and 3 are lost

    // Event 2 was stored: WELCOME says so. The device still resends it.
    let mut second = ServerSide::accept(
        &listener,
        Limits {
            last_event_id: 2,
            ..Limits::default()
        },
    )
    .await;
    assert_eq!(second.recv_event().await.event_id, 2);
    assert_eq!(second.recv_event().await.event_id, 3);
    second.ack(3).await;
    let server = tokio::spawn(second.expect_bye());
    let (device, stats) = running.finish().await;
    server.await.unwrap();

    assert_eq!(device.ack_log().unwrap().ranges(), [(1, 3)]);
    assert_eq!(device.sessions(), 2);
    let stats = stats.snapshot();
    assert_eq!((stats.events_sent, stats.events_resent, stats.events_acked), (3, 2, 3));
    assert_eq!((stats.reconnects, stats.disconnects), (1, 1));
}

#[tokio::test]
async fn busy_events_are_kept_and_sent_again_after_a_backoff() {
    let (listener, addr) = listener().await;
    let running = start(device_with(3), addr, Behaviour::default());

    let mut side = ServerSide::accept(&listener, Limits::default()).await;
    for id in 1..=3 {
        assert_eq!(side.recv_event().await.event_id, id);
    }
    side.ack(1).await;
    // 2 and 3 refused: the device keeps them and, once acks have stopped
    // for a backoff, sends them again with the same ids.
    for _ in 2..=3 {
        let busy = ErrorFrame::new(ErrorCode::BUSY, FrameType::EVENT, "busy");
        side.send(&ServerFrame::Error(busy)).await;
    }
    assert_eq!(side.recv_event().await.event_id, 2);
    assert_eq!(side.recv_event().await.event_id, 3);
    side.ack(3).await;
    let server = tokio::spawn(side.expect_bye());
    let (device, stats) = running.finish().await;
    server.await.unwrap();

    assert_eq!(device.ack_log().unwrap().ranges(), [(1, 3)]);
    let stats = stats.snapshot();
    assert_eq!(stats.errors, [(ErrorCode::BUSY, 2)]);
    assert_eq!((stats.busy_retries, stats.events_resent, stats.reconnects), (1, 2, 0));
}

#[tokio::test]
async fn out_of_order_sends_the_rest_on_a_new_connection() {
    let (listener, addr) = listener().await;
    let running = start(device_with(3), addr, Behaviour::default());

    let mut first = ServerSide::accept(&listener, Limits::default()).await;
    for id in 1..=3 {
        assert_eq!(first.recv_event().await.event_id, id);
    }
    first.ack(1).await;
    let refusal = ErrorFrame::new(ErrorCode::OUT_OF_ORDER, FrameType::EVENT, "event id 2 <= 3");
    first.send(&ServerFrame::Error(refusal)).await;
    first.expect_bye().await;

    let mut second = ServerSide::accept(&listener, Limits::default()).await;
    assert_eq!(second.recv_event().await.event_id, 2);
    assert_eq!(second.recv_event().await.event_id, 3);
    second.ack(3).await;
    let server = tokio::spawn(second.expect_bye());
    let (device, stats) = running.finish().await;
    server.await.unwrap();

    assert_eq!(device.ack_log().unwrap().ranges(), [(1, 3)]);
    let stats = stats.snapshot();
    assert_eq!(stats.errors, [(ErrorCode::OUT_OF_ORDER, 1)]);
    assert_eq!((stats.rewinds, stats.reconnects, stats.events_resent), (1, 1, 2));
}

#[tokio::test]
async fn commands_pings_and_a_draining_bye_are_honoured() {
    let (listener, addr) = listener().await;
    let running = start(device_with(0), addr, Behaviour::default());
    let mut first = ServerSide::accept(&listener, Limits::default()).await;

    let command_id = CommandId([0xC0; 16]);
    first
        .send(&ServerFrame::Command(Command {
            command_id,
            name: Str8::truncating("reboot"),
            body: Bytes::new(),
        }))
        .await;
    let result = first.recv_event().await;
    assert_eq!((result.event_id, result.kind), (1, Event::COMMAND_RESULT_KIND));
    let result = CommandResult::decode(result.body).unwrap();
    assert_eq!(
        (result.command_id, result.status, &result.data[..]),
        (command_id, CommandStatus::OK, &b"done"[..])
    );
    first.ack(1).await;

    first.send(&ServerFrame::Ping(Ping { token: 77 })).await;
    assert_eq!(first.recv().await, Some(DeviceFrame::Pong(cwp::Pong { token: 77 })));

    first
        .send(&ServerFrame::Bye(ServerBye {
            reason: ByeReason::DRAINING,
            reconnect_after_ms: 50,
        }))
        .await;
    let started = tokio::time::Instant::now();
    // The device closes, then comes back after reconnect_after_ms.
    assert_eq!(first.recv().await, None);
    let mut second = ServerSide::accept(
        &listener,
        Limits {
            heartbeat_s: 1,
            ..Limits::default()
        },
    )
    .await;
    assert!(started.elapsed() >= Duration::from_millis(50));
    // Idle for a heartbeat: the device pings so the server keeps it.
    assert!(matches!(second.recv().await, Some(DeviceFrame::Ping(_))));
    let server = tokio::spawn(second.expect_bye());
    let (_, stats) = running.finish().await;
    server.await.unwrap();

    let stats = stats.snapshot();
    assert_eq!((stats.commands_received, stats.commands_answered), (1, 1));
    assert_eq!(stats.byes, [(ByeReason::NORMAL, 1), (ByeReason::DRAINING, 1)]);
    assert_eq!(stats.reconnects, 1);
}

#[tokio::test]
async fn paced_events_are_all_delivered_when_the_run_finishes() {
    let (listener, addr) = listener().await;
    let behaviour = Behaviour {
        events: Some(EventLoad {
            pacing: Pacing::spread(500.0, 1, Duration::from_millis(20)).unwrap(),
            kind: 1,
            body: Bytes::from_static(&[0xAB; 100]),
            backlog: 64,
        }),
        ..Behaviour::default()
    };
    let running = start(device_with(0), addr, behaviour);
    let mut side = ServerSide::accept(&listener, Limits::default()).await;

    // Acknowledge every event at once, until the device says BYE; tell the
    // test when a hundred have gone through.
    let (under_way, mut hundred) = tokio::sync::oneshot::channel();
    let mut under_way = Some(under_way);
    let mut received = Vec::new();
    let server = tokio::spawn(async move {
        loop {
            match side.recv_busy().await {
                Some(DeviceFrame::Event(event)) => {
                    assert_eq!(event.body.len(), 100);
                    received.push(event.event_id);
                    side.ack(event.event_id).await;
                    if received.len() == 100 {
                        let _ = under_way.take().map(|tx| tx.send(()));
                    }
                }
                Some(DeviceFrame::Bye(_)) => {
                    side.send(&ServerFrame::Bye(ServerBye {
                        reason: ByeReason::NORMAL,
                        reconnect_after_ms: 0,
                    }))
                    .await;
                    return received;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    });
    tokio::time::timeout(DEADLINE, &mut hundred).await.unwrap().unwrap();
    let (device, stats) = running.finish().await;
    let received = server.await.unwrap();

    let n = received.len() as u64;
    assert_eq!(received, (1..=n).collect::<Vec<_>>());
    assert_eq!(device.ack_log().unwrap().ranges(), [(1, n)]);
    assert_eq!(device.unacked(), 0);
    // All: every event the device made is among those the server received,
    // and none was dropped for want of room in the backlog.
    let stats = stats.snapshot();
    assert_eq!((stats.events_sent, stats.events_acked), (n, n));
    assert_eq!(stats.events_skipped, 0);
}
