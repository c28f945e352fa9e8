//! A state machine driven by hand-made log entries, and request builders.

use std::path::Path;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, RaftSnapshotBuilder};
use rampart_storage::{
    ApplyError, Command, CommandResponse, CommandResult, DeleteRangeRequest, Event, EventKind,
    KeyValue, Mvcc, NodeId, PutRequest, RangeRequest, RangeResponse, RevisionEvents, StateMachine,
    Store, TypeConfig,
};

/// The log id of the `index`-th entry (term 1, leader 1).
pub fn log_id(index: u64) -> LogId<NodeId> {
    LogId::new(CommittedLeaderId::new(1, 1), index)
}

/// An opened store with its state machine, applying entries at consecutive log indexes.
pub struct Node {
    pub store: Store,
    pub sm: StateMachine,
    pub mvcc: Mvcc,
    pub next_index: u64,
}

impl Node {
    pub fn open(dir: &Path) -> Node {
        let store = Store::open(dir).expect("store opens");
        let mvcc = store.mvcc();
        let next_index = mvcc.applied_log_id().map_or(1, |id| id.index + 1);
        Node {
            sm: store.state_machine(),
            store,
            mvcc,
            next_index,
        }
    }

    /// Applies one entry with `payload` at the next index.
    pub async fn apply_payload(&mut self, payload: EntryPayload<TypeConfig>) -> CommandResponse {
        let entry = Entry {
            log_id: log_id(self.next_index),
            payload,
        };
        self.next_index += 1;
        let mut out = self.sm.apply([entry]).await.expect("apply succeeds");
        assert_eq!(out.len(), 1, "one response per entry");
        out.remove(0)
    }

    pub async fn apply(&mut self, cmd: Command) -> CommandResponse {
        self.apply_payload(EntryPayload::Normal(cmd)).await
    }

    /// Puts `key = value`; returns the revision after it, asserting the put succeeded.
    pub async fn put(&mut self, key: &str, value: &str) -> i64 {
        let resp = self.apply(Command::Put(put(key, value))).await;
        assert!(
            matches!(resp.result, Ok(CommandResult::Put(_))),
            "put {key} failed: {resp:?}"
        );
        resp.revision
    }

    /// Deletes `[key, range_end)`; returns the whole response.
    pub async fn delete(&mut self, key: &str, range_end: &str) -> CommandResponse {
        self.apply(Command::DeleteRange(DeleteRangeRequest {
            key: key.into(),
            range_end: range_end.into(),
            prev_kv: false,
        }))
        .await
    }

    /// Grants lease `id`, asserting it succeeded.
    pub async fn grant(&mut self, id: i64, ttl: i64) {
        let resp = self.apply(Command::LeaseGrant { id, ttl }).await;
        assert_eq!(
            resp.result,
            Ok(CommandResult::LeaseGrant { id, ttl }),
            "grant {id}"
        );
    }

    /// Puts `key = value` attached to `lease`; returns the whole response.
    pub async fn put_lease(&mut self, key: &str, value: &str, lease: i64) -> CommandResponse {
        self.apply(Command::Put(PutRequest {
            lease,
            ..put(key, value)
        }))
        .await
    }

    /// The keys attached to lease `id`, as strings.
    pub fn lease_keys(&self, id: i64) -> Vec<String> {
        self.mvcc
            .lease_keys(id)
            .expect("lease keys read")
            .iter()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect()
    }

    /// A snapshot built as openraft builds one: the state's durable point, its data empty.
    pub async fn build(&mut self) -> Snapshot<TypeConfig> {
        let mut builder = self.sm.get_snapshot_builder().await;
        builder.build_snapshot().await.expect("snapshot builds")
    }

    /// A snapshot of the state now, as openraft builds one and then sends it.
    pub async fn snapshot(&mut self) -> Snapshot<TypeConfig> {
        let built = self.build().await;
        let sent = self
            .sm
            .get_current_snapshot()
            .await
            .expect("snapshot exports")
            .expect("a current snapshot");
        assert_eq!(sent.meta, built.meta, "nothing was applied in between");
        sent
    }

    /// Installs `snapshot` over the state, as openraft does on a follower.
    pub async fn install(&mut self, snapshot: Snapshot<TypeConfig>) {
        self.sm
            .install_snapshot(&snapshot.meta, snapshot.snapshot)
            .await
            .expect("snapshot installs");
    }

