//! openraft's log storage: the Raft log, the vote, the committed and last purged log ids.
//!
//! All in one sled tree (`raft_log`) of the same database as the state machine:
//!
//! | key                          | value                        |
//! |------------------------------|------------------------------|
//! | `e` index (8 bytes, big-end.)| bincode(`Entry`)             |
//! | `m/vote`                     | bincode(`Vote`)              |
//! | `m/committed`                | bincode(`LogId`)             |
//! | `m/purged`                   | bincode(`LogId`)             |
//!
//! Keeping the last purged id in the same tree as the entries lets a purge be one atomic batch.
//! Every call that openraft needs durable returns (or reports through its callback) only after
//! `flush_async`, sled's fsync of the whole database.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{LogId, OptionalSend, StorageError, StorageIOError, Vote};
use serde::de::DeserializeOwned;

use crate::codec;
use crate::error::StoreError;
use crate::types::{NodeId, TypeConfig};

type Entry = openraft::Entry<TypeConfig>;

const ENTRY_PREFIX: u8 = b'e';
const VOTE: &[u8] = b"m/vote";
const COMMITTED: &[u8] = b"m/committed";
const PURGED: &[u8] = b"m/purged";

fn entry_key(index: u64) -> [u8; 9] {
    let mut k = [ENTRY_PREFIX; 9];
    k[1..].copy_from_slice(&index.to_be_bytes());
    k
}

/// The Raft log. Cloning gives another handle on the same log (that is the log reader).
#[derive(Clone)]
pub struct LogStore {
    db: sled::Db,
    tree: sled::Tree,
    /// Counts this handle as in use for [`crate::Store::released`].
    _in_use: Arc<()>,
}

impl LogStore {
    pub(crate) fn new(db: sled::Db, tree: sled::Tree, in_use: Arc<()>) -> Self {
        LogStore {
            db,
            tree,
            _in_use: in_use,
        }
    }

    fn get<T: DeserializeOwned>(
        &self,
        key: &[u8],
        what: &'static str,
    ) -> Result<Option<T>, StoreError> {
        match self.tree.get(key)? {
            Some(v) => Ok(Some(codec::decode(what, &v)?)),
            None => Ok(None),
        }
    }

    fn last_entry_id(&self) -> Result<Option<LogId<NodeId>>, StoreError> {
        match self
            .tree
            .range(entry_key(0)..=entry_key(u64::MAX))
            .next_back()
        {
            Some(item) => {
                let (_, v) = item?;
                let entry: Entry = codec::decode("log entry", &v)?;
                Ok(Some(entry.log_id))
            }
            None => Ok(None),
        }
    }

    fn read_entries(&self, range: impl RangeBounds<u64>) -> Result<Vec<Entry>, StoreError> {
        let start = match range.start_bound() {
            Bound::Included(&i) => Bound::Included(entry_key(i)),
            Bound::Excluded(&i) => match i.checked_add(1) {
                Some(i) => Bound::Included(entry_key(i)),
                None => return Ok(Vec::new()),
            },
            Bound::Unbounded => Bound::Included(entry_key(0)),
        };
        let end = match range.end_bound() {
            Bound::Included(&i) => Bound::Included(entry_key(i)),
            Bound::Excluded(&i) => Bound::Excluded(entry_key(i)),
            Bound::Unbounded => Bound::Included(entry_key(u64::MAX)),
        };
        self.tree
            .range((start, end))
            .map(|item| {
                let (_, v) = item?;
                codec::decode("log entry", &v)
            })
            .collect()
    }

    /// Flushes the database to disk (sled fsyncs).
    async fn flush(&self) -> Result<(), StoreError> {
        self.db.flush_async().await?;
        Ok(())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError<NodeId>> {
        Ok(self
            .read_entries(range)
            .map_err(|e| StorageIOError::read_logs(&e))?)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let last_purged_log_id: Option<LogId<NodeId>> = self
            .get(PURGED, "last purged log id")
            .map_err(|e| StorageIOError::read_logs(&e))?;
        let last = self
            .last_entry_id()
            .map_err(|e| StorageIOError::read_logs(&e))?;
        Ok(LogState {
            last_purged_log_id,
            last_log_id: last.or(last_purged_log_id),
        })
    }

    async fn get_log_reader(&mut self) -> LogStore {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        let write = async {
            self.tree.insert(VOTE, codec::encode("vote", vote)?)?;
            self.flush().await
        };
        write.await.map_err(|e| StorageIOError::write_vote(&e))?;
        // On disk: the vote, fsynced. Raft's safety needs it to survive a crash before this node
        // acts on it (grants it, or campaigns with it).
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        Ok(self
            .get(VOTE, "vote")
            .map_err(|e| StorageIOError::read_vote(&e))?)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        let write = || -> Result<(), StoreError> {
            match committed {
                Some(id) => self
                    .tree
                    .insert(COMMITTED, codec::encode("committed log id", &id)?)?,
                None => self.tree.remove(COMMITTED)?,
            };
            Ok(())
        };
        write().map_err(|e| StorageIOError::write(&e))?;
        // Not flushed on purpose: the committed id only lets a restart re-apply committed entries
        // early. It is durable with the next flush (the next append or vote, or sled's timer); if
        // a crash loses it, the restarted node learns the commit index from the leader again. It
        // never gets to disk ahead of the entries it covers: those came through earlier `append`
        // calls, each of which returned only after its flush.
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        Ok(self
            .get(COMMITTED, "committed log id")
            .map_err(|e| StorageIOError::read(&e))?)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let stage = || -> Result<(), StoreError> {
            let mut batch = sled::Batch::default();
            for entry in entries {
                batch.insert(
                    &entry_key(entry.log_id.index),
                    codec::encode("log entry", &entry)?,
                );
            }
            self.tree.apply_batch(batch)?;
            Ok(())
        };
        stage().map_err(|e| StorageIOError::write_logs(&e))?;
        // The entries are readable from here on (openraft requires that when append returns).
        match self.flush().await {
            Ok(()) => {
                // On disk: every entry of this call (and all earlier writes), fsynced. Only now may
                // openraft count them toward a quorum.
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(io::Error::other(e.to_string())));
                Err(StorageIOError::write_logs(&e).into())
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let write = async {
            let mut batch = sled::Batch::default();
            for key in self
                .tree
                .range(entry_key(log_id.index)..=entry_key(u64::MAX))
                .keys()
            {
                batch.remove(key?);
            }
            self.tree.apply_batch(batch)?;
            self.flush().await
        };
        write.await.map_err(|e| StorageIOError::write_logs(&e))?;
        // On disk: no entry at or after `log_id.index` (they conflicted with the leader's log).
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let write = async {
            let mut batch = sled::Batch::default();
            batch.insert(PURGED, codec::encode("last purged log id", &log_id)?);
            for key in self
                .tree
                .range(entry_key(0)..=entry_key(log_id.index))
                .keys()
            {
                batch.remove(key?);
            }
            self.tree.apply_batch(batch)?;
            self.flush().await
        };
        write.await.map_err(|e| StorageIOError::write_logs(&e))?;
        // On disk, from one atomic batch: the last purged id and the removal of every entry up to
        // it, so the log never has a hole that its bookkeeping does not explain.
        Ok(())
    }
}
