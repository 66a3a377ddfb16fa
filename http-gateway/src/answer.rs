//! Every answer the gateway gives, and the one place a failure becomes an
//! HTTP status and a JSON error `{"status":"error","code":…,"message":…}`.
//! The codes are stable (docs/HTTP.md, "The gateway's answers"); the
//! messages are for people and may change.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use hyper::{Response, StatusCode};
use serde::Serialize;

use crate::tus::TusError;

/// Why a request is refused: one variant per stable code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No `Authorization` header.
    MissingAuthorization,
    /// An `Authorization` value that is neither scheme, or malformed.
    MalformedAuthorization(String),
    /// `X-Content-SHA256` missing on a signed request.
    MissingContentSha256,
    /// `X-Content-SHA256` not 64 lowercase hex digits.
    MalformedContentSha256,
    /// The signature does not verify, or the serial has no key (the same
    /// answer, so that serials cannot be probed).
    BadSignature,
    /// The serial's key is revoked (`CWP_KEYS_FILE`).
    Revoked,
    /// `ts` is more than 300 s from the gateway's clock.
    ClockSkew,
    /// The (serial, nonce) was already used.
    Replayed,
    /// A bearer token whose mac does not verify (or whose serial has no key).
    BadToken,
    /// A genuine bearer token past its expiry.
    TokenExpired,
    /// A bearer token on a connection that was not TLS.
    BearerRequiresTls,
    /// Too many failed authentications from this source (or for this serial).
    TooManyFailures(Duration),
    /// The body does not match its signed (or given) `X-Content-SHA256`.
    BodyDigestMismatch,
    /// The method is not allowed on this path.
    MethodNotAllowed,
    /// No such endpoint.
    NotFound,
    /// The content type is not `application/x-ndjson`.
    UnsupportedMediaType,
    /// A `Content-Encoding` other than `gzip` (or `identity`).
    UnsupportedEncoding,
    /// The body (as sent or decoded) is larger than `HTTP_MAX_BODY_BYTES`.
    BodyTooLarge(usize),
    /// Decoded gzip is more than [`crate::body::MAX_GZIP_RATIO`] times its
    /// compressed size.
    GzipRatio,
    /// The gzip stream is corrupt or truncated.
    BadGzip,
    /// `POST /v1/token` with a body.
    BodyNotAllowed,
    /// The body did not arrive within `HTTP_BODY_TIMEOUT`.
    BodyTimeout,
    /// The client broke the body off (or the connection failed).
    BodyIncomplete,
    /// `HTTP_MAX_INFLIGHT_BYTES` is reached: try again shortly.
    Busy,
    /// Redis could not say whether the nonce is fresh.
    ReplayCheckUnavailable,
    /// The bridge did not make the events durable in time: nothing of the
    /// request is acknowledged.
    StoreUnavailable,
    /// The gateway is shutting down.
    ShuttingDown,
    /// tus headers that are missing or malformed.
    Tus(TusError),
    /// No such upload of this serial (never created, terminated, another
    /// serial's).
    UploadNotFound,
    /// The upload expired (`Upload-Expires` passed).
    UploadExpired,
    /// Another request holds the upload (on this gateway or another).
    UploadLocked,
    /// `Upload-Offset` is not the durable offset (given).
    OffsetMismatch(u64),
    /// `Upload-Checksum` does not match the body: nothing of it counts.
    ChecksumMismatch,
    /// `Upload-Length` above `UPLOAD_MAX_BYTES` (given).
    UploadTooLarge(u64),
    /// The body goes past the upload's length.
    PastLength,
    /// The serial's partial uploads would exceed
    /// `UPLOAD_MAX_BYTES_PER_SERIAL` (given).
    OverQuota(u64),
    /// `UPLOAD_DIR` is below `UPLOAD_MIN_FREE_BYTES`.
    InsufficientStorage,
    /// The upload is complete: nothing can be appended, and it belongs to
    /// the application (no termination).
    UploadCompleted,
    /// The upload storage failed (full, read-only): nothing beyond the
    /// last offset reported is stored.
    UploadStorage,
    /// A `PATCH` body that is not `application/offset+octet-stream`.
    NotOffsetOctetStream,
    /// No byte of an upload's body arrived for `HTTP_UPLOAD_IDLE_TIMEOUT`.
    UploadIdle(Duration),
}

