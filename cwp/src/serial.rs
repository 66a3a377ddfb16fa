//! CWP/1 §2: serial numbers. The one place a serial is validated; everything
//! downstream (Redis channel names, key lookups, upload paths) takes a
//! [`Serial`], so an unchecked string can never reach them.

use std::fmt;
use std::str::FromStr;

/// The longest serial the spec allows, in bytes.
pub const MAX_SERIAL_LEN: usize = 32;

/// A device serial number: 1–32 bytes of `[A-Za-z0-9._-]`.
///
/// Stored inline (33 bytes, `Copy`) because a driver holds one per connected
/// device and per pending event; no heap allocation per serial.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Serial {
    len: u8,
    bytes: [u8; MAX_SERIAL_LEN],
}

/// A string that is not a valid serial.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a serial is 1-32 bytes of [A-Za-z0-9._-]")]
pub struct InvalidSerial;

impl Serial {
    /// Validates `bytes` as a serial.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, InvalidSerial> {
        if bytes.is_empty() || bytes.len() > MAX_SERIAL_LEN || !bytes.iter().all(|&b| is_serial_byte(b)) {
            return Err(InvalidSerial);
        }
        let mut inline = [0u8; MAX_SERIAL_LEN];
        inline[..bytes.len()].copy_from_slice(bytes);
        Ok(Self {
            len: bytes.len() as u8,
            bytes: inline,
        })
    }

    /// The serial as text.
    pub fn as_str(&self) -> &str {
        // Only ASCII bytes are ever admitted by `from_bytes`.
        std::str::from_utf8(self.as_bytes()).unwrap_or_default()
    }

    /// The serial's bytes, as they appear on the wire and in key derivation.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

fn is_serial_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')
}

impl FromStr for Serial {
    type Err = InvalidSerial;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_bytes(s.as_bytes())
    }
}

impl TryFrom<&str> for Serial {
    type Error = InvalidSerial;

    fn try_from(s: &str) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl AsRef<str> for Serial {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Display for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl fmt::Debug for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Serial({})", self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_spec_alphabet_up_to_32_bytes() {
        for ok in ["CTRL-0042", "a", "A.b_c-9", &"x".repeat(32)] {
            let serial: Serial = ok.parse().unwrap();
            assert_eq!(serial.as_str(), ok);
        }
    }

    #[test]
    fn rejects_everything_else() {
        for bad in ["", "CTRL 42", "CTRL/42", "ü", "a:b", "a\0", &"x".repeat(33), "../etc"] {
            assert_eq!(bad.parse::<Serial>(), Err(InvalidSerial), "{bad:?}");
        }
    }
}
