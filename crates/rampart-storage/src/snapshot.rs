//! The snapshot format and the snapshot files.
//!
//! A snapshot is every pair of the MVCC tree (data and bookkeeping, see [`crate::codec`]) plus
//! openraft's `SnapshotMeta`. The same bytes are the file on disk and what a leader streams to
//! a follower, chunk by chunk (openraft's `InstallSnapshot` chunks of
//! `snapshot_max_chunk_size`), so a follower checks exactly what the leader wrote. Neither side
//! ever holds more of it in memory than one frame.
//!
//! Format 2, written by this build, is a stream of frames after a 12-byte header:
//!
//! ```text
//! "RAMPSNAP" | format: u32 LE = 2
//! frame*:      length: u32 LE | crc32 of the payload: u32 LE | payload: bincode(Frame)
//! ```
//!
//! The first frame is [`Frame::Meta`], then [`Frame::Pairs`] of about [`FRAME_BYTES`] each, and
//! the last [`Frame::End`], which counts the pairs: a file cut short, or with a frame lost,
//! damaged or repeated, is refused. The pairs come in no particular order of families, but the
//! history rows (`h`) in key order, as the key index needs them.
//!
//! Format 1, written before, is one bincode envelope (magic, format, crc32 over the body, body)
//! whose body is the meta and then every pair in key order. This build still reads it, as a
//! stream too, so a follower upgraded before its leader installs the leader's snapshots; a
//! follower of an older build refuses format 2 with "format 2, this build reads 1" (upgrade the
//! followers first).
//!
//! On disk, in `snap/`: no copy of the state machine. sled holds it, durably up to the point a
//! snapshot names (etcd's state machine is its snapshot the same way), so a snapshot is only
//! its meta, `current.meta`: a snapshot of no pairs, replaced by writing `current.meta.tmp`,
//! fsyncing it, renaming it over and fsyncing the directory. The bytes openraft sends are made
//! when it asks for them ([`SnapshotFiles::export_file`]): the state machine as it is then. An
//! install first makes the received snapshot `installing.snap` (fsynced, renamed, directory
//! fsynced) and only then rewrites the tree from it, in bounded batches; once the tree is
//! flushed it records the meta and removes the file. While `installing.snap` exists the tree
//! may be half rewritten, and `Store::open` finishes the install from the file before anything
//! reads the tree. A `current.snap` of an earlier build, a whole copy, is read for its meta and
//! removed at open.

use std::fs;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use bincode::Options;
use openraft::SnapshotMeta;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::codec::{self, Pairs};
use crate::error::StoreError;
use crate::types::{NodeId, PeerNode};

/// Identifies a Rampart snapshot before anything else is trusted.
const MAGIC: [u8; 8] = *b"RAMPSNAP";
/// Version of the layout this build writes: frames (see the module docs).
const SNAPSHOT_FORMAT: u32 = 2;
/// The earlier layout, one checksummed envelope, which this build still reads.
const SNAPSHOT_FORMAT_1: u32 = 1;
/// Magic and format.
const HEADER_LEN: u64 = 12;
/// A frame of pairs is closed once its pairs take this many bytes (a larger pair goes alone):
/// what building, verifying or installing a snapshot holds in memory at once.
pub(crate) const FRAME_BYTES: usize = 1024 * 1024;
/// A frame's length and checksum.
const FRAME_HEAD: usize = 8;

/// The meta of the current snapshot: the state machine on disk holds at least its last log id.
const CURRENT_META: &str = "current.meta";
const CURRENT_META_TMP: &str = "current.meta.tmp";
/// An earlier build's whole snapshot; read for its meta, then removed.
const CURRENT: &str = "current.snap";
const CURRENT_TMP: &str = "current.snap.tmp";
/// A received snapshot, checked and durable, that the tree is being rewritten from.
const INSTALLING: &str = "installing.snap";
const INSTALLING_TMP: &str = "installing.snap.tmp";
/// Where a damaged current snapshot (or its meta) is set aside.
const CURRENT_CORRUPT: &str = "current.snap.corrupt";
const CURRENT_META_CORRUPT: &str = "current.meta.corrupt";

