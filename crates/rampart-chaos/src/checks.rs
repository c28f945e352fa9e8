//! The checkers of a run, each producing [`Finding`]s:
//!
//! - linearizability of the KV history, key by key (the [`crate::linearizability`] checker).
//!   No acknowledged write lost follows from it: the run ends with a linearizable read of every
//!   key, recorded as an ordinary operation, and a lost write makes that read unexplainable;
//! - revisions never go backwards on any member: a response from a member that was asked
//!   after another response from that member arrived carries a revision at least as high;
//! - every member ends with the same data: once healed and quiet, all members reach the same
//!   applied revision and hold the same key-values at it;
//! - no member crashed;
//! - the members agree on the membership: every one lists the same voters, one per member
//!   slot, and no learner; and every member removed from the cluster stopped by itself;
//! - the watchers received every change of their prefix, in order, once, as written
//!   ([`crate::watch_check`]);
//! - leases lived as long as promised and were deleted soon after they expired
//!   ([`crate::lease_check`]);
//! - locks fenced their holders: acknowledged guarded writes never interleave two holders,
//!   tokens grow, an abandoned lock passes on ([`crate::lock_check`]);
//! - elections had one leader at a time, won in real-time order, and observers never went
//!   back to an older one nor were sent a value nobody sent ([`crate::election_check`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use rampart_api::etcdserverpb as pb;
use rampart_api::etcdserverpb::kv_client::KvClient;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::cluster::{channel, Cluster, Crash, Listed, NotStopped};
use crate::election_check::{self, ElectionSummary, LeaderFact};
use crate::history::{
    operations, ElectionHistory, ElectionRecord, LeaseHistory, LeaseRecord, LockHistory,
    LockRecord, ObservedLeader, Record, WatchHistory, WatchSession, WatchedEvent,
};
use crate::lease_check::{self, LeaseSummary};
use crate::linearizability::{self, Report, Violation};
use crate::lock_check::{self, LockSummary};
use crate::membership;
use crate::watch_check::{self, ExpectedEvent, WatchSummary};

/// How many checks shrinking one linearizability violation may spend.
const SHRINK_BUDGET: usize = 2_000;

/// At most this many revision regressions are reported: one shows the bug.
const MAX_REVISION_FINDINGS: usize = 5;

