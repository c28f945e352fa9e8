//! Who sent a peer call. Every call a member sends names its cluster and its member id in
//! the gRPC metadata; the receiving [`crate::PeerService`] refuses, with `PermissionDenied`,
//! a call naming another cluster or nobody, and a forwarded write, read index, lease question
//! or admin order from a member its membership does not hold (a removed member, a process
//! that is no member). Raft's own RPCs need only name the cluster: a follower that lags
//! learns of a member added since (that member now leading, say) only from what it sends.
//! Two questions are answered to anyone: `ClusterInfo` (what a member joining asks before it
//! knows its identity) and `IsMember` (what a removed member asks to learn that it was
//! removed). With peer TLS and `--peer-client-cert-auth` the handshake has already refused
//! callers without a certificate from the peer CA; these checks stand on their own without it.

use rampart_storage::{NodeId, PeerNode};
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::Status;

/// The metadata key of the caller's cluster id, in hex.
pub const CLUSTER_ID_KEY: &str = "rampart-cluster-id";
/// The metadata key of the caller's member id, in hex.
pub const MEMBER_ID_KEY: &str = "rampart-member-id";

/// Names `cluster_id` and `member_id` in a call's `metadata`.
pub(crate) fn name(metadata: &mut MetadataMap, cluster_id: u64, member_id: NodeId) {
    // Hex digits are always valid metadata.
    if let (Ok(cluster), Ok(member)) = (
        MetadataValue::try_from(format!("{cluster_id:x}")),
        MetadataValue::try_from(format!("{member_id:x}")),
    ) {
        metadata.insert(CLUSTER_ID_KEY, cluster);
        metadata.insert(MEMBER_ID_KEY, member);
    }
}

/// The cluster and member a call's `metadata` names, if it names both.
pub(crate) fn named(metadata: &MetadataMap) -> Option<(u64, NodeId)> {
    let id = |key| {
        let text = metadata.get(key)?.to_str().ok()?;
        u64::from_str_radix(text, 16).ok()
    };
    Some((id(CLUSTER_ID_KEY)?, id(MEMBER_ID_KEY)?))
}

/// Checks that `metadata` names a caller of cluster `cluster_id` that `is_member` accepts.
pub(crate) fn check(
    metadata: &MetadataMap,
    cluster_id: u64,
    is_member: impl FnOnce(NodeId) -> bool,
) -> Result<(), Status> {
    let Some((cluster, member)) = named(metadata) else {
        return Err(Status::permission_denied(
            "rampart: a peer call that names no member of this cluster",
        ));
    };
    if cluster != cluster_id {
        return Err(Status::permission_denied(format!(
            "rampart: a peer call from cluster {cluster:x}, not from this member's {cluster_id:x}"
        )));
    }
    if !is_member(member) {
        return Err(Status::permission_denied(format!(
            "rampart: a peer call from {member:x}, which is not a member of this cluster"
        )));
    }
    Ok(())
}

/// Whether `member` is in `membership` (voters and learners, both configurations of a joint
/// one); a node that has no membership yet (a member joining, before its first entries) takes
/// any member of its cluster.
pub(crate) fn in_membership(
    membership: &openraft::Membership<NodeId, PeerNode>,
    member: NodeId,
) -> bool {
    membership.nodes().next().is_none() || membership.get_node(&member).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_named_caller_of_the_cluster_passes_and_others_are_refused() {
        let mut metadata = MetadataMap::new();
        name(&mut metadata, 0xc1, 0x5);
        assert_eq!(named(&metadata), Some((0xc1, 0x5)));
        assert!(check(&metadata, 0xc1, |m| m == 0x5).is_ok());

        let refused = |metadata: &MetadataMap, cluster, member_ok| {
            let status = check(metadata, cluster, |_| member_ok).unwrap_err();
            assert_eq!(status.code(), tonic::Code::PermissionDenied);
            status.message().to_string()
        };
        assert!(refused(&metadata, 0xc2, true).contains("cluster c1"));
        assert!(refused(&metadata, 0xc1, false).contains("not a member"));
        assert!(refused(&MetadataMap::new(), 0xc1, true).contains("names no member"));
        let mut garbled = MetadataMap::new();
        garbled.insert(CLUSTER_ID_KEY, MetadataValue::from_static("zz"));
        garbled.insert(MEMBER_ID_KEY, MetadataValue::from_static("5"));
        assert!(refused(&garbled, 0xc1, true).contains("names no member"));
    }
}
