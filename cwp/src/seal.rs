//! CWP/1 §1 Tags: the per-session sealing state.
//!
//! ```text
//! tag = first 8 bytes of HMAC-SHA256(session_key, dir || seq || header[0..8] || body)
//! ```
//!
//! One [`Seal`] serves both directions of a connection: the HMAC is keyed
//! once with the session key (its inner and outer pads precomputed), and
//! each frame clones that keyed state instead of re-hashing the key. Only
//! the keyed core is kept, not the HMAC's 64-byte block buffer, which is
//! empty between frames: every idle session holds a seal. The two
//! sequence counters are implicit: they are never sent, only counted.

use std::fmt;

use hmac::digest::block_api::CoreProxy;
use hmac::{KeyInit, Mac};

use crate::keys::{HmacSha256, SessionKey};

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

/// The sealing state of one established session: the keyed MAC and the
/// next sequence number in each direction.
#[derive(Clone)]
pub struct Seal {
    keyed: <HmacSha256 as CoreProxy>::Core,
    /// Sequence number of the next frame this side sends.
    tx_seq: u64,
    /// Sequence number of the next frame this side expects to receive.
    rx_seq: u64,
    tx_dir: Direction,
}

impl Seal {
    /// Starts a session whose frames this side sends in direction `tx_dir`.
    /// Both counters start at 0 (`WELCOME` is server frame 0).
    pub fn new(key: &SessionKey, tx_dir: Direction) -> Self {
        Self {
            keyed: HmacSha256::new_from_slice(key.as_bytes())
                .expect("HMAC accepts keys of any length")
                .decompose()
                .0,
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

    fn mac(&self, dir: Direction, seq: u64, header: &[u8], body: &[u8]) -> HmacSha256 {
        let mut mac = HmacSha256::compose(self.keyed.clone(), Default::default());
        mac.update(&[dir as u8]);
        mac.update(&seq.to_be_bytes());
        mac.update(header);
        mac.update(body);
        mac
    }

    /// The tag for the next outgoing frame, given its first 8 header bytes
    /// (with `length` already counting the tag) and its body; advances the
    /// send counter.
    pub fn seal(&mut self, header: &[u8; 8], body: &[u8]) -> [u8; TAG_LEN] {
        let full = self.mac(self.tx_dir, self.tx_seq, header, body).finalize().into_bytes();
        self.tx_seq += 1;
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&full[..TAG_LEN]);
        tag
    }

    /// Verifies the tag of the next incoming frame in constant time and, if
    /// it verifies, advances the receive counter. A frame that fails leaves
    /// the counter alone; the connection is dead anyway.
    pub fn open(&mut self, header: &[u8; 8], body: &[u8], tag: &[u8]) -> bool {
        let verified = self
            .mac(self.rx_dir(), self.rx_seq, header, body)
            .verify_truncated_left(tag)
            .is_ok();
        if verified {
            self.rx_seq += 1;
        }
        verified
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
