//! CWP/1, the Controller Wire Protocol: a pure codec, no sockets, no
//! runtime, no clock.
//!
//! Layout, in the order data flows through it:
//!
//! - [`codec`]: framing. A [`Codec`] checks a receive buffer's header
//!   ([`codec::Header::check`]: magic, version, length against
//!   `max_payload`), then CRC-32C, then the tag, then hands the body to
//!   [`frame`]; encoding goes the other way.
//! - [`frame`]: the typed frames, [`DeviceFrame`] (device → server) and
//!   [`ServerFrame`] (server → device), their bodies and status codes;
//!   [`frame_type`]: the type byte alone.
//! - [`seal`]: the per-session [`Seal`] (keyed HMAC, implicit sequence
//!   numbers) that tags and verifies every frame after the handshake.
//! - [`handshake`]: the HELLO → CHALLENGE → AUTH → WELCOME exchange as two
//!   I/O-free state machines, [`ServerHandshake`] and [`DeviceHandshake`].
//! - [`session`]: the established session's rules on the server's side
//!   ([`ServerSession`]: event order, window and `BUSY`, cumulative acks,
//!   what ends a session), with refusals and violations as values;
//!   [`transfer`]: one file transfer's rules (window, offsets, errors),
//!   [`FileTransfer`].
//! - [`keys`]: the key schedule: [`DeviceKey::derive`], [`AuthMac`],
//!   [`SessionKey::derive`].
//! - [`serial`]: [`Serial`], the only way a serial enters the system.
//! - [`fields`]: `str8` text ([`Str8`]) and the 16-byte identifiers.
//! - [`error`]: [`ErrorCode`] (the wire codes) and [`DecodeError`].
//!
//! A server session in a few lines:
//!
//! ```
//! use bytes::BytesMut;
//! use cwp::{DeviceFrame, ServerCodec};
//!
//! let mut codec = ServerCodec::new();
//! let mut rx = BytesMut::new(); // filled from the socket, at most codec.read_limit(rx.len()) at a time
//! while let Some(frame) = codec.decode(&mut rx)? {
//!     match frame {
//!         DeviceFrame::Hello(hello) => { /* answer with a CHALLENGE */ }
//!         _ => {}
//!     }
//! }
//! # Ok::<(), cwp::DecodeError>(())
//! ```

pub mod codec;
pub mod error;
pub mod fields;
pub mod frame;
pub mod frame_type;
pub mod handshake;
pub mod keys;
pub mod seal;
pub mod serial;
pub mod session;
pub mod transfer;
mod wire;

pub use codec::{
    Codec, DEFAULT_MAX_PAYLOAD, DeviceCodec, HEADER_LEN, Held, MAX_HANDSHAKE_PAYLOAD, Received, ServerCodec,
};
pub use error::{DecodeError, ErrorCode, Malformation};
pub use fields::{CommandId, FileId, Nonce, SessionId, Str8, Str8TooLong, UploadId};
pub use frame::{
    Ack, Auth, Block, ByeReason, Challenge, Command, CommandResult, CommandStatus, DeviceBye, DeviceFrame, ErrorFrame,
    Event, FileAccept, FileAck, FileAckStatus, FileChunk, FileOffer, Frame, FrameType, Hello, Ping, Pong, ServerBye,
    ServerFrame, UploadBegin, UploadDone, UploadEnd, UploadOutcome, UploadStatus, Welcome,
};
pub use handshake::{DeviceHandshake, HandshakeError, ServerHandshake, ServerStep};
pub use keys::{AuthMac, DeviceKey, InvalidKey, MasterKey, SessionKey};
pub use seal::{Direction, Seal, TAG_LEN};
pub use serial::{InvalidSerial, Serial};
pub use session::{EventRefusal, EventStore, ServerSession, Violation};
pub use transfer::{FileTransfer, TransferStep};
