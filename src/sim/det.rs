//! Deterministic randomness: every random choice of the simulator is a pure
//! function of the run seed and the identity of the thing being decided.
//!
//! Owns hashing (FNV-1a folded through splitmix64) and the helpers built on
//! it. A choice keyed by *what* it decides (this image, this attempt) rather
//! than by a shared random stream stays the same however worker tasks and
//! HTTP requests interleave, which is what makes `--seed` reproducible.

use uuid::Uuid;

/// Source of seeded, order-independent random values.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Det {
    seed: u64,
}

/// One input of a deterministic choice.
pub(crate) enum Part {
    Num(u64),
    Id(Uuid),
}

impl Det {
    pub(crate) fn new(seed: u64) -> Self {
        Self { seed }
    }

    /// A 64-bit value for `(seed, tag, parts)`.
    pub(crate) fn hash(&self, tag: &str, parts: &[Part]) -> u64 {
        let mut state = fnv1a(0xcbf2_9ce4_8422_2325, &self.seed.to_le_bytes());
        state = fnv1a(state, tag.as_bytes());
        for part in parts {
            // A separator keeps the parts from running together.
            state = fnv1a(state, &[0xff]);
            state = match part {
                Part::Num(number) => fnv1a(state, &number.to_le_bytes()),
                Part::Id(id) => fnv1a(state, id.as_bytes()),
            };
        }
        splitmix64(state)
    }

    /// A uniform value in `[0, 1)`.
    pub(crate) fn unit(&self, tag: &str, parts: &[Part]) -> f64 {
        // 53 random bits fill an f64 mantissa exactly.
        (self.hash(tag, parts) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// True with probability `rate`.
    pub(crate) fn chance(&self, rate: f64, tag: &str, parts: &[Part]) -> bool {
        rate > 0.0 && self.unit(tag, parts) < rate
    }

    /// A random-looking (version 4 layout) UUID.
    pub(crate) fn uuid(&self, tag: &str, parts: &[Part]) -> Uuid {
        let high = self.hash(tag, parts);
        let low = splitmix64(high ^ 0x9e37_79b9_7f4a_7c15);
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&high.to_le_bytes());
        bytes[8..].copy_from_slice(&low.to_le_bytes());
        uuid::Builder::from_random_bytes(bytes).into_uuid()
    }
}

/// Hashes bytes without a run seed (image pixels depend only on the prompt,
/// seed and batch index, so a test can recompute them).
pub(crate) fn stable_hash(parts: &[&[u8]]) -> u64 {
    let mut state = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        state = fnv1a(state, &[0xff]);
        state = fnv1a(state, part);
    }
    splitmix64(state)
}

fn fnv1a(mut state: u64, bytes: &[u8]) -> u64 {
    for byte in bytes {
        state ^= u64::from(*byte);
        state = state.wrapping_mul(0x0000_0100_0000_01b3);
    }
    state
}

pub(crate) fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_inputs_same_values_different_seeds_differ() {
        let a = Det::new(7);
        let b = Det::new(8);
        let parts = [Part::Num(1), Part::Num(3)];
        assert_eq!(a.hash("t", &parts), a.hash("t", &parts));
        assert_ne!(a.hash("t", &parts), b.hash("t", &parts));
        assert_ne!(a.hash("t", &parts), a.hash("u", &parts));
        let unit = a.unit("t", &parts);
        assert!((0.0..1.0).contains(&unit));
        assert_eq!(a.uuid("t", &parts).get_version_num(), 4);
    }
}
