//! Bearer tokens, issued by `POST /v1/token` (docs/HTTP.md §Bearer tokens).
//!
//! ```text
//! k_token = HMAC-SHA256(device_key, "CWP1 token")
//! mac     = HMAC-SHA256(k_token, "CWP1-TOKEN" LF SERIAL LF EXPIRY_MS)
//! token   = "cwp1." SERIAL "." EXPIRY_MS "." HEX(mac)
//! Authorization: Bearer TOKEN
//! ```
//!
//! Stateless: the gateway keeps nothing per token. The mac binds the token
//! to its serial and its expiry, under a key only that device's key gives, so
//! a token is good for exactly one device until it expires. It cannot be
//! revoked before then except by changing the device key, hence the short
//! default lifetime ([`DEFAULT_TOKEN_LIFETIME_MS`], one hour). A token is a
//! password for its lifetime: it belongs on HTTPS only.
//!
//! A serial may contain dots, so the token is split from the right: the last
//! field is the mac, the one before it the expiry, the rest the serial.

use std::fmt;
use std::str::FromStr;

use cwp::{DeviceKey, Serial};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::crypto::{decode_lower_hex, encode_hex, hmac_sha256, parse_canonical_u64};
use crate::signature::strip_scheme;

/// The first field of every token: the scheme and its version.
pub const TOKEN_PREFIX: &str = "cwp1";

/// How long a token lives unless the issuer says otherwise: 3,600 s.
pub const DEFAULT_TOKEN_LIFETIME_MS: u64 = 3_600_000;

/// The key that macs one device's tokens:
/// `k_token = HMAC-SHA256(device_key, "CWP1 token")`.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct TokenKey([u8; 32]);

impl TokenKey {
    /// `k_token = HMAC-SHA256(device_key, "CWP1 token")`.
    pub fn derive(device_key: &DeviceKey) -> Self {
        Self(hmac_sha256(device_key.as_bytes(), &[b"CWP1 token"]))
    }

    /// The raw key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// `HMAC-SHA256(k_token, "CWP1-TOKEN" LF SERIAL LF EXPIRY_MS)`.
    fn mac(&self, serial: &Serial, expiry_ms: u64) -> [u8; 32] {
        let expiry = expiry_ms.to_string();
        hmac_sha256(&self.0, &[b"CWP1-TOKEN\n", serial.as_bytes(), b"\n", expiry.as_bytes()])
    }
}

impl fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenKey(<redacted>)")
    }
}

/// Which field of a token is malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenField {
    /// The token does not start with `cwp1.`, or has fewer than four fields.
    Prefix,
    /// The serial is not 1-32 bytes of `[A-Za-z0-9._-]`.
    Serial,
    /// The expiry is not a decimal u64 without sign or leading zeros.
    Expiry,
    /// The mac is not 64 lowercase hex digits.
    Mac,
}

/// Why a bearer token is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The `Authorization` value does not start with `Bearer` and a space.
    #[error("the authorization scheme is not Bearer")]
    WrongScheme,
    /// The token does not have the token's shape.
    #[error("malformed token ({0:?})")]
    Malformed(TokenField),
    /// The token is for another device than the one asked about.
    #[error("the token is for {found}, not {expected}")]
    WrongSerial {
        /// The serial the caller expected.
        expected: Serial,
        /// The serial in the token.
        found: Serial,
    },
    /// The mac is not the device key's: forged, altered, or from an old key.
    #[error("the token's mac does not match")]
    BadMac,
    /// The token was genuine but has expired (the mac is checked first).
    #[error("the token expired at {expiry_ms} (now {now_ms})")]
    Expired {
        /// When the token stopped being valid, Unix ms.
        expiry_ms: u64,
        /// The server's clock.
        now_ms: u64,
    },
}

/// A bearer token: who it is for, until when, and the mac that proves the
/// gateway issued it.
#[derive(Clone)]
pub struct BearerToken {
    serial: Serial,
    expiry_ms: u64,
    mac: [u8; 32],
}

/// The mac compared in constant time, like every mac.
impl PartialEq for BearerToken {
    fn eq(&self, other: &Self) -> bool {
        let same_mac: bool = self.mac.ct_eq(&other.mac).into();
        same_mac && self.serial == other.serial && self.expiry_ms == other.expiry_ms
    }
}

impl Eq for BearerToken {}

