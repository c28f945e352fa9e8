//! Fault rules for peer links, in the manner of TiKV's transport filters.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use rampart_storage::NodeId;

/// Shared rules that say which directed links `(from, to)` drop every message and which delay
/// them. Every node of an in-process test cluster holds a clone of the same rules; a node in
/// production holds an empty set, which costs one uncontended read lock per RPC.
#[derive(Clone, Debug, Default)]
pub struct LinkFaults {
    rules: Arc<RwLock<Rules>>,
}

#[derive(Debug, Default)]
struct Rules {
    /// Directed links on which every message is lost.
    blocked: HashSet<(NodeId, NodeId)>,
    /// Directed links on which every message waits this long before it is sent.
    delayed: HashMap<(NodeId, NodeId), Duration>,
    /// Directed links that carry heartbeats but lose every append carrying log entries: the
    /// leader stays leader, but nothing it appends from then on can commit.
    entries_held: HashSet<(NodeId, NodeId)>,
}

/// What the rules decide for one message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Pass,
    Drop,
    Delay(Duration),
}

impl LinkFaults {
    /// Loses every message from `from` to `to` (one direction only).
    pub fn block(&self, from: NodeId, to: NodeId) {
        self.rules.write().blocked.insert((from, to));
    }

    /// Cuts every link between the two sides, both directions.
    pub fn partition(&self, side_a: &[NodeId], side_b: &[NodeId]) {
        let mut rules = self.rules.write();
        for &a in side_a {
            for &b in side_b {
                rules.blocked.insert((a, b));
                rules.blocked.insert((b, a));
            }
        }
    }

    /// Cuts `node` off from every node in `others`, both directions.
    pub fn isolate(&self, node: NodeId, others: &[NodeId]) {
        let others: Vec<NodeId> = others.iter().copied().filter(|&o| o != node).collect();
        self.partition(&[node], &others);
    }

    /// Delays every message from `from` to `to` by `delay`.
    pub fn delay(&self, from: NodeId, to: NodeId, delay: Duration) {
        self.rules.write().delayed.insert((from, to), delay);
    }

    /// Loses every append from `from` to `to` that carries log entries, and passes the empty
    /// ones (heartbeats, and the leader's quorum checks).
    pub fn hold_entries(&self, from: NodeId, to: NodeId) {
        self.rules.write().entries_held.insert((from, to));
    }

    /// Removes every rule: all links deliver again.
    pub fn heal(&self) {
        let mut rules = self.rules.write();
        rules.blocked.clear();
        rules.delayed.clear();
        rules.entries_held.clear();
    }

    /// Whether an append carrying entries from `from` to `to` is lost.
    pub(crate) fn holds_entries(&self, from: NodeId, to: NodeId) -> bool {
        self.rules.read().entries_held.contains(&(from, to))
    }

    pub(crate) fn verdict(&self, from: NodeId, to: NodeId) -> Verdict {
        let rules = self.rules.read();
        if rules.blocked.contains(&(from, to)) {
            Verdict::Drop
        } else if let Some(delay) = rules.delayed.get(&(from, to)) {
            Verdict::Delay(*delay)
        } else {
            Verdict::Pass
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_is_symmetric_and_heal_clears_it() {
        let faults = LinkFaults::default();
        faults.partition(&[1], &[2, 3]);
        assert_eq!(faults.verdict(1, 2), Verdict::Drop);
        assert_eq!(faults.verdict(3, 1), Verdict::Drop);
        assert_eq!(faults.verdict(2, 3), Verdict::Pass);
        faults.delay(2, 3, Duration::from_millis(5));
        assert_eq!(
            faults.verdict(2, 3),
            Verdict::Delay(Duration::from_millis(5))
        );
        faults.heal();
        assert_eq!(faults.verdict(1, 2), Verdict::Pass);
        assert_eq!(faults.verdict(2, 3), Verdict::Pass);
    }

    #[test]
    fn block_is_one_way() {
        let faults = LinkFaults::default();
        faults.block(1, 2);
        assert_eq!(faults.verdict(1, 2), Verdict::Drop);
        assert_eq!(faults.verdict(2, 1), Verdict::Pass);
    }
}