pub(crate) type Meta = SnapshotMeta<NodeId, PeerNode>;

/// One frame of a format 2 snapshot.
#[derive(Serialize, Deserialize)]
enum Frame {
    Meta(Meta),
    Pairs(Pairs),
    /// The last frame: how many pairs came before it.
    End {
        pairs: u64,
    },
}

/// Writes a snapshot, a frame at a time, to a file it then syncs.
pub(crate) struct SnapshotWriter {
    out: BufWriter<fs::File>,
    path: PathBuf,
    meta: Meta,
    /// The pairs of the frame being filled, and their size.
    frame: Pairs,
    frame_bytes: usize,
    pairs: u64,
    /// The largest frame payload written so far, in bytes: what the writer held at most.
    largest_frame: usize,
}

impl SnapshotWriter {
    /// Creates (truncating) `path` and writes the header and the meta.
    pub(crate) fn create(path: &Path, meta: Meta) -> Result<Self, StoreError> {
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(|e| StoreError::io("create", path, e))?;
        Self::over(file, path, meta)
    }

    /// Writes the header and the meta into `file`, which is empty (named `path` in errors): a
    /// file with no name, for a backup (`crate::backup`).
    pub(crate) fn over(file: fs::File, path: &Path, meta: Meta) -> Result<Self, StoreError> {
        let mut writer = SnapshotWriter {
            out: BufWriter::with_capacity(256 * 1024, file),
            path: path.to_path_buf(),
            meta,
            frame: Vec::new(),
            frame_bytes: 0,
            pairs: 0,
            largest_frame: 0,
        };
        let mut header = MAGIC.to_vec();
        header.extend_from_slice(&SNAPSHOT_FORMAT.to_le_bytes());
        writer.write(&header)?;
        let meta = Frame::Meta(writer.meta.clone());
        writer.write_frame(&meta)?;
        Ok(writer)
    }

    pub(crate) fn meta(&self) -> &Meta {
        &self.meta
    }

    /// Adds one pair of the tree.
    pub(crate) fn push(&mut self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.frame_bytes += key.len() + value.len() + 16;
        self.frame.push((key.to_vec(), value.to_vec()));
        self.pairs += 1;
        if self.frame_bytes >= FRAME_BYTES {
            self.flush_frame()?;
        }
        Ok(())
    }

    fn flush_frame(&mut self) -> Result<(), StoreError> {
        if self.frame.is_empty() {
            return Ok(());
        }
        let frame = Frame::Pairs(std::mem::take(&mut self.frame));
        self.frame_bytes = 0;
        self.write_frame(&frame)
    }

    fn write_frame(&mut self, frame: &Frame) -> Result<(), StoreError> {
        let payload = codec::encode("snapshot frame", frame)?;
        let len = u32::try_from(payload.len())
            .map_err(|_| StoreError::corrupt("snapshot", "a frame over 4 GiB"))?;
        self.largest_frame = self.largest_frame.max(payload.len());
        let mut head = [0; FRAME_HEAD];
        head[..4].copy_from_slice(&len.to_le_bytes());
        head[4..].copy_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        self.write(&head)?;
        self.write(&payload)
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        self.out
            .write_all(bytes)
            .map_err(|e| StoreError::io("write", &self.path, e))
    }

    /// Writes the last frame and fsyncs the file. Returns it, positioned at its start, and the
    /// largest frame written.
    pub(crate) fn finish(mut self) -> Result<(fs::File, usize), StoreError> {
        self.flush_frame()?;
        let end = Frame::End { pairs: self.pairs };
        self.write_frame(&end)?;
        let path = self.path;
        let mut file = self
            .out
            .into_inner()
            .map_err(|e| StoreError::io("write", &path, e.into_error()))?;
        file.sync_all()
            .map_err(|e| StoreError::io("fsync", &path, e))?;
        file.seek(SeekFrom::Start(0))
            .map_err(|e| StoreError::io("seek", &path, e))?;
        Ok((file, self.largest_frame))
    }
}

