//! Request signatures, `CWP1-HMAC-SHA256` (docs/HTTP.md §Signed requests).
//!
//! ```text
//! k_http  = HMAC-SHA256(device_key, "CWP1 http")
//! to_sign = "CWP1-HTTP" LF METHOD LF PATH_AND_QUERY LF TS LF NONCE LF BODY_SHA256
//! Authorization: CWP1-HMAC-SHA256 serial=SERIAL,ts=TS,nonce=NONCE,sig=HEX(HMAC-SHA256(k_http, to_sign))
//! X-Content-SHA256: BODY_SHA256
//! ```
//!
//! A gateway verifies a request in three steps, because the key depends on
//! the serial and the body's digest is only known once the body has arrived:
//!
//! 1. [`Credentials::parse`] the `Authorization` value: the serial, to look
//!    up the device key.
//! 2. [`Credentials::verify`] against that key, the request line, the
//!    `X-Content-SHA256` value and the server's clock: a [`Verified`] request
//!    whose (serial, nonce) the gateway checks against the nonces it has seen
//!    (nonce replay is not checked here), until
//!    [`Verified::replay_window_end_ms`].
//! 3. Feed every body chunk to a [`BodyDigest`] and, before acting on the
//!    body, [`BodyDigest::verify`] it against [`Verified::body_sha256`].
//!
//! Clients (and tests) call [`sign`]. Every comparison of a mac or digest is
//! constant time.

use std::fmt;
use std::str::FromStr;

use cwp::{DeviceKey, InvalidSerial, Serial};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::crypto::{decode_lower_hex, encode_hex, encode_hex_into, hmac_sha256, parse_canonical_u64};

/// The authentication scheme, the first word of the `Authorization` value
/// (matched without regard to case, as RFC 9110 §11.1 requires of schemes).
pub const SCHEME: &str = "CWP1-HMAC-SHA256";

/// The header carrying the body's SHA-256 (lowercase, as HTTP libraries
/// spell header names; header names are case-insensitive).
pub const CONTENT_SHA256_HEADER: &str = "x-content-sha256";

/// How far a request's timestamp may be from the server's clock, either way:
/// 300 s.
pub const MAX_CLOCK_SKEW_MS: u64 = 300_000;

/// The first line of every string to sign.
const TO_SIGN_PREFIX: &[u8] = b"CWP1-HTTP";

/// The key that signs one device's HTTP requests:
/// `k_http = HMAC-SHA256(device_key, "CWP1 http")`.
///
/// Its own type so that it never prints and is wiped when dropped, like
/// every key of `cwp::keys`.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct HttpKey([u8; 32]);

impl HttpKey {
    /// `k_http = HMAC-SHA256(device_key, "CWP1 http")`.
    pub fn derive(device_key: &DeviceKey) -> Self {
        Self(hmac_sha256(device_key.as_bytes(), &[b"CWP1 http"]))
    }

    /// The raw key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// `HMAC-SHA256(k_http, to_sign)`, fed field by field so that verifying
    /// allocates nothing.
    fn mac(&self, request: &RequestLine<'_>, ts_ms: u64, nonce: &RequestNonce, body: &BodySha256) -> [u8; 32] {
        let ts = ts_ms.to_string();
        let digest = body.to_hex_bytes();
        hmac_sha256(
            &self.0,
            &[
                TO_SIGN_PREFIX,
                b"\n",
                request.method.as_bytes(),
                b"\n",
                request.path_and_query.as_bytes(),
                b"\n",
                ts.as_bytes(),
                b"\n",
                nonce.as_str().as_bytes(),
                b"\n",
                &digest,
            ],
        )
    }
}

impl fmt::Debug for HttpKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HttpKey(<redacted>)")
    }
}

/// The request's method and target as the server received them, the two
/// caller-supplied lines of the string to sign.
///
/// Checked so that the string to sign is unambiguous: the method is an HTTP
/// token (RFC 9110 §5.6.2) and the target is 1 or more visible ASCII
/// characters (`!` to `~`), so neither can hold the LF that separates fields.
/// The target is signed exactly as sent (no decoding, no normalisation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLine<'a> {
    method: &'a str,
    path_and_query: &'a str,
}

