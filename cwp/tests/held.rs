//! Receiving within a byte budget, as a server must before `WELCOME`:
//! 10,000 half-open handshakes announcing 64 KiB frames must not make it
//! hold 640 MiB, and the device must still get exactly the spec's answer.
//!
//! - CWP/1 §1: `length` up to `max_payload` (65,536 before `WELCOME`) is
//!   allowed; the receiver checks magic, version, length, crc, then the
//!   type and the body.
//! - CWP/1 §2: before `WELCOME` only `HELLO` and `AUTH` are allowed, and no
//!   valid one is longer than a `HELLO` with a 32-byte serial and a
//!   255-byte firmware: 305 bytes.
//!
//! So a held receive answers every frame as the plain receive would (same
//! error code, same frame type), while never buffering more than one
//! header plus the budget.

use bytes::BytesMut;
use cwp::*;
use proptest::collection::vec;
use proptest::prelude::*;

/// A frame assembled by hand: header, body, the crc (or a wrong one).
fn frame(frame_type: u8, body: &[u8], good_crc: bool) -> Vec<u8> {
    let mut frame = vec![0x43, 0x57, 0x01, frame_type];
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&[0; 4]);
    frame.extend_from_slice(body);
    let mut crc = crc32c::crc32c_append(crc32c::crc32c(&frame[..8]), &frame[HEADER_LEN..]);
    if !good_crc {
        crc ^= 1;
    }
    frame[8..HEADER_LEN].copy_from_slice(&crc.to_be_bytes());
    frame
}

/// Feeds `wire` to a held receive the way a connection reads: never more
/// than `read_limit_held` at a time, at most `chunk` bytes per read.
/// Returns the outcome and the most bytes ever buffered.
fn receive_held(wire: &[u8], chunk: usize) -> (Result<Option<Received<DeviceFrame>>, DecodeError>, usize) {
    let mut codec = ServerCodec::new();
    let mut held = Held::new(MAX_HANDSHAKE_PAYLOAD);
    let mut rx = BytesMut::new();
    let mut read = 0;
    let mut most = 0;
    loop {
        match codec.decode_held(&mut rx, &mut held) {
            Ok(Some(received)) => return (Ok(Some(received)), most),
            Err(err) => return (Err(err), most),
            Ok(None) => {}
        }
        let limit = codec.read_limit_held(rx.len(), &held).min(chunk);
        let n = limit.min(wire.len() - read);
        if n == 0 {
            return (Ok(None), most);
        }
        rx.extend_from_slice(&wire[read..read + n]);
        read += n;
        most = most.max(rx.len());
    }
}

/// The plain receive of the same bytes, all at once.
fn receive_plain(wire: &[u8]) -> Result<Option<DeviceFrame>, DecodeError> {
    let mut rx = BytesMut::from(wire);
    ServerCodec::new().decode(&mut rx)
}

fn hello_body(serial: &[u8], firmware: &[u8]) -> Vec<u8> {
    let mut body = vec![serial.len() as u8];
    body.extend_from_slice(serial);
    body.push(firmware.len() as u8);
    body.extend_from_slice(firmware);
    body.extend_from_slice(&[7; 16]);
    body
}

const CEILING: usize = HEADER_LEN + MAX_HANDSHAKE_PAYLOAD as usize;

#[test]
fn the_longest_valid_hello_is_the_budget_and_decodes() {
    let body = hello_body(&[b'A'; 32], &[b'f'; 255]);
    assert_eq!(body.len(), MAX_HANDSHAKE_PAYLOAD as usize);
    let (outcome, most) = receive_held(&frame(0x01, &body, true), 4096);
    assert!(
        matches!(outcome, Ok(Some(Received::Frame(DeviceFrame::Hello(_))))),
        "{outcome:?}"
    );
    assert!(most <= CEILING);
}

