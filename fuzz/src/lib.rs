//! The CWP/1 decoder under fuzzing: one connection's receive path, driven by
//! arbitrary bytes. The `decoder` fuzz target calls [`decode_connection`];
//! `examples/seeds.rs` writes [`seeds`] as a starting corpus. The `session`
//! fuzz target plays [`session::Script`]s against the driver's session rules.
//!
//! An input is `[state, chunk, stream…]`:
//!
//! - `state` chooses the receiving end ([`Connection::from_bytes`]):
//!   - bit 0: the role: 0 a server (decodes device frames), 1 a device
//!     (decodes server frames);
//!   - bit 1: sealed under the fixed [`SESSION_KEY`] (a server expects every
//!     frame sealed; a device expects a sealed `WELCOME` or an unsealed
//!     `ERROR` first, as after sending `AUTH`);
//!   - bits 2–3: `max_payload`: 65,536, 1,024, 64 or 9;
//!   - bit 4: fix-up: before feeding, the harness rewrites every whole
//!     frame's crc and, when sealed, its tag, as an honest peer would. A
//!     fuzzer cannot forge an HMAC, and rarely a CRC; without this its
//!     mutations would hardly ever get past the integrity checks to the body
//!     decoders.
//! - `chunk`: bytes delivered per read; 0 reads as much as
//!   `Codec::read_limit` allows.
//! - `stream`: the bytes from the peer.
//!
//! Besides "never panics", the harness asserts the codec's promises: the
//! receive buffer never exceeds one header plus `max_payload`; the codec never
//! waits for bytes it may not read; and every frame it accepts re-encodes to
//! the very body bytes it was decoded from.

pub mod session;

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use cwp::codec::{DeviceRole, Role, ServerRole};
use cwp::*;

/// The fixed session key of the sealed states: bytes 0, 1, …, 31.
pub const SESSION_KEY: [u8; 32] = {
    let mut key = [0u8; 32];
    let mut i = 0;
    while i < 32 {
        key[i] = i as u8;
        i += 1;
    }
    key
};

/// The `max_payload` choices of state bits 2–3: the default, a typical
/// small one, a tiny one, and the smallest that holds a tag and one byte.
const MAX_PAYLOADS: [u32; 4] = [DEFAULT_MAX_PAYLOAD, 1_024, 64, 9];

/// The receiving end of a fuzzed connection, as chosen by an input's first
/// two bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connection {
    /// A server (decodes device frames) or a device (decodes server frames).
    pub server: bool,
    /// Sealed under [`SESSION_KEY`].
    pub sealed: bool,
    /// Index into the `max_payload` choices.
    pub max_payload: u8,
    /// Rewrite crcs and tags before feeding.
    pub fix_up: bool,
    /// Bytes per read, 0 for as many as allowed.
    pub chunk: u8,
}

impl Connection {
    /// Reads the state and chunk bytes (see the crate docs).
    pub fn from_bytes(state: u8, chunk: u8) -> Self {
        Self {
            server: state & 0x01 == 0,
            sealed: state & 0x02 != 0,
            max_payload: (state >> 2) & 0x03,
            fix_up: state & 0x10 != 0,
            chunk,
        }
    }

    /// The two bytes that choose this connection.
    pub fn to_bytes(self) -> [u8; 2] {
        let state = u8::from(!self.server)
            | u8::from(self.sealed) << 1
            | (self.max_payload & 0x03) << 2
            | u8::from(self.fix_up) << 4;
        [state, self.chunk]
    }

    fn max_payload(self) -> u32 {
        MAX_PAYLOADS[usize::from(self.max_payload & 0x03)]
    }

    /// The direction of the frames this end receives.
    fn peer_direction(self) -> Direction {
        if self.server {
            Direction::DeviceToServer
        } else {
            Direction::ServerToDevice
        }
    }
}

/// Feeds one fuzz input to a decoder; panics only if the codec breaks a
/// promise (or panics itself).
pub fn decode_connection(input: &[u8]) {
    let [state, chunk, stream @ ..] = input else {
        return;
    };
    let conn = Connection::from_bytes(*state, *chunk);
    let mut stream = stream.to_vec();
    if conn.fix_up {
        fix_up(&mut stream, conn);
    }
    if conn.server {
        receive::<ServerRole, DeviceRole>(codec(conn), &stream, conn);
    } else {
        receive::<DeviceRole, ServerRole>(codec(conn), &stream, conn);
    }
}

