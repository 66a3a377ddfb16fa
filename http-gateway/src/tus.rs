//! tus 1.0 (<https://tus.io/protocols/resumable-upload>) as headers: what a
//! request's tus headers mean, checked, with no I/O. [`crate::uploads`]
//! acts on them.
//!
//! Extensions served: `creation`, `creation-with-upload`,
//! `creation-defer-length`, `expiration`, `checksum` (sha1, sha256),
//! `termination`, `concatenation`.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use sha1::Sha1;
use sha2::{Digest as _, Sha256};

/// The protocol version served (and the only one accepted).
pub const VERSION: &str = "1.0.0";
/// `Tus-Extension`.
pub const EXTENSIONS: &str =
    "creation,creation-with-upload,creation-defer-length,expiration,checksum,termination,concatenation";
/// `Tus-Checksum-Algorithm`.
pub const CHECKSUM_ALGORITHMS: &str = "sha1,sha256";
/// The media type of a `PATCH` body (and a `creation-with-upload` body).
pub const OFFSET_OCTET_STREAM: &str = "application/offset+octet-stream";
/// Where uploads live; an upload's URL is this followed by its id.
pub const UPLOADS_PATH: &str = "/v1/uploads/";
/// The largest `Upload-Metadata` accepted, bytes as sent.
pub const MAX_METADATA_BYTES: usize = 4096;

/// The tus headers' names.
pub mod header {
    /// Every request but `OPTIONS`, and every response.
    pub const TUS_RESUMABLE: &str = "tus-resumable";
    /// `OPTIONS`: versions served.
    pub const TUS_VERSION: &str = "tus-version";
    /// `OPTIONS`: extensions served.
    pub const TUS_EXTENSION: &str = "tus-extension";
    /// `OPTIONS`: the largest upload.
    pub const TUS_MAX_SIZE: &str = "tus-max-size";
    /// `OPTIONS`: checksum algorithms.
    pub const TUS_CHECKSUM_ALGORITHM: &str = "tus-checksum-algorithm";
    /// Bytes durable so far.
    pub const UPLOAD_OFFSET: &str = "upload-offset";
    /// The upload's whole length.
    pub const UPLOAD_LENGTH: &str = "upload-length";
    /// `1`: the length is not known yet.
    pub const UPLOAD_DEFER_LENGTH: &str = "upload-defer-length";
    /// Client-defined `key base64` pairs.
    pub const UPLOAD_METADATA: &str = "upload-metadata";
    /// When an unfinished upload will be deleted.
    pub const UPLOAD_EXPIRES: &str = "upload-expires";
    /// `algorithm base64(digest)` of a `PATCH` body.
    pub const UPLOAD_CHECKSUM: &str = "upload-checksum";
    /// `partial`, or `final;URL URL …`.
    pub const UPLOAD_CONCAT: &str = "upload-concat";
}

