//! The lease checker: a lease's keys live as long as etcd promises, and no longer than it must.
//!
//! - **Not before.** etcd's leader starts a lease's TTL when it grants it and again on every
//!   keep-alive it takes, and a lease whose TTL has not run out is deleted only by a revoke.
//!   The leader takes a request after the client sent it, so a lease granted or renewed by a
//!   request sent at `t` (whose answer said so) lives at least until `t + TTL`; the send time
//!   counts, not the answer's arrival, which a slow or paused member may hold back for longer
//!   than the TTL. Any sign that the lease was gone before then is a violation, unless a
//!   revoke had been sent by then: a DELETE of one of its keys that a watcher received, a
//!   keep-alive answered TTL 0, a put or revoke refused with "lease not found".
//! - **Not long after.** An abandoned lease must be gone within [`EXPIRY_SLACK`] of its
//!   expiry; since only a leader with a quorum expires leases, and a new leader restarts their
//!   clocks, the bound counts from the nemesis's last heal at the earliest. The deletion time is
//!   the earliest of a watcher's DELETE and the first linearizable read that no longer found
//!   the key.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::checks::Finding;
use crate::history::{EventKind, LeaseHistory, LeaseOp, LeaseOutcome, LeaseRecord, WatchHistory};
use crate::leases::PREFIX;

/// How long after its expiry an abandoned lease's keys may remain once the faults have stopped:
/// an election (up to two election timeouts, plus the vote), the grace a new leader gives every
/// lease (one election timeout), the lessor's tick (250 ms), the revoke's commit, and the
/// delivery of the DELETE, with room to spare on a loaded machine. It also covers a keep-alive
/// the client gave up on (after 2 s) that the member it reached still takes to the leader
/// within its request timeout (5 s + two election timeouts from the sending).
pub const EXPIRY_SLACK: Duration = Duration::from_secs(10);

/// What the lease checks looked at.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseSummary {
    /// Leases whose grant was acknowledged.
    pub leases: usize,
    /// Keys attached to them that were stored.
    pub keys: usize,
    /// Keep-alives answered with a renewal.
    pub renewals: usize,
    /// Leases revoked by their client (acknowledged).
    pub revoked: usize,
    /// Lease operations whose outcome the client never learned.
    pub unknown: usize,
}

/// One lease's records, and what follows from them.
struct Lease<'a> {
    id: i64,
    records: Vec<&'a LeaseRecord>,
    /// The granted TTL, in nanoseconds.
    ttl: u64,
    ttl_seconds: i64,
}

impl Lease<'_> {
    /// The latest time the lease is promised to live until, and the request that promised it:
    /// the send time of an acknowledged grant or renewal, plus the TTL.
    fn alive_until(&self) -> Option<(u64, &LeaseRecord)> {
        self.records
            .iter()
            .filter(|r| {
                matches!(
                    r.outcome,
                    LeaseOutcome::Granted { .. } | LeaseOutcome::Renewed { .. }
                )
            })
            .map(|r| (r.call + self.ttl, *r))
            .max_by_key(|(until, _)| *until)
    }

    /// When the client first sent a revoke that may have been carried out.
    fn revoke_sent(&self) -> Option<u64> {
        self.records
            .iter()
            .filter(|r| r.op == LeaseOp::Revoke && r.outcome != LeaseOutcome::Failed)
            .map(|r| r.call)
            .min()
    }

    /// By when the lease's keys must be gone: the TTL plus [`EXPIRY_SLACK`] after the later of
    /// its last grant or keep-alive activity (sent, answered, or given up on) and the end of
    /// the faults.
    fn deadline(&self, faults_ended: u64) -> u64 {
        let last_activity = self
            .records
            .iter()
            .filter(|r| matches!(r.op, LeaseOp::Grant { .. } | LeaseOp::KeepAlive))
            .filter(|r| r.outcome != LeaseOutcome::Failed)
            .map(|r| r.ret)
            .max()
            .unwrap_or(0);
        last_activity.max(faults_ended) + self.ttl + EXPIRY_SLACK.as_nanos() as u64
    }

    /// The keys attached to it, with the time their put was acknowledged, if it was.
    fn keys(&self) -> BTreeMap<&str, Option<u64>> {
        let mut keys = BTreeMap::new();
        for record in &self.records {
            if let LeaseOp::Put { key, .. } = &record.op {
                if record.outcome == LeaseOutcome::Failed {
                    continue;
                }
                let acknowledged = matches!(record.outcome, LeaseOutcome::Put { .. });
                let entry = keys.entry(key.as_str()).or_insert(None);
                if acknowledged {
                    *entry = Some(record.ret);
                }
            }
        }
        keys
    }
}

