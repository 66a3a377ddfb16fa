//! Reading and writing the field encodings of CWP/1 §1 (`u8`…`u64` big
//! endian, `id16`, `str8`, `rest`) inside a frame body.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::error::Malformation;
use crate::fields::Str8;

/// A cursor over one frame body. Every read checks the remaining length, so
/// a short body is `Truncated` rather than a panic; [`BodyReader::finish`]
/// turns leftover bytes into `TrailingBytes`.
pub(crate) struct BodyReader {
    body: Bytes,
}

impl BodyReader {
    pub(crate) fn new(body: Bytes) -> Self {
        Self { body }
    }

    fn need(&self, n: usize) -> Result<(), Malformation> {
        if self.body.remaining() < n {
            Err(Malformation::Truncated)
        } else {
            Ok(())
        }
    }

    pub(crate) fn u8(&mut self) -> Result<u8, Malformation> {
        self.need(1)?;
        Ok(self.body.get_u8())
    }

    pub(crate) fn u16(&mut self) -> Result<u16, Malformation> {
        self.need(2)?;
        Ok(self.body.get_u16())
    }

    pub(crate) fn u32(&mut self) -> Result<u32, Malformation> {
        self.need(4)?;
        Ok(self.body.get_u32())
    }

    pub(crate) fn u64(&mut self) -> Result<u64, Malformation> {
        self.need(8)?;
        Ok(self.body.get_u64())
    }

    /// A 0/1 flag; anything else does not decode.
    pub(crate) fn flag(&mut self) -> Result<bool, Malformation> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(Malformation::InvalidFlag),
        }
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], Malformation> {
        self.need(N)?;
        let mut out = [0u8; N];
        self.body.copy_to_slice(&mut out);
        Ok(out)
    }

    /// `str8`: a length byte, then that many bytes of UTF-8.
    pub(crate) fn str8_bytes(&mut self) -> Result<Bytes, Malformation> {
        let len = usize::from(self.u8()?);
        self.need(len)?;
        Ok(self.body.split_to(len))
    }

    pub(crate) fn str8(&mut self) -> Result<Str8, Malformation> {
        let bytes = self.str8_bytes()?;
        let text = std::str::from_utf8(&bytes).map_err(|_| Malformation::NotUtf8)?;
        // A length byte cannot announce more than 255 bytes.
        Ok(Str8::truncating(text))
    }

    /// `rest`: every remaining byte, as a slice of the receive buffer.
    pub(crate) fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.body)
    }

    /// `rest` that must hold at least one byte (`BLOCK`, `FILE_CHUNK`).
    pub(crate) fn rest_nonempty(&mut self) -> Result<Bytes, Malformation> {
        if self.body.is_empty() {
            return Err(Malformation::EmptyData);
        }
        Ok(self.rest())
    }

    pub(crate) fn finish(self) -> Result<(), Malformation> {
        if self.body.is_empty() {
            Ok(())
        } else {
            Err(Malformation::TrailingBytes)
        }
    }
}

/// Appends `str8` text: its length byte, then its bytes.
pub(crate) fn put_str8(dst: &mut BytesMut, text: &str) {
    debug_assert!(text.len() <= Str8::MAX_LEN, "Str8 guarantees at most 255 bytes");
    dst.put_u8(text.len() as u8);
    dst.put_slice(text.as_bytes());
}