/// Why a request's tus headers are refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TusError {
    /// `Tus-Resumable` missing or not [`VERSION`] (412).
    #[error("Tus-Resumable must be {VERSION}")]
    Version,
    /// `Upload-Offset` missing, negative or not a number.
    #[error("Upload-Offset must be a non-negative integer")]
    BadOffset,
    /// `Upload-Length` negative or not a number.
    #[error("Upload-Length must be a non-negative integer")]
    BadLength,
    /// `Upload-Defer-Length` other than `1`.
    #[error("Upload-Defer-Length must be 1")]
    BadDeferLength,
    /// Neither `Upload-Length` nor `Upload-Defer-Length`, or both.
    #[error("send exactly one of Upload-Length and Upload-Defer-Length: 1")]
    LengthOrDefer,
    /// `Upload-Metadata` malformed.
    #[error("Upload-Metadata: {0}")]
    BadMetadata(&'static str),
    /// `Upload-Metadata` longer than [`MAX_METADATA_BYTES`].
    #[error("Upload-Metadata is longer than {MAX_METADATA_BYTES} bytes")]
    MetadataTooLarge,
    /// `Upload-Checksum` malformed.
    #[error("Upload-Checksum must be `ALGORITHM BASE64-DIGEST`")]
    BadChecksum,
    /// `Upload-Checksum` with an algorithm not served.
    #[error("checksum algorithm {0:?} is not supported: use one of {CHECKSUM_ALGORITHMS}")]
    UnsupportedChecksum(String),
    /// `Upload-Concat` malformed.
    #[error("Upload-Concat: {0}")]
    BadConcat(&'static str),
}

/// Checks `Tus-Resumable`.
pub fn check_version(value: Option<&str>) -> Result<(), TusError> {
    match value {
        Some(version) if version.trim() == VERSION => Ok(()),
        _ => Err(TusError::Version),
    }
}

/// A non-negative decimal integer (digits only: no sign, no spaces
/// inside), as `Upload-Offset` and `Upload-Length` are.
fn non_negative(value: &str) -> Option<u64> {
    let value = value.trim();
    if value.is_empty() || !value.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    value.parse().ok()
}

/// `Upload-Offset` (required on `PATCH`).
pub fn parse_offset(value: Option<&str>) -> Result<u64, TusError> {
    value.and_then(non_negative).ok_or(TusError::BadOffset)
}

/// `Upload-Length`, when present.
pub fn parse_length(value: Option<&str>) -> Result<Option<u64>, TusError> {
    value
        .map(|value| non_negative(value).ok_or(TusError::BadLength))
        .transpose()
}

/// An upload's length at creation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Length {
    /// `Upload-Length`.
    Known(u64),
    /// `Upload-Defer-Length: 1`.
    Deferred,
}

/// The length a creation request gives: exactly one of `Upload-Length` and
/// `Upload-Defer-Length: 1`.
pub fn creation_length(length: Option<&str>, defer: Option<&str>) -> Result<Length, TusError> {
    let length = parse_length(length)?;
    let deferred = match defer.map(str::trim) {
        None => false,
        Some("1") => true,
        Some(_) => return Err(TusError::BadDeferLength),
    };
    match (length, deferred) {
        (Some(length), false) => Ok(Length::Known(length)),
        (None, true) => Ok(Length::Deferred),
        _ => Err(TusError::LengthOrDefer),
    }
}

/// Checks `Upload-Metadata`: comma-separated pairs of a key (ASCII, no
/// spaces or commas, unique) and an optional base64 value.
pub fn check_metadata(value: &str) -> Result<(), TusError> {
    if value.len() > MAX_METADATA_BYTES {
        return Err(TusError::MetadataTooLarge);
    }
    // No pairs at all (tuspy sends the header empty).
    if value.trim().is_empty() {
        return Ok(());
    }
    let mut keys: Vec<&str> = Vec::new();
    for pair in value.split(',') {
        let pair = pair.trim();
        let (key, encoded) = pair.split_once(' ').unwrap_or((pair, ""));
        if key.is_empty() {
            return Err(TusError::BadMetadata("an empty key"));
        }
        if !key.bytes().all(|byte| byte.is_ascii_graphic() && byte != b',') {
            return Err(TusError::BadMetadata("keys are ASCII without spaces or commas"));
        }
        if keys.contains(&key) {
            return Err(TusError::BadMetadata("a key appears twice"));
        }
        keys.push(key);
        if STANDARD.decode(encoded.trim()).is_err() {
            return Err(TusError::BadMetadata("a value is not base64"));
        }
    }
    Ok(())
}

/// The decoded value of `key` in checked `Upload-Metadata`.
pub fn metadata_value(metadata: &str, key: &str) -> Option<Vec<u8>> {
    metadata.split(',').find_map(|pair| {
        let pair = pair.trim();
        let (name, encoded) = pair.split_once(' ').unwrap_or((pair, ""));
        (name == key).then(|| STANDARD.decode(encoded.trim()).ok()).flatten()
    })
}

/// A checksum algorithm of the `checksum` extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChecksumAlgorithm {
    /// SHA-1, the one the spec requires servers to support.
    Sha1,
    /// SHA-256.
    Sha256,
}

/// `Upload-Checksum`: what a `PATCH` body's digest must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checksum {
    /// The algorithm.
    pub algorithm: ChecksumAlgorithm,
    /// The digest, decoded.
    pub digest: Vec<u8>,
}

