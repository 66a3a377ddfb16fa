//! A request body as it streams in (docs/HTTP.md, "The gateway"): each
//! chunk is counted against `HTTP_MAX_BODY_BYTES` and the in-flight budget,
//! hashed as sent ([`BodyDigest`]), un-gzipped with a bounded expansion
//! ratio, and handed to the [`BatchParser`]; at the end the digest is
//! verified, so that nothing of a body that does not match its signature is
//! ever stored.
//!
//! Memory: the parser keeps what it parsed (at most about 3 times the
//! decoded bytes, docs/HTTP.md "Memory"); the budget
//! ([`InflightBudget`]) counts the decoded bytes of every body held, until
//! the request's events are durable or refused.

use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use drover_http_ingest::{Batch, BatchLimits, BatchParser, BodyDigest, BodySha256};
use flate2::write::GzDecoder;
use http_body_util::BodyExt as _;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::answer::Refusal;

/// The most a gzip body may expand: decoded bytes at most this many times
/// the compressed bytes received so far, plus [`GZIP_RATIO_SLACK`]. NDJSON
/// of sensor readings compresses 5 to 15 times; a gzip bomb, 1,000 times.
pub const MAX_GZIP_RATIO: usize = 50;

/// What a tiny gzip body may decode to whatever its ratio (a few hundred
/// bytes of compressed JSON may legitimately expand more than 50 times).
const GZIP_RATIO_SLACK: usize = 64 * 1024;

/// Bytes of request bodies held by the gateway at once
/// (`HTTP_MAX_INFLIGHT_BYTES`), shared by every request.
#[derive(Debug, Clone)]
pub struct InflightBudget {
    bytes: Arc<Semaphore>,
    max: usize,
}

impl InflightBudget {
    /// A budget of `max` bytes.
    pub fn new(max: usize) -> Self {
        let max = max.min(Semaphore::MAX_PERMITS);
        Self {
            bytes: Arc::new(Semaphore::new(max)),
            max,
        }
    }

    /// Bytes held now.
    pub fn held(&self) -> usize {
        self.max - self.bytes.available_permits()
    }
}

/// A request's share of the [`InflightBudget`]: given back when dropped.
#[derive(Debug, Default)]
pub struct Reservation {
    permit: Option<OwnedSemaphorePermit>,
}

impl Reservation {
    /// Adds `bytes` to the reservation, or refuses at once when the budget
    /// cannot hold them (a request never waits for another to finish:
    /// waiting requests that each hold part of the budget could wait for
    /// each other for ever).
    fn grow(&mut self, budget: &InflightBudget, bytes: usize) -> Result<(), Refusal> {
        if bytes == 0 {
            return Ok(());
        }
        let bytes = u32::try_from(bytes).map_err(|_| Refusal::Busy)?;
        let more = Arc::clone(&budget.bytes)
            .try_acquire_many_owned(bytes)
            .map_err(|_| Refusal::Busy)?;
        match &mut self.permit {
            Some(permit) => permit.merge(more),
            None => self.permit = Some(more),
        }
        Ok(())
    }
}

/// How a body is read.
#[derive(Debug, Clone)]
pub struct BodyLimits {
    /// Largest body, as sent and as decoded.
    pub max_bytes: usize,
    /// Deadline for the whole body.
    pub timeout: Duration,
}

/// A body read whole, verified and parsed.
#[derive(Debug)]
pub struct ReadBody {
    /// The parsed batch.
    pub batch: Batch,
    /// Bytes as sent.
    pub sent_bytes: u64,
    /// Its share of the budget, held until the events are durable.
    pub reservation: Reservation,
}

/// Undoes `Content-Encoding: gzip` chunk by chunk, within the ratio.
struct Gunzip {
    decoder: GzDecoder<Vec<u8>>,
}

impl Gunzip {
    fn new() -> Self {
        Self {
            decoder: GzDecoder::new(Vec::new()),
        }
    }

    /// Decodes `input`, calling `out` with each piece of output (at most
    /// tens of KiB each: the decoder works in steps of its 32 KiB buffer),
    /// so that a bomb is stopped by `out`'s checks long before it fills
    /// memory.
    fn feed(&mut self, mut input: &[u8], mut out: impl FnMut(Bytes) -> Result<(), Refusal>) -> Result<(), Refusal> {
        while !input.is_empty() {
            let consumed = self.decoder.write(input).map_err(|_| Refusal::BadGzip)?;
            let produced = std::mem::take(self.decoder.get_mut());
            if consumed == 0 && produced.is_empty() {
                // Past the end of the gzip member: trailing bytes.
                return Err(Refusal::BadGzip);
            }
            input = &input[consumed..];
            if !produced.is_empty() {
                out(Bytes::from(produced))?;
            }
        }
        Ok(())
    }

