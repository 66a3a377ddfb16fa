//! CWP/1 test vectors, reproduced byte for byte in both directions.
//!
//! The hex below is the protocol's published vector set, copied into this
//! test so that the project stands alone. Each sealed frame is encoded by one
//! side and decoded by the other, in the order of the session, so sequence
//! numbers advance exactly as they do on the wire.

#![allow(clippy::unwrap_used)] // a failing unwrap is a failing test

use bytes::{Bytes, BytesMut};
use cwp::codec::Header;
use cwp::*;

fn bytes(hex_text: &str) -> BytesMut {
    let compact: String = hex_text.split_whitespace().collect();
    BytesMut::from(&hex::decode(compact).expect("vector is valid hex")[..])
}

fn key32(hex_text: &str) -> [u8; 32] {
    hex::decode(hex_text).unwrap().try_into().unwrap()
}

const MASTER_KEY: [u8; 32] = {
    let mut key = [0u8; 32];
    let mut i = 0;
    while i < 32 {
        key[i] = i as u8;
        i += 1;
    }
    key
};
const DEVICE_KEY: &str = "c550eed0f0cc5f4f2e050f8b5e78acf9082e0aafb94194c0402d2aab5def18d6";
const NONCE_D: [u8; 16] = [
    0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff,
];
const NONCE_S: [u8; 16] = [
    0xf0, 0xe1, 0xd2, 0xc3, 0xb4, 0xa5, 0x96, 0x87, 0x78, 0x69, 0x5a, 0x4b, 0x3c, 0x2d, 0x1e, 0x0f,
];
const AUTH_MAC: &str = "8e944fcfda0f2fe5656416fbbfd5de683f8198cfbba947748e93897e5497054f";
const SESSION_KEY: &str = "7c98836d9212f9a76dca25051d42348457e55628a39b7e8a456851b4c97e1234";

/// HELLO serial `CTRL-0042`, firmware `fw-2.1.0`, nonce_d as above
const HELLO: &str = "\
    43 57 01 01 00 00 00 23 f9 fe c9 ba 09 43 54 52\
    4c 2d 30 30 34 32 08 66 77 2d 32 2e 31 2e 30 00\
    11 22 33 44 55 66 77 88 99 aa bb cc dd ee ff\
";

/// CHALLENGE with nonce_s as above
const CHALLENGE: &str = "\
    43 57 01 81 00 00 00 10 e6 95 33 10 f0 e1 d2 c3\
    b4 a5 96 87 78 69 5a 4b 3c 2d 1e 0f\
";

/// AUTH with the mac above
const AUTH: &str = "\
    43 57 01 02 00 00 00 20 b8 c4 49 0d 8e 94 4f cf\
    da 0f 2f e5 65 64 16 fb bf d5 de 68 3f 81 98 cf\
    bb a9 47 74 8e 93 89 7e 54 97 05 4f\
";

/// ERROR code 8 UNAUTHORIZED, fatal, ref_type 0x02, message `bad mac` (as sent when AUTH fails: unsealed)
const ERROR_UNAUTHORIZED: &str = "\
    43 57 01 8f 00 00 00 0c 5f 40 9f 85 00 08 01 02\
    07 62 61 64 20 6d 61 63\
";

/// server frame 0: WELCOME session 16 bytes of 0xAB, heartbeat_s 30, max_payload 65536, event_window 256, last_event_id 41, server `driver-5001`
const S0_WELCOME: &str = "\
    43 57 01 82 00 00 00 34 71 59 9d f2 ab ab ab ab\
    ab ab ab ab ab ab ab ab ab ab ab ab 00 1e 00 01\
    00 00 01 00 00 00 00 00 00 00 00 29 0b 64 72 69\
    76 65 72 2d 35 30 30 31 b5 0f 18 7c a2 3e f5 c8\
";

/// device frame 0: EVENT id 42, time_ms 1767225600000, kind 7, body `{"t":21.5}`
const D0_EVENT_42: &str = "\
    43 57 01 03 00 00 00 24 4f 84 4a 32 00 00 00 00\
    00 00 00 2a 00 00 01 9b 76 da a8 00 00 07 7b 22\
    74 22 3a 32 31 2e 35 7d da 9e 6f ae 27 11 4b 4d\
";

