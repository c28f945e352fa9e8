//! The watch checker: what each watcher received, across its resumed sessions, is exactly the
//! changes of its prefix, in order, each once, and agrees with what the clients wrote.
//!
//! For every watcher, and for the reference watch read after the faults:
//! - **ordered**: revisions never go down along the whole sequence (the events of one revision,
//!   a transaction's, stay together), and no session delivers a revision below the one it
//!   asked to start from;
//! - **no duplicates**: no change (revision and key) arrives twice;
//! - **explained**: each event is a change some client attempted (acknowledged or of unknown
//!   outcome): a put of that key with that value (every value is written once), a delete of
//!   that key, a put of a lease key with its lease; and when the write was acknowledged, at the
//!   revision its response named. So the watchers agree with the linearizable KV history.
//! - **none missing**: up to the revision a progress notification confirmed complete, each
//!   watcher has every acknowledged write's change, and every change the reference watch has;
//!   it has nothing the reference lacks, and the same content for each. The reference itself
//!   must have every acknowledged write's change. Every watcher must reach the run's end
//!   revision, and the server must cancel none of them.
//!
//! Resuming from one past the last revision received is what makes a complete sequence
//! possible through faults; a server that resumes wrongly shows up as a gap or a duplicate.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::checks::Finding;
use crate::history::{
    EventKind, LeaseOp, LeaseOutcome, LeaseRecord, Record, WatchHistory, WatchedEvent, WatcherLog,
};
use crate::linearizability::{Input, Output};
use crate::{leases, workload};

/// At most this many findings of one kind for one watcher: the first shows the bug.
const MAX_PER_KIND: usize = 3;

/// What the watch checks looked at.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchSummary {
    /// Watchers that ran through the faults.
    pub watchers: usize,
    /// Events they received, all checked.
    pub events: usize,
    /// Sessions they opened after their first: resumptions.
    pub resumes: usize,
    /// Events of the reference watches, up to the end revision.
    pub reference_events: usize,
}

/// A change a watcher should have received.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpectedEvent {
    pub revision: i64,
    pub key: String,
    pub kind: EventKind,
    pub value: String,
    /// What says it happened: an acknowledged write, or the reference watch.
    pub source: String,
    pub kv_write: Option<Box<Record>>,
    pub lease_write: Option<Box<LeaseRecord>>,
}

/// The writes the clients attempted, indexed for explaining events.
struct Writes<'a> {
    /// KV puts and compare-and-swaps, by the value they write (each is written once).
    kv_by_value: HashMap<u64, &'a Record>,
    /// KV deletes, by key.
    kv_deletes: HashMap<&'a str, Vec<&'a Record>>,
    /// Puts of lease keys, by key.
    lease_puts: HashMap<&'a str, Vec<&'a LeaseRecord>>,
    /// The changes acknowledged writes made, by revision and key.
    acknowledged: BTreeMap<(i64, String), ExpectedEvent>,
}

