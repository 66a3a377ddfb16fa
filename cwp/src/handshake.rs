//! CWP/1 §2 Session: the handshake as two small state machines, one per
//! side, with no I/O. The caller supplies what the codec must not own: fresh
//! random nonces and the device-key lookup.
//!
//! ```text
//! device                                   server
//!   | HELLO(serial, firmware, nonce_d)  -->  |
//!   | <-- CHALLENGE(nonce_s)                 |
//!   | AUTH(mac)                         -->  |
//!   | <-- WELCOME(...)                       |   (sealed, server frame 0)
//! ```

use crate::error::ErrorCode;
use crate::fields::{Nonce, Str8};
use crate::frame::{Auth, Challenge, DeviceFrame, ErrorFrame, FrameType, Hello};
use crate::keys::{AuthMac, DeviceKey, SessionKey};
use crate::serial::Serial;

/// The server's side of one connection's handshake.
#[derive(Debug, Default)]
pub enum ServerHandshake {
    /// Nothing received yet; only `HELLO` is allowed.
    #[default]
    AwaitingHello,
    /// `CHALLENGE` sent; only `AUTH` is allowed.
    AwaitingAuth {
        /// From `HELLO`.
        hello: Hello,
        /// The nonce this connection's `CHALLENGE` carried. Never reused:
        /// a connection runs one handshake, and each takes a fresh nonce.
        nonce_s: Nonce,
    },
    /// `AUTH` verified, or the handshake failed; nothing more to do here.
    Finished,
}

/// What the server does next after a handshake frame.
#[derive(Debug)]
pub enum ServerStep {
    /// Send this `CHALLENGE`.
    Challenge(Challenge),
    /// The device proved its key: start sealing with `session_key`, then
    /// send `WELCOME`.
    Authenticated {
        /// The authenticated serial.
        serial: Serial,
        /// The firmware it announced.
        firmware: Str8,
        /// Seals every frame from `WELCOME` on.
        session_key: SessionKey,
    },
}

/// Why a handshake failed; the server sends its unsealed, fatal `ERROR`
/// and closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// `UNAUTHORIZED`: no key is known for the serial in `HELLO`.
    #[error("unknown serial")]
    UnknownSerial,
    /// `UNAUTHORIZED`: `AUTH`'s mac does not prove the serial's key.
    #[error("wrong mac")]
    WrongMac,
    /// `UNEXPECTED`: a frame the handshake does not allow here.
    #[error("{0} not allowed before WELCOME")]
    NotAllowed(FrameType),
    /// `UNAUTHORIZED` at `HELLO`: the server's operator revoked the serial.
    /// (Refused before any `CHALLENGE`; the server decides it, the state
    /// machine does not.)
    #[error("serial revoked")]
    Revoked,
}

impl HandshakeError {
    /// The wire code.
    pub fn code(self) -> ErrorCode {
        match self {
            Self::UnknownSerial | Self::WrongMac | Self::Revoked => ErrorCode::UNAUTHORIZED,
            Self::NotAllowed(_) => ErrorCode::UNEXPECTED,
        }
    }

    /// The frame the `ERROR` refers to.
    pub fn ref_type(self) -> FrameType {
        match self {
            Self::UnknownSerial | Self::WrongMac => FrameType::AUTH,
            Self::Revoked => FrameType::HELLO,
            Self::NotAllowed(frame_type) => frame_type,
        }
    }

    /// The `ERROR` frame's message: the same for an unknown serial and a
    /// wrong mac, so that a stranger cannot probe which serials exist.
    pub fn message(self) -> &'static str {
        match self {
            Self::UnknownSerial | Self::WrongMac => "bad mac",
            Self::Revoked => "device key revoked",
            Self::NotAllowed(_) => "handshake incomplete",
        }
    }

    /// The `ERROR` frame for the device.
    pub fn to_frame(self) -> ErrorFrame {
        ErrorFrame::new(self.code(), self.ref_type(), self.message())
    }
}

impl ServerHandshake {
    /// Feeds the next frame the device sent. `fresh_nonce` is called once,
    /// for the `CHALLENGE`; `device_key` looks up the key of a serial.
    pub fn receive(
        &mut self,
        frame: DeviceFrame,
        fresh_nonce: impl FnOnce() -> Nonce,
        device_key: impl FnOnce(&Serial) -> Option<DeviceKey>,
    ) -> Result<ServerStep, HandshakeError> {
        let state = std::mem::replace(self, Self::Finished);
        match (state, frame) {
            (Self::AwaitingHello, DeviceFrame::Hello(hello)) => {
                let nonce_s = fresh_nonce();
                *self = Self::AwaitingAuth { hello, nonce_s };
                Ok(ServerStep::Challenge(Challenge { nonce: nonce_s }))
            }
            (Self::AwaitingAuth { hello, nonce_s }, DeviceFrame::Auth(Auth { mac })) => {
                let key = device_key(&hello.serial).ok_or(HandshakeError::UnknownSerial)?;
                if !AuthMac::verify(&mac, &key, &hello.serial, &hello.nonce, &nonce_s) {
                    return Err(HandshakeError::WrongMac);
                }
                Ok(ServerStep::Authenticated {
                    serial: hello.serial,
                    firmware: hello.firmware,
                    session_key: SessionKey::derive(&key, &hello.nonce, &nonce_s),
                })
            }
            (_, frame) => Err(HandshakeError::NotAllowed(crate::frame::Frame::frame_type(&frame))),
        }
    }
}

/// The device's side of the handshake: what a controller (or the simulator)
/// computes from the server's `CHALLENGE`.
#[derive(Debug)]
pub struct DeviceHandshake {
    serial: Serial,
    nonce_d: Nonce,
    key: DeviceKey,
}

impl DeviceHandshake {
    /// Starts a handshake; returns the state and the `HELLO` to send.
    pub fn start(serial: Serial, firmware: Str8, key: DeviceKey, nonce_d: Nonce) -> (Self, DeviceFrame) {
        let hello = DeviceFrame::Hello(Hello {
            serial,
            firmware,
            nonce: nonce_d,
        });
        (Self { serial, nonce_d, key }, hello)
    }

    /// Answers the `CHALLENGE`: the `AUTH` to send, and the session key to
    /// start sealing with right after sending it.
    pub fn answer(&self, challenge: &Challenge) -> (DeviceFrame, SessionKey) {
        let mac = AuthMac::compute(&self.key, &self.serial, &self.nonce_d, &challenge.nonce);
        let session_key = SessionKey::derive(&self.key, &self.nonce_d, &challenge.nonce);
        (DeviceFrame::Auth(Auth { mac }), session_key)
    }
}