/// A method that is not an HTTP token, or a target that is empty or holds
/// anything but visible ASCII.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the method must be an HTTP token and the path and query 1 or more visible ASCII characters")]
pub struct BadRequestLine;

impl<'a> RequestLine<'a> {
    /// Checks `method` (e.g. `POST`) and `path_and_query` (e.g.
    /// `/v1/events?dry_run=1`).
    pub fn new(method: &'a str, path_and_query: &'a str) -> Result<Self, BadRequestLine> {
        let method_ok = !method.is_empty() && method.bytes().all(is_tchar);
        let target_ok = !path_and_query.is_empty() && path_and_query.bytes().all(|b| b.is_ascii_graphic());
        if method_ok && target_ok {
            Ok(Self { method, path_and_query })
        } else {
            Err(BadRequestLine)
        }
    }

    /// The method, as given.
    pub fn method(&self) -> &'a str {
        self.method
    }

    /// The path and query, as given.
    pub fn path_and_query(&self) -> &'a str {
        self.path_and_query
    }
}

/// RFC 9110 §5.6.2 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A request nonce: exactly 32 lowercase hex digits (16 bytes), fresh and
/// random for every request. Kept as its text, which is what is signed and
/// what a gateway stores to refuse replays.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct RequestNonce([u8; 32]);

/// Text that is not 32 lowercase hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a nonce is exactly 32 lowercase hex digits")]
pub struct InvalidNonce;

impl RequestNonce {
    /// The nonce of 16 random bytes (the caller draws them).
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        let mut text = [0u8; 32];
        encode_hex_into(&bytes, &mut text);
        Self(text)
    }

    /// The nonce as its 32 hex digits.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("a nonce holds only hex digits")
    }
}

impl FromStr for RequestNonce {
    type Err = InvalidNonce;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        decode_lower_hex::<16>(text.as_bytes())
            .map(Self::from_bytes)
            .ok_or(InvalidNonce)
    }
}

impl fmt::Display for RequestNonce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for RequestNonce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RequestNonce({})", self.as_str())
    }
}

/// The SHA-256 of a request body, as bytes; written as 64 lowercase hex
/// digits in `X-Content-SHA256` and in the string to sign.
#[derive(Clone, Copy)]
pub struct BodySha256(pub [u8; 32]);

/// An `X-Content-SHA256` value that is not 64 lowercase hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("X-Content-SHA256 must be 64 lowercase hex digits")]
pub struct MalformedContentSha256;

impl BodySha256 {
    /// The digest of a whole body held in memory (`b""` when there is none).
    pub fn of(body: &[u8]) -> Self {
        Self(Sha256::digest(body).into())
    }

    /// Parses an `X-Content-SHA256` value: exactly 64 lowercase hex digits.
    pub fn parse(header_value: &str) -> Result<Self, MalformedContentSha256> {
        decode_lower_hex::<32>(header_value.as_bytes())
            .map(Self)
            .ok_or(MalformedContentSha256)
    }

    /// The 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        encode_hex(&self.0)
    }

    fn to_hex_bytes(self) -> [u8; 64] {
        let mut text = [0u8; 64];
        encode_hex_into(&self.0, &mut text);
        text
    }
}

/// Constant time: a digest the client announced is compared with the one of
/// the bytes that arrived.
impl PartialEq for BodySha256 {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl Eq for BodySha256 {}

impl fmt::Display for BodySha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for BodySha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BodySha256({})", self.to_hex())
    }
}

/// SHA-256 of a body fed as it arrives, chunk by chunk, in order.
#[derive(Clone, Default)]
pub struct BodyDigest {
    hasher: Sha256,
    len: u64,
}

/// The body that arrived is not the one whose digest the client signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the body's SHA-256 is not the X-Content-SHA256 that was signed")]
pub struct BodyDigestMismatch;

