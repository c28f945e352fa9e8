//! Applying one log entry to the MVCC store: the entry-level work, one dispatch as etcd's
//! `apply/uber_applier.go`. [`MvccCore::apply_entry`] takes a batch entry apart (a run of puts
//! of distinct keys goes in as one write), [`execute`] turns each command into its writes
//! (etcd's Put, DeleteRange, Txn and Compact through [`crate::write_txn`], leases through
//! [`crate::lease`]), and `finish` writes them with the entry's progress and updates the cached
//! state, the key index and the watch feed.
//!
//! An entry is executed in three steps, all under the store's write lock:
//! 1. decide: compares (for a Txn, every compare on the chosen path, nested ones included) and
//!    checks (leases, `ignore_*` keys, read revisions) run against the state before the entry;
//!    any [`ApplyError`] here fails the whole command with nothing changed;
//! 2. execute: the ops write into an in-memory overlay ([`crate::range::Writes`]) that later
//!    reads of the same entry merge over the tree (a Txn reads its own writes), and note each
//!    key's record before the entry, in op order;
//! 3. commit: the overlay's versions (in history, under the new revision), the lease
//!    attachments it changes, any bookkeeping and, last, the progress record (the revision and
//!    the applied log id) become ONE [`WriteBatch`], written atomically through
//!    [`crate::redo`]. The cached state and the key index are updated only
//!    after it is in; then the revision's events go to the live watch feed.
//!
//! Steps 1 and 2, and the staging of step 3, are [`WriteTxn`]'s; the write and what follows it
//! are this module's.

use std::sync::Arc;

use openraft::{EntryPayload, LogId, Membership, StoredMembership};

use crate::alarms;
use crate::auth::AuthState;
use crate::codec::{self, Live, Progress, META_MEMBERSHIP, META_PROGRESS};
use crate::error::{MvccError, StoreError};
use crate::events::Written;
use crate::index::Version;
use crate::key_range::KeyRange;
use crate::lease;
use crate::mvcc::{MvccCore, MvccState};
use crate::redo::WriteBatch;
use crate::types::{
    AlarmAction, AlarmMember, ApplyError, Command, CommandResponse, CommandResult, LeaseChange,
    MemberAttributes, NodeId, PeerNode, TypeConfig,
};
use crate::write_txn::{self, WriteTxn};

/// What an applied entry changes in the cached [`MvccState`], set in memory only once the batch
/// carrying the same changes is in the tree.
#[derive(Default)]
struct Changes {
    /// The revision the entry created and the keys it changed, for the watch feed.
    written: Option<Written>,
    compact_revision: Option<i64>,
    membership: Option<StoredMembership<NodeId, PeerNode>>,
    member: Option<MemberAttributes>,
    /// A grant or revoke, for the lease feeds.
    lease: Option<LeaseChange>,
    /// An alarm raised or cleared.
    alarm: Option<(AlarmAction, AlarmMember)>,
    /// The auth store after a [`Command::Auth`].
    auth: Option<Arc<AuthState>>,
}

/// At most this many keys are touched by entries that [`MvccCore::quick_to_apply`] calls quick:
/// a few milliseconds of sled writes.
const QUICK_KEYS: usize = 128;

impl MvccCore {
    /// Whether applying `entries` now is quick: nobody holds the state's lock, and together they
    /// touch at most [`QUICK_KEYS`] keys (see [`Command::keys_touched`]; the ranges they read or
    /// delete counted in the key index, which only the applier adds to).
    pub(crate) fn quick_to_apply(&self, entries: &[openraft::Entry<TypeConfig>]) -> bool {
        let Some(state) = self.state.try_write() else {
            return false;
        };
        let mut keys_in = |key: &[u8], range_end: &[u8]| {
            state
                .index
                .keys_within(&KeyRange::new(key, range_end), QUICK_KEYS + 1)
        };
        let keys = entries
            .iter()
            .map(|entry| match &entry.payload {
                EntryPayload::Normal(command) => command.keys_touched(&mut keys_in),
                EntryPayload::Blank | EntryPayload::Membership(_) => Some(0),
            })
            .sum::<Option<usize>>();
        keys.is_some_and(|keys| keys <= QUICK_KEYS)
    }

