//! The driver's established-session rules under fuzzing: one connection
//! played from the device's side as an arbitrary [`Script`] of frames.
//!
//! The device's bytes are built by cwp's device side (`DeviceHandshake`,
//! a `DeviceCodec` sealing under the negotiated session key), so the
//! fuzzer's sequences get past authentication and reach the session's
//! rules; `Garbage`, `Replay` and `SkipSeq` break the stream on purpose.
//! The server side is cwp's `ServerHandshake` and `ServerCodec` fed the way
//! the driver's `connection.rs` feeds them, and cwp's `ServerSession`, the
//! rules the driver runs, decides every frame. The store behind it is a
//! model ([`Pipeline`]) whose durability and room the script steers.
//!
//! Upload frames reach the rules, which hand them to the driver's upload
//! slot; that slot needs a disk and the bridge and is not played here.
//!
//! Checked on every step, besides "never panics":
//! - every server answer is a legal established-session frame (`PONG` with
//!   the ping's token, `ACK`, non-fatal `ERROR` about an `EVENT`), and the
//!   device decodes it under its seal;
//! - a session ends exactly as the device's bytes call for: `BYE` with
//!   `NORMAL` for the device's `BYE`, a fatal `ERROR` with the code and the
//!   frame the spec gives (`UNEXPECTED` for a handshake or file frame,
//!   `BAD_TAG` for a replayed or skipped seal sequence, `FRAME_TOO_LARGE`
//!   for a frame beyond `max_payload`), the first such frame on the wire
//!   deciding; a session whose bytes hold none of them does not end (bytes
//!   of `Garbage` make the outcome anything fatal, or nothing); after the
//!   end nothing is handled;
//! - `ACK`s are cumulative (never smaller than an earlier one) and never
//!   beyond what was stored (or was already stored at `WELCOME`);
//! - stored event ids strictly increase, each stored event was admitted,
//!   and no event is stored above the first event refused with `BUSY`
//!   before that one is stored;
//! - the receive buffer never holds more than one header plus
//!   `max_payload`.

use std::cell::Cell;

use arbitrary::Arbitrary;
use bytes::{Bytes, BytesMut};
use cwp::session::{Ending, FileFrame, Step, UploadFrame, Violation, violation_frame};
use cwp::*;

/// One connection, as the fuzzer writes it.
#[derive(Debug, Arbitrary)]
pub struct Script {
    /// `WELCOME.last_event_id`: what the bridge had stored before.
    pub stored_before: u8,
    /// `EVENT_WINDOW` is this, plus one.
    pub window: u8,
    /// `max_payload`: 65,536, 1,024, 256 or 64.
    pub max_payload: u8,
    /// Bytes per read; 0 reads as much as `read_limit` allows.
    pub chunk: u8,
    /// `AUTH` proves the wrong key: the handshake must refuse it.
    pub wrong_mac: bool,
    /// What the device does next, in order.
    pub actions: Vec<Action>,
}

/// An event id relative to the device's last one.
#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum EventId {
    /// The next id.
    Next,
    /// The last id sent again.
    Same,
    /// This far below the last.
    Back(u8),
    /// This far above the last.
    Jump(u8),
    /// The lowest refused id not stored yet (a resend after `BUSY`).
    Resend,
    /// Any id.
    Raw(u64),
}

/// One thing the device (or the pipeline behind the server) does.
#[derive(Debug, Arbitrary)]
pub enum Action {
    /// `EVENT`.
    Event(EventId, u16, Vec<u8>),
    /// `PING`.
    Ping(u64),
    /// `PONG`.
    Pong(u64),
    /// `BYE`.
    Bye(u8),
    /// `HELLO` again.
    Hello,
    /// `AUTH` again.
    Auth,
    /// `UPLOAD_BEGIN`.
    UploadBegin(u8, u64),
    /// `BLOCK`.
    Block(Vec<u8>),
    /// `UPLOAD_END`.
    UploadEnd(u8, u64),
    /// `FILE_ACCEPT` (none was offered).
    FileAccept(u64, u32),
    /// `FILE_ACK` (none was offered).
    FileAck(u64, u8),
    /// A `COMMAND`'s result: an `EVENT` of kind `0xFFFF`.
    CommandResult(EventId, u8),
    /// Raw bytes on the wire.
    Garbage(Vec<u8>),
    /// The previous frame's bytes again (its seal sequence is stale).
    Replay,
    /// A frame sealed but never sent (the next one's sequence is off).
    SkipSeq,
    /// The server reads what has arrived.
    Read,
    /// The pipeline makes this many of the session's pending events durable.
    Durable(u8),
    /// The pipeline is full (`true`) or has room.
    PipelineFull(bool),
}