/// Parses `Upload-Checksum: ALGORITHM BASE64`.
pub fn parse_checksum(value: &str) -> Result<Checksum, TusError> {
    let (name, encoded) = value.trim().split_once(' ').ok_or(TusError::BadChecksum)?;
    let algorithm = match name {
        "sha1" => ChecksumAlgorithm::Sha1,
        "sha256" => ChecksumAlgorithm::Sha256,
        other => return Err(TusError::UnsupportedChecksum(other.chars().take(32).collect())),
    };
    let digest = STANDARD.decode(encoded.trim()).map_err(|_| TusError::BadChecksum)?;
    let expected_len = match algorithm {
        ChecksumAlgorithm::Sha1 => 20,
        ChecksumAlgorithm::Sha256 => 32,
    };
    if digest.len() != expected_len {
        return Err(TusError::BadChecksum);
    }
    Ok(Checksum { algorithm, digest })
}

/// A running digest of a body for its [`Checksum`].
#[derive(Debug, Clone)]
pub enum ChecksumHasher {
    /// SHA-1.
    Sha1(Sha1),
    /// SHA-256.
    Sha256(Sha256),
}

impl ChecksumHasher {
    /// A hasher for `algorithm`.
    pub fn new(algorithm: ChecksumAlgorithm) -> Self {
        match algorithm {
            ChecksumAlgorithm::Sha1 => Self::Sha1(Sha1::new()),
            ChecksumAlgorithm::Sha256 => Self::Sha256(Sha256::new()),
        }
    }

    /// Adds bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        match self {
            Self::Sha1(hasher) => hasher.update(bytes),
            Self::Sha256(hasher) => hasher.update(bytes),
        }
    }

    /// Whether the bytes added match `expected`.
    pub fn matches(self, expected: &[u8]) -> bool {
        match self {
            Self::Sha1(hasher) => hasher.finalize().as_slice() == expected,
            Self::Sha256(hasher) => hasher.finalize().as_slice() == expected,
        }
    }
}

/// `Upload-Concat`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Concat {
    /// `partial`: a part of a later final upload.
    Partial,
    /// `final;URL …`: the parts, in order, by upload id.
    Final(Vec<uuid::Uuid>),
}

/// The most parts a final upload may join.
pub const MAX_CONCAT_PARTS: usize = 256;

/// Parses `Upload-Concat`. The parts' URLs may be absolute
/// (`https://host/v1/uploads/ID`) or paths (`/v1/uploads/ID`).
pub fn parse_concat(value: &str) -> Result<Concat, TusError> {
    let value = value.trim();
    if value == "partial" {
        return Ok(Concat::Partial);
    }
    let parts = value
        .strip_prefix("final;")
        .ok_or(TusError::BadConcat("expected `partial` or `final;URL URL …`"))?;
    let ids = parts
        .split_ascii_whitespace()
        .map(|url| upload_id_in_url(url).ok_or(TusError::BadConcat("a part is not an upload URL of this server")))
        .collect::<Result<Vec<_>, _>>()?;
    if ids.is_empty() {
        return Err(TusError::BadConcat("a final upload needs at least one part"));
    }
    if ids.len() > MAX_CONCAT_PARTS {
        return Err(TusError::BadConcat("too many parts"));
    }
    Ok(Concat::Final(ids))
}

/// The upload id of a URL or path naming an upload.
fn upload_id_in_url(url: &str) -> Option<uuid::Uuid> {
    let path = match url.find("://") {
        Some(scheme_end) => {
            let rest = &url[scheme_end + 3..];
            &rest[rest.find('/')?..]
        }
        None => url,
    };
    upload_id_in_path(path)
}

