//! CWP/1 §1 Framing: turning bytes into frames and frames into bytes.
//!
//! A [`Codec`] holds one connection's framing state: the `max_payload` it
//! enforces on received frames and, once the handshake is done, the
//! [`Seal`]. It owns no buffer and does no I/O: the caller reads into a
//! `BytesMut` (never more than [`Codec::read_limit`] allows) and calls
//! [`Codec::decode`] until it returns `Ok(None)`.
//!
//! Validation follows the spec's order: magic, version, and `length` against
//! `max_payload` from the header alone (before any payload is buffered), then
//! the CRC-32C, then the tag, then the type, then the body's structure.
//!
//! A server can also receive within a byte budget ([`Held`]), as it must
//! before `WELCOME`: `max_payload` is 65,536 then, but no valid handshake
//! frame is longer than [`MAX_HANDSHAKE_PAYLOAD`]. A frame announcing more
//! is received without being kept: its first bytes are held, the rest only
//! runs through the CRC, and it is then answered exactly as if it had been
//! kept (`BAD_CRC`, `UNKNOWN_TYPE`, `MALFORMED`, or a well-formed frame not
//! allowed yet: [`Received::TooLongToHold`]).

use std::marker::PhantomData;

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::{DecodeError, Malformation};
use crate::frame::{DeviceFrame, Frame, FrameType, ServerFrame};
use crate::keys::SessionKey;
use crate::seal::{Direction, Seal, TAG_LEN};
use crate::serial::MAX_SERIAL_LEN;

/// `CW`, the first two bytes of every frame.
pub const MAGIC: [u8; 2] = [0x43, 0x57];
/// The protocol version this crate speaks.
pub const VERSION: u8 = 0x01;
/// Bytes of fixed header before the payload.
pub const HEADER_LEN: usize = 12;
/// `max_payload` until `WELCOME` says otherwise.
pub const DEFAULT_MAX_PAYLOAD: u32 = 65_536;
/// The largest valid payload before `WELCOME`: a `HELLO` with the longest
/// serial and firmware (`str8` serial, `str8` firmware, 16-byte nonce).
/// `AUTH` is 32 bytes.
pub const MAX_HANDSHAKE_PAYLOAD: u32 = (1 + MAX_SERIAL_LEN + 1 + 255 + 16) as u32;

/// Which end of the connection a codec serves; fixes what it decodes, what
/// it encodes, and the `dir` byte of its tags.
pub trait Role {
    /// Frames this side receives.
    type Inbound: Frame;
    /// Frames this side sends.
    type Outbound: Frame;
    /// Direction of the frames this side sends.
    const TX: Direction;
}

/// The server end: decodes [`DeviceFrame`]s, encodes [`ServerFrame`]s.
#[derive(Debug)]
pub enum ServerRole {}

/// The device end: decodes [`ServerFrame`]s, encodes [`DeviceFrame`]s.
#[derive(Debug)]
pub enum DeviceRole {}

impl Role for ServerRole {
    type Inbound = DeviceFrame;
    type Outbound = ServerFrame;
    const TX: Direction = Direction::ServerToDevice;
}

impl Role for DeviceRole {
    type Inbound = ServerFrame;
    type Outbound = DeviceFrame;
    const TX: Direction = Direction::DeviceToServer;
}

/// A server's codec.
pub type ServerCodec = Codec<ServerRole>;
/// A device's codec.
pub type DeviceCodec = Codec<DeviceRole>;

/// Whether received frames carry tags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Inbound {
    /// Handshake: nothing is sealed.
    Unsealed,
    /// Device side between `AUTH` and `WELCOME`: the server answers either
    /// with a sealed `WELCOME` or with an unsealed `ERROR` (a failed `AUTH`).
    AwaitingWelcome,
    /// Every frame is sealed.
    Sealed,
}

/// The framing state of one connection, for one role.
#[derive(Debug)]
pub struct Codec<R: Role> {
    max_payload: u32,
    seal: Option<Seal>,
    inbound: Inbound,
    role: PhantomData<R>,
}

impl<R: Role> Default for Codec<R> {
    fn default() -> Self {
        Self::new()
    }
}

/// The 12-byte header of a frame, validated as far as the header alone allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The frame's type byte.
    pub frame_type: FrameType,
    /// Payload length, tag included.
    pub length: u32,
    /// CRC-32C over header bytes 0..8 and the payload.
    pub crc: u32,
}

