//! NDJSON event batches (docs/HTTP.md §Event batches): a streaming parser
//! and validator fed a request body in chunks of any size.
//!
//! Each line is one event, exactly this object (keys in any order):
//!
//! ```text
//! {"event_id": u64, "time_ms": u64, "kind": u16, "body": "<UTF-8 text>"}
//! {"event_id": u64, "time_ms": u64, "kind": u16, "body_b64": "<standard base64>"}
//! ```
//!
//! A [`BatchParser`] splits the chunks into lines (a line may span chunks;
//! only the part of one line is ever held, at most
//! [`BatchLimits::max_line_len`] bytes), validates each line, and keeps a
//! [`Record`] for each valid line and a [`LineError`] (1-based line number,
//! stable [`Reason`] code) for each invalid one. [`BatchParser::finish`]
//! hands over the [`Batch`].
//!
//! Bodies are not copied when they need no decoding: a text body without
//! escapes is a [`Bytes`] slice of the chunk it arrived in. Escaped text and
//! base64 are decoded into an arena of blocks that the records' bodies share.

mod scan;

use std::fmt;

use bytes::{Bytes, BytesMut};
use cwp::{CommandResult, DEFAULT_MAX_PAYLOAD, Event, TAG_LEN};

use scan::{ScannedBody, scan_line};

/// Bytes of an `EVENT` frame's payload before its body: `event_id` (8),
/// `time_ms` (8) and `kind` (2) (CWP/1 §3 Events).
pub const EVENT_FIELDS_LEN: usize = 18;

/// The default longest line, LF excluded: 256 KiB, room for the largest
/// body as base64 (87,348 characters) or as text with every byte escaped
/// by two characters. A body needing more escaping than that is sent as
/// `body_b64`.
pub const DEFAULT_MAX_LINE_LEN: usize = 256 * 1024;

/// How many line errors a [`Batch`] keeps (the first ones); all are counted.
pub const DEFAULT_MAX_ERRORS_KEPT: usize = 100;

/// Size of the arena's first block for decoded bodies; each next block is
/// twice the last, up to [`ARENA_BLOCK_MAX`] (a larger body gets a block of
/// its own size). Small batches stay small; large ones waste at most the
/// tail of each 64 KiB block.
const ARENA_BLOCK_MIN: usize = 1024;
/// The largest arena block (but for a body larger than that).
const ARENA_BLOCK_MAX: usize = 64 * 1024;

/// What a batch may hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchLimits {
    /// The CWP/1 `max_payload` the events must fit into once they travel as
    /// `EVENT` frames: a body is at most [`BatchLimits::max_body_len`].
    pub max_payload: u32,
    /// The longest line accepted, in bytes, its LF not counted; a longer
    /// line is [`Reason::LineTooLong`] and is never held whole.
    pub max_line_len: usize,
    /// How many [`LineError`]s to keep (the first ones).
    pub max_errors_kept: usize,
}

impl Default for BatchLimits {
    /// `max_payload` 65,536 (so bodies up to 65,510 bytes), lines up to
    /// 256 KiB, the first 100 errors kept.
    fn default() -> Self {
        Self {
            max_payload: DEFAULT_MAX_PAYLOAD,
            max_line_len: DEFAULT_MAX_LINE_LEN,
            max_errors_kept: DEFAULT_MAX_ERRORS_KEPT,
        }
    }
}

impl BatchLimits {
    /// The largest body of an `EVENT` whose sealed frame fits in
    /// `max_payload`: `max_payload - 18 - 8` (fields and tag), 65,510 by
    /// default.
    pub fn max_body_len(&self) -> usize {
        (self.max_payload as usize).saturating_sub(EVENT_FIELDS_LEN + TAG_LEN)
    }
}

/// A field of a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Field {
    /// `event_id`: u64, strictly increasing within a batch, starting above 0.
    EventId,
    /// `time_ms`: u64, the device's clock, Unix ms.
    TimeMs,
    /// `kind`: u16; 65535 is a command result.
    Kind,
    /// `body`: UTF-8 text (in [`Reason::MissingField`]: neither `body` nor `body_b64`).
    Body,
    /// `body_b64`: bytes as standard, padded base64.
    BodyB64,
}

