//! CWP/1 §3 Frames: one struct per frame body, and one enum per direction
//! ([`DeviceFrame`] for device → server, [`ServerFrame`] for server →
//! device), so that a server can only ever send server frames and decode
//! device frames.
//!
//! Bodies that carry bulk data (`EVENT.body`, `BLOCK.data`, `COMMAND.body`,
//! `FILE_CHUNK.data`) are [`Bytes`] slices of the receive buffer: decoding
//! them copies nothing.

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::{ErrorCode, Malformation};
use crate::fields::{CommandId, FileId, Nonce, SessionId, Str8, UploadId};
pub use crate::frame_type::FrameType;
use crate::keys::AuthMac;
use crate::serial::Serial;
use crate::wire::{BodyReader, put_str8};

macro_rules! code_u8 {
    ($(#[$doc:meta])* $name:ident { $($(#[$cdoc:meta])* $konst:ident = $value:literal),* $(,)? }) => {
        $(#[$doc])*
        ///
        /// A newtype so that a value this implementation does not know is
        /// carried rather than refused.
        #[derive(Clone, Copy, PartialEq, Eq, Hash)]
        pub struct $name(pub u8);

        impl $name {
            $($(#[$cdoc])* pub const $konst: Self = Self($value);)*

            /// The spec's name of the value, `None` if it defines none.
            pub fn name(self) -> Option<&'static str> {
                match self.0 {
                    $($value => Some(stringify!($konst)),)*
                    _ => None,
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match self.name() {
                    Some(name) => f.write_str(name),
                    None => write!(f, "{}", self.0),
                }
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(self, f)
            }
        }
    };
}

code_u8!(
    /// `BYE.reason`.
    ByeReason {
        /// A normal goodbye.
        NORMAL = 0,
        /// The server is going away; reconnect, the load balancer sends you elsewhere.
        DRAINING = 1,
        /// The same serial connected again; this older session ends.
        SUPERSEDED = 2,
        /// Nothing was received for too long.
        IDLE = 3,
    }
);

code_u8!(
    /// `UPLOAD_DONE.status`.
    UploadOutcome {
        /// Size and SHA-256 matched; the device may delete the upload.
        OK = 0,
        /// The SHA-256 did not match; the upload was discarded.
        DIGEST_MISMATCH = 1,
        /// The size did not match; the upload was discarded.
        SIZE_MISMATCH = 2,
    }
);

code_u8!(
    /// `FILE_ACK.status`.
    FileAckStatus {
        /// Progress, or with `offset == size` the whole file with a matching digest.
        OK = 0,
        /// The device discarded the file; the server may offer it again.
        DIGEST_MISMATCH = 1,
        /// The device gave up on the transfer.
        ABORTED = 2,
    }
);

code_u8!(
    /// The status byte of a command result (an `EVENT` of kind `0xFFFF`).
    CommandStatus {
        /// The command succeeded.
        OK = 0,
        /// The command failed.
        FAILED = 1,
        /// The device does not know the command.
        UNSUPPORTED = 2,
        /// The device cannot run the command now.
        BUSY = 3,
    }
);

// ---------------------------------------------------------------------------
// Device → server bodies.

/// `HELLO` (0x01): the device introduces itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// Who the device claims to be; proven by `AUTH`.
    pub serial: Serial,
    /// Firmware version, free text.
    pub firmware: Str8,
    /// The device's handshake nonce.
    pub nonce: Nonce,
}

/// `AUTH` (0x02): proof that the device holds its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Auth {
    /// HMAC over serial and both nonces (see [`AuthMac::compute`]).
    pub mac: AuthMac,
}

/// `EVENT` (0x03): one device event; kind `0xFFFF` is a command result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Device-assigned, starts at 1, strictly increasing forever.
    pub event_id: u64,
    /// Device clock, Unix ms; 0 if it has none.
    pub time_ms: u64,
    /// Opaque to the server except [`Event::COMMAND_RESULT_KIND`].
    pub kind: u16,
    /// The event's data, a slice of the receive buffer.
    pub body: Bytes,
}

impl Event {
    /// The kind of a command result event.
    pub const COMMAND_RESULT_KIND: u16 = 0xFFFF;
}

/// `UPLOAD_BEGIN` (0x04): opens or reopens an upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadBegin {
    /// The upload's identity, stable across reconnects.
    pub upload_id: UploadId,
    /// Total bytes, 0 if unknown.
    pub total_size: u64,
    /// A name for humans.
    pub name: Str8,
}