impl BearerToken {
    /// Issues a token for `serial`, valid from `now_ms` for `lifetime_ms`
    /// (usually [`DEFAULT_TOKEN_LIFETIME_MS`]): it expires at
    /// `now_ms + lifetime_ms` and is refused from that millisecond on.
    pub fn issue(key: &DeviceKey, serial: &Serial, now_ms: u64, lifetime_ms: u64) -> Self {
        let expiry_ms = now_ms.saturating_add(lifetime_ms);
        Self {
            serial: *serial,
            expiry_ms,
            mac: TokenKey::derive(key).mac(serial, expiry_ms),
        }
    }

    /// Parses a token's text (the part after `Bearer `).
    pub fn parse(text: &str) -> Result<Self, TokenError> {
        let malformed = TokenError::Malformed;
        let rest = text
            .strip_prefix(TOKEN_PREFIX)
            .and_then(|rest| rest.strip_prefix('.'))
            .ok_or(malformed(TokenField::Prefix))?;
        let (rest, mac) = rest.rsplit_once('.').ok_or(malformed(TokenField::Prefix))?;
        let (serial, expiry) = rest.rsplit_once('.').ok_or(malformed(TokenField::Prefix))?;
        Ok(Self {
            serial: serial.parse().map_err(|_| malformed(TokenField::Serial))?,
            expiry_ms: parse_canonical_u64(expiry.as_bytes()).ok_or(malformed(TokenField::Expiry))?,
            mac: decode_lower_hex::<32>(mac.as_bytes()).ok_or(malformed(TokenField::Mac))?,
        })
    }

    /// Parses an `Authorization: Bearer TOKEN` value (scheme in any case,
    /// one or more spaces).
    pub fn from_authorization(value: &str) -> Result<Self, TokenError> {
        Self::parse(strip_scheme(value, "Bearer").ok_or(TokenError::WrongScheme)?)
    }

    /// The device the token is for: whose key to look up.
    pub fn serial(&self) -> &Serial {
        &self.serial
    }

    /// When the token expires, Unix ms.
    pub fn expiry_ms(&self) -> u64 {
        self.expiry_ms
    }

    /// Verifies the token as one for `serial` (the serial whose `key` the
    /// caller looked up, usually [`BearerToken::serial`]), at `now_ms`: the
    /// serial first, then the mac in constant time, then the expiry, so
    /// that [`TokenError::Expired`] is said only of a genuine token.
    pub fn verify(&self, key: &DeviceKey, serial: &Serial, now_ms: u64) -> Result<(), TokenError> {
        if self.serial != *serial {
            return Err(TokenError::WrongSerial {
                expected: *serial,
                found: self.serial,
            });
        }
        let expected = TokenKey::derive(key).mac(&self.serial, self.expiry_ms);
        if !bool::from(expected.ct_eq(&self.mac)) {
            return Err(TokenError::BadMac);
        }
        if now_ms >= self.expiry_ms {
            return Err(TokenError::Expired {
                expiry_ms: self.expiry_ms,
                now_ms,
            });
        }
        Ok(())
    }
}

impl FromStr for BearerToken {
    type Err = TokenError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text)
    }
}

/// The token's text, `cwp1.SERIAL.EXPIRY_MS.MAC`.
impl fmt::Display for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{TOKEN_PREFIX}.{}.{}.{}",
            self.serial,
            self.expiry_ms,
            encode_hex(&self.mac)
        )
    }
}

