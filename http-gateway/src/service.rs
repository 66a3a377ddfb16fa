//! One request, from its headers to its answer (docs/HTTP.md, "The
//! gateway"): route, authenticate, read the body, store, answer. Every
//! refusal goes through [`Refusal::response`].
//!
//! | method and path | answer |
//! |---|---|
//! | `POST /v1/token` | signed, empty body: `{"token":…,"expires_in":3600}` |
//! | `POST /v1/events` | signed or bearer, NDJSON body: stored, then `{"status":"ok",…}` |
//! | `/v1/uploads/…` | tus 1.0 uploads, signed or bearer ([`crate::uploads`]; `OPTIONS` needs no credentials) |
//!
//! Nothing on this port answers without credentials but a 404 or 405 for
//! what is not an endpoint: the health check (`/healthz`) is on the admin
//! port, where HAProxy asks it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use drover_edge::BatchStream;
use drover_http_ingest::token::DEFAULT_TOKEN_LIFETIME_MS;
use drover_http_ingest::{BatchLimits, BearerToken};
use drover_service::clock::unix_ms;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use tokio_util::task::TaskTracker;
use tracing::{debug, info};

use crate::answer::{self, EventsAnswer, EventsStats, LineErrorAnswer, RecordCounts, Refusal, TokenAnswer};
use crate::auth::{Authenticated, Authenticator, RequestLine};
use crate::body::{self, BodyLimits, InflightBudget};
use crate::metrics::{LineLabel, Metrics};
use crate::store;
use crate::tus;
use crate::uploads::{self, Uploads};

/// The NDJSON media type (docs/HTTP.md, "Event batches").
const NDJSON: &str = "application/x-ndjson";

/// What every request needs; one per process, shared by the connections.
#[derive(Debug)]
pub struct Gateway {
    /// Credentials.
    pub auth: Authenticator,
    /// The process's event stream to the bridge.
    pub events: BatchStream,
    /// Body limits.
    pub body_limits: BodyLimits,
    /// Per-line limits (CWP/1's, so that an HTTP event fits an `EVENT`).
    pub batch_limits: BatchLimits,
    /// Bytes of bodies held at once.
    pub budget: InflightBudget,
    /// How long the events may take to become durable.
    pub store_timeout: Duration,
    /// Counts.
    pub metrics: Arc<Metrics>,
    /// Where a timed-out request's leftovers are awaited (see [`store`]).
    pub tasks: TaskTracker,
    /// tus uploads.
    pub uploads: Uploads,
}

/// What a connection knows of its client.
#[derive(Debug, Clone, Copy)]
pub struct Client {
    /// The client's address (HAProxy's PROXY header when behind it).
    pub address: SocketAddr,
    /// Whether its connection to HAProxy was TLS.
    pub tls: bool,
}

impl Gateway {
    /// Answers one request.
    pub async fn handle(self: Arc<Self>, client: Client, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = request.uri().path();
        if path == "/v1/uploads" || path.starts_with(tus::UPLOADS_PATH) {
            return self.upload_request(client, request).await;
        }
        let (endpoint, result) = match path {
            "/v1/events" => ("events", self.events(client, request).await),
            "/v1/token" => ("token", self.token(client, request).await),
            _ => ("other", Err(Refusal::NotFound)),
        };
        match result {
            Ok(response) => {
                self.metrics.request(endpoint, "ok");
                response
            }
            Err(refusal) => {
                self.metrics.request(endpoint, refusal.code());
                debug!(client = %client.address, endpoint, code = refusal.code(), "request refused");
                refusal.response()
            }
        }
    }

    /// `/v1/uploads/…`: every answer, refusals included, says
    /// `Tus-Resumable`; a refused version also lists the one served.
    async fn upload_request(&self, client: Client, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let result = self.upload_endpoint(client, request).await;
        let mut response = match result {
            Ok(response) => {
                self.metrics.request("uploads", "ok");
                response
            }
            Err(refusal) => {
                self.metrics.request("uploads", refusal.code());
                debug!(client = %client.address, endpoint = "uploads", code = refusal.code(), "request refused");
                let mut response = refusal.response();
                if matches!(refusal, Refusal::Tus(tus::TusError::Version)) {
                    response
                        .headers_mut()
                        .insert(tus::header::TUS_VERSION, HeaderValue::from_static(tus::VERSION));
                }
                if let Refusal::OffsetMismatch(durable) = refusal {
                    response
                        .headers_mut()
                        .insert(tus::header::UPLOAD_OFFSET, HeaderValue::from(durable));
                }
                response
            }
        };
        response
            .headers_mut()
            .insert(tus::header::TUS_RESUMABLE, HeaderValue::from_static(tus::VERSION));
        response
    }

    async fn upload_endpoint(
        &self,
        client: Client,
        request: Request<Incoming>,
    ) -> Result<Response<Full<Bytes>>, Refusal> {
        let path = request.uri().path();
        let id = if path == "/v1/uploads" || path == tus::UPLOADS_PATH {
            None
        } else {
            Some(tus::upload_id_in_path(path).ok_or(Refusal::NotFound)?)
        };
        let method = request.method().clone();
        if !uploads::allowed(&method, id.is_some()) {
            return Err(Refusal::MethodNotAllowed);
        }
        if method == Method::OPTIONS {
            return Ok(uploads::options(&self.uploads.limits));
        }
        let who = self.authenticate(client, &request).await?;
        match (method, id) {
            (Method::POST, None) => self.create_upload(&who, request).await,
            (Method::PATCH, Some(id)) => self.patch_upload(&who, id, request).await,
            (method, Some(id)) => {
                tus::check_version(
                    request
                        .headers()
                        .get(tus::header::TUS_RESUMABLE)
                        .and_then(|value| value.to_str().ok()),
                )?;
                if method == Method::HEAD {
                    self.head_upload(&who, id).await
                } else {
                    self.delete_upload(&who, id).await
                }
            }
            (_, None) => Err(Refusal::MethodNotAllowed),
        }
    }

