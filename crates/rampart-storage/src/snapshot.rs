//! The snapshot format and the current snapshot file.
//!
//! A snapshot is every pair of the MVCC tree (data and bookkeeping, see [`crate::codec`]) plus
//! openraft's `SnapshotMeta`, in a checksummed envelope. The same bytes are the file on disk and
//! what a leader streams to a follower, so a follower checks exactly what the leader wrote.
//!
//! On disk: `snap/current.snap`, replaced by writing `current.snap.tmp`, fsyncing it, renaming it
//! over, and fsyncing the directory, so after a crash the file is the old snapshot or the new one.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use openraft::SnapshotMeta;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::codec::{self, Pairs};
use crate::error::StoreError;
use crate::types::{NodeId, PeerNode};

/// Identifies a Rampart snapshot before anything else is trusted.
const MAGIC: [u8; 8] = *b"RAMPSNAP";
/// Version of the envelope and body layout.
const SNAPSHOT_FORMAT: u32 = 1;
const CURRENT: &str = "current.snap";
const CURRENT_TMP: &str = "current.snap.tmp";
/// Where a damaged current snapshot is set aside.
const CURRENT_CORRUPT: &str = "current.snap.corrupt";

pub(crate) type Meta = SnapshotMeta<NodeId, PeerNode>;

/// The outer layer: what the checksum covers is `body`, a bincode [`SnapshotBody`].
#[derive(Serialize, Deserialize)]
struct Envelope {
    magic: [u8; 8],
    format: u32,
    crc32: u32,
    body: Vec<u8>,
}

/// The contents. `meta` comes first so it can be read without decoding the pairs.
#[derive(Serialize, Deserialize)]
pub(crate) struct SnapshotBody {
    pub meta: Meta,
    /// Every (key, value) of the MVCC tree, in key order.
    pub pairs: Pairs,
}

/// Serializes a snapshot into its envelope.
pub(crate) fn encode(body: &SnapshotBody) -> Result<Vec<u8>, StoreError> {
    let body = codec::encode("snapshot body", body)?;
    codec::encode(
        "snapshot",
        &Envelope {
            magic: MAGIC,
            format: SNAPSHOT_FORMAT,
            crc32: crc32fast::hash(&body),
            body,
        },
    )
}

/// Opens the envelope and checks it: magic, format and checksum. Returns the body's bytes.
fn open_envelope(bytes: &[u8]) -> Result<Vec<u8>, StoreError> {
    let env: Envelope = codec::decode("snapshot", bytes)?;
    if env.magic != MAGIC {
        return Err(StoreError::corrupt(
            "snapshot",
            "not a Rampart snapshot (bad magic)",
        ));
    }
    if env.format != SNAPSHOT_FORMAT {
        return Err(StoreError::corrupt(
            "snapshot",
            format!("format {}, this build reads {SNAPSHOT_FORMAT}", env.format),
        ));
    }
    let crc = crc32fast::hash(&env.body);
    if crc != env.crc32 {
        return Err(StoreError::corrupt(
            "snapshot",
            format!(
                "checksum mismatch: stored {:08x}, computed {crc:08x}",
                env.crc32
            ),
        ));
    }
    Ok(env.body)
}

/// Decodes and verifies a whole snapshot.
pub(crate) fn decode(bytes: &[u8]) -> Result<SnapshotBody, StoreError> {
    codec::decode("snapshot body", &open_envelope(bytes)?)
}

/// Verifies a snapshot and reads only its meta (bincode reads fields in order and ignores the
/// rest of the slice, so the pairs are not decoded).
fn decode_meta(bytes: &[u8]) -> Result<Meta, StoreError> {
    codec::decode("snapshot meta", &open_envelope(bytes)?)
}

/// The current snapshot file of one data directory.
pub(crate) struct SnapshotFiles {
    dir: PathBuf,
    /// Meta of the file on disk; the lock also serializes replacing it, so a slow build of an
    /// older snapshot cannot overwrite a newer one installed meanwhile.
    current: Mutex<Option<Meta>>,
    /// Makes snapshot ids unique; seeded from the clock so they stay unique across restarts.
    next_id: AtomicU64,
}

