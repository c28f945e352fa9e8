//! How the MVCC state machine lays its data out in its sled tree.
//!
//! Everything the state machine owns lives in ONE tree, so that each log entry's effect is one
//! atomic write set (see `redo`) and a snapshot is simply every pair of that tree. The first byte of a key
//! says what it is:
//!
//! | key                   | value                                                      |
//! |-----------------------|------------------------------------------------------------|
//! | `h` rev seq           | one version: tag, user key, bincode([`KeyRecord`]) if a put |
//! | `L` lid               | bincode([`Lease`])                                         |
//! | `A` lid enc(key)      | empty: the key is attached to the lease                    |
//! | `m` name              | bincode of one meta value (see `META_*`)                   |
//! | `malarm/` id type     | empty: member `id` raised alarm `type` (`crate::alarms`)    |
//! | `mauth`               | bincode(`AuthMeta`): authentication on, auth revision       |
//! | `mauthuser/` name     | bincode(`AuthUser`): password hash, roles (`crate::auth`)   |
//! | `mauthrole/` name     | bincode(`AuthRole`): the role's permissions                 |
//!
//! History is keyed by revision, as etcd's (`rev` and `seq` are 8 and 4 bytes big-endian):
//! version `seq` (0-based, in the order the command's operations made them) of revision `rev` is
//! the `seq`-th key that revision changed, so history in key order IS the event log, and each
//! value is written once. Which version of a key is visible at a revision comes from the
//! in-memory [`crate::index::KeyIndex`], rebuilt from history when the tree is opened.
//!
//! A history value is `1` (a put) or `0` (a delete), the user key's length as 4 bytes
//! big-endian, the user key, and for a put the bincode of its [`KeyRecord`]: the key can be read
//! without decoding the record.
//!
//! `enc` is a memcomparable escape of the user key: every `0x00` becomes `0x00 0xFF` and the key
//! ends with `0x00 0x01`. It keeps byte order (`a < b` iff `enc(a) < enc(b)`) and no encoded key is
//! a prefix of another, so a lease's attachments sort by key.
//!
//! `lid` is a lease id as 8 big-endian bytes with the sign bit flipped, so leases (and each lease's
//! attachments) sort by id, negative ids included. A live key with a non-zero `lease` has exactly
//! one `A` entry, under that lease, and the lease exists: a revoke finds its keys by prefix.

use openraft::LogId;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::StoreError;
use crate::types::{KeyValue, Lease, NodeId};

/// Version of this layout, stored under [`META_FORMAT`]; bump it on any incompatible change.
/// Version 2 added leases and the event index; version 3 keys history by revision and keeps the
/// live keys in memory only; version 4 keeps the revision and the applied position in one
/// record, [`META_PROGRESS`]. A version 3 tree (or snapshot) is upgraded when it is opened
/// (installed); an older one is refused rather than misread.
pub(crate) const FORMAT_VERSION: u32 = 4;
/// The earlier layout that [`crate::mvcc`] upgrades: the same but for [`Progress`], which it
/// kept as three meta values ([`V3_REVISION`], [`V3_APPLIED`], [`V3_APPLIED_PART`]).
pub(crate) const FORMAT_VERSION_3: u32 = 3;

/// Prefix of every stored version of every key, by revision, until compaction removes it.
pub(crate) const HISTORY: u8 = b'h';
/// Prefix of the leases.
pub(crate) const LEASE: u8 = b'L';
/// Prefix of the lease attachments (lease id, then key).
pub(crate) const ATTACHMENT: u8 = b'A';
/// Prefix of the state machine's bookkeeping.
pub(crate) const META: u8 = b'm';

/// `u32`: the [`FORMAT_VERSION`] the tree was written with.
pub(crate) const META_FORMAT: &[u8] = b"mformat";
/// [`Progress`]: how far the tree is; absent on an empty store.
pub(crate) const META_PROGRESS: &[u8] = b"mprogress";
/// `i64`: the compact revision; absent means 0 (never compacted).
pub(crate) const META_COMPACT: &[u8] = b"mcompact";
/// `StoredMembership`: the last applied membership.
pub(crate) const META_MEMBERSHIP: &[u8] = b"mmembership";
/// Prefix of `MemberAttributes`, one per member id (big-endian).
pub(crate) const META_MEMBER_PREFIX: &[u8] = b"mmember/";
/// Prefix of the raised alarms: member id (8 bytes big-endian), alarm type (1 byte); empty
/// values (see `crate::alarms`). Among the meta pairs, so snapshots carry them.
pub(crate) const META_ALARM_PREFIX: &[u8] = b"malarm/";
/// The auth store's [`crate::auth::AuthMeta`]: whether authentication is on, its revision.
pub(crate) const META_AUTH: &[u8] = b"mauth";
/// Prefix of the auth store's users: the name, then bincode([`crate::auth::AuthUser`]).
pub(crate) const META_AUTH_USER_PREFIX: &[u8] = b"mauthuser/";
/// Prefix of the auth store's roles: the name, then bincode([`crate::auth::AuthRole`]).
pub(crate) const META_AUTH_ROLE_PREFIX: &[u8] = b"mauthrole/";
/// Layout version 3's `i64` store revision, now [`Progress::revision`].
pub(crate) const V3_REVISION: &[u8] = b"mrevision";
/// Layout version 3's `Option<LogId>` last applied log id, now [`Progress::applied`].
pub(crate) const V3_APPLIED: &[u8] = b"mapplied";
/// Layout version 3's `(LogId, u32)` batch position, now [`Progress::applied_part`].
pub(crate) const V3_APPLIED_PART: &[u8] = b"mappliedpart";

