//! Backups: the file that `etcdctl snapshot save` writes from Maintenance.Snapshot, checking
//! one, and restoring one into the data directory of a member of a new cluster.
//!
//! A backup is a snapshot of the state machine (the format of [`crate::snapshot`], built by the
//! same consistent export that Raft's snapshots use) wrapped in a header and a checksum.
//! Format 1 of the file:
//!
//! ```text
//! "RAMPBKUP" | format: u32 LE = 1 | snapshot length: u64 LE          (20 bytes)
//! snapshot:  exactly `snapshot length` bytes of a snapshot file: "RAMPSNAP" | format: u32 LE = 2,
//!            then frames (length: u32 LE | crc32: u32 LE | bincode payload): the meta, the
//!            tree's pairs a frame of about 1 MiB at a time, an end frame counting the pairs
//! padding:   zero bytes, up to the next multiple of 512 bytes from the file's start
//! sha256:    32 bytes, the SHA-256 of every byte before it (header, snapshot, padding)
//! ```
//!
//! The padding is for etcdctl: `etcdctl snapshot save` (3.4 and 3.5) refuses a file whose
//! length is not a multiple of 512 plus 32 ("sha256 checksum not found"), the shape of etcd's
//! own (bbolt pages, then a SHA-256). The header's length tells a truncated file (or one with
//! bytes appended) from a damaged one before anything else is read; the SHA-256 covers every
//! byte; the snapshot's own crc32s and pair count are checked too. A reader refuses any other
//! format by its number.
//!
//! The snapshot is the state after one applied log entry, though writes go on while it is
//! taken (see `MvccCore::export`): every key with its create and mod revisions and version, the
//! history not yet compacted, the compact revision, the leases with their TTLs and attached
//! keys. Its membership and member attributes are the old cluster's. The auth store is in it
//! without the key of the simple tokens (`auth::without_token_key`): with it and the password
//! hashes, a reader of the file could make tokens the cluster accepts.
//!
//! Restoring ([`restore`]) writes a new data directory whose state machine is the snapshot's,
//! except its bookkeeping: the membership becomes the one the restore is given (the new
//! cluster's, from `--initial-cluster`), the old members' attributes are dropped (each new member
//! publishes its own when it starts), and the applied position becomes openraft's first log id
//! (term 0, index 0: the log id `Raft::initialize` gives the first membership). The Raft log is
//! empty and the vote unset, so openraft starts as on a cluster whose first entry was applied
//! and purged: every member restored from one file with the same flags has the same log id and
//! membership, and they elect a leader among themselves. The member's identity (cluster id,
//! member id) is recorded, so a member started on the directory with `--initial-cluster-state
//! new` and the same flags does not initialize again; it serves the restored data. The revision
//! and the compact revision stay those of the snapshot, as etcd's restore keeps them. The
//! restored auth store gets a token key drawn anew.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use openraft::{LogId, Membership, SnapshotMeta, StoredMembership};
use sha2::{Digest, Sha256};

use crate::codec::{
    self, Progress, FORMAT_VERSION, META_FORMAT, META_MEMBERSHIP, META_MEMBER_PREFIX,
    META_PROGRESS, V3_APPLIED, V3_APPLIED_PART, V3_REVISION,
};
use crate::error::StoreError;
use crate::key_range::KeyRange;
use crate::mvcc::{refill_tree, Mvcc, MvccCore, MvccState};
use crate::snapshot::{SnapshotReader, SnapshotWriter};
use crate::store::{ClusterIdentity, Store};
use crate::types::{NodeId, PeerNode};

/// The first bytes of every backup.
const MAGIC: [u8; 8] = *b"RAMPBKUP";
/// The version of the layout this build writes and reads.
pub const BACKUP_FORMAT: u32 = 1;
/// Magic, format and the snapshot's length.
const HEADER_LEN: u64 = 20;
/// The SHA-256 at the end.
const HASH_LEN: u64 = 32;
/// What comes before the SHA-256 is padded to a multiple of this (see the module docs).
const ALIGN: u64 = 512;

