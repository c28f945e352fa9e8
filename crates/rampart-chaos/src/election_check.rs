//! The election checker, on what etcd's elections guarantee: the leader of an election at a
//! revision is its oldest key (lowest create revision) then, so a key that was the leader at
//! revision `r` existed at `r` with no older key; an older key cannot exist at any later
//! revision either (it would have existed at `r`). Hence:
//!
//! - **Observers never go back.** On one Observe stream, which one member serves from its
//!   applied state, the leaders' create revisions (and a leader's values' mod revisions) never
//!   decrease ([`Finding::ObserveWentBack`]).
//! - **One leader at a time.** Every fact "the key created at `c` led at revision `r`" (a
//!   Proclaim acknowledged at `r`, whose guard proves its key still existed and whose Campaign
//!   had returned; an observed leader at its [`ObservedLeader::leader_at`]) put in revision
//!   order has non-decreasing `c`: a smaller `c` at a later revision is two leaders at once
//!   ([`Finding::LeadersOverlap`]).
//! - **Wins in real-time order.** A Campaign creates its leader key when the leader applies
//!   it, before it answers; each campaign has a lease of its own, so none finds its key there
//!   already. A Campaign sent after another was answered Won therefore creates a newer key: its
//!   create revision is larger ([`Finding::WinsOutOfOrder`]), as lock tokens grow
//!   ([`crate::lock_check`]).
//! - **Observed values were sent.** The key created at `c` holds the value of the Campaign
//!   that created it, then those of its leader's Proclaims. Every value an observer is sent for
//!   it is therefore the Campaign's, or that of a Proclaim of the same lease answered
//!   Proclaimed or never answered: never a value nobody sent, nor one whose Proclaim was
//!   refused ("not leader") or surely not carried out ([`Finding::ObservedValueNotSent`]). The
//!   key's Campaign is the one answered Won with create revision `c` or, if its answer was
//!   lost, the one whose lease the key is named after (etcd's `<name>/<lease hex>`).
//!   [`crate::elections`] makes every value unique in a run, so a value names the request that
//!   sent it.
//!
//! Unknown outcomes are not judged, nor what a campaigner believed after its lease may have
//! expired: only acknowledged Campaigns and Proclaims and what observers were sent.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::checks::Finding;
use crate::history::{
    ElectionHistory, ElectionOp, ElectionOutcome, ElectionRecord, ObservedLeader,
};

/// What the election checks looked at.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ElectionSummary {
    /// Campaigns won.
    pub won: usize,
    /// Proclaims acknowledged.
    pub proclaims: usize,
    /// Leader values the observers were sent.
    pub observed: usize,
    /// Wins whose Campaign was sent after another win was answered: the real-time orders
    /// judged.
    pub win_orders: usize,
    /// Observed values matched to the Campaign or Proclaim that sent them.
    pub values_matched: usize,
}

/// That the key created at `create_revision` led its election at `revision`, and who says so.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderFact {
    pub create_revision: i64,
    pub revision: i64,
    /// The acknowledged Proclaim or the observed response that shows it.
    pub evidence: String,
}