impl Field {
    /// The field's key.
    pub fn name(self) -> &'static str {
        match self {
            Self::EventId => "event_id",
            Self::TimeMs => "time_ms",
            Self::Kind => "kind",
            Self::Body => "body",
            Self::BodyB64 => "body_b64",
        }
    }

    fn named(key: &[u8]) -> Option<Self> {
        Some(match key {
            b"event_id" => Self::EventId,
            b"time_ms" => Self::TimeMs,
            b"kind" => Self::Kind,
            b"body" => Self::Body,
            b"body_b64" => Self::BodyB64,
            _ => return None,
        })
    }

    /// The field's bit in the scanner's set of fields seen.
    fn bit(self) -> u8 {
        1 << self as u8
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a line is invalid. [`Reason::code`] is the stable name clients see.
///
/// A line is judged in this order, and the first problem is its reason:
/// length, UTF-8, then the JSON left to right (syntax, unknown and duplicate
/// keys, each value's type and range, escapes), then missing fields, then
/// the body's length, then the event id's order, then a command result's
/// body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// `line_too_long`: longer than [`BatchLimits::max_line_len`].
    LineTooLong,
    /// `invalid_utf8`: the line is not UTF-8.
    InvalidUtf8,
    /// `invalid_json`: not JSON (or more than one value on the line).
    InvalidJson,
    /// `not_an_object`: a line that is neither blank nor a JSON object.
    NotAnObject,
    /// `unknown_field`: a key other than the five fields.
    UnknownField,
    /// `duplicate_field`: a key given twice.
    DuplicateField(Field),
    /// `missing_field`: a field not given ([`Field::Body`]: no body at all).
    MissingField(Field),
    /// `body_and_body_b64`: both bodies given; exactly one is allowed.
    BothBodies,
    /// `wrong_type`: a string, object, array, `true`, `false` or `null` where
    /// a number belongs, or anything but a string where a body belongs.
    WrongType(Field),
    /// `negative_number`: a number with a minus sign.
    NegativeNumber(Field),
    /// `not_an_integer`: a number with a fraction or an exponent (`1.0` and
    /// `1e3` included).
    NotAnInteger(Field),
    /// `out_of_range`: above 18446744073709551615 (u64), or 65535 for `kind`.
    OutOfRange(Field),
    /// `lone_surrogate`: a `\u` escape of half a surrogate pair, which no
    /// UTF-8 text can hold.
    LoneSurrogate,
    /// `nul_in_body`: `\u0000` in a text body; binary data goes in `body_b64`.
    NulInBody,
    /// `invalid_base64`: `body_b64` is not standard, padded base64.
    InvalidBase64,
    /// `body_too_long`: the decoded body is longer than
    /// [`BatchLimits::max_body_len`].
    BodyTooLong,
    /// `bad_command_result`: a kind 65535 body shorter than a command id and
    /// a status (17 bytes; CWP/1 §3 Commands).
    BadCommandResult,
    /// `out_of_order`: an event id not above the previous valid line's (the
    /// first must be above 0), as on a CWP/1 connection.
    OutOfOrder,
}

impl Reason {
    /// The stable reason code.
    pub fn code(self) -> &'static str {
        match self {
            Self::LineTooLong => "line_too_long",
            Self::InvalidUtf8 => "invalid_utf8",
            Self::InvalidJson => "invalid_json",
            Self::NotAnObject => "not_an_object",
            Self::UnknownField => "unknown_field",
            Self::DuplicateField(_) => "duplicate_field",
            Self::MissingField(_) => "missing_field",
            Self::BothBodies => "body_and_body_b64",
            Self::WrongType(_) => "wrong_type",
            Self::NegativeNumber(_) => "negative_number",
            Self::NotAnInteger(_) => "not_an_integer",
            Self::OutOfRange(_) => "out_of_range",
            Self::LoneSurrogate => "lone_surrogate",
            Self::NulInBody => "nul_in_body",
            Self::InvalidBase64 => "invalid_base64",
            Self::BodyTooLong => "body_too_long",
            Self::BadCommandResult => "bad_command_result",
            Self::OutOfOrder => "out_of_order",
        }
    }

    /// The field the reason is about, when it is about one.
    pub fn field(self) -> Option<Field> {
        match self {
            Self::DuplicateField(field)
            | Self::MissingField(field)
            | Self::WrongType(field)
            | Self::NegativeNumber(field)
            | Self::NotAnInteger(field)
            | Self::OutOfRange(field) => Some(field),
            _ => None,
        }
    }
}

