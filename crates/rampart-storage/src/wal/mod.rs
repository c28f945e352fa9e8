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
//! so that the sync runs off openraft's task and outside the lock on this log. An append that
//! reaches past the file's end also writes [`ZEROED_AHEAD_BYTES`] of zeros after its records
//! (as etcd's WAL preallocates its files): the appends that follow overwrite blocks already on
//! disk, so their fdatasync need not commit a new file length through the file system's journal
//! as well, which on ext4 takes about twice as long. A new segment starts when the last one
//! passes [`SEGMENT_BYTES`], or when an append does not follow the last entry (after a purge
//! past the end, as when a snapshot is installed); the last segment is fdatasynced before the
//! new one is created (as etcd's WAL `cut()` does, so that only the last segment can be torn),
//! and creating it fsyncs the directory.
//!
//! Opening reads every segment and checks every record, in order. Zeros from some record's
//! start to the end of the file are that segment's end: the room written ahead, which no record
//! has used yet (a record never starts with zeros, as its length is never 0). In the last
//! segment, the log is refused if sled records an entry there as committed, as for a torn tail
//! below. Otherwise, the first record that does not check out (cut short by the end of the
//! file, failing its CRC or its decoding, or holding another index than the one it must)
//! starts a torn tail if it is in the last segment, as in etcd's WAL (`isTornEntry`): the bytes
//! of appends a power loss interrupted during their sync.
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

/// Zeros written after an append's records whenever they reach past the end of the file (see
/// the module docs): a segment's file is at most this much longer than its records.
pub(crate) const ZEROED_AHEAD_BYTES: usize = 1024 * 1024;

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
    /// The file's length: `end`, or more where zeros were written ahead.
    allocated: u64,
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
        self.allocated = end;
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
            match damage {
                // The room written ahead of a segment that was full: it was synced before the
                // next segment was created, so it ends where its records do.
                Some(damage) if damage.zeros && n + 1 != count => {}
                Some(damage) if n + 1 != count => {
                    return Err(damage.refusal(&path, "only the last segment may be torn"));
                }
                Some(damage) => cut_torn_tail(&mut segment, &damage, recorded)?,
                None => {}
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
        let records_len = records.len() as u64;
        let base = segment.end;
        if base + records_len > segment.allocated {
            records.resize(records.len() + ZEROED_AHEAD_BYTES, 0);
        }
        segment
            .file
            .write_all_at(&records, base)
            .map_err(|e| StoreError::io("write", &segment.path, e))?;
        segment.allocated = segment.allocated.max(base + records.len() as u64);
        segment.offsets.extend(starts.iter().map(|s| base + s));
        segment.end += records_len;
        let file = segment.file.clone();
        self.last = entries.last().map(|e| e.log_id);
        let ends = starts.iter().skip(1).copied().chain([records_len]);
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

    /// The last index `end` in `from..=to` such that the records of `from..=end` total at most
    /// `budget` bytes, or `from` itself when its record alone is larger: where a read of
    /// `from..=to` can stop to stay within `budget` and still return an entry. Entries the log
    /// does not hold count as empty (the read will not return them either).
    pub(crate) fn end_within(&self, from: u64, to: u64, budget: usize) -> u64 {
        let mut total = 0usize;
        for index in from..=to {
            total = total.saturating_add(self.record_size(index));
            if total > budget {
                return (index - 1).max(from);
            }
        }
        to
    }

    /// The size of entry `index`'s record (0 if the log does not hold it).
    fn record_size(&self, index: u64) -> usize {
        if self.purged.is_some_and(|purged| index <= purged) {
            return 0;
        }
        if let Some(first) = self.recent.first_index().filter(|&first| first <= index) {
            return self
                .recent
                .entries
                .get((index - first) as usize)
                .map_or(0, |(_, size)| *size);
        }
        match self.segments.range(..=index).next_back() {
            Some((_, segment)) if segment.last().is_some_and(|last| last >= index) => {
                let (start, end) = segment.byte_range(index, index);
                (end - start) as usize
            }
            _ => 0,
        }
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
            allocated: 0,
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
    /// Whether those bytes are all zeros: the room written ahead of the records, not damage
    /// unless records that must be there are missing (see [`cut_torn_tail`]).
    zeros: bool,
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
    let Scanned {
        offsets,
        last,
        end,
        damage,
    } = scan_segment(first, &bytes);
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
        end,
        allocated: bytes.len() as u64,
    };
    Ok(Loaded {
        segment,
        last,
        damage,
    })
}

/// What [`scan_segment`] found in a segment's bytes.
pub(crate) struct Scanned {
    /// Where each record that checks out starts.
    pub(crate) offsets: Vec<u64>,
    /// The log id of the last of them.
    pub(crate) last: Option<LogId<NodeId>>,
    /// Where the last of them ends.
    pub(crate) end: u64,
    /// The first record that does not check out, if any (see [`Loaded::damage`]).
    damage: Option<Damage>,
}