/// A reader that keeps a running crc32 of what passes through it (format 1's checksum).
struct Crc<R> {
    inner: R,
    hasher: crc32fast::Hasher,
    read: u64,
}

impl<R: Read> Read for Crc<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.read += n as u64;
        Ok(n)
    }
}

/// Where a [`SnapshotReader`] is in its input.
enum Layout<R> {
    /// Format 2: the frames.
    Frames { input: R, pairs: u64, ended: bool },
    /// Format 1: the body, read through its checksum, with the pairs left to read.
    Envelope {
        body: Crc<R>,
        body_len: u64,
        crc32: u32,
        left: u64,
        done: bool,
    },
}

/// Reads a snapshot of either format from the start, checking it as it goes, and hands out its
/// pairs a bounded batch at a time. Nothing it hands out is trustworthy until
/// [`SnapshotReader::next_batch`] has returned `None`: only then are the counts and checksums
/// all checked.
pub(crate) struct SnapshotReader<R> {
    layout: Layout<R>,
    /// The input's length: no length read from it may promise more.
    len: u64,
    meta: Meta,
}

fn read_err(e: std::io::Error) -> StoreError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        StoreError::corrupt("snapshot", "cut short")
    } else {
        StoreError::io("read", "snapshot", e)
    }
}

/// bincode as [`codec::decode`] uses it, with no length in the input allowed past `limit`.
fn bounded(limit: u64) -> impl Options {
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .allow_trailing_bytes()
        .with_limit(limit)
}

impl<R: Read> SnapshotReader<R> {
    /// Reads the header and the meta of the snapshot `input`, `len` bytes long.
    pub(crate) fn open(mut input: R, len: u64) -> Result<Self, StoreError> {
        let mut header = [0; HEADER_LEN as usize];
        input.read_exact(&mut header).map_err(read_err)?;
        if header[..8] != MAGIC {
            return Err(StoreError::corrupt(
                "snapshot",
                "not a Rampart snapshot (bad magic)",
            ));
        }
        let format = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
        match format {
            SNAPSHOT_FORMAT => {
                let mut layout = Layout::Frames {
                    input,
                    pairs: 0,
                    ended: false,
                };
                let meta = match read_frame(&mut layout, len)? {
                    Some(Frame::Meta(meta)) => meta,
                    _ => return Err(StoreError::corrupt("snapshot", "no meta first")),
                };
                Ok(SnapshotReader { layout, len, meta })
            }
            SNAPSHOT_FORMAT_1 => {
                let mut rest = [0; 12];
                input.read_exact(&mut rest).map_err(read_err)?;
                let crc32 = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
                let body_len = u64::from_le_bytes(rest[4..].try_into().unwrap_or_default());
                let mut body = Crc {
                    inner: input,
                    hasher: crc32fast::Hasher::new(),
                    read: 0,
                };
                let limit = body_len.min(len);
                let meta: Meta = bounded(limit)
                    .deserialize_from(&mut body)
                    .map_err(|source| StoreError::Decode {
                        what: "snapshot meta",
                        source,
                    })?;
                let left: u64 = bounded(limit)
                    .deserialize_from(&mut body)
                    .map_err(|source| StoreError::Decode {
                        what: "snapshot pair count",
                        source,
                    })?;
                Ok(SnapshotReader {
                    layout: Layout::Envelope {
                        body,
                        body_len,
                        crc32,
                        left,
                        done: false,
                    },
                    len,
                    meta,
                })
            }
            other => Err(StoreError::corrupt(
                "snapshot",
                format!(
                    "format {other}, this build reads {SNAPSHOT_FORMAT} and {SNAPSHOT_FORMAT_1}"
                ),
            )),
        }
    }

    pub(crate) fn meta(&self) -> &Meta {
        &self.meta
    }