/// One violation, with the smallest part of the history that shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Finding {
    /// A key's operations admit no linearization. `records` are the minimal sub-history's
    /// operations as recorded (with the serving member and revision).
    NotLinearizable {
        violation: Violation,
        records: Vec<Record>,
    },
    /// `later` was sent to `member` after `earlier` came back from it, yet carries a lower
    /// revision.
    RevisionWentBack {
        member: u64,
        earlier: Box<Record>,
        later: Box<Record>,
    },
    /// Members hold different data at the same revision.
    Diverged(Divergence),
    /// The members did not reach a common revision after the faults were healed.
    NotConverged { reason: String },
    /// A member exited without being killed.
    Crashed(Crash),
    /// Once healed, the members did not all list the same voters, one per member slot, with
    /// no learner: what was wrong, and what each member listed (serializable: its own view).
    MembershipNotConverged {
        problems: Vec<String>,
        lists: BTreeMap<String, Vec<Listed>>,
    },
    /// A member removed from the cluster had not stopped by itself when the harness killed it.
    RemovedMemberKeptRunning(NotStopped),
    /// A watcher received a change of a lower revision after one of a higher revision.
    WatchOutOfOrder {
        watcher: u32,
        earlier: Box<WatchedEvent>,
        later: Box<WatchedEvent>,
    },
    /// A watcher received the same change (revision and key) twice.
    WatchDuplicate {
        watcher: u32,
        first: Box<WatchedEvent>,
        second: Box<WatchedEvent>,
    },
    /// A watcher (or the reference watch) lacks a change that happened, below a revision it
    /// was told it had everything up to: the first such change, the watcher's events on
    /// either side of it, and how many it lacks in all.
    WatchMissed {
        watcher: u32,
        reference: bool,
        missed: Box<ExpectedEvent>,
        previous: Option<Box<WatchedEvent>>,
        next: Option<Box<WatchedEvent>>,
        total_missed: usize,
    },
    /// A watcher received an event that no attempted write explains, or that disagrees with
    /// the acknowledged write of its revision or with the reference watch; with the write
    /// that comes closest.
    WatchUnexplained {
        watcher: u32,
        event: Box<WatchedEvent>,
        reason: String,
        kv_write: Option<Box<Record>>,
        lease_write: Option<Box<LeaseRecord>>,
    },
    /// The server canceled a watch (nothing compacts during a run, nobody cancels).
    WatchCanceled { watcher: u32, session: WatchSession },
    /// A watcher never had it confirmed that it received everything up to the end revision.
    WatchIncomplete {
        watcher: u32,
        reference: bool,
        complete_through: i64,
        end_revision: i64,
        last_session: Option<WatchSession>,
    },
    /// A lease was gone (`evidence`, at `at`) before `alive_until`, the time `promised_by`
    /// (an acknowledged grant or keep-alive) promised it would live to, with no revoke sent.
    LeaseExpiredEarly {
        lease: i64,
        ttl: i64,
        alive_until: u64,
        promised_by: Box<LeaseRecord>,
        at: u64,
        evidence: String,
        records: Vec<LeaseRecord>,
    },
    /// A lease's key was still there after `deadline` (`deleted`: when it was found gone, if
    /// ever).
    LeaseNotExpired {
        lease: i64,
        key: String,
        ttl: i64,
        deadline: u64,
        deleted: Option<u64>,
        records: Vec<LeaseRecord>,
    },
    /// Two holders' acknowledged guarded writes interleave in the register's revision order:
    /// `first` and `second` carry one token, `between` another.
    LockHoldersInterleaved {
        name: String,
        first: Box<LockRecord>,
        between: Box<LockRecord>,
        second: Box<LockRecord>,
    },
    /// `later` carries a smaller (or equal) token than `earlier`: a guarded write after
    /// another holder's in revision order, or an acquisition whose Lock was sent after
    /// `earlier` was acquired.
    LockTokenWentBack {
        name: String,
        earlier: Box<LockRecord>,
        later: Box<LockRecord>,
    },
    /// A holder abandoned the lock while `waiter` waited, nothing disturbed the cluster, and
    /// no Lock of another lease acquired the name by `deadline` (the abandoned lease's expiry
    /// deadline plus [`lock_check::HANDOFF_SLACK`]).
    LockNotPassedOn {
        name: String,
        abandoned: Box<LockRecord>,
        waiter: Box<LockRecord>,
        deadline: u64,
    },
    /// An Observe stream was sent an older leader (or an older value) after a newer one.
    ObserveWentBack {
        observer: u32,
        name: String,
        earlier: Box<ObservedLeader>,
        later: Box<ObservedLeader>,
    },
    /// `second` shows an older key leading at a revision at or after one at which `first`'s
    /// newer key led: two leaders at once.
    LeadersOverlap {
        name: String,
        first: Box<LeaderFact>,
        second: Box<LeaderFact>,
    },
    /// `later`'s Campaign was sent after `earlier`'s was answered Won, yet its leader key is
    /// no newer (its create revision is not larger).
    WinsOutOfOrder {
        name: String,
        earlier: Box<ElectionRecord>,
        later: Box<ElectionRecord>,
    },
    /// An observer was sent a value for a leader key that neither the key's Campaign nor a
    /// Proclaim of its lease answered Proclaimed (or never answered) sent; `leader` holds that
    /// campaigner's records in the election (none if no Campaign is known to have put the
    /// key).
    ObservedValueNotSent {
        name: String,
        observed: Box<ObservedLeader>,
        leader: Vec<ElectionRecord>,
    },
}

/// The verdict of every check of a run's records.
#[derive(Clone, Debug, Default)]
pub struct Verdict {
    pub report: Report,
    pub watch: WatchSummary,
    pub lease: LeaseSummary,
    pub lock: LockSummary,
    pub election: ElectionSummary,
    pub findings: Vec<Finding>,
}