/// How far the tree is, in one value, written last by every atomic write of an applied entry:
/// so whenever it is on disk, so is everything that write put before it (sled recovers a prefix
/// of its writes), and history past `revision` can only be a write that a crash cut short.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Progress {
    /// The store revision (1 on an empty store).
    pub revision: i64,
    /// The last log entry wholly applied.
    pub applied: Option<LogId<NodeId>>,
    /// The last command applied of a [`crate::types::Command::Batch`] entry, by its position,
    /// while the entry is not wholly applied (so a restart resumes after it).
    pub applied_part: Option<(LogId<NodeId>, u32)>,
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            revision: 1,
            applied: None,
            applied_part: None,
        }
    }
}

/// Raw (key, value) pairs of the MVCC tree, in key order: what a snapshot carries.
pub(crate) type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// What is stored for one version of a key; the key itself is in the tree key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct KeyRecord {
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
    pub lease: i64,
    #[serde(with = "serde_bytes")]
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

/// What a put of a live key needs of its current record: the leading fields of its
/// [`KeyRecord`], decoded without its value ([`HistoryValue::decode_live`]) and kept in the key
/// index so that they are not read back from history (etcd keeps the same in its key index and
/// lessor).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Live {
    pub create_revision: i64,
    pub version: i64,
    pub lease: i64,
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

/// Revisions are positive, so their big-endian `u64` bytes sort like the numbers.
fn revision_bytes(revision: i64) -> [u8; 8] {
    (revision as u64).to_be_bytes()
}

/// A history key: `h rev seq`.
pub(crate) type HistoryKey = [u8; 1 + 8 + 4];

/// `h rev seq`: the `seq`-th change (0-based, in op order) of revision `revision`.
pub(crate) fn history_key(revision: i64, seq: u32) -> HistoryKey {
    let mut out = [0; 13];
    out[0] = HISTORY;
    out[1..9].copy_from_slice(&revision_bytes(revision));
    out[9..].copy_from_slice(&seq.to_be_bytes());
    out
}

/// `h rev`: the first history key of revision `revision`, a prefix of all of them.
pub(crate) fn history_key_start(revision: i64) -> [u8; 9] {
    let mut out = [0; 9];
    out[0] = HISTORY;
    out[1..].copy_from_slice(&revision_bytes(revision));
    out
}