    /// The next pairs, about [`FRAME_BYTES`] of them; `None` once every pair was handed out and
    /// the whole snapshot checked out.
    pub(crate) fn next_batch(&mut self) -> Result<Option<Pairs>, StoreError> {
        let len = self.len;
        if let Layout::Frames { .. } = self.layout {
            return match read_frame(&mut self.layout, len)? {
                Some(Frame::Pairs(pairs)) => Ok(Some(pairs)),
                None => Ok(None),
                Some(_) => Err(StoreError::corrupt("snapshot", "a second meta")),
            };
        }
        match &mut self.layout {
            Layout::Frames { .. } => unreachable!("handled above"),
            Layout::Envelope {
                body,
                body_len,
                crc32,
                left,
                done,
            } => {
                if *done {
                    return Ok(None);
                }
                let mut batch = Vec::new();
                let mut bytes = 0;
                while *left > 0 && bytes < FRAME_BYTES {
                    let limit = body_len.saturating_sub(body.read).min(len);
                    let pair: (Vec<u8>, Vec<u8>) = bounded(limit)
                        .deserialize_from(&mut *body)
                        .map_err(|source| StoreError::Decode {
                            what: "snapshot pair",
                            source,
                        })?;
                    bytes += pair.0.len() + pair.1.len() + 16;
                    batch.push(pair);
                    *left -= 1;
                }
                if *left == 0 && batch.is_empty() {
                    *done = true;
                    let computed = body.hasher.clone().finalize();
                    if body.read != *body_len {
                        return Err(StoreError::corrupt(
                            "snapshot",
                            format!("body of {} bytes, {body_len} announced", body.read),
                        ));
                    }
                    if computed != *crc32 {
                        return Err(StoreError::corrupt(
                            "snapshot",
                            format!(
                                "checksum mismatch: stored {crc32:08x}, computed {computed:08x}"
                            ),
                        ));
                    }
                    return Ok(None);
                }
                Ok(Some(batch))
            }
        }
    }

    /// The pairs one at a time (read a batch at a time); an error ends them.
    pub(crate) fn pairs(
        &mut self,
    ) -> impl Iterator<Item = Result<(Vec<u8>, Vec<u8>), StoreError>> + '_ {
        let mut batch = Vec::new().into_iter();
        let mut failed = false;
        std::iter::from_fn(move || loop {
            if let Some(pair) = batch.next() {
                return Some(Ok(pair));
            }
            if failed {
                return None;
            }
            match self.next_batch() {
                Ok(Some(next)) => batch = next.into_iter(),
                Ok(None) => return None,
                Err(e) => {
                    failed = true;
                    return Some(Err(e));
                }
            }
        })
    }

    /// Gives the input back (read as far as the reader went).
    pub(crate) fn into_input(self) -> R {
        match self.layout {
            Layout::Frames { input, .. } => input,
            Layout::Envelope { body, .. } => body.inner,
        }
    }

    /// Reads to the end, checking everything.
    pub(crate) fn verify(mut self) -> Result<Meta, StoreError> {
        while self.next_batch()?.is_some() {}
        Ok(self.meta)
    }
}

/// Reads the next frame of a format 2 snapshot; `None` after the [`Frame::End`], once its
/// count matched and nothing follows it.
fn read_frame<R: Read>(layout: &mut Layout<R>, len: u64) -> Result<Option<Frame>, StoreError> {
    let Layout::Frames {
        input,
        pairs,
        ended,
    } = layout
    else {
        unreachable!("frames only in format 2");
    };
    if *ended {
        return Ok(None);
    }
    let mut head = [0; FRAME_HEAD];
    input.read_exact(&mut head).map_err(read_err)?;
    let frame_len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as u64;
    let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    if frame_len > len {
        return Err(StoreError::corrupt(
            "snapshot",
            format!("a frame of {frame_len} bytes in {len}"),
        ));
    }
    // Grows as the bytes arrive: a damaged length cannot make it allocate more than there is.
    let mut payload = Vec::with_capacity((frame_len as usize).min(2 * FRAME_BYTES));
    input
        .take(frame_len)
        .read_to_end(&mut payload)
        .map_err(read_err)?;
    if payload.len() as u64 != frame_len {
        return Err(StoreError::corrupt("snapshot", "cut short"));
    }
    let computed = crc32fast::hash(&payload);
    if computed != crc {
        return Err(StoreError::corrupt(
            "snapshot",
            format!("frame checksum mismatch: stored {crc:08x}, computed {computed:08x}"),
        ));
    }
    match codec::decode("snapshot frame", &payload)? {
        Frame::End { pairs: counted } => {
            if counted != *pairs {
                return Err(StoreError::corrupt(
                    "snapshot",
                    format!("{pairs} pairs, {counted} announced"),
                ));
            }
            if input.read(&mut [0]).map_err(read_err)? != 0 {
                return Err(StoreError::corrupt("snapshot", "bytes after its end"));
            }
            *ended = true;
            Ok(None)
        }
        Frame::Pairs(batch) => {
            *pairs += batch.len() as u64;
            Ok(Some(Frame::Pairs(batch)))
        }
        meta => Ok(Some(meta)),
    }
}