/// Without the mac: a token is a password for its lifetime.
impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BearerToken")
            .field("serial", &self.serial)
            .field("expiry_ms", &self.expiry_ms)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000_000;

    fn key() -> DeviceKey {
        DeviceKey::from_bytes([7; 32])
    }

    fn serial(text: &str) -> Serial {
        text.parse().expect("a valid serial")
    }

    #[test]
    fn a_token_verifies_for_its_serial_until_it_expires() {
        let ctrl = serial("CTRL-0042");
        let token = BearerToken::issue(&key(), &ctrl, NOW, DEFAULT_TOKEN_LIFETIME_MS);
        assert_eq!(token.expiry_ms(), NOW + 3_600_000);
        let parsed: BearerToken = token.to_string().parse().expect("round-trips");
        assert_eq!(parsed, token);
        assert_eq!(parsed.verify(&key(), &ctrl, NOW), Ok(()));
        assert_eq!(parsed.verify(&key(), &ctrl, NOW + 3_599_999), Ok(()));
        assert_eq!(
            parsed.verify(&key(), &ctrl, NOW + 3_600_000),
            Err(TokenError::Expired {
                expiry_ms: NOW + 3_600_000,
                now_ms: NOW + 3_600_000
            })
        );
    }

    #[test]
    fn a_token_is_refused_for_another_serial_another_key_or_any_alteration() {
        let ctrl = serial("CTRL-0042");
        let token = BearerToken::issue(&key(), &ctrl, NOW, DEFAULT_TOKEN_LIFETIME_MS);
        assert_eq!(
            token.verify(&key(), &serial("CTRL-0043"), NOW),
            Err(TokenError::WrongSerial {
                expected: serial("CTRL-0043"),
                found: ctrl
            })
        );
        assert_eq!(
            token.verify(&DeviceKey::from_bytes([8; 32]), &ctrl, NOW),
            Err(TokenError::BadMac)
        );

        let text = token.to_string();
        let longer = text.replace(".1700003600000.", ".1700003600001.");
        let other_serial = text.replace("CTRL-0042", "CTRL-0043");
        let flipped_mac = format!(
            "{}{}",
            &text[..text.len() - 1],
            if text.ends_with('0') { '1' } else { '0' }
        );
        for (forged, serial_of) in [
            (longer, "CTRL-0042"),
            (other_serial, "CTRL-0043"),
            (flipped_mac, "CTRL-0042"),
        ] {
            let forged = BearerToken::parse(&forged).expect("well formed");
            assert_eq!(forged.verify(&key(), &serial(serial_of), NOW), Err(TokenError::BadMac));
        }
        // An expired forgery is a bad mac, not "expired".
        let stale = BearerToken::parse(&text.replace(".1700003600000.", ".1.")).expect("well formed");
        assert_eq!(stale.verify(&key(), &ctrl, NOW), Err(TokenError::BadMac));
    }

    #[test]
    fn serials_with_dots_split_from_the_right() {
        let dotted = serial("site.7.ctrl-1");
        let token = BearerToken::issue(&key(), &dotted, NOW, 1000);
        let parsed = BearerToken::parse(&token.to_string()).expect("parses");
        assert_eq!(parsed.serial(), &dotted);
        assert_eq!(parsed.verify(&key(), &dotted, NOW), Ok(()));
    }

    #[test]
    fn malformed_tokens_name_the_bad_field() {
        let mac = "ab".repeat(32);
        let cases = [
            (format!("cwp2.A.1.{mac}"), TokenField::Prefix),
            (format!("CWP1.A.1.{mac}"), TokenField::Prefix),
            (format!("cwp1.1.{mac}"), TokenField::Prefix),
            ("cwp1.".to_owned(), TokenField::Prefix),
            (String::new(), TokenField::Prefix),
            (format!("cwp1..1.{mac}"), TokenField::Serial),
            (format!("cwp1.A/B.1.{mac}"), TokenField::Serial),
            (format!("cwp1.A.01.{mac}"), TokenField::Expiry),
            (format!("cwp1.A..{mac}"), TokenField::Expiry),
            (format!("cwp1.A.99999999999999999999.{mac}"), TokenField::Expiry),
            (format!("cwp1.A.1.{}", mac.to_uppercase()), TokenField::Mac),
            ("cwp1.A.1.abcd".to_owned(), TokenField::Mac),
        ];
        for (text, field) in cases {
            assert_eq!(BearerToken::parse(&text), Err(TokenError::Malformed(field)), "{text}");
        }
    }

    #[test]
    fn the_bearer_scheme_is_required() {
        let token = BearerToken::issue(&key(), &serial("A"), NOW, 1000);
        let text = token.to_string();
        assert_eq!(
            BearerToken::from_authorization(&format!("Bearer {text}")),
            Ok(token.clone())
        );
        assert_eq!(BearerToken::from_authorization(&format!("bearer  {text}")), Ok(token));
        assert_eq!(BearerToken::from_authorization(&text), Err(TokenError::WrongScheme));
        assert_eq!(
            BearerToken::from_authorization(&format!("Basic {text}")),
            Err(TokenError::WrongScheme)
        );
        assert!(!format!("{:?}", BearerToken::parse(&text)).contains(&text[text.len() - 64..]));
    }
}