/// The driver's pipeline and registry entry, as far as the rules see them.
#[derive(Debug, Default)]
pub struct Pipeline {
    durable: Cell<u64>,
    /// Ids handed to the pipeline, not durable yet, in order.
    pending: std::cell::RefCell<std::collections::VecDeque<u64>>,
    full: Cell<bool>,
    /// Permits handed out and not yet used or dropped.
    admitted: std::rc::Rc<Cell<u32>>,
}

/// One event's room, as the driver's permit: counted while it lives.
#[derive(Debug)]
pub struct Permit(std::rc::Rc<Cell<u32>>);

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

impl EventStore for Pipeline {
    type Permit = Permit;

    fn durable_event_id(&self) -> u64 {
        self.durable.get()
    }

    fn pending_events(&self) -> u32 {
        self.pending.borrow().len() as u32
    }

    fn admit(&self, _event: &Event) -> Option<Permit> {
        if self.full.get() {
            return None;
        }
        self.admitted.set(self.admitted.get() + 1);
        Some(Permit(self.admitted.clone()))
    }
}

/// How the device's bytes say the session must end, if they do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expected {
    /// The device's `BYE`: `BYE NORMAL`.
    Bye,
    /// A fatal `ERROR` with this code about this frame (`None`: any frame).
    Fatal(ErrorCode, Option<FrameType>),
    /// After `Garbage`: anything fatal, or nothing.
    Unknown,
}

const SERIAL: &[u8] = b"FUZZ-0001";
const MASTER: [u8; 32] = [7; 32];

fn max_payload(choice: u8) -> u32 {
    [65_536, 1_024, 256, 64][usize::from(choice % 4)]
}

/// The device's end: its codec and what it has sent.
struct Device {
    codec: DeviceCodec,
    wire: Vec<u8>,
    /// The last frame's bytes, for `Replay`.
    last: Vec<u8>,
    last_event_id: u64,
    /// `max_payload` from `WELCOME`.
    max_payload: u32,
    /// A sequence number was sealed and never sent: the next frame fails.
    skipped: bool,
    /// The first ending the bytes sent so far call for.
    expected: Option<Expected>,
}

impl Device {
    fn send(&mut self, frame: &DeviceFrame) {
        let mut out = BytesMut::new();
        self.codec.encode(frame, &mut out);
        let payload = out.len() - HEADER_LEN;
        let expected = if payload > self.max_payload as usize {
            Some(Expected::Fatal(ErrorCode::FRAME_TOO_LARGE, None))
        } else if std::mem::take(&mut self.skipped) {
            Some(Expected::Fatal(ErrorCode::BAD_TAG, None))
        } else {
            match frame {
                DeviceFrame::Bye(_) => Some(Expected::Bye),
                DeviceFrame::Hello(_) | DeviceFrame::Auth(_) | DeviceFrame::FileAccept(_) | DeviceFrame::FileAck(_) => {
                    Some(Expected::Fatal(ErrorCode::UNEXPECTED, Some(frame.frame_type())))
                }
                _ => None,
            }
        };
        self.expect(expected);
        self.last = out.to_vec();
        self.wire.extend_from_slice(&out);
    }

    /// The first ending on the wire decides; later ones are never read.
    fn expect(&mut self, expected: Option<Expected>) {
        if self.expected.is_none() {
            self.expected = expected;
        }
    }

    fn event_id(&self, choice: EventId, checker: &Checker) -> u64 {
        let last = self.last_event_id;
        match choice {
            EventId::Next => last.wrapping_add(1),
            EventId::Same => last,
            EventId::Back(n) => last.saturating_sub(u64::from(n)),
            EventId::Jump(n) => last.saturating_add(u64::from(n)),
            EventId::Resend => checker.first_refused.unwrap_or(last.wrapping_add(1)),
            EventId::Raw(id) => id,
        }
    }
}

/// The server's end, fed as `connection.rs` feeds it.
struct Server {
    codec: ServerCodec,
    rx: BytesMut,
    max_payload: u32,
    /// Bytes of the device's wire already read.
    read: usize,
    chunk: usize,
}

