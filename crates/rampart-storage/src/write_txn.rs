//! etcd's write transaction over the MVCC store (its `mvcc/kvstore_txn.go`, and the ops of
//! `txn/{put,delete,range,txn}.go`): the writes of one command, Put, DeleteRange and Txn, over
//! the state before the entry, and the compact command's write.
//!
//! A [`WriteTxn`] decides before it writes: a Txn's compares on its whole chosen path
//! ([`WriteTxn::compare_path`]) and every op's checks ([`WriteTxn::validate`]) run before any op
//! executes, so a failing command changes nothing. The ops then write into an overlay that later
//! reads of the same entry merge over the tree, and [`WriteTxn::commit`] stages the overlay as
//! the versions of one new revision in the entry's [`WriteBatch`], for [`crate::apply`] to write.
//!
//! Lease attachments follow from each changed key's lease before and after the entry, so every
//! way a key changes (a put with a new lease or lease 0, `ignore_lease`, any delete) keeps them
//! right without a case of its own.

use crate::codec::{self, KeyRecord, META_COMPACT};
use crate::error::{MvccError, StoreError};
use crate::events::{ChangedKey, Prior, Written};
use crate::index::KeyIndex;
use crate::key_range::KeyRange;
use crate::lease;
use crate::mvcc::MvccState;
use crate::range::{self, Collector, Found, Writes};
use crate::redo::WriteBatch;
use crate::types::{
    ApplyError, Compare, CompareResult, CompareTarget, DeleteRangeRequest, DeleteRangeResponse,
    KeyValue, PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp, ResponseOp,
    TxnRequest, TxnResponse,
};

/// Which branch each Txn on a path takes, decided before anything is written (etcd's
/// `compareToPath`): `nested` has one entry per Txn op of the chosen branch, in order.
pub(crate) struct TxnPath {
    succeeded: bool,
    nested: Vec<TxnPath>,
}

/// The writes of one entry over the state before it; all its writes get revision `base + 1`.
pub(crate) struct WriteTxn<'a> {
    tree: &'a sled::Tree,
    index: &'a KeyIndex,
    base_revision: i64,
    compact_revision: i64,
    /// Each written key's final state in this entry.
    writes: Writes,
    /// Each written key once, in the order of its first write, with its record before the entry:
    /// the revision's events. (A key written twice in one entry, which the server refuses as
    /// etcd does, makes one event: its final state.)
    changed: Vec<(Vec<u8>, Option<Prior>)>,
}

impl<'a> WriteTxn<'a> {
    pub(crate) fn new(tree: &'a sled::Tree, state: &'a MvccState) -> Self {
        Self::at(tree, &state.index, state.revision, state.compact_revision)
    }

    /// Writes over the store at `base_revision` (a put run's earlier puts are not in the cached
    /// state yet).
    pub(crate) fn at(
        tree: &'a sled::Tree,
        index: &'a KeyIndex,
        base_revision: i64,
        compact_revision: i64,
    ) -> Self {
        WriteTxn {
            tree,
            index,
            base_revision,
            compact_revision,
            writes: Writes::new(),
            changed: Vec::new(),
        }
    }

    /// Sets `key` to `after` (`None`: deleted) in this entry; `before` gives its record before
    /// the entry, asked for only on the key's first write.
    fn write(
        &mut self,
        key: Vec<u8>,
        before: impl FnOnce() -> Option<Prior>,
        after: Option<KeyRecord>,
    ) {
        if !self.writes.contains_key(&key) {
            self.changed.push((key.clone(), before()));
        }
        self.writes.insert(key, after);
    }

    /// The revision this entry's writes create.
    fn revision(&self) -> i64 {
        self.base_revision + 1
    }

    fn latest(&self, key: &[u8]) -> Result<Option<KeyRecord>, StoreError> {
        range::get_latest(self.tree, self.index, &self.writes, key)
    }

    /// `key`'s record before this write, if it is live, without reading its value from history.
    fn prior(&self, key: &[u8]) -> Option<Prior> {
        match self.writes.get(key) {
            Some(written) => written
                .clone()
                .map(|record| Prior::Record(record.into_kv(key.to_vec()))),
            None => self.stored_prior(key),
        }
    }

    /// `key`'s record in the store, if it is live, without reading its value.
    fn stored_prior(&self, key: &[u8]) -> Option<Prior> {
        self.index
            .live(key)
            .map(|(version, live)| Prior::Stored { version, live })
    }

    /// The checks etcd makes before a put (leases first, as its plain Put does; then the key the
    /// `ignore_*` flags need).
    fn check_put(&self, req: &PutRequest) -> Result<(), MvccError> {
        lease::check_lease(self.tree, req.lease)?;
        if (req.ignore_value || req.ignore_lease) && self.prior(&req.key).is_none() {
            return Err(ApplyError::KeyNotFound.into());
        }
        Ok(())
    }

