//! Making one log entry's writes to the MVCC tree atomic, without a sled batch per entry.
//!
//! sled's `apply_batch` writes out and syncs its current I/O buffer on every call, which made
//! each applied entry cost a disk write on every member. Instead, the applier stages an entry's
//! writes in a [`WriteBatch`] and performs them one by one, the entry's
//! [`crate::codec::Progress`] (its revision and applied position) last. sled's recovery keeps a
//! prefix of its writes in order, so after a crash the progress record is there only if every
//! write before it is. What a crash can leave is a prefix of the writes without their progress
//! record, made whole in one of two ways:
//!
//! - A write set that only adds history past the recorded revision (puts and deletes of keys
//!   without leases, the common case) needs nothing more: such versions are invisible leftovers,
//!   which opening the tree removes (`MvccCore::open`), and openraft applies the entry again.
//! - Any other write set (leases, compaction, membership, ...) is first recorded ALL as one
//!   value, the redo record (in its own tree), then performed; after a crash either the record
//!   is missing (and so is every write after it: the entry is not applied) or it is there, and
//!   [`Redo::recover`] repeats its writes, which is harmless if some or all had already happened.
//!
//! The record, when there is one, is always of the last write set that needed it: a write set
//! without one removes an earlier record first, so that it is never repeated over later writes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::codec::{self, HISTORY};
use crate::database::Database;
use crate::error::StoreError;
use crate::types::NodeId;

/// Key of the redo record in its tree.
const REDO: &[u8] = b"redo";

type LogId = openraft::LogId<NodeId>;

/// One entry's writes to the MVCC tree, in order; a later write of a key overrides an earlier.
#[derive(Default)]
pub(crate) struct WriteBatch {
    ops: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

impl WriteBatch {
    /// Owned keys and values are moved in, not copied.
    pub(crate) fn insert(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.ops.push((key.into(), Some(value.into())));
    }

    pub(crate) fn remove(&mut self, key: impl Into<Vec<u8>>) {
        self.ops.push((key.into(), None));
    }

    /// The keys written outside history (the families that change in place), in order.
    pub(crate) fn keys_outside_history(&self) -> impl Iterator<Item = &[u8]> {
        self.ops
            .iter()
            .map(|(key, _)| key.as_slice())
            .filter(|key| key.first() != Some(&HISTORY))
    }

    /// Whether every write adds a history version past `revision`: such a write set, followed
    /// by its progress record, needs no redo record.
    pub(crate) fn only_adds_history_past(&self, revision: i64) -> bool {
        self.ops.iter().all(|(key, value)| {
            value.is_some()
                && key.first() == Some(&HISTORY)
                && codec::split_history_key(key).is_ok_and(|(rev, _)| rev > revision)
        })
    }
}

#[derive(Serialize)]
struct RedoRef<'a> {
    log_id: &'a LogId,
    ops: &'a [(Vec<u8>, Option<Vec<u8>>)],
}

#[derive(Deserialize)]
struct Record {
    log_id: LogId,
    ops: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

/// The redo record's tree (in the current database, used under the state's lock), and whether
/// it holds a record.
pub(crate) struct Redo {
    database: Arc<Database>,
    held: AtomicBool,
}

impl Redo {
    pub(crate) fn open(database: Arc<Database>) -> Self {
        let held = AtomicBool::new(!database.get().redo.is_empty());
        Redo { database, held }
    }

    fn tree(&self) -> sled::Tree {
        self.database.get().redo.clone()
    }

    /// Writes `batch`, the whole effect of (a part of) entry `log_id`, to `data`: when
    /// `needs_record`, the redo record first, then each write; otherwise each write, after
    /// removing any earlier record. The caller holds the state lock, so no reader sees the
    /// writes half done, and put the progress record last. Returns by how many bytes of keys
    /// and values `data` grew (negative if it shrank).
    pub(crate) fn commit(
        &self,
        data: &sled::Tree,
        log_id: &LogId,
        batch: &WriteBatch,
        needs_record: bool,
    ) -> Result<i64, StoreError> {
        if needs_record {
            self.write_record(log_id, batch)?;
        } else if self.held.load(Ordering::Relaxed) {
            self.clear()?;
        }
        perform(data, &batch.ops)
    }

    /// Records `batch` as the redo record of entry `log_id`, without performing it.
    pub(crate) fn write_record(
        &self,
        log_id: &LogId,
        batch: &WriteBatch,
    ) -> Result<(), StoreError> {
        let record = codec::encode(
            "redo record",
            &RedoRef {
                log_id,
                ops: &batch.ops,
            },
        )?;
        self.tree().insert(REDO, record)?;
        self.held.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Finishes the entry a crash interrupted, if its record is there: repeats the record's
    /// writes when its entry is later than `applied`. Returns the entry's log id if it did.
    pub(crate) fn recover(
        &self,
        data: &sled::Tree,
        applied: Option<LogId>,
    ) -> Result<Option<LogId>, StoreError> {
        let Some(bytes) = self.tree().get(REDO)? else {
            return Ok(None);
        };
        let record: Record = codec::decode("redo record", &bytes)?;
        if applied.is_some_and(|a| record.log_id <= a) {
            return Ok(None);
        }
        perform(data, &record.ops)?;
        Ok(Some(record.log_id))
    }

    /// Forgets the redo record (when the writes that follow do not need it, or after the tree
    /// was replaced by a snapshot's, which covers it).
    pub(crate) fn clear(&self) -> Result<(), StoreError> {
        self.tree().remove(REDO)?;
        self.held.store(false, Ordering::Relaxed);
        Ok(())
    }

    /// Whether a record is held.
    #[cfg(test)]
    pub(crate) fn is_held(&self) -> bool {
        self.held.load(Ordering::Relaxed)
    }
}

/// Performs `ops` on `tree`; returns by how many bytes of keys and values it grew.
fn perform(tree: &sled::Tree, ops: &[(Vec<u8>, Option<Vec<u8>>)]) -> Result<i64, StoreError> {
    let mut grown = 0i64;
    for (key, value) in ops {
        let old = match value {
            Some(value) => {
                grown += (key.len() + value.len()) as i64;
                tree.insert(key.as_slice(), value.as_slice())?
            }
            None => tree.remove(key.as_slice())?,
        };
        if let Some(old) = old {
            grown -= (key.len() + old.len()) as i64;
        }
    }
    Ok(grown)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{Progress, META_PROGRESS};
    use crate::test_support::{entry, log_id, put_cmd};

    #[test]
    fn an_entry_whose_writes_were_cut_short_is_finished_from_its_redo_record() {
        let dir = tempfile::TempDir::new().unwrap();
        let marker = b"xwritten by entry 2".to_vec();
        {
            let store = crate::Store::open(dir.path()).unwrap();
            let core = store.core_for_tests();
            core.apply_entry(&entry(1, put_cmd("a", "1"))).unwrap();
            // Entry 2's redo record, then a prefix of its writes: none of them, as if the crash
            // came right after the record.
            let mut batch = WriteBatch::default();
            batch.insert(marker.clone(), b"v".as_slice());
            let progress = Progress {
                revision: 2,
                applied: Some(log_id(2)),
                applied_part: None,
            };
            batch.insert(META_PROGRESS, codec::encode("progress", &progress).unwrap());
            core.redo.write_record(&log_id(2), &batch).unwrap();
            store.flush().unwrap();
        }
        let store = crate::Store::open(dir.path()).unwrap();
        let core = store.core_for_tests();
        assert_eq!(core.state.read().applied.map(|id| id.index), Some(2));
        assert!(core.tree().get(&marker).unwrap().is_some());
    }
}
