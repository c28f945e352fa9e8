//! How the MVCC state machine lays its data out in its sled tree.
//!
//! Everything the state machine owns lives in ONE tree, so that each log entry's effect is one
//! atomic write set (see `redo`) and a snapshot is simply every pair of that tree. The first byte of a key
//! says what it is:
//!
//! | key                                   | value                                       |
//! |---------------------------------------|---------------------------------------------|
//! | `l` enc(key)                          | bincode([`KeyRecord`]): live keys only       |
//! | `h` enc(key) rev (8 bytes big-endian) | `1` bincode([`KeyRecord`]), or `0` (a delete) |
//! | `r` rev seq (8 + 4 bytes big-endian)  | the user key the revision's `seq`-th change touched |
//! | `L` lid                               | bincode([`Lease`])                           |
//! | `A` lid enc(key)                      | empty: the key is attached to the lease      |
//! | `m` name                              | bincode of one meta value (see `META_*`)     |
//!
//! `enc` is a memcomparable escape of the user key: every `0x00` becomes `0x00 0xFF` and the key
//! ends with `0x00 0x01`. It keeps byte order (`a < b` iff `enc(a) < enc(b)`) and no encoded key is
//! a prefix of another, so `[enc(a), enc(b))` holds exactly the history of the keys in `[a, b)`,
//! whatever revision suffix follows.
//!
//! The `r` event index lists, per revision and in the order the command's operations made them,
//! the keys that revision changed; each change itself is the key's `h` version at that revision.
//! It lets a watcher replay history revision by revision without scanning every key.
//!
//! `lid` is a lease id as 8 big-endian bytes with the sign bit flipped, so leases (and each lease's
//! attachments) sort by id, negative ids included. A live key with a non-zero `lease` has exactly
//! one `A` entry, under that lease, and the lease exists: a revoke finds its keys by prefix.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::StoreError;
use crate::types::{KeyValue, Lease, NodeId};

/// Version of this layout, stored under [`META_FORMAT`]; bump it on any incompatible change.
/// Version 2 added leases and the event index: a version-1 tree lacks the index for its history,
/// so it is refused rather than served with silently missing watch events.
pub(crate) const FORMAT_VERSION: u32 = 2;

/// Prefix of the live keys.
pub(crate) const LATEST: u8 = b'l';
/// Prefix of every stored version of every key, until compaction removes it.
pub(crate) const HISTORY: u8 = b'h';
/// Prefix of the event index: which keys each revision changed, in op order.
pub(crate) const EVENT: u8 = b'r';
/// Prefix of the leases.
pub(crate) const LEASE: u8 = b'L';
/// Prefix of the lease attachments (lease id, then key).
pub(crate) const ATTACHMENT: u8 = b'A';
/// Prefix of the state machine's bookkeeping.
pub(crate) const META: u8 = b'm';

/// `u32`: the [`FORMAT_VERSION`] the tree was written with.
pub(crate) const META_FORMAT: &[u8] = b"mformat";
/// `i64`: the store revision; absent means 1 (an empty store).
pub(crate) const META_REVISION: &[u8] = b"mrevision";
/// `i64`: the compact revision; absent means 0 (never compacted).
pub(crate) const META_COMPACT: &[u8] = b"mcompact";
/// `Option<LogId>`: the last applied log id.
pub(crate) const META_APPLIED: &[u8] = b"mapplied";
/// `(LogId, u32)`: the last command applied of a [`crate::types::Command::Batch`] entry, by its
/// position, while the entry is not wholly applied (so a restart resumes after it).
pub(crate) const META_APPLIED_PART: &[u8] = b"mappliedpart";
/// `StoredMembership`: the last applied membership.
pub(crate) const META_MEMBERSHIP: &[u8] = b"mmembership";
/// Prefix of `MemberAttributes`, one per member id (big-endian).
pub(crate) const META_MEMBER_PREFIX: &[u8] = b"mmember/";

/// Raw (key, value) pairs of the MVCC tree, in key order: what a snapshot carries.
pub(crate) type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// What is stored for one version of a key; the key itself is in the tree key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct KeyRecord {
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
    pub lease: i64,
    pub value: Vec<u8>,
}

impl KeyRecord {
    pub(crate) fn into_kv(self, key: Vec<u8>) -> KeyValue {
        KeyValue {
            key,
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            version: self.version,
            value: self.value,
            lease: self.lease,
        }
    }
}

/// Tag byte of a history value that is a put.
const HISTORY_PUT: u8 = 1;
/// Tag byte of a history value that is a delete (a tombstone).
const HISTORY_TOMBSTONE: u8 = 0;

/// Appends `enc(key)` to `out`.
pub(crate) fn push_user_key(out: &mut Vec<u8>, key: &[u8]) {
    for &b in key {
        if b == 0 {
            out.extend_from_slice(&[0, 0xFF]);
        } else {
            out.push(b);
        }
    }
    out.extend_from_slice(&[0, 1]);
}