/// Where the SHA-256 begins in a backup holding a snapshot of `snapshot_len` bytes: after the
/// header, the snapshot and the padding. `None` if no file could be that long.
fn hash_offset(snapshot_len: u64) -> Option<u64> {
    let unpadded = HEADER_LEN.checked_add(snapshot_len)?;
    unpadded.checked_next_multiple_of(ALIGN)
}

/// Why a backup could not be taken, checked or restored.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{} is not a Rampart snapshot: it does not begin with \"RAMPBKUP\"", path.display())]
    NotABackup { path: PathBuf },
    #[error(
        "{} is a Rampart snapshot of format {found}; this build reads format {BACKUP_FORMAT}",
        path.display()
    )]
    Format { path: PathBuf, found: u32 },
    #[error("snapshot file {} is truncated: {len} bytes, {expected}", path.display())]
    Truncated {
        path: PathBuf,
        len: u64,
        expected: String,
    },
    #[error(
        "snapshot file {} has {extra} bytes past its end: {len} bytes, its header announces \
         {announced}",
        path.display()
    )]
    TrailingBytes {
        path: PathBuf,
        len: u64,
        announced: u64,
        extra: u64,
    },
    #[error(
        "snapshot file {} is damaged: sha256 mismatch, stored {stored}, computed {computed}",
        path.display()
    )]
    ChecksumMismatch {
        path: PathBuf,
        stored: String,
        computed: String,
    },
    #[error("snapshot file {} is damaged: its snapshot does not check out", path.display())]
    Damaged {
        path: PathBuf,
        #[source]
        source: StoreError,
    },
    /// etcd's text (`etcdctl snapshot restore`): a restore never writes over a directory.
    #[error("data-dir {:?} exists", path.display().to_string())]
    DataDirExists { path: PathBuf },
    #[error("{action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write the restored data directory")]
    Store(#[from] StoreError),
}

fn io_err<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> BackupError + 'a {
    move |source| BackupError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// What a checked backup holds (`rampartctl snapshot status`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupStatus {
    /// The SHA-256 the file ends with (checked).
    pub sha256: [u8; 32],
    /// The store revision of the snapshot.
    pub revision: i64,
    /// Its compact revision (0: never compacted).
    pub compact_revision: i64,
    /// How many keys exist at `revision`.
    pub keys: u64,
    /// How many leases it holds.
    pub leases: u64,
    /// The file's length in bytes.
    pub total_size: u64,
}

