//! CWP/1 §1 Tags and §2 Session: the key schedule.
//!
//! ```text
//! device_key  = HMAC-SHA256(master_key, "CWP1 device key" || serial)
//! mac         = HMAC-SHA256(device_key, "CWP1" || serial || nonce_d || nonce_s)
//! session_key = HMAC-SHA256(device_key, "CWP1 session" || nonce_d || nonce_s)
//! ```
//!
//! Each secret has its own type; none of them prints its bytes in `Debug`,
//! and all are wiped from memory when dropped.

use std::fmt;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::fields::Nonce;
use crate::serial::Serial;

pub(crate) type HmacSha256 = Hmac<Sha256>;

/// Key length of every CWP/1 key, in bytes.
pub const KEY_LEN: usize = 32;

fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC accepts keys of any length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// A key given as text that is not 64 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a key is 64 hexadecimal digits (32 bytes)")]
pub struct InvalidKey;

fn parse_hex_key(text: &str) -> Result<[u8; KEY_LEN], InvalidKey> {
    let mut key = [0u8; KEY_LEN];
    hex::decode_to_slice(text.trim(), &mut key).map_err(|_| InvalidKey)?;
    Ok(key)
}

macro_rules! secret_key {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Zeroize, ZeroizeOnDrop)]
        pub struct $name([u8; KEY_LEN]);

        impl $name {
            /// Wraps raw key bytes.
            pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
                Self(bytes)
            }

            /// Parses 64 hex digits (surrounding whitespace ignored).
            pub fn from_hex(text: &str) -> Result<Self, InvalidKey> {
                parse_hex_key(text).map(Self)
            }

            /// The raw key bytes.
            pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
                &self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(concat!(stringify!($name), "(<redacted>)"))
            }
        }

        /// Constant time, as every comparison of secrets must be.
        impl PartialEq for $name {
            fn eq(&self, other: &Self) -> bool {
                self.0.ct_eq(&other.0).into()
            }
        }

        impl Eq for $name {}
    };
}

secret_key!(
    /// The fleet's provisioning secret, from which every device key derives.
    MasterKey
);
secret_key!(
    /// One device's long-term key.
    DeviceKey
);
secret_key!(
    /// The per-connection key that tags every sealed frame.
    SessionKey
);

impl DeviceKey {
    /// `device_key = HMAC-SHA256(master_key, "CWP1 device key" || serial)`.
    pub fn derive(master: &MasterKey, serial: &Serial) -> Self {
        Self(hmac_sha256(&master.0, &[b"CWP1 device key", serial.as_bytes()]))
    }
}

impl SessionKey {
    /// `session_key = HMAC-SHA256(device_key, "CWP1 session" || nonce_d || nonce_s)`.
    pub fn derive(device_key: &DeviceKey, nonce_d: &Nonce, nonce_s: &Nonce) -> Self {
        Self(hmac_sha256(&device_key.0, &[b"CWP1 session", &nonce_d.0, &nonce_s.0]))
    }
}

/// The 32-byte proof of key possession a device sends in `AUTH`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct AuthMac(pub [u8; 32]);

impl AuthMac {
    /// `mac = HMAC-SHA256(device_key, "CWP1" || serial || nonce_d || nonce_s)`.
    pub fn compute(device_key: &DeviceKey, serial: &Serial, nonce_d: &Nonce, nonce_s: &Nonce) -> Self {
        Self(hmac_sha256(
            &device_key.0,
            &[b"CWP1", serial.as_bytes(), &nonce_d.0, &nonce_s.0],
        ))
    }

    /// Whether `received` is the mac this device should have sent, compared
    /// in constant time so that timing reveals nothing about the key.
    pub fn verify(
        received: &AuthMac,
        device_key: &DeviceKey,
        serial: &Serial,
        nonce_d: &Nonce,
        nonce_s: &Nonce,
    ) -> bool {
        let expected = Self::compute(device_key, serial, nonce_d, nonce_s);
        expected.0.ct_eq(&received.0).into()
    }
}

impl fmt::Debug for AuthMac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AuthMac(")?;
        for b in &self.0 {
            write!(f, "{b:02x}")?;
        }
        write!(f, ")")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_keys_parse_and_never_print() {
        let hex = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
        let key = MasterKey::from_hex(hex).unwrap();
        assert_eq!(key.as_bytes()[31], 0x1f);
        assert_eq!(format!("{key:?}"), "MasterKey(<redacted>)");
        assert_eq!(MasterKey::from_hex("00"), Err(InvalidKey));
        assert_eq!(MasterKey::from_hex(&"zz".repeat(32)), Err(InvalidKey));
    }
}