    /// Applies one entry: its effects, its applied log id and any membership in one atomic write.
    /// A [`Command::Batch`] entry applies each of its commands that way in turn, the last one
    /// recording the entry as applied (and each one its own position, so that a restart in the
    /// middle resumes after it rather than applying any twice).
    pub(crate) fn apply_entry(
        &self,
        entry: &openraft::Entry<TypeConfig>,
    ) -> Result<CommandResponse, StoreError> {
        let mut state = self.state.write();
        let effect = match &entry.payload {
            EntryPayload::Normal(Command::Batch(commands)) if !commands.is_empty() => {
                return self.apply_batch(&mut state, entry.log_id, commands)
            }
            EntryPayload::Normal(Command::Batch(_)) | EntryPayload::Blank => Effect::Nothing,
            EntryPayload::Normal(command) => Effect::Command(command),
            EntryPayload::Membership(m) => Effect::Membership(m),
        };
        self.apply_part(&mut state, entry.log_id, effect, None)
    }

    /// Applies the commands of batch entry `log_id` one by one, skipping those applied before a
    /// restart.
    fn apply_batch(
        &self,
        state: &mut MvccState,
        log_id: LogId<NodeId>,
        commands: &[Command],
    ) -> Result<CommandResponse, StoreError> {
        let done = match state.applied_part {
            Some((id, position)) if id == log_id => position as usize + 1,
            _ => 0,
        };
        let mut responses = Vec::with_capacity(commands.len());
        // Applied before a restart; no client waits for their answers any more.
        for _ in 0..done.min(commands.len()) {
            responses.push(CommandResponse {
                revision: state.revision,
                result: Ok(CommandResult::Empty),
            });
        }
        let mut position = done;
        while position < commands.len() {
            let end = put_run_end(commands, position);
            let part = Part {
                position: u32::try_from(end - 1).map_err(|_| {
                    StoreError::corrupt("batch entry", "more than 2^32 commands in one entry")
                })?,
                last: end == commands.len(),
            };
            if end - position > 1 {
                responses.extend(self.apply_puts(state, log_id, &commands[position..end], part)?);
            } else {
                let effect = Effect::Command(&commands[position]);
                responses.push(self.apply_part(state, log_id, effect, Some(part))?);
            }
            position = end;
        }
        Ok(CommandResponse {
            revision: state.revision,
            result: Ok(CommandResult::Batch(responses)),
        })
    }

    /// Applies one command (or a whole non-batch entry, when `part` is `None`) of entry `log_id`
    /// in one atomic write. Visible to the crate (with [`Effect`] and [`Part`]) for `mvcc.rs`'s
    /// tests, which stage a batch entry cut short by a crash.
    pub(crate) fn apply_part(
        &self,
        state: &mut MvccState,
        log_id: LogId<NodeId>,
        effect: Effect<'_>,
        part: Option<Part>,
    ) -> Result<CommandResponse, StoreError> {
        let mut batch = WriteBatch::default();
        let mut changes = Changes::default();
        let result = match effect {
            Effect::Nothing => Ok(CommandResult::Empty),
            // A batch inside a batch is refused by `execute`.
            Effect::Command(cmd) => {
                match execute(&self.tree(), state, cmd, &mut batch, &mut changes) {
                    Ok(r) => Ok(r),
                    Err(MvccError::Apply(e)) => {
                        // A failed command changes nothing: drop whatever it may have staged.
                        batch = WriteBatch::default();
                        changes = Changes::default();
                        Err(e)
                    }
                    Err(MvccError::Store(e)) => return Err(e),
                }
            }
            Effect::Membership(m) => {
                let stored = StoredMembership::new(Some(log_id), m.clone());
                batch.insert(META_MEMBERSHIP, codec::encode("membership", &stored)?);
                changes.membership = Some(stored);
                Ok(CommandResult::Empty)
            }
        };
        self.finish(state, log_id, part, batch, vec![changes])?;
        Ok(CommandResponse {
            revision: state.revision,
            result,
        })
    }