/// The histories of one run beside the KV records, each present when the run had its clients.
#[derive(Clone, Copy, Debug, Default)]
pub struct Histories<'a> {
    pub watches: Option<&'a WatchHistory>,
    pub leases: Option<&'a LeaseHistory>,
    pub locks: Option<&'a LockHistory>,
    pub elections: Option<&'a ElectionHistory>,
}

/// Checks everything a run recorded: the KV history (see [`check_history`]) and, when the run
/// had them, the watchers' events, the leases, the locks and the elections.
pub fn check_run(records: &[Record], histories: Histories<'_>) -> Verdict {
    let Histories {
        watches,
        leases,
        locks,
        elections,
    } = histories;
    let started = std::time::Instant::now();
    let (report, mut findings) = check_history(records);
    tracing::info!(elapsed = ?started.elapsed(), "checked linearizability and revisions");
    let lease_records = leases.map_or(&[][..], |l| l.records.as_slice());
    let mut watch = WatchSummary::default();
    if let Some(watches) = watches {
        let started = std::time::Instant::now();
        let (summary, watch_findings) = watch_check::check(watches, records, lease_records);
        tracing::info!(elapsed = ?started.elapsed(), "checked the watches");
        watch = summary;
        findings.extend(watch_findings);
    }
    let mut lease = LeaseSummary::default();
    if let Some(leases) = leases {
        let started = std::time::Instant::now();
        let (summary, lease_findings) = lease_check::check(leases, watches);
        tracing::info!(elapsed = ?started.elapsed(), "checked the leases");
        lease = summary;
        findings.extend(lease_findings);
    }
    let mut lock = LockSummary::default();
    if let Some(locks) = locks {
        let started = std::time::Instant::now();
        let (summary, lock_findings) = lock_check::check(locks);
        tracing::info!(elapsed = ?started.elapsed(), "checked the locks");
        lock = summary;
        findings.extend(lock_findings);
    }
    let mut election = ElectionSummary::default();
    if let Some(elections) = elections {
        let started = std::time::Instant::now();
        let (summary, election_findings) = election_check::check(elections);
        tracing::info!(elapsed = ?started.elapsed(), "checked the elections");
        election = summary;
        findings.extend(election_findings);
    }
    Verdict {
        report,
        watch,
        lease,
        lock,
        election,
        findings,
    }
}

/// Checks a recorded history: linearizability and revision order.
pub fn check_history(records: &[Record]) -> (Report, Vec<Finding>) {
    let report = linearizability::check(&operations(records), SHRINK_BUDGET);
    let mut findings: Vec<Finding> = report
        .violations
        .iter()
        .map(|violation| Finding::NotLinearizable {
            records: records_of(records, &violation.minimal),
            violation: violation.clone(),
        })
        .collect();
    findings.extend(revisions(records));
    (report, findings)
}

/// The records of `ops` (an operation is its client's at its call time).
fn records_of(records: &[Record], ops: &[linearizability::Operation]) -> Vec<Record> {
    let wanted: BTreeSet<(u32, u64)> = ops.iter().map(|o| (o.client, o.call)).collect();
    records
        .iter()
        .filter(|r| wanted.contains(&(r.op.client, r.op.call)))
        .cloned()
        .collect()
}

/// Revisions never go backwards on a member: for each completed response from member `m`,
/// every response from `m` to a request sent after it came back has a revision at least as
/// high.
pub fn revisions(records: &[Record]) -> Vec<Finding> {
    let mut by_member: BTreeMap<u64, Vec<&Record>> = BTreeMap::new();
    for record in records {
        if let (true, Some(member), Some(_)) = (record.completed(), record.member, record.revision)
        {
            by_member.entry(member).or_default().push(record);
        }
    }
    let mut findings = Vec::new();
    for (member, mut answered) in by_member {
        answered.sort_by_key(|r| r.op.ret);
        // highest[i]: the record with the highest revision among the first i+1 to return.
        let mut highest: Vec<&Record> = Vec::with_capacity(answered.len());
        for &record in &answered {
            let best = match highest.last() {
                Some(&best) if best.revision >= record.revision => best,
                _ => record,
            };
            highest.push(best);
        }
        for &later in &answered {
            let before = answered.partition_point(|r| r.op.ret < Some(later.op.call));
            if before == 0 {
                continue;
            }
            let earlier = highest[before - 1];
            if earlier.revision > later.revision {
                findings.push(Finding::RevisionWentBack {
                    member,
                    earlier: Box::new(earlier.clone()),
                    later: Box::new(later.clone()),
                });
                if findings.len() >= MAX_REVISION_FINDINGS {
                    return findings;
                }
            }
        }
    }
    findings
}

