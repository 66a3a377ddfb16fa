//! tus 1.0 uploads under `/v1/uploads/` (docs/HTTP.md, "Uploads"), on the
//! same store as CWP/1 uploads (`drover-upload-store`): the same layout,
//! the same lock, durable offsets, completion records in `cwp:uploads`
//! (`transport` `http`), the same expiry.
//!
//! | request | answer |
//! |---|---|
//! | `OPTIONS /v1/uploads/` | 204, the capabilities (no credentials needed) |
//! | `POST /v1/uploads/` | 201, `Location` (creation, with upload, deferred length, partial and final concatenation) |
//! | `HEAD /v1/uploads/{id}` | 200, `Upload-Offset`: the durable offset |
//! | `PATCH /v1/uploads/{id}` | 204, `Upload-Offset` once the bytes are fdatasync'd |
//! | `DELETE /v1/uploads/{id}` | 204, the partial upload is gone |
//!
//! # An offset is a promise
//!
//! A `PATCH` body goes through one write buffer (`UPLOAD_BUFFER_BYTES`):
//! each full buffer is one write on the blocking pool, made durable by a
//! group commit (one `fdatasync` in flight at a time, covering every buffer
//! written before it, while the next ones are read: at most
//! [`MAX_UNSYNCED`] behind), and the rest is made durable before the
//! answer; `Upload-Offset` is the store's durable offset, never more. A
//! body that breaks off keeps every full buffer, durable before the
//! answer. With `Upload-Checksum`, or a signed
//! body (`X-Content-SHA256`), the bytes are written inside a verify window
//! (`PartialUpload::begin_verified`): if the digest does not match, or the
//! body breaks off, the file is cut back and the offset does not move.
//!
//! # One writer
//!
//! Every request on an upload holds its `flock` (the driver's lock, shared
//! through `UPLOAD_DIR`), so two `PATCH`es of one upload, on one gateway
//! or two, never interleave: the second gets 423 Locked with `Retry-After`,
//! and, when it retries, 409 if the first moved the offset.

use std::io;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use cwp::{Serial, UploadId};
use drover_edge::BridgeClient;
use drover_http_ingest::{BodyDigest, BodySha256};
use drover_service::admin::GaugeHold;
use drover_upload_store::{
    CompletedUpload, Opened, PartialUpload, StoreError, TusMeta, UploadMeta, UploadStore, fill_to,
};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::header::{CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue, LOCATION};
use hyper::{HeaderMap, Method, Request, Response, StatusCode};
use sha2::{Digest as _, Sha256};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{debug, info, warn};

use crate::answer::Refusal;
use crate::auth::Authenticated;
use crate::metrics::Metrics;
use crate::tus::{self, Checksum, ChecksumHasher, Concat, Length, header};

/// The limits of a gateway's uploads (the driver's variables, same names).
#[derive(Debug, Clone, Copy)]
pub struct UploadLimits {
    /// `UPLOAD_MAX_BYTES`: the largest upload.
    pub max_bytes: u64,
    /// `UPLOAD_MAX_BYTES_PER_SERIAL`: one device's partial uploads on disk
    /// (0: no quota).
    pub max_bytes_per_serial: u64,
    /// `UPLOAD_MIN_FREE_BYTES`: the free space kept (0: no floor).
    pub min_free_bytes: u64,
    /// `UPLOAD_MAX_OPEN`: requests writing at once (each holds a buffer).
    pub max_open: usize,
    /// `UPLOAD_BUFFER_BYTES`.
    pub buffer_bytes: usize,
    /// `UPLOAD_EXPIRE_AFTER`: an upload untouched this long is deleted.
    pub expire_after: Duration,
    /// `HTTP_UPLOAD_IDLE_TIMEOUT`: a body that sends nothing this long ends.
    pub idle_timeout: Duration,
}

/// What every upload request shares.
#[derive(Debug)]
pub struct Uploads {
    /// The files under `UPLOAD_DIR`.
    pub store: UploadStore,
    /// The limits.
    pub limits: UploadLimits,
    /// `UPLOAD_MAX_OPEN` slots.
    slots: Arc<Semaphore>,
    /// Records completed uploads (`RecordUpload`).
    bridge: BridgeClient,
}

impl Uploads {
    /// The uploads of a gateway.
    pub fn new(store: UploadStore, limits: UploadLimits, bridge: BridgeClient) -> Self {
        Self {
            store,
            slots: Arc::new(Semaphore::new(limits.max_open)),
            limits,
            bridge,
        }
    }
}

/// Runs `work` on the blocking pool; a panic there is an I/O failure.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> io::Result<T> {
    tokio::task::spawn_blocking(work).await.map_err(io::Error::other)
}