    async fn authenticate(&self, client: Client, request: &Request<Incoming>) -> Result<Authenticated, Refusal> {
        let path_and_query = request
            .uri()
            .path_and_query()
            .map_or_else(|| request.uri().path(), |target| target.as_str());
        let line = RequestLine {
            method: request.method().as_str(),
            path_and_query,
            source: client.address.ip(),
            client_tls: client.tls,
        };
        self.auth.authenticate(line, request.headers(), unix_ms()).await
    }

    /// `POST /v1/token`: a signed request (a token cannot renew itself:
    /// a stolen one would then never expire), empty body.
    async fn token(&self, client: Client, request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Refusal> {
        let is_bearer = request
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| value.get(..7).is_some_and(|head| head.eq_ignore_ascii_case("bearer ")));
        if is_bearer {
            return Err(Refusal::MalformedAuthorization(
                "POST /v1/token must be signed (CWP1-HMAC-SHA256), not a bearer token".to_owned(),
            ));
        }
        if request.method() != Method::POST {
            return Err(Refusal::MethodNotAllowed);
        }
        let authenticated = self.authenticate(client, &request).await?;
        body::read_empty(
            request.into_body(),
            authenticated.body_sha256.as_ref(),
            self.body_limits.timeout,
        )
        .await?;
        let token = BearerToken::issue(
            &authenticated.key,
            &authenticated.serial,
            unix_ms(),
            DEFAULT_TOKEN_LIFETIME_MS,
        );
        info!(serial = %authenticated.serial, client = %client.address, "bearer token issued");
        Ok(answer::json(
            StatusCode::OK,
            &TokenAnswer {
                token: token.to_string(),
                expires_in: DEFAULT_TOKEN_LIFETIME_MS / 1000,
            },
        ))
    }

    /// `POST /v1/events`.
    async fn events(&self, client: Client, request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Refusal> {
        let started = Instant::now();
        if request.method() != Method::POST {
            return Err(Refusal::MethodNotAllowed);
        }
        let authenticated = self.authenticate(client, &request).await?;
        let headers = request.headers();
        let media_type = headers
            .get(CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.split(';').next())
            .map(str::trim);
        if !media_type.is_some_and(|media| media.eq_ignore_ascii_case(NDJSON)) {
            return Err(Refusal::UnsupportedMediaType);
        }
        let gzip = match headers.get(CONTENT_ENCODING).map(|value| value.to_str()) {
            None => false,
            Some(Ok(encoding)) if encoding.trim().eq_ignore_ascii_case("gzip") => true,
            Some(Ok(encoding)) if encoding.trim().eq_ignore_ascii_case("identity") => false,
            Some(_) => return Err(Refusal::UnsupportedEncoding),
        };
        let declared = headers
            .get(CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<u64>().ok());
        if declared.is_some_and(|length| length > self.body_limits.max_bytes as u64) {
            return Err(Refusal::BodyTooLarge(self.body_limits.max_bytes));
        }
        let received_ms = unix_ms();
        let read = body::read(
            request.into_body(),
            gzip,
            authenticated.body_sha256.as_ref(),
            &self.body_limits,
            &self.budget,
            self.batch_limits.clone(),
        )
        .await;
        self.metrics.inflight_bytes.set(self.budget.held() as i64);
        let read = read?;
        self.metrics.body_bytes.inc_by(read.sent_bytes);
        let batch = read.batch;
        let batches = store::batches(&authenticated.serial, &batch.records, received_ms);
        let stored = store::store(&self.events, batches, self.store_timeout, read.reservation, &self.tasks).await;
        self.metrics.inflight_bytes.set(self.budget.held() as i64);
        let stored = stored.map_err(|_| Refusal::StoreUnavailable)?;
        let lines = |result| self.metrics.lines.get_or_create(&LineLabel { result }).clone();
        lines("stored").inc_by(stored.stored);
        lines("duplicate").inc_by(stored.duplicates);
        lines("invalid").inc_by(batch.stats.invalid);
        self.metrics
            .events_request_seconds
            .observe(started.elapsed().as_secs_f64());
        debug!(
            serial = %authenticated.serial,
            stored = stored.stored,
            duplicates = stored.duplicates,
            invalid = batch.stats.invalid,
            "batch stored"
        );
        Ok(answer::json(
            StatusCode::OK,
            &EventsAnswer {
                status: "ok",
                stats: EventsStats {
                    bytes: batch.stats.bytes,
                    records: RecordCounts {
                        valid: stored.stored,
                        duplicate: stored.duplicates,
                        invalid: batch.stats.invalid,
                        total: batch.stats.valid + batch.stats.invalid,
                    },
                },
                last_event_id: batch.records.last().map(|record| record.event_id),
                errors: batch
                    .errors
                    .iter()
                    .map(|error| LineErrorAnswer {
                        line: error.line,
                        reason: error.reason.code(),
                    })
                    .collect(),
            },
        ))
    }
}