impl Server {
    /// One read: at most what the codec allows, at most `chunk`.
    fn read_from(&mut self, wire: &[u8]) -> bool {
        let mut limit = self.codec.read_limit(self.rx.len());
        if self.chunk > 0 {
            limit = limit.min(self.chunk);
        }
        let n = limit.min(wire.len() - self.read);
        self.rx.extend_from_slice(&wire[self.read..self.read + n]);
        self.read += n;
        let ceiling = HEADER_LEN + self.max_payload as usize;
        assert!(
            self.rx.len() <= ceiling,
            "{} bytes buffered, ceiling {ceiling}",
            self.rx.len()
        );
        n > 0
    }
}

/// What the device has seen of the session, to check the rules against.
#[derive(Debug, Default)]
struct Checker {
    /// Highest `ACK` received.
    last_ack: u64,
    /// Highest id stored, or stored before `WELCOME`.
    highest_stored: u64,
    /// The first `BUSY`-refused id not stored since.
    first_refused: Option<u64>,
    /// Pings sent and not answered, in order.
    pings: std::collections::VecDeque<u64>,
}

impl Checker {
    fn on_ack(&mut self, ack: Ack) {
        assert!(
            ack.event_id >= self.last_ack,
            "ACK {} after ACK {}",
            ack.event_id,
            self.last_ack
        );
        assert!(
            ack.event_id <= self.highest_stored,
            "ACK {} beyond the highest stored {}",
            ack.event_id,
            self.highest_stored
        );
        self.last_ack = ack.event_id;
    }

    /// A frame the session sent while it goes on.
    fn on_answer(&mut self, frame: &ServerFrame, event_id: Option<u64>) {
        match frame {
            ServerFrame::Pong(pong) => {
                assert_eq!(self.pings.pop_front(), Some(pong.token), "PONG without its PING");
            }
            ServerFrame::Ack(ack) => self.on_ack(*ack),
            ServerFrame::Error(error) => {
                assert!(!error.fatal, "a fatal ERROR while the session goes on: {error:?}");
                assert_eq!(error.ref_type, FrameType::EVENT, "{error:?}");
                assert!(event_id.is_some(), "an event ERROR for another frame: {error:?}");
                if error.code == ErrorCode::BUSY
                    && let Some(id) = event_id
                {
                    self.first_refused.get_or_insert(id);
                } else {
                    assert_eq!(error.code, ErrorCode::OUT_OF_ORDER, "{error:?}");
                }
            }
            other => panic!("not an answer of the established session: {other:?}"),
        }
    }
}