    /// Applies a run of puts of batch entry `log_id`, each of a different key, in one atomic
    /// write: each at its own revision with its own response, as if applied one by one (the
    /// keys are distinct, so none reads another's write), a failing one changing nothing. `part`
    /// is the run's last command. One progress record (and, for puts with leases, one redo
    /// record) serves the whole run instead of one per put.
    fn apply_puts(
        &self,
        state: &mut MvccState,
        log_id: LogId<NodeId>,
        puts: &[Command],
        part: Part,
    ) -> Result<Vec<CommandResponse>, StoreError> {
        let mut batch = WriteBatch::default();
        let mut changes = Vec::with_capacity(puts.len());
        let mut responses = Vec::with_capacity(puts.len());
        let mut revision = state.revision;
        for command in puts {
            let Command::Put(req) = command else {
                return Err(StoreError::corrupt(
                    "put run",
                    "a command other than a put (bug)",
                ));
            };
            let tree = self.tree();
            let mut txn = WriteTxn::at(&tree, &state.index, revision, state.compact_revision);
            let refused = alarms::refusal(&state.alarms, command)
                .or_else(|| state.auth.refusal_without_user(command));
            let result = match refused.map_or_else(|| txn.put(req), |e| Err(e.into())) {
                Ok(response) => {
                    let written = txn.commit(&mut batch)?;
                    if let Some(w) = &written {
                        revision = w.revision;
                    }
                    changes.push(Changes {
                        written,
                        ..Changes::default()
                    });
                    Ok(CommandResult::Put(response))
                }
                // Refused before writing anything: nothing of it is in `batch`.
                Err(MvccError::Apply(e)) => Err(e),
                Err(MvccError::Store(e)) => return Err(e),
            };
            responses.push(CommandResponse { revision, result });
        }
        self.finish(state, log_id, Some(part), batch, changes)?;
        Ok(responses)
    }

    /// Writes `batch`, the effect of one part of entry `log_id` (the whole entry when `part` is
    /// `None`), with the bookkeeping that goes with it, then updates the cached state from
    /// `changes` (one per command, in order) and feeds their events to watchers.
    fn finish(
        &self,
        state: &mut MvccState,
        log_id: LogId<NodeId>,
        part: Option<Part>,
        mut batch: WriteBatch,
        changes: Vec<Changes>,
    ) -> Result<(), StoreError> {
        let finishes_entry = part.is_none_or(|p| p.last);
        let progress = Progress {
            revision: changes
                .iter()
                .filter_map(|c| c.written.as_ref().map(|w| w.revision))
                .next_back()
                .unwrap_or(state.revision),
            applied: if finishes_entry {
                Some(log_id)
            } else {
                state.applied
            },
            applied_part: part.filter(|p| !p.last).map(|p| (log_id, p.position)),
        };
        // New versions past the recorded revision are invisible until the progress record
        // that follows them: should a crash cut them short, opening the tree drops them.
        let needs_record = !batch.only_adds_history_past(state.revision);
        batch.insert(META_PROGRESS, codec::encode("progress", &progress)?);
        let grown = self
            .redo
            .commit(&self.tree(), &log_id, &batch, needs_record)?;
        self.live_bytes_grew(grown);
        self.note_changed_in_place(&batch);
        // In the tree now, atomically: the entry's data, the revision and the applied log id. It
        // is durable at the database's next flush (a vote, a purge, a snapshot, shutdown) or
        // when sled writes its buffers out. Until then a crash only rolls the state machine back
        // to an earlier applied id, whose later entries are still in the synced log (purging
        // needs a snapshot, and building one flushes), and openraft re-applies them.
        for changes in changes {
            self.update(state, changes)?;
        }
        state.set_progress(progress);
        Ok(())
    }

