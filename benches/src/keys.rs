//! The keys a workload touches and the random choices among them.
//!
//! Every key is `prefix` followed by a zero-padded decimal index below the key space size, so
//! that all keys of a run have the same length, sort in index order and fall in the range
//! `[prefix, prefix_range_end(prefix))` that a watcher on the prefix sees.

use rampart_api::prefix_range_end;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::BenchError;

/// The keys `prefix + index` for `index` in `0..size`, each `key_size` bytes long.
#[derive(Debug, Clone)]
pub struct KeySpace {
    prefix: Vec<u8>,
    size: u64,
    /// Digits after the prefix: `key_size - prefix.len()`, at least enough for `size - 1`.
    digits: usize,
}

impl KeySpace {
    /// Checks that `size` keys fit in `key_size` bytes after `prefix`.
    pub fn new(prefix: &str, size: u64, key_size: usize) -> Result<KeySpace, BenchError> {
        if size == 0 {
            return Err(BenchError::InvalidOptions(
                "--key-space must be at least 1".into(),
            ));
        }
        let needed = decimal_digits(size - 1);
        let digits = key_size.saturating_sub(prefix.len());
        if digits < needed {
            return Err(BenchError::InvalidOptions(format!(
                "--key-size {key_size} is too small: the prefix {prefix:?} and {needed} digits \
                 for a key space of {size} need {}",
                prefix.len() + needed
            )));
        }
        Ok(KeySpace {
            prefix: prefix.as_bytes().to_vec(),
            size,
            digits,
        })
    }

    /// How many distinct keys there are.
    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn prefix(&self) -> &[u8] {
        &self.prefix
    }

    /// The key at `index`, which must be below [`KeySpace::size`] (larger indexes wrap).
    pub fn key(&self, index: u64) -> Vec<u8> {
        let index = index % self.size;
        let mut key = self.prefix.clone();
        key.extend_from_slice(format!("{index:0width$}", width = self.digits).as_bytes());
        key
    }

    /// A key drawn uniformly from the key space.
    pub fn random_key(&self, rng: &mut impl Rng) -> Vec<u8> {
        self.key(rng.gen_range(0..self.size))
    }

    /// The end of the range holding every key of the space (and every other key with the prefix).
    pub fn range_end(&self) -> Vec<u8> {
        prefix_range_end(&self.prefix)
    }
}

fn decimal_digits(mut n: u64) -> usize {
    let mut digits = 1;
    while n >= 10 {
        n /= 10;
        digits += 1;
    }
    digits
}

/// The random number generator of worker `worker` in a run seeded with `seed`. Each worker has
/// its own stream, so a run's choices depend on the seed and not on how the scheduler
/// interleaves the workers.
pub fn worker_rng(seed: u64, worker: usize) -> StdRng {
    // The golden-ratio multiplier spreads consecutive worker numbers over the seed space.
    StdRng::seed_from_u64(seed ^ (worker as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_the_requested_size_and_order() {
        let keys = KeySpace::new("bench/", 1000, 16).expect("fits");
        assert_eq!(keys.key(0), b"bench/0000000000");
        assert_eq!(keys.key(999), b"bench/0000000999");
        assert_eq!(keys.key(7).len(), 16);
        assert!(keys.key(9) < keys.key(10), "keys sort in index order");
        assert_eq!(
            keys.key(1000),
            keys.key(0),
            "indexes wrap at the key space size"
        );
    }

    #[test]
    fn key_size_must_hold_prefix_and_digits() {
        // 1000 keys need 3 digits (0..=999): "p/" + 3 = 5 bytes.
        assert!(KeySpace::new("p/", 1000, 5).is_ok());
        let err = KeySpace::new("p/", 1001, 5).expect_err("1001 keys need 4 digits");
        assert!(err.to_string().contains("need 6"), "{err}");
        assert!(
            KeySpace::new("p/", 0, 16).is_err(),
            "an empty key space is refused"
        );
        assert_eq!(KeySpace::new("", 1, 1).expect("fits").key(0), b"0");
    }

    #[test]
    fn random_keys_are_in_the_space_and_repeat_with_the_seed() {
        let keys = KeySpace::new("k", 50, 8).expect("fits");
        let draw = |seed, worker| {
            let mut rng = worker_rng(seed, worker);
            (0..200)
                .map(|_| keys.random_key(&mut rng))
                .collect::<Vec<_>>()
        };
        let first = draw(42, 0);
        assert_eq!(
            first,
            draw(42, 0),
            "the same seed and worker give the same keys"
        );
        assert_ne!(first, draw(43, 0), "another seed gives other keys");
        assert_ne!(first, draw(42, 1), "another worker gives other keys");
        let end = keys.range_end();
        for key in &first {
            assert_eq!(key.len(), 8);
            assert!(
                key.as_slice() >= keys.prefix() && *key < end,
                "{key:?} is in the range"
            );
        }
        let distinct: std::collections::BTreeSet<_> = first.iter().collect();
        assert!(
            distinct.len() > 25,
            "200 draws from 50 keys hit most of them"
        );
    }

    #[test]
    fn decimal_digits_counts() {
        assert_eq!(decimal_digits(0), 1);
        assert_eq!(decimal_digits(9), 1);
        assert_eq!(decimal_digits(10), 2);
        assert_eq!(decimal_digits(u64::MAX), 20);
    }
}