impl BodyDigest {
    /// A digest of nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the next chunk of the body.
    pub fn update(&mut self, chunk: &[u8]) {
        self.hasher.update(chunk);
        self.len += chunk.len() as u64;
    }

    /// Bytes fed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing has been fed.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The digest of everything fed.
    pub fn finish(self) -> BodySha256 {
        BodySha256(self.hasher.finalize().into())
    }

    /// Whether the body fed is the one `signed` names, in constant time.
    pub fn verify(self, signed: &BodySha256) -> Result<(), BodyDigestMismatch> {
        if self.finish() == *signed {
            Ok(())
        } else {
            Err(BodyDigestMismatch)
        }
    }
}

impl fmt::Debug for BodyDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BodyDigest")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

/// One of the four parameters of the `Authorization` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Parameter {
    /// `serial=`: the device.
    Serial,
    /// `ts=`: Unix time in milliseconds.
    Ts,
    /// `nonce=`: 32 lowercase hex digits.
    Nonce,
    /// `sig=`: 64 lowercase hex digits.
    Sig,
}

impl Parameter {
    const ALL: [Self; 4] = [Self::Serial, Self::Ts, Self::Nonce, Self::Sig];

    /// The parameter's name in the header.
    pub fn name(self) -> &'static str {
        match self {
            Self::Serial => "serial",
            Self::Ts => "ts",
            Self::Nonce => "nonce",
            Self::Sig => "sig",
        }
    }
}

impl fmt::Display for Parameter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How an `Authorization` value fails to be `CWP1-HMAC-SHA256` credentials.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthorizationError {
    /// The value does not start with `CWP1-HMAC-SHA256` and a space.
    #[error("the authorization scheme is not CWP1-HMAC-SHA256")]
    WrongScheme,
    /// A comma-separated part that is not `name=value` (an empty part, or no `=`).
    #[error("a parameter is not name=value")]
    MalformedParameter,
    /// A parameter other than serial, ts, nonce and sig (its name, cut to 32 bytes).
    #[error("unknown parameter `{0}`")]
    UnknownParameter(String),
    /// A parameter given twice.
    #[error("parameter `{0}` is given twice")]
    DuplicateParameter(Parameter),
    /// A parameter not given.
    #[error("parameter `{0}` is missing")]
    MissingParameter(Parameter),
    /// `serial=` is not 1-32 bytes of `[A-Za-z0-9._-]`.
    #[error("serial: {0}")]
    BadSerial(InvalidSerial),
    /// `ts=` is not a decimal u64 without sign or leading zeros.
    #[error("ts must be Unix time in milliseconds: decimal digits, no sign, no leading zeros")]
    BadTimestamp,
    /// `nonce=` is not 32 lowercase hex digits.
    #[error("nonce: {0}")]
    BadNonce(InvalidNonce),
    /// `sig=` is not 64 lowercase hex digits.
    #[error("sig must be 64 lowercase hex digits")]
    BadSignatureHex,
}

