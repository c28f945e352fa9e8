//! Power losses under a store: its data directory on a crash filesystem (`rampart-crashfs`),
//! written by a child process (this test binary, running [`child`]) that is killed with SIGKILL,
//! so that nothing is flushed or closed on the way out; then the power is cut, and this process
//! opens the store again. Each test skips, saying so, only where the machine has no /dev/fuse.
//!
//! In a scenario, entry `i` (log index `i`) puts the pairs [`Scenario`] gives it at revision
//! `i + 1`; after the power loss the store must hold a prefix of the entries, each wholly, and
//! at least the ones a flush had made durable.

use std::fs::{self, File};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rampart_crashfs::{CrashFs, MountedCrashFs};
use rampart_storage::{Command, PutRequest, RangeRequest, RequestOp, TxnRequest};
use tempfile::TempDir;

use crate::common::{range, sled_segment_size, Node};

/// Environment of a child process: which scenario it writes, and where.
const CHILD_SCENARIO: &str = "RAMPART_CRASH_CHILD_SCENARIO";
const CHILD_DIR: &str = "RAMPART_CRASH_CHILD_DIR";
/// What a child prints once it has done its part; it is killed then.
const READY: &str = "CRASH-CHILD-READY";
/// How long a child may take to get ready.
const CHILD_DEADLINE: Duration = Duration::from_secs(300);

/// The largest value a client can put: `--max-request-bytes` defaults to 1.5 MiB for the whole
/// request, and the key and the request's framing take a little of it.
const LARGEST_VALUE: usize = 1536 * 1024 - 512;
/// A txn of several large values, together about the largest request.
const TXN_VALUES: usize = 4;
const TXN_VALUE: usize = LARGEST_VALUE / TXN_VALUES;

/// The pairs entry `i` puts; entries of more than one pair are txns.
type Scenario = fn(u64) -> Vec<(String, Vec<u8>)>;

/// Entry 1 is small and flushed; entry 2 puts the largest value, entry 3 a txn of several
/// large values; later entries fill sled's I/O buffer with 16 KiB values until sled writes it
/// out.
fn large_values(i: u64) -> Vec<(String, Vec<u8>)> {
    match i {
        1 => vec![("small".into(), value(i, 100))],
        2 => vec![("big".into(), value(i, LARGEST_VALUE))],
        3 => (0..TXN_VALUES)
            .map(|k| (format!("txn/{k}"), value(i * 100 + k as u64, TXN_VALUE)))
            .collect(),
        _ => vec![(format!("fill/{i:06}"), value(i, 16 * 1024))],
    }
}

/// Entries 1 to [`MANY_WRITES_FLUSHED`] are small and flushed; the next four put values of
/// 1.2 MiB, together more than a quarter of the largest log segment sled allows, so that sled
/// writes a page holding them (with a segment of 512 KiB, each value) to a blob file; later
/// ones put 64 KiB values, several segments of sled's log of them.
fn many_writes(i: u64) -> Vec<(String, Vec<u8>)> {
    let len = if i <= MANY_WRITES_FLUSHED {
        100
    } else if i <= MANY_WRITES_FLUSHED + 4 {
        1200 * 1024
    } else {
        64 * 1024
    };
    vec![(format!("k/{i:06}"), value(i, len))]
}
const MANY_WRITES_FLUSHED: u64 = 10;

/// `len` bytes that depend on `seed`.
fn value(seed: u64, len: usize) -> Vec<u8> {
    format!("{seed:016x}").bytes().cycle().take(len).collect()
}

async fn apply(node: &mut Node, pairs: Vec<(String, Vec<u8>)>) {
    let puts = pairs.into_iter().map(|(key, value)| PutRequest {
        key: key.into_bytes(),
        value,
        ..Default::default()
    });
    let cmd = if puts.len() == 1 {
        Command::Put(puts.into_iter().next().expect("one put"))
    } else {
        Command::Txn(TxnRequest {
            compare: vec![],
            success: puts.map(RequestOp::Put).collect(),
            failure: vec![],
        })
    };
    let resp = node.apply(cmd).await;
    assert!(resp.result.is_ok(), "entry failed: {resp:?}");
}

