//! Making one log entry's writes to the MVCC tree atomic, without a sled batch per entry.
//!
//! sled's `apply_batch` writes out and syncs its current I/O buffer on every call, which made
//! each applied entry cost a disk write on every member. Instead, the applier stages an entry's
//! writes in a [`WriteBatch`], records them ALL as one value (the redo record, in its own tree),
//! then performs them one by one. sled's recovery keeps a prefix of its writes in order, so after
//! a crash either the redo record is missing (and so is every write after it: the entry is not
//! applied) or it is there, and [`recover`] repeats its writes, which is harmless if some or all
//! had already happened. The entry's applied log id is its last write, so "applied" is only ever
//! recorded with the whole entry.

use serde::{Deserialize, Serialize};

use crate::codec;
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
}

#[derive(Serialize)]
struct RedoRef<'a> {
    log_id: &'a LogId,
    ops: &'a [(Vec<u8>, Option<Vec<u8>>)],
}

#[derive(Deserialize)]
struct Redo {
    log_id: LogId,
    ops: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

/// Writes `batch`, the whole effect of entry `log_id`, to `tree`: the redo record first, then
/// each write. The caller holds the state lock, so no reader sees the writes half done.
pub(crate) fn commit(
    redo: &sled::Tree,
    tree: &sled::Tree,
    log_id: &LogId,
    batch: &WriteBatch,
) -> Result<(), StoreError> {
    write_record(redo, log_id, batch)?;
    perform(tree, &batch.ops)
}

/// Records `batch` as the redo record of entry `log_id`, without performing it.
pub(crate) fn write_record(
    redo: &sled::Tree,
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
    redo.insert(REDO, record)?;
    Ok(())
}

fn perform(tree: &sled::Tree, ops: &[(Vec<u8>, Option<Vec<u8>>)]) -> Result<(), StoreError> {
    for (key, value) in ops {
        match value {
            Some(value) => tree.insert(key.as_slice(), value.as_slice())?,
            None => tree.remove(key.as_slice())?,
        };
    }
    Ok(())
}

/// Finishes the entry a crash interrupted, if any: repeats the redo record's writes when its
/// entry is later than `applied`. Returns the entry's log id if it did.
pub(crate) fn recover(
    redo: &sled::Tree,
    tree: &sled::Tree,
    applied: Option<LogId>,
) -> Result<Option<LogId>, StoreError> {
    let Some(bytes) = redo.get(REDO)? else {
        return Ok(None);
    };
    let record: Redo = codec::decode("redo record", &bytes)?;
    if applied.is_some_and(|a| record.log_id <= a) {
        return Ok(None);
    }
    perform(tree, &record.ops)?;
    Ok(Some(record.log_id))
}

/// Forgets the redo record (after the tree was replaced by a snapshot's, which covers it).
pub(crate) fn clear(redo: &sled::Tree) -> Result<(), StoreError> {
    redo.remove(REDO)?;
    Ok(())
}