/// Why a signed request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The `Authorization` value is malformed.
    #[error(transparent)]
    Authorization(#[from] AuthorizationError),
    /// No `X-Content-SHA256` header.
    #[error("X-Content-SHA256 is missing")]
    MissingContentSha256,
    /// The `X-Content-SHA256` value is not 64 lowercase hex digits.
    #[error(transparent)]
    MalformedContentSha256(#[from] MalformedContentSha256),
    /// The method or target cannot be signed (see [`RequestLine`]).
    #[error(transparent)]
    BadRequestLine(#[from] BadRequestLine),
    /// `ts` is more than [`MAX_CLOCK_SKEW_MS`] from the server's clock.
    #[error("ts {ts_ms} is more than 300 s from the server's clock ({now_ms})")]
    ClockSkew {
        /// The request's timestamp.
        ts_ms: u64,
        /// The server's clock.
        now_ms: u64,
    },
    /// The signature is not the one the device's key gives.
    #[error("the signature does not match")]
    BadSignature,
}

/// The parsed `Authorization: CWP1-HMAC-SHA256 ...` value, not yet verified.
#[derive(Clone)]
pub struct Credentials {
    serial: Serial,
    ts_ms: u64,
    nonce: RequestNonce,
    sig: [u8; 32],
}

/// The signature compared in constant time, like every mac.
impl PartialEq for Credentials {
    fn eq(&self, other: &Self) -> bool {
        let same_sig: bool = self.sig.ct_eq(&other.sig).into();
        same_sig && self.serial == other.serial && self.ts_ms == other.ts_ms && self.nonce == other.nonce
    }
}

impl Eq for Credentials {}

impl Credentials {
    /// Parses an `Authorization` value.
    ///
    /// Grammar: the scheme (any case), one or more spaces, then
    /// `name=value` parameters separated by commas, each part with optional
    /// spaces or tabs around it, in any order. Names are matched without
    /// regard to case (RFC 9110 §11.2); values are taken as written, so
    /// `ts`, `nonce` and `sig` must be canonical (no leading zeros, lowercase).
    pub fn parse(value: &str) -> Result<Self, AuthorizationError> {
        let params = strip_scheme(value, SCHEME).ok_or(AuthorizationError::WrongScheme)?;
        let mut found: [Option<&str>; 4] = [None; 4];
        for part in params.split(',') {
            let part = part.trim_matches([' ', '\t']);
            let (name, value) = part.split_once('=').ok_or(AuthorizationError::MalformedParameter)?;
            if name.is_empty() {
                return Err(AuthorizationError::MalformedParameter);
            }
            let Some(param) = Parameter::ALL.into_iter().find(|p| p.name().eq_ignore_ascii_case(name)) else {
                return Err(AuthorizationError::UnknownParameter(truncate(name, 32).to_owned()));
            };
            let slot = &mut found[param as usize];
            if slot.is_some() {
                return Err(AuthorizationError::DuplicateParameter(param));
            }
            *slot = Some(value);
        }
        let get = |param: Parameter| found[param as usize].ok_or(AuthorizationError::MissingParameter(param));
        let serial = get(Parameter::Serial)?;
        let ts = get(Parameter::Ts)?;
        let nonce = get(Parameter::Nonce)?;
        let sig = get(Parameter::Sig)?;
        Ok(Self {
            serial: serial.parse().map_err(AuthorizationError::BadSerial)?,
            ts_ms: parse_canonical_u64(ts.as_bytes()).ok_or(AuthorizationError::BadTimestamp)?,
            nonce: nonce.parse().map_err(AuthorizationError::BadNonce)?,
            sig: decode_lower_hex::<32>(sig.as_bytes()).ok_or(AuthorizationError::BadSignatureHex)?,
        })
    }

    /// The device that claims to have signed: whose key to look up.
    pub fn serial(&self) -> &Serial {
        &self.serial
    }

    /// The request's timestamp, Unix ms.
    pub fn ts_ms(&self) -> u64 {
        self.ts_ms
    }

    /// The request's nonce.
    pub fn nonce(&self) -> &RequestNonce {
        &self.nonce
    }

    /// Verifies the credentials with the device's key: the
    /// `X-Content-SHA256` value (`None` when the header is absent) is well
    /// formed, `ts` is within [`MAX_CLOCK_SKEW_MS`] of `now_ms` (the
    /// server's clock, Unix ms; ±300 s inclusive), and the signature is the
    /// key's over the string to sign, compared in constant time.
    ///
    /// The body itself is checked afterwards with a [`BodyDigest`].
    pub fn verify(
        &self,
        key: &DeviceKey,
        method: &str,
        path_and_query: &str,
        content_sha256: Option<&str>,
        now_ms: u64,
    ) -> Result<Verified, SignatureError> {
        let request = RequestLine::new(method, path_and_query)?;
        let body_sha256 = BodySha256::parse(content_sha256.ok_or(SignatureError::MissingContentSha256)?)?;
        if self.ts_ms.abs_diff(now_ms) > MAX_CLOCK_SKEW_MS {
            return Err(SignatureError::ClockSkew {
                ts_ms: self.ts_ms,
                now_ms,
            });
        }
        let expected = HttpKey::derive(key).mac(&request, self.ts_ms, &self.nonce, &body_sha256);
        if !bool::from(expected.ct_eq(&self.sig)) {
            return Err(SignatureError::BadSignature);
        }
        Ok(Verified {
            serial: self.serial,
            ts_ms: self.ts_ms,
            nonce: self.nonce,
            body_sha256,
        })
    }
}

impl FromStr for Credentials {
    type Err = AuthorizationError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Self::parse(value)
    }
}

/// The `Authorization` value, in the canonical form [`sign`] produces.
impl fmt::Display for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{SCHEME} serial={},ts={},nonce={},sig={}",
            self.serial,
            self.ts_ms,
            self.nonce,
            encode_hex(&self.sig)
        )
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("serial", &self.serial)
            .field("ts_ms", &self.ts_ms)
            .field("nonce", &self.nonce)
            .finish_non_exhaustive()
    }
}

