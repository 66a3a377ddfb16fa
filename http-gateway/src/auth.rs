//! Who sent a request (docs/HTTP.md, "Verifying"): a signed request
//! (`CWP1-HMAC-SHA256`, its nonce remembered fleet-wide in Redis) or a
//! bearer token, checked with the same key store, revocations and
//! failed-authentication limits as a CWP/1 handshake.
//!
//! Order, for both: the header parses; the failure limits of the source and
//! the serial it claims (before any key is looked up, the same answer
//! whether the serial exists); revocation; the key (an unknown serial
//! answers like a bad signature); the clock and the mac; for a signature,
//! the nonce last, so that only a genuine request uses up its nonce. Only a
//! bad mac or an unknown serial counts as a failed authentication, as in
//! the driver: a skewed clock or a replay says nothing about the key.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use cwp::{DeviceKey, Serial};
use drover_edge::{AuthLimits, KeyStore};
use drover_http_ingest::signature::CONTENT_SHA256_HEADER;
use drover_http_ingest::{AuthorizationError, BearerToken, BodySha256, Credentials, SignatureError, TokenError};
use drover_redis::Connection;
use drover_schema::{HTTP_NONCE_TTL_MS, Layout};
use hyper::HeaderMap;
use hyper::header::AUTHORIZATION;
use tracing::{debug, warn};

use crate::answer::Refusal;

/// An authenticated request.
#[derive(Debug, Clone)]
pub struct Authenticated {
    /// The device.
    pub serial: Serial,
    /// Its key (for `POST /v1/token`).
    pub key: DeviceKey,
    /// The digest the body must have: the signed one, or the one a bearer
    /// request gave in `X-Content-SHA256` (optional with a token).
    pub body_sha256: Option<BodySha256>,
}

/// What a request says about itself, for [`Authenticator::authenticate`].
#[derive(Debug, Clone, Copy)]
pub struct RequestLine<'a> {
    /// The method as sent.
    pub method: &'a str,
    /// The target as sent (path and query).
    pub path_and_query: &'a str,
    /// The client's address (from HAProxy's PROXY header when behind it).
    pub source: IpAddr,
    /// Whether the client's connection was TLS (as HAProxy says).
    pub client_tls: bool,
}

/// Checks requests' credentials; shared by every connection.
#[derive(Debug)]
pub struct Authenticator {
    /// Device keys and revocations (`CWP_MASTER_KEY`, `CWP_KEYS_FILE`).
    pub keys: Arc<KeyStore>,
    /// Failed authentications per source and serial.
    pub limits: AuthLimits,
    /// How long a failure counts: the `Retry-After` of a 429.
    pub failure_window: Duration,
    /// The fleet-wide nonce memory.
    pub nonces: NonceStore,
    /// Refuse bearer tokens unless the client connection was TLS.
    pub bearer_requires_tls: bool,
}

impl Authenticator {
    /// Authenticates a request from its headers, at `now_ms` (the gateway's
    /// clock, Unix ms).
    pub async fn authenticate(
        &self,
        request: RequestLine<'_>,
        headers: &HeaderMap,
        now_ms: u64,
    ) -> Result<Authenticated, Refusal> {
        let authorization = headers
            .get(AUTHORIZATION)
            .ok_or(Refusal::MissingAuthorization)?
            .to_str()
            .map_err(|_| Refusal::MalformedAuthorization("not visible ASCII".to_owned()))?;
        let content_sha256 = match headers.get(CONTENT_SHA256_HEADER) {
            None => None,
            Some(value) => Some(value.to_str().map_err(|_| Refusal::MalformedContentSha256)?),
        };
        if is_bearer(authorization) {
            self.bearer(request, authorization, content_sha256, now_ms)
        } else {
            self.signed(request, authorization, content_sha256, now_ms).await
        }
    }

    /// The limits, then revocation, then the key; a serial without a key
    /// counts as a failure and answers like a bad mac.
    fn key_of(&self, request: RequestLine<'_>, serial: &Serial, bad_mac: Refusal) -> Result<DeviceKey, Refusal> {
        if let Some(limiter) = self.limits.refuses(request.source, serial) {
            debug!(%serial, source = %request.source, limiter = limiter.label(), "too many failed authentications: request refused");
            return Err(Refusal::TooManyFailures(self.failure_window));
        }
        if self.keys.is_revoked(serial) {
            return Err(Refusal::Revoked);
        }
        self.keys.device_key(serial).ok_or_else(|| {
            self.limits.failed(request.source, serial);
            bad_mac
        })
    }