    /// Checks that the stream ended (trailer and CRC included).
    fn finish(mut self, out: impl FnOnce(Bytes) -> Result<(), Refusal>) -> Result<(), Refusal> {
        self.decoder.try_finish().map_err(|_| Refusal::BadGzip)?;
        let rest = std::mem::take(self.decoder.get_mut());
        if !rest.is_empty() {
            out(Bytes::from(rest))?;
        }
        Ok(())
    }
}

/// Everything a body's chunks go through.
struct Intake<'a> {
    limits: &'a BodyLimits,
    budget: &'a InflightBudget,
    reservation: Reservation,
    digest: BodyDigest,
    gunzip: Option<Gunzip>,
    parser: BatchParser,
    sent: usize,
    decoded: usize,
}

impl Intake<'_> {
    fn chunk(&mut self, chunk: Bytes) -> Result<(), Refusal> {
        self.sent += chunk.len();
        if self.sent > self.limits.max_bytes {
            return Err(Refusal::BodyTooLarge(self.limits.max_bytes));
        }
        self.digest.update(&chunk);
        match self.gunzip.take() {
            None => self.decoded_piece(chunk),
            Some(mut gunzip) => {
                let result = gunzip.feed(&chunk, |piece| self.decoded_piece(piece));
                self.gunzip = Some(gunzip);
                result
            }
        }
    }

    fn decoded_piece(&mut self, piece: Bytes) -> Result<(), Refusal> {
        self.decoded += piece.len();
        if self.decoded > self.limits.max_bytes {
            return Err(Refusal::BodyTooLarge(self.limits.max_bytes));
        }
        if self.gunzip.is_some() || self.sent < self.decoded {
            let allowed = self
                .sent
                .saturating_mul(MAX_GZIP_RATIO)
                .saturating_add(GZIP_RATIO_SLACK);
            if self.decoded > allowed {
                return Err(Refusal::GzipRatio);
            }
        }
        self.reservation.grow(self.budget, piece.len())?;
        self.parser.feed(piece);
        Ok(())
    }
}

/// Reads `body` to its end within the limits, verifying it against
/// `expected` (the signed `X-Content-SHA256`, if any) and parsing it as
/// an NDJSON event batch.
pub async fn read<B>(
    body: B,
    gzip: bool,
    expected: Option<&BodySha256>,
    limits: &BodyLimits,
    budget: &InflightBudget,
    batch_limits: BatchLimits,
) -> Result<ReadBody, Refusal>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
{
    let mut intake = Intake {
        limits,
        budget,
        reservation: Reservation::default(),
        digest: BodyDigest::new(),
        gunzip: gzip.then(Gunzip::new),
        parser: BatchParser::new(batch_limits),
        sent: 0,
        decoded: 0,
    };
    let deadline = tokio::time::Instant::now() + limits.timeout;
    let mut body = body;
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => return Err(Refusal::BodyTimeout),
            Ok(None) => break,
            Ok(Some(Err(_))) => return Err(Refusal::BodyIncomplete),
            Ok(Some(Ok(frame))) => frame,
        };
        if let Ok(chunk) = frame.into_data() {
            intake.chunk(chunk)?;
        }
    }
    if let Some(gunzip) = intake.gunzip.take() {
        gunzip.finish(|piece| intake.decoded_piece(piece))?;
    }
    let Intake {
        reservation,
        digest,
        parser,
        sent,
        ..
    } = intake;
    if let Some(expected) = expected {
        digest.verify(expected).map_err(|_| Refusal::BodyDigestMismatch)?;
    }
    Ok(ReadBody {
        batch: parser.finish(),
        sent_bytes: sent as u64,
        reservation,
    })
}