impl BackupStatus {
    /// The SHA-256 in lowercase hexadecimal.
    pub fn sha256_hex(&self) -> String {
        hex(&self.sha256)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A backup of a member's state machine being read out, a stream of bytes in the format of the
/// module docs. The snapshot inside is already complete in a file with no name (it goes away
/// with this value); the SHA-256 is computed as the bytes are read.
pub struct Backup {
    header: [u8; HEADER_LEN as usize],
    snapshot: BufReader<fs::File>,
    snapshot_len: u64,
    /// Bytes read out so far.
    pos: u64,
    hasher: Sha256,
    digest: Option<[u8; 32]>,
    revision: i64,
}

/// Makes the names of scratch files unique within the process.
static SCRATCH: AtomicU64 = AtomicU64::new(0);

impl Backup {
    /// Takes a consistent snapshot of `mvcc`'s state (writes go on meanwhile, see
    /// `MvccCore::export`) into a file with no name in `scratch_dir`. Blocks for as long as the
    /// export takes: call it off the async runtime's workers.
    pub fn export(mvcc: &Mvcc, scratch_dir: &Path) -> Result<Backup, StoreError> {
        Self::export_with(mvcc, scratch_dir, || {})
    }

    /// [`Backup::export`], with `MvccCore::export`'s test seam: `each_history_row` runs after
    /// each history row.
    fn export_with(
        mvcc: &Mvcc,
        scratch_dir: &Path,
        each_history_row: impl FnMut(),
    ) -> Result<Backup, StoreError> {
        let path = scratch_dir.join(format!(
            "backup-{}-{}.tmp",
            std::process::id(),
            SCRATCH.fetch_add(1, Ordering::Relaxed)
        ));
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| StoreError::io("create", &path, e))?;
        // Unnamed at once: a backup cut short, or a crash, leaves nothing behind.
        fs::remove_file(&path).map_err(|e| StoreError::io("remove", &path, e))?;
        let core: &MvccCore = mvcc.core();
        let mut revision = 0;
        let writer = core.export(
            |state| {
                revision = state.revision;
                SnapshotWriter::over(
                    file,
                    &path,
                    SnapshotMeta {
                        last_log_id: state.applied,
                        last_membership: state.membership.clone(),
                        snapshot_id: format!("backup-{}", state.revision),
                    },
                )
            },
            crate::auth::without_token_key,
            each_history_row,
        )?;
        let (mut file, _) = writer.finish()?;
        let snapshot_len = file
            .seek(SeekFrom::End(0))
            .and_then(|len| file.seek(SeekFrom::Start(0)).map(|_| len))
            .map_err(|e| StoreError::io("seek", &path, e))?;
        let mut header = [0; HEADER_LEN as usize];
        header[..8].copy_from_slice(&MAGIC);
        header[8..12].copy_from_slice(&BACKUP_FORMAT.to_le_bytes());
        header[12..].copy_from_slice(&snapshot_len.to_le_bytes());
        Ok(Backup {
            header,
            snapshot: BufReader::with_capacity(256 * 1024, file),
            snapshot_len,
            pos: 0,
            hasher: Sha256::new(),
            digest: None,
            revision,
        })
    }

    /// The whole backup's length in bytes.
    pub fn len(&self) -> u64 {
        self.padded_end() + HASH_LEN
    }

    /// Where the padding ends and the SHA-256 begins.
    fn padded_end(&self) -> u64 {
        // A snapshot file's length is far from overflowing.
        hash_offset(self.snapshot_len).unwrap_or(u64::MAX)
    }

    /// Always false: a backup holds at least its header.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The store revision the backup is of.
    pub fn revision(&self) -> i64 {
        self.revision
    }
}

impl Read for Backup {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let snapshot_end = HEADER_LEN + self.snapshot_len;
        let padded_end = self.padded_end();
        let n = if self.pos < HEADER_LEN {
            let from = &self.header[self.pos as usize..];
            let n = from.len().min(buf.len());
            buf[..n].copy_from_slice(&from[..n]);
            self.hasher.update(&buf[..n]);
            n
        } else if self.pos < snapshot_end {
            let want = ((snapshot_end - self.pos) as usize).min(buf.len());
            let n = self.snapshot.read(&mut buf[..want])?;
            if n == 0 && want > 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the snapshot file of a backup ended early",
                ));
            }
            self.hasher.update(&buf[..n]);
            n
        } else if self.pos < padded_end {
            let n = ((padded_end - self.pos) as usize).min(buf.len());
            buf[..n].fill(0);
            self.hasher.update(&buf[..n]);
            n
        } else {
            let hasher = &self.hasher;
            let digest = self
                .digest
                .get_or_insert_with(|| hasher.clone().finalize().into());
            let from = &digest[(self.pos - padded_end).min(HASH_LEN) as usize..];
            let n = from.len().min(buf.len());
            buf[..n].copy_from_slice(&from[..n]);
            n
        };
        self.pos += n as u64;
        Ok(n)
    }
}

/// A backup file whose every check passed.
struct Checked {
    status: BackupStatus,
    snapshot_len: u64,
    /// The state its snapshot's pairs make (bookkeeping and key index).
    state: MvccState,
}

/// Reads `buf.len()` bytes, or as many as there are.
fn read_up_to(file: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match file.read(&mut buf[got..])? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got)
}

/// Checks the backup file at `path` whole (see [`check_input`]).
fn check(path: &Path) -> Result<Checked, BackupError> {
    let mut file = fs::File::open(path).map_err(io_err("open", path))?;
    let len = file.metadata().map_err(io_err("stat", path))?.len();
    check_input(&mut file, len, path)
}

