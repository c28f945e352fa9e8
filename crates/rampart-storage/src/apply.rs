//! Applying one log entry to the MVCC store, with etcd's semantics.
//!
//! An entry is executed in three steps, all under the store's write lock:
//! 1. decide: compares (for a Txn, every compare on the chosen path, nested ones included) and
//!    checks (leases, `ignore_*` keys, read revisions) run against the state before the entry;
//!    any [`ApplyError`] here fails the whole command with nothing changed;
//! 2. execute: the ops write into an in-memory overlay ([`Writes`]) that later reads of the same
//!    entry merge over the tree (a Txn reads its own writes);
//! 3. commit: the overlay, the new revision, the applied log id and any bookkeeping become ONE
//!    sled batch. The cached state is updated only after the batch is in.

use openraft::{EntryPayload, StoredMembership};

use crate::codec::{
    self, KeyRecord, HISTORY, META_APPLIED, META_COMPACT, META_MEMBERSHIP, META_REVISION,
};
use crate::error::{MvccError, StoreError};
use crate::mvcc::{MvccCore, MvccState};
use crate::range::{self, Collector, KeyRange, Writes};
use crate::types::{
    ApplyError, Command, CommandResponse, CommandResult, Compare, CompareResult, CompareTarget,
    DeleteRangeRequest, DeleteRangeResponse, KeyValue, MemberAttributes, NodeId, PeerNode,
    PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp, ResponseOp, TxnRequest,
    TxnResponse, TypeConfig,
};

/// Checks that a lease exists. There is no lease store yet, so every lease but "none" (0) is
/// unknown; when leases arrive this is the one place to ask them.
pub(crate) fn check_lease(lease: i64) -> Result<(), ApplyError> {
    if lease == 0 {
        Ok(())
    } else {
        Err(ApplyError::LeaseNotFound)
    }
}

/// What an applied entry changes in the cached [`MvccState`], set in memory only once the batch
/// carrying the same changes is in the tree.
#[derive(Default)]
struct Changes {
    revision: Option<i64>,
    compact_revision: Option<i64>,
    membership: Option<StoredMembership<NodeId, PeerNode>>,
    member: Option<MemberAttributes>,
}

impl MvccCore {
    /// Applies one entry: its effects, its applied log id and any membership in one atomic batch.
    pub(crate) fn apply_entry(
        &self,
        entry: &openraft::Entry<TypeConfig>,
    ) -> Result<CommandResponse, StoreError> {
        let mut state = self.state.write();
        let mut batch = sled::Batch::default();
        let mut changes = Changes::default();
        let result = match &entry.payload {
            EntryPayload::Blank => Ok(CommandResult::Empty),
            EntryPayload::Normal(cmd) => {
                match execute(&self.tree, &state, cmd, &mut batch, &mut changes) {
                    Ok(r) => Ok(r),
                    Err(MvccError::Apply(e)) => {
                        // A failed command changes nothing: drop whatever it may have staged.
                        batch = sled::Batch::default();
                        changes = Changes::default();
                        Err(e)
                    }
                    Err(MvccError::Store(e)) => return Err(e),
                }
            }
            EntryPayload::Membership(m) => {
                let stored = StoredMembership::new(Some(entry.log_id), m.clone());
                batch.insert(META_MEMBERSHIP, codec::encode("membership", &stored)?);
                changes.membership = Some(stored);
                Ok(CommandResult::Empty)
            }
        };
        batch.insert(
            META_APPLIED,
            codec::encode("applied log id", &Some(entry.log_id))?,
        );
        self.tree.apply_batch(batch)?;
        // In the tree now, atomically: the entry's data, the revision and the applied log id. It
        // is durable at sled's next flush (every log append, vote and snapshot flushes the whole
        // db; sled also flushes on its own timer). Until then a crash only rolls the state machine
        // back to an earlier applied id, whose later entries are still in the flushed log
        // (purging needs a snapshot, and building one flushes), and openraft re-applies them.
        if let Some(r) = changes.revision {
            state.revision = r;
        }
        if let Some(c) = changes.compact_revision {
            state.compact_revision = c;
        }
        if let Some(m) = changes.membership {
            state.membership = m;
        }
        if let Some(a) = changes.member {
            state.members.insert(a.id, a);
        }
        state.applied = Some(entry.log_id);
        Ok(CommandResponse {
            revision: state.revision,
            result,
        })
    }
}