impl From<TusError> for Refusal {
    fn from(err: TusError) -> Self {
        Self::Tus(err)
    }
}

/// How long a client told to retry should wait, in seconds.
const RETRY_AFTER_S: u64 = 1;

impl Refusal {
    /// The stable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::MissingAuthorization => "missing_authorization",
            Self::MalformedAuthorization(_) => "malformed_authorization",
            Self::MissingContentSha256 => "missing_content_sha256",
            Self::MalformedContentSha256 => "malformed_content_sha256",
            Self::BadSignature => "bad_signature",
            Self::Revoked => "revoked",
            Self::ClockSkew => "clock_skew",
            Self::Replayed => "replayed",
            Self::BadToken => "bad_token",
            Self::TokenExpired => "token_expired",
            Self::BearerRequiresTls => "bearer_requires_tls",
            Self::TooManyFailures(_) => "too_many_failures",
            Self::BodyDigestMismatch => "body_digest_mismatch",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::NotFound => "not_found",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::UnsupportedEncoding => "unsupported_encoding",
            Self::BodyTooLarge(_) => "body_too_large",
            Self::GzipRatio => "gzip_ratio",
            Self::BadGzip => "bad_gzip",
            Self::BodyNotAllowed => "body_not_allowed",
            Self::BodyTimeout => "body_timeout",
            Self::BodyIncomplete => "body_incomplete",
            Self::Busy => "busy",
            Self::ReplayCheckUnavailable => "replay_check_unavailable",
            Self::StoreUnavailable => "store_unavailable",
            Self::ShuttingDown => "shutting_down",
            Self::Tus(err) => match err {
                TusError::Version => "tus_version",
                TusError::BadOffset => "bad_offset",
                TusError::BadLength | TusError::BadDeferLength | TusError::LengthOrDefer => "bad_length",
                TusError::BadMetadata(_) | TusError::MetadataTooLarge => "bad_metadata",
                TusError::BadChecksum => "bad_checksum",
                TusError::UnsupportedChecksum(_) => "unsupported_checksum",
                TusError::BadConcat(_) => "bad_concat",
            },
            Self::UploadNotFound => "upload_not_found",
            Self::UploadExpired => "upload_expired",
            Self::UploadLocked => "upload_locked",
            Self::OffsetMismatch(_) => "offset_mismatch",
            Self::ChecksumMismatch => "checksum_mismatch",
            Self::UploadTooLarge(_) => "upload_too_large",
            Self::PastLength => "past_length",
            Self::OverQuota(_) => "over_quota",
            Self::InsufficientStorage => "insufficient_storage",
            Self::UploadCompleted => "upload_completed",
            Self::UploadStorage => "storage_unavailable",
            Self::NotOffsetOctetStream => "unsupported_media_type",
            Self::UploadIdle(_) => "upload_idle",
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::MissingAuthorization
            | Self::MalformedAuthorization(_)
            | Self::MissingContentSha256
            | Self::MalformedContentSha256
            | Self::BadSignature
            | Self::Revoked
            | Self::ClockSkew
            | Self::Replayed
            | Self::BadToken
            | Self::TokenExpired
            | Self::BearerRequiresTls
            | Self::BodyDigestMismatch => StatusCode::UNAUTHORIZED,
            Self::TooManyFailures(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::UnsupportedMediaType | Self::UnsupportedEncoding => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::BodyTooLarge(_) | Self::GzipRatio => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BadGzip | Self::BodyNotAllowed | Self::BodyIncomplete => StatusCode::BAD_REQUEST,
            Self::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::Busy | Self::ReplayCheckUnavailable | Self::StoreUnavailable | Self::ShuttingDown => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Tus(TusError::Version) => StatusCode::PRECONDITION_FAILED,
            Self::Tus(_) => StatusCode::BAD_REQUEST,
            Self::UploadNotFound => StatusCode::NOT_FOUND,
            Self::UploadExpired => StatusCode::GONE,
            Self::UploadLocked => StatusCode::LOCKED,
            Self::OffsetMismatch(_) => StatusCode::CONFLICT,
            // tus 1.0, checksum extension: 460 Checksum Mismatch.
            Self::ChecksumMismatch => StatusCode::from_u16(460).unwrap_or(StatusCode::BAD_REQUEST),
            Self::UploadTooLarge(_) | Self::PastLength | Self::OverQuota(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::InsufficientStorage => StatusCode::INSUFFICIENT_STORAGE,
            Self::UploadCompleted => StatusCode::FORBIDDEN,
            Self::UploadStorage => StatusCode::SERVICE_UNAVAILABLE,
            Self::NotOffsetOctetStream => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::UploadIdle(_) => StatusCode::REQUEST_TIMEOUT,
        }
    }