impl Scanned {
    /// Why the scan stopped before the end, if it did (zeros written ahead included).
    pub(crate) fn damage(&self) -> Option<&str> {
        self.damage.as_ref().map(|d| d.reason.as_str())
    }
}

/// Checks the records of a segment's `bytes`, whose first entry must have index `first`, in
/// order, up to the first that does not check out. What opening reads from every segment file.
pub(crate) fn scan_segment(first: u64, bytes: &[u8]) -> Scanned {
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
                // A file named with an index near the end of u64's range has no room for more.
                let Some(expected) = first.checked_add(offsets.len() as u64 + 1).map(|e| e - 1)
                else {
                    break Some(Damage {
                        offset: at as u64,
                        bytes: rest.len() as u64,
                        reason: format!("has more entries than indexes after {first}"),
                        zeros: false,
                    });
                };
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
        let zeros = rest.iter().all(|&b| b == 0);
        break Some(Damage {
            offset: at as u64,
            bytes: rest.len() as u64,
            reason: if zeros {
                "zeros to the end of the file".to_string()
            } else {
                reason
            },
            zeros,
        });
    };
    Scanned {
        offsets,
        last,
        end: at as u64,
        damage,
    }
}

/// Cuts the last segment durably where `damage` starts: everything from there on is a torn
/// tail, the appends a power loss interrupted, none of which was acknowledged (openraft counts
/// an append only after its sync; the segments before this one were synced before it was
/// created). Refuses instead if the cut would take an entry `recorded` as committed and not
/// purged: those were synced, so damage to them is the disk's corruption, not a torn write.
/// Zeros to the end of the file are the room written ahead, left as it is, with no warning
/// (the same check stands: zeros where committed records must be are the disk's corruption).
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
    if damage.zeros {
        return Ok(());
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

pub(crate) fn encode_record(out: &mut Vec<u8>, entry: &Entry) -> Result<(), StoreError> {
    let payload = codec::encode("log entry", entry)?;
    put_record(out, &payload)
}

/// Appends one record holding `payload`: its length, its CRC and the payload.
fn put_record(out: &mut Vec<u8>, payload: &[u8]) -> Result<(), StoreError> {
    let len = u32::try_from(payload.len()).map_err(|_| {
        StoreError::corrupt(
            "log entry",
            format!("{} bytes is too large for one record", payload.len()),
        )
    })?;
    let len_bytes = len.to_le_bytes();
    out.extend_from_slice(&len_bytes);
    out.extend_from_slice(&record_crc(len_bytes, payload).to_le_bytes());
    out.extend_from_slice(payload);
    Ok(())
}

/// The CRC of a record: of its length bytes and its payload.
fn record_crc(len_bytes: [u8; 4], payload: &[u8]) -> u32 {
    let mut crc = crc32fast::Hasher::new();
    crc.update(&len_bytes);
    crc.update(payload);
    crc.finalize()
}

/// `bytes` with the CRC of every whole record made to match (for fuzzing: so that generated
/// records reach the decoding behind the checksum). Stops at the first record cut short.
pub(crate) fn with_checksums_fixed(bytes: &[u8]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    let mut at = 0;
    while let Some(header) = out.get(at..at + HEADER_BYTES) {
        let len_bytes: [u8; 4] = [header[0], header[1], header[2], header[3]];
        let len = u32::from_le_bytes(len_bytes) as usize;
        let start = at + HEADER_BYTES;
        let Some(payload) = out.get(start..start.saturating_add(len)) else {
            break;
        };
        let crc = record_crc(len_bytes, payload);
        out[at + 4..start].copy_from_slice(&crc.to_le_bytes());
        at = start + len;
    }
    out
}

/// Decodes the record at the start of `bytes`: the entry and the bytes it took, `Ok(None)` if
/// `bytes` ends before the record does, an error if the record is damaged.
pub(crate) fn decode_record(bytes: &[u8]) -> Result<Option<(Entry, usize)>, StoreError> {
    let Some(header) = bytes.get(..HEADER_BYTES) else {
        return Ok(None);
    };
    let len_bytes: [u8; 4] = header[..4].try_into().expect("4 bytes");
    let crc_bytes: [u8; 4] = header[4..].try_into().expect("4 bytes");
    let len = u32::from_le_bytes(len_bytes) as usize;
    let Some(payload) = bytes.get(HEADER_BYTES..HEADER_BYTES + len) else {
        return Ok(None);
    };
    if record_crc(len_bytes, payload) != u32::from_le_bytes(crc_bytes) {
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
    crate::files::sync_dir(dir)?;
    #[cfg(test)]
    tests::record_sync(dir);
    Ok(())
}

#[cfg(test)]
mod tests;