/// The remainder of `value` after `scheme` (any case) and at least one
/// space, or `None` if it does not start that way.
pub(crate) fn strip_scheme<'a>(value: &'a str, scheme: &str) -> Option<&'a str> {
    let head = value.get(..scheme.len())?;
    let rest = &value[scheme.len()..];
    if !head.eq_ignore_ascii_case(scheme) || !rest.starts_with(' ') {
        return None;
    }
    Some(rest.trim_start_matches(' '))
}

fn truncate(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// A request whose signature verified. What the gateway still has to do:
/// refuse a (serial, nonce) it has already seen (remember it until
/// [`Verified::replay_window_end_ms`]) and check the body against
/// [`Verified::body_sha256`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The device that signed.
    pub serial: Serial,
    /// The signed timestamp, Unix ms.
    pub ts_ms: u64,
    /// The signed nonce.
    pub nonce: RequestNonce,
    /// The signed digest the body must have.
    pub body_sha256: BodySha256,
}

impl Verified {
    /// Until when the same request would still pass the clock check: a
    /// gateway that remembers the (serial, nonce) until then (Unix ms)
    /// refuses every replay.
    pub fn replay_window_end_ms(&self) -> u64 {
        self.ts_ms.saturating_add(MAX_CLOCK_SKEW_MS)
    }
}

/// Parses and verifies in one call, for a caller that already holds the key
/// (the gateway usually parses first to find it; see [`Credentials`]).
pub fn verify(
    key: &DeviceKey,
    method: &str,
    path_and_query: &str,
    authorization: &str,
    content_sha256: Option<&str>,
    now_ms: u64,
) -> Result<Verified, SignatureError> {
    Credentials::parse(authorization)?.verify(key, method, path_and_query, content_sha256, now_ms)
}

/// The two headers a signed request carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedHeaders {
    /// The value of `Authorization`.
    pub authorization: String,
    /// The value of `X-Content-SHA256`.
    pub content_sha256: String,
}

/// Signs a request as a device: `body_sha256` is [`BodySha256::of`] the
/// body (or a [`BodyDigest`] of it when streamed), `ts_ms` the client's
/// clock in Unix ms, `nonce` fresh for every request.
pub fn sign(
    key: &DeviceKey,
    serial: &Serial,
    method: &str,
    path_and_query: &str,
    ts_ms: u64,
    nonce: &RequestNonce,
    body_sha256: &BodySha256,
) -> Result<SignedHeaders, BadRequestLine> {
    let request = RequestLine::new(method, path_and_query)?;
    let credentials = Credentials {
        serial: *serial,
        ts_ms,
        nonce: *nonce,
        sig: HttpKey::derive(key).mac(&request, ts_ms, nonce, body_sha256),
    };
    Ok(SignedHeaders {
        authorization: credentials.to_string(),
        content_sha256: body_sha256.to_hex(),
    })
}