/// `code` or `code (field)`.
impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.field() {
            Some(field) => write!(f, "{} ({field})", self.code()),
            None => f.write_str(self.code()),
        }
    }
}

/// One invalid line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct LineError {
    /// The line's number, from 1, counting blank lines.
    pub line: u64,
    /// Why it is invalid.
    pub reason: Reason,
}

/// One valid line: an event as an `EVENT` frame would carry it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The line's number, from 1, counting blank lines.
    pub line: u64,
    /// Above every earlier record's in the batch.
    pub event_id: u64,
    /// The device's clock, Unix ms.
    pub time_ms: u64,
    /// 65535 for a command result.
    pub kind: u16,
    /// The body's bytes (text as UTF-8, base64 decoded): a slice of the
    /// input when it needed no decoding, otherwise of the batch's arena.
    pub body: Bytes,
}

impl Record {
    /// The event, ready for the CWP/1 pipeline.
    pub fn to_event(&self) -> Event {
        Event {
            event_id: self.event_id,
            time_ms: self.time_ms,
            kind: self.kind,
            body: self.body.clone(),
        }
    }
}

/// Counts over a whole batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchStats {
    /// Bytes fed.
    pub bytes: u64,
    /// Lines seen: records, errors and blank lines. A final line without LF
    /// counts; the nothing after a final LF does not.
    pub lines: u64,
    /// Lines that are empty or only spaces, tabs and CRs: skipped, neither
    /// valid nor invalid, but numbered.
    pub blank: u64,
    /// Valid lines (records).
    pub valid: u64,
    /// Invalid lines (all of them, kept or not).
    pub invalid: u64,
}

impl BatchStats {
    /// Lines that were events, valid or not: `valid + invalid`.
    pub fn total(&self) -> u64 {
        self.valid + self.invalid
    }
}

/// The memory a [`Batch`] holds on the heap, counted as it was built.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Footprint {
    /// Chunks (and lines assembled across chunks) that record bodies are
    /// slices of, each counted once at its full length.
    pub input: u64,
    /// Arena blocks allocated for decoded bodies.
    pub arena: u64,
    /// The records' vector (its capacity).
    pub records: u64,
    /// The kept errors' vector (its capacity).
    pub errors: u64,
}

impl Footprint {
    /// Everything the batch holds.
    pub fn total(&self) -> u64 {
        self.input + self.arena + self.records + self.errors
    }
}

/// A parsed batch.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    /// The valid lines, in order.
    pub records: Vec<Record>,
    /// The first [`BatchLimits::max_errors_kept`] invalid lines, in order.
    pub errors: Vec<LineError>,
    /// Counts over all lines.
    pub stats: BatchStats,
    /// What the batch holds in memory.
    pub footprint: Footprint,
}

/// Parses a whole body held in one buffer.
pub fn parse(body: Bytes, limits: &BatchLimits) -> Batch {
    let mut parser = BatchParser::new(limits.clone());
    parser.feed(body);
    parser.finish()
}

/// Where decoded bodies are written: one block at a time, each body split
/// off it as a [`Bytes`] that shares the block.
#[derive(Debug)]
struct Arena {
    /// Holds the body being decoded (and nothing else between lines); its
    /// spare capacity is the rest of the current block.
    bytes: BytesMut,
    /// The size of the next block.
    next_block: usize,
    /// Bytes of all blocks allocated.
    allocated: u64,
}

impl Default for Arena {
    fn default() -> Self {
        Self {
            bytes: BytesMut::new(),
            next_block: ARENA_BLOCK_MIN,
            allocated: 0,
        }
    }
}

