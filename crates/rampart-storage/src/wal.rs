//! The Raft log's entries, in append-only segment files beside the sled database.
//!
//! A segment is a file `<first index, 20 digits>.wal` in the log directory, holding entries
//! with consecutive indexes, each as one record:
//!
//! | bytes | field                                                      |
//! |-------|------------------------------------------------------------|
//! | 4     | payload length, little-endian                              |
//! | 4     | CRC-32 of the length bytes and the payload, little-endian  |
//! | n     | payload: bincode(`Entry`)                                  |
//!
//! Appends go to the last segment, written with one `pwrite` per call; making them durable is
//! the caller's job (the log's flusher thread fdatasyncs the segment, see [`crate::log_store`]),
//! so that the sync runs off openraft's task and outside the lock on this log. A new segment
//! starts when the last one passes [`SEGMENT_BYTES`], or when an append does not follow the
//! last entry (after a purge past the end, as when a snapshot is installed); the last segment
//! is fdatasynced before the new one is created (as etcd's WAL `cut()` does, so that only the
//! last segment can be torn), and creating it fsyncs the directory.
//!
//! Opening reads every segment and checks every record, in order. The first record that does
//! not check out (cut short by the end of the file, failing its CRC or its decoding, or holding
//! another index than the one it must) starts a torn tail if it is in the last segment, as in
//! etcd's WAL (`isTornEntry`): the bytes of appends a power loss interrupted during their sync.
//! Those bytes need not reach disk as a prefix (on XFS a range can stay an unwritten extent and
//! read as zeros while later ranges and the file size made it; a drive may reorder sectors), so
//! the damage may start anywhere in the segment, with valid-looking records after it. None of
//! them was acknowledged: openraft counts an append only after its sync, and a segment is
//! synced before the next one is created. The file is cut where the damage starts, durably
//! (`set_len`, then `fdatasync`), with a warning naming the segment, the offset and the bytes
//! cut. The log refuses to open instead (`Corrupt`) when the cut would take an entry that sled
//! records as committed and not purged (it was synced before it was recorded as committed, so
//! its damage is the disk's corruption), and for damage in any segment but the last.
//!
//! The entries appended last are also kept decoded in memory, up to [`RECENT_BYTES`] of records:
//! the reads that follow an append closely (replicating it to followers, applying it once
//! committed) are served from there, without reading and decoding the file again.
//!
//! Invariants: the segments' entries are consecutive from the first segment's first index to
//! [`Wal::last`]; entries at or below `purged` are never returned, whether or not their files
//! have gone yet.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::LogId;

use crate::codec;
use crate::error::StoreError;
use crate::types::{NodeId, TypeConfig};

pub(crate) type Entry = openraft::Entry<TypeConfig>;

/// A segment grows to about this size before the next append starts a new one.
pub(crate) const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;

/// At most this many bytes of records are kept decoded in memory (see [`Recent`]).
const RECENT_BYTES: usize = 8 * 1024 * 1024;

const HEADER_BYTES: usize = 8;
const SUFFIX: &str = ".wal";

/// One segment file and where each of its entries starts.
struct Segment {
    path: PathBuf,
    file: Arc<File>,
    /// Index of the segment's first entry (also its name).
    first: u64,
    /// `offsets[i]` is where the record of entry `first + i` starts; `end` is where the last
    /// one ends and the next append goes.
    offsets: Vec<u64>,
    end: u64,
}

impl Segment {
    /// Index of the last entry, if the segment has any.
    fn last(&self) -> Option<u64> {
        (!self.offsets.is_empty()).then(|| self.first + self.offsets.len() as u64 - 1)
    }

    /// Index the next entry appended here must have.
    fn next_index(&self) -> u64 {
        self.first + self.offsets.len() as u64
    }

    /// fdatasyncs the file: its records and its length are on disk when this returns.
    fn sync(&self) -> Result<(), StoreError> {
        self.file
            .sync_data()
            .map_err(|e| StoreError::io("fdatasync", &self.path, e))?;
        #[cfg(test)]
        tests::record_sync(&self.path);
        Ok(())
    }

    /// Cuts the file after its first `keep` entries, durably.
    fn cut(&mut self, keep: usize) -> Result<(), StoreError> {
        let end = self.offsets.get(keep).copied().unwrap_or(self.end);
        self.file
            .set_len(end)
            .map_err(|e| StoreError::io("truncate", &self.path, e))?;
        self.sync()?;
        self.offsets.truncate(keep);
        self.end = end;
        Ok(())
    }

    /// Byte range of the records of entries `from..=to`, all in this segment.
    fn byte_range(&self, from: u64, to: u64) -> (u64, u64) {
        let start = self.offsets[(from - self.first) as usize];
        let end = self
            .offsets
            .get((to - self.first + 1) as usize)
            .copied()
            .unwrap_or(self.end);
        (start, end)
    }
}