/// Checks the election clients' and observers' records.
pub fn check(history: &ElectionHistory) -> (ElectionSummary, Vec<Finding>) {
    let mut summary = ElectionSummary {
        observed: history.observed.len(),
        ..ElectionSummary::default()
    };
    let mut facts: BTreeMap<&str, Vec<LeaderFact>> = BTreeMap::new();
    // Each campaign's leader key's create revision, by lease.
    let mut won: BTreeMap<i64, i64> = BTreeMap::new();
    for record in &history.records {
        if let ElectionOutcome::Won { rev, .. } = record.outcome {
            summary.won += 1;
            won.insert(record.lease, rev);
        }
    }
    for record in &history.records {
        if let (ElectionOp::Proclaim { value }, ElectionOutcome::Proclaimed { revision }) =
            (&record.op, &record.outcome)
        {
            summary.proclaims += 1;
            let Some(&create_revision) = won.get(&record.lease) else {
                continue;
            };
            facts.entry(&record.name).or_default().push(LeaderFact {
                create_revision,
                revision: *revision,
                evidence: format!(
                    "client {} proclaimed {value:?} at revision {revision} as the leader \
                     created at {create_revision} (lease {:x}), sent at {}",
                    record.client, record.lease, record.call
                ),
            });
        }
    }
    for seen in &history.observed {
        facts.entry(&seen.name).or_default().push(LeaderFact {
            create_revision: seen.create_revision,
            revision: seen.leader_at,
            evidence: format!(
                "observer {} (stream {}, member {}) was sent {} = {:?} (created at {}, \
                 modified at {}) as the leader at revision {}, received at {}",
                seen.observer,
                seen.session,
                seen.endpoint,
                seen.key,
                seen.value,
                seen.create_revision,
                seen.mod_revision,
                seen.leader_at,
                seen.received
            ),
        });
    }
    let mut findings = observers(&history.observed);
    let (win_orders, out_of_order) = wins_in_order(&history.records);
    summary.win_orders = win_orders;
    findings.extend(out_of_order);
    let (values_matched, not_sent) = values_sent(history);
    summary.values_matched = values_matched;
    findings.extend(not_sent);
    for (name, mut facts) in facts {
        facts.sort_by_key(|f| (f.revision, f.create_revision));
        // The fact with the largest create revision so far: any later fact with a smaller one
        // had its key alive when this one's key led.
        let mut newest: Option<&LeaderFact> = None;
        for fact in &facts {
            match newest {
                Some(n) if fact.create_revision < n.create_revision => {
                    findings.push(Finding::LeadersOverlap {
                        name: name.to_string(),
                        first: Box::new(n.clone()),
                        second: Box::new(fact.clone()),
                    });
                    break;
                }
                Some(n) if n.create_revision >= fact.create_revision => {}
                _ => newest = Some(fact),
            }
        }
    }
    (summary, findings)
}

/// On each Observe stream, leaders' create revisions and a leader's mod revisions never
/// decrease. One finding per stream.
fn observers(observed: &[ObservedLeader]) -> Vec<Finding> {
    let mut streams: BTreeMap<(u32, u32), Vec<&ObservedLeader>> = BTreeMap::new();
    for seen in observed {
        streams
            .entry((seen.observer, seen.session))
            .or_default()
            .push(seen);
    }
    let mut findings = Vec::new();
    for stream in streams.values_mut() {
        stream.sort_by_key(|s| s.received);
        for pair in stream.windows(2) {
            let (earlier, later) = (pair[0], pair[1]);
            if (later.create_revision, later.mod_revision)
                < (earlier.create_revision, earlier.mod_revision)
            {
                findings.push(Finding::ObserveWentBack {
                    observer: later.observer,
                    name: later.name.clone(),
                    earlier: Box::new(earlier.clone()),
                    later: Box::new(later.clone()),
                });
                break;
            }
        }
    }
    findings
}

/// A Campaign answered Won before another Campaign of its election was sent has the older
/// leader key. The wins judged (those sent after some win was answered), and one finding per
/// election.
fn wins_in_order(records: &[ElectionRecord]) -> (usize, Vec<Finding>) {
    let mut wins: BTreeMap<&str, Vec<(&ElectionRecord, i64)>> = BTreeMap::new();
    for record in records {
        if let (ElectionOp::Campaign { .. }, ElectionOutcome::Won { rev, .. }) =
            (&record.op, &record.outcome)
        {
            wins.entry(&record.name).or_default().push((record, *rev));
        }
    }
    let mut judged = 0;
    let mut findings = Vec::new();
    for (name, mut by_call) in wins {
        let mut by_ret = by_call.clone();
        by_ret.sort_by_key(|(r, _)| r.ret);
        by_call.sort_by_key(|(r, _)| r.call);
        // The win with the newest key among those answered before `later` was sent.
        let mut newest: Option<(&ElectionRecord, i64)> = None;
        let mut answered = by_ret.iter().peekable();
        let mut finding = None;
        for &(later, rev) in &by_call {
            while let Some(&(earlier, earlier_rev)) = answered.next_if(|(r, _)| r.ret < later.call)
            {
                if newest.is_none_or(|(_, n)| earlier_rev > n) {
                    newest = Some((earlier, earlier_rev));
                }
            }
            let Some((earlier, earlier_rev)) = newest else {
                continue;
            };
            judged += 1;
            if earlier_rev >= rev && finding.is_none() {
                finding = Some(Finding::WinsOutOfOrder {
                    name: name.to_string(),
                    earlier: Box::new(earlier.clone()),
                    later: Box::new(later.clone()),
                });
            }
        }
        findings.extend(finding);
    }
    (judged, findings)
}