/// Plays one connection.
pub fn play(script: Script) {
    let serial = Serial::from_bytes(SERIAL).expect("a valid serial");
    let key = DeviceKey::derive(&MasterKey::from_bytes(MASTER), &serial);
    let max_payload = max_payload(script.max_payload);
    let window = u16::from(script.window) + 1;
    let stored_before = u64::from(script.stored_before);

    // The handshake, unsealed: HELLO, CHALLENGE, AUTH.
    let mut server_handshake = ServerHandshake::default();
    let (device_handshake, hello) =
        DeviceHandshake::start(serial, Str8::truncating("fuzz"), key.clone(), Nonce([1; 16]));
    let Ok(ServerStep::Challenge(challenge)) = server_handshake.receive(hello, || Nonce([2; 16]), |_| None) else {
        panic!("HELLO must be answered with a CHALLENGE");
    };
    let (auth, device_key) = if script.wrong_mac {
        let stranger = DeviceKey::from_bytes([9; 32]);
        let (stranger_handshake, _) =
            DeviceHandshake::start(serial, Str8::truncating("fuzz"), stranger, Nonce([1; 16]));
        stranger_handshake.answer(&challenge)
    } else {
        device_handshake.answer(&challenge)
    };
    let step = server_handshake.receive(auth, || Nonce([3; 16]), |asked| (*asked == serial).then(|| key.clone()));
    let session_key = match step {
        Ok(ServerStep::Authenticated { session_key, .. }) => {
            assert!(!script.wrong_mac, "a wrong mac was accepted");
            session_key
        }
        Err(err) => {
            assert!(script.wrong_mac, "the right mac was refused: {err}");
            assert_eq!(err, HandshakeError::WrongMac);
            assert_eq!(err.code(), ErrorCode::UNAUTHORIZED);
            assert!(err.to_frame().fatal);
            return;
        }
        Ok(other) => panic!("AUTH answered with {other:?}"),
    };
    assert_eq!(
        session_key.as_bytes(),
        device_key.as_bytes(),
        "both ends derive one key"
    );

    // WELCOME, sealed: both ends start sealing.
    let mut server = Server {
        codec: ServerCodec::new(),
        rx: BytesMut::new(),
        max_payload,
        read: 0,
        chunk: usize::from(script.chunk),
    };
    let mut device = Device {
        codec: DeviceCodec::new(),
        wire: Vec::new(),
        last: Vec::new(),
        last_event_id: 0,
        max_payload,
        skipped: false,
        expected: None,
    };
    server.codec.start_sealing(&session_key);
    device.codec.start_sealing(&device_key);
    let mut to_device = BytesMut::new();
    server.codec.encode(
        &ServerFrame::Welcome(Welcome {
            session: SessionId([4; 16]),
            heartbeat_s: 30,
            max_payload,
            event_window: window,
            last_event_id: stored_before,
            server: Str8::truncating("fuzz"),
        }),
        &mut to_device,
    );
    server.codec.set_max_payload(max_payload);
    match device.codec.decode(&mut to_device) {
        Ok(Some(ServerFrame::Welcome(_))) => {}
        other => panic!("the device cannot read WELCOME: {other:?}"),
    }

    let pipeline = Pipeline {
        durable: Cell::new(stored_before),
        ..Pipeline::default()
    };
    let mut rules = ServerSession::new(stored_before, window);
    let mut checker = Checker {
        last_ack: 0,
        highest_stored: stored_before,
        ..Checker::default()
    };
    let mut connection = Connection {
        server,
        to_device,
        window,
        ended: None,
    };

    for action in script.actions {
        match action {
            Action::Event(id, kind, body) => {
                let event_id = device.event_id(id, &checker);
                device.last_event_id = event_id;
                device.send(&DeviceFrame::Event(Event {
                    event_id,
                    time_ms: 0,
                    kind,
                    body: Bytes::from(body),
                }));
            }
            Action::CommandResult(id, status) => {
                let event_id = device.event_id(id, &checker);
                device.last_event_id = event_id;
                let mut body = vec![5; 16];
                body.push(status);
                device.send(&DeviceFrame::Event(Event {
                    event_id,
                    time_ms: 0,
                    kind: 0xFFFF,
                    body: Bytes::from(body),
                }));
            }
            Action::Ping(token) => {
                device.send(&DeviceFrame::Ping(Ping { token }));
                checker.pings.push_back(token);
            }
            Action::Pong(token) => device.send(&DeviceFrame::Pong(Pong { token })),
            Action::Bye(reason) => device.send(&DeviceFrame::Bye(DeviceBye {
                reason: ByeReason(reason),
            })),
            Action::Hello => device.send(&DeviceFrame::Hello(Hello {
                serial,
                firmware: Str8::truncating("again"),
                nonce: Nonce([6; 16]),
            })),
            Action::Auth => device.send(&DeviceFrame::Auth(Auth { mac: AuthMac([8; 32]) })),
            Action::UploadBegin(id, total_size) => device.send(&DeviceFrame::UploadBegin(UploadBegin {
                upload_id: UploadId([id; 16]),
                total_size,
                name: Str8::truncating("fuzz.bin"),
            })),
            Action::Block(data) => device.send(&DeviceFrame::Block(Block {
                data: Bytes::from(data),
            })),
            Action::UploadEnd(id, total_size) => device.send(&DeviceFrame::UploadEnd(UploadEnd {
                upload_id: UploadId([id; 16]),
                total_size,
                sha256: [0; 32],
            })),
            Action::FileAccept(offset, window) => device.send(&DeviceFrame::FileAccept(FileAccept {
                file_id: FileId([1; 16]),
                offset,
                window,
            })),
            Action::FileAck(offset, status) => device.send(&DeviceFrame::FileAck(FileAck {
                file_id: FileId([1; 16]),
                offset,
                status: FileAckStatus(status),
            })),
            Action::Garbage(bytes) => {
                if !bytes.is_empty() {
                    device.expect(Some(Expected::Unknown));
                }
                device.wire.extend_from_slice(&bytes);
            }
            Action::Replay => {
                let last = device.last.clone();
                if !last.is_empty() {
                    // Its sequence number was used already.
                    device.expect(Some(Expected::Fatal(ErrorCode::BAD_TAG, None)));
                }
                device.wire.extend_from_slice(&last);
            }
            Action::SkipSeq => {
                let mut dropped = BytesMut::new();
                device.codec.encode(&DeviceFrame::Ping(Ping { token: 0 }), &mut dropped);
                device.skipped = true;
            }
            Action::Read => connection.read(&mut device, &mut rules, &pipeline, &mut checker),
            Action::Durable(n) => {
                let mut pending = pipeline.pending.borrow_mut();
                for _ in 0..n {
                    let Some(id) = pending.pop_front() else { break };
                    pipeline.durable.set(id);
                }
            }
            Action::PipelineFull(full) => pipeline.full.set(full),
        }
    }
    // The device stops sending; the server reads everything there is.
    connection.read(&mut device, &mut rules, &pipeline, &mut checker);
    check_ending(device.expected, connection.ended.as_ref());
}