/// Checks the backup `file`, `len` bytes long and named `path` in errors, whole: its header
/// and length, its SHA-256, then the snapshot inside (frames, checksums, the pair count, the
/// bookkeeping its pairs hold).
fn check_input<F: Read + Seek>(
    file: &mut F,
    len: u64,
    path: &Path,
) -> Result<Checked, BackupError> {
    let mut header = [0; HEADER_LEN as usize];
    let got = read_up_to(&mut *file, &mut header).map_err(io_err("read", path))?;
    let magic_seen = got.min(MAGIC.len());
    if got == 0 || header[..magic_seen] != MAGIC[..magic_seen] {
        return Err(BackupError::NotABackup {
            path: path.to_path_buf(),
        });
    }
    if got < HEADER_LEN as usize {
        return Err(BackupError::Truncated {
            path: path.to_path_buf(),
            len,
            expected: format!("shorter than the {HEADER_LEN}-byte header"),
        });
    }
    let found = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
    if found != BACKUP_FORMAT {
        return Err(BackupError::Format {
            path: path.to_path_buf(),
            found,
        });
    }
    let snapshot_len = u64::from_le_bytes(header[12..].try_into().unwrap_or_default());
    let announced = hash_offset(snapshot_len)
        .and_then(|offset| offset.checked_add(HASH_LEN))
        .unwrap_or(u64::MAX);
    if len < announced {
        return Err(BackupError::Truncated {
            path: path.to_path_buf(),
            len,
            expected: format!("its header announces {announced}"),
        });
    }
    if len > announced {
        return Err(BackupError::TrailingBytes {
            path: path.to_path_buf(),
            len,
            announced,
            extra: len - announced,
        });
    }

    file.seek(SeekFrom::Start(0))
        .map_err(io_err("seek", path))?;
    let mut hasher = Sha256::new();
    let mut body = BufReader::with_capacity(256 * 1024, (&mut *file).take(len - HASH_LEN));
    let mut buf = vec![0; 256 * 1024];
    loop {
        match body.read(&mut buf).map_err(io_err("read", path))? {
            0 => break,
            n => hasher.update(&buf[..n]),
        }
    }
    drop(body);
    let computed: [u8; 32] = hasher.finalize().into();
    let mut stored = [0; 32];
    file.read_exact(&mut stored).map_err(io_err("read", path))?;
    if stored != computed {
        return Err(BackupError::ChecksumMismatch {
            path: path.to_path_buf(),
            stored: hex(&stored),
            computed: hex(&computed),
        });
    }

    let damaged = |source| BackupError::Damaged {
        path: path.to_path_buf(),
        source,
    };
    let mut reader = snapshot_in(&mut *file, snapshot_len, path)?;
    let mut leases = 0;
    let pairs = reader.pairs().inspect(|pair| {
        if matches!(pair, Ok((key, _)) if key.first() == Some(&codec::LEASE)) {
            leases += 1;
        }
    });
    let (state, _format) = MvccCore::incoming_state(pairs).map_err(damaged)?;
    let meta = reader.meta();
    if state.applied != meta.last_log_id || state.membership != meta.last_membership {
        return Err(damaged(StoreError::corrupt(
            "snapshot",
            "its state machine data does not match its meta (applied log id or membership)",
        )));
    }
    let everything = KeyRange::new(b"\0", b"\0");
    let keys = state.index.range(&everything, None).count() as u64;
    Ok(Checked {
        status: BackupStatus {
            sha256: stored,
            revision: state.revision,
            compact_revision: state.compact_revision,
            keys,
            leases,
            total_size: len,
        },
        snapshot_len,
        state,
    })
}

/// A reader of the snapshot inside the backup at `path`, positioned after its meta.
fn open_snapshot(
    path: &Path,
    snapshot_len: u64,
) -> Result<SnapshotReader<BufReader<std::io::Take<fs::File>>>, BackupError> {
    let file = fs::File::open(path).map_err(io_err("open", path))?;
    snapshot_in(file, snapshot_len, path)
}

/// A reader of the snapshot inside the backup `input` (named `path` in errors), positioned
/// after its meta.
fn snapshot_in<F: Read + Seek>(
    mut input: F,
    snapshot_len: u64,
    path: &Path,
) -> Result<SnapshotReader<BufReader<std::io::Take<F>>>, BackupError> {
    input
        .seek(SeekFrom::Start(HEADER_LEN))
        .map_err(io_err("seek", path))?;
    let input = BufReader::with_capacity(256 * 1024, input.take(snapshot_len));
    SnapshotReader::open(input, snapshot_len).map_err(|source| BackupError::Damaged {
        path: path.to_path_buf(),
        source,
    })
}