impl<'a> Writes<'a> {
    fn new(records: &'a [Record], lease_records: &'a [LeaseRecord]) -> Writes<'a> {
        let mut writes = Writes {
            kv_by_value: HashMap::new(),
            kv_deletes: HashMap::new(),
            lease_puts: HashMap::new(),
            acknowledged: BTreeMap::new(),
        };
        for record in records {
            match record.op.input {
                Input::Write(value) | Input::Cas { new: value, .. } => {
                    writes.kv_by_value.insert(value, record);
                    let applied = matches!(record.op.output, Output::Written | Output::Cas(true));
                    if let (true, Some(revision)) = (applied && !record.failed, record.revision) {
                        writes.acknowledged.insert(
                            (revision, record.op.key.clone()),
                            ExpectedEvent {
                                revision,
                                key: record.op.key.clone(),
                                kind: EventKind::Put,
                                value: value.to_string(),
                                source: "an acknowledged write".to_string(),
                                kv_write: Some(Box::new(record.clone())),
                                lease_write: None,
                            },
                        );
                    }
                }
                Input::Delete => writes
                    .kv_deletes
                    .entry(record.op.key.as_str())
                    .or_default()
                    .push(record),
                Input::Read => {}
            }
        }
        for record in lease_records {
            let LeaseOp::Put { key, value } = &record.op else {
                continue;
            };
            writes
                .lease_puts
                .entry(key.as_str())
                .or_default()
                .push(record);
            if let LeaseOutcome::Put { revision } = record.outcome {
                writes.acknowledged.insert(
                    (revision, key.clone()),
                    ExpectedEvent {
                        revision,
                        key: key.clone(),
                        kind: EventKind::Put,
                        value: value.clone(),
                        source: "an acknowledged lease put".to_string(),
                        kv_write: None,
                        lease_write: Some(Box::new(record.clone())),
                    },
                );
            }
        }
        writes
    }

    /// Why no attempted write explains `event`, with the write that comes closest; `None` if
    /// one does.
    fn unexplained(&self, event: &WatchedEvent) -> Option<Unexplained> {
        if event.key.starts_with(workload::PREFIX) {
            self.unexplained_kv(event)
        } else if event.key.starts_with(leases::PREFIX) {
            self.unexplained_lease(event)
        } else {
            Some(Unexplained::because(format!(
                "{} is under no prefix the clients write",
                event.key
            )))
        }
    }

    fn unexplained_kv(&self, event: &WatchedEvent) -> Option<Unexplained> {
        if event.kind == EventKind::Delete {
            let deletes = self.kv_deletes.get(event.key.as_str());
            let explains =
                |r: &&&Record| !r.failed && (r.is_unknown() || r.revision == Some(event.revision));
            if deletes.is_some_and(|d| d.iter().any(|r| explains(&r))) {
                return None;
            }
            return Some(Unexplained {
                reason: format!(
                    "no delete of {} could have made it: none was attempted with an unknown \
                     outcome or acknowledged at revision {}",
                    event.key, event.revision
                ),
                kv_write: deletes
                    .and_then(|d| d.last())
                    .map(|r| Box::new((*r).clone())),
                lease_write: None,
            });
        }
        let Ok(value) = event.value.parse::<u64>() else {
            return Some(Unexplained::because(format!(
                "the value {:?} is not one the clients write",
                event.value
            )));
        };
        let Some(&write) = self.kv_by_value.get(&value) else {
            return Some(Unexplained::because(format!(
                "no client wrote the value {value}"
            )));
        };
        let reason = if write.op.key != event.key {
            format!(
                "the value {value} was written to {}, not {}",
                write.op.key, event.key
            )
        } else if write.failed {
            format!("the write of {value} was refused or never sent")
        } else if write.op.output == Output::Cas(false) {
            format!("the compare-and-swap to {value} was answered: compare failed")
        } else if write.completed() && write.revision != Some(event.revision) {
            format!(
                "the write of {value} was acknowledged at revision {:?}, the event is at {}",
                write.revision, event.revision
            )
        } else if event.lease != 0 {
            format!(
                "the write of {value} attached no lease, the event has {:x}",
                event.lease
            )
        } else {
            return None;
        };
        Some(Unexplained {
            reason,
            kv_write: Some(Box::new(write.clone())),
            lease_write: None,
        })
    }

    fn unexplained_lease(&self, event: &WatchedEvent) -> Option<Unexplained> {
        let puts = self.lease_puts.get(event.key.as_str());
        let attempted = |r: &&&LeaseRecord| r.outcome != LeaseOutcome::Failed;
        if event.kind == EventKind::Delete {
            if puts.is_some_and(|p| p.iter().any(|r| attempted(&r))) {
                return None;
            }
            return Some(Unexplained::because(format!(
                "no lease client put {}, yet it was deleted",
                event.key
            )));
        }
        let same_value = puts.and_then(|p| {
            p.iter()
                .find(|r| matches!(&r.op, LeaseOp::Put { value, .. } if *value == event.value))
        });
        let Some(&put) = same_value else {
            return Some(Unexplained::because(format!(
                "no lease client put {:?} to {}",
                event.value, event.key
            )));
        };
        let reason = match put.outcome {
            LeaseOutcome::Failed => "the put was refused or never sent".to_string(),
            LeaseOutcome::LeaseNotFound => "the put was refused: lease not found".to_string(),
            LeaseOutcome::Put { revision } if revision != event.revision => format!(
                "the put was acknowledged at revision {revision}, the event is at {}",
                event.revision
            ),
            _ if put.lease != event.lease => format!(
                "the put attached lease {:x}, the event has {:x}",
                put.lease, event.lease
            ),
            _ => return None,
        };
        Some(Unexplained {
            reason,
            kv_write: None,
            lease_write: Some(Box::new(put.clone())),
        })
    }
}