/// sled's data file.
fn db_file(data: &Path) -> PathBuf {
    data.join("db").join("db")
}

fn db_len(data: &Path) -> u64 {
    fs::metadata(db_file(data)).expect("sled's data file").len()
}

/// Applies `scenario`'s next entries until sled's data file reaches `len`: sled writes its I/O
/// buffer out by itself only when it is full, at the end of a segment.
async fn fill_to(node: &mut Node, scenario: Scenario, data: &Path, len: u64) {
    for _ in 0..100_000 {
        if db_len(data) >= len {
            return;
        }
        let i = node.next_index;
        apply(node, scenario(i)).await;
    }
    panic!("sled's data file never reached {len} bytes");
}

/// The part a child plays: writes, then leaves the store open (dropping it would flush).
#[tokio::test]
#[ignore = "a child process of the other tests of this module, which start it"]
async fn child() {
    let scenario = std::env::var(CHILD_SCENARIO).expect("started by a crash test");
    let data = PathBuf::from(std::env::var_os(CHILD_DIR).expect("started by a crash test"));
    let _open = match scenario.as_str() {
        "large-values" => {
            let mut node = Node::open(&data);
            apply(&mut node, large_values(1)).await;
            node.store.flush().expect("flush");
            let segment = sled_segment_size(&data);
            let next_segment = (db_len(&data) / segment + 1) * segment;
            apply(&mut node, large_values(2)).await;
            apply(&mut node, large_values(3)).await;
            fill_to(&mut node, large_values, &data, next_segment).await;
            // The kernel may write a file back whenever it likes, without the files beside it;
            // crashfs never does, so the test does it here, for sled's data file alone.
            File::open(db_file(&data))
                .and_then(|f| f.sync_data())
                .expect("fdatasync of sled's data file");
            node
        }
        "many-writes" => {
            let mut node = Node::open(&data);
            for i in 1..=MANY_WRITES_FLUSHED {
                apply(&mut node, many_writes(i)).await;
            }
            node.store.flush().expect("flush");
            let segments = 3 * sled_segment_size(&data);
            fill_to(&mut node, many_writes, &data, segments).await;
            node
        }
        "open" => Node::open(&data),
        other => panic!("no scenario {other}"),
    };
    println!("{READY}");
    loop {
        std::thread::park();
    }
}

/// Runs [`child`] with `scenario` on the data directory `data` until it is ready, then kills it
/// with SIGKILL.
fn run_child(scenario: &str, data: &Path) {
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut child = std::process::Command::new(exe)
        .args(["--exact", "crash::child", "--ignored", "--nocapture"])
        .env(CHILD_SCENARIO, scenario)
        .env(CHILD_DIR, data)
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting a child process");
    let stdout = child.stdout.take().expect("the child's stdout");
    let (lines, received) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + CHILD_DEADLINE;
    loop {
        match received.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) if line == READY => break,
            Ok(line) => println!("child ({scenario}): {line}"),
            Err(e) => {
                let _ = child.kill();
                panic!("the child writing {scenario} never got ready ({e}): see its output above");
            }
        }
    }
    child.kill().expect("SIGKILL to the child");
    child.wait().expect("the child's exit");
    tracing::info!("--- child {scenario} killed");
}

/// A crash filesystem mounted at `<tmp>/mnt` over `<tmp>/backing`, or `None` (printed) where
/// there is no FUSE.
struct Mounted {
    fs: MountedCrashFs,
    _dir: TempDir,
}

impl Mounted {
    /// The store's data directory, on the crash filesystem.
    fn data(&self) -> PathBuf {
        self.fs.mountpoint().join("data")
    }
}