    /// For people.
    pub fn message(&self) -> String {
        match self {
            Self::MissingAuthorization => {
                "no Authorization header: sign the request (CWP1-HMAC-SHA256) or send a bearer token".to_owned()
            }
            Self::MalformedAuthorization(why) => format!("malformed Authorization: {why}"),
            Self::MissingContentSha256 => "X-Content-SHA256 is missing".to_owned(),
            Self::MalformedContentSha256 => "X-Content-SHA256 must be 64 lowercase hex digits".to_owned(),
            Self::BadSignature => "the signature does not match".to_owned(),
            Self::Revoked => "this serial's key is revoked".to_owned(),
            Self::ClockSkew => "ts is more than 300 s from the server's clock".to_owned(),
            Self::Replayed => "this nonce was already used".to_owned(),
            Self::BadToken => "the bearer token is not valid".to_owned(),
            Self::TokenExpired => "the bearer token has expired: ask POST /v1/token for another".to_owned(),
            Self::BearerRequiresTls => "bearer tokens are accepted over HTTPS only".to_owned(),
            Self::TooManyFailures(window) => format!(
                "too many failed authentications; try again in {} s",
                window.as_secs().max(1)
            ),
            Self::BodyDigestMismatch => "the body does not match X-Content-SHA256; nothing was stored".to_owned(),
            Self::MethodNotAllowed => "method not allowed on this path".to_owned(),
            Self::NotFound => "no such endpoint".to_owned(),
            Self::UnsupportedMediaType => "Content-Type must be application/x-ndjson".to_owned(),
            Self::UnsupportedEncoding => "Content-Encoding must be gzip or absent".to_owned(),
            Self::BodyTooLarge(max) => format!("the body is larger than {max} bytes"),
            Self::GzipRatio => format!("the gzip body expands more than {} times", crate::body::MAX_GZIP_RATIO),
            Self::BadGzip => "the gzip body is corrupt or truncated".to_owned(),
            Self::BodyNotAllowed => "this request takes no body".to_owned(),
            Self::BodyTimeout => "the body did not arrive in time; nothing was stored".to_owned(),
            Self::BodyIncomplete => "the body was broken off; nothing was stored".to_owned(),
            Self::Busy => "the gateway holds as many requests as it may; retry shortly".to_owned(),
            Self::ReplayCheckUnavailable => "the nonce could not be checked; retry shortly".to_owned(),
            Self::StoreUnavailable => {
                "the events could not be stored now; nothing of this request is acknowledged: send it again".to_owned()
            }
            Self::ShuttingDown => "the gateway is shutting down; retry".to_owned(),
            Self::Tus(err) => err.to_string(),
            Self::UploadNotFound => "no such upload".to_owned(),
            Self::UploadExpired => "the upload expired and was deleted: create it again".to_owned(),
            Self::UploadLocked => "another request is writing this upload; retry shortly".to_owned(),
            Self::OffsetMismatch(durable) => {
                format!("Upload-Offset must be the durable offset, {durable}: ask HEAD, then resume from there")
            }
            Self::ChecksumMismatch => "the body does not match Upload-Checksum; the offset did not move".to_owned(),
            Self::UploadTooLarge(max) => format!("the upload is larger than {max} bytes (UPLOAD_MAX_BYTES)"),
            Self::PastLength => "the body goes past Upload-Length".to_owned(),
            Self::OverQuota(quota) => {
                format!("this device's unfinished uploads would hold more than {quota} bytes")
            }
            Self::InsufficientStorage => "the server's upload storage is nearly full; retry later".to_owned(),
            Self::UploadCompleted => "the upload is complete: nothing can be appended or deleted".to_owned(),
            Self::UploadStorage => {
                "the upload could not be stored now; HEAD tells what is durable: resume from there".to_owned()
            }
            Self::NotOffsetOctetStream => "Content-Type must be application/offset+octet-stream".to_owned(),
            Self::UploadIdle(idle) => format!(
                "no bytes arrived for {} s; HEAD tells what is durable: resume from there",
                idle.as_secs()
            ),
        }
    }