    /// Every event of every revision on every key, replayed from history in one call.
    pub fn all_events(&self) -> Vec<RevisionEvents> {
        let (events, last) = self
            .mvcc
            .events(1, i64::MAX, b"\0", b"\0", 0)
            .expect("replay succeeds");
        assert_eq!(
            last,
            self.mvcc.revision(),
            "an unlimited replay reaches the end"
        );
        events
    }

    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse, ApplyError> {
        let (resp, rev) = self.mvcc.range(req)?;
        assert_eq!(
            rev,
            self.mvcc.revision(),
            "a range reports the current store revision"
        );
        Ok(resp)
    }

    /// The key at the current revision.
    pub fn get(&self, key: &str) -> Option<KeyValue> {
        self.get_at(key, 0).expect("current read succeeds")
    }

    /// The key as of `revision`.
    pub fn get_at(&self, key: &str, revision: i64) -> Result<Option<KeyValue>, ApplyError> {
        let mut resp = self.range(&RangeRequest {
            revision,
            ..range(key, "")
        })?;
        assert!(resp.kvs.len() <= 1);
        Ok(resp.kvs.pop())
    }

    /// `key=value` pairs of every key as of `revision` (0: current), in key order.
    pub fn dump_at(&self, revision: i64) -> Result<Vec<String>, ApplyError> {
        let resp = self.range(&RangeRequest {
            revision,
            ..range("\0", "\0")
        })?;
        Ok(resp.kvs.iter().map(kv_str).collect())
    }
}

pub fn put(key: &str, value: &str) -> PutRequest {
    PutRequest {
        key: key.into(),
        value: value.into(),
        ..Default::default()
    }
}

pub fn range(key: &str, range_end: &str) -> RangeRequest {
    RangeRequest {
        key: key.into(),
        range_end: range_end.into(),
        ..Default::default()
    }
}

pub fn kv_str(kv: &KeyValue) -> String {
    format!(
        "{}={}",
        String::from_utf8_lossy(&kv.key),
        String::from_utf8_lossy(&kv.value)
    )
}

/// The keys of a response, as strings.
pub fn keys(resp: &RangeResponse) -> Vec<String> {
    resp.kvs
        .iter()
        .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
        .collect()
}

/// The log segment size sled recorded in the `conf` of the data directory `data`.
pub fn sled_segment_size(data: &Path) -> u64 {
    let conf = std::fs::read(data.join("db").join("conf")).expect("sled's conf");
    String::from_utf8_lossy(&conf)
        .lines()
        .find_map(|line| line.strip_prefix("segment_size: ")?.parse().ok())
        .expect("a segment size in sled's conf")
}

pub fn strs(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// Lets a test say `range(..).with_revision(3)`.
pub trait RangeExt {
    fn with_revision(self, revision: i64) -> Self;
    fn with_limit(self, limit: i64) -> Self;
}

impl RangeExt for rampart_storage::RangeRequest {
    fn with_revision(mut self, revision: i64) -> Self {
        self.revision = revision;
        self
    }
    fn with_limit(mut self, limit: i64) -> Self {
        self.limit = limit;
        self
    }
}

/// One event, compactly: `PUT k=v`, `DELETE k`, with `(was k=v)` when it has a `prev_kv`.
pub fn event_str(e: &Event) -> String {
    let prev = e
        .prev_kv
        .as_ref()
        .map(|p| format!(" (was {})", kv_str(p)))
        .unwrap_or_default();
    match e.kind {
        EventKind::Put => format!("PUT {}{prev}", kv_str(&e.kv)),
        EventKind::Delete => format!("DELETE {}{prev}", String::from_utf8_lossy(&e.kv.key)),
    }
}

/// Revisions of events, compactly: `@rev: event, event`.
pub fn events_str(revs: &[RevisionEvents]) -> Vec<String> {
    revs.iter()
        .map(|r| {
            let events: Vec<String> = r.events.iter().map(event_str).collect();
            format!("@{}: {}", r.revision, events.join(", "))
        })
        .collect()
}

/// Every byte of a snapshot's data, read from its start.
pub async fn snapshot_bytes(data: &mut tokio::fs::File) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    data.seek(std::io::SeekFrom::Start(0)).await.unwrap();
    let mut bytes = Vec::new();
    data.read_to_end(&mut bytes).await.unwrap();
    bytes
}

/// Snapshot data holding `bytes`, as a follower receives it: a file of its own.
pub fn snapshot_data(bytes: &[u8]) -> Box<tokio::fs::File> {
    use std::io::{Seek, Write};
    let mut file = tempfile::tempfile().unwrap();
    file.write_all(bytes).unwrap();
    file.seek(std::io::SeekFrom::Start(0)).unwrap();
    Box::new(tokio::fs::File::from_std(file))
}