impl Arena {
    /// Makes room for `len` more bytes. `BytesMut` is never left to grow by
    /// itself: a full block is left to the bodies already split from it and
    /// a new one begins.
    fn make_room(&mut self, len: usize) {
        if self.bytes.capacity() - self.bytes.len() < len {
            debug_assert!(self.bytes.is_empty(), "room is made before a body's first byte");
            self.bytes = BytesMut::with_capacity(len.max(self.next_block));
            self.next_block = (self.next_block * 2).min(ARENA_BLOCK_MAX);
            self.allocated += self.bytes.capacity() as u64;
        }
    }

    /// The decoded body, split off the block.
    fn take(&mut self) -> Bytes {
        self.bytes.split().freeze()
    }
}

/// The streaming parser of one request body.
#[derive(Debug)]
pub struct BatchParser {
    limits: BatchLimits,
    max_body_len: usize,
    /// The number of the line being read, from 1.
    line: u64,
    /// The start of the line being read, carried over from earlier chunks;
    /// never more than `max_line_len` bytes.
    partial: BytesMut,
    /// The line being read is too long (its error is recorded): its bytes
    /// are dropped up to the next LF.
    skipping: bool,
    /// The last valid record's event id (0 before the first).
    last_event_id: u64,
    arena: Arena,
    /// Working space for escaped keys and escaped base64.
    scratch: Vec<u8>,
    batch: Batch,
}

impl BatchParser {
    /// A parser for one body.
    pub fn new(limits: BatchLimits) -> Self {
        Self {
            max_body_len: limits.max_body_len(),
            limits,
            line: 1,
            partial: BytesMut::new(),
            skipping: false,
            last_event_id: 0,
            arena: Arena::default(),
            scratch: Vec::new(),
            batch: Batch::default(),
        }
    }

    /// Bytes held of a line not yet ended, at most
    /// [`BatchLimits::max_line_len`].
    pub fn buffered(&self) -> usize {
        self.partial.len()
    }

    /// Feeds the next chunk of the body.
    pub fn feed(&mut self, chunk: Bytes) {
        self.batch.stats.bytes += chunk.len() as u64;
        // Whether a record's body is a slice of `chunk`, which it keeps alive.
        let mut chunk_held = false;
        let mut start = 0;
        while start < chunk.len() {
            let Some(offset) = memchr::memchr(b'\n', &chunk[start..]) else {
                self.hold(&chunk[start..]);
                break;
            };
            let end = start + offset;
            if self.skipping {
                self.skipping = false;
            } else if !self.partial.is_empty() {
                if self.partial.len() + (end - start) > self.limits.max_line_len {
                    self.partial.clear();
                    self.too_long();
                } else {
                    self.partial.extend_from_slice(&chunk[start..end]);
                    let line = self.partial.split().freeze();
                    if self.line_ended(&line, 0, line.len()) {
                        self.batch.footprint.input += line.len() as u64;
                    }
                }
            } else if end - start > self.limits.max_line_len {
                self.too_long();
            } else {
                chunk_held |= self.line_ended(&chunk, start, end);
            }
            self.line += 1;
            start = end + 1;
        }
        if chunk_held {
            self.batch.footprint.input += chunk.len() as u64;
        }
    }

    /// Ends the body: a last line without LF is judged, and the batch is
    /// handed over.
    pub fn finish(mut self) -> Batch {
        if !self.skipping && !self.partial.is_empty() {
            let line = self.partial.split().freeze();
            if self.line_ended(&line, 0, line.len()) {
                self.batch.footprint.input += line.len() as u64;
            }
        }
        let mut batch = self.batch;
        // Up to half the vector's capacity is unused after its last doubling.
        batch.records.shrink_to_fit();
        batch.footprint.arena = self.arena.allocated;
        batch.footprint.records = (batch.records.capacity() * size_of::<Record>()) as u64;
        batch.footprint.errors = (batch.errors.capacity() * size_of::<LineError>()) as u64;
        batch
    }

    /// Keeps the start of a line that goes on in the next chunk, or finds it
    /// too long.
    fn hold(&mut self, part: &[u8]) {
        if self.skipping {
            return;
        }
        if self.partial.len() + part.len() > self.limits.max_line_len {
            self.partial = BytesMut::new();
            self.skipping = true;
            self.too_long();
        } else {
            self.partial.extend_from_slice(part);
        }
    }

