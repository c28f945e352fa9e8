//! Making sled's writes durable: every durable point of Rampart goes through [`Disk::flush`].
//!
//! sled's own `flush` writes its buffers and waits for them with `sync_file_range`
//! (`pagecache/iobuf.rs:730-742` in sled 0.34.7), which neither flushes the drive's volatile
//! cache nor records a grown file's new size, and it never fsyncs the files it keeps large
//! values in (`blobs/`, written by `pagecache/blob_io.rs:65-99`). That survives a crash of the
//! process, not a loss of power. [`Disk::flush`] therefore follows sled's flush with an `fsync`
//! of every blob file (and the blob directory) not yet synced and then an `fdatasync` of the
//! database file, so "on disk" in this crate means what it says.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};

use parking_lot::Mutex;

use crate::error::StoreError;

/// The files of one sled database, and the means to make its writes durable.
pub(crate) struct Disk {
    db: sled::Db,
    /// sled's single data file (`<db dir>/db`), opened for syncing only.
    data: File,
    data_path: PathBuf,
    blobs: PathBuf,
    /// Blob files already fsynced; held during a sync, so syncs do not interleave.
    synced_blobs: Mutex<HashSet<OsString>>,
}

impl Disk {
    /// `path` is the directory sled was opened at.
    pub(crate) fn new(db: sled::Db, path: &Path) -> Result<Disk, StoreError> {
        let data_path = path.join("db");
        let data = File::open(&data_path).map_err(|e| StoreError::io("open", &data_path, e))?;
        Ok(Disk {
            db,
            data,
            data_path,
            blobs: path.join("blobs"),
            synced_blobs: Mutex::new(HashSet::new()),
        })
    }

    /// Writes everything written to the database so far to stable storage; blocks until done.
    pub(crate) fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        let mut synced_blobs = self.synced_blobs.lock();
        // Blobs before the log that points to them: sled writes a blob file whole before the
        // log message that refers to it enters its I/O buffer (`pagecache/logger.rs:361-369`,
        // `iobuf.rs:542-545`), so each message the flush above wrote has its file listed here.
        // On recovery sled skips a message whose blob file is missing and keeps the messages
        // after it (`pagecache/iterator.rs:156-163`), so a log synced without its blobs would
        // not recover a prefix of the writes.
        self.sync_new_blobs(&mut synced_blobs)?;
        self.data
            .sync_data()
            .map_err(|e| StoreError::io("fdatasync", &self.data_path, e))?;
        // On disk: every write to the database made before this call, and the files it lives in.
        Ok(())
    }

    /// Like [`Disk::flush`], without blocking the async runtime's worker.
    pub(crate) async fn flush_async(self: &std::sync::Arc<Self>) -> Result<(), StoreError> {
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

    /// fsyncs the blob files that appeared since the last sync, then the blob directory that
    /// names them; forgets the ones sled has since removed.
    fn sync_new_blobs(&self, synced: &mut HashSet<OsString>) -> Result<(), StoreError> {
        let entries = match std::fs::read_dir(&self.blobs) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(StoreError::io("list", &self.blobs, e)),
        };
        let mut present = HashSet::new();
        let mut new_files = false;
        for entry in entries {
            let entry = entry.map_err(|e| StoreError::io("list", &self.blobs, e))?;
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
            File::open(&self.blobs)
                .and_then(|dir| dir.sync_all())
                .map_err(|e| StoreError::io("fsync", &self.blobs, e))?;
        }
        *synced = present;
        Ok(())
    }
}