    /// Updates the cached state and the key index with one command's `changes`, now in the tree,
    /// and sends its events to the live watch feed.
    fn update(&self, state: &mut MvccState, changes: Changes) -> Result<(), StoreError> {
        if let Some(w) = &changes.written {
            state.revision = w.revision;
            for (seq, change) in (0..).zip(&w.changes) {
                let version = Version {
                    revision: w.revision,
                    seq,
                    tombstone: change.after.is_none(),
                };
                let live = change.after.as_ref().map(|r| Live {
                    create_revision: r.create_revision,
                    version: r.version,
                    lease: r.lease,
                });
                state.index.push(&change.key, version, live);
            }
        }
        if let Some(c) = changes.compact_revision {
            state.compact_revision = c;
            // The versions it superseded go in the background (see `compactor`).
            self.compactor.wake();
        }
        if let Some(m) = changes.membership {
            state.membership = m;
        }
        if let Some(a) = changes.member {
            state.members.insert(a.id, a);
        }
        if let Some((action, alarm)) = changes.alarm {
            match action {
                AlarmAction::Activate => state.alarms.insert(alarm),
                AlarmAction::Deactivate => state.alarms.remove(&alarm),
            };
            self.publish_alarms(state);
        }
        if let Some(auth) = changes.auth {
            state.auth = auth;
            self.publish_auth(state);
        }
        if let Some(change) = changes.lease {
            // Under the write lock, in apply order, like the watch feed below.
            self.lease_feeds.send(change);
        }
        if let Some(written) = changes.written {
            // Sent while the write lock is still held, with the revision now visible. Skipping
            // the send when no one listens is safe: a subscriber not counted here subscribes
            // after this point, and its next `Mvcc::revision()` waits for this lock, sees this
            // revision, and replays it from history. It saves building the events (reading and
            // cloning values) for no one. Likewise previous values are read only for the keys
            // of the `prev_kv` watchers registered now: one registered later subscribed later
            // (see `Mvcc::subscribe_with_prev_kv`), so it never receives this revision.
            if self.feed.has_subscribers() {
                let wanted = self.feed.prev_kv_ranges();
                let (events, reads) =
                    written.into_events(&self.tree(), |key| wanted.contains(key))?;
                self.feed.count_prev_reads(reads);
                self.feed.send_revision(events);
            }
        }
        Ok(())
    }
}

/// A run of puts longer than this many bytes of keys and values is cut: its redo record (if
/// it needs one) holds them all, and sled stores a value larger than a quarter of its segment (64 KiB here) as a
/// file of its own, which is slow to write.
const MAX_RUN_BYTES: usize = 16 * 1024;

/// The end (exclusive) of the run of puts that starts at `start`: puts of keys not put before
/// in the run, at most [`MAX_RUN_BYTES`] of them. Always past `start`, which may be any command.
fn put_run_end(commands: &[Command], start: usize) -> usize {
    let mut keys = std::collections::HashSet::new();
    let mut bytes = 0;
    let mut end = start;
    for command in &commands[start..] {
        let Command::Put(req) = command else {
            break;
        };
        bytes += req.key.len() + req.value.len();
        if end > start && bytes > MAX_RUN_BYTES || !keys.insert(req.key.as_slice()) {
            break;
        }
        end += 1;
    }
    end.max(start + 1)
}