/// One stored key-value, as compared across members.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredKv {
    pub key: String,
    pub value: String,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
}

/// A member's whole keyspace at one revision.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberState {
    pub member: String,
    pub revision: i64,
    pub kvs: Vec<StoredKv>,
}

/// Where two members' data differ.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Divergence {
    pub revision: i64,
    pub a: String,
    pub b: String,
    /// Each key on which they differ, with what each holds (`None`: absent).
    pub keys: Vec<(String, Option<StoredKv>, Option<StoredKv>)>,
}

/// Compares every member's state with the first one's.
pub fn compare_states(states: &[MemberState]) -> Vec<Divergence> {
    let Some((first, rest)) = states.split_first() else {
        return Vec::new();
    };
    let index = |state: &MemberState| -> HashMap<String, StoredKv> {
        state
            .kvs
            .iter()
            .map(|kv| (kv.key.clone(), kv.clone()))
            .collect()
    };
    let reference = index(first);
    let mut divergences = Vec::new();
    for other in rest {
        let theirs = index(other);
        let keys: BTreeSet<&String> = reference.keys().chain(theirs.keys()).collect();
        let differing: Vec<_> = keys
            .into_iter()
            .filter(|k| reference.get(*k) != theirs.get(*k))
            .map(|k| (k.clone(), reference.get(k).cloned(), theirs.get(k).cloned()))
            .collect();
        if !differing.is_empty() || first.revision != other.revision {
            divergences.push(Divergence {
                revision: first.revision,
                a: first.member.clone(),
                b: other.member.clone(),
                keys: differing,
            });
        }
    }
    divergences
}

