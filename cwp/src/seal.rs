//! CWP/1 §1 Tags: the per-session sealing state.
//!
//! ```text
//! tag = first 8 bytes of HMAC-SHA256(session_key, dir || seq || header[0..8] || body)
//! ```
//!
//! One [`Seal`] serves both directions of a connection. HMAC-SHA256 is
//! computed here from SHA-256's compression function (RFC 2104 over
//! FIPS 180-4), for two reasons:
//!
//! - the key's inner and outer pad blocks are hashed once per session,
//!   and a session keeps only the two resulting states (64 bytes: every
//!   idle session holds a seal);
//! - the frame's CRC-32C is computed in the same call, issued right after
//!   the first block's compression, so that the CPU runs the `crc32`
//!   instructions beside SHA-256's long dependency chain instead of after
//!   it (CWP/1 still checks the CRC before the tag: the codec looks at the
//!   CRC first). Interleaving the CRC block by block was measured too, and
//!   was slower: the CRC is fastest in one call, on three streams at once.
//!
//! The property tests hold it to the `hmac` crate for every length.
//! The two sequence counters are implicit: they are never sent, only
//! counted.

use std::fmt;

use sha2::block_api::compress256;
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::keys::SessionKey;

/// Bytes of tag at the end of every sealed payload.
pub const TAG_LEN: usize = 8;

/// Which way a frame travels; the `dir` byte mixed into its tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Device → server, `dir = 0x01`.
    DeviceToServer = 0x01,
    /// Server → device, `dir = 0x02`.
    ServerToDevice = 0x02,
}

/// SHA-256's block.
const BLOCK: usize = 64;
/// SHA-256's initial state (FIPS 180-4 §5.3.3).
const SHA256_IV: [u32; 8] = [
    0x6a09_e667,
    0xbb67_ae85,
    0x3c6e_f372,
    0xa54f_f53a,
    0x510e_527f,
    0x9b05_688c,
    0x1f83_d9ab,
    0x5be0_cd19,
];
/// `dir || seq || header[0..8]`: what the tag covers before the body.
const PREFIX_LEN: usize = 1 + 8 + 8;

/// HMAC-SHA256 keyed once: SHA-256's state after `key ^ ipad` and after
/// `key ^ opad` (the key is shorter than a block, so it is used as is).
/// Whoever holds these states can seal frames as the key can: they are
/// wiped when the session ends, like the key itself.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
struct KeyedMac {
    inner: [u32; 8],
    outer: [u32; 8],
}

impl KeyedMac {
    fn new(key: &[u8]) -> Self {
        debug_assert!(key.len() <= BLOCK, "session keys are 32 bytes");
        let pad = |byte: u8| {
            let mut block = [byte; BLOCK];
            block.iter_mut().zip(key).for_each(|(pad, key)| *pad ^= key);
            let mut state = SHA256_IV;
            compress256(&mut state, &[block]);
            block.zeroize();
            state
        };
        Self {
            inner: pad(0x36),
            outer: pad(0x5c),
        }
    }

    /// The tag of `prefix || body`, and `crc` extended over `body`.
    fn tag(&self, prefix: &[u8; PREFIX_LEN], body: &[u8], mut crc: u32) -> ([u8; TAG_LEN], u32) {
        let mut state = self.inner;
        // Bits hashed: the inner pad block, then the message.
        let bits = ((BLOCK + PREFIX_LEN + body.len()) as u64) * 8;
        // The message's last bytes, its end marker and its length.
        let mut last = [[0u8; BLOCK]; 2];
        let tail = if let Some((head, rest)) = body.split_first_chunk::<{ BLOCK - PREFIX_LEN }>() {
            let mut first = [0u8; BLOCK];
            first[..PREFIX_LEN].copy_from_slice(prefix);
            first[PREFIX_LEN..].copy_from_slice(head);
            compress256(&mut state, &[first]);
            // The CRC's instructions run while the first block's
            // compression does (a dependency chain of its own).
            crc = crc32c::crc32c_append(crc, body);
            let (blocks, tail) = rest.as_chunks::<BLOCK>();
            compress256(&mut state, blocks);
            last[0][..tail.len()].copy_from_slice(tail);
            tail.len()
        } else {
            crc = crc32c::crc32c_append(crc, body);
            last[0][..PREFIX_LEN].copy_from_slice(prefix);
            last[0][PREFIX_LEN..PREFIX_LEN + body.len()].copy_from_slice(body);
            PREFIX_LEN + body.len()
        };
        last[0][tail] = 0x80;
        let blocks = if tail + 1 + 8 <= BLOCK { 1 } else { 2 };
        last[blocks - 1][BLOCK - 8..].copy_from_slice(&bits.to_be_bytes());
        compress256(&mut state, &last[..blocks]);

        let mut outer = [0u8; BLOCK];
        for (word, bytes) in state.iter().zip(outer.chunks_exact_mut(4)) {
            bytes.copy_from_slice(&word.to_be_bytes());
        }
        outer[32] = 0x80;
        outer[BLOCK - 8..].copy_from_slice(&(((BLOCK + 32) * 8) as u64).to_be_bytes());
        let mut state = self.outer;
        compress256(&mut state, &[outer]);
        let mut tag = [0u8; TAG_LEN];
        tag[..4].copy_from_slice(&state[0].to_be_bytes());
        tag[4..].copy_from_slice(&state[1].to_be_bytes());
        (tag, crc)
    }
}