/// A header's value as text (`None` if absent or not visible ASCII).
fn text<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|value| value.to_str().ok())
}

/// The upload id in the id-shaped form the store uses.
fn store_id(id: uuid::Uuid) -> UploadId {
    UploadId(*id.as_bytes())
}

/// The `Location` of an upload.
fn location(id: UploadId) -> String {
    format!("{}{id}", tus::UPLOADS_PATH)
}

/// `Upload-Expires` for an upload touched now.
fn expires(limits: &UploadLimits) -> String {
    httpdate::fmt_http_date(SystemTime::now() + limits.expire_after)
}

/// An empty tus response.
fn tus_response(status: StatusCode) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    response
}

fn set(response: &mut Response<Full<Bytes>>, name: &'static str, value: impl ToString) {
    if let Ok(value) = HeaderValue::from_str(&value.to_string()) {
        response.headers_mut().insert(name, value);
    }
}

/// `OPTIONS`: what this server does; no credentials needed (nothing but
/// constants).
pub fn options(limits: &UploadLimits) -> Response<Full<Bytes>> {
    let mut response = tus_response(StatusCode::NO_CONTENT);
    set(&mut response, header::TUS_VERSION, tus::VERSION);
    set(&mut response, header::TUS_EXTENSION, tus::EXTENSIONS);
    set(&mut response, header::TUS_MAX_SIZE, limits.max_bytes);
    set(&mut response, header::TUS_CHECKSUM_ALGORITHM, tus::CHECKSUM_ALGORITHMS);
    response
}

/// What a body's digest must be, beside the upload's own SHA-256.
#[derive(Debug)]
struct Verify {
    /// `Upload-Checksum`.
    checksum: Option<(Checksum, ChecksumHasher)>,
    /// A signed body's (or a bearer request's) `X-Content-SHA256`.
    body_sha256: Option<(BodySha256, BodyDigest)>,
}

impl Verify {
    fn new(checksum: Option<Checksum>, body_sha256: Option<BodySha256>) -> Option<Self> {
        if checksum.is_none() && body_sha256.is_none() {
            return None;
        }
        Some(Self {
            checksum: checksum.map(|checksum| {
                let hasher = ChecksumHasher::new(checksum.algorithm);
                (checksum, hasher)
            }),
            body_sha256: body_sha256.map(|expected| (expected, BodyDigest::new())),
        })
    }

    fn update(&mut self, bytes: &[u8]) {
        if let Some((_, hasher)) = &mut self.checksum {
            hasher.update(bytes);
        }
        if let Some((_, hasher)) = &mut self.body_sha256 {
            hasher.update(bytes);
        }
    }

    /// The refusal if a digest does not match.
    fn check(self) -> Result<(), Refusal> {
        if let Some((expected, digest)) = self.body_sha256 {
            digest.verify(&expected).map_err(|_| Refusal::BodyDigestMismatch)?;
        }
        if let Some((checksum, hasher)) = self.checksum
            && !hasher.matches(&checksum.digest)
        {
            return Err(Refusal::ChecksumMismatch);
        }
        Ok(())
    }
}

/// An upload open for one request's body: the locked file, the write
/// buffer, the upload's running SHA-256.
#[derive(Debug)]
struct Writer {
    file: PartialUpload,
    /// Bytes received, not yet written; capacity `UPLOAD_BUFFER_BYTES`.
    buffer: Vec<u8>,
    buffer_bytes: usize,
    /// SHA-256 of the bytes written so far (hashed as they are written,
    /// so that it always matches the file).
    hasher: Sha256,
    /// The body's digests, when the bytes count only if they match.
    verify: Option<Verify>,
    /// Counts the buffer in `upload_buffers`.
    _counted: GaugeHold,
    /// One of `UPLOAD_MAX_OPEN`.
    _slot: OwnedSemaphorePermit,
}

impl Writer {
    /// Writes the buffer (one write, synced by the group commit) and
    /// empties it; the upload's SHA-256 and the body's digests take its
    /// bytes as they are written.
    fn write_buffer(&mut self) -> io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        self.hasher.update(&self.buffer);
        if let Some(verify) = &mut self.verify {
            verify.update(&self.buffer);
        }
        self.file.write_unsynced(&self.buffer)?;
        self.buffer.clear();
        Ok(())
    }
}

/// How a body ended early.
enum Interrupted {
    /// Nothing arrived for `HTTP_UPLOAD_IDLE_TIMEOUT`.
    Idle,
    /// The client broke it off.
    Broken,
    /// More bytes than the upload's length (or its quota).
    TooLong(Refusal),
    /// The disk failed.
    Storage(io::Error),
}