/// Waits until every member reports the same applied revision and Raft index, then reads the
/// whole keyspace at that revision on each member (serializable: its own state) and compares.
/// Returns the common revision, if they reached one, and the findings.
pub async fn convergence(cluster: &Cluster, timeout: Duration) -> (Option<i64>, Vec<Finding>) {
    let deadline = Instant::now() + timeout;
    let revision = loop {
        let mut seen = Vec::new();
        for member in &cluster.members {
            seen.push(member.status().await.map_err(|e| format!("{e:#}")));
        }
        let agreed: BTreeSet<(i64, u64)> = seen
            .iter()
            .filter_map(|s| s.as_ref().ok())
            .map(|s| (s.revision, s.applied_index))
            .collect();
        if agreed.len() == 1 && seen.iter().all(Result::is_ok) {
            break agreed.into_iter().next().expect("one element").0;
        }
        if Instant::now() >= deadline {
            let reason = cluster
                .members
                .iter()
                .zip(&seen)
                .map(|(m, s)| match s {
                    Ok(s) => format!(
                        "{} at revision {} applied index {}",
                        m.process.name, s.revision, s.applied_index
                    ),
                    Err(e) => format!("{}: {e}", m.process.name),
                })
                .collect::<Vec<_>>()
                .join("; ");
            let findings = vec![Finding::NotConverged {
                reason: format!("no common revision within {timeout:?}: {reason}"),
            }];
            return (None, findings);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut states = Vec::new();
    for member in &cluster.members {
        match read_state(&member.process.client_url, revision).await {
            Ok(kvs) => states.push(MemberState {
                member: member.process.name.clone(),
                revision,
                kvs,
            }),
            Err(e) => {
                let findings = vec![Finding::NotConverged {
                    reason: format!(
                        "reading {} at revision {revision}: {e:#}",
                        member.process.name
                    ),
                }];
                return (Some(revision), findings);
            }
        }
    }
    let findings = compare_states(&states)
        .into_iter()
        .map(Finding::Diverged)
        .collect();
    (Some(revision), findings)
}

/// Waits until every member lists the same voters, one per member slot, and no learner (see
/// [`membership::problems`]); a finding if they do not within `timeout`. Each member is asked
/// for its own view (serializable), so that a member that lags, or still thinks itself a
/// learner, shows.
pub async fn membership_converged(cluster: &Cluster, timeout: Duration) -> Vec<Finding> {
    let deadline = Instant::now() + timeout;
    let peer_urls: Vec<String> = cluster
        .members
        .iter()
        .map(|m| m.process.peer_url.clone())
        .collect();
    loop {
        let mut lists = BTreeMap::new();
        let mut problems = Vec::new();
        for member in &cluster.members {
            let name = member.process.name.clone();
            match member.member_list(false).await {
                Ok(list) => {
                    lists.insert(name, list);
                }
                Err(status) => problems.push(format!(
                    "{name} gave no member list: {}",
                    crate::workload::describe(&status)
                )),
            }
        }
        problems.extend(membership::problems(&lists, &peer_urls));
        if problems.is_empty() {
            return Vec::new();
        }
        if Instant::now() >= deadline {
            return vec![Finding::MembershipNotConverged { problems, lists }];
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every key-value of the member at `url`, at `revision`, from its own state.
async fn read_state(url: &str, revision: i64) -> anyhow::Result<Vec<StoredKv>> {
    let mut kv = KvClient::new(channel(url, Duration::from_secs(5))?);
    let response = kv
        .range(pb::RangeRequest {
            key: vec![0],
            range_end: vec![0],
            revision,
            serializable: true,
            ..Default::default()
        })
        .await?
        .into_inner();
    Ok(response
        .kvs
        .into_iter()
        .map(|kv| StoredKv {
            key: String::from_utf8_lossy(&kv.key).into_owned(),
            value: String::from_utf8_lossy(&kv.value).into_owned(),
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
            version: kv.version,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linearizability::{Input, Operation, Output};

    fn record(call: u64, ret: u64, member: u64, revision: i64) -> Record {
        Record {
            op: Operation {
                key: "k".into(),
                client: call as u32,
                call,
                ret: Some(ret),
                input: Input::Read,
                output: Output::Read(None),
            },
            endpoint: 0,
            member: Some(member),
            revision: Some(revision),
            gave_up: None,
            error: None,
            failed: false,
        }
    }

    #[test]
    fn overlapping_answers_may_come_in_any_revision_order() {
        let records = [
            record(0, 10, 1, 5),
            record(5, 20, 1, 4),
            record(30, 40, 1, 5),
        ];
        assert!(revisions(&records).is_empty());
    }

    #[test]
    fn a_lower_revision_after_a_higher_one_is_caught_per_member() {
        let records = [
            record(0, 10, 1, 7),
            // Another member may be behind: only the same member's order counts.
            record(11, 12, 2, 3),
            record(20, 30, 1, 6),
        ];
        let findings = revisions(&records);
        assert_eq!(findings.len(), 1);
        let Finding::RevisionWentBack {
            member,
            earlier,
            later,
        } = &findings[0]
        else {
            panic!("unexpected finding {:?}", findings[0]);
        };
        assert_eq!(*member, 1);
        assert_eq!((earlier.revision, later.revision), (Some(7), Some(6)));
    }

    #[test]
    fn states_that_differ_are_reported_key_by_key() {
        let kv = |key: &str, value: &str, rev| StoredKv {
            key: key.into(),
            value: value.into(),
            create_revision: 2,
            mod_revision: rev,
            version: 1,
        };
        let a = MemberState {
            member: "n0".into(),
            revision: 9,
            kvs: vec![kv("x", "1", 2), kv("y", "2", 3)],
        };
        let same = MemberState {
            member: "n1".into(),
            ..a.clone()
        };
        assert!(compare_states(&[a.clone(), same]).is_empty());
        let different = MemberState {
            member: "n2".into(),
            revision: 9,
            kvs: vec![kv("x", "1", 2), kv("z", "3", 3)],
        };
        let divergences = compare_states(&[a, different]);
        assert_eq!(divergences.len(), 1);
        let keys: Vec<&str> = divergences[0].keys.iter().map(|k| k.0.as_str()).collect();
        assert_eq!(keys, ["y", "z"]);
    }
}
