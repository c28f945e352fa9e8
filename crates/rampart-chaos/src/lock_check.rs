//! The lock checker. It judges what etcd's locks guarantee, not what a client believed: a
//! client's view of holding a lock can be stale (its lease may have expired unnoticed), which
//! is what the fencing token is for, and a write whose outcome is unknown may or may not have
//! happened, so only acknowledged guarded writes are judged.
//!
//! - **Fencing.** A guarded write applied at revision `r` with token `t` proves that the lock
//!   key created at `t` existed at `r`, and its writer's Lock had returned, so at some revision
//!   `q <= r` no older key of the name existed. Of two holders `t < u`, `t`'s key therefore
//!   cannot exist at any revision at or after `u`'s lock was confirmed: ordered by revision,
//!   the acknowledged writes to a name's register carry non-decreasing tokens. A token that
//!   comes back after another ([`Finding::LockHoldersInterleaved`]) or a smaller token after a
//!   larger one ([`Finding::LockTokenWentBack`]) shows two holders at once.
//! - **Tokens grow.** An acquisition that returned before another's Lock was sent has the
//!   smaller token: the later key was created after the earlier was read.
//! - **Liveness.** When a holder abandons a lock (stops keeping its lease alive and walks
//!   away) while a Lock of another lease waits (sent before the abandonment, not answered by
//!   then), some Lock of another lease must acquire the name, with a newer key, within
//!   [`HANDOFF_SLACK`] of the time the abandoned lease must be gone by
//!   ([`crate::lease_check::EXPIRY_SLACK`]); else [`Finding::LockNotPassedOn`]. The waiter
//!   only shows that someone was in line: whoever is first in line takes the lock. Judged only
//!   where it cannot be a false alarm:
//!   - the nemesis's last act before the holder's Lock was a heal (or it had done nothing),
//!     and it did nothing from then to the deadline. A heal does not count: it undoes a fault
//!     that is itself in the window, or one before it, which the first condition excludes
//!     (the final heal at the end of a run without faults undoes nothing);
//!   - every Lock of the name in the window (sent before the deadline, answered after the
//!     holder's Lock was sent) acquired its key and read its token, or was still waiting at the
//!     deadline: no Lock failed or given up on, whose key may linger in the queue or vanish;
//!   - every lease of the name's sessions whose keys may have been there in the window (whose
//!     own expiry deadline is after the window's start) had every grant and keep-alive sent
//!     before the deadline answered with a renewal, and every revoke done: no stray key
//!     lingers ahead of the waiter, no waiter's key went away.
//!
//!   Without faults this is the usual case, and [`crate::locks`]'s workload makes waiters
//!   the usual case too (see its doc), so runs without faults judge many hand-overs; under
//!   the default faults the nemesis is rarely quiet for a whole window.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::checks::Finding;
use crate::history::{
    LeaseOp, LeaseOutcome, LockHistory, LockOp, LockOutcome, LockRecord, NemesisEvent,
};
use crate::lease_check::Expiries;

/// How long after an abandoned lease must be gone a waiter may take to get the lock: its
/// Lock's watch sees the DELETE, reads its own key and answers, on a loaded machine.
pub const HANDOFF_SLACK: Duration = Duration::from_secs(10);

/// How long after a fault is injected the nemesis may log it: a fault logged after a window
/// may have begun inside it.
const INJECTION_SLACK: Duration = Duration::from_secs(10);

/// What the lock checks looked at.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockSummary {
    /// Locks acquired (Lock answered and the token read).
    pub acquisitions: usize,
    pub writes_ok: usize,
    /// Guarded writes refused by their guard: the lock had passed on.
    pub writes_failed: usize,
    pub writes_unknown: usize,
    /// Locks abandoned by their holders.
    pub abandoned: usize,
    /// Abandonments whose hand-over the liveness check judged.
    pub handovers_checked: usize,
}