impl Header {
    /// Checks the first bytes of `buf` in the spec's order: magic (once 2
    /// bytes are there), version (3 bytes), length against `max_payload`
    /// (8 bytes). `Ok(None)` until all 12 header bytes are present.
    ///
    /// A length bomb is therefore refused after 8 bytes, before the caller
    /// buffers any of its payload.
    pub fn check(buf: &[u8], max_payload: u32) -> Result<Option<Self>, DecodeError> {
        if buf.len() >= 2 && buf[..2] != MAGIC {
            return Err(DecodeError::BadMagic {
                found: [buf[0], buf[1]],
            });
        }
        if buf.len() >= 3 && buf[2] != VERSION {
            return Err(DecodeError::BadVersion { found: buf[2] });
        }
        if buf.len() < 8 {
            return Ok(None);
        }
        let frame_type = FrameType(buf[3]);
        let length = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
        if length > max_payload {
            return Err(DecodeError::FrameTooLarge {
                frame_type,
                length,
                max: max_payload,
            });
        }
        if buf.len() < HEADER_LEN {
            return Ok(None);
        }
        Ok(Some(Self {
            frame_type,
            length,
            crc: u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]),
        }))
    }
}

/// What a receive within a byte budget ([`Codec::decode_held`]) yields.
#[derive(Debug, PartialEq, Eq)]
pub enum Received<F> {
    /// A whole frame.
    Frame(F),
    /// A frame longer than the budget that would have decoded (its type
    /// ends with a `rest` field), received without being kept. It is never
    /// a frame allowed at this stage (CWP/1 §2: before `WELCOME`, only
    /// `HELLO` and `AUTH`, both short): `UNEXPECTED`.
    TooLongToHold(FrameType),
}

/// A byte budget for one connection's receive buffer, and the frame
/// passing through it without being kept, if any.
#[derive(Debug)]
pub struct Held {
    /// Payload bytes kept at most.
    limit: usize,
    /// A frame longer than `limit`, being received.
    passing: Option<Box<Passing>>,
}

/// A frame received without being kept: its header, its first `limit`
/// payload bytes, the CRC of what has passed, and how much is still to come.
#[derive(Debug)]
struct Passing {
    header: Header,
    kept: BytesMut,
    crc: u32,
    remaining: usize,
}

impl Held {
    /// A budget of `limit` payload bytes (at least
    /// [`MAX_HANDSHAKE_PAYLOAD`] before `WELCOME`).
    pub fn new(limit: u32) -> Self {
        Self {
            limit: limit as usize,
            passing: None,
        }
    }
}

impl<R: Role> Codec<R> {
    /// A codec at the start of a connection: unsealed, `max_payload` 65,536.
    pub fn new() -> Self {
        Self {
            max_payload: DEFAULT_MAX_PAYLOAD,
            seal: None,
            inbound: Inbound::Unsealed,
            role: PhantomData,
        }
    }

    /// The largest payload accepted from the peer.
    pub fn max_payload(&self) -> u32 {
        self.max_payload
    }

    /// Changes the largest payload accepted from the peer (after `WELCOME`
    /// has announced it).
    pub fn set_max_payload(&mut self, max_payload: u32) {
        self.max_payload = max_payload;
    }

    /// Whether this side has started sealing its frames.
    pub fn is_sealed(&self) -> bool {
        self.seal.is_some()
    }

    /// The sealing state, once the handshake has produced one.
    pub fn seal_state(&self) -> Option<&Seal> {
        self.seal.as_ref()
    }

    /// How many more bytes the caller may append to a receive buffer that
    /// holds `buffered` bytes. Following it keeps the buffer at or below one
    /// header plus `max_payload`, which always fits the next frame.
    pub fn read_limit(&self, buffered: usize) -> usize {
        (HEADER_LEN + self.max_payload as usize).saturating_sub(buffered)
    }

