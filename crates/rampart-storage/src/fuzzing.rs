//! Entry points for the fuzz targets (`fuzz/` at the repository root) and their corpus replay:
//! each takes arbitrary bytes and drives the decoding this crate does of bytes from the disk or
//! the network, the same functions the store calls. They panic only on a bug: a decoder that
//! panics, or an invariant below that does not hold. Not part of the API.

use std::path::{Path, PathBuf};

use openraft::EntryPayload;

use crate::backup;
use crate::mvcc::MvccCore;
use crate::snapshot::{self, SnapshotReader};
use crate::wal;

/// `data` as the content of a log segment file whose first entry is 1, read as opening the log
/// reads every segment; then the same bytes with every record's CRC made to match, so that
/// generated payloads reach the entry decoding behind the checksum.
pub fn wal_segment(data: &[u8]) {
    check_segment(data);
    let fixed = wal::with_checksums_fixed(data);
    if fixed != data {
        check_segment(&fixed);
    }
}

/// Scans `bytes` as a segment and checks what the scan claims: the records it accepted are
/// where it says, hold consecutive indexes from 1, and each entry encodes back into a record
/// that decodes to the same entry.
fn check_segment(bytes: &[u8]) {
    let scanned = wal::scan_segment(1, bytes);
    let end = usize::try_from(scanned.end).expect("the end is within the input");
    assert!(end <= bytes.len(), "the scan ends past the input");
    assert_eq!(
        scanned.damage().is_none(),
        end == bytes.len(),
        "a scan stops early exactly when it reports damage"
    );
    for (i, &offset) in scanned.offsets.iter().enumerate() {
        let (entry, used) = wal::decode_record(&bytes[offset as usize..])
            .expect("an accepted record decodes")
            .expect("an accepted record is whole");
        assert_eq!(entry.log_id.index, 1 + i as u64);
        let next = scanned.offsets.get(i + 1).map_or(end, |&o| o as usize);
        assert_eq!(offset as usize + used, next, "records follow one another");
        let mut again = Vec::new();
        wal::encode_record(&mut again, &entry).expect("a decoded entry encodes");
        let (decoded, _) = wal::decode_record(&again)
            .expect("a re-encoded record decodes")
            .expect("a re-encoded record is whole");
        assert_eq!(decoded.log_id, entry.log_id);
        match (&decoded.payload, &entry.payload) {
            (EntryPayload::Normal(a), EntryPayload::Normal(b)) => assert_eq!(a, b),
            (EntryPayload::Membership(a), EntryPayload::Membership(b)) => assert_eq!(a, b),
            (EntryPayload::Blank, EntryPayload::Blank) => {}
            (a, b) => panic!("{a:?} decoded again as {b:?}"),
        }
    }
    if let Some(last) = scanned.last {
        assert_eq!(last.index, scanned.offsets.len() as u64);
    }
}

/// `data` as a state machine snapshot, read and checked as a follower checks one it receives
/// (frames, checksums, pair count, then the bookkeeping and key index its pairs make), and as
/// a backup file (`rampartctl snapshot status`); then the same with the checksums made to match
/// (the snapshot's CRCs; a backup's header, padding and SHA-256 around that snapshot).
pub fn snapshot(data: &[u8]) {
    let _ = read_snapshot(data);
    let _ = backup::status_of(data);
    let fixed = snapshot::with_checksums_fixed(data);
    if fixed != data {
        let _ = read_snapshot(&fixed);
    }
    let _ = backup::status_of(&backup::wrap(&fixed));
}

/// What installing a received snapshot reads of it before it touches the tree.
fn read_snapshot(bytes: &[u8]) -> Result<(), crate::StoreError> {
    let mut reader = SnapshotReader::open(bytes, bytes.len() as u64)?;
    let (state, _format) = MvccCore::incoming_state(reader.pairs())?;
    // The install refuses a snapshot whose pairs disagree with its meta; comparing them is
    // part of what it reads.
    let _matches = state.applied == reader.meta().last_log_id
        && state.membership == reader.meta().last_membership;
    Ok(())
}

/// Where the committed inputs of the fuzz targets are: `fuzz/` at the repository root.
pub fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

/// Runs `entry` over every input committed for the fuzz target `target`, the corpus
/// (`fuzz/corpus/<target>/`) and the inputs of past findings (`fuzz/regressions/<target>/`),
/// as the tests replay them on stable Rust. Panics if there is no corpus, so that a replay
/// cannot pass by checking nothing; returns how many inputs ran.
pub fn replay(target: &str, entry: impl Fn(&[u8])) -> usize {
    let mut inputs = 0;
    for kind in ["corpus", "regressions"] {
        let dir = fuzz_dir().join(kind).join(target);
        let Ok(files) = std::fs::read_dir(&dir) else {
            assert!(
                kind != "corpus",
                "no corpus for {target} in {}",
                dir.display()
            );
            continue;
        };
        let mut paths: Vec<PathBuf> = files.map(|f| f.expect("a corpus entry").path()).collect();
        paths.sort();
        for path in paths {
            let data = std::fs::read(&path).expect("a corpus file reads");
            eprintln!("{}", path.display());
            entry(&data);
            inputs += 1;
        }
    }
    assert!(inputs > 0, "the corpus of {target} is empty");
    inputs
}