/// Starts sealing on either codec (each role has its own `start_sealing`).
trait StartSealing {
    fn start_sealing_with(&mut self, key: &SessionKey);
}

impl StartSealing for ServerCodec {
    fn start_sealing_with(&mut self, key: &SessionKey) {
        self.start_sealing(key);
    }
}

impl StartSealing for DeviceCodec {
    fn start_sealing_with(&mut self, key: &SessionKey) {
        self.start_sealing(key);
    }
}

fn codec<R: Role>(conn: Connection) -> Codec<R>
where
    Codec<R>: StartSealing,
{
    let mut codec = Codec::<R>::new();
    codec.set_max_payload(conn.max_payload());
    if conn.sealed {
        codec.start_sealing_with(&SessionKey::from_bytes(SESSION_KEY));
    }
    codec
}

/// Rewrites the crc and (sealed) the tag of every whole frame in `stream`
/// as the peer would have computed them, trusting each header's length.
fn fix_up(stream: &mut [u8], conn: Connection) {
    let mut peer_seal = conn
        .sealed
        .then(|| Seal::new(&SessionKey::from_bytes(SESSION_KEY), conn.peer_direction()));
    // CWP/1 §1 Tags: a device that awaits WELCOME takes an unsealed ERROR.
    let mut awaiting_welcome = conn.sealed && !conn.server;
    let mut at = 0;
    while stream.len() - at >= HEADER_LEN {
        let length = u32::from_be_bytes([stream[at + 4], stream[at + 5], stream[at + 6], stream[at + 7]]) as usize;
        let end = at + HEADER_LEN + length;
        if end > stream.len() {
            break;
        }
        let frame = &mut stream[at..end];
        let unsealed_error = awaiting_welcome && frame[3] == FrameType::ERROR.0;
        if let Some(seal) = peer_seal.as_mut().filter(|_| length >= TAG_LEN && !unsealed_error) {
            let header: [u8; 8] = [
                frame[0], frame[1], frame[2], frame[3], frame[4], frame[5], frame[6], frame[7],
            ];
            let body_end = frame.len() - TAG_LEN;
            let tag = seal.seal(&header, &frame[HEADER_LEN..body_end]);
            frame[body_end..].copy_from_slice(&tag);
            awaiting_welcome = false;
        }
        let crc = crc32c::crc32c_append(crc32c::crc32c(&frame[..8]), &frame[HEADER_LEN..]);
        frame[8..HEADER_LEN].copy_from_slice(&crc.to_be_bytes());
        at = end;
    }
}

/// Reads `stream` the way a connection must (never more than
/// `read_limit`), decoding until the codec fails or the stream runs dry.
/// `P` is the peer's role, used to re-encode what was decoded.
fn receive<R, P>(mut codec: Codec<R>, stream: &[u8], conn: Connection)
where
    R: Role,
    P: Role<Outbound = R::Inbound>,
{
    let ceiling = HEADER_LEN + codec.max_payload() as usize;
    let mut buf = BytesMut::new();
    let mut read = 0;
    loop {
        loop {
            let before = Bytes::copy_from_slice(&buf);
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => assert_canonical::<P>(&frame, &before, buf.len()),
                Ok(None) => break,
                Err(error) => {
                    black_box(error.code());
                    return;
                }
            }
        }
        let allowed = codec.read_limit(buf.len());
        assert!(allowed > 0, "decode waits on a full buffer of {} bytes", buf.len());
        assert!(codec.bytes_needed(&buf) <= allowed, "needs more than it may read");
        if read == stream.len() {
            return;
        }
        let chunk = if conn.chunk == 0 {
            allowed
        } else {
            usize::from(conn.chunk)
        };
        let take = chunk.min(allowed).min(stream.len() - read);
        buf.extend_from_slice(&stream[read..read + take]);
        read += take;
        assert!(buf.len() <= ceiling, "{} bytes buffered, ceiling {ceiling}", buf.len());
    }
}

