//! Rampart's durable storage: the Raft log (its entries in append-only segment files, see `wal`;
//! its vote and its committed and purged log ids in sled) and the MVCC state machine, in sled.
//!
//! This crate knows nothing of gRPC or of the network, and must not depend on the other Rampart
//! crates. It exposes:
//! - [`Store`], which opens a data directory and hands out the parts below;
//! - [`LogStore`], openraft's `RaftLogStorage` (log entries in segment files; the vote and the
//!   committed and purged log ids in sled);
//! - [`StateMachine`], openraft's `RaftStateMachine`: applies [`Command`]s to the MVCC store and
//!   builds and installs snapshots;
//! - [`Backup`], a member's state machine streamed out for `etcdctl snapshot save`, and
//!   [`restore`], its check and its restore into a new member's data directory;
//! - [`Mvcc`], a cheap cloneable read handle on the MVCC store for serving reads: Range, leases,
//!   watch events replayed from history, the live [`WatchFeed`] of new revisions, and the
//!   [`LeaseFeed`] of grants and revokes.
//!
//! Layout of the code: `alarms` (the raised alarms and the writes NOSPACE refuses), `auth`
//! (users, roles, permissions and their checks, at request and at apply time), `codec` (how the MVCC tree is laid out on disk), `key_range` (etcd's
//! `(key, range_end)` sets of keys), `index` (the in-memory key index over history), `range`
//! (reads: etcd's Range at the current or a past revision), `apply` (one log entry: the
//! dispatch of its commands, batches and runs of puts, its atomic write), `write_txn` (etcd's
//! write transaction: Put, DeleteRange, Txn, and the compact command's write), `redo` (an
//! entry's writes made atomic), `lease` (lease records, the keys attached to them, and the feed
//! of grants and revokes), `events` (watch events: replayed from history, or built for the live
//! feed), `mvcc` (the shared store and its lock), `watch_feed` (the live feed of new revisions,
//! bounded in bytes, and the watchers' interests in previous values), `compactor` (physical
//! compaction in the background), `state_machine` and `snapshot` (openraft's state machine and
//! the snapshot file), `log_store` and `wal` (openraft's log and its segment files),
//! `backup` (the backup file: export, check, restore), `durability` (fsyncs that survive power
//! loss), `applied` (waiting for an applied index), `database` (the current sled database's
//! handles, which a defragment replaces), `defrag` (rewriting the database into a fresh one while
//! the member runs), `store` (opening a data directory), and, in tests only, `test_support` (the
//! helpers the unit
//! tests share).
//!
//! Invariants:
//! - each log entry changes the MVCC tree in ONE atomic write set (its redo record, see `redo`)
//!   that also records its log id, and readers hold a read lock the applier's write lock
//!   excludes: no one sees half an entry, and a restart neither re-applies nor skips one;
//! - the in-memory key index always describes exactly the history in the tree;
//! - the live watch feed is sent to under that write lock, once the entry is visible, so it is in
//!   revision order and a subscriber that reads the revision after subscribing misses nothing;
//!   so are the lease feeds, which open under the read lock with the list of leases they follow;
//! - openraft hears "done" for log appends, votes, truncations and purges only after an fsync.

mod alarms;
mod applied;
mod apply;
mod auth;
mod backup;
mod codec;
mod compactor;
mod database;
mod defrag;
mod durability;
mod error;
mod events;
mod files;
#[doc(hidden)]
pub mod fuzzing;
mod hash;
mod index;
mod key_range;
mod lease;
mod log_store;
mod mvcc;
mod range;
mod redo;
mod requests;
mod snapshot;
mod state_machine;
mod stats;
mod store;
#[cfg(test)]
pub(crate) mod test_support;
pub mod types;
mod wal;
mod watch_feed;
mod write_txn;

pub use auth::{Access, AuthMeta, AuthRole, AuthState, AuthUser, ROOT as AUTH_ROOT};
pub use backup::{Backup, BackupError, BackupStatus, RestoreTarget, BACKUP_FORMAT};
pub use defrag::{DefragReport, DefragStep};
pub use error::{MvccError, StoreError};
pub use hash::KvHash;
pub use lease::{LeaseFeed, LeaseFeedEnded};
pub use log_store::LogStore;
pub use mvcc::Mvcc;
pub use requests::AppliedRequests;
pub use state_machine::{SnapshotBuilder, StateMachine};
pub use stats::{InFlight, InFlightGuard, StorageStats};
pub use store::{ClusterIdentity, Store};
/// Checking and restoring backups (`rampartctl snapshot status` and `restore`).
pub mod restore {
    pub use crate::backup::{restore, status};
}
pub use types::*;
pub use watch_feed::{
    FedRevision, PrevKvInterest, WatchFeed, WatchFeedStats, WATCH_FEED_BUDGET, WATCH_FEED_CAPACITY,
};
