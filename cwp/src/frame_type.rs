//! CWP/1 §3: the type byte of a frame, on its own so that errors
//! ([`crate::error`]) can name a frame without depending on the frames.

use std::fmt;

/// A frame's type byte (CWP/1 §3). `0x00–0x7F` travel device → server,
/// `0x80–0xFF` server → device.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FrameType(pub u8);

impl FrameType {
    /// Device → server `HELLO`.
    pub const HELLO: Self = Self(0x01);
    /// Device → server `AUTH`.
    pub const AUTH: Self = Self(0x02);
    /// Device → server `EVENT`.
    pub const EVENT: Self = Self(0x03);
    /// Device → server `UPLOAD_BEGIN`.
    pub const UPLOAD_BEGIN: Self = Self(0x04);
    /// Device → server `BLOCK`.
    pub const BLOCK: Self = Self(0x05);
    /// Device → server `UPLOAD_END`.
    pub const UPLOAD_END: Self = Self(0x06);
    /// Device → server `FILE_ACCEPT`.
    pub const FILE_ACCEPT: Self = Self(0x08);
    /// Device → server `FILE_ACK`.
    pub const FILE_ACK: Self = Self(0x09);
    /// Device → server `PING`.
    pub const DEVICE_PING: Self = Self(0x0A);
    /// Device → server `PONG` (answers a server `PING`).
    pub const DEVICE_PONG: Self = Self(0x0B);
    /// Device → server `BYE`.
    pub const DEVICE_BYE: Self = Self(0x0C);
    /// Server → device `CHALLENGE`.
    pub const CHALLENGE: Self = Self(0x81);
    /// Server → device `WELCOME`.
    pub const WELCOME: Self = Self(0x82);
    /// Server → device `ACK`.
    pub const ACK: Self = Self(0x83);
    /// Server → device `UPLOAD_STATUS`.
    pub const UPLOAD_STATUS: Self = Self(0x84);
    /// Server → device `UPLOAD_DONE`.
    pub const UPLOAD_DONE: Self = Self(0x85);
    /// Server → device `COMMAND`.
    pub const COMMAND: Self = Self(0x86);
    /// Server → device `FILE_OFFER`.
    pub const FILE_OFFER: Self = Self(0x88);
    /// Server → device `FILE_CHUNK`.
    pub const FILE_CHUNK: Self = Self(0x89);
    /// Server → device `PONG` (answers a device `PING`).
    pub const SERVER_PONG: Self = Self(0x8B);
    /// Server → device `PING`.
    pub const SERVER_PING: Self = Self(0x8C);
    /// Server → device `BYE`.
    pub const SERVER_BYE: Self = Self(0x8D);
    /// Server → device `ERROR`.
    pub const ERROR: Self = Self(0x8F);

    /// The spec's name of the frame, `None` for an undefined type.
    pub fn name(self) -> Option<&'static str> {
        Some(match self {
            Self::HELLO => "HELLO",
            Self::AUTH => "AUTH",
            Self::EVENT => "EVENT",
            Self::UPLOAD_BEGIN => "UPLOAD_BEGIN",
            Self::BLOCK => "BLOCK",
            Self::UPLOAD_END => "UPLOAD_END",
            Self::FILE_ACCEPT => "FILE_ACCEPT",
            Self::FILE_ACK => "FILE_ACK",
            Self::DEVICE_PING | Self::SERVER_PING => "PING",
            Self::DEVICE_PONG | Self::SERVER_PONG => "PONG",
            Self::DEVICE_BYE | Self::SERVER_BYE => "BYE",
            Self::CHALLENGE => "CHALLENGE",
            Self::WELCOME => "WELCOME",
            Self::ACK => "ACK",
            Self::UPLOAD_STATUS => "UPLOAD_STATUS",
            Self::UPLOAD_DONE => "UPLOAD_DONE",
            Self::COMMAND => "COMMAND",
            Self::FILE_OFFER => "FILE_OFFER",
            Self::FILE_CHUNK => "FILE_CHUNK",
            Self::ERROR => "ERROR",
            _ => return None,
        })
    }
}

impl fmt::Display for FrameType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{name}(0x{:02x})", self.0),
            None => write!(f, "0x{:02x}", self.0),
        }
    }
}

impl fmt::Debug for FrameType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}
