//! What a run records, and how it is written: every operation with its invocation and
//! completion times (`history.jsonl`), the nemesis's actions (`nemesis.jsonl`), every event each
//! watcher received with its sessions (`watches.json`), the lease clients' operations and the
//! final reads of the lease keys (`leases.json`), and on a violation the seed with the smallest
//! failing part of the history (`violation-<seed>.json`).

use std::io::{BufRead, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::checks::Finding;
use crate::linearizability::{Operation, Output};

/// The run's time base: nanoseconds since the run started, on the monotonic clock, shared by
/// clients and nemesis so their records can be laid side by side.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    start: Instant,
}

impl Clock {
    pub fn start() -> Clock {
        Clock {
            start: Instant::now(),
        }
    }

    pub fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// The instant `offset` after the start.
    pub fn at(&self, offset: Duration) -> Instant {
        self.start + offset
    }
}

/// One operation as a client saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// What the checker judges. Its `ret` is `None` and its output `Unknown` when the client
    /// never learned the outcome.
    pub op: Operation,
    /// The member (index in the cluster) the client sent the request to.
    pub endpoint: usize,
    /// From the response header: the member that served the request...
    pub member: Option<u64>,
    /// ...and the revision it answered at.
    pub revision: Option<i64>,
    /// When the client gave up, for operations whose outcome is unknown or that failed.
    pub gave_up: Option<u64>,
    /// Why the operation failed, or why its outcome is unknown.
    pub error: Option<String>,
    /// The request was surely not carried out (refused before it was proposed, or never
    /// sent): the checker ignores it.
    pub failed: bool,
}

impl Record {
    /// Whether the client learned the outcome.
    pub fn completed(&self) -> bool {
        self.op.ret.is_some() && !self.failed
    }

    pub fn is_unknown(&self) -> bool {
        !self.failed && self.op.output == Output::Unknown
    }
}

/// Something the nemesis did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NemesisEvent {
    /// Nanoseconds since the run started, as in [`Record`].
    pub at: u64,
    /// `fault`, `heal`, `crash` or `error`.
    pub action: String,
    pub detail: String,
}

/// The operations the checkers judge: every record except definite failures.
pub fn operations(records: &[Record]) -> Vec<Operation> {
    records
        .iter()
        .filter(|r| !r.failed)
        .map(|r| r.op.clone())
        .collect()
}

/// Writes one JSON value per line.
pub fn write_jsonl<T: Serialize>(path: &Path, items: &[T]) -> anyhow::Result<()> {
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = BufWriter::new(file);
    for item in items {
        serde_json::to_writer(&mut out, item)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}

/// Reads a file written by [`write_jsonl`].
pub fn read_jsonl<T: for<'de> Deserialize<'de>>(path: &Path) -> anyhow::Result<Vec<T>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut items = Vec::new();
    for (number, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        items.push(
            serde_json::from_str(&line)
                .with_context(|| format!("{}:{}", path.display(), number + 1))?,
        );
    }
    Ok(items)
}

/// The contents of `violation-<seed>.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ViolationReport {
    /// Replays the run's schedule: `rampart-chaos --seed <seed>`.
    pub seed: u64,
    /// Each finding, with the smallest part of the history that shows it.
    pub findings: Vec<Finding>,
}

/// Writes `violation-<seed>.json` into `dir` and returns its path.
pub fn write_violation(dir: &Path, seed: u64, findings: &[Finding]) -> anyhow::Result<PathBuf> {
    let path = dir.join(format!("violation-{seed}.json"));
    let report = ViolationReport {
        seed,
        findings: findings.to_vec(),
    };
    let file =
        std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    serde_json::to_writer_pretty(BufWriter::new(file), &report)?;
    Ok(path)
}

/// Whether a watch event is a put or a delete (etcd's `mvccpb.Event.EventType`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum EventKind {
    Put,
    Delete,
}

/// One event as a watcher received it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchedEvent {
    /// When it arrived, on the run's [`Clock`]: an upper bound on when the change was applied.
    pub received: u64,
    /// The watch stream it came on (an index into the watcher's `sessions`).
    pub session: u32,
    pub kind: EventKind,
    pub key: String,
    /// The value put; empty for a delete.
    pub value: String,
    /// The revision of the change (the event's `mod_revision`).
    pub revision: i64,
    /// The lease the key was put with (0: none).
    pub lease: i64,
}