/// `BLOCK` (0x05): the next bytes of the open upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    /// At least one byte; a slice of the receive buffer.
    pub data: Bytes,
}

/// `UPLOAD_END` (0x06): the device has sent everything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadEnd {
    /// The upload being ended.
    pub upload_id: UploadId,
    /// The upload's size.
    pub total_size: u64,
    /// SHA-256 of the whole upload.
    pub sha256: [u8; 32],
}

/// `FILE_ACCEPT` (0x08): the device's answer to a `FILE_OFFER`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileAccept {
    /// The offered file.
    pub file_id: FileId,
    /// Bytes the device already holds (resume point).
    pub offset: u64,
    /// Most unacknowledged bytes in flight; 0 declines the offer.
    pub window: u32,
}

/// `FILE_ACK` (0x09): file transfer progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileAck {
    /// The file being transferred.
    pub file_id: FileId,
    /// Bytes the device holds.
    pub offset: u64,
    /// Progress, completion, or why the transfer stopped.
    pub status: FileAckStatus,
}

/// `PING` in either direction; answered by a `PONG` with the same token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ping {
    /// Echoed by the answer.
    pub token: u64,
}

/// `PONG` in either direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pong {
    /// The token of the `PING` being answered.
    pub token: u64,
}

/// Device `BYE` (0x0C).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceBye {
    /// Why the device leaves.
    pub reason: ByeReason,
}

// ---------------------------------------------------------------------------
// Server → device bodies.

/// `CHALLENGE` (0x81): the server's handshake nonce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Challenge {
    /// Fresh and random per connection, never accepted twice.
    pub nonce: Nonce,
}

/// `WELCOME` (0x82): the handshake succeeded; server frame 0, sealed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    /// This session's identity.
    pub session: SessionId,
    /// Heartbeat period; silence for three periods ends the session.
    pub heartbeat_s: u16,
    /// The most payload bytes either side may send in one frame.
    pub max_payload: u32,
    /// How many unacknowledged events the device may have in flight.
    pub event_window: u16,
    /// The highest event id stored for this serial (0 if none).
    pub last_event_id: u64,
    /// The server's name, for the device's logs.
    pub server: Str8,
}

/// `ACK` (0x83): every event of this serial with id ≤ `event_id` is durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    /// Cumulative acknowledgement.
    pub event_id: u64,
}

/// `UPLOAD_STATUS` (0x84): how much of an upload is durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadStatus {
    /// The upload.
    pub upload_id: UploadId,
    /// Bytes written and fsynced; the device may free data below.
    pub durable_offset: u64,
}

/// `UPLOAD_DONE` (0x85): the verdict on a finished upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadDone {
    /// The upload.
    pub upload_id: UploadId,
    /// Bytes the server received.
    pub size: u64,
    /// Only `OK` lets the device delete the upload.
    pub status: UploadOutcome,
}

/// `COMMAND` (0x86): an operator's command for the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// Echoed by the device's result.
    pub command_id: CommandId,
    /// What to do.
    pub name: Str8,
    /// Arguments, opaque to the server.
    pub body: Bytes,
}

/// `FILE_OFFER` (0x88): the server has a file for the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileOffer {
    /// The file's identity.
    pub file_id: FileId,
    /// Its size in bytes.
    pub size: u64,
    /// Its SHA-256.
    pub sha256: [u8; 32],
    /// Its name.
    pub name: Str8,
}

/// `FILE_CHUNK` (0x89): the next bytes of the accepted file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileChunk {
    /// At least one byte.
    pub data: Bytes,
}

/// Server `BYE` (0x8D).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerBye {
    /// Why the server ends the session.
    pub reason: ByeReason,
    /// How long the device should wait before reconnecting.
    pub reconnect_after_ms: u32,
}

/// `ERROR` (0x8F). Unsealed before `WELCOME`, sealed after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorFrame {
    /// What went wrong.
    pub code: ErrorCode,
    /// Whether the server closes the connection after it.
    pub fatal: bool,
    /// The type of the frame that caused it, 0 if none.
    pub ref_type: FrameType,
    /// Human-readable detail.
    pub message: Str8,
}

impl ErrorFrame {
    /// An error with the fatality the spec's table gives its code.
    pub fn new(code: ErrorCode, ref_type: FrameType, message: &str) -> Self {
        Self {
            code,
            fatal: code.is_fatal(),
            ref_type,
            message: Str8::truncating(message),
        }
    }
}