/// Decodes `enc(key)` from the start of `enc`; returns the user key and how many bytes it took.
pub(crate) fn decode_user_key(enc: &[u8]) -> Result<(Vec<u8>, usize), StoreError> {
    let mut out = Vec::with_capacity(enc.len());
    let mut i = 0;
    while i < enc.len() {
        let b = enc[i];
        if b != 0 {
            out.push(b);
            i += 1;
            continue;
        }
        match enc.get(i + 1) {
            Some(0xFF) => {
                out.push(0);
                i += 2;
            }
            Some(1) => return Ok((out, i + 2)),
            _ => return Err(StoreError::corrupt("mvcc key", "bad escape in encoded key")),
        }
    }
    Err(StoreError::corrupt("mvcc key", "unterminated encoded key"))
}

/// `prefix enc(key)`.
pub(crate) fn prefixed_key(prefix: u8, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 3);
    out.push(prefix);
    push_user_key(&mut out, key);
    out
}

/// The smallest byte string greater than every string starting with `prefixed_key(p, key)`.
/// `enc` always ends with `0x00 0x01`, so bumping the last byte is enough.
pub(crate) fn prefixed_key_end(prefix: u8, key: &[u8]) -> Vec<u8> {
    let mut out = prefixed_key(prefix, key);
    // Invariant: `push_user_key` always ends the encoding with the byte 0x01.
    if let Some(last) = out.last_mut() {
        *last = 2;
    }
    out
}

/// `l enc(key)`.
pub(crate) fn latest_key(key: &[u8]) -> Vec<u8> {
    prefixed_key(LATEST, key)
}

/// `h enc(key) rev`.
pub(crate) fn history_key(key: &[u8], revision: i64) -> Vec<u8> {
    let mut out = prefixed_key(HISTORY, key);
    out.extend_from_slice(&revision_bytes(revision));
    out
}

/// Revisions are positive, so their big-endian `u64` bytes sort like the numbers.
fn revision_bytes(revision: i64) -> [u8; 8] {
    (revision as u64).to_be_bytes()
}

/// Splits a history key into `h enc(key)` (identifying the key) and the revision.
pub(crate) fn split_history_key(k: &[u8]) -> Result<(&[u8], i64), StoreError> {
    if k.len() < 1 + 2 + 8 || k[0] != HISTORY {
        return Err(StoreError::corrupt(
            "mvcc history key",
            "too short or bad prefix",
        ));
    }
    let (head, rev) = k.split_at(k.len() - 8);
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(rev);
    Ok((head, u64::from_be_bytes(bytes) as i64))
}

/// `r rev seq`: the `seq`-th change (0-based, in op order) of revision `revision`.
pub(crate) fn event_key(revision: i64, seq: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + 8 + 4);
    out.push(EVENT);
    out.extend_from_slice(&revision_bytes(revision));
    out.extend_from_slice(&seq.to_be_bytes());
    out
}

/// The first event-index key of revision `revision`: `r rev`, a prefix of all its entries.
pub(crate) fn event_key_start(revision: i64) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + 8);
    out.push(EVENT);
    out.extend_from_slice(&revision_bytes(revision));
    out
}

/// The revision of an event-index key.
pub(crate) fn event_key_revision(k: &[u8]) -> Result<i64, StoreError> {
    match k {
        [EVENT, rev @ .., _, _, _, _] if rev.len() == 8 => {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(rev);
            Ok(u64::from_be_bytes(bytes) as i64)
        }
        _ => Err(StoreError::corrupt(
            "mvcc event index key",
            "bad length or prefix",
        )),
    }
}

/// A lease id as bytes that sort like the ids: big-endian with the sign bit flipped.
fn lease_id_bytes(id: i64) -> [u8; 8] {
    ((id as u64) ^ (1 << 63)).to_be_bytes()
}

/// `L lid`.
pub(crate) fn lease_key(id: i64) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + 8);
    out.push(LEASE);
    out.extend_from_slice(&lease_id_bytes(id));
    out
}

/// `A lid`: the prefix of every attachment of lease `id`.
pub(crate) fn attachment_prefix(id: i64) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + 8);
    out.push(ATTACHMENT);
    out.extend_from_slice(&lease_id_bytes(id));
    out
}

/// `A lid enc(key)`.
pub(crate) fn attachment_key(id: i64, key: &[u8]) -> Vec<u8> {
    let mut out = attachment_prefix(id);
    push_user_key(&mut out, key);
    out
}

