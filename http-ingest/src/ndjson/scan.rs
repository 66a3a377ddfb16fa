//! One line of a batch, scanned left to right without recursion: the JSON
//! object of docs/HTTP.md §Event batches and nothing else.
//!
//! The scanner knows the one shape a valid line has, so it never builds a
//! tree and never descends into a nested value: an object, array or string
//! where a number belongs is [`Reason::WrongType`] as soon as its first byte
//! is seen, an unknown key is [`Reason::UnknownField`] before its value is
//! looked at. Depth costs nothing, and the first problem found is the
//! line's reason.
//!
//! Text bodies without escapes are left in the input (the caller slices
//! them); escaped text and base64 are decoded into the caller's arena.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::BufMut;

use super::{Arena, Field, Reason};

/// Where a scanned line's body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ScannedBody {
    /// Verbatim in the line, bytes `start..end`: a text body without escapes.
    Line { start: usize, end: usize },
    /// Decoded: the whole content of the arena.
    Arena,
}

/// A line whose fields are all present, well typed and decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Scanned {
    pub(super) event_id: u64,
    pub(super) time_ms: u64,
    pub(super) kind: u16,
    pub(super) body: ScannedBody,
}

/// Bytes that end the plain run of a JSON string: the quote, the backslash,
/// and the control characters a string may not hold raw (RFC 8259 §7).
static STRING_STOP: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = true;
        b += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table
};

/// Whether the arena's content may hold U+0000 (a text body may not).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Nul {
    Allowed,
    Refused,
}

/// Scans `line` (already known to be UTF-8 and not blank). `arena` must be
/// empty; on success with [`ScannedBody::Arena`] it holds the body, otherwise
/// its content is meaningless. `scratch` is working space for escaped keys
/// and escaped base64.
pub(super) fn scan_line(line: &[u8], arena: &mut Arena, scratch: &mut Vec<u8>) -> Result<Scanned, Reason> {
    debug_assert!(arena.bytes.is_empty(), "the arena holds one line's body at a time");
    let mut cursor = Cursor { line, at: 0 };
    cursor.skip_whitespace();
    if cursor.peek() != Some(b'{') {
        return Err(Reason::NotAnObject);
    }
    cursor.at += 1;

    let mut seen = 0u8;
    let (mut event_id, mut time_ms, mut kind, mut body) = (0, 0, 0, ScannedBody::Arena);
    cursor.skip_whitespace();
    if cursor.peek() == Some(b'}') {
        cursor.at += 1;
    } else {
        loop {
            if cursor.peek() != Some(b'"') {
                return Err(Reason::InvalidJson);
            }
            cursor.at += 1;
            let field = cursor.key(scratch)?.ok_or(Reason::UnknownField)?;
            cursor.skip_whitespace();
            if cursor.peek() != Some(b':') {
                return Err(Reason::InvalidJson);
            }
            cursor.at += 1;
            cursor.skip_whitespace();

            if seen & field.bit() != 0 {
                return Err(Reason::DuplicateField(field));
            }
            if matches!(field, Field::Body | Field::BodyB64) && seen & (Field::Body.bit() | Field::BodyB64.bit()) != 0 {
                return Err(Reason::BothBodies);
            }
            seen |= field.bit();
            match field {
                Field::EventId => event_id = cursor.integer(field)?,
                Field::TimeMs => time_ms = cursor.integer(field)?,
                Field::Kind => kind = u16::try_from(cursor.integer(field)?).map_err(|_| Reason::OutOfRange(field))?,
                Field::Body => body = cursor.text_body(arena)?,
                Field::BodyB64 => {
                    cursor.base64_body(arena, scratch)?;
                    body = ScannedBody::Arena;
                }
            }

            cursor.skip_whitespace();
            match cursor.peek() {
                Some(b',') => {
                    cursor.at += 1;
                    cursor.skip_whitespace();
                }
                Some(b'}') => {
                    cursor.at += 1;
                    break;
                }
                _ => return Err(Reason::InvalidJson),
            }
        }
    }
    cursor.skip_whitespace();
    if cursor.at != line.len() {
        return Err(Reason::InvalidJson);
    }

    for field in [Field::EventId, Field::TimeMs, Field::Kind] {
        if seen & field.bit() == 0 {
            return Err(Reason::MissingField(field));
        }
    }
    if seen & (Field::Body.bit() | Field::BodyB64.bit()) == 0 {
        return Err(Reason::MissingField(Field::Body));
    }
    Ok(Scanned {
        event_id,
        time_ms,
        kind,
        body,
    })
}

