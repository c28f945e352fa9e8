//! How many client requests the applied log entries held: etcd counts its `--snapshot-count`
//! and `--snapshot-catchup-entries` in entries, and an etcd entry is one request, while a
//! Rampart entry may be a batch of many (see `Command::Batch`). Counting requests keeps those
//! flags' meaning, and with it the log's size, as etcd's.

use std::collections::BTreeMap;

use parking_lot::Mutex;

use crate::types::{Command, TypeConfig};

/// The requests of the applied entries a member still has in its log. Kept in memory only: an
/// entry this store has not seen applied (before a restart, or received in a snapshot) counts as
/// one request, which only ever keeps more of the log than the counts ask for.
#[derive(Default)]
pub struct AppliedRequests {
    /// The entries of more than one request, by index: how many each held.
    batches: Mutex<BTreeMap<u64, u64>>,
}

impl AppliedRequests {
    /// Notes the applied `entry`.
    pub(crate) fn note(&self, entry: &openraft::Entry<TypeConfig>) {
        if let openraft::EntryPayload::Normal(Command::Batch(commands)) = &entry.payload {
            self.note_requests(entry.log_id.index, commands.len() as u64);
        }
    }

    /// Notes that the applied entry `index` held `requests` requests.
    pub fn note_requests(&self, index: u64, requests: u64) {
        if requests > 1 {
            self.batches.lock().insert(index, requests);
        }
    }

    /// How many requests the entries `after + 1 ..= through` held.
    pub fn between(&self, after: u64, through: u64) -> u64 {
        if through <= after {
            return 0;
        }
        let batches = self.batches.lock();
        let extra: u64 = batches
            .range(after + 1..=through)
            .map(|(_, requests)| requests - 1)
            .sum();
        (through - after) + extra
    }

    /// The highest index `p` such that the entries `p + 1 ..= through` hold at least `keep`
    /// requests: the log may be purged up to `p` and still hold the last `keep` requests up to
    /// `through`. `None` if even the whole log from index 1 holds fewer.
    pub fn keep_from(&self, through: u64, keep: u64) -> Option<u64> {
        let batches = self.batches.lock();
        // Walk back from `through`: single-request entries between batches, then each batch.
        let (mut cursor, mut needed) = (through, keep);
        for (&index, &requests) in batches.range(..=through).rev() {
            let singles = cursor - index;
            if singles >= needed {
                return Some(cursor - needed);
            }
            needed -= singles;
            if requests >= needed {
                return index.checked_sub(1);
            }
            needed -= requests;
            cursor = index.checked_sub(1)?;
        }
        cursor.checked_sub(needed)
    }

    /// Forgets the entries up to `index`: the log no longer holds them.
    pub fn forget_through(&self, index: u64) {
        let mut batches = self.batches.lock();
        // Called at every look of the retention task: a step only when there is something to
        // forget, not a move of every entry kept.
        while batches
            .first_key_value()
            .is_some_and(|(&first, _)| first <= index)
        {
            batches.pop_first();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{entry, put_cmd};

    fn batch(index: u64, requests: usize) -> openraft::Entry<TypeConfig> {
        entry(index, Command::Batch(vec![put_cmd("k", "v"); requests]))
    }

    /// Entries 1..=10, where 3 holds 5 requests and 8 holds 4: 17 requests in all.
    fn sample() -> AppliedRequests {
        let requests = AppliedRequests::default();
        for index in 1..=10 {
            match index {
                3 => requests.note(&batch(3, 5)),
                8 => requests.note(&batch(8, 4)),
                _ => requests.note(&entry(index, put_cmd("k", "v"))),
            }
        }
        requests
    }

    #[test]
    fn batches_count_each_request_and_other_entries_one() {
        let requests = sample();
        assert_eq!(requests.between(0, 10), 17);
        assert_eq!(requests.between(3, 10), 10);
        assert_eq!(requests.between(2, 3), 5);
        assert_eq!(requests.between(8, 8), 0);
        assert_eq!(requests.between(9, 3), 0);
        // A batch of one is one request.
        requests.note(&batch(11, 1));
        assert_eq!(requests.between(10, 11), 1);
    }

    #[test]
    fn the_kept_log_holds_at_least_the_requests_asked_for() {
        let requests = sample();
        for through in 0..=10 {
            for keep in 0..=20 {
                let expected = (0..=through)
                    .rev()
                    .find(|&p| requests.between(p, through) >= keep);
                assert_eq!(
                    requests.keep_from(through, keep),
                    expected,
                    "through {through}, keep {keep}"
                );
            }
        }
    }

    #[test]
    fn forgotten_entries_count_one_request() {
        let requests = sample();
        requests.forget_through(3);
        assert_eq!(requests.between(0, 10), 13);
        assert_eq!(requests.between(3, 10), 10);
        requests.forget_through(10);
        assert_eq!(requests.between(0, 10), 10);
    }
}
