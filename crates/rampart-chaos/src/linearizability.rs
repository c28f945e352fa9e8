//! A linearizability checker for histories of operations on registers (one register per key),
//! after Wing & Gong, with Lowe's memoization, as Porcupine and Knossos do it.
//!
//! A history is linearizable when every operation can be given a single instant between its
//! invocation and its completion such that the operations, taken in that order, are legal for a
//! sequential register. Keys are independent, so the history is checked key by key.
//!
//! An operation whose outcome is unknown (the client timed out or lost its connection) may have
//! taken effect at any time after its invocation, or never: it is given a completion time of
//! +infinity and any output. Reads with an unknown outcome constrain nothing and are dropped.

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};

/// A value written to a register. Harnesses give every write a unique value, so that a read
/// names the write it saw.
pub type Value = u64;

/// What an operation asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Input {
    Read,
    Write(Value),
    Delete,
    /// Writes `new` if the register holds `expected`.
    Cas {
        expected: Value,
        new: Value,
    },
}

/// What the operation's caller was told.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Output {
    Read(Option<Value>),
    Written,
    Deleted,
    /// Whether the compare held (and so the write happened).
    Cas(bool),
    /// The caller never learned the outcome.
    Unknown,
}

/// One operation of a history. Times are in any monotonic unit (nanoseconds, say).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operation {
    pub key: String,
    pub client: u32,
    /// When the operation was invoked.
    pub call: u64,
    /// When it completed; `None` when its outcome is unknown.
    pub ret: Option<u64>,
    pub input: Input,
    pub output: Output,
}

/// A key whose operations admit no linearization.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    pub key: String,
    /// A small sub-history of the key that is still not linearizable: removing any one of its
    /// operations would make it linearizable (when shrinking finished within its budget).
    pub minimal: Vec<Operation>,
    /// How many operations the key had in all.
    pub key_operations: usize,
}

/// The verdict on a whole history.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// Operations checked, after dropping reads with unknown outcomes.
    pub operations: usize,
    pub keys: usize,
    pub violations: Vec<Violation>,
}

impl Report {
    pub fn is_linearizable(&self) -> bool {
        self.violations.is_empty()
    }
}

/// The register's possible states: a sorted set, because an operation with an unknown outcome
/// can leave the register in either of two states (the model is nondeterministic; checking runs
/// over sets of states, which makes it deterministic again).
type States = Vec<Option<Value>>;

fn step(states: &States, input: Input, output: Output) -> States {
    let mut next: States = Vec::with_capacity(states.len() + 1);
    for &s in states {
        match (input, output) {
            (Input::Read, Output::Read(v)) if s == v => next.push(s),
            (Input::Read, Output::Unknown) => next.push(s),
            (Input::Write(v), Output::Written | Output::Unknown) => next.push(Some(v)),
            (Input::Delete, Output::Deleted | Output::Unknown) => next.push(None),
            (Input::Cas { expected, new }, Output::Cas(true)) if s == Some(expected) => {
                next.push(Some(new))
            }
            (Input::Cas { expected, .. }, Output::Cas(false)) if s != Some(expected) => {
                next.push(s)
            }
            (Input::Cas { expected, new }, Output::Unknown) => {
                next.push(if s == Some(expected) { Some(new) } else { s });
                // It may also never have happened: `s` stays possible.
                next.push(s);
            }
            _ => {}
        }
    }
    next.sort_unstable();
    next.dedup();
    next
}

/// Checks a whole history, key by key; `shrink_budget` bounds the checks spent shrinking each
/// violation (0 reports the key's whole history).
pub fn check(history: &[Operation], shrink_budget: usize) -> Report {
    let mut by_key: BTreeMap<&str, Vec<Operation>> = BTreeMap::new();
    for op in history {
        if op.input == Input::Read && op.output == Output::Unknown {
            continue;
        }
        by_key.entry(&op.key).or_default().push(op.clone());
    }
    let mut report = Report {
        operations: by_key.values().map(Vec::len).sum(),
        keys: by_key.len(),
        violations: Vec::new(),
    };
    for (key, ops) in by_key {
        if !linearizable(&ops) {
            report.violations.push(Violation {
                key: key.to_string(),
                minimal: shrink(ops.clone(), shrink_budget),
                key_operations: ops.len(),
            });
        }
    }
    report
}