/// server frame 1: ACK 42
const S1_ACK_42: &str = "\
    43 57 01 83 00 00 00 10 67 7b cf 12 00 00 00 00\
    00 00 00 2a 4b 20 c7 84 7c ac ae d9\
";

/// server frame 2: COMMAND command_id 0x11 x16, name `reboot`, body `{"delay_s":5}`
const S2_COMMAND: &str = "\
    43 57 01 86 00 00 00 2c 9c 6c 2b 45 11 11 11 11\
    11 11 11 11 11 11 11 11 11 11 11 11 06 72 65 62\
    6f 6f 74 7b 22 64 65 6c 61 79 5f 73 22 3a 35 7d\
    f6 43 d3 8b df 9a bc 5b\
";

/// device frame 1: EVENT id 43, time_ms 0, kind 0xFFFF (command result): command_id 0x11 x16, status OK, data `done`
const D1_COMMAND_RESULT: &str = "\
    43 57 01 03 00 00 00 2f 4b c2 23 01 00 00 00 00\
    00 00 00 2b 00 00 00 00 00 00 00 00 ff ff 11 11\
    11 11 11 11 11 11 11 11 11 11 11 11 11 11 00 64\
    6f 6e 65 d7 fc 3b 0f ca 97 9b eb\
";

/// device frame 2: UPLOAD_BEGIN upload_id 0x22 x16, total_size 2008, name `log.bin`
const D2_UPLOAD_BEGIN: &str = "\
    43 57 01 04 00 00 00 28 b8 df a1 d4 22 22 22 22\
    22 22 22 22 22 22 22 22 22 22 22 22 00 00 00 00\
    00 00 07 d8 07 6c 6f 67 2e 62 69 6e 1e 3e 04 23\
    c7 9e da 5d\
";

/// server frame 3: UPLOAD_STATUS upload_id 0x22 x16, durable_offset 0
const S3_UPLOAD_STATUS: &str = "\
    43 57 01 84 00 00 00 20 34 92 81 48 22 22 22 22\
    22 22 22 22 22 22 22 22 22 22 22 22 00 00 00 00\
    00 00 00 00 aa c9 e1 29 43 07 5a 3d\
";

