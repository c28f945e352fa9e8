//! Corruption detection, as etcd's `etcdserver/corrupt.go`: members compare their `HashKV`
//! (`rampart_storage::Mvcc::hash_kv`) at one revision over the peer protocol (the `Admin`
//! RPC's `HashKv` question), never through the client URLs.
//!
//! - At start-up (`--experimental-initial-corrupt-check`), before it serves clients, a member
//!   that already holds data asks its peers for their hash at its own revision.
//! - Periodically (`--experimental-corrupt-check-time`), the leader asks every other member
//!   (learners included) for its hash at the leader's revision.
//!
//! Only hashes of the same revision from the same compact revision are compared (etcd's rule:
//! two members that compacted at different revisions hash different contents). Unlike etcd's,
//! the verdict is a majority's, not the asking member's alone: a member is corrupt when its hash
//! differs from one that a quorum of the voters share. A member found corrupt gets a CORRUPT
//! alarm through Raft and stops serving clients ("etcdserver: corrupt cluster"; `Node::
//! check_not_corrupt`), while the healthy majority keeps serving (etcd 3.4 makes the whole
//! cluster refuse instead). Without a quorum of equal hashes (too few members answered) nothing
//! is decided. A member whose start-up check finds it corrupt refuses clients at once, before
//! its alarm is even applied, so it never serves data that differs from the cluster's.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use rampart_network::{AdminAnswer, AdminError, AdminReply, AdminRequest, KvHashAnswer};
use rampart_storage::{AlarmAction, AlarmMember, AlarmType, NodeId};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::ServerError;
use crate::node::Node;

/// How long a member asked for its hash at a revision waits until it has applied it.
const APPLY_WAIT: Duration = Duration::from_secs(2);
/// How long the asking member waits for its peers' hashes (they read their whole store).
const ASK_TIMEOUT: Duration = Duration::from_secs(10);

/// What a comparison of the members' hashes decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A quorum shares one hash and every member compared has it.
    Agreed,
    /// A quorum shares one hash; these members answered another.
    Corrupt(Vec<NodeId>),
    /// No hash is shared by a quorum: too few comparable answers.
    Undecided,
}

/// Judges `answers` (one per member, the asking member's included) against `own`, the asking
/// member's: only the answers at `own`'s revision and compact revision count; a member (voter
/// or learner) is corrupt when a quorum of the `voters` share a hash that it does not have.
pub fn judge(own: &KvHashAnswer, answers: &[KvHashAnswer], voters: &BTreeSet<NodeId>) -> Verdict {
    let comparable: Vec<&KvHashAnswer> = answers
        .iter()
        .filter(|a| a.revision == own.revision && a.compact_revision == own.compact_revision)
        .collect();
    let mut counts: BTreeMap<u32, usize> = BTreeMap::new();
    for answer in comparable.iter().filter(|a| voters.contains(&a.id)) {
        *counts.entry(answer.hash).or_default() += 1;
    }
    let quorum = voters.len() / 2 + 1;
    let Some((&agreed, _)) = counts.iter().find(|(_, &n)| n >= quorum) else {
        return Verdict::Undecided;
    };
    let corrupt: Vec<NodeId> = comparable
        .iter()
        .filter(|a| a.hash != agreed)
        .map(|a| a.id)
        .collect();
    if corrupt.is_empty() {
        Verdict::Agreed
    } else {
        Verdict::Corrupt(corrupt)
    }
}

/// This member's hash at `revision` (0: its current one), read off the async threads.
async fn own_hash(node: &Node, revision: i64) -> Result<KvHashAnswer, ServerError> {
    let mvcc = node.mvcc().clone();
    let hashed = tokio::task::spawn_blocking(move || mvcc.hash_kv(revision))
        .await
        .map_err(|e| ServerError::Internal(format!("hashing failed: {e}")))??;
    Ok(KvHashAnswer {
        id: node.id(),
        hash: hashed.hash,
        compact_revision: hashed.compact_revision,
        revision: hashed.revision,
    })
}

