//! Tests of the segment files: appends, reads from memory and from disk, truncation, purge,
//! rotation, and what opening makes of damaged files.

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
    let (path, end) = {
        let mut wal = Wal::open(dir.path(), Recorded::default()).unwrap();
        wal.append(entries(1, 1..=3)).unwrap();
        (wal.segments[&1].path.clone(), wal.segments[&1].end)
    };
    OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(end - 3)
        .unwrap();
    let mut wal = Wal::open(dir.path(), Recorded::default()).unwrap();
    assert_eq!(indexes(&wal, 1, 10), vec![(1, 1), (1, 2)]);
    wal.append(entries(2, 3..=4)).unwrap();
    drop(wal);
    let wal = Wal::open(dir.path(), Recorded::default()).unwrap();
    assert_eq!(indexes(&wal, 1, 10), vec![(1, 1), (1, 2), (2, 3), (2, 4)]);
}

/// An append that reaches past the end of the file writes zeros after its records, and the
/// appends after it write over them without changing the file's length (so that their
/// fdatasync has no new length to commit). Opening takes the zeros for the end of the records,
/// and leaves them.
#[test]
fn appends_write_over_zeros_written_ahead_and_opening_keeps_them() {
    let dir = tempfile::tempdir().unwrap();
    let length = |wal: &Wal| fs::metadata(&wal.segments[&1].path).unwrap().len();
    let mut wal = Wal::open(dir.path(), Recorded::default()).unwrap();
    wal.append(entries(1, 1..=3)).unwrap();
    let ahead = length(&wal);
    assert_eq!(ahead, 3 * record_bytes() + ZEROED_AHEAD_BYTES as u64);
    for index in 4..=20 {
        wal.append(entries(1, index..=index)).unwrap();
    }
    assert_eq!(
        length(&wal),
        ahead,
        "appends within the zeros grew the file"
    );
    drop(wal);

    let mut wal = Wal::open(dir.path(), Recorded::default()).unwrap();
    assert_eq!(indexes(&wal, 0, u64::MAX).len(), 20);
    assert_eq!(length(&wal), ahead, "opening cut the zeros off");
    wal.append(entries(2, 21..=22)).unwrap();
    assert_eq!(length(&wal), ahead);
    drop(wal);
    let wal = Wal::open(dir.path(), Recorded::default()).unwrap();
    assert_eq!(indexes(&wal, 20, 22), vec![(1, 20), (2, 21), (2, 22)]);
}

/// Zeros from a record's start to the end of the last segment, where sled records entries as
/// committed, are the disk's corruption (committed entries were synced), not room written
/// ahead: the log is refused. Below the committed index they are the end of the log.
#[test]
fn zeros_where_committed_entries_must_be_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = {
        let mut wal = Wal::open(dir.path(), Recorded::default()).unwrap();
        wal.append(entries(1, 1..=6)).unwrap();
        let segment = &wal.segments[&1];
        let from = segment.offsets[3];
        let zeros = vec![0; (segment.allocated - from) as usize];
        segment.file.write_all_at(&zeros, from).unwrap();
        segment.path.clone()
    };
    let len = fs::metadata(&path).unwrap().len();
    let committed = |index| Recorded {
        purged: None,
        committed: Some(index),
    };

    let detail = refusal(Wal::open(dir.path(), committed(5)));
    assert!(
        detail.contains("would lose committed entries 4 to 5"),
        "{detail}"
    );
    let wal = Wal::open(dir.path(), committed(3)).unwrap();
    assert_eq!(indexes(&wal, 0, u64::MAX), vec![(1, 1), (1, 2), (1, 3)]);
    assert_eq!(fs::metadata(&path).unwrap().len(), len);
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
        Step::Append(term, indexes) => drop(wal.append(entries(*term, indexes.clone())).unwrap()),
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

#[test]
fn a_read_bounded_in_bytes_stops_before_the_budget_but_returns_one_entry() {
    let (small, none) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let record = record_bytes() as usize;
    // Entries 1..=10 across segments of three records; the last three also in memory.
    let mut small = Wal::open_with_limits(
        small.path(),
        Recorded::default(),
        3 * record as u64,
        3 * record,
    )
    .unwrap();
    let mut none =
        Wal::open_with_limits(none.path(), Recorded::default(), 3 * record as u64, 0).unwrap();
    for wal in [&mut small, &mut none] {
        append_in_pairs(wal, 10);
        wal.purge(1).unwrap();
    }
    assert!(!small.recent.entries.is_empty(), "the memory holds nothing");
    for wal in [&small, &none] {
        // Within budget: every whole record that fits.
        assert_eq!(wal.end_within(2, 10, 3 * record), 4);
        assert_eq!(wal.end_within(2, 10, 3 * record + record / 2), 4);
        assert_eq!(
            wal.end_within(7, 10, 2 * record),
            8,
            "across memory and files"
        );
        assert_eq!(wal.end_within(2, 10, 100 * record), 10, "all of them");
        // One record larger than the budget still goes alone.
        assert_eq!(wal.end_within(5, 10, record - 1), 5);
        assert_eq!(wal.end_within(5, 10, 0), 5);
        // Entries the log does not hold cost nothing: the purged one and those past the end.
        assert_eq!(wal.end_within(1, 3, record), 2);
        assert_eq!(wal.end_within(9, 20, 2 * record), 20);
    }
}

#[test]
fn a_segment_with_no_indexes_left_for_its_entries_is_damaged_there() {
    let mut bytes = Vec::new();
    for index in [u64::MAX - 1, u64::MAX] {
        encode_record(&mut bytes, &entry(1, index)).unwrap();
    }
    let scanned = scan_segment(u64::MAX - 1, &bytes);
    assert_eq!(
        scanned.offsets.len(),
        1,
        "the entry with a next index is kept"
    );
    let damage = scanned
        .damage()
        .expect("the last entry leaves no next index");
    assert!(damage.contains("more entries than indexes"), "{damage}");
}