/// The upload id of a request path `/v1/uploads/ID` (a hyphenated UUID).
pub fn upload_id_in_path(path: &str) -> Option<uuid::Uuid> {
    let id = path.strip_prefix(UPLOADS_PATH)?;
    let id = uuid::Uuid::try_parse(id).ok()?;
    Some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_version_1_0_0_is_resumable() {
        assert_eq!(check_version(Some("1.0.0")), Ok(()));
        assert_eq!(check_version(Some("0.2.2")), Err(TusError::Version));
        assert_eq!(check_version(None), Err(TusError::Version));
    }

    #[test]
    fn offsets_and_lengths_are_non_negative_integers() {
        assert_eq!(parse_offset(Some("0")), Ok(0));
        assert_eq!(parse_offset(Some("1048576")), Ok(1_048_576));
        for bad in ["-1", "+1", "1.5", "", "abc", "1 2", "99999999999999999999999"] {
            assert_eq!(parse_offset(Some(bad)), Err(TusError::BadOffset), "{bad:?}");
        }
        assert_eq!(parse_offset(None), Err(TusError::BadOffset));
        assert_eq!(parse_length(Some("-5")), Err(TusError::BadLength));
        assert_eq!(parse_length(None), Ok(None));
    }

    #[test]
    fn a_creation_gives_a_length_or_defers_it_not_both() {
        assert_eq!(creation_length(Some("10"), None), Ok(Length::Known(10)));
        assert_eq!(creation_length(None, Some("1")), Ok(Length::Deferred));
        assert_eq!(creation_length(None, None), Err(TusError::LengthOrDefer));
        assert_eq!(creation_length(Some("10"), Some("1")), Err(TusError::LengthOrDefer));
        assert_eq!(creation_length(None, Some("0")), Err(TusError::BadDeferLength));
    }

    #[test]
    fn metadata_is_keys_with_base64_values() {
        assert_eq!(
            check_metadata("filename d29ybGRfZG9taW5hdGlvbl9wbGFuLnBkZg==,is_confidential"),
            Ok(())
        );
        assert_eq!(check_metadata(""), Ok(()), "no pairs");
        assert_eq!(
            metadata_value("filename aGVsbG8udHh0,x", "filename").as_deref(),
            Some(&b"hello.txt"[..])
        );
        assert_eq!(metadata_value("filename aGVsbG8udHh0", "other"), None);
        assert!(matches!(
            check_metadata("filename not*base64"),
            Err(TusError::BadMetadata(_))
        ));
        assert!(matches!(check_metadata("a YQ==,a YQ=="), Err(TusError::BadMetadata(_))));
        assert!(matches!(check_metadata(",x"), Err(TusError::BadMetadata(_))));
        assert_eq!(check_metadata(&"k ".repeat(3000)), Err(TusError::MetadataTooLarge));
    }

    #[test]
    fn checksums_are_sha1_or_sha256_of_the_right_length() {
        let sha1 = parse_checksum("sha1 Kq5sNclPz7QV2+lfQIuc6R7oRu0=").unwrap();
        assert_eq!(sha1.algorithm, ChecksumAlgorithm::Sha1);
        let mut hasher = ChecksumHasher::new(sha1.algorithm);
        hasher.update(b"hello world");
        assert!(hasher.matches(&sha1.digest));
        assert_eq!(
            parse_checksum("md5 XrY7u+Ae7tCTyyK7j1rNww=="),
            Err(TusError::UnsupportedChecksum("md5".to_owned()))
        );
        assert_eq!(parse_checksum("sha1 AAAA"), Err(TusError::BadChecksum));
        assert_eq!(parse_checksum("sha256"), Err(TusError::BadChecksum));
    }

    #[test]
    fn a_final_upload_names_its_parts_by_url_or_path() {
        let a = "9b3c2a1e-8f6d-4c7b-a5e4-3d2c1b0a9f8e";
        let b = "1b3c2a1e-8f6d-4c7b-a5e4-3d2c1b0a9f8e";
        assert_eq!(parse_concat("partial"), Ok(Concat::Partial));
        assert_eq!(
            parse_concat(&format!("final;/v1/uploads/{a} https://gw.example/v1/uploads/{b}")),
            Ok(Concat::Final(vec![a.parse().unwrap(), b.parse().unwrap()]))
        );
        assert!(parse_concat("final;").is_err());
        assert!(parse_concat("final;/v1/uploads/../../etc").is_err());
        assert!(parse_concat("whole").is_err());
    }

    #[test]
    fn upload_urls_are_the_uploads_path_and_a_uuid() {
        assert!(upload_id_in_path("/v1/uploads/9b3c2a1e-8f6d-4c7b-a5e4-3d2c1b0a9f8e").is_some());
        assert!(upload_id_in_path("/v1/uploads/x").is_none());
        assert!(upload_id_in_path("/v1/events").is_none());
    }
}
