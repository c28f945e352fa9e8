//! The key index: for every key, where history holds each of its versions. In memory only, as
//! etcd's `treeIndex`; rebuilt from history whenever the tree is opened or replaced.
//!
//! History is keyed by revision (see [`crate::codec`]), so it answers "what changed at revision
//! r" directly; the index answers "which version of key k is visible at revision r" and "which
//! keys of a range exist", without a second copy of any value on disk.
//!
//! It always describes exactly the history in the tree: the applier adds a key's new version
//! once the entry's writes are in, and the compactor removes versions from both together, all
//! under the state's write lock.

use std::collections::BTreeMap;
use std::ops::Bound;

use crate::codec::{self, HistoryKey, Live};
use crate::error::StoreError;
use crate::key_range::KeyRange;

/// Where one version of a key is in history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Version {
    pub revision: i64,
    /// Its place among the changes of its revision.
    pub seq: u32,
    /// A delete: the key does not exist from this version on, until its next put.
    pub tombstone: bool,
}

impl Version {
    pub(crate) fn history_key(&self) -> HistoryKey {
        codec::history_key(self.revision, self.seq)
    }
}

/// One key's versions, in revision order, and its current record's [`Live`] part if it exists.
#[derive(Default)]
struct Entry {
    versions: Vec<Version>,
    live: Option<Live>,
}

/// Every key that has a version in history, with its versions in revision order.
#[derive(Default)]
pub(crate) struct KeyIndex {
    keys: BTreeMap<Vec<u8>, Entry>,
}

impl KeyIndex {
    /// Builds the index of the history pairs among `pairs` (any others are skipped), which must
    /// come in key order, as a tree or a snapshot holds them.
    pub(crate) fn rebuild<K, V>(
        pairs: impl Iterator<Item = Result<(K, V), StoreError>>,
    ) -> Result<Self, StoreError>
    where
        K: AsRef<[u8]>,
        V: AsRef<[u8]>,
    {
        let mut index = KeyIndex::default();
        for pair in pairs {
            let (k, v) = pair?;
            if k.as_ref().first() != Some(&codec::HISTORY) {
                continue;
            }
            let (revision, seq) = codec::split_history_key(k.as_ref())?;
            let value = codec::history_value(v.as_ref())?;
            let version = Version {
                revision,
                seq,
                tombstone: value.record.is_none(),
            };
            index.push(value.key, version, value.decode_live()?);
        }
        Ok(index)
    }

    /// Records a new version of `key`, later than every version the index holds: `live` is
    /// the record's [`Live`] part for a put, `None` for a delete.
    pub(crate) fn push(&mut self, key: &[u8], version: Version, live: Option<Live>) {
        let entry = match self.keys.get_mut(key) {
            Some(entry) => entry,
            None => self.keys.entry(key.to_vec()).or_default(),
        };
        entry.versions.push(version);
        entry.live = live;
    }

    /// The version of `key` visible at `revision` (`None`: the latest), unless the key did not
    /// exist then.
    pub(crate) fn get(&self, key: &[u8], revision: Option<i64>) -> Option<Version> {
        self.keys
            .get(key)
            .and_then(|entry| visible(&entry.versions, revision))
    }

    /// The current version of `key` and its [`Live`] part, if the key exists.
    pub(crate) fn live(&self, key: &[u8]) -> Option<(Version, Live)> {
        let entry = self.keys.get(key)?;
        Some((visible(&entry.versions, None)?, entry.live?))
    }

    /// The version of `key` just before `revision`, a delete included, if history has one.
    pub(crate) fn before(&self, key: &[u8], revision: i64) -> Option<Version> {
        let versions = &self.keys.get(key)?.versions;
        let at = versions.partition_point(|v| v.revision < revision);
        at.checked_sub(1).map(|i| versions[i])
    }

    /// The keys of `range` that exist at `revision` (`None`: now), in key order, with their
    /// visible version.
    pub(crate) fn range<'a>(
        &'a self,
        range: &'a KeyRange,
        revision: Option<i64>,
    ) -> impl Iterator<Item = (&'a [u8], Version)> + 'a {
        // A single key, the common case, is a lookup rather than a range scan.
        let (single, bounds) = match range {
            KeyRange::Single(key) => (self.keys.get_key_value(key.as_slice()), None),
            _ => (None, range.user_bounds()),
        };
        single
            .into_iter()
            .chain(
                bounds
                    .into_iter()
                    .flat_map(move |bounds| self.keys.range::<[u8], _>(bounds)),
            )
            .filter_map(move |(key, entry)| {
                Some((key.as_slice(), visible(&entry.versions, revision)?))
            })
    }

    /// How many keys of `range` have a version in the index, counted no further than `limit`
    /// (a single key counts as one, whether or not it has one): a bound on the keys that reading
    /// or deleting the range looks at, found in at most `limit` steps.
    pub(crate) fn keys_within(&self, range: &KeyRange, limit: usize) -> usize {
        match range {
            KeyRange::Single(_) => 1,
            _ => range.user_bounds().map_or(0, |bounds| {
                self.keys.range::<[u8], _>(bounds).take(limit).count()
            }),
        }
    }

    /// Removes from the index, from key `from` on, versions that a compaction at `target`
    /// superseded: per key, those older than its latest version at or below `target`, and that
    /// one too if it is a delete. Stops once `budget` is spent (each key looked at and each
    /// version removed costs one), possibly in the middle of a key's versions. Returns the
    /// versions removed, in the order they must leave the tree (each key's oldest first, so its
    /// delete goes last), and the key to continue from, `None` when the index is done.
    pub(crate) fn compact_chunk(
        &mut self,
        from: &[u8],
        target: i64,
        mut budget: usize,
    ) -> (Vec<Version>, Option<Vec<u8>>) {
        let mut removed = Vec::new();
        let mut emptied = Vec::new();
        let mut next = None;
        for (key, entry) in self
            .keys
            .range_mut::<[u8], _>((Bound::Included(from), Bound::Unbounded))
        {
            if budget == 0 {
                next = Some(key.clone());
                break;
            }
            budget -= 1;
            let versions = &mut entry.versions;
            let at_or_below = versions.partition_point(|v| v.revision <= target);
            let Some(survivor) = at_or_below.checked_sub(1) else {
                continue;
            };
            let cut = if versions[survivor].tombstone {
                at_or_below
            } else {
                survivor
            };
            let take = cut.min(budget);
            removed.extend(versions.drain(..take));
            budget -= take;
            if take < cut {
                next = Some(key.clone());
                break;
            }
            if versions.is_empty() {
                emptied.push(key.clone());
            }
        }
        for key in emptied {
            self.keys.remove(&key);
        }
        (removed, next)
    }

    /// How many keys have a version in history.
    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }
}