/// Checks the backup held in `bytes` whole, as [`status`] checks a file: the fuzzing entry
/// point's way in.
pub(crate) fn status_of(bytes: &[u8]) -> Result<BackupStatus, BackupError> {
    let mut input = std::io::Cursor::new(bytes);
    check_input(&mut input, bytes.len() as u64, Path::new("backup")).map(|checked| checked.status)
}

/// `snapshot` wrapped as a backup file: header, padding and SHA-256 (what
/// `Backup::export` writes around the snapshot it builds).
pub(crate) fn wrap(snapshot: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(snapshot.len() + 2 * ALIGN as usize);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&BACKUP_FORMAT.to_le_bytes());
    out.extend_from_slice(&(snapshot.len() as u64).to_le_bytes());
    out.extend_from_slice(snapshot);
    let padded = hash_offset(snapshot.len() as u64).unwrap_or(out.len() as u64);
    out.resize(padded as usize, 0);
    let hash: [u8; 32] = Sha256::digest(&out).into();
    out.extend_from_slice(&hash);
    out
}

/// Checks the backup file at `path` whole and tells what it holds.
pub fn status(path: &Path) -> Result<BackupStatus, BackupError> {
    check(path).map(|checked| checked.status)
}

/// Who the restored member is, and the new cluster's membership (all voters).
#[derive(Clone, Debug)]
pub struct RestoreTarget {
    pub identity: ClusterIdentity,
    pub members: BTreeMap<NodeId, PeerNode>,
}

/// The bookkeeping pairs a restore writes anew rather than copies (see the module docs).
fn rewritten(key: &[u8]) -> bool {
    [
        META_FORMAT,
        META_PROGRESS,
        META_MEMBERSHIP,
        V3_REVISION,
        V3_APPLIED,
        V3_APPLIED_PART,
    ]
    .contains(&key)
        || key.starts_with(META_MEMBER_PREFIX)
}

/// Checks the backup file at `path` whole, then writes the data directory `data_dir` (which
/// must not exist) of the member `target` names in a new cluster, holding the backup's data
/// (see the module docs). The directory is built beside it under another name and renamed into
/// place once complete and flushed, so a failed restore leaves no `data_dir`.
pub fn restore(
    path: &Path,
    data_dir: &Path,
    target: &RestoreTarget,
) -> Result<BackupStatus, BackupError> {
    if data_dir.exists() {
        return Err(BackupError::DataDirExists {
            path: data_dir.to_path_buf(),
        });
    }
    let checked = check(path)?;
    let mut building = data_dir.as_os_str().to_owned();
    building.push(format!(".restoring-{}", std::process::id()));
    let building = PathBuf::from(building);
    // Only a restore of this name, interrupted, leaves this directory: none of it is kept.
    if building.exists() {
        fs::remove_dir_all(&building).map_err(io_err("remove", &building))?;
    }
    let written = write_restored(path, &checked, &building, target);
    if let Err(e) = written {
        let _ = fs::remove_dir_all(&building);
        return Err(e);
    }
    fs::rename(&building, data_dir).map_err(io_err("rename into", data_dir))?;
    if let Some(parent) = data_dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        crate::files::sync_dir(parent)?;
    }
    // On disk: `data_dir`, complete and fsynced (`write_restored` flushed the store).
    Ok(checked.status)
}

