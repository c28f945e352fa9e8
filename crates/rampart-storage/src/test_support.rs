//! Helpers shared by the crate's unit tests: commands and log entries to apply, and what a
//! store holds, read back as short strings that assertions can compare.

use std::path::Path;

use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};

use crate::codec::{self, HISTORY};
use crate::mvcc::MvccCore;
use crate::types::{AuthCommand, Command, NodeId, PutRequest, TypeConfig};
use crate::Store;

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

/// A put of `k` = `v` attached to lease `lease`.
pub(crate) fn leased_put_cmd(k: &str, v: &str, lease: i64) -> Command {
    Command::Put(PutRequest {
        key: k.into(),
        value: v.into(),
        lease,
        ..Default::default()
    })
}

/// The log id of entry `index` in term 1, leader 1.
/// The commands that turn authentication on: a user `root` (with a bcrypt-shaped hash), the
/// role `root` granted to it, and the enable with token key `key`.
pub(crate) fn enabling_auth() -> [Command; 3] {
    [
        Command::Auth(AuthCommand::UserAdd {
            name: "root".into(),
            password: Some("$2b$04$hash".into()),
        }),
        Command::Auth(AuthCommand::UserGrantRole {
            user: "root".into(),
            role: "root".into(),
        }),
        Command::Auth(AuthCommand::Enable {
            token_key: b"key".to_vec(),
        }),
    ]
}

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

/// Builds a snapshot of `store` and installs it, as a follower would, into a new store in
/// `dir`, which is returned.
pub(crate) fn installed_copy(store: &Store, dir: &Path) -> Store {
    let (meta, file) =
        crate::state_machine::export(&store.core_for_tests(), &store.snapshots_for_tests(), || {})
            .unwrap();
    let installed = Store::open(dir).unwrap();
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(async {
            let mut sm = installed.state_machine();
            sm.install_snapshot(&meta, Box::new(tokio::fs::File::from_std(file)))
                .await
        })
        .expect("the snapshot installs");
    installed
}