/// The version visible at `revision` (`None`: the latest) among `versions`, unless a delete.
fn visible(versions: &[Version], revision: Option<i64>) -> Option<Version> {
    let end = match revision {
        None => versions.len(),
        Some(r) => versions.partition_point(|v| v.revision <= r),
    };
    let last = versions[..end].last()?;
    (!last.tombstone).then_some(*last)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(revision: i64) -> Option<Live> {
        Some(Live {
            create_revision: revision,
            version: 1,
            lease: 0,
        })
    }

    fn put(revision: i64) -> Version {
        Version {
            revision,
            seq: 0,
            tombstone: false,
        }
    }

    fn delete(revision: i64) -> Version {
        Version {
            tombstone: true,
            ..put(revision)
        }
    }

    #[test]
    fn visibility_follows_revisions_and_deletes() {
        let mut index = KeyIndex::default();
        index.push(b"a", put(2), live(2));
        index.push(b"a", delete(4), None);
        index.push(b"a", put(6), live(6));
        index.push(b"b", put(3), live(3));
        assert_eq!(index.get(b"a", Some(1)), None);
        assert_eq!(index.get(b"a", Some(3)), Some(put(2)));
        assert_eq!(index.get(b"a", Some(5)), None, "deleted at 4");
        assert_eq!(index.get(b"a", None), Some(put(6)));
        assert_eq!(index.get(b"c", None), None);
        assert_eq!(index.live(b"a"), Some((put(6), live(6).unwrap())));
        assert_eq!(index.live(b"c"), None);
        assert_eq!(index.before(b"a", 6), Some(delete(4)));
        assert_eq!(index.before(b"a", 2), None);
        let at = |revision| {
            index
                .range(&KeyRange::From(Vec::new()), revision)
                .map(|(k, v)| (k.to_vec(), v.revision))
                .collect::<Vec<_>>()
        };
        assert_eq!(at(Some(4)), [(b"b".to_vec(), 3)]);
        assert_eq!(at(None), [(b"a".to_vec(), 6), (b"b".to_vec(), 3)]);
        assert_eq!(index.range(&KeyRange::Empty, None).count(), 0);
        let single = |key: &[u8], revision| {
            index
                .range(&KeyRange::Single(key.to_vec()), revision)
                .map(|(_, v)| v.revision)
                .collect::<Vec<_>>()
        };
        assert_eq!(single(b"a", Some(3)), [2]);
        assert_eq!(single(b"a", Some(5)), [], "deleted at 4");
        assert_eq!(single(b"c", None), []);
    }

    #[test]
    fn compaction_keeps_what_reads_at_or_after_the_target_can_see() {
        let mut index = KeyIndex::default();
        index.push(b"a", put(2), live(2));
        index.push(b"b", put(3), live(3));
        index.push(b"a", put(4), live(4));
        index.push(b"b", delete(5), None);
        index.push(b"c", put(6), live(6));
        index.push(b"c", put(8), live(8));

        // a: one key and one version; b: one key and two versions; nothing left for c.
        let (removed, next) = index.compact_chunk(b"", 5, 5);
        assert_eq!(
            removed,
            [put(2), put(3), delete(5)],
            "b's delete after its put"
        );
        assert_eq!(next, Some(b"c".to_vec()));
        assert_eq!(index.len(), 2, "b has no version left");

        let (removed, next) = index.compact_chunk(b"c", 7, 5);
        assert_eq!(removed, [], "c@6 is the survivor at 7");
        assert_eq!(next, None);
        assert_eq!(index.get(b"a", Some(5)), Some(put(4)));
        assert_eq!(index.get(b"c", Some(7)), Some(put(6)));
    }

    #[test]
    fn a_long_history_is_compacted_over_several_chunks_oldest_first() {
        let mut index = KeyIndex::default();
        for revision in 1..=5 {
            index.push(b"x", put(revision), live(revision));
        }
        index.push(b"x", delete(6), None);
        let (removed, next) = index.compact_chunk(b"", 6, 3);
        assert_eq!(removed, [put(1), put(2)]);
        assert_eq!(next, Some(b"x".to_vec()), "x is not done");
        let (removed, next) = index.compact_chunk(b"x", 6, 3);
        assert_eq!(removed, [put(3), put(4)]);
        let (removed, next) = index.compact_chunk(&next.unwrap(), 6, 3);
        assert_eq!(removed, [put(5), delete(6)], "the delete goes last");
        assert_eq!(next, None);
        assert_eq!(index.len(), 0);
    }
}