/// The most a request may add: up to the upload's length (or
/// `UPLOAD_MAX_BYTES` while it is deferred), and within the serial's quota.
#[derive(Debug, Clone, Copy)]
struct Room {
    /// Offset the upload may reach.
    up_to: u64,
    /// The refusal past it.
    quota: Option<u64>,
}

impl Uploads {
    /// Takes a slot and opens the upload for writing (the lock), on the
    /// blocking pool: its SHA-256 so far is rebuilt from the last
    /// checkpoint.
    async fn open_writer(
        &self,
        metrics: &Metrics,
        serial: Serial,
        id: UploadId,
        verify: Option<Verify>,
    ) -> Result<Result<Writer, Opened>, Refusal> {
        let slot = Arc::clone(&self.slots).try_acquire_owned().map_err(|_| Refusal::Busy)?;
        let store = self.store.clone();
        let limits = self.limits;
        let counted = GaugeHold::new(&metrics.upload_buffers);
        let opened = blocking(move || -> Result<Result<Writer, Opened>, Refusal> {
            let opened = open_tus(&store, &serial, id, &limits)?;
            let Opened::Partial(mut file) = opened else {
                return Ok(Err(opened));
            };
            let mut buffer = Vec::with_capacity(limits.buffer_bytes);
            let (hasher, read_back) = file.hash_prefix(&mut buffer).map_err(storage)?;
            if read_back > 0 {
                debug!(%serial, upload_id = %id, read_back, "resumed upload: hashed the bytes after its last checkpoint");
            }
            Ok(Ok(Writer {
                file,
                buffer,
                buffer_bytes: limits.buffer_bytes,
                hasher,
                verify,
                _counted: counted,
                _slot: slot,
            }))
        })
        .await
        .map_err(storage)??;
        Ok(opened)
    }

    /// Reads `body` into the upload: each full buffer is written as it
    /// fills and made durable by a group commit running beside the reading
    /// (at most [`MAX_UNSYNCED`] behind), the rest at the end; the verify
    /// window, if any, is closed.
    async fn write_body(&self, metrics: &Metrics, writer: Writer, body: Incoming, room: Room) -> WriteResult {
        let mut writer = Box::new(writer);
        if writer.verify.is_some() {
            writer = match blocking_writer(writer, |writer| writer.file.begin_verified()).await {
                Ok(writer) => writer,
                Err(err) => return WriteResult::Failed(None, Interrupted::Storage(err)),
            };
        }
        let mut commit = GroupCommit::default();
        let mut body = body;
        let mut received = writer.file.written();
        let interrupted = loop {
            let frame = match tokio::time::timeout(self.limits.idle_timeout, body.frame()).await {
                Err(_) => break Some(Interrupted::Idle),
                Ok(None) => break None,
                Ok(Some(Err(_))) => break Some(Interrupted::Broken),
                Ok(Some(Ok(frame))) => frame,
            };
            let Ok(data) = frame.into_data() else { continue };
            received += data.len() as u64;
            if received > room.up_to {
                break Some(Interrupted::TooLong(match room.quota {
                    Some(quota) => Refusal::OverQuota(quota),
                    None => Refusal::PastLength,
                }));
            }
            let mut rest: &[u8] = &data;
            while !rest.is_empty() {
                let fill = fill_to(writer.file.written(), writer.buffer_bytes);
                let room = fill - writer.buffer.len();
                let (now, later) = rest.split_at(room.min(rest.len()));
                writer.buffer.extend_from_slice(now);
                rest = later;
                if writer.buffer.len() == fill {
                    writer = match blocking_writer(writer, Writer::write_buffer).await {
                        Ok(writer) => writer,
                        Err(err) => return WriteResult::Failed(None, Interrupted::Storage(err)),
                    };
                    writer = match commit.after_write(writer, metrics).await {
                        Ok(writer) => writer,
                        Err(err) => return WriteResult::Failed(None, Interrupted::Storage(err)),
                    };
                }
            }
        };
        // Every full buffer is written: durable before anything is answered.
        if interrupted.is_none() {
            writer = match blocking_writer(writer, Writer::write_buffer).await {
                Ok(writer) => writer,
                Err(err) => return WriteResult::Failed(None, Interrupted::Storage(err)),
            };
        } else {
            // Unwritten bytes are dropped (in a verify window the written
            // ones go too, below).
            writer.buffer.clear();
        }
        writer = match commit.finish(writer, metrics).await {
            Ok(writer) => writer,
            Err(err) => return WriteResult::Failed(None, Interrupted::Storage(err)),
        };
        match interrupted {
            None => {
                let verdict = writer.verify.take().map_or(Ok(()), Verify::check);
                let verified = verdict.is_ok();
                let closed = blocking_writer(writer, move |writer| {
                    if verified {
                        writer.file.commit_verified()?;
                        writer.file.checkpoint_now(&writer.hasher);
                    } else {
                        writer.file.rollback_verified()?;
                    }
                    Ok(())
                })
                .await;
                match (closed, verdict) {
                    (Ok(writer), Ok(())) => WriteResult::Written(writer),
                    (Ok(_), Err(refusal)) => WriteResult::Refused(refusal),
                    (Err(err), _) => WriteResult::Failed(None, Interrupted::Storage(err)),
                }
            }
            Some(interrupted) => {
                let closed = blocking_writer(writer, |writer| {
                    writer.file.rollback_verified()?;
                    writer.file.checkpoint_now(&writer.hasher);
                    Ok(())
                })
                .await;
                WriteResult::Failed(closed.ok(), interrupted)
            }
        }
    }
}

