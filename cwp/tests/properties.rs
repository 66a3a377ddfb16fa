//! CWP/1 codec properties, checked on arbitrary frames and arbitrary bytes.
//!
//! Each property restates a sentence of the spec:
//!
//! - §1 Framing, §3 Frames: every frame of either direction encodes to
//!   `magic, version, type, length, crc, payload` and decodes back to itself,
//!   consuming exactly its bytes.
//! - §1 Tags: sealing adds 8 bytes of `HMAC-SHA256(session_key, dir || seq ||
//!   header[0..8] || body)` and changes nothing else; sequence numbers advance
//!   by one per frame in each direction.
//! - TCP delivers a byte stream, not frames: however a stream is cut, the
//!   receiver decodes the same frames (and a stream that goes bad fails with
//!   the same error at the same place).
//! - §1 "the receiver checks this from the header alone, before it reads or
//!   buffers the payload": whatever arrives, a receiver that reads at most
//!   [`Codec::read_limit`] never holds more than one header plus
//!   `max_payload`, never waits for a frame it could not accept, and never
//!   panics.
//!
//! The tags and crcs expected here are computed from the spec's formulas with
//! the `hmac`, `sha2` and `crc32c` crates directly, not with the codec.

use bytes::{Bytes, BytesMut};
use cwp::codec::Role;
use cwp::*;
use hmac::{Hmac, KeyInit, Mac};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use sha2::Sha256;

// ---------------------------------------------------------------------------
// The spec's formulas, written out independently of the codec.

/// CWP/1 §1: CRC-32C over header bytes 0..8 followed by the payload.
fn spec_crc(header8: &[u8], payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(header8), payload)
}

/// CWP/1 §1 Tags: the first 8 bytes of
/// `HMAC-SHA256(session_key, dir || seq || header[0..8] || body)`.
fn spec_tag(key: &SessionKey, dir: Direction, seq: u64, header8: &[u8], body: &[u8]) -> [u8; TAG_LEN] {
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).expect("HMAC takes any key length");
    mac.update(&[dir as u8]);
    mac.update(&seq.to_be_bytes());
    mac.update(header8);
    mac.update(body);
    let full = mac.finalize().into_bytes();
    full[..TAG_LEN].try_into().expect("HMAC-SHA256 is 32 bytes")
}

/// A frame assembled by hand: header, body, the tag if `sealed_by` names a
/// sender, the crc patched in last. `length` overrides the header's length
/// field (a lying header); by default it counts body and tag.
fn spec_frame(
    frame_type: u8,
    body: &[u8],
    length: Option<u32>,
    sealed_by: Option<(&SessionKey, Direction, u64)>,
) -> Vec<u8> {
    let tag_len = if sealed_by.is_some() { TAG_LEN } else { 0 };
    let length = length.unwrap_or((body.len() + tag_len) as u32);
    let mut frame = vec![0x43, 0x57, 0x01, frame_type];
    frame.extend_from_slice(&length.to_be_bytes());
    frame.extend_from_slice(&[0; 4]);
    frame.extend_from_slice(body);
    if let Some((key, dir, seq)) = sealed_by {
        let tag = spec_tag(key, dir, seq, &frame[..8], body);
        frame.extend_from_slice(&tag);
    }
    let crc = spec_crc(&frame[..8], &frame[HEADER_LEN..]);
    frame[8..HEADER_LEN].copy_from_slice(&crc.to_be_bytes());
    frame
}

/// Checks the §1 header of one encoded frame: `CW`, version 1, the type,
/// a length that counts the whole payload, and the crc.
fn assert_framing(wire: &[u8], frame_type: FrameType) -> Result<(), TestCaseError> {
    prop_assert!(wire.len() >= HEADER_LEN);
    prop_assert_eq!(&wire[..4], &[0x43, 0x57, 0x01, frame_type.0][..]);
    let length = u32::from_be_bytes(wire[4..8].try_into().expect("4 bytes"));
    prop_assert_eq!(length as usize, wire.len() - HEADER_LEN, "length counts the payload");
    let crc = u32::from_be_bytes(wire[8..12].try_into().expect("4 bytes"));
    prop_assert_eq!(crc, spec_crc(&wire[..8], &wire[HEADER_LEN..]));
    Ok(())
}

