//! Making sled's writes durable: every durable point of Rampart goes through [`Disk::flush`],
//! and everything sled reads when it opens a database is made durable first ([`SledFiles`]).
//!
//! sled 0.34's own `flush` writes its buffers and waits for them with `sync_file_range`
//! (`pagecache/iobuf.rs:730-742`), which neither flushes the drive's volatile cache nor records a
//! grown file's new size, and it never fsyncs the files it keeps large values in (`blobs/`,
//! written by `pagecache/blob_io.rs:65-99`) nor its `conf` (`config.rs:666-682`). That survives
//! a crash of the process, not a loss of power. [`Disk::flush`] therefore follows sled's flush
//! with an `fsync` of every blob file (and the blob directory) not yet synced and then an
//! `fdatasync` of the database file, so "on disk" in this crate means what it says.
//!
//! sled also writes a snapshot of its page table, fsynced, every time it opens a database, and
//! only then (`pagecache/snapshot.rs:364-366`, called from `PageCache::start` at
//! `pagecache/mod.rs:588`; `Config::snapshot_after_ops` does nothing, `config.rs:380`). The
//! snapshot describes the log as sled read it, which after a crash of the process alone is the
//! page cache's copy; sled syncs the database file first only on some paths
//! (`snapshot.rs:335-336`, not when the recovered log ends at a segment's end, `:305-312`), and
//! never the blob files. A power loss after such an open left a snapshot pointing past the
//! durable log, which sled cannot open again (`SegmentAccountant::initial_segments` panics,
//! `pagecache/segment.rs:556`, or recovery reports corruption, `snapshot.rs:341-348`).
//! [`SledFiles::sync_before_open`] closes that: sled only ever reads what is durable.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;

use crate::error::StoreError;
use crate::files::sync_dir;
use crate::stats::{observe_since, StorageStats};

/// The files sled 0.34 keeps in the directory of one database (`config.rs:258-268`, `:824`).
pub(crate) struct SledFiles {
    /// The directory sled is opened at.
    pub dir: PathBuf,
    /// The log: sled's single data file.
    pub data: PathBuf,
    /// sled's persisted configuration (segment size, version), written once, at creation.
    pub conf: PathBuf,
    /// One file per blob, named by the log sequence number of the message that refers to it.
    pub blobs: PathBuf,
}

impl SledFiles {
    pub(crate) fn new(dir: &Path) -> SledFiles {
        SledFiles {
            dir: dir.to_path_buf(),
            data: dir.join("db"),
            conf: dir.join("conf"),
            blobs: dir.join("blobs"),
        }
    }

    /// Makes durable every file sled reads when it opens the database (the data file, the blob
    /// files, `conf`) and the names in its directory, so that what it recovers, and the
    /// snapshot it writes of it, are of durable data: after a crash of the process alone the
    /// page cache may hold writes that never reached the disk.
    pub(crate) fn sync_before_open(&self) -> Result<(), StoreError> {
        if !self.dir.exists() {
            return Ok(());
        }
        sync_if_present(&self.data, File::sync_data)?;
        sync_if_present(&self.conf, File::sync_all)?;
        sync_new_blobs(&self.blobs, &mut HashSet::new())?;
        sync_dir(&self.dir)
    }

    /// Makes `conf` durable, which sled may just have written when it created the database.
    /// Done before anything is written to the data file (sled writes nothing to it while it
    /// opens: a new database's first pages wait in its I/O buffer, `pagecache/mod.rs:697-720`),
    /// so a database with data always has its `conf` on disk.
    pub(crate) fn sync_after_open(&self) -> Result<(), StoreError> {
        sync_if_present(&self.conf, File::sync_all)?;
        sync_dir(&self.dir)
    }
}

/// The files of one sled database, and the means to make its writes durable.
pub(crate) struct Disk {
    db: sled::Db,
    /// sled's single data file, opened for syncing only.
    data: File,
    data_path: PathBuf,
    blobs: PathBuf,
    /// Blob files already fsynced; held during a sync, so syncs do not interleave.
    synced_blobs: Mutex<HashSet<OsString>>,
    /// Where each flush's duration is recorded.
    stats: Arc<StorageStats>,
}

impl Disk {
    /// `files` are those of the directory sled was opened at.
    pub(crate) fn new(
        db: sled::Db,
        files: &SledFiles,
        stats: Arc<StorageStats>,
    ) -> Result<Disk, StoreError> {
        let data = File::open(&files.data).map_err(|e| StoreError::io("open", &files.data, e))?;
        Ok(Disk {
            db,
            data,
            data_path: files.data.clone(),
            blobs: files.blobs.clone(),
            synced_blobs: Mutex::new(HashSet::new()),
            stats,
        })
    }