/// Bytes written but not yet durable, at most, before the reading waits
/// for the group commit in flight: bounds what one upload leaves dirty in
/// the page cache.
const MAX_UNSYNCED: u64 = 4 << 20;

/// The group commit of one request's writes: at most one `fdatasync` in
/// flight, covering every buffer written before it started, while the
/// next buffers are read and written. Each buffer is durable a moment
/// after it is written; an offset is reported only once durable.
#[derive(Debug, Default)]
struct GroupCommit {
    /// The sync in flight, and the bytes it will have made durable.
    in_flight: Option<tokio::task::JoinHandle<io::Result<u64>>>,
}

impl GroupCommit {
    /// After a buffer was written: collects a finished sync, starts the
    /// next, and waits when too much is unsynced.
    async fn after_write(&mut self, mut writer: Box<Writer>, metrics: &Metrics) -> io::Result<Box<Writer>> {
        if self
            .in_flight
            .as_ref()
            .is_some_and(tokio::task::JoinHandle::is_finished)
        {
            self.collect(&mut writer, metrics).await?;
        }
        if self.in_flight.is_none() {
            self.start(&mut writer)?;
        } else if writer.file.written() - writer.file.synced_offset() > MAX_UNSYNCED {
            self.collect(&mut writer, metrics).await?;
            self.start(&mut writer)?;
        }
        Ok(writer)
    }

    /// Makes everything written durable: waits for the sync in flight,
    /// then syncs the rest.
    async fn finish(&mut self, mut writer: Box<Writer>, metrics: &Metrics) -> io::Result<Box<Writer>> {
        self.collect(&mut writer, metrics).await?;
        if writer.file.written() > writer.file.synced_offset() {
            self.start(&mut writer)?;
            self.collect(&mut writer, metrics).await?;
        }
        Ok(writer)
    }

    fn start(&mut self, writer: &mut Writer) -> io::Result<()> {
        let syncer = writer.file.syncer(&writer.hasher)?;
        self.in_flight = Some(tokio::task::spawn_blocking(move || syncer.sync()));
        Ok(())
    }

    async fn collect(&mut self, writer: &mut Writer, metrics: &Metrics) -> io::Result<()> {
        let Some(sync) = self.in_flight.take() else {
            return Ok(());
        };
        let before = writer.file.synced_offset();
        match sync.await.map_err(io::Error::other).and_then(|synced| synced) {
            Ok(covers) => {
                writer.file.synced(covers);
                metrics
                    .upload_bytes
                    .inc_by(writer.file.synced_offset().saturating_sub(before));
                Ok(())
            }
            Err(err) => {
                writer.file.cut_back();
                Err(err)
            }
        }
    }
}

/// What became of a request's body.
enum WriteResult {
    /// All of it is durable.
    Written(Box<Writer>),
    /// All of it arrived, but a digest did not match: cut back.
    Refused(Refusal),
    /// It ended early; the durable part is kept (none of it in a verify
    /// window).
    Failed(Option<Box<Writer>>, Interrupted),
}

/// Runs `work` on the writer on the blocking pool and gives it back.
async fn blocking_writer(
    mut writer: Box<Writer>,
    work: impl FnOnce(&mut Writer) -> io::Result<()> + Send + 'static,
) -> io::Result<Box<Writer>> {
    blocking(move || work(&mut writer).map(|()| writer)).await?
}

/// A storage failure: logged, answered 503.
fn storage(err: io::Error) -> Refusal {
    warn!(error = %err, "upload storage failed");
    Refusal::UploadStorage
}