/// The session ended as the device's bytes call for.
fn check_ending(expected: Option<Expected>, ended: Option<&Ending>) {
    match (expected, ended) {
        (None, None) | (Some(Expected::Bye), Some(Ending::Bye(ByeReason::NORMAL, 0))) => {}
        (Some(Expected::Unknown), None | Some(Ending::Fatal(_))) => {}
        (Some(Expected::Fatal(code, ref_type)), Some(Ending::Fatal(violation))) => {
            assert_eq!(violation.code(), code, "the session ended on {violation:?}");
            if let Some(ref_type) = ref_type {
                assert_eq!(violation.ref_type(), ref_type, "the session ended on {violation:?}");
            }
            if code == ErrorCode::UNEXPECTED {
                assert!(matches!(violation, Violation::Unexpected { .. }), "{violation:?}");
            }
        }
        (expected, ended) => panic!("the bytes call for {expected:?}, the session ended with {ended:?}"),
    }
}

/// The server's side of the established session.
struct Connection {
    server: Server,
    /// Bytes sent to the device, not yet decoded by it.
    to_device: BytesMut,
    /// `EVENT_WINDOW`.
    window: u16,
    /// How the session ended, once it has.
    ended: Option<Ending>,
}

impl Connection {
    /// Reads and handles everything on the wire, as `connection.rs`'s
    /// `read_and_handle` does, then the loop's `ACK`.
    fn read(&mut self, device: &mut Device, rules: &mut ServerSession, pipeline: &Pipeline, checker: &mut Checker) {
        while self.ended.is_none() && self.server.read_from(&device.wire) {
            loop {
                let frame = match self.server.codec.decode(&mut self.server.rx) {
                    Ok(Some(frame)) => frame,
                    Ok(None) => break,
                    Err(err) => {
                        let ending = rules.on_undecodable(err);
                        self.end(ending, device, rules, pipeline, checker);
                        return;
                    }
                };
                let event_id = match &frame {
                    DeviceFrame::Event(event) => Some(event.event_id),
                    _ => None,
                };
                match rules.on_frame(frame, pipeline) {
                    Step::Nothing
                    | Step::Upload(UploadFrame::Begin(_) | UploadFrame::Block(_) | UploadFrame::End(_)) => {}
                    // This harness offers no file, so a file frame ends the
                    // session as the driver's session loop ends it.
                    Step::File(frame) => {
                        let frame_type = match frame {
                            FileFrame::Accept(_) => FrameType::FILE_ACCEPT,
                            FileFrame::Ack(_) => FrameType::FILE_ACK,
                        };
                        let ending = rules.end(Ending::Fatal(cwp::transfer::no_transfer(frame_type)));
                        self.end(ending, device, rules, pipeline, checker);
                        return;
                    }
                    Step::Send(frame) => {
                        self.send(&frame, device);
                        checker.on_answer(&frame, event_id);
                    }
                    Step::Refuse(refusal) => {
                        let frame = ServerFrame::Error(session::refusal_frame(refusal));
                        self.send(&frame, device);
                        checker.on_answer(&frame, event_id);
                    }
                    Step::Duplicate(ack) => {
                        let id = event_id.expect("a duplicate is an event");
                        assert!(id <= pipeline.durable.get(), "event {id} is not durable yet");
                        self.send(&ServerFrame::Ack(ack), device);
                        checker.on_ack(ack);
                    }
                    Step::Store(event, permit) => {
                        assert_eq!(pipeline.admitted.get(), 1, "one permit per stored event");
                        drop(permit);
                        let id = event.event_id;
                        assert!(
                            id > checker.highest_stored,
                            "event {id} stored after {}",
                            checker.highest_stored
                        );
                        assert!(
                            pipeline.pending.borrow().len() < usize::from(self.window),
                            "stored beyond the window"
                        );
                        if let Some(refused) = checker.first_refused.take() {
                            assert_eq!(id, refused, "event {id} stored before the refused event {refused}");
                        }
                        checker.highest_stored = id;
                        pipeline.pending.borrow_mut().push_back(id);
                    }
                    Step::End(ending) => {
                        self.end(ending, device, rules, pipeline, checker);
                        return;
                    }
                }
                assert_eq!(pipeline.admitted.get(), 0, "an admission without its event");
            }
        }
        if self.ended.is_none()
            && let Some(ack) = rules.ack(pipeline.durable.get(), false)
        {
            self.send(&ServerFrame::Ack(ack), device);
            checker.on_ack(ack);
        }
    }