/// The last entries appended, decoded: consecutive, ending at [`Wal::last`] whenever there are
/// any, each with the size of its record.
struct Recent {
    entries: VecDeque<(Entry, usize)>,
    bytes: usize,
    /// At most this many bytes of records are held.
    limit: usize,
}

impl Recent {
    fn new(limit: usize) -> Self {
        Recent {
            entries: VecDeque::new(),
            bytes: 0,
            limit,
        }
    }

    fn first_index(&self) -> Option<u64> {
        self.entries.front().map(|(e, _)| e.log_id.index)
    }

    /// Adds entries that follow the last one held (or forgets those held, if they do not),
    /// then forgets the oldest ones past the limit.
    fn extend(&mut self, appended: impl IntoIterator<Item = (Entry, usize)>) {
        for (entry, size) in appended {
            let follows = self
                .entries
                .back()
                .is_none_or(|(last, _)| last.log_id.index + 1 == entry.log_id.index);
            if !follows {
                self.clear();
            }
            self.bytes += size;
            self.entries.push_back((entry, size));
        }
        while self.bytes > self.limit {
            let Some((_, size)) = self.entries.pop_front() else {
                break;
            };
            self.bytes -= size;
        }
    }

    /// Forgets the entries at or after `index`.
    fn truncate(&mut self, index: u64) {
        while let Some((entry, size)) = self.entries.back() {
            if entry.log_id.index < index {
                break;
            }
            self.bytes -= size;
            self.entries.pop_back();
        }
    }

    /// Forgets the entries at or below `index`.
    fn purge(&mut self, index: u64) {
        while let Some((entry, size)) = self.entries.front() {
            if entry.log_id.index > index {
                break;
            }
            self.bytes -= size;
            self.entries.pop_front();
        }
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    /// Copies of the entries `from..=to` held (the caller asks only for held ones).
    fn read(&self, from: u64, to: u64) -> impl Iterator<Item = Entry> + '_ {
        let first = self.first_index().unwrap_or(from);
        self.entries
            .iter()
            .skip(from.saturating_sub(first) as usize)
            .take(to.saturating_sub(from).saturating_add(1) as usize)
            .map(|(e, _)| e.clone())
    }
}

/// What the log's bookkeeping in sled (see [`crate::log_store`]) records about its entries,
/// which opening the files needs.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Recorded {
    /// Entries at or below this index are purged: not needed, their files removable.
    pub(crate) purged: Option<u64>,
    /// Entries at or below this index are known to be committed: a torn tail cut off at open
    /// must not take one of them (above `purged`) with it.
    pub(crate) committed: Option<u64>,
}

/// The segment files of one log directory.
pub(crate) struct Wal {
    dir: PathBuf,
    /// By first index.
    segments: BTreeMap<u64, Segment>,
    /// Entries at or below this index are purged: never returned, their files removable.
    purged: Option<u64>,
    /// The last entry's log id; `None` when the files hold no unpurged entry.
    last: Option<LogId<NodeId>>,
    /// Size past which the next append starts a new segment.
    segment_bytes: u64,
    recent: Recent,
}

impl Wal {
    /// Opens (creating if needed) the log directory `dir`, dropping segments wholly at or below
    /// `recorded.purged` and cutting off a torn tail of the last segment (see the module doc).
    pub(crate) fn open(dir: &Path, recorded: Recorded) -> Result<Wal, StoreError> {
        Wal::open_with_limits(dir, recorded, SEGMENT_BYTES, RECENT_BYTES)
    }

    fn open_with_limits(
        dir: &Path,
        recorded: Recorded,
        segment_bytes: u64,
        recent_bytes: usize,
    ) -> Result<Wal, StoreError> {
        let purged = recorded.purged;
        fs::create_dir_all(dir).map_err(|e| StoreError::io("create log directory", dir, e))?;
        let mut names = Vec::new();
        for item in fs::read_dir(dir).map_err(|e| StoreError::io("list", dir, e))? {
            let item = item.map_err(|e| StoreError::io("list", dir, e))?;
            let name = item.file_name();
            let Some(first) = name
                .to_str()
                .and_then(|n| n.strip_suffix(SUFFIX))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            names.push((first, item.path()));
        }
        names.sort();

        let mut wal = Wal {
            dir: dir.to_path_buf(),
            segments: BTreeMap::new(),
            purged,
            last: None,
            segment_bytes,
            recent: Recent::new(recent_bytes),
        };
        let count = names.len();
        for (n, (first, path)) in names.into_iter().enumerate() {
            let Loaded {
                mut segment,
                last,
                damage,
            } = load_segment(first, &path)?;
            if let Some(damage) = damage {
                if n + 1 != count {
                    return Err(damage.refusal(&path, "only the last segment may be torn"));
                }
                cut_torn_tail(&mut segment, &damage, recorded)?;
            }
            // Empty (created just before a crash) or wholly purged: nothing in it is needed.
            if segment
                .last()
                .is_none_or(|l| purged.is_some_and(|p| l <= p))
            {
                remove_file(&segment.path)?;
                continue;
            }
            if let Some(prev) = wal.segments.values().next_back() {
                let expected = prev.next_index();
                if first != expected {
                    return Err(StoreError::corrupt(
                        "raft log",
                        format!(
                            "segment {} starts at index {first}, but the one before it ends \
                             before index {expected}",
                            path.display()
                        ),
                    ));
                }
            }
            if last.is_some() {
                wal.last = last;
            }
            wal.segments.insert(first, segment);
        }
        Ok(wal)
    }