/// device frame 3: BLOCK with 1,004 data bytes `i mod 251` for i = 0..1003 (the frame is exactly 1,024 bytes)
const D3_BLOCK: &str = "\
    43 57 01 05 00 00 03 f4 ae 80 81 e9 00 01 02 03\
    04 05 06 07 08 09 0a 0b 0c 0d 0e 0f 10 11 12 13\
    14 15 16 17 18 19 1a 1b 1c 1d 1e 1f 20 21 22 23\
    24 25 26 27 28 29 2a 2b 2c 2d 2e 2f 30 31 32 33\
    34 35 36 37 38 39 3a 3b 3c 3d 3e 3f 40 41 42 43\
    44 45 46 47 48 49 4a 4b 4c 4d 4e 4f 50 51 52 53\
    54 55 56 57 58 59 5a 5b 5c 5d 5e 5f 60 61 62 63\
    64 65 66 67 68 69 6a 6b 6c 6d 6e 6f 70 71 72 73\
    74 75 76 77 78 79 7a 7b 7c 7d 7e 7f 80 81 82 83\
    84 85 86 87 88 89 8a 8b 8c 8d 8e 8f 90 91 92 93\
    94 95 96 97 98 99 9a 9b 9c 9d 9e 9f a0 a1 a2 a3\
    a4 a5 a6 a7 a8 a9 aa ab ac ad ae af b0 b1 b2 b3\
    b4 b5 b6 b7 b8 b9 ba bb bc bd be bf c0 c1 c2 c3\
    c4 c5 c6 c7 c8 c9 ca cb cc cd ce cf d0 d1 d2 d3\
    d4 d5 d6 d7 d8 d9 da db dc dd de df e0 e1 e2 e3\
    e4 e5 e6 e7 e8 e9 ea eb ec ed ee ef f0 f1 f2 f3\
    f4 f5 f6 f7 f8 f9 fa 00 01 02 03 04 05 06 07 08\
    09 0a 0b 0c 0d 0e 0f 10 11 12 13 14 15 16 17 18\
    19 1a 1b 1c 1d 1e 1f 20 21 22 23 24 25 26 27 28\
    29 2a 2b 2c 2d 2e 2f 30 31 32 33 34 35 36 37 38\
    39 3a 3b 3c 3d 3e 3f 40 41 42 43 44 45 46 47 48\
    49 4a 4b 4c 4d 4e 4f 50 51 52 53 54 55 56 57 58\
    59 5a 5b 5c 5d 5e 5f 60 61 62 63 64 65 66 67 68\
    69 6a 6b 6c 6d 6e 6f 70 71 72 73 74 75 76 77 78\
    79 7a 7b 7c 7d 7e 7f 80 81 82 83 84 85 86 87 88\
    89 8a 8b 8c 8d 8e 8f 90 91 92 93 94 95 96 97 98\
    99 9a 9b 9c 9d 9e 9f a0 a1 a2 a3 a4 a5 a6 a7 a8\
    a9 aa ab ac ad ae af b0 b1 b2 b3 b4 b5 b6 b7 b8\
    b9 ba bb bc bd be bf c0 c1 c2 c3 c4 c5 c6 c7 c8\
    c9 ca cb cc cd ce cf d0 d1 d2 d3 d4 d5 d6 d7 d8\
    d9 da db dc dd de df e0 e1 e2 e3 e4 e5 e6 e7 e8\
    e9 ea eb ec ed ee ef f0 f1 f2 f3 f4 f5 f6 f7 f8\
    f9 fa 00 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d\
    0e 0f 10 11 12 13 14 15 16 17 18 19 1a 1b 1c 1d\
    1e 1f 20 21 22 23 24 25 26 27 28 29 2a 2b 2c 2d\
    2e 2f 30 31 32 33 34 35 36 37 38 39 3a 3b 3c 3d\
    3e 3f 40 41 42 43 44 45 46 47 48 49 4a 4b 4c 4d\
    4e 4f 50 51 52 53 54 55 56 57 58 59 5a 5b 5c 5d\
    5e 5f 60 61 62 63 64 65 66 67 68 69 6a 6b 6c 6d\
    6e 6f 70 71 72 73 74 75 76 77 78 79 7a 7b 7c 7d\
    7e 7f 80 81 82 83 84 85 86 87 88 89 8a 8b 8c 8d\
    8e 8f 90 91 92 93 94 95 96 97 98 99 9a 9b 9c 9d\
    9e 9f a0 a1 a2 a3 a4 a5 a6 a7 a8 a9 aa ab ac ad\
    ae af b0 b1 b2 b3 b4 b5 b6 b7 b8 b9 ba bb bc bd\
    be bf c0 c1 c2 c3 c4 c5 c6 c7 c8 c9 ca cb cc cd\
    ce cf d0 d1 d2 d3 d4 d5 d6 d7 d8 d9 da db dc dd\
    de df e0 e1 e2 e3 e4 e5 e6 e7 e8 e9 ea eb ec ed\
    ee ef f0 f1 f2 f3 f4 f5 f6 f7 f8 f9 fa 00 01 02\
    03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f 10 11 12\
    13 14 15 16 17 18 19 1a 1b 1c 1d 1e 1f 20 21 22\
    23 24 25 26 27 28 29 2a 2b 2c 2d 2e 2f 30 31 32\
    33 34 35 36 37 38 39 3a 3b 3c 3d 3e 3f 40 41 42\
    43 44 45 46 47 48 49 4a 4b 4c 4d 4e 4f 50 51 52\
    53 54 55 56 57 58 59 5a 5b 5c 5d 5e 5f 60 61 62\
    63 64 65 66 67 68 69 6a 6b 6c 6d 6e 6f 70 71 72\
    73 74 75 76 77 78 79 7a 7b 7c 7d 7e 7f 80 81 82\
    83 84 85 86 87 88 89 8a 8b 8c 8d 8e 8f 90 91 92\
    93 94 95 96 97 98 99 9a 9b 9c 9d 9e 9f a0 a1 a2\
    a3 a4 a5 a6 a7 a8 a9 aa ab ac ad ae af b0 b1 b2\
    b3 b4 b5 b6 b7 b8 b9 ba bb bc bd be bf c0 c1 c2\
    c3 c4 c5 c6 c7 c8 c9 ca cb cc cd ce cf d0 d1 d2\
    d3 d4 d5 d6 d7 d8 d9 da db dc dd de df e0 e1 e2\
    e3 e4 e5 e6 e7 e8 e9 ea eb ec ed ee ef f0 f1 f2\
    f3 f4 f5 f6 f7 f8 f9 fa a6 cb c0 d8 7d 8c aa e3\
";