/// Every field encoding of CWP/1 is canonical, so a frame the decoder
/// accepted from `before[..before.len() - left]` must re-encode to the same
/// type and body (the received payload may add an 8-byte tag).
fn assert_canonical<P: Role>(frame: &P::Outbound, before: &[u8], left: usize) {
    let consumed = &before[..before.len() - left];
    let mut again = BytesMut::new();
    Codec::<P>::new().encode(frame, &mut again);
    assert_eq!(again[3], consumed[3], "type of {:?}", frame.frame_type());
    let body = &again[HEADER_LEN..];
    let payload = &consumed[HEADER_LEN..];
    assert!(
        payload.len() == body.len() || payload.len() == body.len() + TAG_LEN,
        "{:?}: payload of {} bytes, body re-encodes to {}",
        frame.frame_type(),
        payload.len(),
        body.len()
    );
    assert_eq!(
        &payload[..body.len()],
        body,
        "{:?} re-encodes differently",
        frame.frame_type()
    );
}

// ---------------------------------------------------------------------------
// Seeds.

fn str8(text: &str) -> Str8 {
    Str8::new(text).expect("seed text is short")
}

/// One of every device frame, as a session would send them.
fn device_frames() -> Vec<DeviceFrame> {
    let serial: Serial = "CTRL-0042".parse().expect("a valid serial");
    let result = CommandResult {
        command_id: CommandId([0x11; 16]),
        status: CommandStatus::OK,
        data: Bytes::from_static(b"done"),
    };
    vec![
        DeviceFrame::Hello(Hello {
            serial,
            firmware: str8("fw-2.1.0"),
            nonce: Nonce([0x5A; 16]),
        }),
        DeviceFrame::Auth(Auth {
            mac: AuthMac([0x8E; 32]),
        }),
        DeviceFrame::Event(Event {
            event_id: 42,
            time_ms: 1_767_225_600_000,
            kind: 7,
            body: Bytes::from_static(br#"{"t":21.5}"#),
        }),
        DeviceFrame::Event(Event {
            event_id: 43,
            time_ms: 0,
            kind: Event::COMMAND_RESULT_KIND,
            body: result.encode(),
        }),
        DeviceFrame::UploadBegin(UploadBegin {
            upload_id: UploadId([0x22; 16]),
            total_size: 1004,
            name: str8("log.bin"),
        }),
        DeviceFrame::Block(Block {
            data: (0..1004u32).map(|i| (i % 251) as u8).collect(),
        }),
        DeviceFrame::UploadEnd(UploadEnd {
            upload_id: UploadId([0x22; 16]),
            total_size: 1004,
            sha256: [0x88; 32],
        }),
        DeviceFrame::FileAccept(FileAccept {
            file_id: FileId([0x33; 16]),
            offset: 0,
            window: 262_144,
        }),
        DeviceFrame::FileAck(FileAck {
            file_id: FileId([0x33; 16]),
            offset: 4,
            status: FileAckStatus::OK,
        }),
        DeviceFrame::Ping(Ping { token: 7 }),
        DeviceFrame::Pong(Pong { token: 8 }),
        DeviceFrame::Bye(DeviceBye {
            reason: ByeReason::NORMAL,
        }),
    ]
}

/// One of every server frame, `WELCOME` first (server frame 0 of a
/// sealed session).
fn server_frames() -> Vec<ServerFrame> {
    vec![
        ServerFrame::Welcome(Welcome {
            session: SessionId([0xAB; 16]),
            heartbeat_s: 30,
            max_payload: 65_536,
            event_window: 256,
            last_event_id: 41,
            server: str8("driver-5001"),
        }),
        ServerFrame::Challenge(Challenge {
            nonce: Nonce([0xF0; 16]),
        }),
        ServerFrame::Ack(Ack { event_id: 42 }),
        ServerFrame::UploadStatus(UploadStatus {
            upload_id: UploadId([0x22; 16]),
            durable_offset: 0,
        }),
        ServerFrame::UploadDone(UploadDone {
            upload_id: UploadId([0x22; 16]),
            size: 4,
            status: UploadOutcome::OK,
        }),
        ServerFrame::Command(Command {
            command_id: CommandId([0x11; 16]),
            name: str8("reboot"),
            body: Bytes::from_static(br#"{"delay_s":5}"#),
        }),
        ServerFrame::FileOffer(FileOffer {
            file_id: FileId([0x33; 16]),
            size: 1_048_576,
            sha256: [0x44; 32],
            name: str8("fw-2.2.0.bin"),
        }),
        ServerFrame::FileChunk(FileChunk {
            data: Bytes::from_static(b"\x7fELF"),
        }),
        ServerFrame::Ping(Ping { token: 9 }),
        ServerFrame::Pong(Pong { token: 7 }),
        ServerFrame::Bye(ServerBye {
            reason: ByeReason::DRAINING,
            reconnect_after_ms: 250,
        }),
        ServerFrame::Error(ErrorFrame::new(
            ErrorCode::OUT_OF_ORDER,
            FrameType::EVENT,
            "event id 42 <= 43",
        )),
    ]
}

/// Encodes `frames` as `tx` sends them, sealed under [`SESSION_KEY`] if
/// `sealed`.
fn encode_all<T: Role>(mut tx: Codec<T>, frames: &[T::Outbound], sealed: bool) -> Vec<u8>
where
    Codec<T>: StartSealing,
{
    if sealed {
        tx.start_sealing_with(&SessionKey::from_bytes(SESSION_KEY));
    }
    let mut wire = BytesMut::new();
    for frame in frames {
        tx.encode(frame, &mut wire);
    }
    wire.to_vec()
}

/// A starting corpus: for each role, sealed or not, a whole valid session
/// (every frame of the direction, read whole, in 1-byte and in 100-byte
/// reads), and every frame on its own. Each seed is named for the files it
/// goes in.
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let mut seeds = Vec::new();
    for server in [true, false] {
        for sealed in [false, true] {
            let frames: Vec<Vec<u8>> = if server {
                device_frames()
                    .iter()
                    .map(|f| encode_all(DeviceCodec::new(), std::slice::from_ref(f), false))
                    .collect()
            } else {
                server_frames()
                    .iter()
                    .map(|f| encode_all(ServerCodec::new(), std::slice::from_ref(f), false))
                    .collect()
            };
            let session = if server {
                encode_all(DeviceCodec::new(), &device_frames(), sealed)
            } else {
                encode_all(ServerCodec::new(), &server_frames(), sealed)
            };
            let role = if server { "server" } else { "device" };
            let sealing = if sealed { "sealed" } else { "unsealed" };
            for (chunk, fix_up) in [(0, false), (1, false), (100, true)] {
                let conn = Connection {
                    server,
                    sealed,
                    max_payload: 0,
                    fix_up,
                    chunk,
                };
                let mut seed = conn.to_bytes().to_vec();
                seed.extend_from_slice(&session);
                seeds.push((format!("{role}-{sealing}-session-chunk{chunk}"), seed));
            }
            // Single frames: unsealed as they are; sealed ones get their tag
            // from the fix-up (each would be frame 0 of its session), except
            // the ERROR a device takes unsealed before WELCOME.
            for (i, frame) in frames.iter().enumerate() {
                let tagged = sealed && (server || frame[3] != FrameType::ERROR.0);
                let conn = Connection {
                    server,
                    sealed,
                    max_payload: 0,
                    fix_up: sealed,
                    chunk: 0,
                };
                let mut seed = conn.to_bytes().to_vec();
                seed.extend_from_slice(frame);
                if tagged {
                    seed.extend_from_slice(&[0; TAG_LEN]);
                    let length = (frame.len() - HEADER_LEN + TAG_LEN) as u32;
                    seed[2 + 4..2 + 8].copy_from_slice(&length.to_be_bytes());
                }
                seeds.push((format!("{role}-{sealing}-frame{i:02}-type{:02x}", frame[3]), seed));
            }
        }
    }
    seeds
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_bytes_round_trip() {
        for state in 0..=0x1F {
            let conn = Connection::from_bytes(state, 3);
            assert_eq!(conn.to_bytes(), [state, 3]);
        }
    }

    /// Every seed is a valid session: the decoder takes all of it.
    #[test]
    fn every_seed_decodes_to_the_end() {
        for (name, seed) in seeds() {
            let conn = Connection::from_bytes(seed[0], seed[1]);
            let mut stream = seed[2..].to_vec();
            if conn.fix_up {
                fix_up(&mut stream, conn);
            }
            let mut buf = BytesMut::from(&stream[..]);
            let frames = if conn.server {
                let mut codec = codec::<ServerRole>(conn);
                std::iter::from_fn(|| codec.decode(&mut buf).unwrap_or_else(|e| panic!("{name}: {e}"))).count()
            } else {
                let mut codec = codec::<DeviceRole>(conn);
                std::iter::from_fn(|| codec.decode(&mut buf).unwrap_or_else(|e| panic!("{name}: {e}"))).count()
            };
            assert!(
                frames > 0 && buf.is_empty(),
                "{name}: {frames} frames, {} bytes left",
                buf.len()
            );
            decode_connection(&seed);
        }
    }
}