/// Checks the lock clients' records.
pub fn check(history: &LockHistory) -> (LockSummary, Vec<Finding>) {
    let records = &history.records;
    let mut summary = LockSummary::default();
    for record in records {
        match (&record.op, &record.outcome) {
            (LockOp::Lock, LockOutcome::Acquired { token: Some(_), .. }) => {
                summary.acquisitions += 1
            }
            (LockOp::GuardedWrite { .. }, LockOutcome::Written { .. }) => summary.writes_ok += 1,
            (LockOp::GuardedWrite { .. }, LockOutcome::CompareFailed { .. }) => {
                summary.writes_failed += 1
            }
            (LockOp::GuardedWrite { .. }, LockOutcome::Unknown) => summary.writes_unknown += 1,
            (LockOp::Abandon, _) => summary.abandoned += 1,
            _ => {}
        }
    }
    let mut by_name: BTreeMap<&str, Vec<&LockRecord>> = BTreeMap::new();
    for record in records {
        by_name.entry(&record.name).or_default().push(record);
    }
    let expiries = Expiries::new(&history.leases);
    let mut findings = Vec::new();
    for (name, records) in &by_name {
        findings.extend(fencing(name, records));
        findings.extend(tokens_grow(name, records));
        let (checked, stuck) = liveness(name, records, history, &expiries);
        summary.handovers_checked += checked;
        findings.extend(stuck);
    }
    (summary, findings)
}

fn token(record: &LockRecord) -> Option<i64> {
    match (&record.op, &record.outcome) {
        (LockOp::Lock, LockOutcome::Acquired { token, .. }) => *token,
        (LockOp::GuardedWrite { token, .. }, _) => Some(*token),
        _ => None,
    }
}

/// The acknowledged guarded writes of one name, in revision order, carry non-decreasing
/// tokens. One finding per name: the first break shows the bug.
fn fencing(name: &str, records: &[&LockRecord]) -> Option<Finding> {
    let mut writes: Vec<(i64, &LockRecord)> = records
        .iter()
        .filter_map(|r| match r.outcome {
            LockOutcome::Written { revision } => Some((revision, *r)),
            _ => None,
        })
        .collect();
    writes.sort_by_key(|(revision, _)| *revision);
    // The last write of each token seen so far.
    let mut last_of: BTreeMap<i64, &LockRecord> = BTreeMap::new();
    let mut previous: Option<&LockRecord> = None;
    for (_, write) in writes {
        let t = token(write)?;
        if let Some(prev) = previous {
            let p = token(prev)?;
            if t < p {
                return Some(match last_of.get(&t) {
                    Some(first) => Finding::LockHoldersInterleaved {
                        name: name.to_string(),
                        first: Box::new((*first).clone()),
                        between: Box::new(prev.clone()),
                        second: Box::new(write.clone()),
                    },
                    None => Finding::LockTokenWentBack {
                        name: name.to_string(),
                        earlier: Box::new(prev.clone()),
                        later: Box::new(write.clone()),
                    },
                });
            }
        }
        last_of.insert(t, write);
        previous = Some(write);
    }
    None
}

/// An acquisition that returned before another Lock of the name was sent has the smaller
/// token. One finding per name.
fn tokens_grow(name: &str, records: &[&LockRecord]) -> Option<Finding> {
    let mut acquired: Vec<&LockRecord> = records
        .iter()
        .copied()
        .filter(|r| r.op == LockOp::Lock && token(r).is_some())
        .collect();
    acquired.sort_by_key(|r| r.ret);
    for later in &acquired {
        // The acquisition with the largest token among those that returned before `later`
        // was sent.
        let earlier = acquired
            .iter()
            .take_while(|e| e.ret < later.call)
            .max_by_key(|e| token(e));
        if let Some(earlier) = earlier {
            if token(earlier) >= token(later) {
                return Some(Finding::LockTokenWentBack {
                    name: name.to_string(),
                    earlier: Box::new((*earlier).clone()),
                    later: Box::new((*later).clone()),
                });
            }
        }
    }
    None
}