/// Opens an existing tus upload of `serial`, deciding its expiry: 404 if
/// there is none (or it is a CWP/1 upload), 410 if it expired.
fn open_tus(store: &UploadStore, serial: &Serial, id: UploadId, limits: &UploadLimits) -> Result<Opened, Refusal> {
    let opened = match store.open_existing(serial, id) {
        Ok(Some(opened)) => opened,
        Ok(None) if store.is_expired(serial, id) => return Err(Refusal::UploadExpired),
        Ok(None) => return Err(Refusal::UploadNotFound),
        Err(StoreError::Locked) => return Err(Refusal::UploadLocked),
        Err(StoreError::Io(err)) => return Err(storage(err)),
    };
    match opened {
        Opened::Partial(partial) => {
            if partial.meta().tus.is_none() {
                return Err(Refusal::UploadNotFound);
            }
            let age = SystemTime::now()
                .duration_since(partial.touched_before_open())
                .unwrap_or_default();
            if age >= limits.expire_after {
                info!(%serial, upload_id = %id, "upload past its Upload-Expires: expired now");
                store.expire_now(partial).map_err(storage)?;
                return Err(Refusal::UploadExpired);
            }
            Ok(Opened::Partial(partial))
        }
        Opened::Completed(completed) if completed.transport != drover_upload_store::Transport::Http => {
            Err(Refusal::UploadNotFound)
        }
        completed => Ok(completed),
    }
}

/// The headers of a partial upload's `HEAD` and `PATCH` answers.
fn describe_partial(response: &mut Response<Full<Bytes>>, partial: &PartialUpload, limits: &UploadLimits) {
    set(response, header::UPLOAD_OFFSET, partial.durable());
    let meta = partial.meta();
    let tus = meta.tus.clone().unwrap_or_default();
    if tus.deferred_length {
        set(response, header::UPLOAD_DEFER_LENGTH, 1);
    } else {
        set(response, header::UPLOAD_LENGTH, meta.total_size);
    }
    if !tus.metadata.is_empty() {
        set(response, header::UPLOAD_METADATA, &tus.metadata);
    }
    if tus.partial {
        set(response, header::UPLOAD_CONCAT, "partial");
    }
    set(response, header::UPLOAD_EXPIRES, expires(limits));
}

impl crate::service::Gateway {
    /// Appends the `upload_completed` record (idempotent at the bridge).
    async fn record(&self, completed: &CompletedUpload) -> Result<(), Refusal> {
        match self.uploads.bridge.record_upload(completed).await {
            Ok(appended) => {
                if appended {
                    self.metrics.uploads_completed.inc();
                    info!(serial = %completed.serial, upload_id = %completed.upload_id, size = completed.size, sha256 = %completed.sha256, path = %completed.path, "upload completed");
                }
                Ok(())
            }
            Err(status) => {
                warn!(serial = %completed.serial, upload_id = %completed.upload_id, code = ?status.code(), message = status.message(), "cannot record a completed upload; the client's next HEAD or PATCH records it");
                Err(Refusal::StoreUnavailable)
            }
        }
    }