fn mount() -> Option<Mounted> {
    if !rampart_crashfs::fuse_available() {
        println!("SKIPPED: /dev/fuse is missing, so no FUSE filesystem can be mounted here");
        return None;
    }
    let dir = tempfile::tempdir().expect("temporary directory");
    let [backing, mountpoint] = ["backing", "mnt"].map(|name| dir.path().join(name));
    for path in [&backing, &mountpoint] {
        fs::create_dir(path).expect("a directory for the crash filesystem");
    }
    let fs = CrashFs::mount(&backing, &mountpoint)
        .unwrap_or_else(|e| panic!("mounting a crash filesystem: {e:?}"));
    Some(Mounted { fs, _dir: dir })
}

/// Checks that `node` holds a prefix of `scenario`'s entries, each wholly, reaching at least
/// entry `durable`; returns the last entry it holds.
fn check_prefix(node: &Node, scenario: Scenario, durable: u64) -> u64 {
    let applied = node.mvcc.applied_log_id().map_or(0, |id| id.index);
    assert!(
        applied >= durable,
        "entry {durable} was flushed, but the store has applied only up to {applied}"
    );
    assert_eq!(
        node.mvcc.revision(),
        applied as i64 + 1,
        "each entry of the scenario makes one revision"
    );
    let mut keys = 0;
    for i in 1..=applied {
        for (key, value) in scenario(i) {
            let found = node
                .range(&RangeRequest {
                    revision: i as i64 + 1,
                    ..range(&key, "")
                })
                .expect("read at the entry's revision");
            let found = found
                .kvs
                .first()
                .filter(|kv| kv.mod_revision == i as i64 + 1);
            assert!(
                found.is_some_and(|kv| kv.value == value),
                "entry {i} is applied (the store is at entry {applied}) but its put of {key} is \
                 {}",
                match found {
                    None => "missing".to_string(),
                    Some(kv) => format!("{} bytes that differ", kv.value.len()),
                }
            );
            keys += 1;
        }
    }
    let all = node
        .range(&RangeRequest {
            count_only: true,
            ..range("\0", "\0")
        })
        .expect("count every key");
    assert_eq!(
        all.count, keys,
        "the store holds keys of entries past the last applied one ({applied})"
    );
    applied
}

/// Blob files sled wrote in the data directory (`db/blobs`), by name.
fn blob_files(data: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(data.join("db").join("blobs"))
        .map(|dir| dir.map_while(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    files
}

#[tokio::test]
async fn the_largest_requests_are_wholly_there_or_wholly_absent_after_a_power_loss() {
    let Some(m) = mount() else { return };
    tracing::info!("--- a child applies the largest put and a txn of large values, then dies");
    run_child("large-values", &m.data());
    let blobs = blob_files(&m.data());
    tracing::info!("--- power loss");
    m.fs.crash().expect("crash");
    // A real filesystem may lose the name of a file that was never fsynced along with its data;
    // crashfs keeps names, so the blob files that came back empty are removed here by hand.
    for blob in &blobs {
        if fs::metadata(blob).is_ok_and(|m| m.len() == 0) {
            fs::remove_file(blob).expect("remove an empty blob file");
        }
    }
    tracing::info!("--- the store opens again");
    let node = Node::open(&m.data());
    let applied = check_prefix(&node, large_values, 1);
    assert!(
        applied >= 3,
        "sled wrote its buffer holding entries 2 and 3 out and the kernel wrote it back, yet the \
         store has applied only up to entry {applied}"
    );
    assert!(
        blobs.is_empty(),
        "sled kept {} of the values in blob files, which it never fsyncs: {blobs:?}",
        blobs.len()
    );
}

#[tokio::test]
async fn a_store_opened_after_a_kill_opens_again_after_a_power_loss() {
    let Some(m) = mount() else { return };
    tracing::info!("--- a child writes several segments of sled's log, flushing only the first");
    run_child("many-writes", &m.data());
    tracing::info!("--- the process died, the machine did not: another child opens the store");
    run_child("open", &m.data());
    tracing::info!("--- power loss");
    m.fs.crash().expect("crash");
    tracing::info!("--- the store opens again");
    let node = Node::open(&m.data());
    check_prefix(&node, many_writes, MANY_WRITES_FLUSHED);
}