// ---------------------------------------------------------------------------
// The two directions.

/// Everything a device may send (types `0x00–0x7F`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceFrame {
    /// `HELLO`
    Hello(Hello),
    /// `AUTH`
    Auth(Auth),
    /// `EVENT`
    Event(Event),
    /// `UPLOAD_BEGIN`
    UploadBegin(UploadBegin),
    /// `BLOCK`
    Block(Block),
    /// `UPLOAD_END`
    UploadEnd(UploadEnd),
    /// `FILE_ACCEPT`
    FileAccept(FileAccept),
    /// `FILE_ACK`
    FileAck(FileAck),
    /// `PING` (0x0A)
    Ping(Ping),
    /// `PONG` (0x0B)
    Pong(Pong),
    /// `BYE` (0x0C)
    Bye(DeviceBye),
}

/// Everything a server may send (types `0x80–0xFF`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerFrame {
    /// `CHALLENGE`
    Challenge(Challenge),
    /// `WELCOME`
    Welcome(Welcome),
    /// `ACK`
    Ack(Ack),
    /// `UPLOAD_STATUS`
    UploadStatus(UploadStatus),
    /// `UPLOAD_DONE`
    UploadDone(UploadDone),
    /// `COMMAND`
    Command(Command),
    /// `FILE_OFFER`
    FileOffer(FileOffer),
    /// `FILE_CHUNK`
    FileChunk(FileChunk),
    /// `PING` (0x8C)
    Ping(Ping),
    /// `PONG` (0x8B)
    Pong(Pong),
    /// `BYE` (0x8D)
    Bye(ServerBye),
    /// `ERROR`
    Error(ErrorFrame),
}

/// A set of frames that travel in one direction: what the codec needs to
/// encode and decode them. Implemented by [`DeviceFrame`] and [`ServerFrame`].
pub trait Frame: Sized {
    /// The frame's type byte.
    fn frame_type(&self) -> FrameType;

    /// Appends the body (the fields, without header or tag).
    fn encode_body(&self, dst: &mut BytesMut);

    /// Decodes a body of type `frame_type`. `Ok(None)` when the type is not
    /// one this direction defines (`UNKNOWN_TYPE`).
    fn decode_body(frame_type: FrameType, body: Bytes) -> Result<Option<Self>, Malformation>;

    /// Whether a body of `frame_type` may be of any length: its last field
    /// is `rest` (an event's body, an upload's block, a command's body, a
    /// file chunk). Every other type's body has a largest valid size.
    fn ends_with_rest(frame_type: FrameType) -> bool;
}

impl Frame for DeviceFrame {
    fn frame_type(&self) -> FrameType {
        match self {
            Self::Hello(_) => FrameType::HELLO,
            Self::Auth(_) => FrameType::AUTH,
            Self::Event(_) => FrameType::EVENT,
            Self::UploadBegin(_) => FrameType::UPLOAD_BEGIN,
            Self::Block(_) => FrameType::BLOCK,
            Self::UploadEnd(_) => FrameType::UPLOAD_END,
            Self::FileAccept(_) => FrameType::FILE_ACCEPT,
            Self::FileAck(_) => FrameType::FILE_ACK,
            Self::Ping(_) => FrameType::DEVICE_PING,
            Self::Pong(_) => FrameType::DEVICE_PONG,
            Self::Bye(_) => FrameType::DEVICE_BYE,
        }
    }

    fn encode_body(&self, dst: &mut BytesMut) {
        match self {
            Self::Hello(f) => {
                put_str8(dst, f.serial.as_str());
                put_str8(dst, &f.firmware);
                dst.put_slice(&f.nonce.0);
            }
            Self::Auth(f) => dst.put_slice(&f.mac.0),
            Self::Event(f) => {
                dst.put_u64(f.event_id);
                dst.put_u64(f.time_ms);
                dst.put_u16(f.kind);
                dst.put_slice(&f.body);
            }
            Self::UploadBegin(f) => {
                dst.put_slice(&f.upload_id.0);
                dst.put_u64(f.total_size);
                put_str8(dst, &f.name);
            }
            Self::Block(f) => dst.put_slice(&f.data),
            Self::UploadEnd(f) => {
                dst.put_slice(&f.upload_id.0);
                dst.put_u64(f.total_size);
                dst.put_slice(&f.sha256);
            }
            Self::FileAccept(f) => {
                dst.put_slice(&f.file_id.0);
                dst.put_u64(f.offset);
                dst.put_u32(f.window);
            }
            Self::FileAck(f) => {
                dst.put_slice(&f.file_id.0);
                dst.put_u64(f.offset);
                dst.put_u8(f.status.0);
            }
            Self::Ping(f) => dst.put_u64(f.token),
            Self::Pong(f) => dst.put_u64(f.token),
            Self::Bye(f) => dst.put_u8(f.reason.0),
        }
    }

