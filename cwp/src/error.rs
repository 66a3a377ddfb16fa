//! CWP/1 §4 Errors: the wire error codes, and the typed decode error that
//! maps every way a received byte stream can be wrong to exactly one code.

use std::fmt;

use crate::frame_type::FrameType;

/// An error code as carried by an `ERROR` frame (CWP/1 §4).
///
/// A newtype rather than an enum so that a device decoding an `ERROR` from a
/// newer server keeps the code it does not know instead of failing.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ErrorCode(pub u16);

impl ErrorCode {
    /// Magic is not `CW`.
    pub const BAD_MAGIC: Self = Self(1);
    /// Version is not 1.
    pub const BAD_VERSION: Self = Self(2);
    /// CRC-32C does not match.
    pub const BAD_CRC: Self = Self(3);
    /// `length` exceeds `max_payload`.
    pub const FRAME_TOO_LARGE: Self = Self(4);
    /// Frame type not defined for this direction.
    pub const UNKNOWN_TYPE: Self = Self(5);
    /// Body does not decode, or a bad serial.
    pub const MALFORMED: Self = Self(6);
    /// Frame not allowed in this state.
    pub const UNEXPECTED: Self = Self(7);
    /// Unknown serial or wrong mac.
    pub const UNAUTHORIZED: Self = Self(8);
    /// Event id not increasing on this connection.
    pub const OUT_OF_ORDER: Self = Self(9);
    /// The server cannot store now; the device keeps its data and retries.
    pub const BUSY: Self = Self(10);
    /// Upload id open on another session.
    pub const UPLOAD_CONFLICT: Self = Self(11);
    /// Handshake too slow.
    pub const TIMEOUT: Self = Self(12);
    /// Server fault; nothing unacknowledged was stored.
    pub const INTERNAL: Self = Self(13);
    /// A sealed frame's tag does not verify.
    pub const BAD_TAG: Self = Self(14);

    /// Every code the spec defines, in code order.
    pub const ALL: [Self; 14] = [
        Self::BAD_MAGIC,
        Self::BAD_VERSION,
        Self::BAD_CRC,
        Self::FRAME_TOO_LARGE,
        Self::UNKNOWN_TYPE,
        Self::MALFORMED,
        Self::UNEXPECTED,
        Self::UNAUTHORIZED,
        Self::OUT_OF_ORDER,
        Self::BUSY,
        Self::UPLOAD_CONFLICT,
        Self::TIMEOUT,
        Self::INTERNAL,
        Self::BAD_TAG,
    ];

    /// The spec's name for the code, or `None` for a code it does not define.
    pub fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            1 => "BAD_MAGIC",
            2 => "BAD_VERSION",
            3 => "BAD_CRC",
            4 => "FRAME_TOO_LARGE",
            5 => "UNKNOWN_TYPE",
            6 => "MALFORMED",
            7 => "UNEXPECTED",
            8 => "UNAUTHORIZED",
            9 => "OUT_OF_ORDER",
            10 => "BUSY",
            11 => "UPLOAD_CONFLICT",
            12 => "TIMEOUT",
            13 => "INTERNAL",
            14 => "BAD_TAG",
            _ => return None,
        })
    }

    /// Whether the spec's table marks the code fatal: after sending it the
    /// server closes the connection. Unknown codes are treated as fatal.
    pub fn is_fatal(self) -> bool {
        !matches!(self, Self::OUT_OF_ORDER | Self::BUSY | Self::UPLOAD_CONFLICT)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "ERROR_{}", self.0),
        }
    }
}

impl fmt::Debug for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}({})", self.0)
    }
}

/// Why a received byte stream could not be turned into a frame.
///
/// Every variant is fatal for the connection (CWP/1 §1: "the byte stream can
/// no longer be trusted") and maps to exactly one wire [`ErrorCode`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The first two bytes are not `CW`.
    #[error("bad magic {found:02x?}")]
    BadMagic {
        /// The two bytes found instead.
        found: [u8; 2],
    },
    /// The version byte is not 1.
    #[error("unsupported version {found}")]
    BadVersion {
        /// The version byte found.
        found: u8,
    },
    /// The header announces more payload than the negotiated `max_payload`.
    #[error("{frame_type} announces {length} payload bytes, max is {max}")]
    FrameTooLarge {
        /// The frame's type byte.
        frame_type: FrameType,
        /// The announced payload length.
        length: u32,
        /// The receiver's `max_payload`.
        max: u32,
    },
    /// The CRC-32C over header and payload does not match.
    #[error("{frame_type} crc is {received:08x}, computed {computed:08x}")]
    BadCrc {
        /// The frame's type byte.
        frame_type: FrameType,
        /// The crc the header carries.
        received: u32,
        /// The crc of the bytes received.
        computed: u32,
    },
    /// A sealed frame's tag does not verify under the session key.
    #[error("{frame_type} tag does not verify")]
    BadTag {
        /// The frame's type byte.
        frame_type: FrameType,
    },
    /// The type is not one a peer in this direction may send.
    #[error("unknown frame type {frame_type}")]
    UnknownType {
        /// The frame's type byte.
        frame_type: FrameType,
    },
    /// The body does not decode as the type's fields.
    #[error("malformed {frame_type}: {reason}")]
    Malformed {
        /// The frame's type byte.
        frame_type: FrameType,
        /// What is wrong, for logs and the `ERROR` message.
        reason: Malformation,
    },
}

impl DecodeError {
    /// The wire error code a server answers this failure with.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::BadMagic { .. } => ErrorCode::BAD_MAGIC,
            Self::BadVersion { .. } => ErrorCode::BAD_VERSION,
            Self::FrameTooLarge { .. } => ErrorCode::FRAME_TOO_LARGE,
            Self::BadCrc { .. } => ErrorCode::BAD_CRC,
            Self::BadTag { .. } => ErrorCode::BAD_TAG,
            Self::UnknownType { .. } => ErrorCode::UNKNOWN_TYPE,
            Self::Malformed { .. } => ErrorCode::MALFORMED,
        }
    }

    /// The type of the offending frame for the `ERROR` frame's `ref_type`,
    /// 0 when the header was not trustworthy enough to name one.
    pub fn ref_type(&self) -> FrameType {
        match self {
            Self::BadMagic { .. } | Self::BadVersion { .. } => FrameType(0),
            Self::FrameTooLarge { frame_type, .. }
            | Self::BadCrc { frame_type, .. }
            | Self::BadTag { frame_type }
            | Self::UnknownType { frame_type }
            | Self::Malformed { frame_type, .. } => *frame_type,
        }
    }
}

/// What exactly is wrong with a body that does not decode (`MALFORMED`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Malformation {
    /// Fewer bytes than the type's fields need.
    #[error("body too short")]
    Truncated,
    /// Bytes left over after the last field.
    #[error("trailing bytes after the last field")]
    TrailingBytes,
    /// A `str8` field is not UTF-8.
    #[error("text field is not UTF-8")]
    NotUtf8,
    /// The serial is not 1–32 bytes of `[A-Za-z0-9._-]`.
    #[error("invalid serial")]
    InvalidSerial,
    /// A `BLOCK` (or `FILE_CHUNK`) without data.
    #[error("empty data")]
    EmptyData,
    /// A sealed frame whose payload cannot even hold its 8-byte tag.
    #[error("sealed payload shorter than its tag")]
    MissingTag,
    /// A flag byte that is neither 0 nor 1.
    #[error("flag byte is neither 0 nor 1")]
    InvalidFlag,
    /// A status byte the protocol does not define (`FILE_ACK.status`).
    #[error("status byte not defined by CWP/1")]
    UnknownStatus,
}