    /// `POST /v1/uploads/`: creation (with upload, deferred length, a part
    /// of a concatenation, or the final upload joining parts).
    pub async fn create_upload(
        &self,
        who: &Authenticated,
        request: Request<Incoming>,
    ) -> Result<Response<Full<Bytes>>, Refusal> {
        let headers = request.headers();
        tus::check_version(text(headers, header::TUS_RESUMABLE))?;
        let limits = self.uploads.limits;
        let metadata = match headers.get(header::UPLOAD_METADATA) {
            None => String::new(),
            Some(value) => {
                let value = value
                    .to_str()
                    .map_err(|_| Refusal::Tus(tus::TusError::BadMetadata("not visible ASCII")))?;
                tus::check_metadata(value)?;
                value.to_owned()
            }
        };
        let concat = text(headers, header::UPLOAD_CONCAT)
            .map(tus::parse_concat)
            .transpose()?;
        if let Some(Concat::Final(parts)) = concat {
            return self.concatenate(who, parts, metadata).await;
        }
        let length = tus::creation_length(
            text(headers, header::UPLOAD_LENGTH),
            text(headers, header::UPLOAD_DEFER_LENGTH),
        )?;
        if let Length::Known(length) = length
            && length > limits.max_bytes
        {
            return Err(Refusal::UploadTooLarge(limits.max_bytes));
        }
        let has_body = has_body(headers);
        if has_body && !is_offset_octet_stream(headers) {
            return Err(Refusal::NotOffsetOctetStream);
        }
        let checksum = text(headers, header::UPLOAD_CHECKSUM)
            .map(tus::parse_checksum)
            .transpose()?;
        let id = store_id(uuid::Uuid::new_v4());
        let serial = who.serial;
        let store = self.uploads.store.clone();
        let meta = tus_upload_meta(metadata, length, concat == Some(Concat::Partial));
        let announced = meta.total_size;
        // The floor and the quota, then the files (meta first, durably).
        blocking(move || -> Result<(), Refusal> {
            if limits.min_free_bytes > 0 && store.free_bytes().map_err(storage)? < limits.min_free_bytes {
                warn!(dir = %store.root().display(), "UPLOAD_DIR is below UPLOAD_MIN_FREE_BYTES: uploads get 507");
                return Err(Refusal::InsufficientStorage);
            }
            if limits.max_bytes_per_serial > 0 {
                let others = store.partial_bytes(&serial, id).map_err(storage)?;
                if others.saturating_add(announced) > limits.max_bytes_per_serial {
                    return Err(Refusal::OverQuota(limits.max_bytes_per_serial));
                }
            }
            match store.create(&serial, id, meta) {
                Ok(_) => Ok(()),
                Err(StoreError::Locked) => Err(Refusal::UploadLocked),
                Err(StoreError::Io(err)) => Err(storage(err)),
            }
        })
        .await
        .map_err(storage)??;
        info!(%serial, upload_id = %id, length = ?length, "upload created");
        let mut response = tus_response(StatusCode::CREATED);
        set(&mut response, LOCATION.as_str(), location(id));
        set(&mut response, header::UPLOAD_EXPIRES, expires(&limits));
        if has_body {
            // creation-with-upload: the body is a first PATCH at offset 0.
            let offset = match self.append(who, id, 0, checksum, request).await {
                Ok(offset) => offset,
                // The upload exists: the client resumes it with HEAD.
                Err(refusal) => {
                    debug!(%serial, upload_id = %id, code = refusal.code(), "the creation's body was not all stored");
                    0
                }
            };
            set(&mut response, header::UPLOAD_OFFSET, offset);
        }
        Ok(response)
    }

    /// `HEAD /v1/uploads/{id}`: the durable offset.
    pub async fn head_upload(&self, who: &Authenticated, id: uuid::Uuid) -> Result<Response<Full<Bytes>>, Refusal> {
        let id = store_id(id);
        let serial = who.serial;
        let store = self.uploads.store.clone();
        let limits = self.uploads.limits;
        let opened = blocking(move || {
            open_tus(&store, &serial, id, &limits).map(|opened| match opened {
                Opened::Partial(partial) => {
                    let mut response = tus_response(StatusCode::OK);
                    describe_partial(&mut response, &partial, &limits);
                    Ok(response)
                }
                Opened::Completed(completed) => Err(Box::new(completed)),
            })
        })
        .await
        .map_err(storage)??;
        let mut response = match opened {
            Ok(response) => response,
            Err(completed) => {
                // Recorded already, unless the completing request could not:
                // recording is idempotent.
                self.record(&completed).await?;
                let mut response = tus_response(StatusCode::OK);
                set(&mut response, header::UPLOAD_OFFSET, completed.size);
                set(&mut response, header::UPLOAD_LENGTH, completed.size);
                if let Some(metadata) = &completed.metadata {
                    set(&mut response, header::UPLOAD_METADATA, metadata);
                }
                response
            }
        };
        response
            .headers_mut()
            .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        Ok(response)
    }

    /// `PATCH /v1/uploads/{id}`: appends the body at `Upload-Offset`.
    pub async fn patch_upload(
        &self,
        who: &Authenticated,
        id: uuid::Uuid,
        request: Request<Incoming>,
    ) -> Result<Response<Full<Bytes>>, Refusal> {
        let headers = request.headers();
        tus::check_version(text(headers, header::TUS_RESUMABLE))?;
        if !is_offset_octet_stream(headers) {
            return Err(Refusal::NotOffsetOctetStream);
        }
        let offset = tus::parse_offset(text(headers, header::UPLOAD_OFFSET))?;
        let checksum = text(headers, header::UPLOAD_CHECKSUM)
            .map(tus::parse_checksum)
            .transpose()?;
        let offset = self.append(who, store_id(id), offset, checksum, request).await?;
        let mut response = tus_response(StatusCode::NO_CONTENT);
        set(&mut response, header::UPLOAD_OFFSET, offset);
        set(&mut response, header::UPLOAD_EXPIRES, expires(&self.uploads.limits));
        Ok(response)
    }