    /// The index at or below which entries are purged.
    pub(crate) fn purged(&self) -> Option<u64> {
        self.purged
    }

    /// The last entry's log id, `None` if no unpurged entry is left.
    pub(crate) fn last(&self) -> Option<LogId<NodeId>> {
        self.last
    }

    /// Writes `entries` (consecutive indexes) after the last entry, replacing any entries at or
    /// after the first one's index. Returns the segment file written to, which the caller must
    /// sync before counting the entries as durable.
    pub(crate) fn append(&mut self, entries: Vec<Entry>) -> Result<Option<Arc<File>>, StoreError> {
        let Some(first) = entries.first() else {
            return Ok(None);
        };
        let first_index = first.log_id.index;
        if self.last.is_some_and(|l| first_index <= l.index) {
            // openraft 0.9 never gets here (it truncates a conflicting tail with `truncate`
            // before appending, and does not append entries the log already holds); were it
            // to, the old tail is gone from disk before the new entries are written.
            self.truncate(first_index)?;
        }
        let mut records = Vec::new();
        let mut starts = Vec::with_capacity(entries.len());
        for (i, entry) in entries.iter().enumerate() {
            if entry.log_id.index != first_index + i as u64 {
                return Err(StoreError::corrupt(
                    "raft log append",
                    format!(
                        "entry {} follows index {} (indexes must be consecutive)",
                        entry.log_id.index,
                        first_index + i as u64 - 1
                    ),
                ));
            }
            starts.push(records.len() as u64);
            encode_record(&mut records, entry)?;
        }
        let segment = match self.segments.values_mut().next_back() {
            Some(s) if s.next_index() == first_index && s.end < self.segment_bytes => s,
            _ => self.new_segment(first_index)?,
        };
        segment
            .file
            .write_all_at(&records, segment.end)
            .map_err(|e| StoreError::io("write", &segment.path, e))?;
        let base = segment.end;
        segment.offsets.extend(starts.iter().map(|s| base + s));
        segment.end += records.len() as u64;
        let file = segment.file.clone();
        self.last = entries.last().map(|e| e.log_id);
        let ends = starts.iter().skip(1).copied().chain([records.len() as u64]);
        let sizes = starts
            .iter()
            .zip(ends)
            .map(|(start, end)| (end - start) as usize);
        self.recent.extend(entries.into_iter().zip(sizes));
        Ok(Some(file))
    }

    /// Removes every entry at or after `index`, durably. The segments starting at or after it
    /// go newest first, the directory synced after each removal, and only then is the segment
    /// holding `index` cut short and synced: whatever a crash interrupts, the segments left
    /// follow one another (a gap between two would make the next open refuse the log), and the
    /// log is the old one cut somewhere at or after `index`.
    pub(crate) fn truncate(&mut self, index: u64) -> Result<(), StoreError> {
        self.recent.truncate(index);
        let doomed: Vec<u64> = self.segments.range(index..).map(|(&k, _)| k).collect();
        for first in doomed.into_iter().rev() {
            if let Some(segment) = self.segments.remove(&first) {
                remove_file(&segment.path)?;
                sync_dir(&self.dir)?;
            }
        }
        if let Some(segment) = self.segments.values_mut().next_back() {
            if segment.last().is_some_and(|l| l >= index) {
                segment.cut((index - segment.first) as usize)?;
            }
        }
        self.last = match index.checked_sub(1) {
            Some(prev) if self.purged.is_none_or(|p| prev > p) => {
                self.read(prev, prev)?.pop().map(|e| e.log_id)
            }
            _ => None,
        };
        // On disk: no entry at or after `index`.
        Ok(())
    }

    /// Forgets every entry at or below `index` and removes the segments wholly below it. The
    /// caller has already recorded `index` as purged, durably.
    pub(crate) fn purge(&mut self, index: u64) -> Result<(), StoreError> {
        self.purged = Some(self.purged.map_or(index, |p| p.max(index)));
        self.recent.purge(index);
        let doomed: Vec<u64> = self
            .segments
            .values()
            .filter(|s| s.last().is_none_or(|l| l <= index))
            .map(|s| s.first)
            .collect();
        for first in doomed {
            if let Some(segment) = self.segments.remove(&first) {
                remove_file(&segment.path)?;
            }
        }
        if self.last.is_some_and(|l| l.index <= index) {
            self.last = None;
        }
        // Not synced: a removal the crash undoes leaves a segment wholly at or below the purged
        // index, which the next open removes again.
        Ok(())
    }