/// The revision and sequence number of a history key.
pub(crate) fn split_history_key(k: &[u8]) -> Result<(i64, u32), StoreError> {
    match k {
        [HISTORY, rest @ ..] if rest.len() == 12 => {
            let (rev, seq) = rest.split_at(8);
            let rev = u64::from_be_bytes(rev.try_into().unwrap_or_default()) as i64;
            let seq = u32::from_be_bytes(seq.try_into().unwrap_or_default());
            Ok((rev, seq))
        }
        _ => Err(StoreError::corrupt(
            "mvcc history key",
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

/// One decoded history value, borrowing from its bytes.
pub(crate) struct HistoryValue<'a> {
    pub key: &'a [u8],
    /// The bincode of the put's [`KeyRecord`]; `None` for a delete.
    pub record: Option<&'a [u8]>,
}

impl HistoryValue<'_> {
    /// Decodes the put's record; `None` for a delete.
    pub(crate) fn decode_record(&self) -> Result<Option<KeyRecord>, StoreError> {
        self.record.map(|r| decode("key record", r)).transpose()
    }

    /// Decodes the put's record up to its value (which stays undecoded); `None` for a delete.
    pub(crate) fn decode_live(&self) -> Result<Option<Live>, StoreError> {
        let Some(record) = self.record else {
            return Ok(None);
        };
        // The leading fields of a `KeyRecord`, in its order; bincode leaves the rest unread.
        #[derive(Deserialize)]
        struct Head {
            create_revision: i64,
            _mod_revision: i64,
            version: i64,
            lease: i64,
        }
        let head: Head = decode("key record", record)?;
        Ok(Some(Live {
            create_revision: head.create_revision,
            version: head.version,
            lease: head.lease,
        }))
    }
}

fn history_value_head(tag: u8, key: &[u8], extra: usize) -> Result<Vec<u8>, StoreError> {
    let len = u32::try_from(key.len())
        .map_err(|_| StoreError::corrupt("mvcc history value", "key longer than 4 GiB"))?;
    let mut out = Vec::with_capacity(1 + 4 + key.len() + extra);
    out.push(tag);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(key);
    Ok(out)
}

/// The history value of `key` put as `record`.
pub(crate) fn history_put(key: &[u8], record: &KeyRecord) -> Result<Vec<u8>, StoreError> {
    // The record's four revisions and the value's length, then the value.
    let mut out = history_value_head(HISTORY_PUT, key, 5 * 8 + record.value.len())?;
    bincode::serialize_into(&mut out, record).map_err(|source| StoreError::Encode {
        what: "key record",
        source,
    })?;
    Ok(out)
}

/// The history value of a delete of `key`.
pub(crate) fn history_tombstone(key: &[u8]) -> Result<Vec<u8>, StoreError> {
    history_value_head(HISTORY_TOMBSTONE, key, 0)
}

/// Reads a history value without decoding its record.
pub(crate) fn history_value(value: &[u8]) -> Result<HistoryValue<'_>, StoreError> {
    let bad = |why: &str| StoreError::corrupt("mvcc history value", why.to_string());
    let (&tag, rest) = value.split_first().ok_or_else(|| bad("empty"))?;
    let (len, rest) = rest
        .split_at_checked(4)
        .ok_or_else(|| bad("truncated key length"))?;
    let len = u32::from_be_bytes(len.try_into().map_err(|_| bad("bad key length"))?) as usize;
    let (key, record) = rest
        .split_at_checked(len)
        .ok_or_else(|| bad("truncated key"))?;
    match tag {
        HISTORY_PUT => Ok(HistoryValue {
            key,
            record: Some(record),
        }),
        HISTORY_TOMBSTONE if record.is_empty() => Ok(HistoryValue { key, record: None }),
        _ => Err(bad("bad tag")),
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
        let enc = |k: &[u8]| {
            let mut out = Vec::new();
            push_user_key(&mut out, k);
            out
        };
        for a in &keys {
            let ea = enc(a);
            let (back, used) = decode_user_key(&ea).expect("decodes");
            assert_eq!(&back[..], *a, "round trip of {a:?}");
            assert_eq!(used, ea.len(), "whole encoding consumed for {a:?}");
            for b in &keys {
                assert_eq!(a.cmp(b), ea.cmp(&enc(b)), "order of {a:?} vs {b:?}");
                if a < b {
                    assert!(
                        attachment_key(1, a) < attachment_key(1, b),
                        "{a:?} < {b:?} among attachments"
                    );
                }
            }
        }
    }

    #[test]
    fn lease_and_history_keys_sort_by_id_and_revision() {
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

        assert!(history_key(2, u32::MAX) < history_key(3, 0));
        assert!(history_key(1 << 33, 0) > history_key((1 << 33) - 1, u32::MAX));
        assert!(history_key(3, 7).starts_with(&history_key_start(3)));
        assert_eq!(
            split_history_key(&history_key(1 << 33, 9)).expect("splits"),
            (1 << 33, 9)
        );
        assert!(split_history_key(&history_key_start(3)).is_err());
    }

    #[test]
    fn history_values_round_trip() {
        let record = KeyRecord {
            create_revision: 2,
            mod_revision: 5,
            version: 3,
            lease: -7,
            value: b"v\0".to_vec(),
        };
        let put = history_put(b"k\0ey", &record).expect("encodes");
        let read = history_value(&put).expect("decodes");
        assert_eq!(read.key, b"k\0ey");
        assert_eq!(
            read.decode_live().expect("decodes"),
            Some(Live {
                create_revision: 2,
                version: 3,
                lease: -7
            })
        );
        assert_eq!(read.decode_record().expect("decodes"), Some(record));

        let delete = history_tombstone(b"").expect("encodes");
        let read = history_value(&delete).expect("decodes");
        assert_eq!(read.key, b"");
        assert_eq!(read.decode_record().expect("decodes"), None);

        for bad in [
            &[][..],
            &[1, 0, 0],
            &[0, 0, 0, 0, 2, b'k'],
            &[0, 0, 0, 0, 0, 9],
            &[7, 0, 0, 0, 0],
        ] {
            assert!(history_value(bad).is_err(), "{bad:?} is refused");
        }
    }
}