    /// Appends a request's body to upload `id` at `offset`; completes the
    /// upload when it reaches its length. Returns the durable offset.
    async fn append(
        &self,
        who: &Authenticated,
        id: UploadId,
        offset: u64,
        checksum: Option<Checksum>,
        request: Request<Incoming>,
    ) -> Result<u64, Refusal> {
        let limits = self.uploads.limits;
        let new_length = tus::parse_length(text(request.headers(), header::UPLOAD_LENGTH))?;
        let empty_body = !has_body(request.headers());
        let verify = Verify::new(checksum, who.body_sha256);
        let serial = who.serial;
        let mut writer = match self.uploads.open_writer(&self.metrics, serial, id, verify).await? {
            Ok(writer) => Box::new(writer),
            Err(Opened::Completed(completed)) => {
                if offset != completed.size {
                    return Err(Refusal::OffsetMismatch(completed.size));
                }
                if !empty_body {
                    return Err(Refusal::UploadCompleted);
                }
                self.record(&completed).await?;
                return Ok(completed.size);
            }
            Err(Opened::Partial(_)) => return Err(Refusal::UploadNotFound),
        };
        let durable = writer.file.durable();
        if offset != durable {
            return Err(Refusal::OffsetMismatch(durable));
        }
        let meta = writer.file.meta().clone();
        let tus_meta = meta.tus.clone().unwrap_or_default();
        match new_length {
            Some(length) if tus_meta.deferred_length => {
                if length > limits.max_bytes {
                    return Err(Refusal::UploadTooLarge(limits.max_bytes));
                }
                if length < durable {
                    return Err(Refusal::Tus(tus::TusError::BadLength));
                }
                writer = blocking_writer(writer, move |writer| writer.file.set_total_size(length))
                    .await
                    .map_err(storage)?;
            }
            Some(length) if length != meta.total_size => return Err(Refusal::Tus(tus::TusError::BadLength)),
            _ => {}
        }
        let deferred = writer.file.meta().tus.as_ref().is_some_and(|tus| tus.deferred_length);
        let length = if deferred {
            limits.max_bytes
        } else {
            writer.file.meta().total_size
        };
        let mut room = Room {
            up_to: length,
            quota: None,
        };
        if limits.max_bytes_per_serial > 0 {
            let store = self.uploads.store.clone();
            let others = blocking(move || store.partial_bytes(&serial, id))
                .await
                .and_then(|others| others)
                .map_err(storage)?;
            let left = limits.max_bytes_per_serial.saturating_sub(others);
            if left < room.up_to {
                room = Room {
                    up_to: left,
                    quota: Some(limits.max_bytes_per_serial),
                };
            }
        }
        let writer = match self
            .uploads
            .write_body(&self.metrics, *writer, request.into_body(), room)
            .await
        {
            WriteResult::Written(writer) => writer,
            WriteResult::Refused(refusal) => return Err(refusal),
            WriteResult::Failed(writer, interrupted) => {
                let kept = writer.map(|writer| writer.file.durable());
                debug!(%serial, upload_id = %id, ?kept, "upload body ended early");
                return Err(match interrupted {
                    Interrupted::Idle => Refusal::UploadIdle(limits.idle_timeout),
                    Interrupted::Broken => Refusal::BodyIncomplete,
                    Interrupted::TooLong(refusal) => refusal,
                    Interrupted::Storage(err) => storage(err),
                });
            }
        };
        let durable = writer.file.durable();
        let complete = !deferred && !tus_meta.partial && durable == length;
        if !complete {
            return Ok(durable);
        }
        let Writer { file, hasher, .. } = *writer;
        let digest: [u8; 32] = hasher.finalize().into();
        let completed = blocking(move || file.complete(&digest, drover_service::clock::unix_ms()))
            .await
            .and_then(|completed| completed)
            .map_err(storage)?;
        self.record(&completed).await?;
        Ok(durable)
    }

    /// `DELETE /v1/uploads/{id}` (termination): the partial upload is
    /// deleted; a completed one belongs to the application (403).
    pub async fn delete_upload(&self, who: &Authenticated, id: uuid::Uuid) -> Result<Response<Full<Bytes>>, Refusal> {
        let id = store_id(id);
        let serial = who.serial;
        let store = self.uploads.store.clone();
        let limits = self.uploads.limits;
        blocking(move || match open_tus(&store, &serial, id, &limits)? {
            Opened::Partial(partial) => partial.discard().map_err(storage),
            Opened::Completed(_) => Err(Refusal::UploadCompleted),
        })
        .await
        .map_err(storage)??;
        info!(%serial, upload_id = %id, "upload terminated");
        Ok(tus_response(StatusCode::NO_CONTENT))
    }