/// Executes a command against `state`, staging its writes in `batch` and its cache updates in
/// `changes`. On `Err(MvccError::Apply)` the caller must discard both.
fn execute(
    tree: &sled::Tree,
    state: &MvccState,
    cmd: &Command,
    batch: &mut sled::Batch,
    changes: &mut Changes,
) -> Result<CommandResult, MvccError> {
    let mut txn = WriteTxn::new(tree, state);
    let result = match cmd {
        Command::Put(req) => CommandResult::Put(txn.put(req)?),
        Command::DeleteRange(req) => CommandResult::DeleteRange(txn.delete_range(req)?),
        Command::Txn(req) => {
            let path = txn.compare_path(req)?;
            txn.validate(req, &path)?;
            CommandResult::Txn(txn.txn(req, &path)?)
        }
        Command::Compact { revision } => {
            compact(tree, state, *revision, batch)?;
            changes.compact_revision = Some(*revision);
            CommandResult::Compact
        }
        Command::Publish(attrs) => {
            batch.insert(
                codec::member_key(attrs.id),
                codec::encode("member attributes", attrs)?,
            );
            changes.member = Some(attrs.clone());
            CommandResult::Publish
        }
    };
    changes.revision = txn.commit(batch)?;
    Ok(result)
}

/// Which branch each Txn on a path takes, decided before anything is written (etcd's
/// `compareToPath`): `nested` has one entry per Txn op of the chosen branch, in order.
struct TxnPath {
    succeeded: bool,
    nested: Vec<TxnPath>,
}

/// The writes of one entry over the state before it; all its writes get revision `base + 1`.
struct WriteTxn<'a> {
    tree: &'a sled::Tree,
    base_revision: i64,
    compact_revision: i64,
    writes: Writes,
}

impl<'a> WriteTxn<'a> {
    fn new(tree: &'a sled::Tree, state: &MvccState) -> Self {
        WriteTxn {
            tree,
            base_revision: state.revision,
            compact_revision: state.compact_revision,
            writes: Writes::new(),
        }
    }

    /// The revision this entry's writes create.
    fn revision(&self) -> i64 {
        self.base_revision + 1
    }

    fn latest(&self, key: &[u8]) -> Result<Option<KeyRecord>, StoreError> {
        range::get_latest(self.tree, &self.writes, key)
    }

    /// The checks etcd makes before a put (leases first, as its plain Put does; then the key the
    /// `ignore_*` flags need).
    fn check_put(&self, req: &PutRequest) -> Result<(), MvccError> {
        check_lease(req.lease)?;
        if (req.ignore_value || req.ignore_lease) && self.latest(&req.key)?.is_none() {
            return Err(ApplyError::KeyNotFound.into());
        }
        Ok(())
    }

    fn put(&mut self, req: &PutRequest) -> Result<PutResponse, MvccError> {
        self.check_put(req)?;
        let prev = self.latest(&req.key)?;
        let revision = self.revision();
        let record = match &prev {
            Some(p) => KeyRecord {
                create_revision: p.create_revision,
                mod_revision: revision,
                version: p.version + 1,
                lease: if req.ignore_lease { p.lease } else { req.lease },
                value: if req.ignore_value {
                    p.value.clone()
                } else {
                    req.value.clone()
                },
            },
            // check_put has refused ignore_* on a missing key.
            None => KeyRecord {
                create_revision: revision,
                mod_revision: revision,
                version: 1,
                lease: req.lease,
                value: req.value.clone(),
            },
        };
        self.writes.insert(req.key.clone(), Some(record));
        Ok(PutResponse {
            prev_kv: prev
                .filter(|_| req.prev_kv)
                .map(|p| p.into_kv(req.key.clone())),
        })
    }

    fn delete_range(
        &mut self,
        req: &DeleteRangeRequest,
    ) -> Result<DeleteRangeResponse, StoreError> {
        let mut victims = Collector::all();
        range::scan_latest(
            self.tree,
            &self.writes,
            &KeyRange::new(&req.key, &req.range_end),
            &mut victims,
        )?;
        for kv in &victims.kvs {
            self.writes.insert(kv.key.clone(), None);
        }
        Ok(DeleteRangeResponse {
            deleted: victims.count,
            prev_kvs: if req.prev_kv { victims.kvs } else { Vec::new() },
        })
    }

    fn range(&self, req: &RangeRequest) -> Result<RangeResponse, MvccError> {
        range::read_range(
            self.tree,
            &self.writes,
            self.base_revision,
            self.compact_revision,
            req,
        )
    }