/// The sealing state of one established session: the keyed MAC and the
/// next sequence number in each direction.
#[derive(Clone)]
pub struct Seal {
    keyed: KeyedMac,
    /// Sequence number of the next frame this side sends.
    tx_seq: u64,
    /// Sequence number of the next frame this side expects to receive.
    rx_seq: u64,
    tx_dir: Direction,
}

/// What one pass over a received frame's body and tag found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opened {
    /// The CRC-32C given, extended over the body and the tag.
    pub crc: u32,
    /// Whether the tag verified (the receive counter then advanced).
    pub verified: bool,
}

impl Seal {
    /// Starts a session whose frames this side sends in direction `tx_dir`.
    /// Both counters start at 0 (`WELCOME` is server frame 0).
    pub fn new(key: &SessionKey, tx_dir: Direction) -> Self {
        Self {
            keyed: KeyedMac::new(key.as_bytes()),
            tx_seq: 0,
            rx_seq: 0,
            tx_dir,
        }
    }

    fn rx_dir(&self) -> Direction {
        match self.tx_dir {
            Direction::DeviceToServer => Direction::ServerToDevice,
            Direction::ServerToDevice => Direction::DeviceToServer,
        }
    }

    fn prefix(dir: Direction, seq: u64, header: &[u8; 8]) -> [u8; PREFIX_LEN] {
        let mut prefix = [0u8; PREFIX_LEN];
        prefix[0] = dir as u8;
        prefix[1..9].copy_from_slice(&seq.to_be_bytes());
        prefix[9..].copy_from_slice(header);
        prefix
    }

    /// The tag for the next outgoing frame, given its first 8 header bytes
    /// (with `length` already counting the tag) and its body; advances the
    /// send counter.
    pub fn seal(&mut self, header: &[u8; 8], body: &[u8]) -> [u8; TAG_LEN] {
        self.seal_with_crc(header, body, 0).0
    }

    /// [`Seal::seal`], and `crc` extended over `body` in the same pass.
    pub fn seal_with_crc(&mut self, header: &[u8; 8], body: &[u8], crc: u32) -> ([u8; TAG_LEN], u32) {
        let sealed = self
            .keyed
            .tag(&Self::prefix(self.tx_dir, self.tx_seq, header), body, crc);
        self.tx_seq += 1;
        sealed
    }

    /// Verifies the tag of the next incoming frame in constant time and, if
    /// it verifies, advances the receive counter (a frame that fails leaves
    /// the counter alone; the connection is dead anyway); and extends `crc`
    /// over `body` and `tag` in the same pass (the frame's CRC-32C, for the
    /// caller to check first).
    pub fn open_with_crc(&mut self, header: &[u8; 8], body: &[u8], tag: &[u8], crc: u32) -> Opened {
        let (expected, crc) = self
            .keyed
            .tag(&Self::prefix(self.rx_dir(), self.rx_seq, header), body, crc);
        let crc = crc32c::crc32c_append(crc, tag);
        let verified = tag.len() == TAG_LEN && bool::from(expected.ct_eq(tag));
        if verified {
            self.rx_seq += 1;
        }
        Opened { crc, verified }
    }

    /// Sequence number the next sent frame will carry.
    pub fn tx_seq(&self) -> u64 {
        self.tx_seq
    }

    /// Sequence number the next received frame must carry.
    pub fn rx_seq(&self) -> u64 {
        self.rx_seq
    }
}

impl fmt::Debug for Seal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Seal")
            .field("tx_dir", &self.tx_dir)
            .field("tx_seq", &self.tx_seq)
            .field("rx_seq", &self.rx_seq)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use hmac::{KeyInit, Mac};

    use super::*;
    use crate::keys::HmacSha256;

    /// The tag and the CRC of every body length across several blocks,
    /// at every alignment, against the `hmac` and `crc32c` crates.
    #[test]
    fn the_tag_is_hmac_sha256_and_the_crc_is_crc32c_for_every_length_and_alignment() {
        let key = [0x5a_u8; 32];
        let keyed = KeyedMac::new(&key);
        let prefix: [u8; PREFIX_LEN] = std::array::from_fn(|i| i as u8);
        let data: Vec<u8> = (0..700u32).map(|i| (i * 7 + 3) as u8).collect();
        for start in 0..8 {
            for len in 0..data.len() - start {
                let body = &data[start..start + len];
                let mut mac = HmacSha256::new_from_slice(&key).unwrap();
                mac.update(&prefix);
                mac.update(body);
                let (tag, crc) = keyed.tag(&prefix, body, 0x1234_5678);
                assert_eq!(tag[..], mac.finalize().into_bytes()[..TAG_LEN], "length {len}");
                assert_eq!(crc, crc32c::crc32c_append(0x1234_5678, body), "length {len} at {start}");
            }
        }
    }
}