    /// `POST` with `Upload-Concat: final;…`: joins complete parts of this
    /// serial, in order, into a new upload, completed at once; the parts
    /// are deleted.
    async fn concatenate(
        &self,
        who: &Authenticated,
        parts: Vec<uuid::Uuid>,
        metadata: String,
    ) -> Result<Response<Full<Bytes>>, Refusal> {
        let serial = who.serial;
        let store = self.uploads.store.clone();
        let limits = self.uploads.limits;
        let id = store_id(uuid::Uuid::new_v4());
        let _slot = Arc::clone(&self.uploads.slots)
            .try_acquire_owned()
            .map_err(|_| Refusal::Busy)?;
        let completed = blocking(move || -> Result<CompletedUpload, Refusal> {
            let mut opened = Vec::with_capacity(parts.len());
            let mut total = 0u64;
            for part in parts {
                let bad = |why: &'static str| Refusal::Tus(tus::TusError::BadConcat(why));
                let partial = match open_tus(&store, &serial, store_id(part), &limits) {
                    Ok(Opened::Partial(partial)) => partial,
                    Ok(Opened::Completed(_)) => return Err(bad("a part is a completed upload, not a partial one")),
                    Err(Refusal::UploadNotFound | Refusal::UploadExpired) => {
                        return Err(bad("a part is not an upload of this serial"));
                    }
                    Err(other) => return Err(other),
                };
                let tus_meta = partial.meta().tus.clone().unwrap_or_default();
                if !tus_meta.partial {
                    return Err(bad("a part was not created with Upload-Concat: partial"));
                }
                if tus_meta.deferred_length || partial.durable() != partial.meta().total_size {
                    return Err(bad("a part is not complete"));
                }
                total = total.saturating_add(partial.durable());
                opened.push(partial);
            }
            if total > limits.max_bytes {
                return Err(Refusal::UploadTooLarge(limits.max_bytes));
            }
            let meta = tus_upload_meta(metadata, Length::Known(total), false);
            let mut joined = match store.create(&serial, id, meta) {
                Ok(Opened::Partial(joined)) => joined,
                Ok(Opened::Completed(_)) | Err(StoreError::Locked) => return Err(Refusal::UploadLocked),
                Err(StoreError::Io(err)) => return Err(storage(err)),
            };
            let mut hasher = Sha256::new();
            let mut scratch = Vec::with_capacity(1 << 20);
            for part in &opened {
                if let Err(err) = joined.append_from(part, &mut hasher, &mut scratch) {
                    let _ = joined.discard();
                    return Err(storage(err));
                }
            }
            let digest: [u8; 32] = hasher.finalize().into();
            let completed = joined
                .complete(&digest, drover_service::clock::unix_ms())
                .map_err(storage)?;
            for part in opened {
                if let Err(err) = part.discard() {
                    warn!(error = %err, "cannot delete a concatenated part; the expiry will");
                }
            }
            Ok(completed)
        })
        .await
        .map_err(storage)??;
        info!(%serial, upload_id = %id, size = completed.size, "final upload concatenated");
        self.record(&completed).await?;
        let mut response = tus_response(StatusCode::CREATED);
        set(&mut response, LOCATION.as_str(), location(id));
        Ok(response)
    }
}

/// The meta of a new tus upload (the store fills in its serial and id):
/// the `filename` of `Upload-Metadata` is its name.
fn tus_upload_meta(metadata: String, length: Length, partial: bool) -> UploadMeta {
    UploadMeta {
        serial: String::new(),
        upload_id: String::new(),
        name: tus::metadata_value(&metadata, "filename")
            .and_then(|name| String::from_utf8(name).ok())
            .unwrap_or_default(),
        total_size: match length {
            Length::Known(length) => length,
            Length::Deferred => 0,
        },
        created_ms: drover_service::clock::unix_ms(),
        tus: Some(TusMeta {
            metadata,
            deferred_length: length == Length::Deferred,
            partial,
        }),
    }
}

/// Whether a request has a body (a non-zero `Content-Length`, or chunked).
fn has_body(headers: &HeaderMap) -> bool {
    match headers.get(CONTENT_LENGTH) {
        Some(length) => {
            length
                .to_str()
                .ok()
                .and_then(|length| length.trim().parse::<u64>().ok())
                != Some(0)
        }
        None => headers.contains_key(hyper::header::TRANSFER_ENCODING),
    }
}

/// `Content-Type: application/offset+octet-stream`.
fn is_offset_octet_stream(headers: &HeaderMap) -> bool {
    text(headers, CONTENT_TYPE.as_str())
        .and_then(|value| value.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case(tus::OFFSET_OCTET_STREAM))
}

/// Whether `method` is one the uploads collection or an upload answers.
pub fn allowed(method: &Method, on_upload: bool) -> bool {
    if on_upload {
        matches!(*method, Method::HEAD | Method::PATCH | Method::DELETE | Method::OPTIONS)
    } else {
        matches!(*method, Method::POST | Method::OPTIONS)
    }
}