/// The granted leases of `records`, by id.
fn leases(records: &[LeaseRecord]) -> Vec<Lease<'_>> {
    let mut by_id: BTreeMap<i64, Vec<&LeaseRecord>> = BTreeMap::new();
    for record in records {
        by_id.entry(record.lease).or_default().push(record);
    }
    by_id
        .into_iter()
        .filter_map(|(id, records)| {
            let ttl_seconds = records.iter().find_map(|r| match r.outcome {
                LeaseOutcome::Granted { ttl } => Some(ttl),
                _ => None,
            })?;
            Some(Lease {
                id,
                records,
                ttl: Duration::from_secs(ttl_seconds.max(0) as u64).as_nanos() as u64,
                ttl_seconds,
            })
        })
        .collect()
}

/// The latest deadline of any lease in `records` (see [`EXPIRY_SLACK`]): how long the run
/// waits for every lease key to be deleted.
pub fn latest_deadline(records: &[LeaseRecord], faults_ended: u64) -> u64 {
    leases(records)
        .iter()
        .map(|lease| lease.deadline(faults_ended))
        .max()
        .unwrap_or(faults_ended)
}

/// The granted leases of some records, indexed once for a checker that asks by when many of
/// them must be gone.
pub(crate) struct Expiries<'a> {
    leases: BTreeMap<i64, Lease<'a>>,
}