/// The string to sign, as text: what [`sign`] and [`Credentials::verify`]
/// MAC (they feed the same bytes to HMAC without building it). For
/// documentation, tests and debugging clients.
pub fn string_to_sign(request: &RequestLine<'_>, ts_ms: u64, nonce: &RequestNonce, body_sha256: &BodySha256) -> String {
    format!(
        "CWP1-HTTP\n{}\n{}\n{ts_ms}\n{nonce}\n{body_sha256}",
        request.method, request.path_and_query
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> DeviceKey {
        DeviceKey::from_bytes([7; 32])
    }

    fn serial() -> Serial {
        "CTRL-0042".parse().expect("a valid serial")
    }

    const NONCE: &str = "00112233445566778899aabbccddeeff";
    const NOW: u64 = 1_700_000_000_000;

    fn signed(ts_ms: u64, body: &[u8]) -> SignedHeaders {
        let nonce = NONCE.parse().expect("a valid nonce");
        sign(
            &key(),
            &serial(),
            "POST",
            "/v1/events",
            ts_ms,
            &nonce,
            &BodySha256::of(body),
        )
        .expect("signable")
    }

    fn check(headers: &SignedHeaders, method: &str, path: &str, now_ms: u64) -> Result<Verified, SignatureError> {
        verify(
            &key(),
            method,
            path,
            &headers.authorization,
            Some(&headers.content_sha256),
            now_ms,
        )
    }

    #[test]
    fn a_signed_request_verifies_and_names_what_the_gateway_needs() {
        let headers = signed(NOW, b"{}\n");
        let verified = check(&headers, "POST", "/v1/events", NOW).expect("verifies");
        assert_eq!(verified.serial, serial());
        assert_eq!(verified.ts_ms, NOW);
        assert_eq!(verified.nonce.as_str(), NONCE);
        assert_eq!(verified.body_sha256, BodySha256::of(b"{}\n"));
        assert_eq!(verified.replay_window_end_ms(), NOW + 300_000);
    }

    #[test]
    fn the_clock_check_is_inclusive_at_300_s_either_way() {
        let headers = signed(NOW, b"");
        assert!(check(&headers, "POST", "/v1/events", NOW + 300_000).is_ok());
        assert!(check(&headers, "POST", "/v1/events", NOW - 300_000).is_ok());
        for now_ms in [NOW + 300_001, NOW - 300_001, 0, u64::MAX] {
            assert_eq!(
                check(&headers, "POST", "/v1/events", now_ms),
                Err(SignatureError::ClockSkew { ts_ms: NOW, now_ms })
            );
        }
    }

    #[test]
    fn every_signed_field_matters() {
        let headers = signed(NOW, b"x");
        assert_eq!(
            check(&headers, "PUT", "/v1/events", NOW),
            Err(SignatureError::BadSignature)
        );
        assert_eq!(
            check(&headers, "post", "/v1/events", NOW),
            Err(SignatureError::BadSignature)
        );
        assert_eq!(
            check(&headers, "POST", "/v1/events?a=1", NOW),
            Err(SignatureError::BadSignature)
        );
        let other_digest = SignedHeaders {
            content_sha256: BodySha256::of(b"y").to_hex(),
            ..headers.clone()
        };
        assert_eq!(
            check(&other_digest, "POST", "/v1/events", NOW),
            Err(SignatureError::BadSignature)
        );
        let other_ts = headers.authorization.replace("ts=1700000000000", "ts=1700000000001");
        assert_eq!(
            verify(
                &key(),
                "POST",
                "/v1/events",
                &other_ts,
                Some(&headers.content_sha256),
                NOW
            ),
            Err(SignatureError::BadSignature)
        );
        let other_nonce = headers.authorization.replace(NONCE, "ffffffffffffffffffffffffffffffff");
        assert_eq!(
            verify(
                &key(),
                "POST",
                "/v1/events",
                &other_nonce,
                Some(&headers.content_sha256),
                NOW
            ),
            Err(SignatureError::BadSignature)
        );
        let other_key = DeviceKey::from_bytes([8; 32]);
        assert_eq!(
            verify(
                &other_key,
                "POST",
                "/v1/events",
                &headers.authorization,
                Some(&headers.content_sha256),
                NOW
            ),
            Err(SignatureError::BadSignature)
        );
    }

    #[test]
    fn the_digest_header_must_be_present_and_lowercase_hex() {
        let headers = signed(NOW, b"");
        let auth = &headers.authorization;
        let verify_with = |digest| verify(&key(), "POST", "/v1/events", auth, digest, NOW);
        assert_eq!(verify_with(None), Err(SignatureError::MissingContentSha256));
        let upper = headers.content_sha256.to_uppercase();
        for bad in [&upper[..], "", "e3b0", &headers.content_sha256[1..]] {
            assert_eq!(
                verify_with(Some(bad)),
                Err(SignatureError::MalformedContentSha256(MalformedContentSha256))
            );
        }
    }

    #[test]
    fn request_lines_that_could_forge_a_field_separator_are_refused() {
        let nonce: RequestNonce = NONCE.parse().expect("a valid nonce");
        let digest = BodySha256::of(b"");
        for (method, path) in [
            ("POST\n", "/"),
            ("POST", "/a\nb"),
            ("", "/"),
            ("POST", ""),
            ("PO ST", "/"),
            ("POST", "/a b"),
        ] {
            assert_eq!(RequestLine::new(method, path), Err(BadRequestLine));
            assert_eq!(
                sign(&key(), &serial(), method, path, NOW, &nonce, &digest),
                Err(BadRequestLine)
            );
        }
        let headers = signed(NOW, b"");
        assert_eq!(
            check(&headers, "POST", "/v1/events\n", NOW),
            Err(SignatureError::BadRequestLine(BadRequestLine))
        );
    }

    #[test]
    fn malformed_authorization_values_each_have_their_error() {
        use AuthorizationError as E;
        let sig = "ab".repeat(32);
        let ok = format!("CWP1-HMAC-SHA256 serial=CTRL-0042,ts=1,nonce={NONCE},sig={sig}");
        assert!(Credentials::parse(&ok).is_ok());
        let cases: Vec<(String, E)> = vec![
            (
                format!("Bearer serial=CTRL-0042,ts=1,nonce={NONCE},sig={sig}"),
                E::WrongScheme,
            ),
            (
                format!("CWP1-HMAC-SHA256serial=CTRL-0042,ts=1,nonce={NONCE},sig={sig}"),
                E::WrongScheme,
            ),
            ("CWP1-HMAC-SHA25".into(), E::WrongScheme),
            (String::new(), E::WrongScheme),
            (
                format!("CWP1-HMAC-SHA256 serial=CTRL-0042,ts=1,nonce={NONCE}"),
                E::MissingParameter(Parameter::Sig),
            ),
            (
                format!("CWP1-HMAC-SHA256 ts=1,nonce={NONCE},sig={sig}"),
                E::MissingParameter(Parameter::Serial),
            ),
            (
                format!("CWP1-HMAC-SHA256 serial=A,serial=A,ts=1,nonce={NONCE},sig={sig}"),
                E::DuplicateParameter(Parameter::Serial),
            ),
            (
                format!("CWP1-HMAC-SHA256 serial=A,ts=1,TS=1,nonce={NONCE},sig={sig}"),
                E::DuplicateParameter(Parameter::Ts),
            ),
            (
                format!("CWP1-HMAC-SHA256 serial=A,ts=1,nonce={NONCE},sig={sig},realm=x"),
                E::UnknownParameter("realm".into()),
            ),
            (
                format!("CWP1-HMAC-SHA256 serial=A,ts=1,nonce={NONCE},sig={sig},"),
                E::MalformedParameter,
            ),
            (
                format!("CWP1-HMAC-SHA256 serial=A,ts,nonce={NONCE},sig={sig}"),
                E::MalformedParameter,
            ),
            (
                format!("CWP1-HMAC-SHA256 =A,ts=1,nonce={NONCE},sig={sig}"),
                E::MalformedParameter,
            ),
            (
                format!("CWP1-HMAC-SHA256 serial=,ts=1,nonce={NONCE},sig={sig}"),
                E::BadSerial(InvalidSerial),
            ),
            (
                format!("CWP1-HMAC-SHA256 serial=CTRL/42,ts=1,nonce={NONCE},sig={sig}"),
                E::BadSerial(InvalidSerial),
            ),
            (
                format!("CWP1-HMAC-SHA256 serial=\"CTRL-0042\",ts=1,nonce={NONCE},sig={sig}"),
                E::BadSerial(InvalidSerial),
            ),
            (
                format!("CWP1-HMAC-SHA256 serial=A,ts=01,nonce={NONCE},sig={sig}"),
                E::BadTimestamp,
            ),
            (
                format!("CWP1-HMAC-SHA256 serial=A,ts=-1,nonce={NONCE},sig={sig}"),
                E::BadTimestamp,
            ),
            (
                format!("CWP1-HMAC-SHA256 serial=A,ts=1.5,nonce={NONCE},sig={sig}"),
                E::BadTimestamp,
            ),
            (
                format!("CWP1-HMAC-SHA256 serial=A,ts=18446744073709551616,nonce={NONCE},sig={sig}"),
                E::BadTimestamp,
            ),
            (
                format!(
                    "CWP1-HMAC-SHA256 serial=A,ts=1,nonce={},sig={sig}",
                    NONCE.to_uppercase()
                ),
                E::BadNonce(InvalidNonce),
            ),
            (
                format!("CWP1-HMAC-SHA256 serial=A,ts=1,nonce={}0,sig={sig}", NONCE),
                E::BadNonce(InvalidNonce),
            ),
            (
                format!(
                    "CWP1-HMAC-SHA256 serial=A,ts=1,nonce={NONCE},sig={}",
                    sig.to_uppercase()
                ),
                E::BadSignatureHex,
            ),
            (
                format!("CWP1-HMAC-SHA256 serial=A,ts=1,nonce={NONCE},sig=abc"),
                E::BadSignatureHex,
            ),
        ];
        for (value, error) in cases {
            assert_eq!(Credentials::parse(&value), Err(error), "{value}");
        }
    }

    #[test]
    fn scheme_and_names_ignore_case_and_whitespace_around_parameters_is_allowed() {
        let headers = signed(NOW, b"");
        let relaxed = headers
            .authorization
            .replace("CWP1-HMAC-SHA256 ", "cwp1-hmac-sha256   ")
            .replace(",ts=", " ,\tTs=")
            .replace(",sig=", ", SIG=");
        let credentials = Credentials::parse(&relaxed).expect("still parses");
        assert_eq!(
            credentials.to_string(),
            headers.authorization,
            "displays in canonical form"
        );
        assert!(
            check(
                &SignedHeaders {
                    authorization: relaxed,
                    ..headers
                },
                "POST",
                "/v1/events",
                NOW
            )
            .is_ok()
        );
    }

    #[test]
    fn the_body_digest_streams_and_compares() {
        let body = b"{\"event_id\":1}\n{\"event_id\":2}\n";
        let mut digest = BodyDigest::new();
        for chunk in body.chunks(5) {
            digest.update(chunk);
        }
        assert_eq!(digest.len(), body.len() as u64);
        assert_eq!(digest.clone().finish(), BodySha256::of(body));
        assert_eq!(digest.verify(&BodySha256::of(body)), Ok(()));
        let mut short = BodyDigest::new();
        short.update(&body[..10]);
        assert_eq!(short.verify(&BodySha256::of(body)), Err(BodyDigestMismatch));
        assert_eq!(
            BodyDigest::new().finish().to_hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "SHA-256 of the empty body"
        );
    }

    #[test]
    fn keys_never_print() {
        assert_eq!(format!("{:?}", HttpKey::derive(&key())), "HttpKey(<redacted>)");
    }
}