    fn too_long(&mut self) {
        self.batch.stats.lines += 1;
        self.reject(Reason::LineTooLong);
    }

    fn reject(&mut self, reason: Reason) {
        self.batch.stats.invalid += 1;
        if self.batch.errors.len() < self.limits.max_errors_kept {
            self.batch.errors.push(LineError {
                line: self.line,
                reason,
            });
        }
    }

    /// Judges the line `owner[start..end]` (LF excluded, length already
    /// checked). Returns whether the record kept holds a slice of `owner`.
    fn line_ended(&mut self, owner: &Bytes, start: usize, end: usize) -> bool {
        self.batch.stats.lines += 1;
        let text = &owner[start..end];
        if text.iter().all(|b| matches!(b, b' ' | b'\t' | b'\r')) {
            self.batch.stats.blank += 1;
            return false;
        }
        match self.record(owner, start, end) {
            Ok((record, holds_owner)) => {
                self.last_event_id = record.event_id;
                self.batch.stats.valid += 1;
                self.batch.records.push(record);
                holds_owner
            }
            Err(reason) => {
                self.reject(reason);
                false
            }
        }
    }

    /// The record the line is, and whether its body is a slice of `owner`.
    fn record(&mut self, owner: &Bytes, start: usize, end: usize) -> Result<(Record, bool), Reason> {
        let text = &owner[start..end];
        if std::str::from_utf8(text).is_err() {
            return Err(Reason::InvalidUtf8);
        }
        self.arena.bytes.clear();
        let scanned = scan_line(text, &mut self.arena, &mut self.scratch)?;
        let body_len = match scanned.body {
            ScannedBody::Line { start, end } => end - start,
            ScannedBody::Arena => self.arena.bytes.len(),
        };
        if body_len > self.max_body_len {
            return Err(Reason::BodyTooLong);
        }
        if scanned.event_id <= self.last_event_id {
            return Err(Reason::OutOfOrder);
        }
        let (body, holds_owner) = match scanned.body {
            // An empty slice holds nothing (`Bytes::slice` returns an empty `Bytes`).
            ScannedBody::Line { start: from, end: to } => (owner.slice(start + from..start + to), to > from),
            ScannedBody::Arena => (self.arena.take(), false),
        };
        // CWP/1 §3 Commands: judged by cwp's own decoder of the body.
        if scanned.kind == Event::COMMAND_RESULT_KIND && CommandResult::decode(body.clone()).is_err() {
            return Err(Reason::BadCommandResult);
        }
        let record = Record {
            line: self.line,
            event_id: scanned.event_id,
            time_ms: scanned.time_ms,
            kind: scanned.kind,
            body,
        };
        Ok((record, holds_owner))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_is_64_bytes_besides_its_body() {
        // docs/HTTP.md §Memory gives this figure.
        assert_eq!(size_of::<Record>(), 64);
    }

    #[test]
    fn the_body_limit_is_what_fits_a_sealed_event_frame() {
        use cwp::{DeviceCodec, DeviceFrame, Frame, ServerCodec, SessionKey};

        let mut fields = BytesMut::new();
        let empty = DeviceFrame::Event(Event {
            event_id: 1,
            time_ms: 2,
            kind: 3,
            body: Bytes::new(),
        });
        empty.encode_body(&mut fields);
        assert_eq!(fields.len(), EVENT_FIELDS_LEN);

        let limits = BatchLimits::default();
        assert_eq!(limits.max_body_len(), 65_510);
        let key = SessionKey::from_bytes([1; 32]);
        for (len, fits) in [(limits.max_body_len(), true), (limits.max_body_len() + 1, false)] {
            let mut device = DeviceCodec::new();
            device.start_sealing(&key);
            let mut server = ServerCodec::new();
            server.start_sealing(&key);
            let mut wire = BytesMut::new();
            let event = Event {
                event_id: 1,
                time_ms: 2,
                kind: 3,
                body: Bytes::from(vec![b'x'; len]),
            };
            device.encode(&DeviceFrame::Event(event), &mut wire);
            assert_eq!(server.decode(&mut wire).is_ok(), fits, "a {len}-byte body");
        }
    }
}