/// The time of the last heal at or before `at` (0 if none), or `None` if the nemesis's last
/// act before `at` was not a heal.
fn healed_at(events: &[NemesisEvent], at: u64) -> Option<u64> {
    match events.iter().rfind(|e| e.at <= at) {
        None => Some(0),
        Some(e) if e.action == "heal" => Some(e.at),
        Some(_) => None,
    }
}

/// Whether the nemesis did nothing but heal in `(at, until]`, nor soon enough after it that it
/// may have begun inside.
fn undisturbed(events: &[NemesisEvent], at: u64, until: u64) -> bool {
    let limit = until + INJECTION_SLACK.as_nanos() as u64;
    !events
        .iter()
        .any(|e| e.at > at && e.at <= limit && e.action != "heal")
}

/// Abandoned locks pass on to a waiter: see the module's doc. The hand-overs judged, and the
/// findings.
fn liveness(
    name: &str,
    records: &[&LockRecord],
    history: &LockHistory,
    expiries: &Expiries<'_>,
) -> (usize, Vec<Finding>) {
    let leases_of_name: BTreeSet<i64> = records.iter().map(|r| r.lease).collect();
    let mut checked = 0;
    let mut findings = Vec::new();
    for abandon in records.iter().filter(|r| r.op == LockOp::Abandon) {
        let Some((acquired, held)) = records.iter().find_map(|r| match token(r) {
            Some(token) if r.lease == abandon.lease && r.op == LockOp::Lock => Some((r, token)),
            _ => None,
        }) else {
            continue;
        };
        let start = acquired.call;
        // The deadline counts from the lease's last keep-alive, or from the last heal if that
        // came later; nothing may have happened between then and the deadline.
        let Some(healed_at) = healed_at(&history.nemesis, start) else {
            continue;
        };
        let Some(expired_by) = expiries.deadline(abandon.lease, healed_at) else {
            continue;
        };
        let deadline = expired_by + HANDOFF_SLACK.as_nanos() as u64;
        if !undisturbed(&history.nemesis, start, deadline) {
            continue;
        }
        let waiter = records.iter().find(|w| {
            w.op == LockOp::Lock
                && w.lease != abandon.lease
                && w.call < abandon.call
                && w.ret > abandon.call
        });
        let Some(waiter) = waiter else { continue };
        let clean_locks = records
            .iter()
            .filter(|r| r.op == LockOp::Lock && r.call < deadline && r.ret > start)
            .all(|r| token(r).is_some() || r.ret > deadline);
        // A lease whose keys were surely gone before the window (revoked, or expired by its
        // own deadline) cannot hold anything up in it, whatever became of its requests.
        let in_window = |lease: i64| {
            expiries
                .deadline(lease, healed_at)
                .is_some_and(|gone_by| gone_by > start)
        };
        let clean_leases = history
            .leases
            .iter()
            .filter(|l| leases_of_name.contains(&l.lease) && l.call < deadline)
            .filter(|l| in_window(l.lease))
            .all(|l| match l.op {
                LeaseOp::Revoke => l.outcome == LeaseOutcome::Revoked,
                _ => matches!(
                    l.outcome,
                    LeaseOutcome::Granted { .. } | LeaseOutcome::Renewed { .. }
                ),
            });
        if !clean_locks || !clean_leases {
            continue;
        }
        checked += 1;
        // A newer key than the holder's acquired: the holder's key was gone.
        let passed_on = records.iter().any(|r| {
            r.lease != abandon.lease
                && r.op == LockOp::Lock
                && token(r).is_some_and(|t| t > held)
                && r.ret <= deadline
        });
        if !passed_on {
            findings.push(Finding::LockNotPassedOn {
                name: name.to_string(),
                abandoned: Box::new((*abandon).clone()),
                waiter: Box::new((*waiter).clone()),
                deadline,
            });
        }
    }
    (checked, findings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::LeaseRecord;

    const MS: u64 = 1_000_000;
    const SEC: u64 = 1_000 * MS;

    fn lock_record(client: u32, lease: i64, op: LockOp, call: u64, ret: u64) -> LockRecord {
        LockRecord {
            client,
            name: "l".into(),
            lease,
            op,
            call,
            ret,
            outcome: LockOutcome::Done,
            endpoint: 0,
            error: None,
        }
    }

    fn acquired(client: u32, lease: i64, token: i64, call: u64, ret: u64) -> LockRecord {
        LockRecord {
            outcome: LockOutcome::Acquired {
                key: format!("l/{lease:x}"),
                token: Some(token),
            },
            ..lock_record(client, lease, LockOp::Lock, call, ret)
        }
    }

    fn lease_record(lease: i64, op: LeaseOp, call: u64, outcome: LeaseOutcome) -> LeaseRecord {
        LeaseRecord {
            client: 0,
            lease,
            op,
            call,
            ret: call + 10 * MS,
            outcome,
            endpoint: 0,
            error: None,
        }
    }

    /// A session's lease with a TTL of 3 s, granted at `from` and renewed every second until
    /// `until`.
    fn session(lease: i64, from: u64, until: u64) -> Vec<LeaseRecord> {
        let mut records = vec![lease_record(
            lease,
            LeaseOp::Grant { ttl: 3 },
            from,
            LeaseOutcome::Granted { ttl: 3 },
        )];
        records.extend((from / SEC + 1..=until / SEC).map(|s| {
            lease_record(
                lease,
                LeaseOp::KeepAlive,
                s * SEC,
                LeaseOutcome::Renewed { ttl: 3 },
            )
        }));
        records
    }

    /// Client 0 (lease 1) acquires at 0.2 s with token 10, writes, and abandons at 2 s: its last
    /// keep-alive is answered at 1.01 s, so its lease must be gone by 14.01 s, and the lock
    /// passed on by 24.01 s. Client 1 (lease 2) has waited since 0.6 s and acquires at 5 s
    /// with token 12; it then releases.
    fn handed_over() -> LockHistory {
        let write = LockOp::GuardedWrite {
            token: 10,
            seq: 0,
            value: "0/10/0".into(),
        };
        let mut leases = session(1, 0, 1_500 * MS);
        leases.extend(session(2, 500 * MS, 5 * SEC));
        leases.push(lease_record(
            2,
            LeaseOp::Revoke,
            6 * SEC,
            LeaseOutcome::Revoked,
        ));
        LockHistory {
            records: vec![
                acquired(0, 1, 10, 100 * MS, 200 * MS),
                acquired(1, 2, 12, 600 * MS, 5 * SEC),
                LockRecord {
                    outcome: LockOutcome::Written { revision: 11 },
                    ..lock_record(0, 1, write, 300 * MS, 310 * MS)
                },
                lock_record(0, 1, LockOp::Abandon, 2 * SEC, 2 * SEC + MS),
            ],
            leases,
            nemesis: Vec::new(),
        }
    }

    /// The same, but client 1's Lock never returns: it gives up after 30 s.
    fn stuck() -> LockHistory {
        let mut history = handed_over();
        history.records[1] = LockRecord {
            outcome: LockOutcome::Unknown,
            error: Some("client gave up waiting after 25s".into()),
            ..lock_record(1, 2, LockOp::Lock, 600 * MS, 30 * SEC)
        };
        history
    }

    #[test]
    fn a_lock_handed_over_in_time_is_judged_and_passes() {
        let (summary, findings) = check(&handed_over());
        assert!(findings.is_empty(), "{findings:?}");
        assert_eq!((summary.abandoned, summary.handovers_checked), (1, 1));
    }

    #[test]
    fn a_lock_nobody_acquires_by_the_deadline_is_not_passed_on() {
        let (summary, findings) = check(&stuck());
        assert_eq!(summary.handovers_checked, 1);
        let [Finding::LockNotPassedOn {
            abandoned,
            waiter,
            deadline,
            ..
        }] = &findings[..]
        else {
            panic!("expected one LockNotPassedOn, got {findings:?}");
        };
        assert_eq!((abandoned.client, waiter.client), (0, 1));
        assert_eq!(*deadline, 1_010 * MS + 3 * SEC + 20 * SEC);

        // Acquiring only after the deadline does not count either.
        let mut late = handed_over();
        late.records[1].ret = 25 * SEC;
        let (_, findings) = check(&late);
        assert!(
            matches!(&findings[..], [Finding::LockNotPassedOn { .. }]),
            "{findings:?}"
        );
    }

    #[test]
    fn a_nemesis_act_in_the_window_leaves_the_hand_over_unjudged() {
        let mut history = stuck();
        history.nemesis = vec![
            NemesisEvent {
                at: 3 * SEC,
                action: "fault".into(),
                detail: "partition".into(),
            },
            NemesisEvent {
                at: 6 * SEC,
                action: "heal".into(),
                detail: "healed".into(),
            },
        ];
        let (summary, findings) = check(&history);
        assert!(findings.is_empty(), "{findings:?}");
        assert_eq!(summary.handovers_checked, 0);
    }

    #[test]
    fn a_heal_that_undoes_nothing_still_lets_the_hand_over_be_judged() {
        // The final heal of a run without faults, inside the window.
        let mut history = stuck();
        history.nemesis = vec![NemesisEvent {
            at: 10 * SEC,
            action: "heal".into(),
            detail: "final heal".into(),
        }];
        let (summary, findings) = check(&history);
        assert_eq!(summary.handovers_checked, 1);
        assert_eq!(findings.len(), 1, "{findings:?}");
    }

    #[test]
    fn without_a_waiter_an_abandonment_is_not_judged() {
        // Client 1's Lock is sent only after the abandonment.
        let mut history = stuck();
        history.records[1].call = 3 * SEC;
        let (summary, findings) = check(&history);
        assert!(findings.is_empty(), "{findings:?}");
        assert_eq!(summary.handovers_checked, 0);
    }

    #[test]
    fn a_failed_request_long_before_the_window_does_not_hide_it() {
        // Everything a minute later, after a session (client 2, lease 3) whose Lock's outcome
        // is unknown and whose revoke went unanswered, at `at`.
        let with_failed_session = |at: u64| {
            let mut history = stuck();
            for record in &mut history.records {
                record.call += 60 * SEC;
                record.ret += 60 * SEC;
            }
            for record in &mut history.leases {
                record.call += 60 * SEC;
                record.ret += 60 * SEC;
            }
            history.records.insert(
                0,
                LockRecord {
                    outcome: LockOutcome::Unknown,
                    ..lock_record(2, 3, LockOp::Lock, at + 100 * MS, at + 1_400 * MS)
                },
            );
            history.leases.extend(session(3, at, at + SEC));
            history.leases.push(lease_record(
                3,
                LeaseOp::Revoke,
                at + 1_500 * MS,
                LeaseOutcome::Unknown,
            ));
            check(&history)
        };
        // At 0 s: that lease was gone by 1.01 + 3 + 10 s, long before the window (from
        // 60.1 s).
        let (summary, findings) = with_failed_session(0);
        assert_eq!(summary.handovers_checked, 1);
        assert!(
            matches!(&findings[..], [Finding::LockNotPassedOn { .. }]),
            "{findings:?}"
        );

        // At 58 s: its Lock had ended before the window, but its lease, and so maybe its key,
        // outlived the window's start and may have stood in the waiter's way.
        let (summary, findings) = with_failed_session(58 * SEC);
        assert!(findings.is_empty(), "{findings:?}");
        assert_eq!(summary.handovers_checked, 0);
    }
}