/// A position in one line.
struct Cursor<'a> {
    line: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.line.get(self.at).copied()
    }

    /// RFC 8259 §2 whitespace (LF cannot occur inside a line).
    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\r' | b'\n') = self.peek() {
            self.at += 1;
        }
    }

    /// Advances over bytes that stand for themselves in a string.
    fn skip_plain(&mut self) {
        while self.at < self.line.len() && !STRING_STOP[usize::from(self.line[self.at])] {
            self.at += 1;
        }
    }

    /// A key, from just after its opening quote to just after its closing
    /// one: the field it names, `None` for any other name.
    fn key(&mut self, scratch: &mut Vec<u8>) -> Result<Option<Field>, Reason> {
        let start = self.at;
        self.skip_plain();
        if self.peek() == Some(b'"') {
            self.at += 1;
            return Ok(Field::named(&self.line[start..self.at - 1]));
        }
        // Escapes in a key: decode it, as any JSON reader would.
        scratch.clear();
        scratch.extend_from_slice(&self.line[start..self.at]);
        self.rest_of_string(scratch, Nul::Allowed)?;
        Ok(Field::named(scratch))
    }

    /// A `body` value: a string, decoded into `arena` only if it has escapes.
    fn text_body(&mut self, arena: &mut Arena) -> Result<ScannedBody, Reason> {
        if self.peek() != Some(b'"') {
            return Err(self.not_a_string(Field::Body));
        }
        self.at += 1;
        let start = self.at;
        self.skip_plain();
        if self.peek() == Some(b'"') {
            self.at += 1;
            return Ok(ScannedBody::Line {
                start,
                end: self.at - 1,
            });
        }
        // Decoded text is never longer than its encoding, which ends within the line.
        arena.make_room(self.line.len() - start);
        arena.bytes.put_slice(&self.line[start..self.at]);
        self.rest_of_string(&mut arena.bytes, Nul::Refused)?;
        Ok(ScannedBody::Arena)
    }

    /// A `body_b64` value: a string of standard, padded base64 (escapes such
    /// as `\/` allowed, as some JSON writers put them), decoded into `arena`.
    fn base64_body(&mut self, arena: &mut Arena, scratch: &mut Vec<u8>) -> Result<(), Reason> {
        if self.peek() != Some(b'"') {
            return Err(self.not_a_string(Field::BodyB64));
        }
        self.at += 1;
        let start = self.at;
        self.skip_plain();
        let encoded: &[u8] = if self.peek() == Some(b'"') {
            self.at += 1;
            &self.line[start..self.at - 1]
        } else {
            scratch.clear();
            scratch.extend_from_slice(&self.line[start..self.at]);
            self.rest_of_string(scratch, Nul::Allowed)?;
            scratch
        };
        let most = base64::decoded_len_estimate(encoded.len());
        arena.make_room(most);
        arena.bytes.resize(most, 0);
        let decoded = STANDARD
            .decode_slice(encoded, &mut arena.bytes[..])
            .map_err(|_| Reason::InvalidBase64)?;
        arena.bytes.truncate(decoded);
        Ok(())
    }

    /// Why a value that should be a string is not one: a value of another
    /// type, or not JSON at all.
    fn not_a_string(&self, field: Field) -> Reason {
        match self.peek() {
            Some(b'-' | b'0'..=b'9' | b'{' | b'[') => Reason::WrongType(field),
            _ if self.at_literal() => Reason::WrongType(field),
            _ => Reason::InvalidJson,
        }
    }

    fn at_literal(&self) -> bool {
        let rest = &self.line[self.at..];
        rest.starts_with(b"true") || rest.starts_with(b"false") || rest.starts_with(b"null")
    }

    /// An unsigned integer value. The whole number is read first (RFC 8259
    /// §6 grammar), then judged: negative, then fraction or exponent, then
    /// range.
    fn integer(&mut self, field: Field) -> Result<u64, Reason> {
        match self.peek() {
            Some(b'-' | b'0'..=b'9') => {}
            Some(b'"' | b'{' | b'[') => return Err(Reason::WrongType(field)),
            _ if self.at_literal() => return Err(Reason::WrongType(field)),
            _ => return Err(Reason::InvalidJson),
        }
        let negative = self.peek() == Some(b'-');
        if negative {
            self.at += 1;
        }
        let digits_start = self.at;
        match self.peek() {
            Some(b'0') => self.at += 1,
            Some(b'1'..=b'9') => self.skip_digits(),
            _ => return Err(Reason::InvalidJson),
        }
        let digits = &self.line[digits_start..self.at];
        let mut fractional = false;
        if self.peek() == Some(b'.') {
            self.at += 1;
            self.one_or_more_digits()?;
            fractional = true;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.at += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.at += 1;
            }
            self.one_or_more_digits()?;
            fractional = true;
        }
        if negative {
            return Err(Reason::NegativeNumber(field));
        }
        if fractional {
            return Err(Reason::NotAnInteger(field));
        }
        digits
            .iter()
            .try_fold(0u64, |value, &digit| {
                value.checked_mul(10)?.checked_add(u64::from(digit - b'0'))
            })
            .ok_or(Reason::OutOfRange(field))
    }

    fn skip_digits(&mut self) {
        while let Some(b'0'..=b'9') = self.peek() {
            self.at += 1;
        }
    }

    fn one_or_more_digits(&mut self) -> Result<(), Reason> {
        let start = self.at;
        self.skip_digits();
        if self.at == start {
            Err(Reason::InvalidJson)
        } else {
            Ok(())
        }
    }

    /// Decodes the rest of a string into `out`, from a plain run's end (a
    /// backslash, the closing quote, or a byte a string may not hold) to just
    /// after the closing quote.
    fn rest_of_string(&mut self, out: &mut impl BufMut, nul: Nul) -> Result<(), Reason> {
        loop {
            match self.peek() {
                Some(b'"') => {
                    self.at += 1;
                    return Ok(());
                }
                Some(b'\\') => {
                    self.at += 1;
                    self.escape(out, nul)?;
                }
                // A raw control character, or the line ended inside the string.
                _ => return Err(Reason::InvalidJson),
            }
            let run = self.at;
            self.skip_plain();
            out.put_slice(&self.line[run..self.at]);
        }
    }

    /// One escape, from just after its backslash.
    fn escape(&mut self, out: &mut impl BufMut, nul: Nul) -> Result<(), Reason> {
        let Some(letter) = self.peek() else {
            return Err(Reason::InvalidJson);
        };
        self.at += 1;
        let byte = match letter {
            b'"' => b'"',
            b'\\' => b'\\',
            b'/' => b'/',
            b'b' => 0x08,
            b'f' => 0x0c,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'u' => return self.unicode_escape(out, nul),
            _ => return Err(Reason::InvalidJson),
        };
        out.put_u8(byte);
        Ok(())
    }

    /// `\uXXXX`, from just after the `u`; a high surrogate must be followed
    /// at once by `\u` and a low one (RFC 8259 §7), anything else is a lone
    /// surrogate, which no UTF-8 text can hold.
    fn unicode_escape(&mut self, out: &mut impl BufMut, nul: Nul) -> Result<(), Reason> {
        let unit = self.hex4()?;
        let code_point = match unit {
            0xD800..=0xDBFF => {
                if !self.line[self.at..].starts_with(b"\\u") {
                    return Err(Reason::LoneSurrogate);
                }
                self.at += 2;
                let low = self.hex4()?;
                if !(0xDC00..=0xDFFF).contains(&low) {
                    return Err(Reason::LoneSurrogate);
                }
                0x10000 + ((u32::from(unit) - 0xD800) << 10) + (u32::from(low) - 0xDC00)
            }
            0xDC00..=0xDFFF => return Err(Reason::LoneSurrogate),
            0 if nul == Nul::Refused => return Err(Reason::NulInBody),
            _ => u32::from(unit),
        };
        let c = char::from_u32(code_point).expect("surrogates are excluded above, so this is a scalar value");
        out.put_slice(c.encode_utf8(&mut [0u8; 4]).as_bytes());
        Ok(())
    }

    fn hex4(&mut self) -> Result<u16, Reason> {
        let digits = self.line.get(self.at..self.at + 4).ok_or(Reason::InvalidJson)?;
        let mut value = 0u16;
        for &digit in digits {
            let nibble = (digit as char).to_digit(16).ok_or(Reason::InvalidJson)?;
            value = (value << 4) | nibble as u16;
        }
        self.at += 4;
        Ok(value)
    }
}