/// device frame 4: UPLOAD_END upload_id 0x22 x16, total_size 4, sha256 of `abcd`
const D4_UPLOAD_END: &str = "\
    43 57 01 06 00 00 00 40 6e 9d 67 06 22 22 22 22\
    22 22 22 22 22 22 22 22 22 22 22 22 00 00 00 00\
    00 00 00 04 88 d4 26 6f d4 e6 33 8d 13 b8 45 fc\
    f2 89 57 9d 20 9c 89 78 23 b9 21 7d a3 e1 61 93\
    6f 03 15 89 a1 bb 3c b5 49 d6 03 df\
";

/// server frame 4: UPLOAD_DONE upload_id 0x22 x16, size 4, status OK
const S4_UPLOAD_DONE: &str = "\
    43 57 01 85 00 00 00 21 72 0e 2d 17 22 22 22 22\
    22 22 22 22 22 22 22 22 22 22 22 22 00 00 00 00\
    00 00 00 04 00 27 13 dc 70 1d ba 14 99\
";

/// device frame 5: PING token 7
const D5_PING: &str = "\
    43 57 01 0a 00 00 00 10 fc 46 50 1f 00 00 00 00\
    00 00 00 07 02 5e cd f4 78 65 99 6e\
";

/// server frame 5: PONG token 7
const S5_PONG: &str = "\
    43 57 01 8b 00 00 00 10 56 92 84 bb 00 00 00 00\
    00 00 00 07 8b be f2 60 b9 26 bf c0\
";

/// server frame 6: FILE_OFFER file_id 0x33 x16, size 1048576, sha256 32 bytes of 0x44, name `fw-2.2.0.bin`
const S6_FILE_OFFER: &str = "\
    43 57 01 88 00 00 00 4d 81 e4 69 d4 33 33 33 33\
    33 33 33 33 33 33 33 33 33 33 33 33 00 00 00 00\
    00 10 00 00 44 44 44 44 44 44 44 44 44 44 44 44\
    44 44 44 44 44 44 44 44 44 44 44 44 44 44 44 44\
    44 44 44 44 0c 66 77 2d 32 2e 32 2e 30 2e 62 69\
    6e 3c ec 77 e5 4e da 13 74\
";

/// device frame 6: FILE_ACCEPT file_id 0x33 x16, offset 0, window 262144
const D6_FILE_ACCEPT: &str = "\
    43 57 01 08 00 00 00 24 39 b8 36 e5 33 33 33 33\
    33 33 33 33 33 33 33 33 33 33 33 33 00 00 00 00\
    00 00 00 00 00 04 00 00 43 22 62 be 94 00 b4 68\
";

/// server frame 7: FILE_CHUNK with the 4 bytes `\x7fELF`
const S7_FILE_CHUNK: &str = "\
    43 57 01 89 00 00 00 0c 6d 8d 2c f2 7f 45 4c 46\
    97 37 55 e7 55 53 7d ef\
";

/// device frame 7: FILE_ACK file_id 0x33 x16, offset 4, status OK
const D7_FILE_ACK: &str = "\
    43 57 01 09 00 00 00 21 b2 3a ea 1c 33 33 33 33\
    33 33 33 33 33 33 33 33 33 33 33 33 00 00 00 00\
    00 00 00 04 00 c4 78 2a 53 37 fa d9 6f\
";

/// server frame 8: ERROR code 9 OUT_OF_ORDER, not fatal, ref_type 0x03, message `event id 42 <= 43`
const S8_ERROR_OUT_OF_ORDER: &str = "\
    43 57 01 8f 00 00 00 1e 7a e0 af 80 00 09 00 03\
    11 65 76 65 6e 74 20 69 64 20 34 32 20 3c 3d 20\
    34 33 1f 39 4c 8b 75 17 df 2e\
";

/// device frame 8: BYE reason NORMAL
const D8_BYE: &str = "\
    43 57 01 0c 00 00 00 09 35 b3 67 53 00 bd 2d ab\
    82 42 d4 e2 8e\
";