// ---------------------------------------------------------------------------
// Both roles, generically: a sender `S` whose frames a receiver `R` decodes.

/// Starts sealing on either codec; the crate gives each role its own
/// `start_sealing` because they differ in what they expect next.
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

/// What a receiver made of a byte stream: the frames, then how it ended.
#[derive(Debug, PartialEq)]
struct Outcome<F> {
    frames: Vec<F>,
    end: End,
}

#[derive(Debug, PartialEq)]
enum End {
    /// Waiting for the rest of a frame: these bytes are buffered.
    Waiting(Bytes),
    /// Failed; every decode error ends the connection, so what was left in
    /// the buffer (which depends on how much had arrived) no longer matters.
    Failed(DecodeError),
}

/// Feeds `stream` to `codec` cut at `cuts`, decoding after every chunk until
/// the codec asks for more or fails (every decode error is fatal).
fn receive<R: Role>(codec: &mut Codec<R>, stream: &[u8], cuts: &[usize]) -> Outcome<R::Inbound> {
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut start = 0;
    for end in cuts.iter().copied().chain([stream.len()]) {
        buf.extend_from_slice(&stream[start..end]);
        start = end;
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(error) => {
                    return Outcome {
                        frames,
                        end: End::Failed(error),
                    };
                }
            }
        }
    }
    Outcome {
        frames,
        end: End::Waiting(buf.freeze()),
    }
}

/// Sorted, distinct cut points inside a stream of `len` bytes.
fn cut_points(cuts: &[Index], len: usize) -> Vec<usize> {
    if len == 0 {
        return Vec::new();
    }
    let mut points: Vec<usize> = cuts.iter().map(|cut| cut.index(len)).collect();
    points.sort_unstable();
    points.dedup();
    points
}