    /// How many bytes `buf` must hold before [`Codec::decode`] can make
    /// progress: the rest of the header, or the rest of the frame.
    pub fn bytes_needed(&self, buf: &[u8]) -> usize {
        if buf.len() < HEADER_LEN {
            return HEADER_LEN - buf.len();
        }
        let length = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]) as usize;
        (HEADER_LEN + length).saturating_sub(buf.len()).max(1)
    }

    /// Decodes the next complete frame from the front of `buf`, removing its
    /// bytes. `Ok(None)` when `buf` holds only part of a frame (nothing is
    /// removed). Every error is fatal for the connection.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<R::Inbound>, DecodeError> {
        let Some(header) = Header::check(buf, self.max_payload)? else {
            return Ok(None);
        };
        let frame_len = HEADER_LEN + header.length as usize;
        if buf.len() < frame_len {
            // Room for exactly this frame; the header has proven it is allowed.
            buf.reserve(frame_len - buf.len());
            return Ok(None);
        }
        let frame = buf.split_to(frame_len).freeze();
        self.decode_frame(header, frame).map(Some)
    }

    fn decode_frame(&mut self, header: Header, frame: Bytes) -> Result<R::Inbound, DecodeError> {
        let frame_type = header.frame_type;
        let sealed = match self.inbound {
            Inbound::Unsealed => false,
            Inbound::Sealed => true,
            // CWP/1 §1 Tags: an ERROR sent before WELCOME is not sealed.
            Inbound::AwaitingWelcome => frame_type != FrameType::ERROR,
        };
        let header8: &[u8; 8] = frame[..8].try_into().expect("a whole frame holds its header");
        let crc_header = crc32c::crc32c(header8);
        let bad_crc = |computed| DecodeError::BadCrc {
            frame_type,
            received: header.crc,
            computed,
        };
        // CWP/1 §1: the CRC is checked first, then the tag. A sealed
        // frame's CRC is computed in the tag's pass over the body.
        let body_end = match self.seal.as_mut() {
            Some(seal) if sealed && header.length as usize >= TAG_LEN => {
                let body_end = frame.len() - TAG_LEN;
                let opened = seal.open_with_crc(header8, &frame[HEADER_LEN..body_end], &frame[body_end..], crc_header);
                if opened.crc != header.crc {
                    return Err(bad_crc(opened.crc));
                }
                if !opened.verified {
                    return Err(DecodeError::BadTag { frame_type });
                }
                self.inbound = Inbound::Sealed;
                body_end
            }
            _ => {
                let computed = crc32c::crc32c_append(crc_header, &frame[HEADER_LEN..]);
                if computed != header.crc {
                    return Err(bad_crc(computed));
                }
                if sealed {
                    debug_assert!(self.seal.is_some(), "inbound is sealed only once a seal exists");
                    return Err(DecodeError::Malformed {
                        frame_type,
                        reason: Malformation::MissingTag,
                    });
                }
                frame.len()
            }
        };

        match R::Inbound::decode_body(frame_type, frame.slice(HEADER_LEN..body_end)) {
            Ok(Some(decoded)) => Ok(decoded),
            Ok(None) => Err(DecodeError::UnknownType { frame_type }),
            Err(reason) => Err(DecodeError::Malformed { frame_type, reason }),
        }
    }

    /// [`Codec::read_limit`] within a budget: the receive buffer never
    /// holds more than one header plus `held`'s limit, whatever a header
    /// announces.
    pub fn read_limit_held(&self, buffered: usize, held: &Held) -> usize {
        match &held.passing {
            // Consumed as it arrives.
            Some(passing) => passing.remaining.min(HEADER_LEN + held.limit),
            None => (HEADER_LEN + held.limit.min(self.max_payload as usize)).saturating_sub(buffered),
        }
    }

    /// [`Codec::decode`] within a budget. A frame announcing more payload
    /// than `held`'s limit (but no more than `max_payload`) is consumed as
    /// its bytes arrive, keeping only its first `limit` bytes, and checked
    /// in the spec's order once all of it has passed: CRC, type, body. An
    /// unsealed receive only (before `WELCOME`): a sealed frame's tag needs
    /// all of it.
    pub fn decode_held(
        &mut self,
        buf: &mut BytesMut,
        held: &mut Held,
    ) -> Result<Option<Received<R::Inbound>>, DecodeError> {
        debug_assert!(self.inbound == Inbound::Unsealed, "a held receive is unsealed");
        if held.passing.is_none() {
            let Some(header) = Header::check(buf, self.max_payload)? else {
                return Ok(None);
            };
            if header.length as usize <= held.limit {
                return Ok(self.decode(buf)?.map(Received::Frame));
            }
            let header_bytes = buf.split_to(HEADER_LEN);
            held.passing = Some(Box::new(Passing {
                header,
                kept: BytesMut::with_capacity(held.limit),
                crc: crc32c::crc32c(&header_bytes[..8]),
                remaining: header.length as usize,
            }));
        }
        let Some(passing) = held.passing.as_mut() else {
            return Ok(None);
        };
        let arrived = buf.split_to(buf.len().min(passing.remaining));
        passing.crc = crc32c::crc32c_append(passing.crc, &arrived);
        passing.remaining -= arrived.len();
        let room = held.limit - passing.kept.len();
        passing.kept.extend_from_slice(&arrived[..arrived.len().min(room)]);
        if passing.remaining > 0 {
            return Ok(None);
        }
        let Some(passing) = held.passing.take() else {
            return Ok(None);
        };
        let Passing { header, kept, crc, .. } = *passing;
        let frame_type = header.frame_type;
        if crc != header.crc {
            return Err(DecodeError::BadCrc {
                frame_type,
                received: header.crc,
                computed: crc,
            });
        }
        // What the whole body would have decoded to: the kept bytes decode
        // the type and every field before a `rest`; a type without a `rest`
        // has bytes beyond its last field.
        match R::Inbound::decode_body(frame_type, kept.freeze()) {
            Ok(None) => Err(DecodeError::UnknownType { frame_type }),
            Err(reason) => Err(DecodeError::Malformed { frame_type, reason }),
            Ok(Some(_)) if R::Inbound::ends_with_rest(frame_type) => Ok(Some(Received::TooLongToHold(frame_type))),
            Ok(Some(_)) => Err(DecodeError::Malformed {
                frame_type,
                reason: Malformation::TrailingBytes,
            }),
        }
    }

    /// Appends `frame` to `dst`, sealed if the handshake has produced a key.
    pub fn encode(&mut self, frame: &R::Outbound, dst: &mut BytesMut) {
        let start = begin_frame(frame.frame_type(), dst);
        frame.encode_body(dst);
        self.finish_frame(start, dst);
    }

    /// Completes the frame whose header [`begin_frame`] wrote at `start`
    /// and whose body follows it to the end of `dst`: its length, its tag
    /// (sealed) and its CRC.
    fn finish_frame(&mut self, start: usize, dst: &mut BytesMut) {
        let tag_len = if self.seal.is_some() { TAG_LEN } else { 0 };
        let length = dst.len() - start - HEADER_LEN + tag_len;
        let length = u32::try_from(length).expect("a frame body is far smaller than 4 GiB");
        dst[start + 4..start + 8].copy_from_slice(&length.to_be_bytes());

        let header8: [u8; 8] = dst[start..start + 8].try_into().expect("8 header bytes were written");
        let crc_header = crc32c::crc32c(&header8);
        let crc = match self.seal.as_mut() {
            // The CRC covers the tag too: the body's in the tag's pass,
            // then the tag's own bytes.
            Some(seal) => {
                let (tag, crc) = seal.seal_with_crc(&header8, &dst[start + HEADER_LEN..], crc_header);
                dst.put_slice(&tag);
                crc32c::crc32c_append(crc, &tag)
            }
            None => crc32c::crc32c_append(crc_header, &dst[start + HEADER_LEN..]),
        };
        dst[start + 8..start + HEADER_LEN].copy_from_slice(&crc.to_be_bytes());
    }
}