/// Shrinks a non-linearizable history to a small one that is still not linearizable, using
/// only steps that cannot manufacture a violation (every linearization of the history before a
/// step gives one of the history after it), so the result shows the original anomaly:
///
/// - cut the history at the earliest invocation time where it already fails: operations
///   invoked later are dropped, those still running then are cut short (reads dropped, others
///   given an unknown outcome);
/// - drop a read or a failed CAS: they change nothing, they only constrain;
/// - drop a write, delete or successful CAS whose outcome no remaining operation may depend on
///   (see [`observed`]), together with every failed CAS (which might have failed only because
///   of it).
///
/// Plain greedy removal is not enough: dropping a write can itself create a violation (a read
/// or a failed CAS that only that write explained), and the result then shows that instead.
/// Steps are tried pass after pass until none applies or `budget` checks are spent.
fn shrink(ops: Vec<Operation>, mut budget: usize) -> Vec<Operation> {
    let mut ops = earliest_failing_prefix(ops, &mut budget);
    loop {
        let mut changed = false;
        let mut i = 0;
        while i < ops.len() && budget > 0 {
            let Some(candidate) = reduce(&ops, i) else {
                i += 1;
                continue;
            };
            budget -= 1;
            if linearizable(&candidate) {
                i += 1;
            } else {
                // The operations before `i` stay; `i` now names the next one.
                ops = candidate;
                changed = true;
            }
        }
        if !changed || budget == 0 {
            return ops;
        }
    }
}

/// The history as it stood at the earliest invocation time at which it is already not
/// linearizable (a binary search: a cut that fails makes every later cut fail).
fn earliest_failing_prefix(mut ops: Vec<Operation>, budget: &mut usize) -> Vec<Operation> {
    ops.sort_by_key(|op| op.call);
    let cut = |end: usize| -> Vec<Operation> {
        let limit = ops.get(end).map_or(u64::MAX, |op| op.call);
        ops[..end]
            .iter()
            .filter_map(|op| match op.ret {
                Some(ret) if ret < limit => Some(op.clone()),
                // Still running at the cut: a read or failed CAS is dropped, a mutation may
                // yet take effect.
                _ if op.input == Input::Read || op.output == Output::Cas(false) => None,
                _ => Some(Operation {
                    ret: None,
                    output: Output::Unknown,
                    ..op.clone()
                }),
            })
            .collect()
    };
    // `cut(high)` fails; `cut(low)` is linearizable.
    let (mut low, mut high) = (0, ops.len());
    while high - low > 1 && *budget > 0 {
        let middle = (low + high) / 2;
        *budget -= 1;
        if linearizable(&cut(middle)) {
            low = middle;
        } else {
            high = middle;
        }
    }
    cut(high)
}

/// The history after one sound reduction step on `ops[i]`, if one applies.
fn reduce(ops: &[Operation], i: usize) -> Option<Vec<Operation>> {
    let op = &ops[i];
    if op.input == Input::Read || op.output == Output::Cas(false) {
        let mut candidate = ops.to_vec();
        candidate.remove(i);
        return Some(candidate);
    }
    if observed(ops, i) {
        return None;
    }
    Some(
        ops.iter()
            .enumerate()
            .filter(|&(j, other)| j != i && other.output != Output::Cas(false))
            .map(|(_, other)| other.clone())
            .collect(),
    )
}

/// Whether another operation may depend on what mutation `ops[i]` left in the register: a
/// read of the value it writes, a CAS that expects it; for a delete, a read of an absent key
/// that no other delete, strictly between the two in real time, explains instead.
fn observed(ops: &[Operation], i: usize) -> bool {
    let mutation = &ops[i];
    let written = match mutation.input {
        Input::Write(v) | Input::Cas { new: v, .. } => Some(v),
        Input::Delete => None,
        Input::Read => return false,
    };
    let end = |op: &Operation| op.ret.unwrap_or(u64::MAX);
    ops.iter()
        .enumerate()
        .any(|(j, op)| match (op.input, op.output) {
            (Input::Read, Output::Read(None)) if written.is_none() => {
                end(op) > mutation.call
                    && !ops.iter().enumerate().any(|(k, other)| {
                        k != i
                            && k != j
                            && other.input == Input::Delete
                            && other.output == Output::Deleted
                            && other.call > end(mutation)
                            && end(other) < op.call
                    })
            }
            (Input::Read, Output::Read(v)) => v.is_some() && v == written,
            (Input::Cas { expected, .. }, Output::Cas(true) | Output::Unknown) => {
                Some(expected) == written
            }
            _ => false,
        })
}

