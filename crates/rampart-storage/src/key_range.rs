//! Key ranges: the user keys a request names with etcd's `(key, range_end)` pair (those a Range
//! reads, a DeleteRange deletes, a Compare checks, a watch follows), and their bounds for scans.

use std::ops::Bound;

/// A (start, end) pair of bounds, as sled and `BTreeMap` ranges take them.
type Bounds<T> = (Bound<T>, Bound<T>);

/// A set of user keys in etcd's `(key, range_end)` notation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum KeyRange {
    /// Nothing (a `range_end` at or before `key`).
    Empty,
    /// Exactly one key (an empty `range_end`).
    Single(Vec<u8>),
    /// Every key `>= start` (`range_end == "\0"`; with `key == "\0"` too, every key).
    From(Vec<u8>),
    /// `[start, end)`.
    Span(Vec<u8>, Vec<u8>),
}

impl KeyRange {
    pub(crate) fn new(key: &[u8], range_end: &[u8]) -> KeyRange {
        match range_end {
            [] => KeyRange::Single(key.to_vec()),
            // etcd's "\0" range end: every key >= key. With key "\0" too it means all keys, which
            // also takes in the (never valid, but harmless) empty key.
            [0] if key == [0] => KeyRange::From(Vec::new()),
            [0] => KeyRange::From(key.to_vec()),
            end if end <= key => KeyRange::Empty,
            end => KeyRange::Span(key.to_vec(), end.to_vec()),
        }
    }

    /// Whether `key` is in the range.
    pub(crate) fn contains(&self, key: &[u8]) -> bool {
        match self {
            KeyRange::Empty => false,
            KeyRange::Single(k) => key == k.as_slice(),
            KeyRange::From(k) => key >= k.as_slice(),
            KeyRange::Span(a, b) => key >= a.as_slice() && key < b.as_slice(),
        }
    }

    /// The range as bounds on user keys.
    pub(crate) fn user_bounds(&self) -> Option<Bounds<&[u8]>> {
        match self {
            KeyRange::Empty => None,
            KeyRange::Single(k) => Some((Bound::Included(k), Bound::Included(k))),
            KeyRange::From(k) => Some((Bound::Included(k), Bound::Unbounded)),
            KeyRange::Span(a, b) => Some((Bound::Included(a), Bound::Excluded(b))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_range_conventions() {
        assert_eq!(KeyRange::new(b"a", b""), KeyRange::Single(b"a".to_vec()));
        assert_eq!(KeyRange::new(b"a", b"\0"), KeyRange::From(b"a".to_vec()));
        assert_eq!(KeyRange::new(b"\0", b"\0"), KeyRange::From(Vec::new()));
        assert_eq!(KeyRange::new(b"b", b"a"), KeyRange::Empty);
        assert_eq!(KeyRange::new(b"a", b"a"), KeyRange::Empty);
        assert_eq!(
            KeyRange::new(b"a", b"c"),
            KeyRange::Span(b"a".to_vec(), b"c".to_vec())
        );
    }

    #[test]
    fn key_range_contains() {
        let check = |key: &[u8], end: &[u8], probe: &[u8], want: bool| {
            assert_eq!(
                KeyRange::new(key, end).contains(probe),
                want,
                "{probe:?} in ({key:?}, {end:?})"
            );
        };
        check(b"a", b"", b"a", true);
        check(b"a", b"", b"ab", false);
        check(b"a", b"\0", b"a", true);
        check(b"a", b"\0", b"\xff", true);
        check(b"a", b"\0", b"", false);
        check(b"\0", b"\0", b"", true);
        check(b"a", b"c", b"b\xff", true);
        check(b"a", b"c", b"c", false);
        check(b"b", b"a", b"b", false);
        check(b"a", b"c", b"", false);
    }
}