    /// The entries from `from` to `to` inclusive that the log still holds (none at or below
    /// the purged index), in order.
    pub(crate) fn read(&self, from: u64, to: u64) -> Result<Vec<Entry>, StoreError> {
        let from = from.max(self.purged.map_or(0, |p| p + 1));
        let to = match self.last {
            Some(last) => to.min(last.index),
            None => return Ok(Vec::new()),
        };
        let mut entries = Vec::new();
        if from > to {
            return Ok(entries);
        }
        // The part held in memory, if any, comes from there; only what precedes it from disk.
        let held = self.recent.first_index().filter(|&first| first <= to);
        let disk_to = match held {
            Some(first) if first <= from => {
                entries.extend(self.recent.read(from, to));
                return Ok(entries);
            }
            Some(first) => first - 1,
            None => to,
        };
        self.read_files(from, disk_to, &mut entries)?;
        if let Some(first) = held {
            entries.extend(self.recent.read(first, to));
        }
        Ok(entries)
    }

    /// Reads the entries `from..=to` (all held by the files) into `entries`.
    fn read_files(&self, from: u64, to: u64, entries: &mut Vec<Entry>) -> Result<(), StoreError> {
        let start_key = self
            .segments
            .range(..=from)
            .next_back()
            .map_or(from, |(&k, _)| k);
        for segment in self.segments.range(start_key..=to).map(|(_, s)| s) {
            let Some(seg_last) = segment.last() else {
                continue;
            };
            let lo = from.max(segment.first);
            let hi = to.min(seg_last);
            if lo > hi {
                continue;
            }
            let (start, end) = segment.byte_range(lo, hi);
            let mut bytes = vec![0; (end - start) as usize];
            segment
                .file
                .read_exact_at(&mut bytes, start)
                .map_err(|e| StoreError::io("read", &segment.path, e))?;
            let mut at = 0;
            while at < bytes.len() {
                match decode_record(&bytes[at..])? {
                    Some((entry, used)) => {
                        entries.push(entry);
                        at += used;
                    }
                    None => {
                        return Err(StoreError::corrupt(
                            "raft log",
                            format!("a record in {} is cut short", segment.path.display()),
                        ))
                    }
                }
            }
        }
        Ok(())
    }

    /// Starts a new, empty segment for entries from `first`: fdatasyncs the last segment, then
    /// creates the new one and fsyncs the directory.
    fn new_segment(&mut self, first: u64) -> Result<&mut Segment, StoreError> {
        // As etcd's WAL `cut()`: from now on the last segment is no longer last, and open
        // refuses damage anywhere but in the last segment, so its records must be on disk
        // before a segment after it can be. (With openraft 0.9 the flusher has already synced
        // them, as each append waits for its sync; this makes it hold whatever the caller does.)
        if let Some(last) = self.segments.values().next_back() {
            last.sync()?;
        }
        let path = self.dir.join(format!("{first:020}{SUFFIX}"));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(|e| StoreError::io("create", &path, e))?;
        sync_dir(&self.dir)?;
        // On disk: every record of the segments before this one, and the new segment's name;
        // its records are synced by the caller after each append.
        let segment = Segment {
            path,
            file: Arc::new(file),
            first,
            offsets: Vec::new(),
            end: 0,
        };
        Ok(self.segments.entry(first).or_insert(segment))
    }
}

/// The first record of a segment file that does not check out: where it starts, how many
/// bytes from there to the end of the file, and what is wrong with it.
struct Damage {
    offset: u64,
    bytes: u64,
    reason: String,
}

impl Damage {
    /// The error that refuses to open the log because of this damage in `path`, saying `why`
    /// it is not cut off as a torn tail.
    fn refusal(&self, path: &Path, why: impl std::fmt::Display) -> StoreError {
        StoreError::corrupt(
            "raft log",
            format!(
                "{} at byte {}: {}; {why}",
                path.display(),
                self.offset,
                self.reason
            ),
        )
    }
}

/// A segment file as opening reads it.
struct Loaded {
    /// The segment as far as its records check out.
    segment: Segment,
    /// The log id of its last entry there.
    last: Option<LogId<NodeId>>,
    /// What stopped the reading before the end of the file, if anything did: a record cut
    /// short by the end of the file, failing its CRC or its decoding, or holding another index
    /// than the one it must.
    damage: Option<Damage>,
}