/// `bytes` with every checksum of a snapshot of either format made to match (for fuzzing: so
/// that generated frames reach the decoding behind the checksums). Format 2: each whole frame's
/// CRC; format 1: the body's length and CRC, taken as the rest of the input.
pub(crate) fn with_checksums_fixed(bytes: &[u8]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    let header = HEADER_LEN as usize;
    let format = out
        .get(8..header)
        .map(|f| u32::from_le_bytes([f[0], f[1], f[2], f[3]]));
    match format {
        Some(SNAPSHOT_FORMAT) => {
            let mut at = header;
            while let Some(head) = out.get(at..at + FRAME_HEAD) {
                let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
                let start = at + FRAME_HEAD;
                let Some(payload) = out.get(start..start.saturating_add(len)) else {
                    break;
                };
                let crc = crc32fast::hash(payload);
                out[at + 4..start].copy_from_slice(&crc.to_le_bytes());
                at = start + len;
            }
        }
        Some(SNAPSHOT_FORMAT_1) if out.len() >= header + 12 => {
            let body = header + 12;
            let crc = crc32fast::hash(&out[body..]);
            let body_len = (out.len() - body) as u64;
            out[header..header + 4].copy_from_slice(&crc.to_le_bytes());
            out[header + 4..body].copy_from_slice(&body_len.to_le_bytes());
        }
        _ => {}
    }
    out
}

/// Opens the snapshot file at `path` for reading.
pub(crate) fn open_file(path: &Path) -> Result<SnapshotReader<BufReader<fs::File>>, StoreError> {
    let file = fs::File::open(path).map_err(|e| StoreError::io("open", path, e))?;
    reader_of(file, path)
}

/// A reader of the snapshot in `file` (named `path` in errors), from its start.
pub(crate) fn reader_of(
    mut file: fs::File,
    path: &Path,
) -> Result<SnapshotReader<BufReader<fs::File>>, StoreError> {
    let len = file
        .seek(SeekFrom::End(0))
        .and_then(|len| file.seek(SeekFrom::Start(0)).map(|_| len))
        .map_err(|e| StoreError::io("seek", path, e))?;
    SnapshotReader::open(BufReader::with_capacity(256 * 1024, file), len)
}

/// Copies everything read from `inner` into `copy`.
pub(crate) struct Tee<R> {
    inner: R,
    copy: BufWriter<fs::File>,
}

impl<R: Read> Read for Tee<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.copy.write_all(&buf[..n])?;
        Ok(n)
    }
}

/// The snapshot files of one data directory.
pub(crate) struct SnapshotFiles {
    dir: PathBuf,
    /// The current snapshot's meta (`current.meta`); the lock also serializes replacing it, so
    /// a slow build of an older snapshot cannot overwrite a newer one installed meanwhile.
    current: Mutex<Option<Meta>>,
    /// Makes snapshot ids and scratch file names unique; seeded from the clock so they stay
    /// unique across restarts.
    next_id: AtomicU64,
}