/// One watch stream of a watcher, from its create request to its end.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchSession {
    /// The member (index in the cluster) it was opened on.
    pub endpoint: usize,
    /// The revision the create request asked to start from: one past the last event seen.
    pub from: i64,
    pub opened: u64,
    pub closed: u64,
    /// Why the watcher left it: a broken or stalled stream, a planned move to another member,
    /// or the end of the run.
    pub ended: String,
    /// Why the server canceled the watch, if it did (a compaction, a refused create). Nothing
    /// in a run compacts or cancels, so every server cancel is a finding.
    pub canceled: Option<String>,
}

/// Everything one watcher received, across its sessions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatcherLog {
    pub watcher: u32,
    /// The reference watch: read once after the faults, on a healed cluster, from the start
    /// revision; the others ran through the faults.
    pub reference: bool,
    /// The key prefix watched.
    pub prefix: String,
    /// The first session's start revision.
    pub start_revision: i64,
    /// The highest revision a progress notification confirmed: every event up to it was
    /// delivered (0: none did).
    pub complete_through: i64,
    pub sessions: Vec<WatchSession>,
    /// In the order received.
    pub events: Vec<WatchedEvent>,
}

/// The contents of `watches.json`: what every watcher received.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchHistory {
    pub start_revision: i64,
    /// The revision every member had reached once the clients stopped and the leases were gone:
    /// every watcher must have every event of its prefix in `[start_revision, end_revision]`.
    pub end_revision: i64,
    pub watchers: Vec<WatcherLog>,
}

/// What a lease client asked for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaseOp {
    /// LeaseGrant with the client's chosen id and this TTL (seconds).
    Grant {
        ttl: i64,
    },
    /// A put of `key` with the lease attached.
    Put {
        key: String,
        value: String,
    },
    /// One LeaseKeepAlive request on a keep-alive stream.
    KeepAlive,
    Revoke,
}

/// What came of a lease operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaseOutcome {
    /// Granted with this TTL (the server may raise a short one to its minimum).
    Granted {
        ttl: i64,
    },
    /// The put was applied at this revision.
    Put {
        revision: i64,
    },
    /// The keep-alive renewed the lease for this TTL.
    Renewed {
        ttl: i64,
    },
    /// The keep-alive was answered TTL 0: the leader holds the lease expired or unknown.
    Expired,
    /// The put was refused: "requested lease not found".
    LeaseNotFound,
    Revoked,
    /// Surely not carried out (refused before Raft, or never sent).
    Failed,
    /// The client never learned the outcome.
    Unknown,
}

/// One lease operation as a lease client saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    pub client: u32,
    pub lease: i64,
    pub op: LeaseOp,
    /// When the request was sent.
    pub call: u64,
    /// When the answer came, or when the client gave up.
    pub ret: u64,
    pub outcome: LeaseOutcome,
    /// The member (index in the cluster) the request was sent to.
    pub endpoint: usize,
    pub error: Option<String>,
}

/// A linearizable read of the lease prefix after the clients stopped: which keys were left.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeasePoll {
    pub call: u64,
    pub ret: u64,
    pub keys: Vec<String>,
}

/// The contents of `leases.json`: the lease clients' operations and the final polls.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseHistory {
    pub records: Vec<LeaseRecord>,
    pub polls: Vec<LeasePoll>,
    /// When the nemesis healed the cluster for the last time. Only a leader with a quorum
    /// expires leases, so the deadline by which an abandoned lease must be gone counts from
    /// here at the earliest.
    pub faults_ended: u64,
}

/// Writes `value` as one JSON document.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> anyhow::Result<()> {
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = BufWriter::new(file);
    serde_json::to_writer(&mut out, value)?;
    out.flush()?;
    Ok(())
}

/// Reads a file written by [`write_json`].
pub fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> anyhow::Result<T> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    serde_json::from_reader(std::io::BufReader::new(file))
        .with_context(|| format!("reading {}", path.display()))
}
