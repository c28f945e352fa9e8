//! The values written, and the send time that the watch workload carries inside them.
//!
//! A timestamped value starts with the nanoseconds since [`clock_origin`] (8 bytes, big-endian),
//! taken just before the put is sent; a watcher in the same process subtracts it from the time
//! the event arrives. Both ends read one monotonic clock, so the difference is a true latency.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Bytes of the timestamp at the start of a timestamped value.
pub const TIMESTAMP_BYTES: usize = 8;

/// The filler byte of every value; values need no entropy, as neither etcd nor Rampart
/// compresses them.
const FILLER: u8 = b'x';

/// A value of `size` bytes.
pub fn value(size: usize) -> Vec<u8> {
    vec![FILLER; size]
}

/// The process-wide origin of [`now_nanos`].
pub fn clock_origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

/// Nanoseconds since [`clock_origin`].
pub fn now_nanos() -> u64 {
    u64::try_from(clock_origin().elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// A value of `size` bytes (at least [`TIMESTAMP_BYTES`]) that starts with `sent_nanos`.
pub fn timestamped_value(size: usize, sent_nanos: u64) -> Vec<u8> {
    let mut value = value(size.max(TIMESTAMP_BYTES));
    value[..TIMESTAMP_BYTES].copy_from_slice(&sent_nanos.to_be_bytes());
    value
}

/// The send time inside a timestamped value; `None` if the value is too short to hold one.
pub fn read_timestamp(value: &[u8]) -> Option<u64> {
    let bytes: [u8; TIMESTAMP_BYTES] = value.get(..TIMESTAMP_BYTES)?.try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}

/// The time from `sent_nanos` to `now_nanos`; zero if the clock reads earlier (it cannot, as
/// it is monotonic, but a value written by another process could hold anything).
pub fn latency_since(sent_nanos: u64, now_nanos: u64) -> Duration {
    Duration::from_nanos(now_nanos.saturating_sub(sent_nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_round_trips_through_a_value() {
        let value = timestamped_value(64, 1_234_567_890_123);
        assert_eq!(value.len(), 64);
        assert_eq!(read_timestamp(&value), Some(1_234_567_890_123));
        assert!(value[TIMESTAMP_BYTES..].iter().all(|&b| b == FILLER));
    }

    #[test]
    fn short_values_grow_to_hold_the_timestamp() {
        let value = timestamped_value(2, 7);
        assert_eq!(value.len(), TIMESTAMP_BYTES);
        assert_eq!(read_timestamp(&value), Some(7));
        assert_eq!(read_timestamp(b"short"), None);
    }

    #[test]
    fn latency_is_the_clock_difference() {
        let sent = now_nanos();
        let later = sent + 1_500_000;
        assert_eq!(latency_since(sent, later), Duration::from_micros(1500));
        assert_eq!(latency_since(later, sent), Duration::ZERO);
        assert!(now_nanos() >= sent, "the clock is monotonic");
    }
}