/// server frame 9: BYE reason DRAINING, reconnect_after_ms 250
const S9_BYE_DRAINING: &str = "\
    43 57 01 8d 00 00 00 0d 67 92 1c 7e 01 00 00 00\
    fa ca c9 4f d0 d3 b3 2a 67\
";

fn serial() -> Serial {
    "CTRL-0042".parse().unwrap()
}

fn str8(text: &str) -> Str8 {
    Str8::new(text).unwrap()
}

/// Encodes `frame` on the sending side, checks the bytes, then decodes the
/// vector on the receiving side and checks the frame.
fn device_sends(device: &mut DeviceCodec, server: &mut ServerCodec, frame: DeviceFrame, vector: &str) {
    let expected = bytes(vector);
    let mut wire = BytesMut::new();
    device.encode(&frame, &mut wire);
    assert_eq!(hex::encode(&wire), hex::encode(&expected), "encoding {frame:?}");
    let mut rx = expected;
    assert_eq!(server.decode(&mut rx).unwrap(), Some(frame));
    assert!(rx.is_empty());
}

fn server_sends(server: &mut ServerCodec, device: &mut DeviceCodec, frame: ServerFrame, vector: &str) {
    let expected = bytes(vector);
    let mut wire = BytesMut::new();
    server.encode(&frame, &mut wire);
    assert_eq!(hex::encode(&wire), hex::encode(&expected), "encoding {frame:?}");
    let mut rx = expected;
    assert_eq!(device.decode(&mut rx).unwrap(), Some(frame));
    assert!(rx.is_empty());
}

#[test]
fn crc32c_check_values() {
    assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
    assert_eq!(crc32c::crc32c(b""), 0);
}

#[test]
fn key_schedule() {
    let master = MasterKey::from_bytes(MASTER_KEY);
    let device_key = DeviceKey::derive(&master, &serial());
    assert_eq!(device_key, DeviceKey::from_hex(DEVICE_KEY).unwrap());

    let mac = AuthMac::compute(&device_key, &serial(), &Nonce(NONCE_D), &Nonce(NONCE_S));
    assert_eq!(mac, AuthMac(key32(AUTH_MAC)));
    assert!(AuthMac::verify(
        &mac,
        &device_key,
        &serial(),
        &Nonce(NONCE_D),
        &Nonce(NONCE_S)
    ));

    let session_key = SessionKey::derive(&device_key, &Nonce(NONCE_D), &Nonce(NONCE_S));
    assert_eq!(session_key, SessionKey::from_hex(SESSION_KEY).unwrap());
}

#[test]
fn unsealed_handshake_frames() {
    let mut device = DeviceCodec::new();
    let mut server = ServerCodec::new();
    device_sends(
        &mut device,
        &mut server,
        DeviceFrame::Hello(Hello {
            serial: serial(),
            firmware: str8("fw-2.1.0"),
            nonce: Nonce(NONCE_D),
        }),
        HELLO,
    );
    server_sends(
        &mut server,
        &mut device,
        ServerFrame::Challenge(Challenge { nonce: Nonce(NONCE_S) }),
        CHALLENGE,
    );
    device_sends(
        &mut device,
        &mut server,
        DeviceFrame::Auth(Auth {
            mac: AuthMac(key32(AUTH_MAC)),
        }),
        AUTH,
    );
}

#[test]
fn unauthorized_error_is_unsealed_even_after_the_device_starts_sealing() {
    let mut server = ServerCodec::new();
    let mut device = DeviceCodec::new();
    // The device has sent AUTH and expects WELCOME; a failed AUTH is answered unsealed.
    device.start_sealing(&SessionKey::from_hex(SESSION_KEY).unwrap());
    server_sends(
        &mut server,
        &mut device,
        ServerFrame::Error(ErrorFrame {
            code: ErrorCode::UNAUTHORIZED,
            fatal: true,
            ref_type: FrameType::AUTH,
            message: str8("bad mac"),
        }),
        ERROR_UNAUTHORIZED,
    );
}

fn sealed_pair() -> (ServerCodec, DeviceCodec) {
    let key = SessionKey::from_hex(SESSION_KEY).unwrap();
    let mut server = ServerCodec::new();
    let mut device = DeviceCodec::new();
    server.start_sealing(&key);
    device.start_sealing(&key);
    (server, device)
}