    pub(crate) fn put(&mut self, req: &PutRequest) -> Result<PutResponse, MvccError> {
        self.check_put(req)?;
        // The previous value is read only if the request needs it.
        let full = if req.prev_kv || req.ignore_value {
            self.latest(&req.key)?
                .map(|record| record.into_kv(req.key.clone()))
        } else {
            None
        };
        let value = match &full {
            Some(kv) if req.ignore_value => kv.value.clone(),
            _ => req.value.clone(),
        };
        let prev = match full {
            Some(kv) => Some(Prior::Record(kv)),
            None => self.prior(&req.key),
        };
        let revision = self.revision();
        let record = match &prev {
            Some(p) => KeyRecord {
                create_revision: p.create_revision(),
                mod_revision: revision,
                version: p.version() + 1,
                lease: if req.ignore_lease {
                    p.lease()
                } else {
                    req.lease
                },
                value,
            },
            // check_put has refused ignore_* on a missing key.
            None => KeyRecord {
                create_revision: revision,
                mod_revision: revision,
                version: 1,
                lease: req.lease,
                value,
            },
        };
        let prev_kv = match &prev {
            Some(Prior::Record(kv)) if req.prev_kv => Some(kv.clone()),
            _ => None,
        };
        self.write(req.key.clone(), || prev, Some(record));
        Ok(PutResponse { prev_kv })
    }

    pub(crate) fn delete_range(
        &mut self,
        req: &DeleteRangeRequest,
    ) -> Result<DeleteRangeResponse, StoreError> {
        let mut victims = Vec::new();
        range::visit_latest(
            self.index,
            &self.writes,
            &KeyRange::new(&req.key, &req.range_end),
            |key, found| {
                let prior = match found {
                    Found::Written(record) => Prior::Record(record.clone().into_kv(key.to_vec())),
                    Found::Stored(_) => self.stored_prior(key).ok_or_else(|| {
                        StoreError::corrupt("key index", "a live key without its record (bug)")
                    })?,
                };
                victims.push((key.to_vec(), prior));
                Ok(())
            },
        )?;
        let deleted = victims.len() as i64;
        let mut prev_kvs = Vec::new();
        for (key, prior) in victims {
            // Values are read only when the caller wants them back.
            let prior = if req.prev_kv {
                let kv = prior.into_kv(self.tree, &key)?;
                prev_kvs.push(kv.clone());
                Prior::Record(kv)
            } else {
                prior
            };
            self.write(key, || Some(prior), None);
        }
        Ok(DeleteRangeResponse { deleted, prev_kvs })
    }

    /// Deletes `key` if it is live (a revoke's delete of one attached key).
    pub(crate) fn delete_key(&mut self, key: Vec<u8>) -> Result<(), StoreError> {
        if let Some(prior) = self.prior(&key) {
            self.write(key, || Some(prior), None);
        }
        Ok(())
    }

    fn range(&self, req: &RangeRequest) -> Result<RangeResponse, MvccError> {
        range::read_range(
            self.tree,
            self.index,
            &self.writes,
            self.base_revision,
            self.compact_revision,
            req,
        )
    }

    /// Evaluates the compares of `req` and of every nested Txn on the chosen path, all against
    /// the state before the Txn (etcd's `compareToPath`).
    pub(crate) fn compare_path(&self, req: &TxnRequest) -> Result<TxnPath, StoreError> {
        let mut succeeded = true;
        for c in &req.compare {
            if !self.compare_holds(c)? {
                succeeded = false;
                break;
            }
        }
        let mut nested = Vec::new();
        for op in branch(req, succeeded) {
            if let RequestOp::Txn(t) = op {
                nested.push(self.compare_path(t)?);
            }
        }
        Ok(TxnPath { succeeded, nested })
    }

    /// etcd's `applyCompare`: holds iff it holds for every key in the range; with no key, a
    /// VALUE compare fails and the others compare against zero.
    fn compare_holds(&self, c: &Compare) -> Result<bool, StoreError> {
        let mut found = Collector::all();
        range::scan_latest(
            self.tree,
            self.index,
            &self.writes,
            &KeyRange::new(&c.key, &c.range_end),
            &mut found,
        )?;
        if found.kvs.is_empty() {
            return Ok(
                !matches!(c.target, CompareTarget::Value(_)) && compare_kv(c, &KeyValue::default())
            );
        }
        Ok(found.kvs.iter().all(|kv| compare_kv(c, kv)))
    }

    /// Checks every op on the chosen path before any executes (etcd's `checkTxn`), so a failing
    /// Txn changes nothing.
    pub(crate) fn validate(&self, req: &TxnRequest, path: &TxnPath) -> Result<(), MvccError> {
        let mut nested = path.nested.iter();
        for op in branch(req, path.succeeded) {
            match op {
                RequestOp::Range(r) => {
                    range::check_revision(r.revision, self.base_revision, self.compact_revision)?;
                }
                RequestOp::Put(p) => self.check_put(p)?,
                RequestOp::DeleteRange(_) => {}
                RequestOp::Txn(t) => self.validate(t, next_path(&mut nested)?)?,
            }
        }
        Ok(())
    }