impl SnapshotFiles {
    /// Opens (creating) `dir`, drops a leftover temporary file and checks the current snapshot.
    pub(crate) fn open(dir: &Path) -> Result<Self, StoreError> {
        fs::create_dir_all(dir).map_err(|e| StoreError::io("create snapshot directory", dir, e))?;
        let tmp = dir.join(CURRENT_TMP);
        match fs::remove_file(&tmp) {
            Ok(()) => tracing::info!(path = %tmp.display(), "removed an unfinished snapshot file"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(StoreError::io("remove", tmp, e)),
        }
        let files = SnapshotFiles {
            dir: dir.to_path_buf(),
            current: Mutex::new(None),
            next_id: AtomicU64::new(
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_millis() as u64)
                    .unwrap_or(0),
            ),
        };
        let meta = match files.load() {
            Ok(loaded) => loaded.map(|(meta, _)| meta),
            // The state machine is in sled, intact or checked on its own; the file is only a
            // copy of it for followers, and a missing one is built again (openraft does so at
            // start when the log has been purged). Keep the damaged file for inspection.
            Err(e @ (StoreError::Corrupt { .. } | StoreError::Decode { .. })) => {
                let aside = dir.join(CURRENT_CORRUPT);
                tracing::error!(
                    error = %e,
                    kept_as = %aside.display(),
                    "the current snapshot file is damaged; it is set aside and built again"
                );
                fs::rename(dir.join(CURRENT), &aside)
                    .map_err(|e| StoreError::io("set aside", dir.join(CURRENT), e))?;
                crate::files::sync_dir(dir)?;
                None
            }
            Err(e) => return Err(e),
        };
        *files.current.lock() = meta;
        Ok(files)
    }

    /// The last log id of the current snapshot file, if there is one.
    pub(crate) fn current_last(&self) -> Option<Option<openraft::LogId<NodeId>>> {
        self.current.lock().as_ref().map(|meta| meta.last_log_id)
    }

    /// Removes the current snapshot file: it ends before the log's first entry, so it could
    /// not bring a follower up to the log (openraft builds a new one at start).
    pub(crate) fn remove_stale(&self, purged: u64) -> Result<(), StoreError> {
        let mut current = self.current.lock();
        let path = self.dir.join(CURRENT);
        tracing::warn!(
            snapshot = ?current.as_ref().map(|m| m.to_string()),
            purged,
            "the current snapshot file ends before the purged log; it is removed and built again"
        );
        fs::remove_file(&path).map_err(|e| StoreError::io("remove", path, e))?;
        crate::files::sync_dir(&self.dir)?;
        *current = None;
        Ok(())
    }

    /// A fresh snapshot id: `{term}-{index}-{counter}`.
    pub(crate) fn new_id(&self, meta_last: Option<openraft::LogId<NodeId>>) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        match meta_last {
            Some(id) => format!("{}-{}-{n}", id.leader_id.term, id.index),
            None => format!("0-0-{n}"),
        }
    }

    /// Reads and verifies the current snapshot file, if there is one.
    pub(crate) fn load(&self) -> Result<Option<(Meta, Vec<u8>)>, StoreError> {
        let path = self.dir.join(CURRENT);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError::io("read", path, e)),
        };
        let meta = decode_meta(&bytes).map_err(|e| {
            tracing::error!(path = %path.display(), error = %e, "current snapshot file is corrupt");
            e
        })?;
        Ok(Some((meta, bytes)))
    }

    /// Makes `bytes` (an encoded snapshot described by `meta`) the current snapshot, unless the
    /// current one is newer. Returns whether it was written.
    pub(crate) fn save(&self, meta: &Meta, bytes: &[u8]) -> Result<bool, StoreError> {
        let mut current = self.current.lock();
        if let Some(cur) = current.as_ref() {
            if cur.last_log_id > meta.last_log_id {
                tracing::debug!(current = %cur, skipped = %meta, "kept the newer snapshot");
                return Ok(false);
            }
        }
        crate::files::write_atomically(&self.dir, CURRENT, bytes)?;
        // On disk: `current.snap` is this snapshot, complete and checksummed, and the rename is
        // durable; a crash from here on restarts with it.
        *current = Some(meta.clone());
        Ok(true)
    }
}