/// The user key of an attachment key.
pub(crate) fn attachment_user_key(k: &[u8]) -> Result<Vec<u8>, StoreError> {
    match k.get(1 + 8..) {
        Some(enc) if k[0] == ATTACHMENT => Ok(decode_user_key(enc)?.0),
        _ => Err(StoreError::corrupt(
            "mvcc lease attachment key",
            "too short or bad prefix",
        )),
    }
}

/// bincode of a lease record.
pub(crate) fn encode_lease(lease: &Lease) -> Result<Vec<u8>, StoreError> {
    encode("lease", lease)
}

/// The history value of a put.
pub(crate) fn history_put(record: &KeyRecord) -> Result<Vec<u8>, StoreError> {
    let mut out = vec![HISTORY_PUT];
    bincode::serialize_into(&mut out, record).map_err(|source| StoreError::Encode {
        what: "key record",
        source,
    })?;
    Ok(out)
}

/// The history value of a delete.
pub(crate) fn history_tombstone() -> Vec<u8> {
    vec![HISTORY_TOMBSTONE]
}

/// Reads a history value: `None` for a tombstone, the record's bytes for a put.
pub(crate) fn history_record_bytes(value: &[u8]) -> Result<Option<&[u8]>, StoreError> {
    match value.split_first() {
        Some((&HISTORY_TOMBSTONE, [])) => Ok(None),
        Some((&HISTORY_PUT, rest)) => Ok(Some(rest)),
        _ => Err(StoreError::corrupt("mvcc history value", "bad tag")),
    }
}

/// The meta key of a member's attributes.
pub(crate) fn member_key(id: NodeId) -> Vec<u8> {
    let mut out = META_MEMBER_PREFIX.to_vec();
    out.extend_from_slice(&id.to_be_bytes());
    out
}

/// bincode-encodes `value`; `what` names it in the error.
pub(crate) fn encode<T: Serialize + ?Sized>(
    what: &'static str,
    value: &T,
) -> Result<Vec<u8>, StoreError> {
    bincode::serialize(value).map_err(|source| StoreError::Encode { what, source })
}

/// bincode-decodes `bytes`; `what` names them in the error. Decoding from a slice never allocates
/// more than the slice could hold, so corrupt lengths fail instead of exhausting memory.
pub(crate) fn decode<T: DeserializeOwned>(
    what: &'static str,
    bytes: &[u8],
) -> Result<T, StoreError> {
    bincode::deserialize(bytes).map_err(|source| StoreError::Decode { what, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_preserves_order_and_round_trips() {
        let keys: Vec<&[u8]> = vec![
            b"",
            b"\0",
            b"\0\0",
            b"\0\x01",
            b"a",
            b"a\0",
            b"a\0b",
            b"a\x01",
            b"ab",
            b"b",
            b"\xff",
            b"\xff\xff",
        ];
        for a in &keys {
            let ea = prefixed_key(LATEST, a);
            let (back, used) = decode_user_key(&ea[1..]).expect("decodes");
            assert_eq!(&back[..], *a, "round trip of {a:?}");
            assert_eq!(used, ea.len() - 1, "whole encoding consumed for {a:?}");
            for b in &keys {
                let eb = prefixed_key(LATEST, b);
                assert_eq!(a.cmp(b), ea.cmp(&eb), "order of {a:?} vs {b:?}");
                // With any revision suffix the order between different keys stays the same.
                if a < b {
                    assert!(
                        history_key(a, i64::MAX) < history_key(b, 1),
                        "{a:?} < {b:?} in history"
                    );
                }
            }
        }
    }

    #[test]
    fn lease_and_event_keys_sort_by_id_and_revision() {
        let ids = [i64::MIN, -5, -1, 0, 1, 7, 1 << 40, i64::MAX];
        for pair in ids.windows(2) {
            assert!(lease_key(pair[0]) < lease_key(pair[1]), "{pair:?}");
            assert!(
                attachment_key(pair[0], b"\xff\xff") < attachment_key(pair[1], b""),
                "attachments of {pair:?} do not interleave"
            );
        }
        let k = attachment_key(-3, b"a\0b");
        assert!(k.starts_with(&attachment_prefix(-3)));
        assert_eq!(attachment_user_key(&k).expect("decodes"), b"a\0b");

        assert!(event_key(2, u32::MAX) < event_key(3, 0));
        assert!(event_key(3, 0).starts_with(&event_key_start(3)));
        assert_eq!(
            event_key_revision(&event_key(1 << 33, 9)).expect("decodes"),
            1 << 33
        );
        assert!(event_key_revision(&event_key_start(3)).is_err());
    }

    #[test]
    fn history_key_splits_back() {
        let k = history_key(b"k\0ey", 42);
        let (head, rev) = split_history_key(&k).expect("splits");
        assert_eq!(rev, 42);
        assert_eq!(head, prefixed_key(HISTORY, b"k\0ey").as_slice());
        assert!(k < prefixed_key_end(HISTORY, b"k\0ey"));
    }
}