    /// Where this database's flushes are measured.
    pub(crate) fn stats(&self) -> Arc<StorageStats> {
        self.stats.clone()
    }

    /// Writes everything written to the database so far to stable storage; blocks until done.
    pub(crate) fn flush(&self) -> Result<(), StoreError> {
        let _flushing = self.stats.in_flight.begin("database flush");
        let began = Instant::now();
        self.db.flush()?;
        let mut synced_blobs = self.synced_blobs.lock();
        // Blobs before the log that points to them: sled writes a blob file whole before the
        // log message that refers to it enters its I/O buffer (`pagecache/logger.rs:361-369`,
        // `iobuf.rs:542-545`), so each message the flush above wrote has its file listed here.
        // On recovery sled skips a message whose blob file is missing and keeps the messages
        // after it (`pagecache/iterator.rs:156-163`), so a log synced without its blobs would
        // not recover a prefix of the writes.
        sync_new_blobs(&self.blobs, &mut synced_blobs)?;
        self.data
            .sync_data()
            .map_err(|e| StoreError::io("fdatasync", &self.data_path, e))?;
        // On disk: every write to the database made before this call, and the files it lives in.
        observe_since(&self.stats.backend_commit, began);
        Ok(())
    }

    /// Like [`Disk::flush`], without blocking the async runtime's worker.
    pub(crate) async fn flush_async(self: &Arc<Self>) -> Result<(), StoreError> {
        let disk = self.clone();
        tokio::task::spawn_blocking(move || disk.flush())
            .await
            .map_err(|e| {
                StoreError::Stopped(if e.is_panic() {
                    "a flush (it panicked)"
                } else {
                    "a flush"
                })
            })?
    }
}

/// Syncs the file at `path` with `sync`, if it exists.
fn sync_if_present(path: &Path, sync: fn(&File) -> std::io::Result<()>) -> Result<(), StoreError> {
    match File::open(path) {
        Ok(file) => sync(&file).map_err(|e| StoreError::io("fsync", path, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StoreError::io("open", path, e)),
    }
}

/// fsyncs the blob files in `blobs` that are not in `synced`, then the directory that names
/// them; forgets the ones sled has since removed.
fn sync_new_blobs(blobs: &Path, synced: &mut HashSet<OsString>) -> Result<(), StoreError> {
    let entries = match std::fs::read_dir(blobs) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(StoreError::io("list", blobs, e)),
    };
    let mut present = HashSet::new();
    let mut new_files = false;
    for entry in entries {
        let entry = entry.map_err(|e| StoreError::io("list", blobs, e))?;
        let name = entry.file_name();
        if !synced.contains(&name) {
            let path = entry.path();
            match File::open(&path) {
                Ok(file) => file
                    .sync_all()
                    .map_err(|e| StoreError::io("fsync", &path, e))?,
                // Removed by sled's blob collection since the listing: nothing to keep.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(StoreError::io("open", &path, e)),
            }
            new_files = true;
        }
        present.insert(name);
    }
    if new_files {
        sync_dir(blobs)?;
    }
    *synced = present;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    /// Every file sled reads at open, written and never synced, survives a power loss once
    /// `sync_before_open` has returned.
    #[test]
    fn what_sled_reads_at_open_is_durable_once_synced_before_the_open() {
        if !rampart_crashfs::fuse_available() {
            println!("SKIPPED: /dev/fuse is missing, so no FUSE filesystem can be mounted here");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let (backing, mountpoint) = (tmp.path().join("backing"), tmp.path().join("mnt"));
        fs::create_dir(&backing).unwrap();
        fs::create_dir(&mountpoint).unwrap();
        let crashfs = rampart_crashfs::CrashFs::mount(&backing, &mountpoint).unwrap();
        let files = SledFiles::new(&mountpoint.join("db"));
        fs::create_dir_all(&files.blobs).unwrap();
        let written = [
            (files.data.clone(), b"the log, from the page cache".to_vec()),
            (files.conf.clone(), b"segment_size: 16777216\n".to_vec()),
            (files.blobs.join("1234"), b"a blob".to_vec()),
        ];
        for (path, bytes) in &written {
            fs::write(path, bytes).unwrap();
        }
        files.sync_before_open().unwrap();
        crashfs.crash().unwrap();
        for (path, bytes) in &written {
            assert_eq!(
                &fs::read(path).unwrap(),
                bytes,
                "{} after the power loss",
                path.display()
            );
        }
    }
}