impl<'a> Expiries<'a> {
    pub(crate) fn new(records: &'a [LeaseRecord]) -> Expiries<'a> {
        Expiries {
            leases: leases(records)
                .into_iter()
                .map(|lease| (lease.id, lease))
                .collect(),
        }
    }

    /// By when lease `id`'s keys must be gone (see [`EXPIRY_SLACK`]), counting from
    /// `quiet_since` at the earliest; `None` if its grant was never acknowledged.
    pub(crate) fn deadline(&self, id: i64, quiet_since: u64) -> Option<u64> {
        self.leases
            .get(&id)
            .map(|lease| lease.deadline(quiet_since))
    }
}

/// Checks every lease of `history`; `watches` gives the DELETE events watchers received.
pub fn check(
    history: &LeaseHistory,
    watches: Option<&WatchHistory>,
) -> (LeaseSummary, Vec<Finding>) {
    let mut summary = LeaseSummary {
        unknown: history
            .records
            .iter()
            .filter(|r| r.outcome == LeaseOutcome::Unknown)
            .count(),
        renewals: history
            .records
            .iter()
            .filter(|r| matches!(r.outcome, LeaseOutcome::Renewed { .. }))
            .count(),
        ..LeaseSummary::default()
    };
    // Each deleted key: when a watcher that ran through the faults first received its DELETE,
    // and whether any watcher (the reference too) saw it put.
    let mut deleted: BTreeMap<&str, (u64, String)> = BTreeMap::new();
    let mut seen_put: BTreeSet<&str> = BTreeSet::new();
    for log in watches
        .iter()
        .flat_map(|w| &w.watchers)
        .filter(|log| log.prefix == PREFIX)
    {
        for event in &log.events {
            match event.kind {
                EventKind::Put => {
                    seen_put.insert(&event.key);
                }
                EventKind::Delete if !log.reference => {
                    let evidence = format!(
                        "watcher {} received the DELETE of {} (revision {}) at {}",
                        log.watcher, event.key, event.revision, event.received
                    );
                    let entry = deleted
                        .entry(&event.key)
                        .or_insert((u64::MAX, String::new()));
                    if event.received < entry.0 {
                        *entry = (event.received, evidence);
                    }
                }
                EventKind::Delete => {}
            }
        }
    }

    let mut findings = Vec::new();
    for lease in leases(&history.records) {
        summary.leases += 1;
        if lease
            .records
            .iter()
            .any(|r| r.op == LeaseOp::Revoke && r.outcome == LeaseOutcome::Revoked)
        {
            summary.revoked += 1;
        }
        let keys = lease.keys();
        // Every sign that the lease was gone, with its time: an upper bound on when it went.
        let mut gone: Vec<(u64, String)> = Vec::new();
        for record in &lease.records {
            let what = match (&record.op, &record.outcome) {
                (LeaseOp::KeepAlive, LeaseOutcome::Expired) => "a keep-alive was answered TTL 0",
                (LeaseOp::Put { .. }, LeaseOutcome::LeaseNotFound) => {
                    "a put with it was refused: lease not found"
                }
                (LeaseOp::Revoke, LeaseOutcome::LeaseNotFound) => {
                    "its revoke was refused: lease not found"
                }
                _ => continue,
            };
            gone.push((record.ret, format!("{what} at {}", record.ret)));
        }
        // Each stored key: when it was last seen alive and first known deleted.
        let mut stored = Vec::new();
        for (&key, &acknowledged) in &keys {
            let mut deletion = deleted.get(key).cloned();
            let after = lease.records.iter().map(|r| r.ret).max().unwrap_or(0);
            let present_in_poll = history
                .polls
                .iter()
                .any(|p| p.keys.iter().any(|k| k == key));
            if let Some(poll) = history
                .polls
                .iter()
                .filter(|p| p.call > after && !p.keys.iter().any(|k| k == key))
                .min_by_key(|p| p.ret)
            {
                if deletion.as_ref().is_none_or(|(at, _)| poll.ret < *at) {
                    deletion = Some((
                        poll.ret,
                        format!(
                            "a linearizable read answered at {} no longer had {key}",
                            poll.ret
                        ),
                    ));
                }
            }
            let existed = acknowledged.is_some() || seen_put.contains(key) || present_in_poll;
            if !existed {
                // Its put's outcome is unknown and nothing shows it took effect.
                continue;
            }
            if let Some(evidence) = deleted.get(key) {
                gone.push(evidence.clone());
            }
            stored.push((key, deletion));
        }
        summary.keys += stored.len();

        if let Some((alive_until, promise)) = lease.alive_until() {
            let revoked_by = lease.revoke_sent();
            let early = gone
                .iter()
                .filter(|(at, _)| *at < alive_until && revoked_by.is_none_or(|r| *at < r))
                .min_by_key(|(at, _)| *at);
            if let Some((at, evidence)) = early {
                findings.push(Finding::LeaseExpiredEarly {
                    lease: lease.id,
                    ttl: lease.ttl_seconds,
                    alive_until,
                    promised_by: Box::new(promise.clone()),
                    at: *at,
                    evidence: evidence.clone(),
                    records: lease.records.iter().map(|r| (*r).clone()).collect(),
                });
            }
        }

        let deadline = lease.deadline(history.faults_ended);
        for (key, deletion) in stored {
            let late = deletion.as_ref().is_none_or(|(at, _)| *at > deadline);
            if late {
                findings.push(Finding::LeaseNotExpired {
                    lease: lease.id,
                    key: key.to_string(),
                    ttl: lease.ttl_seconds,
                    deadline,
                    deleted: deletion.map(|(at, _)| at),
                    records: lease.records.iter().map(|r| (*r).clone()).collect(),
                });
                // One key shows it; its siblings went (or stayed) with it.
                break;
            }
        }
    }
    (summary, findings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{LeasePoll, WatchedEvent, WatcherLog};

    const SEC: u64 = 1_000_000_000;

    fn record(op: LeaseOp, call: u64, ret: u64, outcome: LeaseOutcome) -> LeaseRecord {
        LeaseRecord {
            client: 0,
            lease: 7,
            op,
            call,
            ret,
            outcome,
            endpoint: 0,
            error: None,
        }
    }

    /// Granted at 1 s with a TTL of 2 s, one key put, kept alive once, sent at 2 s.
    fn kept_alive_once() -> Vec<LeaseRecord> {
        vec![
            record(
                LeaseOp::Grant { ttl: 2 },
                SEC,
                SEC + 10,
                LeaseOutcome::Granted { ttl: 2 },
            ),
            record(
                LeaseOp::Put {
                    key: "lease/7/0".into(),
                    value: "7/0".into(),
                },
                SEC + 20,
                SEC + 30,
                LeaseOutcome::Put { revision: 5 },
            ),
            record(
                LeaseOp::KeepAlive,
                2 * SEC,
                2 * SEC + 10,
                LeaseOutcome::Renewed { ttl: 2 },
            ),
        ]
    }

    fn deleted_at(received: u64) -> WatchHistory {
        WatchHistory {
            start_revision: 1,
            end_revision: 9,
            watchers: vec![WatcherLog {
                watcher: 0,
                reference: false,
                prefix: PREFIX.into(),
                start_revision: 1,
                complete_through: 9,
                sessions: Vec::new(),
                events: vec![
                    WatchedEvent {
                        received: SEC + 40,
                        session: 0,
                        kind: EventKind::Put,
                        key: "lease/7/0".into(),
                        value: "7/0".into(),
                        revision: 5,
                        lease: 7,
                    },
                    WatchedEvent {
                        received,
                        session: 0,
                        kind: EventKind::Delete,
                        key: "lease/7/0".into(),
                        value: String::new(),
                        revision: 8,
                        lease: 0,
                    },
                ],
            }],
        }
    }

    fn history(records: Vec<LeaseRecord>) -> LeaseHistory {
        LeaseHistory {
            records,
            polls: vec![LeasePoll {
                call: 20 * SEC,
                ret: 20 * SEC + 10,
                keys: Vec::new(),
            }],
            faults_ended: 0,
        }
    }

    #[test]
    fn a_lease_deleted_after_its_ttl_passes() {
        // The keep-alive sent at 2 s promised life until 4 s; deleted at 4.3 s.
        let (summary, findings) = check(
            &history(kept_alive_once()),
            Some(&deleted_at(4 * SEC + 300_000_000)),
        );
        assert!(findings.is_empty(), "{findings:?}");
        assert_eq!((summary.leases, summary.keys, summary.renewals), (1, 1, 1));
    }

    #[test]
    fn a_key_deleted_before_the_last_keep_alive_ran_out_is_flagged() {
        // Deleted at 3.5 s, while the keep-alive sent at 2 s promised 4 s.
        let (_, findings) = check(
            &history(kept_alive_once()),
            Some(&deleted_at(3 * SEC + 500_000_000)),
        );
        let [Finding::LeaseExpiredEarly {
            lease,
            alive_until,
            at,
            ..
        }] = findings.as_slice()
        else {
            panic!("expected one early expiry, got {findings:?}");
        };
        assert_eq!(
            (*lease, *alive_until, *at),
            (7, 4 * SEC, 3 * SEC + 500_000_000)
        );
    }

    #[test]
    fn a_revoke_explains_an_early_deletion() {
        let mut records = kept_alive_once();
        records.push(record(
            LeaseOp::Revoke,
            3 * SEC,
            3 * SEC + 600_000_000,
            LeaseOutcome::Unknown,
        ));
        let (_, findings) = check(&history(records), Some(&deleted_at(3 * SEC + 500_000_000)));
        assert!(findings.is_empty(), "{findings:?}");
    }

    #[test]
    fn a_keep_alive_answered_ttl_0_too_soon_is_flagged() {
        let mut records = kept_alive_once();
        records.push(record(
            LeaseOp::KeepAlive,
            3 * SEC,
            3 * SEC + 10,
            LeaseOutcome::Expired,
        ));
        let (_, findings) = check(&history(records), Some(&deleted_at(4 * SEC + 1)));
        assert!(
            matches!(findings.as_slice(), [Finding::LeaseExpiredEarly { at, .. }] if *at == 3 * SEC + 10),
            "{findings:?}"
        );
    }

    #[test]
    fn a_key_left_long_after_its_expiry_is_flagged() {
        // The last activity was at 2 s: with a TTL of 2 s the key must be gone by 14 s.
        let mut history = history(kept_alive_once());
        history.polls = vec![
            LeasePoll {
                call: 15 * SEC,
                ret: 15 * SEC + 10,
                keys: vec!["lease/7/0".into()],
            },
            LeasePoll {
                call: 16 * SEC,
                ret: 16 * SEC + 10,
                keys: Vec::new(),
            },
        ];
        let (_, findings) = check(&history, None);
        let [Finding::LeaseNotExpired {
            key,
            deadline,
            deleted,
            ..
        }] = findings.as_slice()
        else {
            panic!("expected one late expiry, got {findings:?}");
        };
        assert_eq!(key, "lease/7/0");
        assert_eq!(
            *deadline,
            2 * SEC + 10 + 2 * SEC + EXPIRY_SLACK.as_nanos() as u64
        );
        assert_eq!(*deleted, Some(16 * SEC + 10));

        // The same history is fine when the faults ended late enough to excuse it.
        history.faults_ended = 5 * SEC;
        assert!(check(&history, None).1.is_empty());
    }

    #[test]
    fn a_key_never_deleted_is_flagged_and_an_unknown_put_is_not() {
        let mut records = kept_alive_once();
        records.push(record(
            LeaseOp::Put {
                key: "lease/7/1".into(),
                value: "7/1".into(),
            },
            SEC + 40,
            6 * SEC,
            LeaseOutcome::Unknown,
        ));
        let mut history = history(records);
        // The acknowledged key is still there at the end; the unknown one never appeared.
        history.polls[0].keys = vec!["lease/7/0".into()];
        let (_, findings) = check(&history, None);
        assert!(
            matches!(findings.as_slice(), [Finding::LeaseNotExpired { key, deleted: None, .. }] if key == "lease/7/0"),
            "{findings:?}"
        );
    }
}
