//! Hand-written hashing for the store: a 64-bit checksum for WAL records
//! and snapshots, and a 256-bit fingerprint of the whole log.
//!
//! Neither is cryptographic. They detect torn and corrupted bytes and tell
//! two logs apart; they do not resist someone crafting collisions, which no
//! part of the demo needs.

const P0: u64 = 0xa076_1d64_78bd_642f;
const P1: u64 = 0xe703_7ed1_a0b4_28db;
const P2: u64 = 0x8ebc_6af0_9c88_c6e3;
const P3: u64 = 0x5899_65cc_7537_4cc3;

/// Folded 64×64→128 multiply: both halves of the product feed the result,
/// so every input bit reaches every output bit within a round or two.
#[inline]
fn mum(a: u64, b: u64) -> u64 {
    let r = u128::from(a) * u128::from(b);
    (r as u64) ^ ((r >> 64) as u64)
}

/// Reads up to 8 bytes little-endian, zero-padded.
#[inline]
fn le(bytes: &[u8]) -> u64 {
    let mut buf = [0u8; 8];
    buf[..bytes.len()].copy_from_slice(bytes);
    u64::from_le_bytes(buf)
}

/// Hashes `data` with `seed`. Different seeds give independent-looking
/// hashes of the same bytes.
pub fn hash64(seed: u64, data: &[u8]) -> u64 {
    let mut h = seed ^ P0;
    let mut blocks = data.chunks_exact(16);
    for block in &mut blocks {
        let (a, b) = block.split_at(8);
        // `h` enters both factors so that a zero factor (a block equal to a
        // constant) cannot wipe out what came before.
        h = mum(le(a) ^ P1 ^ h, le(b) ^ P2 ^ h.rotate_left(29));
    }
    let tail = blocks.remainder();
    let (a, b) = tail.split_at(tail.len().min(8));
    h = mum(le(a) ^ P1 ^ h, le(b) ^ P2 ^ h.rotate_left(29));
    // The length goes in last: trailing zero bytes would otherwise hash like
    // the zero padding of a shorter input.
    let h = mum(h ^ P3, (data.len() as u64) ^ P0);
    // A final avalanche (splitmix64's) so that low bits are as good as high.
    let mut z = h;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The seeds of the fingerprint's four lanes.
const LANE_SEEDS: [u64; 4] = [
    0x6a09_e667_f3bc_c908,
    0xbb67_ae85_84ca_a73b,
    0x3c6e_f372_fe94_f82b,
    0xa54f_f53a_5f1d_36f1,
];

/// A running fingerprint of a log: four independent 64-bit hash chains,
/// each record folded into each lane. Its state is four numbers, so a
/// snapshot can carry it and a log compacted into a snapshot keeps the
/// fingerprint it had.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogHash {
    lanes: [u64; 4],
}

impl Default for LogHash {
    fn default() -> Self {
        LogHash::new()
    }
}

impl LogHash {
    /// The fingerprint of the empty log.
    pub const fn new() -> Self {
        LogHash { lanes: LANE_SEEDS }
    }

    /// Restores a state saved with [`LogHash::lanes`].
    pub const fn from_lanes(lanes: [u64; 4]) -> Self {
        LogHash { lanes }
    }

    /// The state, to save.
    pub const fn lanes(&self) -> [u64; 4] {
        self.lanes
    }

    /// Folds one record (its encoded bytes) into the chain.
    pub fn update(&mut self, record: &[u8]) {
        for (lane, seed) in self.lanes.iter_mut().zip(LANE_SEEDS) {
            *lane = hash64(*lane ^ seed, record);
        }
    }

    /// The 32-byte fingerprint.
    pub fn digest(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (chunk, lane) in out.chunks_exact_mut(8).zip(self.lanes) {
            chunk.copy_from_slice(&lane.to_le_bytes());
        }
        out
    }
}

/// Lower-case hex of `bytes`, for logs.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_byte_and_the_length_matter() {
        let base = hash64(1, b"hello world, this is a test");
        assert_ne!(base, hash64(2, b"hello world, this is a test"));
        assert_ne!(base, hash64(1, b"hello world, this is a tesu"));
        assert_ne!(base, hash64(1, b"hello world, this is a test\0"));
        assert_ne!(hash64(0, b""), hash64(0, b"\0"));
        assert_ne!(hash64(0, &[0; 16]), hash64(0, &[0; 17]));
        // Flipping any single bit of a 40-byte input changes the hash.
        let data: Vec<u8> = (0..40u8).collect();
        let h = hash64(7, &data);
        for i in 0..data.len() * 8 {
            let mut d = data.clone();
            d[i / 8] ^= 1 << (i % 8);
            assert_ne!(hash64(7, &d), h, "bit {i}");
        }
    }

    #[test]
    fn the_log_hash_depends_on_order() {
        let (mut a, mut b) = (LogHash::new(), LogHash::new());
        a.update(b"one");
        a.update(b"two");
        b.update(b"two");
        b.update(b"one");
        assert_ne!(a.digest(), b.digest());
        assert_eq!(LogHash::from_lanes(a.lanes()), a);
    }
}