    async fn signed(
        &self,
        request: RequestLine<'_>,
        authorization: &str,
        content_sha256: Option<&str>,
        now_ms: u64,
    ) -> Result<Authenticated, Refusal> {
        let credentials = Credentials::parse(authorization).map_err(|err| match err {
            AuthorizationError::WrongScheme => {
                Refusal::MalformedAuthorization("the scheme must be CWP1-HMAC-SHA256 or Bearer".to_owned())
            }
            other => Refusal::MalformedAuthorization(other.to_string()),
        })?;
        let serial = *credentials.serial();
        let key = self.key_of(request, &serial, Refusal::BadSignature)?;
        let verified = credentials
            .verify(&key, request.method, request.path_and_query, content_sha256, now_ms)
            .map_err(|err| match err {
                SignatureError::Authorization(err) => Refusal::MalformedAuthorization(err.to_string()),
                SignatureError::MissingContentSha256 => Refusal::MissingContentSha256,
                SignatureError::MalformedContentSha256(_) => Refusal::MalformedContentSha256,
                SignatureError::BadRequestLine(err) => Refusal::MalformedAuthorization(err.to_string()),
                SignatureError::ClockSkew { .. } => Refusal::ClockSkew,
                SignatureError::BadSignature => {
                    self.limits.failed(request.source, &serial);
                    Refusal::BadSignature
                }
            })?;
        match self.nonces.remember(&serial, verified.nonce.as_str()).await {
            Ok(true) => {}
            Ok(false) => return Err(Refusal::Replayed),
            Err(err) => {
                warn!(%serial, error = %err, "cannot remember a request's nonce in Redis: request refused (503)");
                return Err(Refusal::ReplayCheckUnavailable);
            }
        }
        Ok(Authenticated {
            serial,
            key,
            body_sha256: Some(verified.body_sha256),
        })
    }

    fn bearer(
        &self,
        request: RequestLine<'_>,
        authorization: &str,
        content_sha256: Option<&str>,
        now_ms: u64,
    ) -> Result<Authenticated, Refusal> {
        if self.bearer_requires_tls && !request.client_tls {
            return Err(Refusal::BearerRequiresTls);
        }
        let token = BearerToken::from_authorization(authorization)
            .map_err(|err| Refusal::MalformedAuthorization(err.to_string()))?;
        let serial = *token.serial();
        let key = self.key_of(request, &serial, Refusal::BadToken)?;
        token.verify(&key, &serial, now_ms).map_err(|err| match err {
            TokenError::Expired { .. } => Refusal::TokenExpired,
            TokenError::BadMac | TokenError::WrongSerial { .. } => {
                self.limits.failed(request.source, &serial);
                Refusal::BadToken
            }
            other => Refusal::MalformedAuthorization(other.to_string()),
        })?;
        let body_sha256 = content_sha256
            .map(BodySha256::parse)
            .transpose()
            .map_err(|_| Refusal::MalformedContentSha256)?;
        Ok(Authenticated {
            serial,
            key,
            body_sha256,
        })
    }
}

/// `Bearer` and a space, any case (RFC 9110 §11.1).
fn is_bearer(authorization: &str) -> bool {
    authorization
        .get(..7)
        .is_some_and(|head| head.eq_ignore_ascii_case("bearer "))
}

/// The nonces of signed requests, remembered fleet-wide in Redis.
#[derive(Debug, Clone)]
pub struct NonceStore {
    /// Redis or a cluster.
    pub redis: Connection,
    /// Where a serial's nonces live.
    pub layout: Layout,
}

impl NonceStore {
    /// Remembers `nonce` of `serial` for [`HTTP_NONCE_TTL_MS`]: true if it
    /// is new, false if some gateway already saw it. One `SET key 1 NX PX`,
    /// atomic in Redis, so of two gateways given the same request at once
    /// exactly one accepts it.
    pub async fn remember(&self, serial: &Serial, nonce: &str) -> redis::RedisResult<bool> {
        let key = self.layout.http_nonce(serial, nonce);
        let mut redis = self.redis.clone();
        let set: Option<String> = redis::cmd("SET")
            .arg(&key)
            .arg(1)
            .arg("NX")
            .arg("PX")
            .arg(HTTP_NONCE_TTL_MS)
            .query_async(&mut redis)
            .await?;
        Ok(set.is_some())
    }
}