    /// Executes the chosen branch of a validated Txn, in order.
    pub(crate) fn txn(
        &mut self,
        req: &TxnRequest,
        path: &TxnPath,
    ) -> Result<TxnResponse, MvccError> {
        let mut nested = path.nested.iter();
        let mut responses = Vec::new();
        for op in branch(req, path.succeeded) {
            responses.push(match op {
                RequestOp::Range(r) => ResponseOp::Range(self.range(r)?),
                RequestOp::Put(p) => ResponseOp::Put(self.put(p)?),
                RequestOp::DeleteRange(d) => ResponseOp::DeleteRange(self.delete_range(d)?),
                RequestOp::Txn(t) => ResponseOp::Txn(self.txn(t, next_path(&mut nested)?)?),
            });
        }
        Ok(TxnResponse {
            succeeded: path.succeeded,
            responses,
        })
    }

    /// Stages the writes in `batch` as the versions of one new revision, in the order of the
    /// keys' first writes, with the lease attachment changes; returns what was written, or `None`
    /// if nothing was (the revision does not move).
    pub(crate) fn commit(mut self, batch: &mut WriteBatch) -> Result<Option<Written>, StoreError> {
        if self.changed.is_empty() {
            return Ok(None);
        }
        let revision = self.revision();
        let mut changes = Vec::with_capacity(self.changed.len());
        for (seq, (key, before)) in self.changed.into_iter().enumerate() {
            let after = self.writes.remove(&key).ok_or_else(|| {
                StoreError::corrupt("txn writes", "a changed key has no write (bug)")
            })?;
            let seq = u32::try_from(seq).map_err(|_| {
                StoreError::corrupt("txn writes", "more than 2^32 keys in one revision")
            })?;
            let version = match &after {
                Some(record) => codec::history_put(&key, record)?,
                None => codec::history_tombstone(&key)?,
            };
            batch.insert(codec::history_key(revision, seq), version);
            let old_lease = before.as_ref().map_or(0, Prior::lease);
            let new_lease = after.as_ref().map_or(0, |r| r.lease);
            if old_lease != new_lease {
                if old_lease != 0 {
                    batch.remove(codec::attachment_key(old_lease, &key));
                }
                if new_lease != 0 {
                    batch.insert(codec::attachment_key(new_lease, &key), []);
                }
            }
            changes.push(ChangedKey { key, before, after });
        }
        // The store's revision (in the progress record) is written once per atomic write, by `finish`.
        Ok(Some(Written { revision, changes }))
    }
}

fn branch(req: &TxnRequest, succeeded: bool) -> &[RequestOp] {
    if succeeded {
        &req.success
    } else {
        &req.failure
    }
}

/// The path of the next nested Txn. `compare_path` made one per nested Txn of the same branch,
/// so running out is a bug, reported rather than panicking inside the state machine.
fn next_path<'p>(it: &mut std::slice::Iter<'p, TxnPath>) -> Result<&'p TxnPath, StoreError> {
    it.next().ok_or_else(|| {
        StoreError::corrupt("txn path", "fewer decided paths than nested txns (bug)")
    })
}

/// etcd's `compareKV`.
fn compare_kv(c: &Compare, kv: &KeyValue) -> bool {
    let ord = match &c.target {
        CompareTarget::Version(v) => kv.version.cmp(v),
        CompareTarget::Create(v) => kv.create_revision.cmp(v),
        CompareTarget::Mod(v) => kv.mod_revision.cmp(v),
        CompareTarget::Value(v) => kv.value.as_slice().cmp(v.as_slice()),
        CompareTarget::Lease(v) => kv.lease.cmp(v),
    };
    match c.result {
        CompareResult::Equal => ord.is_eq(),
        CompareResult::NotEqual => ord.is_ne(),
        CompareResult::Greater => ord.is_gt(),
        CompareResult::Less => ord.is_lt(),
    }
}

/// etcd's compaction at `revision`: from now on reads below `revision` fail, and the versions
/// it superseded (per key, those older than the latest one `<= revision`, and that one too if
/// it is a delete) are removed from history in the background by the [`crate::compactor`].
pub(crate) fn compact(
    state: &MvccState,
    revision: i64,
    batch: &mut WriteBatch,
) -> Result<(), MvccError> {
    if revision <= state.compact_revision {
        return Err(ApplyError::Compacted.into());
    }
    if revision > state.revision {
        return Err(ApplyError::FutureRevision.into());
    }
    batch.insert(META_COMPACT, codec::encode("compact revision", &revision)?);
    Ok(())
}