/// The leader key a Campaign in election `name` with `lease` puts: etcd's
/// `fmt.Sprintf("%s/%x", name, lease)`; the clients' leases are positive.
fn leader_key(name: &str, lease: i64) -> String {
    format!("{name}/{lease:x}")
}

/// Every value an observer was sent for a leader key was sent for it by that key's Campaign
/// or by a Proclaim of its lease that may have been carried out. The values matched, and one
/// finding per election.
fn values_sent(history: &ElectionHistory) -> (usize, Vec<Finding>) {
    // The lease of the key created at each revision, by the Campaign answered Won...
    let mut won: BTreeMap<(&str, i64), i64> = BTreeMap::new();
    // ...or, for Campaigns whose answer was lost, by the key named after their lease.
    let mut unanswered: BTreeMap<(&str, String), i64> = BTreeMap::new();
    // What each campaigner's requests may have put on its key.
    let mut sent: BTreeMap<(&str, i64), BTreeSet<&str>> = BTreeMap::new();
    for record in &history.records {
        let key = (record.name.as_str(), record.lease);
        match (&record.op, &record.outcome) {
            (ElectionOp::Campaign { value }, ElectionOutcome::Won { rev, .. }) => {
                won.insert((&record.name, *rev), record.lease);
                sent.entry(key).or_default().insert(value);
            }
            (ElectionOp::Campaign { value }, ElectionOutcome::Unknown) => {
                unanswered.insert(
                    (&record.name, leader_key(&record.name, record.lease)),
                    record.lease,
                );
                sent.entry(key).or_default().insert(value);
            }
            (
                ElectionOp::Proclaim { value },
                ElectionOutcome::Proclaimed { .. } | ElectionOutcome::Unknown,
            ) => {
                sent.entry(key).or_default().insert(value);
            }
            _ => {}
        }
    }
    let mut matched = 0;
    let mut findings: BTreeMap<&str, Finding> = BTreeMap::new();
    for seen in &history.observed {
        let lease = won
            .get(&(seen.name.as_str(), seen.create_revision))
            .or_else(|| unanswered.get(&(seen.name.as_str(), seen.key.clone())))
            .copied();
        let was_sent = lease
            .and_then(|lease| sent.get(&(seen.name.as_str(), lease)))
            .is_some_and(|values| values.contains(seen.value.as_str()));
        if was_sent {
            matched += 1;
            continue;
        }
        findings.entry(&seen.name).or_insert_with(|| {
            let leader = history
                .records
                .iter()
                .filter(|r| r.name == seen.name && Some(r.lease) == lease)
                .cloned()
                .collect();
            Finding::ObservedValueNotSent {
                name: seen.name.clone(),
                observed: Box::new(seen.clone()),
                leader,
            }
        });
    }
    (matched, findings.into_values().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(
        client: u32,
        lease: i64,
        op: ElectionOp,
        call: u64,
        ret: u64,
        outcome: ElectionOutcome,
    ) -> ElectionRecord {
        ElectionRecord {
            client,
            name: "e".into(),
            lease,
            op,
            call,
            ret,
            outcome,
            endpoint: 0,
            error: None,
        }
    }

    /// Client `client`'s Campaign with `lease`, answered Won with a key created at `rev`.
    fn won(client: u32, lease: i64, call: u64, ret: u64, rev: i64) -> ElectionRecord {
        let op = ElectionOp::Campaign {
            value: format!("{client}/{lease:x}/0"),
        };
        let outcome = ElectionOutcome::Won {
            key: leader_key("e", lease),
            rev,
        };
        record(client, lease, op, call, ret, outcome)
    }

    fn proclaim(
        client: u32,
        lease: i64,
        seq: u32,
        at: u64,
        outcome: ElectionOutcome,
    ) -> ElectionRecord {
        let op = ElectionOp::Proclaim {
            value: format!("{client}/{lease:x}/{seq}"),
        };
        record(client, lease, op, at, at + 1, outcome)
    }

    /// An observer is sent `value` on the key of `lease`, created at `create_revision`.
    fn observed(
        lease: i64,
        create_revision: i64,
        mod_revision: i64,
        value: &str,
        received: u64,
    ) -> ObservedLeader {
        ObservedLeader {
            observer: 0,
            name: "e".into(),
            session: 0,
            received,
            endpoint: 0,
            key: leader_key("e", lease),
            value: value.into(),
            create_revision,
            mod_revision,
            leader_at: mod_revision,
        }
    }

    /// Client 0 wins at 10 with the key created at 5; client 1's Campaign, sent at 5 before
    /// that answer, wins at 30 with 7; client 2's, sent at 20, after it, wins at 40 with 9.
    fn wins() -> ElectionHistory {
        ElectionHistory {
            records: vec![
                won(0, 1, 0, 10, 5),
                won(1, 2, 5, 30, 7),
                won(2, 3, 20, 40, 9),
            ],
            ..ElectionHistory::default()
        }
    }

    #[test]
    fn wins_in_real_time_order_pass() {
        let (summary, findings) = check(&wins());
        assert!(findings.is_empty(), "{findings:?}");
        // Client 2's win is judged against client 0's (client 1's Campaign was sent before
        // any win was answered, client 1's win came back only after client 2's was sent).
        assert_eq!((summary.won, summary.win_orders), (3, 1));
    }

    #[test]
    fn a_win_with_an_older_key_than_an_earlier_win_is_caught() {
        for rev in [4, 5] {
            let mut history = wins();
            history.records[2] = won(2, 3, 20, 40, rev);
            let (_, findings) = check(&history);
            let [Finding::WinsOutOfOrder { earlier, later, .. }] = &findings[..] else {
                panic!("expected one WinsOutOfOrder for rev {rev}, got {findings:?}");
            };
            assert_eq!((earlier.client, later.client), (0, 2));
        }
    }

    /// Client 0 wins with the key created at 5 and value `0/1/0`, proclaims `0/1/1` (at
    /// revision 6) and `0/1/2` (answer lost); client 3's Campaign with lease 4 is never
    /// answered, but its key (created at 11) leads with `3/4/0`. The observer sees each value.
    fn proclaimed() -> ElectionHistory {
        let campaign = ElectionOp::Campaign {
            value: "3/4/0".into(),
        };
        ElectionHistory {
            records: vec![
                won(0, 1, 0, 10, 5),
                proclaim(0, 1, 1, 20, ElectionOutcome::Proclaimed { revision: 6 }),
                proclaim(0, 1, 2, 30, ElectionOutcome::Unknown),
                record(3, 4, campaign, 25, 60, ElectionOutcome::Unknown),
            ],
            observed: vec![
                observed(1, 5, 5, "0/1/0", 11),
                observed(1, 5, 6, "0/1/1", 21),
                observed(1, 5, 8, "0/1/2", 31),
                observed(4, 11, 11, "3/4/0", 50),
            ],
            ..ElectionHistory::default()
        }
    }

    #[test]
    fn observed_values_that_were_sent_pass() {
        let (summary, findings) = check(&proclaimed());
        assert!(findings.is_empty(), "{findings:?}");
        assert_eq!(summary.values_matched, 4);
    }

    #[test]
    fn an_observed_value_nobody_sent_for_its_key_is_caught() {
        // A refused Proclaim's value, one surely not carried out, one nobody sent, and
        // another campaigner's value on client 0's key.
        let refused = proclaim(0, 1, 3, 40, ElectionOutcome::NotLeader);
        let failed = proclaim(0, 1, 3, 40, ElectionOutcome::Failed);
        let cases = [
            (Some(refused), "0/1/3"),
            (Some(failed), "0/1/3"),
            (None, "0/1/9"),
            (None, "3/4/0"),
        ];
        for (request, value) in cases {
            let mut history = proclaimed();
            history.records.extend(request);
            history.observed.insert(3, observed(1, 5, 9, value, 41));
            let (summary, findings) = check(&history);
            let [Finding::ObservedValueNotSent {
                observed, leader, ..
            }] = &findings[..]
            else {
                panic!("expected one ObservedValueNotSent for {value}, got {findings:?}");
            };
            assert_eq!(observed.value, value);
            assert!(leader.iter().all(|r| r.lease == 1) && !leader.is_empty());
            assert_eq!(summary.values_matched, 4);
        }

        // A key no Campaign put.
        let mut history = proclaimed();
        history.observed.push(observed(9, 12, 12, "7/9/0", 70));
        let (_, findings) = check(&history);
        assert!(
            matches!(&findings[..], [Finding::ObservedValueNotSent { leader, .. }] if leader.is_empty()),
            "{findings:?}"
        );
    }
}