    fn decode_body(frame_type: FrameType, body: Bytes) -> Result<Option<Self>, Malformation> {
        let mut r = BodyReader::new(body);
        let frame = match frame_type {
            FrameType::HELLO => {
                let serial = r.str8_bytes()?;
                let serial = Serial::from_bytes(&serial).map_err(|_| Malformation::InvalidSerial)?;
                Self::Hello(Hello {
                    serial,
                    firmware: r.str8()?,
                    nonce: Nonce(r.array()?),
                })
            }
            FrameType::AUTH => Self::Auth(Auth {
                mac: AuthMac(r.array()?),
            }),
            FrameType::EVENT => Self::Event(Event {
                event_id: r.u64()?,
                time_ms: r.u64()?,
                kind: r.u16()?,
                body: r.rest(),
            }),
            FrameType::UPLOAD_BEGIN => Self::UploadBegin(UploadBegin {
                upload_id: UploadId(r.array()?),
                total_size: r.u64()?,
                name: r.str8()?,
            }),
            FrameType::BLOCK => Self::Block(Block {
                data: r.rest_nonempty()?,
            }),
            FrameType::UPLOAD_END => Self::UploadEnd(UploadEnd {
                upload_id: UploadId(r.array()?),
                total_size: r.u64()?,
                sha256: r.array()?,
            }),
            FrameType::FILE_ACCEPT => Self::FileAccept(FileAccept {
                file_id: FileId(r.array()?),
                offset: r.u64()?,
                window: r.u32()?,
            }),
            FrameType::FILE_ACK => Self::FileAck(FileAck {
                file_id: FileId(r.array()?),
                offset: r.u64()?,
                status: FileAckStatus(r.u8()?),
            }),
            FrameType::DEVICE_PING => Self::Ping(Ping { token: r.u64()? }),
            FrameType::DEVICE_PONG => Self::Pong(Pong { token: r.u64()? }),
            FrameType::DEVICE_BYE => Self::Bye(DeviceBye {
                reason: ByeReason(r.u8()?),
            }),
            _ => return Ok(None),
        };
        r.finish()?;
        Ok(Some(frame))
    }

    fn ends_with_rest(frame_type: FrameType) -> bool {
        matches!(frame_type, FrameType::EVENT | FrameType::BLOCK)
    }
}

impl Frame for ServerFrame {
    fn frame_type(&self) -> FrameType {
        match self {
            Self::Challenge(_) => FrameType::CHALLENGE,
            Self::Welcome(_) => FrameType::WELCOME,
            Self::Ack(_) => FrameType::ACK,
            Self::UploadStatus(_) => FrameType::UPLOAD_STATUS,
            Self::UploadDone(_) => FrameType::UPLOAD_DONE,
            Self::Command(_) => FrameType::COMMAND,
            Self::FileOffer(_) => FrameType::FILE_OFFER,
            Self::FileChunk(_) => FrameType::FILE_CHUNK,
            Self::Ping(_) => FrameType::SERVER_PING,
            Self::Pong(_) => FrameType::SERVER_PONG,
            Self::Bye(_) => FrameType::SERVER_BYE,
            Self::Error(_) => FrameType::ERROR,
        }
    }