/// Reads one segment file, checking every record in order.
fn load_segment(first: u64, path: &Path) -> Result<Loaded, StoreError> {
    let bytes = fs::read(path).map_err(|e| StoreError::io("read", path, e))?;
    let mut offsets = Vec::new();
    let mut last = None;
    let mut at = 0usize;
    let damage = loop {
        let rest = &bytes[at..];
        if rest.is_empty() {
            break None;
        }
        let reason = match decode_record(rest) {
            Ok(Some((entry, used))) => {
                let expected = first + offsets.len() as u64;
                if entry.log_id.index == expected {
                    offsets.push(at as u64);
                    last = Some(entry.log_id);
                    at += used;
                    continue;
                }
                format!(
                    "holds entry {} where entry {expected} belongs",
                    entry.log_id.index
                )
            }
            Ok(None) => "the file ends in the middle of a record".to_string(),
            Err(e) => e.to_string(),
        };
        break Some(Damage {
            offset: at as u64,
            bytes: rest.len() as u64,
            reason,
        });
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| StoreError::io("open", path, e))?;
    let segment = Segment {
        path: path.to_path_buf(),
        file: Arc::new(file),
        first,
        offsets,
        end: at as u64,
    };
    Ok(Loaded {
        segment,
        last,
        damage,
    })
}

/// Cuts the last segment durably where `damage` starts: everything from there on is a torn
/// tail, the appends a power loss interrupted, none of which was acknowledged (openraft counts
/// an append only after its sync; the segments before this one were synced before it was
/// created). Refuses instead if the cut would take an entry `recorded` as committed and not
/// purged: those were synced, so damage to them is the disk's corruption, not a torn write.
fn cut_torn_tail(
    segment: &mut Segment,
    damage: &Damage,
    recorded: Recorded,
) -> Result<(), StoreError> {
    // The cut takes the entries from the segment's next index on, as many as the damaged
    // bytes held; the first of them that is needed is this one.
    let first_needed = segment
        .next_index()
        .max(recorded.purged.map_or(0, |p| p + 1));
    if let Some(committed) = recorded.committed.filter(|&c| first_needed <= c) {
        return Err(damage.refusal(
            &segment.path,
            format!("cutting it off would lose committed entries {first_needed} to {committed}"),
        ));
    }
    tracing::warn!(
        segment = %segment.path.display(),
        offset = damage.offset,
        bytes = damage.bytes,
        reason = %damage.reason,
        "cutting off a torn tail of the raft log (appends the last crash interrupted, never \
         acknowledged)"
    );
    segment.cut(segment.offsets.len())
}

fn encode_record(out: &mut Vec<u8>, entry: &Entry) -> Result<(), StoreError> {
    let payload = codec::encode("log entry", entry)?;
    let len = u32::try_from(payload.len()).map_err(|_| {
        StoreError::corrupt(
            "log entry",
            format!("{} bytes is too large for one record", payload.len()),
        )
    })?;
    let len_bytes = len.to_le_bytes();
    let mut crc = crc32fast::Hasher::new();
    crc.update(&len_bytes);
    crc.update(&payload);
    out.extend_from_slice(&len_bytes);
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(())
}

/// Decodes the record at the start of `bytes`: the entry and the bytes it took, `Ok(None)` if
/// `bytes` ends before the record does, an error if the record is damaged.
fn decode_record(bytes: &[u8]) -> Result<Option<(Entry, usize)>, StoreError> {
    let Some(header) = bytes.get(..HEADER_BYTES) else {
        return Ok(None);
    };
    let len_bytes: [u8; 4] = header[..4].try_into().expect("4 bytes");
    let crc_bytes: [u8; 4] = header[4..].try_into().expect("4 bytes");
    let len = u32::from_le_bytes(len_bytes) as usize;
    let Some(payload) = bytes.get(HEADER_BYTES..HEADER_BYTES + len) else {
        return Ok(None);
    };
    let mut crc = crc32fast::Hasher::new();
    crc.update(&len_bytes);
    crc.update(payload);
    if crc.finalize() != u32::from_le_bytes(crc_bytes) {
        return Err(StoreError::corrupt(
            "raft log",
            "a record fails its checksum",
        ));
    }
    let entry: Entry = codec::decode("log entry", payload)?;
    Ok(Some((entry, HEADER_BYTES + len)))
}

