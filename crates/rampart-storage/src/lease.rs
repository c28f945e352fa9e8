//! Leases as the state machine records them: the lease records and the index of the keys attached
//! to each (layout in [`crate::codec`]), and the feed of grants and revokes as they are applied.
//!
//! Only what Raft agrees on lives here: which leases exist, their granted TTL, the remaining TTL
//! of the last checkpoint and their keys. Expiry is not: the leader's lessor counts time and
//! proposes a `LeaseRevoke` when a lease runs out, so every member deletes the same keys at the
//! same revision. Keys are attached and detached by the writes themselves (see `apply`), in the
//! same batch as the key's new version.
//!
//! The lessor keeps its own table of the leases, and follows the state machine's with a
//! [`LeaseFeed`] ([`crate::Mvcc::follow_leases`]) instead of reading every lease again.

use parking_lot::Mutex;
use tokio::sync::mpsc;

use crate::codec::{self, LEASE};
use crate::error::{MvccError, StoreError};
use crate::redo::WriteBatch;
use crate::types::{ApplyError, Lease, LeaseChange, LeaseCheckpoint};

/// The open [`LeaseFeed`]s. The applier sends each grant and revoke to all of them with the
/// state locked for writing, once it is in the tree; a feed is opened with the state locked for
/// reading, as the leases are listed. So a feed carries exactly the changes applied after the
/// list it came with, in the order they were applied.
#[derive(Default)]
pub(crate) struct LeaseFeeds {
    senders: Mutex<Vec<mpsc::UnboundedSender<LeaseChange>>>,
}

impl LeaseFeeds {
    /// Opens a feed; the caller holds the state's lock.
    pub(crate) fn open(&self) -> LeaseFeed {
        let (sender, changes) = mpsc::unbounded_channel();
        self.senders.lock().push(sender);
        LeaseFeed { changes }
    }

    /// Sends `change` to every open feed, forgetting the dropped ones; the caller holds the
    /// state's write lock and has written the change. Nothing to do on a member no one follows.
    pub(crate) fn send(&self, change: LeaseChange) {
        self.senders
            .lock()
            .retain(|sender| sender.send(change).is_ok());
    }

    /// Ends every feed: the caller replaced the whole state (a snapshot), which no list of
    /// changes describes.
    pub(crate) fn end_all(&self) {
        self.senders.lock().clear();
    }
}

/// Every grant and revoke applied since the leases it came with were listed, in apply order
/// ([`crate::Mvcc::follow_leases`]). Unbounded, so it never drops one: its reader takes them in
/// often (the lessor, at every tick and every lease question).
pub struct LeaseFeed {
    changes: mpsc::UnboundedReceiver<LeaseChange>,
}

/// The end of a [`LeaseFeed`]: a snapshot replaced the state machine, or the store closed. The
/// changes read from it no longer describe the leases; list them again.
#[derive(Debug, thiserror::Error)]
#[error("the lease feed ended: a snapshot replaced the leases, or the store closed")]
pub struct LeaseFeedEnded;

impl LeaseFeed {
    /// The next change, if one has been applied that was not read yet; never waits. Fails once
    /// the feed has ended and every change sent before was read.
    pub fn try_next(&mut self) -> Result<Option<LeaseChange>, LeaseFeedEnded> {
        match self.changes.try_recv() {
            Ok(change) => Ok(Some(change)),
            Err(mpsc::error::TryRecvError::Empty) => Ok(None),
            Err(mpsc::error::TryRecvError::Disconnected) => Err(LeaseFeedEnded),
        }
    }
}

/// Checks that a put may name `lease`: 0 (no lease) or an existing lease.
pub(crate) fn check_lease(tree: &sled::Tree, lease: i64) -> Result<(), MvccError> {
    if lease == 0 || tree.contains_key(codec::lease_key(lease))? {
        Ok(())
    } else {
        Err(ApplyError::LeaseNotFound.into())
    }
}

/// The lease `id`, if it exists.
pub(crate) fn get(tree: &sled::Tree, id: i64) -> Result<Option<Lease>, StoreError> {
    match tree.get(codec::lease_key(id))? {
        Some(v) => Ok(Some(codec::decode("lease", &v)?)),
        None => Ok(None),
    }
}

/// Every lease, by id.
pub(crate) fn all(tree: &sled::Tree) -> Result<Vec<Lease>, StoreError> {
    tree.scan_prefix([LEASE])
        .values()
        .map(|v| codec::decode("lease", &v?))
        .collect()
}

/// The keys attached to lease `id`, in key order (none for an unknown lease).
pub(crate) fn keys(tree: &sled::Tree, id: i64) -> Result<Vec<Vec<u8>>, StoreError> {
    tree.scan_prefix(codec::attachment_prefix(id))
        .keys()
        .map(|k| codec::attachment_user_key(&k?))
        .collect()
}

/// Stages a LeaseGrant: a new lease with no checkpoint yet.
pub(crate) fn grant(
    tree: &sled::Tree,
    id: i64,
    ttl: i64,
    batch: &mut WriteBatch,
) -> Result<(), MvccError> {
    if tree.contains_key(codec::lease_key(id))? {
        return Err(ApplyError::LeaseExists.into());
    }
    let lease = Lease {
        id,
        ttl,
        remaining_ttl: None,
    };
    batch.insert(codec::lease_key(id), codec::encode_lease(&lease)?);
    Ok(())
}

/// Stages a LeaseCheckpoint: records each known lease's remaining TTL, never above its granted
/// TTL (as etcd's lessor clamps it). Unknown leases were revoked after the leader measured them;
/// they are skipped, as etcd does.
pub(crate) fn checkpoint(
    tree: &sled::Tree,
    checkpoints: &[LeaseCheckpoint],
    batch: &mut WriteBatch,
) -> Result<(), StoreError> {
    // The new value depends only on the checkpoint and the (unchanging) granted TTL, so reading
    // the tree rather than this batch is right even if one id appears twice: the last one wins.
    for cp in checkpoints {
        if let Some(mut lease) = get(tree, cp.id)? {
            lease.remaining_ttl = Some(cp.remaining_ttl.min(lease.ttl));
            batch.insert(codec::lease_key(cp.id), codec::encode_lease(&lease)?);
        }
    }
    Ok(())
}

/// Stages the removal of lease `id` and of all its attachments; returns the attached keys, in
/// key order, for the caller to delete. Fails with `LeaseNotFound` for an unknown lease.
pub(crate) fn remove(
    tree: &sled::Tree,
    id: i64,
    batch: &mut WriteBatch,
) -> Result<Vec<Vec<u8>>, MvccError> {
    if !tree.contains_key(codec::lease_key(id))? {
        return Err(ApplyError::LeaseNotFound.into());
    }
    batch.remove(codec::lease_key(id));
    let mut attached = Vec::new();
    for k in tree.scan_prefix(codec::attachment_prefix(id)).keys() {
        let k = k?;
        attached.push(codec::attachment_user_key(&k)?);
        batch.remove(k.to_vec());
    }
    Ok(attached)
}
