//! The worked example of docs/HTTP.md, value for value: master key
//! 000102…1f, serial `CTRL-0042`, 2026-01-01T00:00:00Z.

use bytes::Bytes;
use cwp::{DeviceKey, MasterKey, Serial};
use drover_http_ingest::ndjson::{self, BatchLimits};
use drover_http_ingest::signature::{
    self, BodyDigest, BodySha256, Credentials, HttpKey, RequestLine, RequestNonce, string_to_sign,
};
use drover_http_ingest::token::{BearerToken, DEFAULT_TOKEN_LIFETIME_MS, TokenKey};

const DEVICE_KEY: &str = "c550eed0f0cc5f4f2e050f8b5e78acf9082e0aafb94194c0402d2aab5def18d6";
const K_HTTP: &str = "b404cffccfa5d52118dc2a8953d435a2317ef85288ee1a35f20760f6b32c1829";
const K_TOKEN: &str = "78bc6bb8b3147daf5902ba199addf11e9152e29632160dd699a5268c7efb2b7b";

const TS_MS: u64 = 1_767_225_600_000;
const NONCE: &str = "00112233445566778899aabbccddeeff";

/// The batch of the example, two events.
const BODY: &[u8] = b"{\"event_id\":1,\"time_ms\":1767225600000,\"kind\":1,\"body\":\"{\\\"t\\\":21.5}\"}\n\
{\"event_id\":2,\"time_ms\":1767225601000,\"kind\":2,\"body_b64\":\"AAEC\"}\n";
const BODY_SHA256: &str = "fd541d580d937e3df85fa37a074810800efbda13d5e3df532a0e22d7744d8553";

const TO_SIGN: &str = "CWP1-HTTP\n\
POST\n\
/v1/events\n\
1767225600000\n\
00112233445566778899aabbccddeeff\n\
fd541d580d937e3df85fa37a074810800efbda13d5e3df532a0e22d7744d8553";
const AUTHORIZATION: &str = "CWP1-HMAC-SHA256 serial=CTRL-0042,ts=1767225600000,\
nonce=00112233445566778899aabbccddeeff,\
sig=bbd47bd0cd5ad4088a107b60883e9c5b7bf0d7ec23eec620ed486f9a23cbf097";

/// `POST /v1/token`, empty body, same ts and nonce.
const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
const TOKEN_AUTHORIZATION: &str = "CWP1-HMAC-SHA256 serial=CTRL-0042,ts=1767225600000,\
nonce=00112233445566778899aabbccddeeff,\
sig=d3b2e0813833be107cd37fd81b73f81f00eaf5b9456fd188ffbcb712a1fa5d98";

/// Issued at `TS_MS` for the default hour.
const TOKEN: &str = "cwp1.CTRL-0042.1767229200000.1e380694270cca1c9d069865c36e7b3c30a2e0f19903a29ed3dd602bbb9cfaa9";

fn serial() -> Serial {
    "CTRL-0042".parse().expect("a valid serial")
}

fn device_key() -> DeviceKey {
    let master = MasterKey::from_bytes(std::array::from_fn(|i| i as u8));
    DeviceKey::derive(&master, &serial())
}

fn nonce() -> RequestNonce {
    NONCE.parse().expect("a valid nonce")
}

#[test]
fn the_keys() {
    assert_eq!(hex::encode(device_key().as_bytes()), DEVICE_KEY, "CWP/1's own vector");
    assert_eq!(hex::encode(HttpKey::derive(&device_key()).as_bytes()), K_HTTP);
    assert_eq!(hex::encode(TokenKey::derive(&device_key()).as_bytes()), K_TOKEN);
}

#[test]
fn the_signed_batch() {
    let digest = BodySha256::of(BODY);
    assert_eq!(digest.to_hex(), BODY_SHA256);
    let request = RequestLine::new("POST", "/v1/events").expect("signable");
    assert_eq!(string_to_sign(&request, TS_MS, &nonce(), &digest), TO_SIGN);

    let headers =
        signature::sign(&device_key(), &serial(), "POST", "/v1/events", TS_MS, &nonce(), &digest).expect("signable");
    assert_eq!(headers.authorization, AUTHORIZATION);
    assert_eq!(headers.content_sha256, BODY_SHA256);
}

#[test]
fn the_signed_batch_verifies_as_the_gateway_would() {
    let credentials = Credentials::parse(AUTHORIZATION).expect("well formed");
    assert_eq!(credentials.serial(), &serial());
    let verified = credentials
        .verify(&device_key(), "POST", "/v1/events", Some(BODY_SHA256), TS_MS + 12_345)
        .expect("verifies");
    assert_eq!(
        (verified.serial, verified.ts_ms, verified.nonce),
        (serial(), TS_MS, nonce())
    );
    assert_eq!(verified.replay_window_end_ms(), 1_767_225_900_000);

    let mut digest = BodyDigest::new();
    let mut parser = ndjson::BatchParser::new(BatchLimits::default());
    for chunk in BODY.chunks(50) {
        digest.update(chunk);
        parser.feed(Bytes::copy_from_slice(chunk));
    }
    assert_eq!(digest.verify(&verified.body_sha256), Ok(()));
    let batch = parser.finish();
    assert_eq!(batch.errors, vec![]);
    let events: Vec<_> = batch
        .records
        .iter()
        .map(|r| (r.line, r.event_id, r.time_ms, r.kind, r.body.to_vec()))
        .collect();
    assert_eq!(
        events,
        vec![
            (1, 1, 1_767_225_600_000, 1, br#"{"t":21.5}"#.to_vec()),
            (2, 2, 1_767_225_601_000, 2, vec![0x00, 0x01, 0x02]),
        ]
    );
}

#[test]
fn the_token_request_and_the_token() {
    let headers = signature::sign(
        &device_key(),
        &serial(),
        "POST",
        "/v1/token",
        TS_MS,
        &nonce(),
        &BodySha256::of(b""),
    )
    .expect("signable");
    assert_eq!(headers.authorization, TOKEN_AUTHORIZATION);
    assert_eq!(headers.content_sha256, EMPTY_SHA256);

    let token = BearerToken::issue(&device_key(), &serial(), TS_MS, DEFAULT_TOKEN_LIFETIME_MS);
    assert_eq!(token.to_string(), TOKEN);
    let presented = BearerToken::from_authorization(&format!("Bearer {TOKEN}")).expect("well formed");
    assert_eq!(
        presented.verify(&device_key(), presented.serial(), TS_MS + 3_599_999),
        Ok(())
    );
}