/// Writes a frame's header with its length and CRC left at zero, for
/// [`Codec::finish_frame`]; where the frame starts in `dst`.
fn begin_frame(frame_type: FrameType, dst: &mut BytesMut) -> usize {
    let start = dst.len();
    dst.put_slice(&MAGIC);
    dst.put_u8(VERSION);
    dst.put_u8(frame_type.0);
    dst.put_u64(0); // length and crc, patched by finish_frame
    start
}

impl Codec<ServerRole> {
    /// Appends a `FILE_CHUNK` of `len` bytes that `fill` writes in place,
    /// sealed: the very bytes [`Codec::encode`] gives for
    /// `ServerFrame::FileChunk` with that data, without the data being held
    /// anywhere first (a transfer reads its file straight into the send
    /// buffer). If `fill` fails, `dst` is as it was and no sequence number
    /// is spent.
    pub fn encode_file_chunk_with<E>(
        &mut self,
        len: usize,
        dst: &mut BytesMut,
        fill: impl FnOnce(&mut [u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        let start = begin_frame(FrameType::FILE_CHUNK, dst);
        let body = dst.len();
        dst.resize(body + len, 0);
        if let Err(err) = fill(&mut dst[body..]) {
            dst.truncate(start);
            return Err(err);
        }
        self.finish_frame(start, dst);
        Ok(())
    }

    /// Starts sealing both directions with `key`: the server calls this after
    /// verifying `AUTH`, before encoding `WELCOME` (server frame 0). Every
    /// frame received from now on must be sealed.
    pub fn start_sealing(&mut self, key: &SessionKey) {
        self.seal = Some(Seal::new(key, ServerRole::TX));
        self.inbound = Inbound::Sealed;
    }
}

impl Codec<DeviceRole> {
    /// Starts sealing with `key`: the device calls this after sending `AUTH`.
    /// The next received frame must be a sealed `WELCOME`, or an unsealed
    /// `ERROR` if the server refused the `AUTH`.
    pub fn start_sealing(&mut self, key: &SessionKey) {
        self.seal = Some(Seal::new(key, DeviceRole::TX));
        self.inbound = Inbound::AwaitingWelcome;
    }
}