#[cfg(test)]
mod replay {
    #[test]
    fn wal_record_corpus_replays() {
        super::replay("wal_record", super::wal_segment);
    }

    #[test]
    fn snapshot_reader_corpus_replays() {
        super::replay("snapshot_reader", super::snapshot);
    }
}

#[cfg(test)]
mod seeds {
    //! Writes the seed inputs of the storage targets: valid encodings, for the fuzzer to start
    //! from. `cargo test -p rampart-storage fuzzing::seeds -- --ignored` writes them into
    //! `fuzz/corpus/<target>/`.

    use std::path::PathBuf;

    use openraft::{EntryPayload, Membership};

    use crate::backup::Backup;
    use crate::test_support::{enabling_auth, entry, leased_put_cmd, log_id, put_cmd};
    use crate::types::{
        Command, Compare, CompareResult, CompareTarget, DeleteRangeRequest, PeerNode, PutRequest,
        RequestOp, TxnRequest,
    };
    use crate::wal::{self, Entry};
    use crate::Store;

    fn corpus(target: &str) -> PathBuf {
        let dir = super::fuzz_dir().join("corpus").join(target);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn commands() -> Vec<Command> {
        vec![
            put_cmd("a", "1"),
            put_cmd("b", "1"),
            Command::LeaseGrant { id: 7, ttl: 600 },
            leased_put_cmd("leased", "v", 7),
            Command::Txn(TxnRequest {
                compare: vec![Compare {
                    result: CompareResult::Equal,
                    target: CompareTarget::Value(b"1".to_vec()),
                    key: b"a".to_vec(),
                    range_end: Vec::new(),
                }],
                success: vec![RequestOp::Put(PutRequest {
                    key: b"a".to_vec(),
                    value: b"2".to_vec(),
                    ..Default::default()
                })],
                failure: vec![RequestOp::DeleteRange(DeleteRangeRequest {
                    key: b"b".to_vec(),
                    ..Default::default()
                })],
            }),
            Command::DeleteRange(DeleteRangeRequest {
                key: b"b".to_vec(),
                ..Default::default()
            }),
            Command::Compact { revision: 3 },
        ]
        .into_iter()
        .chain(enabling_auth())
        .collect()
    }

    #[test]
    #[ignore = "writes the fuzz seed corpus; run by hand"]
    fn write_seeds() {
        // Log segments: a blank entry, a membership, then the commands; one per record count.
        let mut entries: Vec<Entry> = vec![
            Entry {
                log_id: log_id(1),
                payload: EntryPayload::Blank,
            },
            Entry {
                log_id: log_id(2),
                payload: EntryPayload::Membership(Membership::new(
                    vec![[1, 2].into()],
                    std::collections::BTreeMap::from([
                        (1, PeerNode::default()),
                        (2, PeerNode::default()),
                    ]),
                )),
            },
        ];
        entries.extend((3..).zip(commands()).map(|(i, c)| entry(i, c)));
        let dir = corpus("wal_record");
        let mut segment = Vec::new();
        for (n, e) in entries.iter().enumerate() {
            wal::encode_record(&mut segment, e).unwrap();
            if n % 4 == 0 || n + 1 == entries.len() {
                std::fs::write(dir.join(format!("seed-{n}")), &segment).unwrap();
            }
        }

        // Snapshots: a backup of a store that applied the commands, and the snapshot in it.
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(&tmp.path().join("store")).unwrap();
        let core = store.core_for_tests();
        for (index, command) in (1..).zip(commands()) {
            core.apply_entry(&entry(index, command)).unwrap();
        }
        let mut backup = Backup::export(&store.mvcc(), tmp.path()).unwrap();
        let mut bytes = Vec::new();
        std::io::copy(&mut backup, &mut bytes).unwrap();
        let dir = corpus("snapshot_reader");
        std::fs::write(dir.join("seed-backup"), &bytes).unwrap();
        let len = u64::from_le_bytes(bytes[12..20].try_into().unwrap()) as usize;
        std::fs::write(dir.join("seed-snapshot"), &bytes[20..20 + len]).unwrap();
        let empty = Store::open(&tmp.path().join("empty")).unwrap();
        let mut backup = Backup::export(&empty.mvcc(), tmp.path()).unwrap();
        let mut bytes = Vec::new();
        std::io::copy(&mut backup, &mut bytes).unwrap();
        let len = u64::from_le_bytes(bytes[12..20].try_into().unwrap()) as usize;
        std::fs::write(dir.join("seed-empty-snapshot"), &bytes[20..20 + len]).unwrap();
    }
}
