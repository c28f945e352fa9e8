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
//! - **Liveness.** When a holder abandons a lock (stops keeping its lease alive) while another
//!   client waits, some Lock of that name must return within [`HANDOFF_SLACK`] of the time
//!   the lease must be gone by ([`crate::lease_check::expiry_deadline`]). Checked only where it
//!   cannot be a false alarm: nothing the nemesis did in the window (from the holder's Lock to
//!   that deadline), and every Lock, keep-alive and revoke of the name's sessions sent before
//!   then either succeeded or is still waiting.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::checks::Finding;
use crate::history::{
    LeaseOp, LeaseOutcome, LockHistory, LockOp, LockOutcome, LockRecord, NemesisEvent,
};
use crate::lease_check::expiry_deadline;

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
    let mut findings = Vec::new();
    for (name, records) in &by_name {
        findings.extend(fencing(name, records));
        findings.extend(tokens_grow(name, records));
        let (checked, stuck) = liveness(name, records, history);
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

/// Whether the nemesis did nothing in `(at, until]`, nor soon enough after it that it may have
/// begun inside.
fn undisturbed(events: &[NemesisEvent], at: u64, until: u64) -> bool {
    let limit = until + INJECTION_SLACK.as_nanos() as u64;
    !events.iter().any(|e| e.at > at && e.at <= limit)
}

/// Abandoned locks pass on to a waiter: see the module's doc. The hand-overs judged, and the
/// findings.
fn liveness(name: &str, records: &[&LockRecord], history: &LockHistory) -> (usize, Vec<Finding>) {
    let leases_of_name: BTreeSet<i64> = records.iter().map(|r| r.lease).collect();
    let mut checked = 0;
    let mut findings = Vec::new();
    for abandon in records.iter().filter(|r| r.op == LockOp::Abandon) {
        let Some(acquired) = records
            .iter()
            .find(|r| r.lease == abandon.lease && r.op == LockOp::Lock && token(r).is_some())
        else {
            continue;
        };
        let start = acquired.call;
        // The deadline counts from the lease's last keep-alive, or from the last heal if that
        // came later; nothing may have happened between then and the deadline.
        let Some(healed_at) = healed_at(&history.nemesis, start) else {
            continue;
        };
        let Some(expired_by) = expiry_deadline(&history.leases, abandon.lease, healed_at) else {
            continue;
        };
        let deadline = expired_by + HANDOFF_SLACK.as_nanos() as u64;
        if !undisturbed(&history.nemesis, start, deadline) {
            continue;
        }
        let waiter = records.iter().find(|w| {
            w.op == LockOp::Lock
                && w.lease != abandon.lease
                && w.call < abandon.ret
                && w.ret > deadline
        });
        let Some(waiter) = waiter else { continue };
        // Every Lock of the name sent before the deadline acquired or is still waiting, and
        // every lease operation of the name's sessions then succeeded: no stray key lingers,
        // no waiter's key went away.
        let clean_locks = records
            .iter()
            .filter(|r| r.op == LockOp::Lock && r.call < deadline)
            .all(|r| token(r).is_some() || r.ret > deadline);
        let clean_leases = history
            .leases
            .iter()
            .filter(|l| leases_of_name.contains(&l.lease) && l.call < deadline)
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
        let passed_on = records.iter().any(|r| {
            r.lease != abandon.lease
                && r.op == LockOp::Lock
                && token(r).is_some()
                && r.ret > acquired.ret
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