const NIL: usize = usize::MAX;

/// Whether the operations on one register (starting empty) admit a linearization.
pub fn linearizable(ops: &[Operation]) -> bool {
    if ops.is_empty() {
        return true;
    }
    // Events: 2i is the call of op i, 2i+1 its return. Sorted by time, calls before returns at
    // equal times, so operations that merely touch count as concurrent.
    let n = ops.len();
    let mut order: Vec<usize> = (0..2 * n).collect();
    let time = |e: usize| {
        let op = &ops[e / 2];
        if e.is_multiple_of(2) {
            op.call
        } else {
            op.ret.unwrap_or(u64::MAX)
        }
    };
    order.sort_by_key(|&e| (time(e), e % 2));
    // A doubly linked list over the events, with a head sentinel at index 2n.
    let head = 2 * n;
    let mut next = vec![NIL; 2 * n + 1];
    let mut prev = vec![NIL; 2 * n + 1];
    let mut last = head;
    for &e in &order {
        next[last] = e;
        prev[e] = last;
        last = e;
    }
    let lift = |next: &mut Vec<usize>, prev: &mut Vec<usize>, call: usize| {
        for e in [call, call + 1] {
            let (p, nx) = (prev[e], next[e]);
            next[p] = nx;
            if nx != NIL {
                prev[nx] = p;
            }
        }
    };
    let unlift = |next: &mut Vec<usize>, prev: &mut Vec<usize>, call: usize| {
        for e in [call + 1, call] {
            let (p, nx) = (prev[e], next[e]);
            next[p] = e;
            if nx != NIL {
                prev[nx] = e;
            }
        }
    };

    let words = n.div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut state: States = vec![None];
    let mut cache: HashSet<(Vec<u64>, States)> = HashSet::new();
    let mut stack: Vec<(usize, States)> = Vec::new();
    let mut entry = next[head];
    while next[head] != NIL {
        if entry.is_multiple_of(2) {
            let op = &ops[entry / 2];
            let new_state = step(&state, op.input, op.output);
            if !new_state.is_empty() {
                let mut candidate = linearized.clone();
                candidate[entry / 2 / 64] |= 1 << (entry / 2 % 64);
                if cache.insert((candidate.clone(), new_state.clone())) {
                    stack.push((entry, std::mem::replace(&mut state, new_state)));
                    linearized = candidate;
                    lift(&mut next, &mut prev, entry);
                    entry = next[head];
                    continue;
                }
            }
            entry = next[entry];
        } else {
            // A return whose call is not linearized yet: undo the last choice.
            let Some((call, previous)) = stack.pop() else {
                return false;
            };
            state = previous;
            linearized[call / 2 / 64] &= !(1 << (call / 2 % 64));
            unlift(&mut next, &mut prev, call);
            entry = next[call];
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};

    use super::*;

    fn op(client: u32, call: u64, ret: Option<u64>, input: Input, output: Output) -> Operation {
        Operation {
            key: "k".into(),
            client,
            call,
            ret,
            input,
            output,
        }
    }

    #[test]
    fn sequential_history_is_linearizable() {
        let h = [
            op(0, 0, Some(1), Input::Write(1), Output::Written),
            op(0, 2, Some(3), Input::Read, Output::Read(Some(1))),
            op(0, 4, Some(5), Input::Delete, Output::Deleted),
            op(0, 6, Some(7), Input::Read, Output::Read(None)),
        ];
        assert!(linearizable(&h));
    }

    #[test]
    fn stale_read_after_a_completed_write_is_caught() {
        let h = [
            op(0, 0, Some(1), Input::Write(1), Output::Written),
            op(0, 2, Some(3), Input::Write(2), Output::Written),
            op(1, 4, Some(5), Input::Read, Output::Read(Some(1))),
        ];
        assert!(!linearizable(&h));
        let report = check(&h, 100);
        assert_eq!(report.violations.len(), 1);
        // Both writes and the read are needed to show the violation... except the first write,
        // whose absence leaves a read of a value never written: still a violation, and smaller.
        assert!(report.violations[0].minimal.len() <= 3);
        assert!(report.violations[0]
            .minimal
            .iter()
            .any(|o| o.input == Input::Read));
    }

    #[test]
    fn the_minimal_history_shows_the_anomaly_not_an_artifact() {
        // 1 is written and read, overwritten by 2 (read, then CAS 2 -> 3 fails: 4 got there
        // first), and then read again: 1 came back.
        let cas = |expected, new| Input::Cas { expected, new };
        let h = [
            op(0, 0, Some(10), Input::Write(1), Output::Written),
            op(1, 2, Some(3), Input::Read, Output::Read(None)),
            op(1, 11, Some(12), Input::Read, Output::Read(Some(1))),
            op(0, 13, Some(14), Input::Write(2), Output::Written),
            op(1, 15, Some(16), Input::Read, Output::Read(Some(2))),
            op(2, 17, Some(18), Input::Write(4), Output::Written),
            op(0, 19, Some(20), cas(2, 3), Output::Cas(false)),
            op(1, 21, Some(22), Input::Read, Output::Read(Some(1))),
        ];
        let report = check(&h, 1000);
        let minimal = &report.violations[0].minimal;
        let has = |o: &Operation| {
            minimal
                .iter()
                .any(|m| m.client == o.client && m.call == o.call)
        };
        // Not "a read of 1" alone (a value never written), nor "write 2, then CAS from 2
        // fails" (which holds only once the write of 4 is dropped)...
        assert!(has(&h[0]), "{minimal:?}");
        assert!(!has(&h[6]), "{minimal:?}");
        // ...but the write of 1, one later write and the read that saw 1 come back.
        assert!(has(&h[7]), "{minimal:?}");
        assert!(minimal.len() <= 4, "{minimal:?}");
    }

    #[test]
    fn concurrent_read_may_see_either_value() {
        let h = [
            op(0, 0, Some(1), Input::Write(1), Output::Written),
            op(0, 2, Some(10), Input::Write(2), Output::Written),
            op(1, 3, Some(4), Input::Read, Output::Read(Some(1))),
            op(2, 5, Some(6), Input::Read, Output::Read(Some(2))),
        ];
        assert!(linearizable(&h));
    }

    #[test]
    fn reads_must_agree_on_an_order() {
        // Two concurrent writes; one reader sees 1 then 2, the other 2 then 1: no single order.
        let h = [
            op(0, 0, Some(100), Input::Write(1), Output::Written),
            op(1, 0, Some(100), Input::Write(2), Output::Written),
            op(2, 10, Some(11), Input::Read, Output::Read(Some(1))),
            op(2, 12, Some(13), Input::Read, Output::Read(Some(2))),
            op(3, 10, Some(11), Input::Read, Output::Read(Some(2))),
            op(3, 12, Some(13), Input::Read, Output::Read(Some(1))),
        ];
        assert!(!linearizable(&h));
    }

    #[test]
    fn a_lost_acknowledged_write_is_caught() {
        let h = [
            op(0, 0, Some(1), Input::Write(1), Output::Written),
            op(1, 5, Some(6), Input::Read, Output::Read(None)),
        ];
        assert!(!linearizable(&h));
    }

    #[test]
    fn unknown_writes_may_apply_late_or_never() {
        let late = [
            op(0, 0, None, Input::Write(1), Output::Unknown),
            op(1, 5, Some(6), Input::Read, Output::Read(None)),
            op(1, 7, Some(8), Input::Read, Output::Read(Some(1))),
        ];
        assert!(linearizable(&late));
        let never = [
            op(0, 0, None, Input::Write(1), Output::Unknown),
            op(1, 5, Some(6), Input::Read, Output::Read(None)),
        ];
        assert!(linearizable(&never));
        // But once seen, it cannot be unseen.
        let flicker = [
            op(0, 0, None, Input::Write(1), Output::Unknown),
            op(1, 5, Some(6), Input::Read, Output::Read(Some(1))),
            op(1, 7, Some(8), Input::Read, Output::Read(None)),
        ];
        assert!(!linearizable(&flicker));
    }

    #[test]
    fn compare_and_swap_semantics() {
        let ok = [
            op(0, 0, Some(1), Input::Write(1), Output::Written),
            op(
                1,
                2,
                Some(3),
                Input::Cas {
                    expected: 1,
                    new: 2,
                },
                Output::Cas(true),
            ),
            op(
                2,
                4,
                Some(5),
                Input::Cas {
                    expected: 1,
                    new: 3,
                },
                Output::Cas(false),
            ),
            op(0, 6, Some(7), Input::Read, Output::Read(Some(2))),
        ];
        assert!(linearizable(&ok));
        // Two successful CAS from the same expected value cannot both be right.
        let double = [
            op(0, 0, Some(1), Input::Write(1), Output::Written),
            op(
                1,
                2,
                Some(10),
                Input::Cas {
                    expected: 1,
                    new: 2,
                },
                Output::Cas(true),
            ),
            op(
                2,
                2,
                Some(10),
                Input::Cas {
                    expected: 1,
                    new: 3,
                },
                Output::Cas(true),
            ),
        ];
        assert!(!linearizable(&double));
    }

    #[test]
    fn unknown_reads_are_dropped_and_keys_are_independent() {
        let mut h = vec![
            op(0, 0, Some(1), Input::Write(1), Output::Written),
            op(1, 2, None, Input::Read, Output::Unknown),
        ];
        let mut other = op(2, 0, Some(1), Input::Read, Output::Read(Some(9)));
        other.key = "other".into();
        h.push(other);
        let report = check(&h, 10);
        assert_eq!(report.operations, 2);
        assert_eq!(report.keys, 2);
        assert_eq!(report.violations.len(), 1);
        assert_eq!(report.violations[0].key, "other");
    }

    /// Simulates a linearizable register with random concurrent clients: each operation takes
    /// effect at a random instant inside its interval. The checker must accept every such
    /// history; corrupting one read must (almost always) be caught.
    #[test]
    fn random_linearizable_histories_pass_and_corrupted_ones_fail() {
        let seed: u64 = rand::random();
        println!("seed {seed}");
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut caught = 0;
        for round in 0..40 {
            let mut register: Option<Value> = None;
            let mut next_value = 1;
            // Linearization points are increasing; intervals are built around them.
            let mut ops = Vec::new();
            for point in 0..200u64 {
                let t = point * 10 + 5;
                let call = t - rng.gen_range(0..30).min(t);
                let ret = t + rng.gen_range(0..30);
                let (input, output) = match rng.gen_range(0..4) {
                    0 => (Input::Read, Output::Read(register)),
                    1 => {
                        next_value += 1;
                        register = Some(next_value);
                        (Input::Write(next_value), Output::Written)
                    }
                    2 => {
                        register = None;
                        (Input::Delete, Output::Deleted)
                    }
                    _ => {
                        let expected = if rng.gen_bool(0.5) {
                            register.unwrap_or(0)
                        } else {
                            next_value + 100
                        };
                        next_value += 1;
                        let held = register == Some(expected);
                        if held {
                            register = Some(next_value);
                        }
                        (
                            Input::Cas {
                                expected,
                                new: next_value,
                            },
                            Output::Cas(held),
                        )
                    }
                };
                let unknown = rng.gen_bool(0.05) && !matches!(input, Input::Read);
                ops.push(op(
                    (point % 7) as u32,
                    call,
                    if unknown { None } else { Some(ret) },
                    input,
                    if unknown { Output::Unknown } else { output },
                ));
            }
            assert!(linearizable(&ops), "round {round} of seed {seed}");
            // Make one read return a value nobody wrote.
            if let Some(read) = ops.iter_mut().find(|o| o.input == Input::Read) {
                read.output = Output::Read(Some(u64::MAX));
                if !linearizable(&ops) {
                    caught += 1;
                }
            }
        }
        assert_eq!(caught, 40, "seed {seed}");
    }
}
