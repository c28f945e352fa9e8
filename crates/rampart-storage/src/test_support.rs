//! Helpers shared by the crate's unit tests: commands and log entries to apply, and what a
//! store holds, read back as short strings that assertions can compare.

use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};

use crate::codec::{self, HISTORY};
use crate::mvcc::MvccCore;
use crate::types::{Command, NodeId, PutRequest, TypeConfig};

/// The history versions physically in the tree, as `key@revision` (`-` marks a delete),
/// in key order, then revision order.
pub(crate) fn history(core: &MvccCore) -> Vec<String> {
    let mut versions: Vec<(String, i64, bool)> = core
        .tree()
        .scan_prefix([HISTORY])
        .map(|item| {
            let (k, v) = item.unwrap();
            let (rev, _) = codec::split_history_key(&k).unwrap();
            let value = codec::history_value(&v).unwrap();
            let key = String::from_utf8(value.key.to_vec()).unwrap();
            (key, rev, value.record.is_none())
        })
        .collect();
    versions.sort();
    versions
        .into_iter()
        .map(|(key, rev, dead)| format!("{}{key}@{rev}", if dead { "-" } else { "" }))
        .collect()
}

/// The events replayed from `start` on, as `revision:key` (`-` marks a delete).
pub(crate) fn replay(core: &MvccCore, start: i64) -> Vec<String> {
    let (revisions, _) = core.events(start, i64::MAX, b"\0", b"\0", 0).unwrap();
    revisions
        .iter()
        .flat_map(|r| {
            r.events.iter().map(move |e| {
                let dead = if e.kind == crate::types::EventKind::Delete {
                    "-"
                } else {
                    ""
                };
                format!(
                    "{}:{dead}{}",
                    r.revision,
                    String::from_utf8_lossy(&e.kv.key)
                )
            })
        })
        .collect()
}

/// A plain put of `k` = `v`.
pub(crate) fn put_cmd(k: &str, v: &str) -> Command {
    Command::Put(PutRequest {
        key: k.into(),
        value: v.into(),
        ..Default::default()
    })
}

/// The log id of entry `index` in term 1, leader 1.
pub(crate) fn log_id(index: u64) -> LogId<NodeId> {
    LogId::new(CommittedLeaderId::new(1, 1), index)
}

/// Log entry `index` carrying `cmd`.
pub(crate) fn entry(index: u64, cmd: Command) -> Entry<TypeConfig> {
    Entry::<TypeConfig> {
        log_id: log_id(index),
        payload: EntryPayload::Normal(cmd),
    }
}

/// The state's revision, applied index and batch position (entry index, command).
pub(crate) fn progress(core: &MvccCore) -> (i64, Option<u64>, Option<(u64, u32)>) {
    let state = core.state.read();
    (
        state.revision,
        state.applied.map(|id| id.index),
        state.applied_part.map(|(id, p)| (id.index, p)),
    )
}