/// The answer to a peer's `HashKv { revision }`: this member's hash at `revision`, once it has
/// applied it (waiting up to [`APPLY_WAIT`]).
pub(crate) async fn answer(node: &Node, revision: i64) -> AdminReply {
    let deadline = Instant::now() + APPLY_WAIT;
    let mut metrics = node.subscribe_metrics();
    while node.mvcc().revision() < revision {
        match tokio::time::timeout_at(deadline, metrics.changed()).await {
            Ok(Ok(())) => {}
            _ => {
                return Err(AdminError::Unavailable(format!(
                    "revision {revision} not applied here in {APPLY_WAIT:?}"
                )))
            }
        }
    }
    match own_hash(node, revision).await {
        Ok(hashed) => Ok(AdminAnswer::HashKv(hashed)),
        Err(e) => Err(AdminError::Unavailable(e.to_string())),
    }
}

/// The other members' hashes at `revision`, from those that answer in time, and the voters.
async fn peer_hashes(node: &Node, revision: i64) -> (Vec<KvHashAnswer>, BTreeSet<NodeId>) {
    let metrics = node.metrics();
    let membership = metrics.membership_config.membership();
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    let asks = membership
        .nodes()
        .filter(|(&id, _)| id != node.id())
        .map(|(&id, peer)| {
            let peer = peer.clone();
            async move {
                let request = AdminRequest::HashKv { revision };
                let reply = node.network().admin(id, &peer, &request, ASK_TIMEOUT).await;
                match reply {
                    // The answer names the member it came from; a stray one is not counted.
                    Ok(Ok(AdminAnswer::HashKv(hashed))) if hashed.id == id => Some(hashed),
                    Ok(other) => {
                        tracing::info!(peer = format_args!("{id:016x}"), reply = ?other,
                            "peer gave no comparable hash");
                        None
                    }
                    Err(e) => {
                        tracing::info!(peer = format_args!("{id:016x}"), error = %e,
                            "cannot ask peer for its hash");
                        None
                    }
                }
            }
        });
    let answers = futures::future::join_all(asks).await;
    (answers.into_iter().flatten().collect(), voters)
}

/// Compares this member's hash at its current revision with its peers'.
async fn compare(node: &Node) -> Result<(KvHashAnswer, Verdict), ServerError> {
    let own = own_hash(node, 0).await?;
    let (mut answers, voters) = peer_hashes(node, own.revision).await;
    answers.push(own);
    let verdict = judge(&own, &answers, &voters);
    Ok((own, verdict))
}

/// Raises the CORRUPT alarm of each member in `corrupt` not already raised.
async fn raise(node: &Node, corrupt: &[NodeId]) {
    let raised = node.alarms();
    for &member_id in corrupt {
        let alarm = AlarmMember {
            member_id,
            alarm: AlarmType::Corrupt,
        };
        if raised.contains(&alarm) {
            continue;
        }
        if let Err(e) = node.alarm(AlarmAction::Activate, alarm).await {
            tracing::warn!(member = format_args!("{member_id:016x}"), error = %e,
                "cannot raise the CORRUPT alarm");
        }
    }
}

/// How long the initial check waits for Raft to publish the membership it read from the log.
const MEMBERSHIP_WAIT: Duration = Duration::from_secs(10);

/// etcd's initial corruption check: run before this member serves clients. If a quorum's hash
/// at this member's revision differs from its own, it refuses clients from now on and raises
/// its CORRUPT alarm (in the background: that needs a leader); once the alarm is applied, the
/// alarm decides, as for a member the periodic check found.
pub(crate) async fn initial_check(node: &Arc<Node>, cancel: &CancellationToken) {
    let id = node.id();
    // Raft publishes the membership it read from the log a moment after it starts; until then
    // this member knows no peer to ask, and the check could decide nothing.
    let mut metrics = node.subscribe_metrics();
    let known = metrics.wait_for(|m| m.membership_config.membership().nodes().next().is_some());
    if tokio::time::timeout(MEMBERSHIP_WAIT, known).await.is_err() {
        tracing::warn!("initial corruption check: no membership known after {MEMBERSHIP_WAIT:?}");
    }
    match compare(node).await {
        Ok((own, Verdict::Corrupt(members))) if members.contains(&id) => {
            tracing::error!(
                revision = own.revision,
                hash = own.hash,
                "this member's data differs from its peers': it will serve no client"
            );
            node.mark_corrupt();
            let node = node.clone();
            let cancel = cancel.clone();
            tokio::spawn(async move {
                let me = [id];
                tokio::select! {
                    _ = cancel.cancelled() => {}
                    _ = raise(&node, &me) => {
                        // From here the alarm decides, and clearing it lets the member serve.
                        let alarm = AlarmMember { member_id: id, alarm: AlarmType::Corrupt };
                        if node.alarms().contains(&alarm) {
                            node.clear_found_corrupt();
                        }
                    }
                }
            });
        }
        Ok((own, verdict)) => {
            tracing::info!(
                revision = own.revision,
                ?verdict,
                "initial corruption check done"
            )
        }
        Err(e) => tracing::warn!(error = %e, "initial corruption check failed"),
    }
}