/// Why an event is not explained, and the write that comes closest.
struct Unexplained {
    reason: String,
    kv_write: Option<Box<Record>>,
    lease_write: Option<Box<LeaseRecord>>,
}

impl Unexplained {
    fn because(reason: String) -> Unexplained {
        Unexplained {
            reason,
            kv_write: None,
            lease_write: None,
        }
    }
}

/// Counts findings per kind for one watcher, to keep at most [`MAX_PER_KIND`] of each.
#[derive(Default)]
struct Capped {
    counts: HashMap<&'static str, usize>,
    findings: Vec<Finding>,
}

impl Capped {
    fn push(&mut self, kind: &'static str, finding: impl FnOnce() -> Finding) {
        let count = self.counts.entry(kind).or_default();
        *count += 1;
        if *count <= MAX_PER_KIND {
            self.findings.push(finding());
        }
    }
}

/// Checks every watcher of `watches` against each other, the reference watch of its prefix,
/// and the writes of `records` (the KV clients) and `lease_records`.
pub fn check(
    watches: &WatchHistory,
    records: &[Record],
    lease_records: &[LeaseRecord],
) -> (WatchSummary, Vec<Finding>) {
    let writes = Writes::new(records, lease_records);
    let mut summary = WatchSummary::default();
    let mut findings = Vec::new();
    for log in &watches.watchers {
        if log.reference {
            summary.reference_events += log
                .events
                .iter()
                .filter(|e| e.revision <= watches.end_revision)
                .count();
        } else {
            summary.watchers += 1;
            summary.events += log.events.len();
            summary.resumes += log.sessions.len().saturating_sub(1);
        }
        let reference = watches
            .watchers
            .iter()
            .find(|r| r.reference && r.prefix == log.prefix && !log.reference);
        findings.extend(check_log(log, reference, &writes, watches).findings);
    }
    (summary, findings)
}

