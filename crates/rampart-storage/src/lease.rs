//! Leases as the state machine records them: the lease records and the index of the keys attached
//! to each (layout in [`crate::codec`]).
//!
//! Only what Raft agrees on lives here: which leases exist, their granted TTL, the remaining TTL
//! of the last checkpoint and their keys. Expiry is not: the leader's lessor counts time and
//! proposes a `LeaseRevoke` when a lease runs out, so every member deletes the same keys at the
//! same revision. Keys are attached and detached by the writes themselves (see `apply`), in the
//! same batch as the key's new version.

use crate::codec::{self, LEASE};
use crate::error::{MvccError, StoreError};
use crate::redo::WriteBatch;
use crate::types::{ApplyError, Lease, LeaseCheckpoint};

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
