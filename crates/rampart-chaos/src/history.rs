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
    /// `fault`, `heal`, `crash` or `error`, or a step of a membership change (`member-...`,
    /// see [`crate::membership`]).
    pub action: String,
    pub detail: String,
}

/// The nemesis's events as they happen, each stamped with the run's clock and logged.
pub struct NemesisLog {
    clock: Clock,
    pub events: Vec<NemesisEvent>,
}

impl NemesisLog {
    pub fn new(clock: Clock) -> NemesisLog {
        NemesisLog {
            clock,
            events: Vec::new(),
        }
    }

    pub fn record(&mut self, action: &str, detail: String) {
        if action == "error" || action == "crash" {
            tracing::warn!(action, "nemesis: {detail}");
        } else {
            tracing::info!(action, "nemesis: {detail}");
        }
        self.events.push(NemesisEvent {
            at: self.clock.now(),
            action: action.to_string(),
            detail,
        });
    }
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

/// What a lock client asked for, on lock `name` with its session's lease.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LockOp {
    /// Lock, followed (when it answered a key) by a Range of that key for its create revision.
    Lock,
    /// A txn that puts `value` on the name's register only if the lock key's create revision
    /// is still `token`.
    GuardedWrite { token: i64, seq: u32, value: String },
    /// Unlock of the key a Lock answered.
    Unlock { key: String },
    /// No request: the client stopped keeping its lease alive while holding the lock (`ret`
    /// is when; the lease's last keep-alive is in the session's lease records).
    Abandon,
}

/// What came of a lock operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LockOutcome {
    /// Lock answered `key`, whose create revision (the fencing token) a Range then read;
    /// `token` is `None` when the key was already gone (the lease expired in between).
    Acquired { key: String, token: Option<i64> },
    /// The guarded write was applied at this revision (the register's mod revision).
    Written { revision: i64 },
    /// The guard failed: the lock key is gone, the lock is no longer this client's.
    CompareFailed { revision: i64 },
    /// Unlock answered, or the abandonment was done.
    Done,
    /// Surely not carried out (refused before Raft, or never sent).
    Failed,
    /// The client never learned the outcome (or gave up waiting for the lock).
    Unknown,
}

/// One lock operation as a lock client saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockRecord {
    pub client: u32,
    /// The lock's name (its keys are `<name>/<lease hex>`).
    pub name: String,
    /// The lease of the client's session for this acquisition.
    pub lease: i64,
    pub op: LockOp,
    /// When the request was sent.
    pub call: u64,
    /// When the answer came, or when the client gave up.
    pub ret: u64,
    pub outcome: LockOutcome,
    /// The member (index in the cluster) the request was sent to.
    pub endpoint: usize,
    pub error: Option<String>,
}

/// The contents of `locks.json`: the lock clients' operations, their sessions' leases, and
/// the nemesis's faults and heals (the liveness check looks only where nothing was broken).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockHistory {
    pub records: Vec<LockRecord>,
    /// The grants, keep-alives and revokes of the sessions' leases.
    pub leases: Vec<LeaseRecord>,
    pub nemesis: Vec<NemesisEvent>,
}

/// What an election client asked for, in election `name` with its session's lease.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ElectionOp {
    Campaign {
        value: String,
    },
    Proclaim {
        value: String,
    },
    Resign,
    /// No request: the client stopped keeping its lease alive while leading.
    Abandon,
}

/// What came of an election operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ElectionOutcome {
    /// Campaign answered leadership: the leader key and its create revision.
    Won {
        key: String,
        rev: i64,
    },
    /// Proclaim applied the value at this revision, the leader key still there.
    Proclaimed {
        revision: i64,
    },
    /// Proclaim refused: "election: not leader".
    NotLeader,
    /// Resign answered at this revision (whether or not the key was still there).
    Resigned {
        revision: i64,
    },
    Done,
    /// Surely not carried out.
    Failed,
    /// The client never learned the outcome (or gave up campaigning).
    Unknown,
}

/// One election operation as an election client saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ElectionRecord {
    pub client: u32,
    pub name: String,
    pub lease: i64,
    pub op: ElectionOp,
    pub call: u64,
    pub ret: u64,
    pub outcome: ElectionOutcome,
    pub endpoint: usize,
    pub error: Option<String>,
}

/// One Observe response as an observer received it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedLeader {
    pub observer: u32,
    pub name: String,
    /// The Observe stream it came on, counted from 0 per observer.
    pub session: u32,
    pub received: u64,
    pub endpoint: usize,
    pub key: String,
    pub value: String,
    pub create_revision: i64,
    pub mod_revision: i64,
    /// The revision at which the key was surely the leader: the response's header revision
    /// for the first response of a key on its stream (the read, or the put, that found it
    /// leading), its mod revision for a later value of the same key (a leader's key outlives
    /// no older key, and no older key can appear).
    pub leader_at: i64,
}

/// The contents of `elections.json`: the election clients' operations, their sessions'
/// leases, and what every observer saw.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ElectionHistory {
    pub records: Vec<ElectionRecord>,
    pub leases: Vec<LeaseRecord>,
    pub observed: Vec<ObservedLeader>,
}