/// The checks of one watcher's log.
fn check_log(
    log: &WatcherLog,
    reference: Option<&WatcherLog>,
    writes: &Writes<'_>,
    watches: &WatchHistory,
) -> Capped {
    let mut out = Capped::default();
    let watcher = log.watcher;
    let end = watches.end_revision;

    for session in log.sessions.iter().filter(|s| s.canceled.is_some()) {
        out.push("canceled", || Finding::WatchCanceled {
            watcher,
            session: session.clone(),
        });
    }
    if log.complete_through < end {
        out.push("incomplete", || Finding::WatchIncomplete {
            watcher,
            reference: log.reference,
            complete_through: log.complete_through,
            end_revision: end,
            last_session: log.sessions.last().cloned(),
        });
    }

    // Order and duplicates, along the sequence as received.
    let mut first_seen: HashMap<(i64, &str), &WatchedEvent> = HashMap::new();
    let mut highest: Option<&WatchedEvent> = None;
    for event in &log.events {
        if let Some(earlier) = first_seen.get(&(event.revision, event.key.as_str())) {
            out.push("duplicate", || Finding::WatchDuplicate {
                watcher,
                first: Box::new((*earlier).clone()),
                second: Box::new(event.clone()),
            });
            continue;
        }
        first_seen.insert((event.revision, &event.key), event);
        match highest {
            Some(high) if event.revision < high.revision => {
                out.push("out of order", || Finding::WatchOutOfOrder {
                    watcher,
                    earlier: Box::new(high.clone()),
                    later: Box::new(event.clone()),
                });
            }
            _ => highest = Some(event),
        }
        let session_from = log.sessions.get(event.session as usize).map(|s| s.from);
        let outside = if !event.key.starts_with(&log.prefix) {
            Some(format!(
                "{} is outside the watched prefix {}",
                event.key, log.prefix
            ))
        } else if session_from.is_some_and(|from| event.revision < from) {
            Some(format!(
                "revision {} is below the revision {} its session asked to start from",
                event.revision,
                session_from.unwrap_or_default()
            ))
        } else {
            None
        };
        if let Some(reason) = outside {
            out.push("unexplained", || Finding::WatchUnexplained {
                watcher,
                event: Box::new(event.clone()),
                reason,
                kv_write: None,
                lease_write: None,
            });
        } else if let Some(why) = writes.unexplained(event) {
            out.push("unexplained", || Finding::WatchUnexplained {
                watcher,
                event: Box::new(event.clone()),
                reason: why.reason,
                kv_write: why.kv_write,
                lease_write: why.lease_write,
            });
        }
    }

    // Completeness, up to what the watcher confirmed (beyond it, `WatchIncomplete` says it).
    let through = log.complete_through.min(end);
    let in_range = |revision: i64| revision >= log.start_revision && revision <= through;
    let mine: BTreeMap<(i64, &str), &WatchedEvent> = log
        .events
        .iter()
        .filter(|e| in_range(e.revision))
        .map(|e| ((e.revision, e.key.as_str()), e))
        .rev() // The first arrival of a duplicate wins.
        .collect();
    let mut expected: BTreeMap<(i64, &str), ExpectedEvent> = BTreeMap::new();
    for ((revision, key), write) in &writes.acknowledged {
        if in_range(*revision) && key.starts_with(&log.prefix) {
            expected.insert((*revision, key.as_str()), write.clone());
        }
    }
    if let Some(reference) = reference {
        // The reference vouches only for what it confirmed.
        let vouched = |revision: i64| in_range(revision) && revision <= reference.complete_through;
        let theirs: BTreeMap<(i64, &str), &WatchedEvent> = reference
            .events
            .iter()
            .filter(|e| vouched(e.revision))
            .map(|e| ((e.revision, e.key.as_str()), e))
            .rev()
            .collect();
        for (&(revision, key), event) in &theirs {
            expected
                .entry((revision, key))
                .or_insert_with(|| ExpectedEvent {
                    revision,
                    key: key.to_string(),
                    kind: event.kind,
                    value: event.value.clone(),
                    source: format!("the reference watch {}", reference.watcher),
                    kv_write: None,
                    lease_write: None,
                });
        }
        for (&(revision, key), event) in &mine {
            if !vouched(revision) {
                continue;
            }
            let reason = match theirs.get(&(revision, key)) {
                None => "the reference watch has no such change".to_string(),
                Some(other) if other.kind != event.kind || other.value != event.value => format!(
                    "the reference watch has {:?} {:?} for this change",
                    other.kind, other.value
                ),
                Some(_) => continue,
            };
            out.push("unexplained", || Finding::WatchUnexplained {
                watcher,
                event: Box::new((*event).clone()),
                reason,
                kv_write: None,
                lease_write: None,
            });
        }
    }
    let missed: Vec<&ExpectedEvent> = expected
        .iter()
        .filter(|(change, _)| !mine.contains_key(change))
        .map(|(_, e)| e)
        .collect();
    if let Some(&first) = missed.first() {
        // The watcher's events around the gap, by revision.
        let previous = mine
            .range(..(first.revision, first.key.as_str()))
            .next_back()
            .map(|(_, e)| Box::new((*e).clone()));
        let next = mine
            .range((first.revision, first.key.as_str())..)
            .next()
            .map(|(_, e)| Box::new((*e).clone()));
        out.push("missed", || Finding::WatchMissed {
            watcher,
            reference: log.reference,
            missed: Box::new(first.clone()),
            previous,
            next,
            total_missed: missed.len(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::WatchSession;
    use crate::linearizability::Operation;

    fn write(key: &str, value: u64, revision: Option<i64>) -> Record {
        Record {
            op: Operation {
                key: key.into(),
                client: value as u32,
                call: value * 10,
                ret: revision.map(|_| value * 10 + 5),
                input: Input::Write(value),
                output: if revision.is_some() {
                    Output::Written
                } else {
                    Output::Unknown
                },
            },
            endpoint: 0,
            member: revision.map(|_| 1),
            revision,
            gave_up: None,
            error: None,
            failed: false,
        }
    }

    fn delete(key: &str, call: u64, revision: i64) -> Record {
        Record {
            op: Operation {
                key: key.into(),
                client: 99,
                call,
                ret: Some(call + 5),
                input: Input::Delete,
                output: Output::Deleted,
            },
            endpoint: 0,
            member: Some(1),
            revision: Some(revision),
            gave_up: None,
            error: None,
            failed: false,
        }
    }

    fn put_event(key: &str, value: &str, revision: i64) -> WatchedEvent {
        WatchedEvent {
            received: revision as u64 * 100,
            session: 0,
            kind: EventKind::Put,
            key: key.into(),
            value: value.into(),
            revision,
            lease: 0,
        }
    }

    fn delete_event(key: &str, revision: i64) -> WatchedEvent {
        WatchedEvent {
            kind: EventKind::Delete,
            value: String::new(),
            ..put_event(key, "", revision)
        }
    }

    fn log(watcher: u32, reference: bool, events: Vec<WatchedEvent>) -> WatcherLog {
        WatcherLog {
            watcher,
            reference,
            prefix: workload::PREFIX.into(),
            start_revision: 2,
            complete_through: 7,
            sessions: vec![WatchSession {
                endpoint: 0,
                from: 2,
                opened: 0,
                closed: 1_000,
                ended: "done".into(),
                canceled: None,
            }],
            events,
        }
    }

    /// Writes of 1, 2 (unknown outcome, yet applied), 3, a delete, and 5 to two keys.
    fn records() -> Vec<Record> {
        vec![
            write("chaos/0000/0", 1, Some(2)),
            write("chaos/0000/1", 2, None),
            write("chaos/0000/0", 3, Some(4)),
            delete("chaos/0000/1", 45, 5),
            write("chaos/0000/1", 5, Some(6)),
            // Acknowledged at 7, but with nothing to delete there: no event.
            delete("chaos/0000/0", 70, 7),
        ]
    }

    /// Every change of [`records`], in order.
    fn changes() -> Vec<WatchedEvent> {
        vec![
            put_event("chaos/0000/0", "1", 2),
            put_event("chaos/0000/1", "2", 3),
            put_event("chaos/0000/0", "3", 4),
            delete_event("chaos/0000/1", 5),
            put_event("chaos/0000/1", "5", 6),
        ]
    }

    fn run_check(watched: Vec<WatchedEvent>) -> Vec<Finding> {
        let watches = WatchHistory {
            start_revision: 2,
            end_revision: 7,
            watchers: vec![log(0, false, watched), log(1000, true, changes())],
        };
        let (summary, findings) = check(&watches, &records(), &[]);
        assert_eq!(summary.watchers, 1);
        assert_eq!(summary.reference_events, 5);
        findings
    }

    #[test]
    fn a_complete_ordered_sequence_passes() {
        assert_eq!(run_check(changes()), vec![]);
    }

    #[test]
    fn a_missing_event_is_flagged_with_its_neighbours() {
        let mut watched = changes();
        watched.remove(2);
        let findings = run_check(watched);
        let [Finding::WatchMissed {
            watcher,
            missed,
            previous,
            next,
            total_missed,
            ..
        }] = findings.as_slice()
        else {
            panic!("expected one miss, got {findings:?}");
        };
        assert_eq!((*watcher, missed.revision, *total_missed), (0, 4, 1));
        assert_eq!(missed.value, "3");
        assert!(
            missed.kv_write.is_some(),
            "an acknowledged write vouches for it"
        );
        assert_eq!(previous.as_ref().map(|e| e.revision), Some(3));
        assert_eq!(next.as_ref().map(|e| e.revision), Some(5));
    }

    #[test]
    fn a_missed_change_of_unknown_outcome_is_flagged_through_the_reference() {
        let mut watched = changes();
        watched.remove(1);
        let findings = run_check(watched);
        assert!(
            matches!(findings.as_slice(), [Finding::WatchMissed { missed, .. }]
                if missed.revision == 3 && missed.source.contains("reference")),
            "{findings:?}"
        );
    }

    #[test]
    fn a_duplicated_event_is_flagged() {
        let mut watched = changes();
        // A resumed session starting one revision too early delivers revision 4 again.
        watched.insert(3, put_event("chaos/0000/0", "3", 4));
        let findings = run_check(watched);
        assert!(
            matches!(findings.as_slice(), [Finding::WatchDuplicate { first, second, .. }]
                if first.revision == 4 && second.revision == 4),
            "{findings:?}"
        );
    }

    #[test]
    fn out_of_order_events_are_flagged() {
        let mut watched = changes();
        watched.swap(1, 2);
        let findings = run_check(watched);
        assert!(
            matches!(findings.as_slice(), [Finding::WatchOutOfOrder { earlier, later, .. }]
                if earlier.revision == 4 && later.revision == 3),
            "{findings:?}"
        );
    }

    #[test]
    fn events_of_one_revision_may_follow_each_other() {
        // A transaction's two changes share a revision; the lease checker's revokes do this.
        let mut watched = changes();
        watched.insert(3, put_event("chaos/0000/2", "9", 4));
        let watches = WatchHistory {
            start_revision: 2,
            end_revision: 7,
            watchers: vec![log(0, false, watched)],
        };
        let mut records = records();
        records.push(write("chaos/0000/2", 9, None));
        let (_, findings) = check(&watches, &records, &[]);
        assert_eq!(findings, vec![]);
    }

    #[test]
    fn an_event_with_a_value_no_write_put_is_flagged() {
        let mut watched = changes();
        watched[4].value = "77".into();
        let findings = run_check(watched);
        let reasons: Vec<&str> = findings
            .iter()
            .map(|f| match f {
                Finding::WatchUnexplained { reason, .. } => reason.as_str(),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(
            reasons,
            [
                "no client wrote the value 77",
                "the reference watch has Put \"5\" for this change"
            ]
        );
    }

    #[test]
    fn an_event_at_another_revision_than_its_acknowledged_write_is_flagged() {
        // The reference agrees with the watcher here: only the KV history shows it.
        let mut shifted = changes();
        shifted[2].revision = 5;
        shifted[3].revision = 4;
        shifted.swap(2, 3);
        let watches = WatchHistory {
            start_revision: 2,
            end_revision: 7,
            watchers: vec![log(0, false, shifted.clone()), log(1000, true, shifted)],
        };
        let (_, findings) = check(&watches, &records(), &[]);
        assert!(
            findings
                .iter()
                .any(|f| matches!(f, Finding::WatchUnexplained { reason, .. }
                if reason.contains("acknowledged at revision Some(4)"))),
            "{findings:?}"
        );
        assert!(
            findings.iter().any(|f| matches!(
                f,
                Finding::WatchMissed {
                    reference: true,
                    ..
                }
            )),
            "the reference lacks the acknowledged write's change: {findings:?}"
        );
    }

    #[test]
    fn a_watcher_that_never_confirmed_the_end_is_incomplete() {
        let mut watcher = log(0, false, changes());
        watcher.complete_through = 5;
        let watches = WatchHistory {
            start_revision: 2,
            end_revision: 7,
            watchers: vec![watcher],
        };
        let (_, findings) = check(&watches, &records(), &[]);
        assert!(
            matches!(
                findings.as_slice(),
                [Finding::WatchIncomplete {
                    complete_through: 5,
                    ..
                }]
            ),
            "{findings:?}"
        );
    }

    #[test]
    fn lease_events_must_match_the_lease_puts() {
        let put = LeaseRecord {
            client: 0,
            lease: 0x1_0000_0001,
            op: LeaseOp::Put {
                key: "lease/100000001/0".into(),
                value: "100000001/0".into(),
            },
            call: 10,
            ret: 20,
            outcome: LeaseOutcome::Put { revision: 3 },
            endpoint: 0,
            error: None,
        };
        let event = WatchedEvent {
            lease: 0x1_0000_0001,
            ..put_event("lease/100000001/0", "100000001/0", 3)
        };
        let deleted = delete_event("lease/100000001/0", 4);
        let mut watcher = log(0, false, vec![event.clone(), deleted]);
        watcher.prefix = leases::PREFIX.into();
        let watches = WatchHistory {
            start_revision: 2,
            end_revision: 7,
            watchers: vec![watcher.clone()],
        };
        let (_, findings) = check(&watches, &[], std::slice::from_ref(&put));
        assert_eq!(findings, vec![]);

        // Put without the lease: flagged.
        watcher.events[0].lease = 0;
        let watches = WatchHistory {
            watchers: vec![watcher],
            ..watches
        };
        let (_, findings) = check(&watches, &[], &[put]);
        assert!(
            matches!(findings.as_slice(), [Finding::WatchUnexplained { reason, .. }] if reason.contains("attached lease")),
            "{findings:?}"
        );
    }
}
