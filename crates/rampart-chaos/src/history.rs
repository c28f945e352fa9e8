//! What a run records, and how it is written: every operation with its invocation and
//! completion times (`history.jsonl`), the nemesis's actions (`nemesis.jsonl`), and on a
//! violation the seed with the smallest failing part of the history (`violation-<seed>.json`).

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