impl SnapshotFiles {
    /// Opens (creating) `dir`, drops leftover temporary files and reads the current snapshot's
    /// meta, taking it from an earlier build's `current.snap` if that is what the directory
    /// holds. An `installing.snap` is kept: see [`SnapshotFiles::interrupted_install`].
    pub(crate) fn open(dir: &Path) -> Result<Self, StoreError> {
        fs::create_dir_all(dir).map_err(|e| StoreError::io("create snapshot directory", dir, e))?;
        for name in [CURRENT_TMP, CURRENT_META_TMP, INSTALLING_TMP] {
            let tmp = dir.join(name);
            match fs::remove_file(&tmp) {
                Ok(()) => {
                    tracing::info!(path = %tmp.display(), "removed an unfinished snapshot file")
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(StoreError::io("remove", tmp, e)),
            }
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
        let mut meta = files.read_meta(CURRENT_META, CURRENT_META_CORRUPT)?;
        if dir.join(CURRENT).exists() {
            // An earlier build's copy of the state machine: that build flushed the tree before
            // it saved the file, so its meta is a durable point of the tree as well.
            if let Some(old) = files.read_meta(CURRENT, CURRENT_CORRUPT)? {
                if meta
                    .as_ref()
                    .is_none_or(|m| m.last_log_id < old.last_log_id)
                {
                    files.write_meta(&old)?;
                    meta = Some(old);
                }
                let path = dir.join(CURRENT);
                fs::remove_file(&path).map_err(|e| StoreError::io("remove", &path, e))?;
                crate::files::sync_dir(dir)?;
                tracing::info!("replaced an earlier build's snapshot file with its meta");
            }
        }
        *files.current.lock() = meta;
        Ok(files)
    }

    /// The meta of the snapshot file `name`, if there is one; a damaged one is renamed to
    /// `aside` and counts as none.
    fn read_meta(&self, name: &str, aside: &str) -> Result<Option<Meta>, StoreError> {
        let path = self.dir.join(name);
        if !path.exists() {
            return Ok(None);
        }
        match open_file(&path).and_then(SnapshotReader::verify) {
            Ok(meta) => Ok(Some(meta)),
            // The state machine is in sled, intact or checked on its own; without a meta
            // openraft builds a snapshot again at start when the log has been purged.
            Err(e @ (StoreError::Corrupt { .. } | StoreError::Decode { .. })) => {
                let aside = self.dir.join(aside);
                tracing::error!(
                    error = %e,
                    kept_as = %aside.display(),
                    "the current snapshot file is damaged; it is set aside and built again"
                );
                fs::rename(&path, &aside).map_err(|e| StoreError::io("set aside", &path, e))?;
                crate::files::sync_dir(&self.dir)?;
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Makes `meta` the content of `current.meta`: a snapshot of no pairs, written aside,
    /// fsynced and renamed over, the directory fsynced.
    fn write_meta(&self, meta: &Meta) -> Result<(), StoreError> {
        let tmp = self.dir.join(CURRENT_META_TMP);
        SnapshotWriter::create(&tmp, meta.clone())?.finish()?;
        let path = self.dir.join(CURRENT_META);
        fs::rename(&tmp, &path).map_err(|e| StoreError::io("rename into", &path, e))?;
        crate::files::sync_dir(&self.dir)
    }

    /// The last log id of the current snapshot, if there is one.
    pub(crate) fn current_last(&self) -> Option<Option<openraft::LogId<NodeId>>> {
        self.current.lock().as_ref().map(|meta| meta.last_log_id)
    }

    /// The current snapshot's meta, if there is one.
    pub(crate) fn current(&self) -> Option<Meta> {
        self.current.lock().clone()
    }

    /// Forgets the current snapshot: it ends before the log's first entry, so openraft would
    /// take the log as holding what it does not (it builds a new snapshot at start).
    pub(crate) fn remove_stale(&self, purged: u64) -> Result<(), StoreError> {
        let mut current = self.current.lock();
        let path = self.dir.join(CURRENT_META);
        tracing::warn!(
            snapshot = ?current.as_ref().map(|m| m.to_string()),
            purged,
            "the current snapshot ends before the purged log; it is removed and built again"
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

    /// Makes `meta` the current snapshot, unless the current one is newer; the tree must hold
    /// `meta.last_log_id` on disk already. Returns whether it did.
    pub(crate) fn record(&self, meta: &Meta) -> Result<bool, StoreError> {
        let mut current = self.current.lock();
        if let Some(cur) = current.as_ref() {
            if cur.last_log_id > meta.last_log_id {
                tracing::debug!(current = %cur, skipped = %meta, "kept the newer snapshot");
                return Ok(false);
            }
        }
        self.write_meta(meta)?;
        // On disk: `current.meta` is this snapshot's; a crash from here on restarts with it.
        *current = Some(meta.clone());
        Ok(true)
    }

    /// A new file with no name in the snapshot directory, and the name it had (for errors): it
    /// leaves nothing behind, not even after a crash.
    fn scratch_file(&self, kind: &str) -> Result<(fs::File, PathBuf), StoreError> {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.join(format!("{kind}-{n}.tmp"));
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| StoreError::io("create", &path, e))?;
        fs::remove_file(&path).map_err(|e| StoreError::io("remove", &path, e))?;
        Ok((file, path))
    }

    /// Starts writing a snapshot described by `meta` into a file with no name, to be sent to a
    /// follower and dropped.
    pub(crate) fn export_file(&self, meta: Meta) -> Result<SnapshotWriter, StoreError> {
        let (file, path) = self.scratch_file("sending")?;
        SnapshotWriter::over(file, &path, meta)
    }

    /// A new file with no name in the snapshot directory, for a snapshot being received: a
    /// transfer cut short leaves nothing behind, not even after a crash.
    pub(crate) fn receiving_file(&self) -> Result<fs::File, StoreError> {
        Ok(self.scratch_file("receiving")?.0)
    }

    /// Wraps `source`, a received snapshot, so that reading it copies it into
    /// `installing.snap.tmp`; [`SnapshotFiles::stage_install`] makes the copy durable.
    pub(crate) fn copy_for_install<R: Read>(&self, source: R) -> Result<Tee<R>, StoreError> {
        let path = self.dir.join(INSTALLING_TMP);
        let file = fs::File::create(&path).map_err(|e| StoreError::io("create", &path, e))?;
        Ok(Tee {
            inner: source,
            copy: BufWriter::with_capacity(256 * 1024, file),
        })
    }

    /// Removes the copy of a refused snapshot (a leftover is also removed at open).
    pub(crate) fn discard_copy(&self) {
        let path = self.dir.join(INSTALLING_TMP);
        if let Err(e) = fs::remove_file(&path) {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove a refused snapshot");
        }
    }

    /// Makes the copy a [`Tee`] made, read to its end and checked, `installing.snap`: fsynced,
    /// renamed, the directory fsynced. From here on, a restart finishes the install from it.
    pub(crate) fn stage_install<R>(&self, copy: Tee<R>) -> Result<PathBuf, StoreError> {
        let tmp = self.dir.join(INSTALLING_TMP);
        let file = copy
            .copy
            .into_inner()
            .map_err(|e| StoreError::io("write", &tmp, e.into_error()))?;
        file.sync_all()
            .map_err(|e| StoreError::io("fsync", &tmp, e))?;
        drop(file);
        let path = self.dir.join(INSTALLING);
        fs::rename(&tmp, &path).map_err(|e| StoreError::io("rename into", &path, e))?;
        crate::files::sync_dir(&self.dir)?;
        Ok(path)
    }

    /// The snapshot an install was rewriting the tree from when the store last stopped, if
    /// any: the tree may hold part of it, and must be rewritten from it before it is read.
    pub(crate) fn interrupted_install(&self) -> Option<PathBuf> {
        let path = self.dir.join(INSTALLING);
        path.exists().then_some(path)
    }

    /// The tree holds `installing.snap` (`meta`) on disk: its meta becomes the current
    /// snapshot's (unless that is newer), and the file is removed.
    pub(crate) fn finish_install(&self, meta: &Meta) -> Result<(), StoreError> {
        self.record(meta)?;
        let installing = self.dir.join(INSTALLING);
        fs::remove_file(&installing).map_err(|e| StoreError::io("remove", &installing, e))?;
        crate::files::sync_dir(&self.dir)
        // On disk: no `installing.snap`, so a restart reads the tree as it is.
    }
}