/// What one atomic write of [`MvccCore::apply_part`] carries out.
pub(crate) enum Effect<'a> {
    /// Only the applied log id (a blank entry).
    Nothing,
    Command(&'a Command),
    Membership(&'a Membership<NodeId, PeerNode>),
}

/// Which command of a batch entry is being applied.
#[derive(Clone, Copy)]
pub(crate) struct Part {
    pub position: u32,
    /// The entry's last command: applying it applies the entry.
    pub last: bool,
}

/// Executes a command against `state`, staging its writes in `batch` and its cache updates in
/// `changes`. On `Err(MvccError::Apply)` the caller must discard both.
fn execute(
    tree: &sled::Tree,
    state: &MvccState,
    cmd: &Command,
    batch: &mut WriteBatch,
    changes: &mut Changes,
) -> Result<CommandResult, MvccError> {
    if let Command::AsUser { user, command } = cmd {
        if matches!(**command, Command::AsUser { .. } | Command::Batch(_)) {
            return Err(ApplyError::NestedUser.into());
        }
        // Against the auth store as it is now, whatever it was when the request was checked.
        let lease_keys = |id| lease::keys(tree, id);
        state.auth.check_command(user, command, &lease_keys)??;
        return run(tree, state, command, batch, changes);
    }
    if let Some(refused) = state.auth.refusal_without_user(cmd) {
        return Err(refused.into());
    }
    run(tree, state, cmd, batch, changes)
}

/// Executes `cmd`, once [`execute`] has checked whose it is.
fn run(
    tree: &sled::Tree,
    state: &MvccState,
    cmd: &Command,
    batch: &mut WriteBatch,
    changes: &mut Changes,
) -> Result<CommandResult, MvccError> {
    if let Some(refused) = alarms::refusal(&state.alarms, cmd) {
        return Err(refused.into());
    }
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
            write_txn::compact(state, *revision, batch)?;
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
        Command::LeaseGrant { id, ttl } => {
            lease::grant(tree, *id, *ttl, batch)?;
            changes.lease = Some(LeaseChange::Granted { id: *id, ttl: *ttl });
            CommandResult::LeaseGrant { id: *id, ttl: *ttl }
        }
        Command::LeaseRevoke { id } => {
            // Key order, as etcd's revoke sorts them; all in this one revision (none if the
            // lease had no keys).
            for key in lease::remove(tree, *id, batch)? {
                txn.delete_key(key)?;
            }
            changes.lease = Some(LeaseChange::Revoked { id: *id });
            CommandResult::LeaseRevoke
        }
        Command::LeaseCheckpoint { checkpoints } => {
            lease::checkpoint(tree, checkpoints, batch)?;
            CommandResult::LeaseCheckpoint
        }
        // `apply_entry` takes batches apart; one inside a batch is refused before this.
        Command::Batch(_) => return Err(ApplyError::NestedBatch.into()),
        Command::Alarm { action, alarm } => {
            let changed = alarms::apply(&state.alarms, *action, *alarm, batch);
            changes.alarm = changed.map(|a| (*action, a));
            CommandResult::Alarm(changed.into_iter().collect())
        }
        // Taken apart above: only one inside another reaches here.
        Command::AsUser { .. } => return Err(ApplyError::NestedUser.into()),
        Command::Auth(command) => {
            let next = state.auth.after(command)?;
            state.auth.stage(&next, batch)?;
            let revision = next.revision();
            changes.auth = Some(Arc::new(next));
            CommandResult::Auth { revision }
        }
    };
    changes.written = txn.commit(batch)?;
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{entry, history, log_id, progress, put_cmd, replay};
    use crate::types::{
        Compare, CompareResult, CompareTarget, DeleteRangeRequest, PutRequest, RangeRequest,
        RequestOp, TxnRequest,
    };

    fn batch_revisions(response: &CommandResponse) -> Vec<(i64, bool)> {
        match &response.result {
            Ok(CommandResult::Batch(parts)) => parts
                .iter()
                .map(|p| (p.revision, p.result.is_ok()))
                .collect(),
            other => panic!("expected a batch answer, got {other:?}"),
        }
    }

    /// A lock's txn: create `name/<id>` if absent, and read the oldest key under `name/`.
    fn lock_txn(name: &str, id: u32) -> Command {
        let key = format!("{name}/{id:x}").into_bytes();
        let prefix = format!("{name}/").into_bytes();
        let mut range_end = prefix.clone();
        *range_end.last_mut().unwrap() += 1;
        Command::Txn(TxnRequest {
            compare: vec![Compare {
                result: CompareResult::Equal,
                target: CompareTarget::Create(0),
                key: key.clone(),
                range_end: Vec::new(),
            }],
            success: vec![
                RequestOp::Put(PutRequest {
                    key,
                    ..Default::default()
                }),
                RequestOp::Range(RangeRequest {
                    key: prefix,
                    range_end,
                    limit: 1,
                    ..Default::default()
                }),
            ],
            failure: vec![],
        })
    }

    /// Quick entries (applied on the runtime's worker itself) touch few keys, counting the keys
    /// their ranges hold now; the rest, and any entry while the state is locked, are not.
    #[test]
    fn entries_touching_few_keys_with_the_state_unlocked_are_quick_to_apply() {
        let dir = tempfile::TempDir::new().unwrap();
        let store = crate::Store::open(dir.path()).unwrap();
        let core = store.core_for_tests();
        let puts = |prefix: &str, n: usize| -> Vec<Command> {
            (0..n)
                .map(|i| put_cmd(&format!("{prefix}{i:04}"), "v"))
                .collect()
        };
        core.apply_entry(&entry(1, Command::Batch(puts("many/", 200))))
            .unwrap();
        core.apply_entry(&entry(
            2,
            Command::Batch(vec![lock_txn("few", 1), lock_txn("few", 2)]),
        ))
        .unwrap();
        let quick = |command: Command| core.quick_to_apply(&[entry(3, command)]);
        let delete = |key: &str, range_end: &str| {
            Command::DeleteRange(DeleteRangeRequest {
                key: key.into(),
                range_end: range_end.into(),
                ..Default::default()
            })
        };

        assert!(quick(Command::Batch(puts("new/", QUICK_KEYS))));
        assert!(quick(lock_txn("few", 3)), "a lock's txn over a short queue");
        assert!(quick(delete("many/0001", "")));
        assert!(quick(delete("many/0001", "many/0100")), "99 keys");
        assert!(quick(Command::LeaseGrant { id: 7, ttl: 60 }));

        assert!(!quick(Command::Batch(puts("new/", QUICK_KEYS + 1))));
        assert!(!quick(delete("many/", "many0")), "200 keys");
        assert!(!quick(delete("\0", "\0")), "every key");
        assert!(!quick(lock_txn("many", 3)), "a txn reading 200 keys");
        assert!(!quick(Command::LeaseRevoke { id: 7 }));
        assert!(!quick(Command::Compact { revision: 2 }));
        assert!(
            !core.quick_to_apply(&[entry(3, put_cmd("a", "1")), entry(4, lock_txn("many", 3))]),
            "entries count together"
        );

        let reading = core.state.read();
        assert!(!quick(put_cmd("a", "1")), "a reader holds the state");
        drop(reading);
        assert!(quick(put_cmd("a", "1")));
    }

    #[test]
    fn a_batch_applies_each_command_at_its_own_revision_and_failures_stay_alone() {
        let dir = tempfile::TempDir::new().unwrap();
        let store = crate::Store::open(dir.path()).unwrap();
        let core = store.core_for_tests();
        let ignore_missing = Command::Put(PutRequest {
            key: b"missing".to_vec(),
            ignore_value: true,
            ..Default::default()
        });
        let response = core
            .apply_entry(&entry(
                1,
                Command::Batch(vec![put_cmd("a", "1"), ignore_missing, put_cmd("a", "2")]),
            ))
            .unwrap();
        // The failing put changes nothing and takes no revision; the others see each other.
        assert_eq!(
            batch_revisions(&response),
            [(2, true), (2, false), (3, true)]
        );
        assert_eq!(response.revision, 3);
        assert_eq!(history(&core), ["a@2", "a@3"]);
        assert_eq!(progress(&core), (3, Some(1), None));
    }

    #[test]
    fn a_run_of_puts_is_one_write_with_a_revision_and_an_answer_per_put() {
        let dir = tempfile::TempDir::new().unwrap();
        let ignore_missing = Command::Put(PutRequest {
            key: b"missing".to_vec(),
            ignore_value: true,
            ..Default::default()
        });
        let delete_b = Command::DeleteRange(DeleteRangeRequest {
            key: b"b".to_vec(),
            ..Default::default()
        });
        let commands = vec![
            put_cmd("a", "1"),
            put_cmd("b", "1"),
            ignore_missing,
            put_cmd("c", "1"),
            put_cmd("a", "2"),
            delete_b,
        ];
        // a, b, the failing put and c form one run; the second put of a starts the next.
        assert_eq!(put_run_end(&commands, 0), 4);
        assert_eq!(put_run_end(&commands, 4), 5);
        assert_eq!(
            put_run_end(&commands, 5),
            6,
            "a lone delete is a part of its own"
        );
        {
            let store = crate::Store::open(dir.path()).unwrap();
            let core = store.core_for_tests();
            let response = core
                .apply_entry(&entry(1, Command::Batch(commands)))
                .unwrap();
            assert_eq!(
                batch_revisions(&response),
                [
                    (2, true),
                    (3, true),
                    (3, false),
                    (4, true),
                    (5, true),
                    (6, true)
                ]
            );
            assert_eq!(history(&core), ["a@2", "a@5", "b@3", "-b@6", "c@4"]);
            assert_eq!(replay(&core, 1), ["2:a", "3:b", "4:c", "5:a", "6:-b"]);
            store.flush().unwrap();
        }
        // What was written, not only the cached state, says revision 6, entry 1 applied whole.
        let store = crate::Store::open(dir.path()).unwrap();
        let core = store.core_for_tests();
        assert_eq!(progress(&core), (6, Some(1), None));
    }

    #[test]
    fn a_run_of_puts_stops_at_its_size_limit_but_takes_at_least_one() {
        let big = "v".repeat(MAX_RUN_BYTES);
        let commands = vec![put_cmd("a", "1"), put_cmd("b", &big), put_cmd("c", "1")];
        assert_eq!(put_run_end(&commands, 0), 1);
        assert_eq!(put_run_end(&commands, 1), 2);
        assert_eq!(put_run_end(&commands, 2), 3);
    }

    #[test]
    fn a_batch_cut_short_by_a_crash_resumes_after_its_last_applied_command() {
        let dir = tempfile::TempDir::new().unwrap();
        let batch = Command::Batch(vec![
            put_cmd("a", "1"),
            put_cmd("b", "1"),
            put_cmd("c", "1"),
        ]);
        {
            let store = crate::Store::open(dir.path()).unwrap();
            let core = store.core_for_tests();
            core.apply_entry(&entry(1, put_cmd("x", "0"))).unwrap(); // revision 2
                                                                     // As if the crash came after the batch's first command: its effects and position
                                                                     // recorded, the entry not yet applied.
            let mut state = core.state.write();
            let first = Part {
                position: 0,
                last: false,
            };
            let put_a = put_cmd("a", "1");
            core.apply_part(&mut state, log_id(2), Effect::Command(&put_a), Some(first))
                .unwrap();
            store.flush().unwrap();
        }
        let store = crate::Store::open(dir.path()).unwrap();
        let core = store.core_for_tests();
        assert_eq!(progress(&core), (3, Some(1), Some((2, 0))));
        let response = core.apply_entry(&entry(2, batch)).unwrap();
        // "a" is not applied again: b and c take the next revisions.
        assert_eq!(batch_revisions(&response)[1..], [(4, true), (5, true)]);
        assert_eq!(history(&core), ["a@3", "b@4", "c@5", "x@2"]);
        assert_eq!(core.state.read().applied.map(|id| id.index), Some(2));
    }
}