fn remove_file(path: &Path) -> Result<(), StoreError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StoreError::io("remove", path, e)),
    }
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io("fsync", dir, e))?;
    #[cfg(test)]
    tests::record_sync(dir);
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;

    thread_local! {
        /// The files and directories this thread's logs synced, in order.
        static SYNCED: RefCell<Vec<PathBuf>> = const { RefCell::new(Vec::new()) };
    }

    /// Notes a sync made by a log on this thread (each test runs on a thread of its own).
    pub(super) fn record_sync(path: &Path) {
        SYNCED.with(|s| s.borrow_mut().push(path.to_path_buf()));
    }

    /// The syncs made since the last call, as names relative to `dir` (`.` for `dir` itself).
    fn take_syncs(dir: &Path) -> Vec<String> {
        SYNCED
            .with(|s| std::mem::take(&mut *s.borrow_mut()))
            .iter()
            .map(|p| match p.strip_prefix(dir) {
                Ok(rel) if rel.as_os_str().is_empty() => ".".to_string(),
                Ok(rel) => rel.display().to_string(),
                Err(_) => p.display().to_string(),
            })
            .collect()
    }

    fn purged_to(index: u64) -> Recorded {
        Recorded {
            purged: Some(index),
            committed: Some(index),
        }
    }

    fn segment_name(first: u64) -> String {
        format!("{first:020}{SUFFIX}")
    }

    fn entry(term: u64, index: u64) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
            payload: EntryPayload::Blank,
        }
    }

    fn entries(term: u64, indexes: std::ops::RangeInclusive<u64>) -> Vec<Entry> {
        indexes.map(|i| entry(term, i)).collect()
    }

    /// The size of a blank entry's record (with small term and index).
    fn record_bytes() -> u64 {
        let mut bytes = Vec::new();
        encode_record(&mut bytes, &entry(1, 1)).unwrap();
        bytes.len() as u64
    }

    /// A log whose segments are full at 3 blank records: appended two entries at a time, each
    /// segment holds four.
    fn small_segment_log(dir: &Path) -> Wal {
        Wal::open_with_limits(dir, Recorded::default(), 3 * record_bytes(), RECENT_BYTES).unwrap()
    }

    /// Appends entries 1..=`last` of term 1, two at a time.
    fn append_in_pairs(wal: &mut Wal, last: u64) {
        for first in (1..last).step_by(2) {
            wal.append(entries(1, first..=first + 1)).unwrap();
        }
    }

    fn indexes(wal: &Wal, from: u64, to: u64) -> Vec<(u64, u64)> {
        wal.read(from, to)
            .unwrap()
            .iter()
            .map(|e| (e.log_id.leader_id.term, e.log_id.index))
            .collect()
    }

    fn segment_files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn entries_survive_reopening_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        {
            // Small segments: every append of two entries fills one.
            let mut wal =
                Wal::open_with_limits(dir.path(), Recorded::default(), 20, RECENT_BYTES).unwrap();
            append_in_pairs(&mut wal, 10);
            assert_eq!(wal.last().map(|l| l.index), Some(10));
        }
        assert!(
            segment_files(dir.path()).len() >= 3,
            "{:?}",
            segment_files(dir.path())
        );
        let wal = Wal::open(dir.path(), Recorded::default()).unwrap();
        assert_eq!(wal.last().map(|l| l.index), Some(10));
        assert_eq!(indexes(&wal, 0, u64::MAX).len(), 10);
        assert_eq!(indexes(&wal, 4, 7), vec![(1, 4), (1, 5), (1, 6), (1, 7)]);
    }

    #[test]
    fn a_torn_last_record_is_cut_off_and_the_log_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = {
            let mut wal = Wal::open(dir.path(), Recorded::default()).unwrap();
            wal.append(entries(1, 1..=3)).unwrap();
            dir.path().join(&segment_files(dir.path())[0])
        };
        let len = fs::metadata(&path).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len - 3)
            .unwrap();
        let mut wal = Wal::open(dir.path(), Recorded::default()).unwrap();
        assert_eq!(indexes(&wal, 1, 10), vec![(1, 1), (1, 2)]);
        wal.append(entries(2, 3..=4)).unwrap();
        drop(wal);
        let wal = Wal::open(dir.path(), Recorded::default()).unwrap();
        assert_eq!(indexes(&wal, 1, 10), vec![(1, 1), (1, 2), (2, 3), (2, 4)]);
    }

    /// Overwrites the record of entry `index` with zeros, as an unwritten extent reads.
    fn zero_record(wal: &Wal, index: u64) {
        let (_, segment) = wal.segments.range(..=index).next_back().unwrap();
        let (start, end) = segment.byte_range(index, index);
        let zeros = vec![0; (end - start) as usize];
        segment.file.write_all_at(&zeros, start).unwrap();
    }

    /// The detail of the corruption error that refused to open a log.
    fn refusal(opened: Result<Wal, StoreError>) -> String {
        match opened {
            Err(StoreError::Corrupt { what, detail }) => {
                assert_eq!(what, "raft log");
                detail
            }
            Err(e) => panic!("expected a corruption error, got {e}"),
            Ok(_) => panic!("expected the damaged log to be refused, but it opened"),
        }
    }

    /// Entries 1..=6 in one segment, the record of entry 4 zeroed; returns the segment's path
    /// and where that record starts.
    fn six_entries_the_fourth_zeroed(dir: &Path) -> (PathBuf, u64) {
        let mut wal = Wal::open(dir, Recorded::default()).unwrap();
        wal.append(entries(1, 1..=3)).unwrap();
        wal.append(entries(1, 4..=6)).unwrap();
        zero_record(&wal, 4);
        let segment = &wal.segments[&1];
        (segment.path.clone(), segment.offsets[3])
    }

    /// A power loss during an append's sync can persist its bytes out of order: here the
    /// record of entry 4 reads as zeros (as an unwritten extent on XFS does) while entries 5
    /// and 6 after it made it. None of the three was acknowledged, so the log ends at 3, cut
    /// there durably; entries up to 3 committed do not stand in the way.
    #[test]
    fn zeros_in_the_middle_of_the_last_segment_are_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let (path, cut_at) = six_entries_the_fourth_zeroed(dir.path());
        take_syncs(dir.path());
        let committed_3 = Recorded {
            purged: None,
            committed: Some(3),
        };
        let mut wal = Wal::open(dir.path(), committed_3).unwrap();
        assert_eq!(indexes(&wal, 0, u64::MAX), vec![(1, 1), (1, 2), (1, 3)]);
        assert_eq!(fs::metadata(&path).unwrap().len(), cut_at);
        assert_eq!(take_syncs(dir.path()), vec![segment_name(1)]);

        tracing::info!("--- the log goes on after the cut");
        wal.append(entries(2, 4..=4)).unwrap();
        drop(wal);
        let wal = Wal::open(dir.path(), committed_3).unwrap();
        assert_eq!(
            indexes(&wal, 0, u64::MAX),
            vec![(1, 1), (1, 2), (1, 3), (2, 4)]
        );
    }

    /// Committed entries were synced before they were recorded as committed: damage to one is
    /// the disk's corruption, and cutting it off would lose it. The log is refused, untouched.
    #[test]
    fn damage_to_a_committed_entry_is_refused_not_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = six_entries_the_fourth_zeroed(dir.path());
        let len = fs::metadata(&path).unwrap().len();
        let committed_4 = Recorded {
            purged: None,
            committed: Some(4),
        };
        let detail = refusal(Wal::open(dir.path(), committed_4));
        assert!(
            detail.contains("would lose committed entries 4 to 4"),
            "{detail}"
        );
        assert_eq!(fs::metadata(&path).unwrap().len(), len, "the file was cut");
    }

    /// A segment is synced before the next one is created, so only the last can be torn:
    /// damage in any other is refused, even with nothing recorded as committed.
    #[test]
    fn damage_in_a_segment_before_the_last_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut wal = small_segment_log(dir.path());
            append_in_pairs(&mut wal, 10);
            assert_eq!(wal.segments.len(), 3);
            zero_record(&wal, 6);
        }
        let detail = refusal(Wal::open(dir.path(), Recorded::default()));
        assert!(detail.contains(&segment_name(5)), "{detail}");
        assert!(
            detail.contains("only the last segment may be torn"),
            "{detail}"
        );
    }

    #[test]
    fn truncate_removes_the_tail_durably_and_appends_replace_it() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut wal =
                Wal::open_with_limits(dir.path(), Recorded::default(), 20, RECENT_BYTES).unwrap();
            wal.append(entries(1, 1..=2)).unwrap();
            wal.append(entries(1, 3..=4)).unwrap();
            wal.append(entries(1, 5..=6)).unwrap();
            wal.truncate(4).unwrap();
            assert_eq!(wal.last().map(|l| l.index), Some(3));
            // An append over existing entries replaces them too.
            wal.append(entries(2, 4..=5)).unwrap();
            wal.append(entries(3, 5..=5)).unwrap();
        }
        let wal = Wal::open(dir.path(), Recorded::default()).unwrap();
        assert_eq!(
            indexes(&wal, 1, 10),
            vec![(1, 1), (1, 2), (1, 3), (2, 4), (3, 5)]
        );
    }

    /// A segment is synced before the next one is created: open refuses damage anywhere but
    /// in the last segment, so a segment must never be followed by another while its own
    /// records may still be lost.
    #[test]
    fn a_full_segment_is_synced_before_the_next_one_starts() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = small_segment_log(dir.path());
        append_in_pairs(&mut wal, 4);
        assert_eq!(segment_files(dir.path()), vec![segment_name(1)]);
        take_syncs(dir.path());
        // Segment 1 is full: this append starts segment 5.
        wal.append(entries(1, 5..=6)).unwrap();
        assert_eq!(
            segment_files(dir.path()),
            vec![segment_name(1), segment_name(5)]
        );
        assert_eq!(
            take_syncs(dir.path()),
            vec![segment_name(1), ".".to_string()],
            "expected segment 1 synced, then the directory holding the new segment"
        );
    }

    /// An append that starts at or below the last entry replaces the tail as durably as
    /// `truncate` does: were the old tail's removal left to chance, a crash could bring back
    /// old entries right after the new ones (here segment 9's, after the new entry 8).
    #[test]
    fn an_append_over_the_tail_removes_it_durably() {
        let one_segment_log: fn(&Path) -> Wal = |dir| Wal::open(dir, Recorded::default()).unwrap();
        // The small segments hold 1..=4, 5..=8 and 9..=10.
        for (case, open, cut, removed) in [
            ("one segment", one_segment_log, 1, vec![]),
            ("three segments", small_segment_log, 5, vec![9]),
        ] {
            tracing::info!("--- {case}");
            let dir = tempfile::tempdir().unwrap();
            {
                let mut wal = open(dir.path());
                append_in_pairs(&mut wal, 10);
                for first in &removed {
                    assert!(segment_files(dir.path()).contains(&segment_name(*first)));
                }
                take_syncs(dir.path());
                wal.append(entries(2, 6..=8)).unwrap();
                let syncs = take_syncs(dir.path());
                assert!(
                    syncs.contains(&segment_name(cut)),
                    "{case}: segment {cut}, cut short, was not synced: {syncs:?}"
                );
                if !removed.is_empty() {
                    assert!(
                        syncs.contains(&".".to_string()),
                        "{case}: the directory was not synced after removing {removed:?}: {syncs:?}"
                    );
                }
            }
            let wal = Wal::open(dir.path(), Recorded::default()).unwrap();
            let mut expected: Vec<(u64, u64)> = (1..=5).map(|i| (1, i)).collect();
            expected.extend((6..=8).map(|i| (2, i)));
            assert_eq!(indexes(&wal, 0, u64::MAX), expected, "{case}");
            assert_eq!(wal.last().map(|l| l.index), Some(8), "{case}");
            for first in &removed {
                assert!(!segment_files(dir.path()).contains(&segment_name(*first)));
            }
        }
    }

    #[test]
    fn purge_hides_entries_and_drops_whole_segments() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut wal =
                Wal::open_with_limits(dir.path(), Recorded::default(), 20, RECENT_BYTES).unwrap();
            append_in_pairs(&mut wal, 8);
            wal.purge(3).unwrap();
            assert_eq!(indexes(&wal, 1, 10).first(), Some(&(1, 4)));
        }
        // Entries 1 and 2 had a segment of their own; 3 shares one with 4.
        assert!(!segment_files(dir.path()).contains(&segment_name(1)));
        let wal = Wal::open(dir.path(), purged_to(3)).unwrap();
        assert_eq!(indexes(&wal, 0, 100).first(), Some(&(1, 4)));
        assert_eq!(wal.last().map(|l| l.index), Some(8));
    }

    #[test]
    fn an_append_past_a_purge_beyond_the_end_starts_afresh() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut wal = Wal::open(dir.path(), Recorded::default()).unwrap();
            wal.append(entries(1, 1..=3)).unwrap();
            // As after installing a snapshot of index 100.
            wal.purge(100).unwrap();
            assert_eq!(wal.last(), None);
            assert!(indexes(&wal, 0, u64::MAX).is_empty());
            wal.append(entries(4, 101..=102)).unwrap();
        }
        let wal = Wal::open(dir.path(), purged_to(100)).unwrap();
        assert_eq!(indexes(&wal, 0, u64::MAX), vec![(4, 101), (4, 102)]);
    }

    /// Whatever the entries kept in memory are, every read returns what the files hold: a log
    /// that holds the last few entries in memory and one that holds none go through the same
    /// appends (some replacing a tail partly in memory, partly not), truncations and purges,
    /// and answer every read alike.
    #[test]
    fn reads_from_memory_match_the_files() {
        let (small, none) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        // A blank entry's record is some 30 bytes: 100 bytes hold the last three.
        let mut small = Wal::open_with_limits(small.path(), Recorded::default(), 200, 100).unwrap();
        let mut none = Wal::open_with_limits(none.path(), Recorded::default(), 200, 0).unwrap();
        enum Step {
            Append(u64, std::ops::RangeInclusive<u64>),
            Truncate(u64),
            Purge(u64),
        }
        let run = |wal: &mut Wal, step: &Step| match step {
            Step::Append(term, indexes) => {
                drop(wal.append(entries(*term, indexes.clone())).unwrap())
            }
            Step::Truncate(index) => wal.truncate(*index).unwrap(),
            Step::Purge(index) => wal.purge(*index).unwrap(),
        };
        let steps = [
            ("append 1..=8", Step::Append(1, 1..=8)),
            ("append 9..=9", Step::Append(1, 9..=9)),
            ("replace from 8", Step::Append(2, 8..=10)),
            ("replace from 4", Step::Append(3, 4..=5)),
            ("append 6..=12", Step::Append(3, 6..=12)),
            ("truncate at 11", Step::Truncate(11)),
            ("purge to 9", Step::Purge(9)),
            ("append 11..=11", Step::Append(4, 11..=11)),
            ("purge past the end", Step::Purge(50)),
            ("append 51..=54", Step::Append(5, 51..=54)),
        ];
        for (name, step) in &steps {
            run(&mut small, step);
            run(&mut none, step);
            assert!(none.recent.entries.is_empty());
            assert_eq!(small.last(), none.last(), "after {name}");
            for from in 0..=55 {
                for to in [from, from + 1, from + 3, u64::MAX] {
                    assert_eq!(
                        indexes(&small, from, to),
                        indexes(&none, from, to),
                        "after {name}: read {from}..={to}"
                    );
                }
            }
        }
        assert!(!small.recent.entries.is_empty(), "the memory held nothing");
    }
}