fn event_42() -> DeviceFrame {
    DeviceFrame::Event(Event {
        event_id: 42,
        time_ms: 1_767_225_600_000,
        kind: 7,
        body: Bytes::from_static(br#"{"t":21.5}"#),
    })
}

fn welcome() -> ServerFrame {
    ServerFrame::Welcome(Welcome {
        session: SessionId([0xAB; 16]),
        heartbeat_s: 30,
        max_payload: 65_536,
        event_window: 256,
        last_event_id: 41,
        server: str8("driver-5001"),
    })
}

#[test]
fn one_sealed_session_in_order() {
    let (mut server, mut device) = sealed_pair();

    server_sends(&mut server, &mut device, welcome(), S0_WELCOME);
    device_sends(&mut device, &mut server, event_42(), D0_EVENT_42);
    server_sends(
        &mut server,
        &mut device,
        ServerFrame::Ack(Ack { event_id: 42 }),
        S1_ACK_42,
    );
    server_sends(
        &mut server,
        &mut device,
        ServerFrame::Command(Command {
            command_id: CommandId([0x11; 16]),
            name: str8("reboot"),
            body: Bytes::from_static(br#"{"delay_s":5}"#),
        }),
        S2_COMMAND,
    );

    let result = CommandResult {
        command_id: CommandId([0x11; 16]),
        status: CommandStatus::OK,
        data: Bytes::from_static(b"done"),
    };
    device_sends(
        &mut device,
        &mut server,
        DeviceFrame::Event(Event {
            event_id: 43,
            time_ms: 0,
            kind: Event::COMMAND_RESULT_KIND,
            body: result.encode(),
        }),
        D1_COMMAND_RESULT,
    );
    // The event body (after id, time and kind, before the tag) is the result.
    let wire = bytes(D1_COMMAND_RESULT);
    let event_body = Bytes::copy_from_slice(&wire[12 + 18..wire.len() - TAG_LEN]);
    assert_eq!(CommandResult::decode(event_body).unwrap(), result);

    device_sends(
        &mut device,
        &mut server,
        DeviceFrame::UploadBegin(UploadBegin {
            upload_id: UploadId([0x22; 16]),
            total_size: 2008,
            name: str8("log.bin"),
        }),
        D2_UPLOAD_BEGIN,
    );
    server_sends(
        &mut server,
        &mut device,
        ServerFrame::UploadStatus(UploadStatus {
            upload_id: UploadId([0x22; 16]),
            durable_offset: 0,
        }),
        S3_UPLOAD_STATUS,
    );
    let block: Vec<u8> = (0..1004u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(bytes(D3_BLOCK).len(), 1024, "a 1,004-byte block makes a 1 KiB frame");
    device_sends(
        &mut device,
        &mut server,
        DeviceFrame::Block(Block { data: block.into() }),
        D3_BLOCK,
    );
    device_sends(
        &mut device,
        &mut server,
        DeviceFrame::UploadEnd(UploadEnd {
            upload_id: UploadId([0x22; 16]),
            total_size: 4,
            sha256: key32("88d4266fd4e6338d13b845fcf289579d209c897823b9217da3e161936f031589"),
        }),
        D4_UPLOAD_END,
    );
    server_sends(
        &mut server,
        &mut device,
        ServerFrame::UploadDone(UploadDone {
            upload_id: UploadId([0x22; 16]),
            size: 4,
            status: UploadOutcome::OK,
        }),
        S4_UPLOAD_DONE,
    );
    device_sends(&mut device, &mut server, DeviceFrame::Ping(Ping { token: 7 }), D5_PING);
    server_sends(&mut server, &mut device, ServerFrame::Pong(Pong { token: 7 }), S5_PONG);
    server_sends(
        &mut server,
        &mut device,
        ServerFrame::FileOffer(FileOffer {
            file_id: FileId([0x33; 16]),
            size: 1_048_576,
            sha256: [0x44; 32],
            name: str8("fw-2.2.0.bin"),
        }),
        S6_FILE_OFFER,
    );
    device_sends(
        &mut device,
        &mut server,
        DeviceFrame::FileAccept(FileAccept {
            file_id: FileId([0x33; 16]),
            offset: 0,
            window: 262_144,
        }),
        D6_FILE_ACCEPT,
    );
    server_sends(
        &mut server,
        &mut device,
        ServerFrame::FileChunk(FileChunk {
            data: Bytes::from_static(b"\x7fELF"),
        }),
        S7_FILE_CHUNK,
    );
    device_sends(
        &mut device,
        &mut server,
        DeviceFrame::FileAck(FileAck {
            file_id: FileId([0x33; 16]),
            offset: 4,
            status: FileAckStatus::OK,
        }),
        D7_FILE_ACK,
    );
    server_sends(
        &mut server,
        &mut device,
        ServerFrame::Error(ErrorFrame::new(
            ErrorCode::OUT_OF_ORDER,
            FrameType::EVENT,
            "event id 42 <= 43",
        )),
        S8_ERROR_OUT_OF_ORDER,
    );
    device_sends(
        &mut device,
        &mut server,
        DeviceFrame::Bye(DeviceBye {
            reason: ByeReason::NORMAL,
        }),
        D8_BYE,
    );
    server_sends(
        &mut server,
        &mut device,
        ServerFrame::Bye(ServerBye {
            reason: ByeReason::DRAINING,
            reconnect_after_ms: 250,
        }),
        S9_BYE_DRAINING,
    );
}

/// A server that has sent WELCOME and expects device frame 0.
fn server_expecting_device_frame_0() -> ServerCodec {
    let (mut server, _) = sealed_pair();
    server.encode(&welcome(), &mut BytesMut::new());
    server
}

fn rejected(server: &mut ServerCodec, wire: BytesMut) -> DecodeError {
    let mut rx = wire;
    server.decode(&mut rx).expect_err("the frame must be rejected")
}

#[test]
fn flipped_byte_with_the_old_crc_is_bad_crc() {
    let mut wire = bytes(D0_EVENT_42);
    let last = wire.len() - 1;
    wire[last] ^= 0x01; // ... 27 11 4b 4c
    let err = rejected(&mut server_expecting_device_frame_0(), wire);
    assert!(matches!(err, DecodeError::BadCrc { .. }), "{err:?}");
    assert_eq!(err.code(), ErrorCode::BAD_CRC);
    assert!(err.code().is_fatal());
}

#[test]
fn flipped_byte_with_a_recomputed_crc_is_bad_tag() {
    let mut wire = bytes(D0_EVENT_42);
    let last = wire.len() - 1;
    wire[last] ^= 0x01;
    let crc = crc32c::crc32c_append(crc32c::crc32c(&wire[..8]), &wire[12..]);
    wire[8..12].copy_from_slice(&crc.to_be_bytes());
    assert_eq!(
        &wire[..12],
        &bytes("43 57 01 03 00 00 00 24 bd ef c9 31")[..],
        "the spec's recomputed crc"
    );
    let err = rejected(&mut server_expecting_device_frame_0(), wire);
    assert_eq!(
        err,
        DecodeError::BadTag {
            frame_type: FrameType::EVENT
        }
    );
    assert_eq!(err.code(), ErrorCode::BAD_TAG);
    assert!(err.code().is_fatal());
}

#[test]
fn replayed_frame_is_bad_tag() {
    let mut server = server_expecting_device_frame_0();
    let mut rx = bytes(D0_EVENT_42);
    assert_eq!(server.decode(&mut rx).unwrap(), Some(event_42()));
    // The same bytes again would be device frame 1: the tag no longer verifies.
    let err = rejected(&mut server, bytes(D0_EVENT_42));
    assert_eq!(err.code(), ErrorCode::BAD_TAG);
}

#[test]
fn length_bomb_is_refused_from_the_header_alone() {
    let mut server = ServerCodec::new();
    let mut rx = bytes("43 57 01 03 00 01 00 01 00 00 00 00");
    let capacity_before = rx.capacity();
    let err = server.decode(&mut rx).unwrap_err();
    assert_eq!(
        err,
        DecodeError::FrameTooLarge {
            frame_type: FrameType::EVENT,
            length: 65_537,
            max: 65_536
        }
    );
    assert_eq!(err.code(), ErrorCode::FRAME_TOO_LARGE);
    assert!(err.code().is_fatal());
    assert_eq!(rx.capacity(), capacity_before, "nothing was reserved for the payload");
    // Even the first 8 bytes suffice.
    assert_eq!(
        Header::check(&bytes("43 57 01 03 00 01 00 01"), 65_536)
            .unwrap_err()
            .code(),
        ErrorCode::FRAME_TOO_LARGE
    );
}

#[test]
fn hello_with_a_space_in_the_serial_is_malformed() {
    // The HELLO vector with serial `CTRL 42`: a serial cannot even be built
    // with a space, so the frame is assembled by hand.
    let mut body = vec![7u8];
    body.extend_from_slice(b"CTRL 42");
    body.push(8);
    body.extend_from_slice(b"fw-2.1.0");
    body.extend_from_slice(&NONCE_D);
    let mut wire = BytesMut::new();
    wire.extend_from_slice(&[0x43, 0x57, 0x01, 0x01]);
    wire.extend_from_slice(&(body.len() as u32).to_be_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&wire[..8]), &body);
    wire.extend_from_slice(&crc.to_be_bytes());
    wire.extend_from_slice(&body);
    let err = rejected(&mut ServerCodec::new(), wire);
    assert_eq!(
        err,
        DecodeError::Malformed {
            frame_type: FrameType::HELLO,
            reason: Malformation::InvalidSerial
        }
    );
    assert_eq!(err.code(), ErrorCode::MALFORMED);
    assert!(err.code().is_fatal());
}

#[test]
fn event_before_the_handshake_is_unexpected() {
    let mut handshake = ServerHandshake::default();
    let DeviceFrame::Event(event) = event_42() else {
        unreachable!()
    };
    let err = handshake
        .receive(DeviceFrame::Event(event), || Nonce(NONCE_S), |_| None)
        .unwrap_err();
    assert_eq!(err, HandshakeError::NotAllowed(FrameType::EVENT));
    assert_eq!(err.code(), ErrorCode::UNEXPECTED);
    assert_eq!(err.ref_type(), FrameType::EVENT);
    assert!(err.to_frame().fatal);
}

#[test]
fn the_handshake_state_machines_reproduce_the_vectors() {
    let master = MasterKey::from_bytes(MASTER_KEY);
    let device_key = DeviceKey::derive(&master, &serial());
    let (device, hello) = DeviceHandshake::start(serial(), str8("fw-2.1.0"), device_key.clone(), Nonce(NONCE_D));
    let mut wire = BytesMut::new();
    DeviceCodec::new().encode(&hello, &mut wire);
    assert_eq!(wire, bytes(HELLO));

    let mut server = ServerHandshake::default();
    let ServerStep::Challenge(challenge) = server.receive(hello, || Nonce(NONCE_S), |_| None).unwrap() else {
        panic!("HELLO is answered by CHALLENGE")
    };
    let (auth, device_session_key) = device.answer(&challenge);
    let mut wire = BytesMut::new();
    DeviceCodec::new().encode(&auth, &mut wire);
    assert_eq!(wire, bytes(AUTH));

    let step = server.receive(auth, || unreachable!(), |s| Some(DeviceKey::derive(&master, s)));
    let ServerStep::Authenticated {
        serial: who,
        session_key,
        ..
    } = step.unwrap()
    else {
        panic!("a good AUTH authenticates")
    };
    assert_eq!(who, serial());
    assert_eq!(session_key, SessionKey::from_hex(SESSION_KEY).unwrap());
    assert_eq!(device_session_key, session_key);
}

#[test]
fn a_wrong_mac_and_an_unknown_serial_get_the_same_unauthorized() {
    for known in [true, false] {
        let mut server = ServerHandshake::default();
        let hello = DeviceFrame::Hello(Hello {
            serial: serial(),
            firmware: str8("fw-2.1.0"),
            nonce: Nonce(NONCE_D),
        });
        server.receive(hello, || Nonce(NONCE_S), |_| None).unwrap();
        let auth = DeviceFrame::Auth(Auth { mac: AuthMac([0; 32]) });
        let key = known.then(|| DeviceKey::from_hex(DEVICE_KEY).unwrap());
        let err = server.receive(auth, || unreachable!(), |_| key).unwrap_err();
        let mut wire = BytesMut::new();
        ServerCodec::new().encode(&ServerFrame::Error(err.to_frame()), &mut wire);
        assert_eq!(wire, bytes(ERROR_UNAUTHORIZED), "known serial: {known}");
    }
}
