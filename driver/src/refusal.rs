//! Every `ERROR` a driver sends a device, as a value, and
//! [`Refusal::to_frame`], the one place a refusal becomes a CWP/1 `ERROR`
//! frame (code, the frame it refers to, message; CWP/1 §4 decides which
//! codes are fatal).

use cwp::{DecodeError, ErrorCode, ErrorFrame, EventRefusal, FrameType, HandshakeError, Violation};

use crate::upload::UploadError;

/// Why the driver answers a device with an `ERROR`.
#[derive(Debug)]
pub enum Refusal {
    /// Before `WELCOME`: the handshake took longer than
    /// `DRIVER_HANDSHAKE_TIMEOUT` (`TIMEOUT`).
    HandshakeTimeout,
    /// Before `WELCOME`: `DRIVER_MAX_HANDSHAKES` are in progress and this is
    /// the oldest (`BUSY`).
    HandshakesFull,
    /// `HELLO` from an address, or for a serial, with too many failed
    /// authentications lately (`BUSY`).
    TooManyFailures,
    /// The handshake's own failure (`UNAUTHORIZED`, `UNEXPECTED`).
    Handshake(HandshakeError),
    /// After `WELCOME`: the operator revoked or changed the key the session
    /// was authenticated with (`UNAUTHORIZED`, sealed).
    KeyRevoked,
    /// Before `WELCOME`: the session cannot be registered, the bridge is
    /// unavailable (`INTERNAL`: nothing of the device's was stored).
    StoreUnavailable,
    /// The session's rules refused an event (`OUT_OF_ORDER`, `BUSY`).
    Event(EventRefusal),
    /// The device broke the protocol: bytes that are not CWP/1, or a frame
    /// its session does not allow (fatal).
    Violation(Violation),
    /// An upload frame could not be served.
    Upload(UploadError),
}

impl From<DecodeError> for Refusal {
    fn from(err: DecodeError) -> Self {
        Self::Violation(Violation::Undecodable(err))
    }
}

impl Refusal {
    /// The `ERROR` frame for the device.
    pub fn to_frame(&self) -> ErrorFrame {
        match self {
            Self::HandshakeTimeout => {
                ErrorFrame::new(ErrorCode::TIMEOUT, FrameType(0), "handshake not completed in time")
            }
            Self::HandshakesFull => ErrorFrame::new(
                ErrorCode::BUSY,
                FrameType(0),
                "too many handshakes in progress, retry later",
            ),
            Self::TooManyFailures => ErrorFrame::new(
                ErrorCode::BUSY,
                FrameType::HELLO,
                "too many failed authentications, retry later",
            ),
            Self::Handshake(err) => ErrorFrame::new(err.code(), err.ref_type(), err.message()),
            Self::KeyRevoked => ErrorFrame::new(ErrorCode::UNAUTHORIZED, FrameType(0), "device key revoked or changed"),
            Self::StoreUnavailable => ErrorFrame::new(
                ErrorCode::INTERNAL,
                FrameType::AUTH,
                "event store unavailable, retry later",
            ),
            Self::Event(refusal) => cwp::session::refusal_frame(*refusal),
            Self::Violation(violation) => cwp::session::violation_frame(violation),
            Self::Upload(err) => {
                let (code, ref_type) = err.code_and_frame();
                ErrorFrame::new(code, ref_type, &err.device_message())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_refusals_are_fatal_but_for_busy_which_the_device_retries() {
        let cases = [
            (Refusal::HandshakeTimeout, ErrorCode::TIMEOUT, true),
            (Refusal::HandshakesFull, ErrorCode::BUSY, false),
            (Refusal::TooManyFailures, ErrorCode::BUSY, false),
            (
                Refusal::Handshake(HandshakeError::WrongMac),
                ErrorCode::UNAUTHORIZED,
                true,
            ),
            (Refusal::StoreUnavailable, ErrorCode::INTERNAL, true),
            (
                Refusal::Handshake(HandshakeError::Revoked),
                ErrorCode::UNAUTHORIZED,
                true,
            ),
            (Refusal::KeyRevoked, ErrorCode::UNAUTHORIZED, true),
        ];
        for (refusal, code, fatal) in cases {
            let frame = refusal.to_frame();
            assert_eq!((frame.code, frame.fatal), (code, fatal), "{refusal:?}");
        }
    }

    #[test]
    fn an_unknown_serial_and_a_wrong_mac_read_the_same_to_the_device() {
        let unknown = Refusal::Handshake(HandshakeError::UnknownSerial).to_frame();
        let wrong = Refusal::Handshake(HandshakeError::WrongMac).to_frame();
        assert_eq!(unknown, wrong);
    }

    #[test]
    fn undecodable_bytes_get_their_own_code() {
        let frame = Refusal::from(DecodeError::BadVersion { found: 9 }).to_frame();
        assert_eq!(frame.code, ErrorCode::BAD_VERSION);
        assert!(frame.fatal);
    }
}