/// One frame sent by `tx` and received by `rx`: checks the bytes on the
/// wire against the spec and the decoded frame against the original. With
/// `key`, both codecs are sealed and `seq` is the sender's sequence number.
fn send<S, R>(
    tx: &mut Codec<S>,
    rx: &mut Codec<R>,
    frame: &S::Outbound,
    sealed: Option<(&SessionKey, u64)>,
) -> Result<(), TestCaseError>
where
    S: Role,
    R: Role<Inbound = S::Outbound>,
    S::Outbound: Clone + PartialEq + std::fmt::Debug,
{
    let mut wire = BytesMut::new();
    tx.encode(frame, &mut wire);
    assert_framing(&wire, frame.frame_type())?;

    if let Some((key, seq)) = sealed {
        // §1 Tags: sealing appends the tag and changes nothing but length and crc.
        let mut unsealed = BytesMut::new();
        Codec::<S>::new().encode(frame, &mut unsealed);
        let body = &unsealed[HEADER_LEN..];
        prop_assert_eq!(wire.len(), unsealed.len() + TAG_LEN);
        prop_assert_eq!(&wire[..4], &unsealed[..4]);
        prop_assert_eq!(&wire[HEADER_LEN..wire.len() - TAG_LEN], body);
        let tag = spec_tag(key, S::TX, seq, &wire[..8], body);
        prop_assert_eq!(
            &wire[wire.len() - TAG_LEN..],
            &tag[..],
            "tag of frame {} sent {:?}",
            seq,
            S::TX
        );
        prop_assert_eq!(tx.seal_state().map(Seal::tx_seq), Some(seq + 1));
    }

    let mut received = wire;
    prop_assert_eq!(rx.decode(&mut received), Ok(Some(frame.clone())));
    prop_assert!(received.is_empty(), "decode consumes exactly one frame");
    if let Some((_, seq)) = sealed {
        prop_assert_eq!(rx.seal_state().map(Seal::rx_seq), Some(seq + 1));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Arbitrary field values (CWP/1 §1 field encodings).

fn id16() -> impl Strategy<Value = [u8; 16]> {
    any::<[u8; 16]>()
}

/// `str8`: any UTF-8 text of 0–255 bytes; empty and exactly 255 bytes are
/// drawn on purpose, as is multi-byte text cut close to the limit.
fn str8() -> impl Strategy<Value = Str8> {
    prop_oneof![
        4 => "\\PC{0,40}".prop_map(|text| Str8::new(text).expect("40 chars are at most 160 bytes")),
        1 => Just(Str8::default()),
        1 => "[ -~]{255}".prop_map(|text| Str8::new(text).expect("255 ASCII bytes")),
        1 => "\\PC{64,255}".prop_map(|text| Str8::truncating(&text)),
    ]
}

/// §2: 1–32 bytes of `[A-Za-z0-9._-]`.
fn serial() -> impl Strategy<Value = Serial> {
    "[A-Za-z0-9._-]{1,32}".prop_map(|text| text.parse().expect("the regex is the serial alphabet"))
}

/// `rest` that must hold at least one byte (`BLOCK`, `FILE_CHUNK`); the
/// firmware's 1,004-byte block is drawn on purpose.
fn data() -> impl Strategy<Value = Bytes> {
    prop_oneof![
        3 => vec(any::<u8>(), 1..64),
        1 => vec(any::<u8>(), 1004),
        1 => vec(any::<u8>(), 1..4096),
    ]
    .prop_map(Bytes::from)
}

/// `rest`: any remaining bytes, none included.
fn rest() -> impl Strategy<Value = Bytes> {
    prop_oneof![1 => Just(Bytes::new()), 3 => data()]
}

// ---------------------------------------------------------------------------
// Arbitrary frames: every variant of both directions (CWP/1 §3).

fn device_frame() -> impl Strategy<Value = DeviceFrame> {
    prop_oneof![
        (serial(), str8(), id16()).prop_map(|(serial, firmware, nonce)| DeviceFrame::Hello(Hello {
            serial,
            firmware,
            nonce: Nonce(nonce),
        })),
        any::<[u8; 32]>().prop_map(|mac| DeviceFrame::Auth(Auth { mac: AuthMac(mac) })),
        (any::<u64>(), any::<u64>(), any::<u16>(), rest()).prop_map(|(event_id, time_ms, kind, body)| {
            DeviceFrame::Event(Event {
                event_id,
                time_ms,
                kind,
                body,
            })
        }),
        (id16(), any::<u64>(), str8()).prop_map(|(id, total_size, name)| DeviceFrame::UploadBegin(UploadBegin {
            upload_id: UploadId(id),
            total_size,
            name,
        })),
        data().prop_map(|data| DeviceFrame::Block(Block { data })),
        (id16(), any::<u64>(), any::<[u8; 32]>()).prop_map(|(id, total_size, sha256)| {
            DeviceFrame::UploadEnd(UploadEnd {
                upload_id: UploadId(id),
                total_size,
                sha256,
            })
        }),
        (id16(), any::<u64>(), any::<u32>()).prop_map(|(id, offset, window)| DeviceFrame::FileAccept(FileAccept {
            file_id: FileId(id),
            offset,
            window,
        })),
        (id16(), any::<u64>(), any::<u8>()).prop_map(|(id, offset, status)| DeviceFrame::FileAck(FileAck {
            file_id: FileId(id),
            offset,
            status: FileAckStatus(status),
        })),
        any::<u64>().prop_map(|token| DeviceFrame::Ping(Ping { token })),
        any::<u64>().prop_map(|token| DeviceFrame::Pong(Pong { token })),
        any::<u8>().prop_map(|reason| DeviceFrame::Bye(DeviceBye {
            reason: ByeReason(reason),
        })),
    ]
}

fn welcome() -> impl Strategy<Value = ServerFrame> {
    (id16(), any::<u16>(), any::<u32>(), any::<u16>(), any::<u64>(), str8()).prop_map(
        |(session, heartbeat_s, max_payload, event_window, last_event_id, server)| {
            ServerFrame::Welcome(Welcome {
                session: SessionId(session),
                heartbeat_s,
                max_payload,
                event_window,
                last_event_id,
                server,
            })
        },
    )
}

fn server_frame() -> impl Strategy<Value = ServerFrame> {
    prop_oneof![
        id16().prop_map(|nonce| ServerFrame::Challenge(Challenge { nonce: Nonce(nonce) })),
        welcome(),
        any::<u64>().prop_map(|event_id| ServerFrame::Ack(Ack { event_id })),
        (id16(), any::<u64>()).prop_map(|(id, durable_offset)| ServerFrame::UploadStatus(UploadStatus {
            upload_id: UploadId(id),
            durable_offset,
        })),
        (id16(), any::<u64>(), any::<u8>()).prop_map(|(id, size, status)| ServerFrame::UploadDone(UploadDone {
            upload_id: UploadId(id),
            size,
            status: UploadOutcome(status),
        })),
        (id16(), str8(), rest()).prop_map(|(id, name, body)| ServerFrame::Command(Command {
            command_id: CommandId(id),
            name,
            body,
        })),
        (id16(), any::<u64>(), any::<[u8; 32]>(), str8()).prop_map(|(id, size, sha256, name)| {
            ServerFrame::FileOffer(FileOffer {
                file_id: FileId(id),
                size,
                sha256,
                name,
            })
        }),
        data().prop_map(|data| ServerFrame::FileChunk(FileChunk { data })),
        any::<u64>().prop_map(|token| ServerFrame::Ping(Ping { token })),
        any::<u64>().prop_map(|token| ServerFrame::Pong(Pong { token })),
        (any::<u8>(), any::<u32>()).prop_map(|(reason, reconnect_after_ms)| ServerFrame::Bye(ServerBye {
            reason: ByeReason(reason),
            reconnect_after_ms,
        })),
        (any::<u16>(), any::<bool>(), any::<u8>(), str8()).prop_map(|(code, fatal, ref_type, message)| {
            ServerFrame::Error(ErrorFrame {
                code: ErrorCode(code),
                fatal,
                ref_type: FrameType(ref_type),
                message,
            })
        }),
    ]
}

/// One frame of a session, in whichever direction it travels.
#[derive(Debug, Clone)]
enum Sent {
    ByDevice(DeviceFrame),
    ByServer(ServerFrame),
}

fn sent() -> impl Strategy<Value = Sent> {
    prop_oneof![
        device_frame().prop_map(Sent::ByDevice),
        server_frame().prop_map(Sent::ByServer)
    ]
}

fn session_key() -> impl Strategy<Value = SessionKey> {
    any::<[u8; 32]>().prop_map(SessionKey::from_bytes)
}

// ---------------------------------------------------------------------------
// Round trips.

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// §1, §3: before the handshake nothing is sealed; every device frame
    /// decodes on the server to itself.
    #[test]
    fn every_device_frame_round_trips_unsealed(frame in device_frame()) {
        send(&mut DeviceCodec::new(), &mut ServerCodec::new(), &frame, None)?;
    }

    /// §1, §3: every server frame decodes on the device to itself.
    #[test]
    fn every_server_frame_round_trips_unsealed(frame in server_frame()) {
        send(&mut ServerCodec::new(), &mut DeviceCodec::new(), &frame, None)?;
    }

    /// §1 Tags, §2: from `WELCOME` (server frame 0) on, every frame in both
    /// directions is sealed under the session key with its own implicit
    /// sequence number, and still decodes to itself.
    #[test]
    fn a_sealed_session_round_trips_every_frame_in_both_directions(
        key in session_key(),
        welcome in welcome(),
        session in vec(sent(), 0..24),
    ) {
        let mut server = ServerCodec::new();
        let mut device = DeviceCodec::new();
        server.start_sealing(&key);
        device.start_sealing(&key);

        let (mut server_seq, mut device_seq) = (0, 0);
        for frame in std::iter::once(Sent::ByServer(welcome)).chain(session) {
            match frame {
                Sent::ByServer(frame) => {
                    send(&mut server, &mut device, &frame, Some((&key, server_seq)))?;
                    server_seq += 1;
                }
                Sent::ByDevice(frame) => {
                    send(&mut device, &mut server, &frame, Some((&key, device_seq)))?;
                    device_seq += 1;
                }
            }
        }
    }

    /// A `FILE_CHUNK` written in place (a transfer reads its file straight
    /// into the send buffer) is the very frame `encode` gives for the same
    /// data, sealed or not, with the same sequence number; a fill that
    /// fails leaves the buffer as it was and spends no sequence number, so
    /// the frame after it still verifies.
    #[test]
    fn a_file_chunk_written_in_place_is_the_encoded_frame_and_a_failed_fill_costs_nothing(
        key in proptest::option::of(session_key()),
        chunks in vec(data(), 1..6),
        fail_at in any::<Index>(),
    ) {
        let (mut by_frame, mut in_place) = (ServerCodec::new(), ServerCodec::new());
        if let Some(key) = &key {
            by_frame.start_sealing(key);
            in_place.start_sealing(key);
        }
        let fail_at = fail_at.index(chunks.len());
        let (mut expected, mut wire) = (BytesMut::new(), BytesMut::from(&b"queued before"[..]));
        for (n, chunk) in chunks.iter().enumerate() {
            if n == fail_at {
                let before = wire.clone();
                let failed = in_place.encode_file_chunk_with(chunk.len(), &mut wire, |_| Err("the file shrank"));
                prop_assert_eq!(failed, Err("the file shrank"));
                prop_assert_eq!(&wire, &before, "a failed fill leaves the buffer as it was");
            }
            by_frame.encode(&ServerFrame::FileChunk(FileChunk { data: chunk.clone() }), &mut expected);
            in_place
                .encode_file_chunk_with(chunk.len(), &mut wire, |place: &mut [u8]| {
                    place.copy_from_slice(chunk);
                    Ok::<(), ()>(())
                })
                .unwrap();
        }
        prop_assert_eq!(&wire[b"queued before".len()..], &expected[..]);
    }
}

// ---------------------------------------------------------------------------
// Streams cut anywhere.

/// Encodes `frames` back to back with `tx` (sealed under `key` if given),
/// optionally flips one byte, then checks that `new_rx` receivers fed the
/// stream whole and cut at `cuts` agree; without a flipped byte they must
/// also yield exactly `frames`.
fn same_frames_however_cut<S, R>(
    mut tx: Codec<S>,
    mut new_rx: impl FnMut() -> Codec<R>,
    frames: &[S::Outbound],
    cuts: &[Index],
    flip: Option<(Index, u8)>,
) -> Result<(), TestCaseError>
where
    S: Role,
    R: Role<Inbound = S::Outbound>,
    S::Outbound: Clone + PartialEq + std::fmt::Debug,
{
    let mut stream = BytesMut::new();
    for frame in frames {
        tx.encode(frame, &mut stream);
    }
    if let Some((at, mask)) = flip {
        let at = at.index(stream.len());
        stream[at] ^= mask;
    }

    let whole = receive(&mut new_rx(), &stream, &[]);
    if flip.is_none() {
        prop_assert_eq!(&whole.frames, frames);
        prop_assert_eq!(&whole.end, &End::Waiting(Bytes::new()));
    }
    let cut = receive(&mut new_rx(), &stream, &cut_points(cuts, stream.len()));
    prop_assert_eq!(cut, whole);
    Ok(())
}

/// A sender, and a maker of fresh receivers (receive sequence 0), all
/// sealed under `key` if given.
fn sender_and_receivers<S, R>(key: Option<&SessionKey>) -> (Codec<S>, impl FnMut() -> Codec<R>)
where
    S: Role,
    R: Role,
    Codec<S>: StartSealing,
    Codec<R>: StartSealing,
{
    let mut tx = Codec::<S>::new();
    if let Some(key) = key {
        tx.start_sealing_with(key);
    }
    let key = key.cloned();
    let new_rx = move || {
        let mut rx = Codec::<R>::new();
        if let Some(key) = &key {
            rx.start_sealing_with(key);
        }
        rx
    };
    (tx, new_rx)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// A device's stream reaches the server in arbitrary pieces (TCP keeps
    /// order, not boundaries): the server decodes the same frames, and a
    /// stream with a corrupted byte fails the same way, however it is cut.
    #[test]
    fn a_device_stream_decodes_the_same_however_it_is_cut(
        key in proptest::option::of(session_key()),
        frames in vec(device_frame(), 1..12),
        cuts in vec(any::<Index>(), 0..24),
        flip in proptest::option::weighted(0.25, (any::<Index>(), 1..=u8::MAX)),
    ) {
        let (tx, new_rx) = sender_and_receivers::<cwp::codec::DeviceRole, cwp::codec::ServerRole>(key.as_ref());
        same_frames_however_cut(tx, new_rx, &frames, &cuts, flip)?;
    }

    /// The same for a server's stream to the device; a sealed one starts, as
    /// the spec requires, with `WELCOME`.
    #[test]
    fn a_server_stream_decodes_the_same_however_it_is_cut(
        key in proptest::option::of(session_key()),
        welcome in welcome(),
        frames in vec(server_frame(), 0..12),
        cuts in vec(any::<Index>(), 0..24),
        flip in proptest::option::weighted(0.25, (any::<Index>(), 1..=u8::MAX)),
    ) {
        let frames: Vec<ServerFrame> = std::iter::once(welcome).chain(frames).collect();
        let (tx, new_rx) = sender_and_receivers::<cwp::codec::ServerRole, cwp::codec::DeviceRole>(key.as_ref());
        same_frames_however_cut(tx, new_rx, &frames, &cuts, flip)?;
    }
}

// ---------------------------------------------------------------------------
// Hostile bytes.

/// The receiving end under test: its role, whether it is sealed, and its
/// `max_payload`.
#[derive(Debug, Clone)]
struct Receiver {
    server: bool,
    key: Option<SessionKey>,
    max_payload: u32,
}

fn receiver() -> impl Strategy<Value = Receiver> {
    let max_payload = prop_oneof![3 => Just(DEFAULT_MAX_PAYLOAD), 1 => 0..64u32, 1 => 64..4096u32];
    (any::<bool>(), proptest::option::of(session_key()), max_payload).prop_map(|(server, key, max_payload)| Receiver {
        server,
        key,
        max_payload,
    })
}

/// A piece of a hostile stream.
#[derive(Debug, Clone)]
enum Piece {
    /// Arbitrary bytes.
    Junk(Vec<u8>),
    /// A well-formed frame of the receiver's direction (its body from
    /// whichever of the two frames travels that way), sealed correctly if
    /// the receiver is sealed.
    Valid(DeviceFrame, ServerFrame),
    /// A frame-shaped piece: a correct magic and version, any type, any body,
    /// a length that may lie, a crc and a tag that may be right or wrong.
    Shaped {
        frame_type: u8,
        body: Vec<u8>,
        length: Option<u32>,
        good_crc: bool,
        good_tag: bool,
    },
}

/// Mostly the types the spec defines (in either direction), sometimes any.
fn frame_type() -> impl Strategy<Value = u8> {
    let defined: Vec<u8> = (0..=u8::MAX).filter(|&t| FrameType(t).name().is_some()).collect();
    prop_oneof![1 => any::<u8>(), 3 => proptest::sample::select(defined)]
}

fn piece() -> impl Strategy<Value = Piece> {
    let length = prop_oneof![8 => Just(None), 1 => any::<u32>().prop_map(Some), 1 => (0..70_000u32).prop_map(Some)];
    prop_oneof![
        1 => vec(any::<u8>(), 0..256).prop_map(Piece::Junk),
        2 => (device_frame(), server_frame()).prop_map(|(d, s)| Piece::Valid(d, s)),
        3 => (frame_type(), vec(any::<u8>(), 0..128), length, proptest::bool::weighted(0.9), proptest::bool::weighted(0.9))
            .prop_map(|(frame_type, body, length, good_crc, good_tag)| Piece::Shaped {
                frame_type,
                body,
                length,
                good_crc,
                good_tag,
            }),
    ]
}

/// Lays `pieces` end to end as the peer of `receiver` would send them:
/// correctly tagged pieces take the next sequence number.
fn hostile_stream(receiver: &Receiver, pieces: &[Piece]) -> Vec<u8> {
    let peer_dir = if receiver.server {
        Direction::DeviceToServer
    } else {
        Direction::ServerToDevice
    };
    let mut seq = 0;
    let mut stream = Vec::new();
    for piece in pieces {
        let (frame_type, body, length, good_crc, good_tag) = match piece {
            Piece::Junk(bytes) => {
                stream.extend_from_slice(bytes);
                continue;
            }
            Piece::Valid(device, server) => {
                let mut unsealed = BytesMut::new();
                let frame_type = if receiver.server {
                    DeviceCodec::new().encode(device, &mut unsealed);
                    device.frame_type()
                } else {
                    ServerCodec::new().encode(server, &mut unsealed);
                    server.frame_type()
                };
                (frame_type.0, unsealed.split_off(HEADER_LEN).to_vec(), None, true, true)
            }
            Piece::Shaped {
                frame_type,
                body,
                length,
                good_crc,
                good_tag,
            } => (*frame_type, body.clone(), *length, *good_crc, *good_tag),
        };
        let sealed_by = match &receiver.key {
            Some(key) if good_tag => Some((key, peer_dir, seq)),
            _ => None,
        };
        if sealed_by.is_some() {
            seq += 1;
        }
        let mut frame = spec_frame(frame_type, &body, length, sealed_by);
        if !good_crc {
            frame[8] ^= 0x80;
        }
        stream.extend_from_slice(&frame);
    }
    stream
}

/// Reads `stream` the way a connection must: never more than
/// [`Codec::read_limit`] at a time, in pieces of `chunk_sizes`, decoding
/// until the codec fails or the stream runs dry.
fn read_like_a_connection<R: Role>(
    codec: &mut Codec<R>,
    stream: &[u8],
    chunk_sizes: &[usize],
) -> Result<(), TestCaseError> {
    let ceiling = HEADER_LEN + codec.max_payload() as usize;
    let mut buf = BytesMut::new();
    let mut read = 0;
    let mut chunk_sizes = chunk_sizes.iter().copied().cycle();
    loop {
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => return Ok(()),
            }
        }
        // The codec waits for more bytes: it must be allowed to get them,
        // or it would wait forever on a full buffer.
        let allowed = codec.read_limit(buf.len());
        prop_assert!(allowed > 0, "decode waits on a full buffer of {} bytes", buf.len());
        prop_assert!(codec.bytes_needed(&buf) <= allowed, "needs more than it may read");
        if read == stream.len() {
            return Ok(());
        }
        let take = chunk_sizes
            .next()
            .unwrap_or(1)
            .max(1)
            .min(allowed)
            .min(stream.len() - read);
        buf.extend_from_slice(&stream[read..read + take]);
        read += take;
        prop_assert!(buf.len() <= ceiling, "{} buffered, ceiling {}", buf.len(), ceiling);
    }
}

