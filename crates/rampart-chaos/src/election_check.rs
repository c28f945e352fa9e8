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
//!
//! Unknown outcomes are not judged, nor what a campaigner believed after its lease may have
//! expired: only acknowledged Proclaims and what observers were sent.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::checks::Finding;
use crate::history::{ElectionHistory, ElectionOp, ElectionOutcome, ObservedLeader};

/// What the election checks looked at.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ElectionSummary {
    /// Campaigns won.
    pub won: usize,
    /// Proclaims acknowledged.
    pub proclaims: usize,
    /// Leader values the observers were sent.
    pub observed: usize,
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