    /// The session ends: the last frame goes out, and every frame still
    /// on the wire is ignored by the rules.
    fn end(
        &mut self,
        ending: Ending,
        device: &mut Device,
        rules: &mut ServerSession,
        pipeline: &Pipeline,
        checker: &mut Checker,
    ) {
        assert!(rules.has_ended());
        match &ending {
            Ending::Quiet => {}
            Ending::Bye(reason, _) => {
                assert_eq!(*reason, ByeReason::NORMAL);
                if let Some(ack) = rules.ack(pipeline.durable.get(), false) {
                    self.send(&ServerFrame::Ack(ack), device);
                    checker.on_ack(ack);
                }
            }
            Ending::Unauthorized => panic!("the rules never end a session for its key"),
            Ending::Fatal(violation) => {
                let error = violation_frame(violation);
                assert!(error.fatal, "the session ended with a non-fatal ERROR: {error:?}");
                self.send(&ServerFrame::Error(error), device);
            }
        }
        self.ended = Some(ending);
        // Whatever else arrived is never handled.
        self.server.rx.extend_from_slice(&device.wire[self.server.read..]);
        while let Ok(Some(frame)) = self.server.codec.decode(&mut self.server.rx) {
            assert!(
                matches!(rules.on_frame(frame, pipeline), Step::Nothing),
                "a frame handled after the end"
            );
        }
    }

    /// Encodes a server frame; the device must be able to read it.
    fn send(&mut self, frame: &ServerFrame, device: &mut Device) {
        self.server.codec.encode(frame, &mut self.to_device);
        match device.codec.decode(&mut self.to_device) {
            Ok(Some(got)) => assert_eq!(&got, frame, "the device reads another frame"),
            other => panic!("the device cannot read {frame:?}: {other:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script(wrong_mac: bool, actions: Vec<Action>) -> Script {
        Script {
            stored_before: 2,
            window: 1,
            max_payload: 2,
            chunk: 7,
            wrong_mac,
            actions,
        }
    }

    #[test]
    fn a_well_behaved_session_passes_every_check() {
        use Action::*;
        play(script(
            false,
            vec![
                Event(EventId::Raw(1), 1, vec![1]),
                Event(EventId::Next, 1, vec![2]),
                Event(EventId::Next, 1, vec![3]),
                Event(EventId::Next, 1, vec![4]),
                Read,
                Event(EventId::Next, 1, vec![5]),
                Read,
                Durable(1),
                Event(EventId::Resend, 1, vec![5]),
                Ping(9),
                Read,
                PipelineFull(true),
                Durable(2),
                Read,
                Event(EventId::Next, 1, vec![6]),
                Read,
                PipelineFull(false),
                Event(EventId::Resend, 1, vec![6]),
                UploadBegin(1, 3),
                Block(vec![1, 2, 3]),
                UploadEnd(1, 3),
                CommandResult(EventId::Next, 0),
                Bye(0),
                Event(EventId::Next, 1, vec![7]),
            ],
        ));
    }

    #[test]
    fn a_broken_stream_ends_the_session_with_a_fatal_error() {
        use Action::*;
        for breakage in [Garbage(vec![0; 40]), Replay, SkipSeq, Hello, Auth, FileAck(0, 0)] {
            play(script(
                false,
                vec![Ping(1), breakage, Ping(2), Event(EventId::Next, 0, vec![])],
            ));
        }
    }

    #[test]
    #[should_panic(expected = "the bytes call for Some(Bye)")]
    fn a_bye_that_does_not_end_the_session_is_caught() {
        // The control: the player's own check fails a session that the
        // device's BYE did not end (here: the BYE never reaches the
        // server, but the player is told it did).
        check_ending(Some(Expected::Bye), None);
    }

    #[test]
    fn a_wrong_mac_is_refused() {
        play(script(true, vec![Action::Ping(1)]));
    }
}
