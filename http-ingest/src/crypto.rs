//! The few primitives [`signature`](crate::signature) and
//! [`token`](crate::token) share: HMAC-SHA256 over parts, and hexadecimal that
//! is lowercase both ways (the spec's hex is lowercase, and a value that
//! differs only in case is a different value, never an alias).

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// `HMAC-SHA256(key, parts[0] || parts[1] || ...)`.
pub(crate) fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts keys of any length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Lowercase hex of `bytes` into `out`, which holds exactly twice as many bytes.
pub(crate) fn encode_hex_into(bytes: &[u8], out: &mut [u8]) {
    debug_assert_eq!(out.len(), 2 * bytes.len(), "hex takes two digits a byte");
    for (pair, byte) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = HEX_DIGITS[usize::from(byte >> 4)];
        pair[1] = HEX_DIGITS[usize::from(byte & 0x0f)];
    }
}

/// Lowercase hex of `bytes`.
pub(crate) fn encode_hex(bytes: &[u8]) -> String {
    let mut out = vec![0u8; 2 * bytes.len()];
    encode_hex_into(bytes, &mut out);
    String::from_utf8(out).expect("hex digits are ASCII")
}

/// Decodes exactly `2 * N` lowercase hex digits; `None` for any other text
/// (uppercase digits included).
pub(crate) fn decode_lower_hex<const N: usize>(text: &[u8]) -> Option<[u8; N]> {
    if text.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (byte, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        *byte = (lower_hex_value(pair[0])? << 4) | lower_hex_value(pair[1])?;
    }
    Some(out)
}

fn lower_hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        _ => None,
    }
}

/// Parses a decimal `u64` written without sign, without leading zeros ("0"
/// itself is fine) and without anything else; `None` otherwise or on overflow.
pub(crate) fn parse_canonical_u64(text: &[u8]) -> Option<u64> {
    match text {
        [] => None,
        [b'0'] => Some(0),
        [b'0', ..] => None,
        digits => digits.iter().try_fold(0u64, |value, &digit| {
            if !digit.is_ascii_digit() {
                return None;
            }
            value.checked_mul(10)?.checked_add(u64::from(digit - b'0'))
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_lowercase_both_ways() {
        assert_eq!(encode_hex(&[0x00, 0xab, 0xff]), "00abff");
        assert_eq!(decode_lower_hex::<3>(b"00abff"), Some([0x00, 0xab, 0xff]));
        assert_eq!(decode_lower_hex::<3>(b"00ABFF"), None);
        assert_eq!(decode_lower_hex::<3>(b"00abf"), None);
        assert_eq!(decode_lower_hex::<3>(b"00abfff0"), None);
        assert_eq!(decode_lower_hex::<1>(b"0g"), None);
    }

    #[test]
    fn canonical_decimal_has_no_sign_no_leading_zero_and_fits_u64() {
        assert_eq!(parse_canonical_u64(b"0"), Some(0));
        assert_eq!(parse_canonical_u64(b"1700000000000"), Some(1_700_000_000_000));
        assert_eq!(parse_canonical_u64(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_canonical_u64(b"18446744073709551616"), None);
        assert_eq!(parse_canonical_u64(b"007"), None);
        assert_eq!(parse_canonical_u64(b"+7"), None);
        assert_eq!(parse_canonical_u64(b"-7"), None);
        assert_eq!(parse_canonical_u64(b"7 "), None);
        assert_eq!(parse_canonical_u64(b""), None);
    }
}