    /// Evaluates the compares of `req` and of every nested Txn on the chosen path, all against
    /// the state before the Txn (etcd's `compareToPath`).
    fn compare_path(&self, req: &TxnRequest) -> Result<TxnPath, StoreError> {
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
    fn validate(&self, req: &TxnRequest, path: &TxnPath) -> Result<(), MvccError> {
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
    fn txn(&mut self, req: &TxnRequest, path: &TxnPath) -> Result<TxnResponse, MvccError> {
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

    /// Stages the writes in `batch` under one new revision; returns it, or `None` if nothing was
    /// written (the revision does not move).
    fn commit(self, batch: &mut sled::Batch) -> Result<Option<i64>, StoreError> {
        if self.writes.is_empty() {
            return Ok(None);
        }
        let revision = self.revision();
        for (key, write) in &self.writes {
            match write {
                Some(record) => {
                    batch.insert(codec::latest_key(key), codec::encode("key record", record)?);
                    batch.insert(
                        codec::history_key(key, revision),
                        codec::history_put(record)?,
                    );
                }
                None => {
                    batch.remove(codec::latest_key(key));
                    batch.insert(
                        codec::history_key(key, revision),
                        codec::history_tombstone(),
                    );
                }
            }
        }
        batch.insert(META_REVISION, codec::encode("store revision", &revision)?);
        Ok(Some(revision))
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

/// etcd's compaction: removes from history every version superseded at or before `revision`.
/// Per key, the latest version `<= revision` stays, unless it is a delete, which goes too (reads
/// at `>= revision` then find nothing, as they should). Newer versions are untouched.
fn compact(
    tree: &sled::Tree,
    state: &MvccState,
    revision: i64,
    batch: &mut sled::Batch,
) -> Result<(), MvccError> {
    if revision <= state.compact_revision {
        return Err(ApplyError::Compacted.into());
    }
    if revision > state.revision {
        return Err(ApplyError::FutureRevision.into());
    }
    // The last version <= revision of the key being scanned: (tree key, is a tombstone).
    let mut candidate: Option<(sled::IVec, bool)> = None;
    let mut group: Vec<u8> = Vec::new();
    for item in tree.scan_prefix([HISTORY]) {
        let (k, v) = item?;
        let (head, rev) = codec::split_history_key(&k)?;
        if head != group.as_slice() {
            if let Some((old, true)) = candidate.take() {
                batch.remove(old);
            }
            group = head.to_vec();
        }
        if rev > revision {
            // Newer than the compaction point: this key's survivor (if any) is decided.
            if let Some((old, true)) = candidate.take() {
                batch.remove(old);
            }
            continue;
        }
        let tombstone = codec::history_record_bytes(&v)?.is_none();
        if let Some((old, _)) = candidate.replace((k, tombstone)) {
            batch.remove(old); // superseded at or before `revision`
        }
    }
    if let Some((old, true)) = candidate {
        batch.remove(old);
    }
    batch.insert(META_COMPACT, codec::encode("compact revision", &revision)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, Entry, LogId};

    use super::*;
    use crate::types::{DeleteRangeRequest, PutRequest};

    /// The history versions physically in the tree, as `key@revision` (`-` marks a delete).
    fn history(core: &MvccCore) -> Vec<String> {
        core.tree
            .scan_prefix([HISTORY])
            .map(|item| {
                let (k, v) = item.unwrap();
                let (head, rev) = codec::split_history_key(&k).unwrap();
                let key = codec::decode_user_key(&head[1..]).unwrap().0;
                let dead = codec::history_record_bytes(&v).unwrap().is_none();
                format!(
                    "{}{}@{rev}",
                    if dead { "-" } else { "" },
                    String::from_utf8(key).unwrap()
                )
            })
            .collect()
    }

    #[test]
    fn compaction_physically_removes_superseded_versions_and_tombstones() {
        let dir = tempfile::TempDir::new().unwrap();
        let store = crate::Store::open(dir.path()).unwrap();
        let core = store.core_for_tests();
        let mut index = 0;
        let mut apply = |cmd: Command| {
            index += 1;
            let entry = Entry::<TypeConfig> {
                log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
                payload: EntryPayload::Normal(cmd),
            };
            core.apply_entry(&entry).unwrap()
        };
        let put = |k: &str| {
            Command::Put(PutRequest {
                key: k.into(),
                value: b"v".to_vec(),
                ..Default::default()
            })
        };
        apply(put("a")); // 2
        apply(put("b")); // 3
        apply(put("a")); // 4
        apply(Command::DeleteRange(DeleteRangeRequest {
            key: b"b".to_vec(),
            ..Default::default()
        })); // 5
        apply(put("c")); // 6
        assert_eq!(history(&core), ["a@2", "a@4", "b@3", "-b@5", "c@6"]);

        assert_eq!(
            apply(Command::Compact { revision: 4 }).result,
            Ok(CommandResult::Compact)
        );
        assert_eq!(
            history(&core),
            ["a@4", "b@3", "-b@5", "c@6"],
            "a@2 was superseded at 4"
        );

        assert_eq!(
            apply(Command::Compact { revision: 5 }).result,
            Ok(CommandResult::Compact)
        );
        assert_eq!(
            history(&core),
            ["a@4", "c@6"],
            "b's delete at 5 takes its whole history"
        );

        assert_eq!(
            apply(Command::Compact { revision: 6 }).result,
            Ok(CommandResult::Compact)
        );
        assert_eq!(
            history(&core),
            ["a@4", "c@6"],
            "the latest version of a live key always stays"
        );
    }
}
