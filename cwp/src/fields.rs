//! CWP/1 §1 field encodings that need a type of their own: `str8` text and
//! the 16-byte identifiers (`id16`).

use std::fmt;
use std::ops::Deref;

/// `str8` text: at most 255 bytes of UTF-8, so that it always encodes.
#[derive(Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Str8(String);

/// Text longer than the 255 bytes a `str8` can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("text is {0} bytes, a str8 holds at most 255")]
pub struct Str8TooLong(pub usize);

impl Str8 {
    /// The most bytes a `str8` holds.
    pub const MAX_LEN: usize = 255;

    /// Wraps `text`, refusing text longer than 255 bytes.
    pub fn new(text: impl Into<String>) -> Result<Self, Str8TooLong> {
        let text = text.into();
        if text.len() > Self::MAX_LEN {
            return Err(Str8TooLong(text.len()));
        }
        Ok(Self(text))
    }

    /// Wraps `text`, cutting it at the last character boundary within 255
    /// bytes. For diagnostics (`ERROR` messages), where a shortened text is
    /// better than none.
    pub fn truncating(text: &str) -> Self {
        let mut end = text.len().min(Self::MAX_LEN);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        Self(text[..end].to_owned())
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Deref for Str8 {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl TryFrom<&str> for Str8 {
    type Error = Str8TooLong;

    fn try_from(text: &str) -> Result<Self, Self::Error> {
        Self::new(text)
    }
}

impl TryFrom<String> for Str8 {
    type Error = Str8TooLong;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        Self::new(text)
    }
}

impl fmt::Display for Str8 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

impl fmt::Debug for Str8 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// Writes 16 bytes in the hyphenated UUID layout (8-4-4-4-12 hex digits).
fn fmt_uuid(bytes: &[u8; 16], f: &mut fmt::Formatter<'_>) -> fmt::Result {
    for (i, b) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            f.write_str("-")?;
        }
        write!(f, "{b:02x}")?;
    }
    Ok(())
}

macro_rules! id16 {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
        pub struct $name(pub [u8; 16]);

        impl $name {
            /// The identifier's bytes as they travel on the wire.
            pub fn as_bytes(&self) -> &[u8; 16] {
                &self.0
            }
        }

        impl From<[u8; 16]> for $name {
            fn from(bytes: [u8; 16]) -> Self {
                Self(bytes)
            }
        }

        /// Hyphenated UUID layout, the form operators see in Redis and logs.
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt_uuid(&self.0, f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self)
            }
        }
    };
}

id16!(
    /// A handshake nonce (`nonce_d` from the device, `nonce_s` from the
    /// server). Fresh and random for every connection.
    Nonce
);
id16!(
    /// The session id the server announces in `WELCOME`.
    SessionId
);
id16!(
    /// An upload's identity, chosen by the device; stable across reconnects.
    UploadId
);
id16!(
    /// A command's identity, echoed in the device's command result.
    CommandId
);
id16!(
    /// A server-offered file's identity.
    FileId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn str8_refuses_256_bytes_and_truncates_on_a_char_boundary() {
        assert!(Str8::new("a".repeat(255)).is_ok());
        assert_eq!(Str8::new("a".repeat(256)), Err(Str8TooLong(256)));
        let long = format!("{}é", "a".repeat(254)); // é straddles byte 255
        assert_eq!(Str8::truncating(&long).len(), 254);
    }

    #[test]
    fn ids_display_as_uuids() {
        let id = CommandId([0x11; 16]);
        assert_eq!(id.to_string(), "11111111-1111-1111-1111-111111111111");
    }
}