/// Writes the restored store into `dir`.
fn write_restored(
    path: &Path,
    checked: &Checked,
    dir: &Path,
    target: &RestoreTarget,
) -> Result<(), BackupError> {
    let store = Store::open(dir)?;
    let core = store.core();
    // openraft's first log id, the one `Raft::initialize` gives the first membership.
    let applied = Some(LogId::default());
    let voters = target.members.keys().copied().collect();
    let membership = StoredMembership::new(
        applied,
        Membership::new(vec![voters], target.members.clone()),
    );
    let progress = Progress {
        revision: checked.state.revision,
        applied,
        applied_part: None,
    };
    let mut bookkeeping = Some(vec![
        (
            META_FORMAT.to_vec(),
            codec::encode("mvcc format version", &FORMAT_VERSION)?,
        ),
        (
            META_PROGRESS.to_vec(),
            codec::encode("progress", &progress)?,
        ),
        (
            META_MEMBERSHIP.to_vec(),
            codec::encode("membership", &membership)?,
        ),
    ]);
    let mut reader = open_snapshot(path, checked.snapshot_len)?;
    {
        // Nothing else uses the new store; the lock keeps its compactor off the tree anyway.
        let _state = core.state.write();
        refill_tree(&core.tree(), || match reader.next_batch()? {
            Some(batch) => batch
                .into_iter()
                .filter(|(k, _)| !rewritten(k))
                .map(|(k, v)| match crate::auth::with_new_token_key(&k, &v)? {
                    Some(fresh) => Ok((k, fresh)),
                    None => Ok((k, v)),
                })
                .collect::<Result<_, StoreError>>()
                .map(Some),
            None => Ok(bookkeeping.take()),
        })
        .map_err(|source| BackupError::Damaged {
            path: path.to_path_buf(),
            source,
        })?;
    }
    store.flush()?;
    // On disk: the state machine. The identity comes last, so a directory without it is
    // never taken for a restored one.
    store.set_identity(&target.identity)?;
    drop(store);

    // Read back as the member will: the state it opens with must be the snapshot's.
    let reopened = Store::open(dir)?;
    let mvcc = reopened.mvcc();
    if mvcc.revision() != checked.state.revision
        || mvcc.compact_revision() != checked.state.compact_revision
        || mvcc.applied_log_id() != applied
    {
        return Err(StoreError::corrupt(
            "restored store",
            format!(
                "opens at revision {} (compacted {}), applied {:?}; the snapshot is at {} \
                 (compacted {})",
                mvcc.revision(),
                mvcc.compact_revision(),
                mvcc.applied_log_id(),
                checked.state.revision,
                checked.state.compact_revision
            ),
        )
        .into());
    }
    reopened.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::AuthMeta;
    use crate::codec::{Pairs, META};
    use crate::test_support::{enabling_auth, entry, leased_put_cmd, put_cmd};
    use crate::types::{Command, DeleteRangeRequest};

    /// A store with history, a delete, a lease with a key attached, a compaction, and
    /// authentication on.
    fn source(dir: &Path) -> Store {
        let store = Store::open(dir).unwrap();
        let core = store.core_for_tests();
        let commands = vec![
            put_cmd("a", "1"),
            put_cmd("b", "1"),
            put_cmd("a", "2"),
            Command::LeaseGrant { id: 7, ttl: 600 },
            leased_put_cmd("leased", "v", 7),
            Command::DeleteRange(DeleteRangeRequest {
                key: b"b".to_vec(),
                ..Default::default()
            }),
            Command::Compact { revision: 3 },
            put_cmd("c", "1"),
        ];
        for (index, command) in (1..).zip(commands.into_iter().chain(enabling_auth())) {
            core.apply_entry(&entry(index, command)).unwrap();
        }
        store
    }

    /// Writes a backup of `store` to `path`.
    fn save(store: &Store, scratch: &Path, path: &Path) {
        let mut backup = Backup::export(&store.mvcc(), scratch).unwrap();
        let len = backup.len();
        let mut out = fs::File::create(path).unwrap();
        assert_eq!(std::io::copy(&mut backup, &mut out).unwrap(), len);
    }

    /// Every pair of the tree but the bookkeeping.
    fn data(store: &Store) -> Pairs {
        store
            .core_for_tests()
            .tree()
            .iter()
            .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).unwrap())
            .filter(|(k, _)| k.first() != Some(&META))
            .collect()
    }

    fn target(members: u64) -> RestoreTarget {
        RestoreTarget {
            identity: ClusterIdentity {
                cluster_id: 99,
                member_id: 1,
            },
            members: (1..=members)
                .map(|id| {
                    let node = PeerNode {
                        name: format!("m{id}"),
                        peer_urls: vec![format!("http://127.0.0.1:{}", 2380 + id)],
                    };
                    (id, node)
                })
                .collect(),
        }
    }

    #[test]
    fn a_restored_store_holds_the_backup_under_the_new_membership() {
        let dir = tempfile::tempdir().unwrap();
        let store = source(&dir.path().join("source"));
        let file = dir.path().join("backup.db");
        save(&store, dir.path(), &file);

        tracing::info!("--- the file has etcd's shape and tells what it holds");
        let len = fs::metadata(&file).unwrap().len();
        assert_eq!(len % 512, 32, "etcdctl wants 512-byte pages and a sha256");
        let status = status(&file).unwrap();
        let mvcc = store.mvcc();
        assert_eq!(status.revision, mvcc.revision());
        assert_eq!((status.compact_revision, status.keys), (3, 3));
        assert_eq!((status.leases, status.total_size), (1, len));
        assert_eq!(
            status.sha256_hex(),
            hex(&Sha256::digest(
                &fs::read(&file).unwrap()[..len as usize - 32]
            ))
        );

        tracing::info!("--- restored: the same data, the new membership, no old members");
        let restored_dir = dir.path().join("restored");
        let target = target(3);
        assert_eq!(restore(&file, &restored_dir, &target).unwrap(), status);
        let restored = Store::open(&restored_dir).unwrap();
        assert_eq!(data(&restored), data(&store));
        let restored_mvcc = restored.mvcc();
        assert_eq!(restored_mvcc.revision(), mvcc.revision());
        assert_eq!(restored_mvcc.compact_revision(), 3);
        assert_eq!(restored_mvcc.applied_log_id(), Some(LogId::default()));
        let membership = restored_mvcc.membership();
        assert_eq!(membership.log_id(), &Some(LogId::default()));
        let voters: Vec<NodeId> = membership.membership().voter_ids().collect();
        assert_eq!(voters, [1, 2, 3]);
        assert!(restored_mvcc.members().is_empty());
        assert_eq!(restored.identity().unwrap(), Some(target.identity));
        assert_eq!(restored_mvcc.lease_keys(7).unwrap(), [b"leased".to_vec()]);
        assert!(restored_mvcc.auth().enabled());
        let (restored_auth, source_auth) = (restored_mvcc.auth(), mvcc.auth());
        assert_eq!(restored_auth.users, source_auth.users);
        assert_eq!(restored_auth.roles, source_auth.roles);
        assert_eq!(restored_auth.revision(), source_auth.revision());
        // The restored cluster signs its tokens with a key of its own.
        assert_eq!(restored_auth.meta.token_key.len(), 32);
        assert_ne!(restored_auth.meta.token_key, source_auth.meta.token_key);

        tracing::info!("--- the file holds no token key: it could make the source's tokens");
        let mut reader = open_snapshot(&file, check(&file).unwrap().snapshot_len).unwrap();
        let mut saved_meta = None;
        while let Some(batch) = reader.next_batch().unwrap() {
            for (key, value) in batch {
                if key == crate::codec::META_AUTH {
                    saved_meta = Some(codec::decode::<AuthMeta>("auth meta", &value).unwrap());
                }
            }
        }
        let saved_meta = saved_meta.expect("the backup holds the auth store");
        assert!(saved_meta.enabled);
        assert!(saved_meta.token_key.is_empty(), "{saved_meta:?}");
        assert!(!source_auth.meta.token_key.is_empty());

        tracing::info!("--- a restore never writes over a directory");
        drop(restored);
        let again = restore(&file, &restored_dir, &target).unwrap_err();
        assert!(
            matches!(again, BackupError::DataDirExists { .. }),
            "{again}"
        );
    }

    /// The commands of entries 1.., the same for every store of a test.
    fn command(index: u64) -> Command {
        match index % 5 {
            0 => Command::DeleteRange(DeleteRangeRequest {
                key: format!("k{}", index % 20).into(),
                ..Default::default()
            }),
            _ => put_cmd(&format!("k{}", index % 20), &format!("v{index}")),
        }
    }

    /// A backup taken while entries apply (a compaction among them) holds exactly the state
    /// of the entry it began at: what `etcdctl snapshot save` gets while clients write.
    #[test]
    fn a_backup_taken_while_writes_go_on_is_the_state_of_one_entry() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("source")).unwrap();
        let core = store.core_for_tests();
        for index in 1..=100 {
            core.apply_entry(&entry(index, command(index))).unwrap();
        }

        tracing::info!("--- a backup paused in the middle of history");
        let (paused, is_paused) = std::sync::mpsc::channel();
        let (go, resume) = std::sync::mpsc::channel::<()>();
        let exporter = std::thread::spawn({
            let (mvcc, scratch) = (store.mvcc(), dir.path().to_path_buf());
            move || {
                let mut rows = 0;
                let backup = Backup::export_with(&mvcc, &scratch, || {
                    rows += 1;
                    if rows == 10 {
                        paused.send(()).unwrap();
                        resume.recv().unwrap();
                    }
                });
                backup.map_err(|e| e.to_string())
            }
        });
        let deadline = std::time::Duration::from_secs(10);
        is_paused
            .recv_timeout(deadline)
            .expect("the export reached history");

        tracing::info!("--- entries apply meanwhile, a compaction among them");
        for index in 101..=150 {
            core.apply_entry(&entry(index, command(index))).unwrap();
        }
        core.apply_entry(&entry(151, Command::Compact { revision: 90 }))
            .unwrap();
        go.send(()).unwrap();
        let mut backup = exporter.join().unwrap().expect("the export succeeds");
        let file = dir.path().join("backup.db");
        std::io::copy(&mut backup, &mut fs::File::create(&file).unwrap()).unwrap();

        tracing::info!("--- restored, it is the state after entry 100 exactly");
        let restored_dir = dir.path().join("restored");
        restore(&file, &restored_dir, &target(1)).unwrap();
        let restored = Store::open(&restored_dir).unwrap();
        let reference = Store::open(&dir.path().join("reference")).unwrap();
        for index in 1..=100 {
            reference
                .core_for_tests()
                .apply_entry(&entry(index, command(index)))
                .unwrap();
        }
        assert_eq!(restored.mvcc().revision(), reference.mvcc().revision());
        assert_eq!(restored.mvcc().compact_revision(), 0);
        assert_eq!(data(&restored), data(&reference));
    }

    #[test]
    fn damaged_truncated_and_foreign_files_are_refused_and_restore_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = source(&dir.path().join("source"));
        let file = dir.path().join("backup.db");
        save(&store, dir.path(), &file);
        let good = fs::read(&file).unwrap();
        let refused = |name: &str, bytes: &[u8]| {
            let path = dir.path().join(name);
            fs::write(&path, bytes).unwrap();
            let restored_dir = dir.path().join(format!("{name}.restored"));
            let error = restore(&path, &restored_dir, &target(1)).unwrap_err();
            assert!(
                !restored_dir.exists(),
                "{name}: a refused restore wrote nothing"
            );
            assert_eq!(
                status(&path).unwrap_err().to_string(),
                error.to_string(),
                "status and restore refuse alike"
            );
            error
        };

        let mut flipped = good.clone();
        flipped[good.len() / 2] ^= 0x40;
        let error = refused("flipped", &flipped);
        assert!(
            error.to_string().contains("is damaged: sha256 mismatch"),
            "{error}"
        );

        let error = refused("truncated", &good[..good.len() - 100]);
        assert!(error.to_string().contains("is truncated"), "{error}");
        let error = refused("header-only", &good[..10]);
        assert!(error.to_string().contains("is truncated"), "{error}");

        let mut longer = good.clone();
        longer.extend_from_slice(b"more");
        let error = refused("longer", &longer);
        assert!(
            error.to_string().contains("4 bytes past its end"),
            "{error}"
        );

        let error = refused("foreign", b"SQLite format 3\0 and so on");
        assert!(
            error.to_string().contains("is not a Rampart snapshot"),
            "{error}"
        );

        tracing::info!("--- damage inside the snapshot, with a sha256 that matches it");
        let mut inner = good.clone();
        inner[HEADER_LEN as usize + 30] ^= 0x01;
        let body = inner.len() - HASH_LEN as usize;
        let digest = Sha256::digest(&inner[..body]);
        inner[body..].copy_from_slice(&digest);
        let error = refused("inner", &inner);
        assert!(
            matches!(error, BackupError::Damaged { .. }),
            "{error}: {:?}",
            std::error::Error::source(&error)
        );
    }
}