#[test]
fn an_oversized_hello_is_malformed_after_its_crc_and_is_never_held_whole() {
    let mut body = hello_body(b"CTRL-1", b"fw");
    body.resize(60_000, 0xAA);
    let (outcome, most) = receive_held(&frame(0x01, &body, true), 16 * 1024);
    let err = outcome.unwrap_err();
    assert_eq!((err.code(), err.ref_type()), (ErrorCode::MALFORMED, FrameType::HELLO));
    assert!(most <= CEILING, "{most} bytes buffered");
    assert_eq!(
        receive_plain(&frame(0x01, &body, true)).unwrap_err().code(),
        ErrorCode::MALFORMED
    );
}

#[test]
fn an_oversized_frame_with_a_bad_crc_is_bad_crc() {
    let (outcome, most) = receive_held(&frame(0x01, &vec![0; 65_536], false), 16 * 1024);
    assert_eq!(outcome.unwrap_err().code(), ErrorCode::BAD_CRC);
    assert!(most <= CEILING);
}

#[test]
fn an_oversized_event_is_a_well_formed_frame_not_allowed_yet() {
    let mut body = vec![0; 18];
    body.resize(40_000, 1);
    let (outcome, most) = receive_held(&frame(0x03, &body, true), 4096);
    assert_eq!(outcome.unwrap(), Some(Received::TooLongToHold(FrameType::EVENT)));
    assert!(most <= CEILING);
}

#[test]
fn an_oversized_unknown_type_is_unknown_type_and_beyond_max_payload_is_too_large() {
    let (outcome, _) = receive_held(&frame(0x70, &vec![0; 10_000], true), 4096);
    assert_eq!(outcome.unwrap_err().code(), ErrorCode::UNKNOWN_TYPE);
    let mut header = frame(0x01, &[], true);
    header[4..8].copy_from_slice(&65_537u32.to_be_bytes());
    let (outcome, most) = receive_held(&header, 4096);
    assert_eq!(outcome.unwrap_err().code(), ErrorCode::FRAME_TOO_LARGE);
    assert!(most <= HEADER_LEN);
}

#[test]
fn half_of_an_announced_64_kib_frame_is_consumed_not_kept() {
    let wire = frame(0x01, &vec![0; 65_536], true);
    let (outcome, most) = receive_held(&wire[..HEADER_LEN + 32_768], 16 * 1024);
    assert_eq!(outcome.unwrap(), None, "still waiting for the rest");
    assert!(most <= CEILING, "{most} bytes buffered for a half-sent 64 KiB frame");
}

/// A device frame type, valid or not.
fn frame_type() -> impl Strategy<Value = u8> {
    prop_oneof![
        Just(0x01u8),
        Just(0x02),
        Just(0x03),
        Just(0x05),
        Just(0x06),
        Just(0x0A),
        0u8..=0x7F
    ]
}

proptest! {
    /// Whatever one frame is (any type, any body up to 2,000 bytes, crc
    /// right or wrong) and however it is cut, the held receive answers
    /// with the plain receive's code and frame type, and never buffers
    /// more than the budget.
    #[test]
    fn a_held_receive_answers_as_the_plain_receive(
        frame_type in frame_type(),
        body in vec(any::<u8>(), 0..2_000),
        good_crc in prop::bool::weighted(0.9),
        chunk in 1usize..4_096,
    ) {
        let wire = frame(frame_type, &body, good_crc);
        let (held, most) = receive_held(&wire, chunk);
        let plain = receive_plain(&wire);
        prop_assert!(most <= CEILING);
        match (held, plain) {
            (Ok(Some(Received::Frame(held))), Ok(Some(plain))) => prop_assert_eq!(held, plain),
            (Ok(Some(Received::TooLongToHold(held))), Ok(Some(plain))) => {
                prop_assert!(body.len() > MAX_HANDSHAKE_PAYLOAD as usize);
                prop_assert_eq!(held, plain.frame_type());
            }
            (Err(held), Err(plain)) => {
                prop_assert_eq!((held.code(), held.ref_type()), (plain.code(), plain.ref_type()));
            }
            (held, plain) => prop_assert!(false, "held {:?}, plain {:?}", held, plain),
        }
    }
}