    fn encode_body(&self, dst: &mut BytesMut) {
        match self {
            Self::Challenge(f) => dst.put_slice(&f.nonce.0),
            Self::Welcome(f) => {
                dst.put_slice(&f.session.0);
                dst.put_u16(f.heartbeat_s);
                dst.put_u32(f.max_payload);
                dst.put_u16(f.event_window);
                dst.put_u64(f.last_event_id);
                put_str8(dst, &f.server);
            }
            Self::Ack(f) => dst.put_u64(f.event_id),
            Self::UploadStatus(f) => {
                dst.put_slice(&f.upload_id.0);
                dst.put_u64(f.durable_offset);
            }
            Self::UploadDone(f) => {
                dst.put_slice(&f.upload_id.0);
                dst.put_u64(f.size);
                dst.put_u8(f.status.0);
            }
            Self::Command(f) => {
                dst.put_slice(&f.command_id.0);
                put_str8(dst, &f.name);
                dst.put_slice(&f.body);
            }
            Self::FileOffer(f) => {
                dst.put_slice(&f.file_id.0);
                dst.put_u64(f.size);
                dst.put_slice(&f.sha256);
                put_str8(dst, &f.name);
            }
            Self::FileChunk(f) => dst.put_slice(&f.data),
            Self::Ping(f) => dst.put_u64(f.token),
            Self::Pong(f) => dst.put_u64(f.token),
            Self::Bye(f) => {
                dst.put_u8(f.reason.0);
                dst.put_u32(f.reconnect_after_ms);
            }
            Self::Error(f) => {
                dst.put_u16(f.code.0);
                dst.put_u8(u8::from(f.fatal));
                dst.put_u8(f.ref_type.0);
                put_str8(dst, &f.message);
            }
        }
    }

    fn decode_body(frame_type: FrameType, body: Bytes) -> Result<Option<Self>, Malformation> {
        let mut r = BodyReader::new(body);
        let frame = match frame_type {
            FrameType::CHALLENGE => Self::Challenge(Challenge {
                nonce: Nonce(r.array()?),
            }),
            FrameType::WELCOME => Self::Welcome(Welcome {
                session: SessionId(r.array()?),
                heartbeat_s: r.u16()?,
                max_payload: r.u32()?,
                event_window: r.u16()?,
                last_event_id: r.u64()?,
                server: r.str8()?,
            }),
            FrameType::ACK => Self::Ack(Ack { event_id: r.u64()? }),
            FrameType::UPLOAD_STATUS => Self::UploadStatus(UploadStatus {
                upload_id: UploadId(r.array()?),
                durable_offset: r.u64()?,
            }),
            FrameType::UPLOAD_DONE => Self::UploadDone(UploadDone {
                upload_id: UploadId(r.array()?),
                size: r.u64()?,
                status: UploadOutcome(r.u8()?),
            }),
            FrameType::COMMAND => Self::Command(Command {
                command_id: CommandId(r.array()?),
                name: r.str8()?,
                body: r.rest(),
            }),
            FrameType::FILE_OFFER => Self::FileOffer(FileOffer {
                file_id: FileId(r.array()?),
                size: r.u64()?,
                sha256: r.array()?,
                name: r.str8()?,
            }),
            FrameType::FILE_CHUNK => Self::FileChunk(FileChunk {
                data: r.rest_nonempty()?,
            }),
            FrameType::SERVER_PING => Self::Ping(Ping { token: r.u64()? }),
            FrameType::SERVER_PONG => Self::Pong(Pong { token: r.u64()? }),
            FrameType::SERVER_BYE => Self::Bye(ServerBye {
                reason: ByeReason(r.u8()?),
                reconnect_after_ms: r.u32()?,
            }),
            FrameType::ERROR => Self::Error(ErrorFrame {
                code: ErrorCode(r.u16()?),
                fatal: r.flag()?,
                ref_type: FrameType(r.u8()?),
                message: r.str8()?,
            }),
            _ => return Ok(None),
        };
        r.finish()?;
        Ok(Some(frame))
    }

    fn ends_with_rest(frame_type: FrameType) -> bool {
        matches!(frame_type, FrameType::COMMAND | FrameType::FILE_CHUNK)
    }
}

/// The body of a command result: an `EVENT` of kind `0xFFFF` (CWP/1 §3
/// Commands) is `command_id: id16, status: u8, data: rest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandResult {
    /// The command this answers.
    pub command_id: CommandId,
    /// How it went.
    pub status: CommandStatus,
    /// Output, opaque to the server.
    pub data: Bytes,
}

impl CommandResult {
    /// Decodes an event body of kind `0xFFFF`.
    pub fn decode(body: Bytes) -> Result<Self, Malformation> {
        let mut r = BodyReader::new(body);
        Ok(Self {
            command_id: CommandId(r.array()?),
            status: CommandStatus(r.u8()?),
            data: r.rest(),
        })
    }

    /// Encodes the result as the body of an `EVENT` of kind `0xFFFF`.
    pub fn encode(&self) -> Bytes {
        let mut body = BytesMut::with_capacity(17 + self.data.len());
        body.put_slice(&self.command_id.0);
        body.put_u8(self.status.0);
        body.put_slice(&self.data);
        body.freeze()
    }
}