    /// `Retry-After`, for the refusals a client should simply retry.
    fn retry_after(&self) -> Option<u64> {
        match self {
            Self::TooManyFailures(window) => Some(window.as_secs().max(1)),
            Self::Busy
            | Self::ReplayCheckUnavailable
            | Self::StoreUnavailable
            | Self::ShuttingDown
            | Self::UploadLocked
            | Self::UploadStorage
            | Self::InsufficientStorage => Some(RETRY_AFTER_S),
            _ => None,
        }
    }

    /// The response.
    pub fn response(&self) -> Response<Full<Bytes>> {
        #[derive(Serialize)]
        struct ErrorBody<'a> {
            status: &'static str,
            code: &'static str,
            message: &'a str,
        }
        let message = self.message();
        let mut response = json(
            self.status(),
            &ErrorBody {
                status: "error",
                code: self.code(),
                message: &message,
            },
        );
        if let Some(seconds) = self.retry_after() {
            response.headers_mut().insert(RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.status() == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                hyper::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("CWP1-HMAC-SHA256"),
            );
        }
        response
    }
}

/// The answer to a stored batch (issue 19): counts, the device's last event
/// id of the request, and the first invalid lines.
#[derive(Debug, Serialize)]
pub struct EventsAnswer {
    /// Always `ok`.
    pub status: &'static str,
    /// What the batch held.
    pub stats: EventsStats,
    /// The highest valid event id of the request (every id up to it is now
    /// stored); `null` when no line was valid.
    pub last_event_id: Option<u64>,
    /// The first invalid lines.
    pub errors: Vec<LineErrorAnswer>,
}

/// `stats` of an [`EventsAnswer`].
#[derive(Debug, Serialize)]
pub struct EventsStats {
    /// Bytes of the body, once gzip is undone.
    pub bytes: u64,
    /// Lines, by outcome.
    pub records: RecordCounts,
}

/// `stats.records` of an [`EventsAnswer`].
#[derive(Debug, Serialize)]
pub struct RecordCounts {
    /// Lines newly stored by this request.
    pub valid: u64,
    /// Valid lines whose event id the device had already stored.
    pub duplicate: u64,
    /// Invalid lines.
    pub invalid: u64,
    /// Lines that are records or errors (blank lines are not counted).
    pub total: u64,
}

/// One invalid line.
#[derive(Debug, Serialize)]
pub struct LineErrorAnswer {
    /// 1-based line number.
    pub line: u64,
    /// The stable reason code (docs/HTTP.md, "Reasons").
    pub reason: &'static str,
}

/// `POST /v1/token`'s answer.
#[derive(Debug, Serialize)]
pub struct TokenAnswer {
    /// `Authorization: Bearer {token}`.
    pub token: String,
    /// Its lifetime, seconds.
    pub expires_in: u64,
}

/// A JSON response.
pub fn json(status: StatusCode, body: &impl Serialize) -> Response<Full<Bytes>> {
    // Serialising these plain structs cannot fail.
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut response = Response::new(Full::new(Bytes::from(bytes)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt as _;

    use super::*;

    #[tokio::test]
    async fn a_refusal_is_its_status_and_a_json_error_with_a_stable_code() {
        let response = Refusal::StoreUnavailable.response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[RETRY_AFTER], "1");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(value["status"], "error");
        assert_eq!(value["code"], "store_unavailable");
        assert!(value["message"].as_str().unwrap().contains("send it again"));
    }
}