/// etcd's periodic corruption check: every `interval`, if this member leads, compares the
/// members' hashes and raises a CORRUPT alarm for each member found corrupt.
pub(crate) async fn run_periodic(node: Arc<Node>, interval: Duration, cancel: CancellationToken) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = ticks.tick() => {}
        }
        if node.leading_term().is_none() {
            continue;
        }
        let checked = tokio::select! {
            _ = cancel.cancelled() => return,
            checked = compare(&node) => checked,
        };
        match checked {
            Ok((own, Verdict::Corrupt(members))) => {
                tracing::error!(
                    revision = own.revision,
                    members = ?members.iter().map(|m| format!("{m:016x}")).collect::<Vec<_>>(),
                    "members' data differs from the cluster's: raising CORRUPT alarms"
                );
                raise(&node, &members).await;
            }
            Ok((own, verdict)) => {
                tracing::debug!(revision = own.revision, ?verdict, "corruption check done")
            }
            Err(e) => tracing::warn!(error = %e, "corruption check failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hashed(id: NodeId, hash: u32) -> KvHashAnswer {
        KvHashAnswer {
            id,
            hash,
            compact_revision: 0,
            revision: 10,
        }
    }

    fn voters(ids: &[NodeId]) -> BTreeSet<NodeId> {
        ids.iter().copied().collect()
    }

    #[test]
    fn the_majority_decides_who_is_corrupt() {
        let three = voters(&[1, 2, 3]);
        let (a, b, c) = (hashed(1, 7), hashed(2, 7), hashed(3, 8));
        assert_eq!(judge(&a, &[a, b, c], &three), Verdict::Corrupt(vec![3]));
        // The asking member may be the odd one out.
        assert_eq!(judge(&c, &[c, a, b], &three), Verdict::Corrupt(vec![3]));
        assert_eq!(judge(&a, &[a, b], &three), Verdict::Agreed);
        // Two members that disagree, the third silent: nobody can tell which is right.
        assert_eq!(judge(&a, &[a, c], &three), Verdict::Undecided);
        assert_eq!(judge(&a, &[a], &voters(&[1])), Verdict::Agreed);
    }

    #[test]
    fn learners_are_judged_but_do_not_make_the_quorum() {
        let (a, b, learner) = (hashed(1, 7), hashed(2, 8), hashed(4, 8));
        // Voters 1 and 2 disagree; the learner siding with 2 decides nothing.
        assert_eq!(
            judge(&a, &[a, b, learner], &voters(&[1, 2])),
            Verdict::Undecided
        );
        let c = hashed(3, 7);
        let corrupt_learner = hashed(4, 9);
        assert_eq!(
            judge(&a, &[a, c, corrupt_learner], &voters(&[1, 2, 3])),
            Verdict::Corrupt(vec![4])
        );
    }

    #[test]
    fn only_the_same_revision_and_compact_revision_compare() {
        let a = hashed(1, 7);
        let later = KvHashAnswer {
            revision: 11,
            ..hashed(2, 9)
        };
        let compacted = KvHashAnswer {
            compact_revision: 5,
            ..hashed(3, 9)
        };
        let three = voters(&[1, 2, 3]);
        assert_eq!(
            judge(&a, &[a, later, compacted], &three),
            Verdict::Undecided
        );
        assert_eq!(
            judge(&a, &[a, hashed(2, 7), later, compacted], &three),
            Verdict::Agreed
        );
    }
}