fn codec_for<R: Role>(receiver: &Receiver) -> Codec<R>
where
    Codec<R>: StartSealing,
{
    let mut codec = Codec::<R>::new();
    codec.set_max_payload(receiver.max_payload);
    if let Some(key) = &receiver.key {
        codec.start_sealing_with(key);
    }
    codec
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    /// §1: whatever bytes arrive, in whatever pieces, the decoder yields
    /// frames, waits for bytes it is allowed to read, or fails; it never
    /// panics and never holds more than one header plus `max_payload`.
    #[test]
    fn hostile_bytes_never_panic_nor_overfill_the_buffer(
        receiver in receiver(),
        pieces in vec(piece(), 0..8),
        flips in vec((any::<Index>(), 1..=u8::MAX), 0..3),
        chunk_sizes in vec(1..2048usize, 1..8),
    ) {
        let mut stream = hostile_stream(&receiver, &pieces);
        if !stream.is_empty() {
            for (at, mask) in flips {
                let at = at.index(stream.len());
                stream[at] ^= mask;
            }
        }
        if receiver.server {
            read_like_a_connection(&mut codec_for::<cwp::codec::ServerRole>(&receiver), &stream, &chunk_sizes)?;
        } else {
            read_like_a_connection(&mut codec_for::<cwp::codec::DeviceRole>(&receiver), &stream, &chunk_sizes)?;
        }
    }

    /// Pure noise, for both roles sealed and unsealed.
    #[test]
    fn arbitrary_bytes_never_panic(
        receiver in receiver(),
        noise in vec(any::<u8>(), 0..512),
        chunk_sizes in vec(1..64usize, 1..8),
    ) {
        if receiver.server {
            read_like_a_connection(&mut codec_for::<cwp::codec::ServerRole>(&receiver), &noise, &chunk_sizes)?;
        } else {
            read_like_a_connection(&mut codec_for::<cwp::codec::DeviceRole>(&receiver), &noise, &chunk_sizes)?;
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// §1: "`length` must not exceed the negotiated `max_payload` ... The
    /// receiver checks this from the header alone, before it reads or buffers
    /// the payload." The header's first 7 bytes are waited for; the 8th
    /// brings `FrameTooLarge`, and nothing was reserved for the payload.
    #[test]
    fn a_length_over_max_payload_is_refused_from_the_header_alone(
        receiver in receiver(),
        frame_type in any::<u8>(),
        excess in prop_oneof![1..16u32, Just(u32::MAX)],
    ) {
        let length = receiver.max_payload.saturating_add(excess).max(receiver.max_payload + 1);
        let mut header = vec![0x43, 0x57, 0x01, frame_type];
        header.extend_from_slice(&length.to_be_bytes());

        let mut server = codec_for::<cwp::codec::ServerRole>(&receiver);
        let mut device = codec_for::<cwp::codec::DeviceRole>(&receiver);
        let expected = DecodeError::FrameTooLarge {
            frame_type: FrameType(frame_type),
            length,
            max: receiver.max_payload,
        };
        for have in 0..=header.len() {
            let mut server_buf = BytesMut::with_capacity(HEADER_LEN);
            server_buf.extend_from_slice(&header[..have]);
            let mut device_buf = server_buf.clone();
            let capacities = (server_buf.capacity(), device_buf.capacity());
            let (from_server, from_device) = (server.decode(&mut server_buf), device.decode(&mut device_buf));
            if have < 8 {
                prop_assert_eq!(from_server, Ok(None));
                prop_assert_eq!(from_device, Ok(None));
            } else {
                prop_assert_eq!(from_server, Err(expected.clone()));
                prop_assert_eq!(from_device, Err(expected.clone()));
                prop_assert_eq!(
                    (server_buf.capacity(), device_buf.capacity()),
                    capacities,
                    "nothing reserved for the payload, by either role"
                );
            }
        }
    }

    /// The other side of the same rule: a payload of exactly `max_payload`
    /// is accepted, and fits the buffer that `read_limit` allows.
    #[test]
    fn a_payload_of_exactly_max_payload_is_accepted(key in session_key(), max_payload in 9..4096u32) {
        let mut device = DeviceCodec::new();
        let mut server = ServerCodec::new();
        device.start_sealing(&key);
        server.start_sealing(&key);
        server.set_max_payload(max_payload);

        let data = Bytes::from(vec![0xA5; max_payload as usize - TAG_LEN]);
        let block = DeviceFrame::Block(Block { data });
        let mut wire = BytesMut::new();
        device.encode(&block, &mut wire);
        prop_assert_eq!(wire.len(), server.read_limit(0), "the frame fills the read limit exactly");
        prop_assert_eq!(server.decode(&mut wire), Ok(Some(block)));

        let one_more = DeviceFrame::Block(Block { data: Bytes::from(vec![0x5A; max_payload as usize - TAG_LEN + 1]) });
        let mut wire = BytesMut::new();
        device.encode(&one_more, &mut wire);
        let refused = server.decode(&mut wire);
        prop_assert!(matches!(refused, Err(DecodeError::FrameTooLarge { .. })), "{:?}", refused);
    }
}