/// Reads a body that must be empty (`POST /v1/token`) and checks it
/// against `expected`.
pub async fn read_empty<B>(body: B, expected: Option<&BodySha256>, timeout: Duration) -> Result<(), Refusal>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
{
    let mut body = body;
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => return Err(Refusal::BodyTimeout),
            Ok(None) => break,
            Ok(Some(Err(_))) => return Err(Refusal::BodyIncomplete),
            Ok(Some(Ok(frame))) => {
                if frame.data_ref().is_some_and(|data| !data.is_empty()) {
                    return Err(Refusal::BodyNotAllowed);
                }
            }
        }
    }
    if let Some(expected) = expected {
        BodyDigest::new()
            .verify(expected)
            .map_err(|_| Refusal::BodyDigestMismatch)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::convert::Infallible;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use flate2::Compression;
    use flate2::write::GzEncoder;
    use hyper::body::Frame;

    use super::*;

    const LINES: &[u8] = b"{\"event_id\":1,\"time_ms\":5,\"kind\":1,\"body\":\"a\"}\n{\"event_id\":2,\"time_ms\":5,\"kind\":1,\"body\":\"b\"}\n";

    /// A body arriving in pieces, as a chunked request's does.
    struct Chunks(VecDeque<Bytes>);

    impl hyper::body::Body for Chunks {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            Poll::Ready(self.0.pop_front().map(|chunk| Ok(Frame::data(chunk))))
        }
    }

    fn chunked(data: &[u8], chunk: usize) -> Chunks {
        Chunks(data.chunks(chunk).map(Bytes::copy_from_slice).collect())
    }

    fn limits(max_bytes: usize) -> BodyLimits {
        BodyLimits {
            max_bytes,
            timeout: Duration::from_secs(5),
        }
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    async fn read_all(
        data: &[u8],
        chunk: usize,
        gzip: bool,
        max: usize,
        budget: &InflightBudget,
    ) -> Result<ReadBody, Refusal> {
        let digest = BodySha256::of(data);
        read(
            chunked(data, chunk),
            gzip,
            Some(&digest),
            &limits(max),
            budget,
            BatchLimits::default(),
        )
        .await
    }

    #[tokio::test]
    async fn a_body_is_verified_and_parsed_in_any_chunks_plain_or_gzip() {
        let budget = InflightBudget::new(1 << 20);
        for chunk in [1, 7, 4096] {
            let plain = read_all(LINES, chunk, false, 1 << 20, &budget).await.unwrap();
            assert_eq!(plain.batch.records.len(), 2);
            drop(plain);
            let compressed = gzip(LINES);
            let read = read_all(&compressed, chunk, true, 1 << 20, &budget).await.unwrap();
            assert_eq!(read.batch.records.len(), 2, "gzip in {chunk}-byte chunks");
            assert_eq!(read.sent_bytes, compressed.len() as u64);
            assert_eq!(budget.held(), LINES.len(), "held until the reservation drops");
        }
        assert_eq!(budget.held(), 0);
    }

    #[tokio::test]
    async fn a_body_that_is_not_the_signed_one_is_refused_whole() {
        let budget = InflightBudget::new(1 << 20);
        let other = BodySha256::of(b"something else");
        let refused = read(
            chunked(LINES, 10),
            false,
            Some(&other),
            &limits(1 << 20),
            &budget,
            BatchLimits::default(),
        )
        .await;
        assert_eq!(refused.unwrap_err(), Refusal::BodyDigestMismatch);
        assert_eq!(budget.held(), 0);
    }

    #[tokio::test]
    async fn limits_hold_as_sent_and_as_decoded() {
        let budget = InflightBudget::new(1 << 30);
        // As sent.
        let refused = read_all(LINES, 10, false, LINES.len() - 1, &budget).await;
        assert_eq!(refused.unwrap_err(), Refusal::BodyTooLarge(LINES.len() - 1));
        // Control: exactly the limit passes.
        assert!(read_all(LINES, 10, false, LINES.len(), &budget).await.is_ok());
        // A gzip bomb: 64 MiB of zeros is about 64 KiB compressed; it is
        // refused for its ratio after a few hundred KiB decoded.
        let bomb = gzip(&vec![b' '; 64 << 20]);
        assert!(bomb.len() < 128 * 1024, "{}", bomb.len());
        let refused = read_all(&bomb, 16 * 1024, true, 1 << 30, &budget).await;
        assert_eq!(refused.unwrap_err(), Refusal::GzipRatio);
        // Decoded beyond the body limit, within the ratio.
        let refused = read_all(&gzip(&LINES.repeat(100)), 1024, true, LINES.len() * 50, &budget).await;
        assert_eq!(refused.unwrap_err(), Refusal::BodyTooLarge(LINES.len() * 50));
        assert_eq!(budget.held(), 0);
    }

    #[tokio::test]
    async fn corrupt_or_truncated_gzip_is_refused() {
        let budget = InflightBudget::new(1 << 20);
        let compressed = gzip(LINES);
        let truncated = &compressed[..compressed.len() - 6];
        assert_eq!(
            read_all(truncated, 8, true, 1 << 20, &budget).await.unwrap_err(),
            Refusal::BadGzip
        );
        assert_eq!(
            read_all(LINES, 8, true, 1 << 20, &budget).await.unwrap_err(),
            Refusal::BadGzip
        );
        let mut trailing = compressed.clone();
        trailing.extend_from_slice(b"junk");
        assert_eq!(
            read_all(&trailing, 8, true, 1 << 20, &budget).await.unwrap_err(),
            Refusal::BadGzip
        );
    }

    #[tokio::test]
    async fn the_budget_refuses_what_it_cannot_hold_without_waiting() {
        let budget = InflightBudget::new(LINES.len() + 10);
        let held = read_all(LINES, 16, false, 1 << 20, &budget).await.unwrap();
        assert_eq!(
            read_all(LINES, 16, false, 1 << 20, &budget).await.unwrap_err(),
            Refusal::Busy
        );
        drop(held);
        assert!(read_all(LINES, 16, false, 1 << 20, &budget).await.is_ok());
    }
}
