//! `Mvcc::hash_kv`: a checksum of what a reader can see up to a revision (etcd's `HashByRev`),
//! equal on every member that applied the same log, whatever its physical compaction has done.
//!
//! etcd hashes its backend's raw history, keeping at and below the compact revision only what
//! compaction keeps. Rampart hashes the same logical content through the read paths: every key
//! visible at the compact revision, in key order, then every event after it up to the revision,
//! in revision order. The compactor removes versions in the background at its own pace on each
//! member, so the raw trees of two members may differ while what they serve does not.

use crate::error::MvccError;
use crate::mvcc::Mvcc;
use crate::types::{ApplyError, EventKind, KeyValue, RangeRequest};

/// Keys read per page of the state at the compact revision.
const PAGE_KEYS: i64 = 1000;
/// Events read per page of history.
const PAGE_EVENTS: usize = 10_000;
/// Attempts before giving up when compactions keep moving the compact revision.
const ATTEMPTS: usize = 5;

/// What [`Mvcc::hash_kv`] answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvHash {
    pub hash: u32,
    /// The compact revision the hash starts from.
    pub compact_revision: i64,
    /// The revision the hash runs to.
    pub revision: i64,
}

fn hash_kv(hasher: &mut crc32fast::Hasher, kv: &KeyValue) {
    hasher.update(&(kv.key.len() as u64).to_be_bytes());
    hasher.update(&kv.key);
    hasher.update(&kv.create_revision.to_be_bytes());
    hasher.update(&kv.mod_revision.to_be_bytes());
    hasher.update(&kv.version.to_be_bytes());
    hasher.update(&(kv.value.len() as u64).to_be_bytes());
    hasher.update(&kv.value);
    hasher.update(&kv.lease.to_be_bytes());
}

impl Mvcc {
    /// The hash of every version a reader can see up to `revision` (0: the current one), as
    /// etcd's `HashKV`. Errors as etcd's: [`ApplyError::Compacted`] if `0 < revision <=` the
    /// compact revision, [`ApplyError::FutureRevision`] past the current revision.
    ///
    /// Reads the whole store: for consistency checks, not for hot paths.
    pub fn hash_kv(&self, revision: i64) -> Result<KvHash, MvccError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.try_hash_kv(revision) {
                // A compaction moved the compact revision while the state at the old one was
                // read: start again from the new one.
                Err(MvccError::Apply(ApplyError::Compacted))
                    if attempt < ATTEMPTS
                        && !(0 < revision && revision <= self.compact_revision()) =>
                {
                    continue
                }
                other => return other,
            }
        }
    }

    fn try_hash_kv(&self, revision: i64) -> Result<KvHash, MvccError> {
        let compact = self.compact_revision();
        let current = self.revision();
        if revision > 0 && revision <= compact {
            return Err(ApplyError::Compacted.into());
        }
        if revision > current {
            return Err(ApplyError::FutureRevision.into());
        }
        let revision = if revision > 0 { revision } else { current };
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&compact.to_be_bytes());
        if compact > 0 {
            let mut request = RangeRequest {
                key: vec![0],
                range_end: vec![0],
                limit: PAGE_KEYS,
                revision: compact,
                serializable: true,
                ..Default::default()
            };
            loop {
                let (page, _) = self.try_range(&request)?;
                for kv in &page.kvs {
                    hash_kv(&mut hasher, kv);
                }
                match (page.more, page.kvs.last()) {
                    (true, Some(last)) => {
                        let mut next = last.key.clone();
                        next.push(0);
                        request.key = next;
                    }
                    _ => break,
                }
            }
        }
        let mut start = compact + 1;
        while start <= revision {
            let (revisions, last) = self.events(start, revision, &[0], &[0], PAGE_EVENTS)?;
            for events in &revisions {
                hasher.update(&events.revision.to_be_bytes());
                for event in &events.events {
                    hasher.update(&[match event.kind {
                        EventKind::Put => 0,
                        EventKind::Delete => 1,
                    }]);
                    hash_kv(&mut hasher, &event.kv);
                }
            }
            if last < start {
                break;
            }
            start = last + 1;
        }
        Ok(KvHash {
            hash: hasher.finalize(),
            compact_revision: compact,
            revision,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{entry, put_cmd};
    use crate::types::{Command, DeleteRangeRequest};

    /// A store with the same writes as every other made by this function, compacted at 4, and
    /// `last` put at the end.
    fn store(dir: &std::path::Path, last: &str) -> crate::Store {
        let store = crate::Store::open(dir).unwrap();
        let core = store.core_for_tests();
        let mut index = 0;
        let mut apply = |cmd: Command| {
            index += 1;
            core.apply_entry(&entry(index, cmd)).unwrap();
        };
        apply(put_cmd("a", "1")); // 2
        apply(put_cmd("b", "1")); // 3
        apply(put_cmd("a", "2")); // 4
        apply(Command::DeleteRange(DeleteRangeRequest {
            key: b"b".to_vec(),
            ..Default::default()
        })); // 5
        apply(Command::Compact { revision: 4 });
        apply(put_cmd("c", last)); // 6
        store
    }

    #[tokio::test]
    async fn members_with_the_same_history_hash_alike_and_a_changed_value_shows() {
        let dirs: Vec<_> = (0..3).map(|_| tempfile::TempDir::new().unwrap()).collect();
        let compacted = store(dirs[0].path(), "x").mvcc();
        compacted.wait_compacted(4).await.unwrap();
        let twin = store(dirs[1].path(), "x").mvcc();
        let other = store(dirs[2].path(), "y").mvcc();

        let hash = compacted.hash_kv(0).unwrap();
        assert_eq!(hash.compact_revision, 4);
        assert_eq!(hash.revision, compacted.revision());
        // The twin's compactor runs at its own pace (it may not have removed anything yet):
        // the hash is the same.
        assert_eq!(twin.hash_kv(0).unwrap(), hash);
        assert_ne!(other.hash_kv(0).unwrap().hash, hash.hash);
        // Up to a revision before the differing put, the two agree again.
        let before = hash.revision - 1;
        assert_eq!(
            compacted.hash_kv(before).unwrap().hash,
            other.hash_kv(before).unwrap().hash
        );
    }

    #[test]
    fn revisions_outside_the_history_are_refused_as_etcd_refuses_them() {
        let dir = tempfile::TempDir::new().unwrap();
        let mvcc = store(dir.path(), "x").mvcc();
        let refused = |revision| match mvcc.hash_kv(revision) {
            Err(MvccError::Apply(e)) => Some(e),
            Ok(_) => None,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(refused(4), Some(ApplyError::Compacted));
        assert_eq!(refused(3), Some(ApplyError::Compacted));
        assert_eq!(
            refused(mvcc.revision() + 1),
            Some(ApplyError::FutureRevision)
        );
        assert_eq!(refused(5), None);
    }
}
