//! Opening sled's directory (`<data dir>/db`) as earlier versions or crashes left it: the log
//! segment size it was made with, and sled snapshots that must not be trusted.

use std::fs;
use std::path::Path;

use tempfile::TempDir;

use crate::common::{sled_segment_size, strs, Node};

/// Makes `data` the data directory of an earlier Rampart: a sled database with sled's default
/// segment size, as every version before 16 MiB segments made it.
fn make_legacy_database(data: &Path) {
    let db = sled::Config::new()
        .path(data.join("db"))
        .segment_size(512 * 1024)
        .flush_every_ms(None)
        .open()
        .expect("sled opens");
    db.flush().expect("sled flushes");
}

/// sled's snapshot files in `data`, by name.
fn sled_snapshots(data: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(data.join("db"))
        .expect("sled's directory")
        .map(|e| e.expect("a directory entry").file_name())
        .map(|name| name.to_string_lossy().into_owned())
        .filter(|name| name.starts_with("snap."))
        .collect();
    names.sort();
    names
}

async fn put_keys(node: &mut Node, keys: std::ops::Range<u32>, value_len: usize) {
    for k in keys {
        let value = format!("{k:08}").repeat(value_len / 8);
        node.put(&format!("k{k:05}"), &value).await;
    }
}

#[tokio::test]
async fn a_new_database_uses_16_mib_segments() {
    let dir = TempDir::new().unwrap();
    drop(Node::open(dir.path()));
    assert_eq!(sled_segment_size(dir.path()), 16 << 20);
}

#[tokio::test]
async fn a_database_made_with_smaller_segments_keeps_them_even_if_its_conf_was_lost() {
    let dir = TempDir::new().unwrap();
    make_legacy_database(dir.path());
    {
        let mut node = Node::open(dir.path());
        node.put("a", "1").await;
        node.store.flush().unwrap();
    }
    assert_eq!(sled_segment_size(dir.path()), 512 * 1024);
    // Earlier versions never synced sled's conf, so a power loss may have emptied it (sled
    // then takes it for none); the data file is not empty.
    fs::write(dir.path().join("db").join("conf"), b"").unwrap();
    let mut node = Node::open(dir.path());
    assert_eq!(node.get("a").map(|kv| kv.value), Some(b"1".to_vec()));
    node.put("b", "2").await;
    drop(node);
    assert_eq!(sled_segment_size(dir.path()), 512 * 1024);
    let node = Node::open(dir.path());
    assert_eq!(node.dump_at(0).unwrap(), strs(&["a=1", "b=2"]));
}

/// An earlier version, restarted after a kill with writes still in the page cache, let sled
/// write a snapshot of them; a power loss then took the writes but not the snapshot. Here the
/// directory is put together from a copy taken at the last flush and the snapshot sled wrote
/// later, with more data.
#[tokio::test]
async fn a_sled_snapshot_ahead_of_the_log_in_a_directory_of_an_earlier_version_is_set_aside() {
    let live = TempDir::new().unwrap();
    let crashed = TempDir::new().unwrap();
    make_legacy_database(live.path());
    {
        let mut node = Node::open(live.path());
        put_keys(&mut node, 0..5, 16).await;
        node.store.flush().unwrap();
    }
    tracing::info!("--- the durable state: a copy of the data directory");
    copy_dir(live.path(), crashed.path());
    tracing::info!("--- more writes, over several segments, then a reopen: sled's new snapshot");
    {
        let mut node = Node::open(live.path());
        put_keys(&mut node, 5..400, 4096).await;
        node.store.flush().unwrap();
    }
    drop(Node::open(live.path()));
    let ahead = sled_snapshots(live.path());
    assert!(!ahead.is_empty(), "sled wrote no snapshot");
    let db = crashed.path().join("db");
    for name in sled_snapshots(crashed.path()) {
        fs::remove_file(db.join(name)).unwrap();
    }
    for name in &ahead {
        fs::copy(live.path().join("db").join(name), db.join(name)).unwrap();
    }
    // The mark this version leaves in every directory it opened (see `store.rs`).
    let _ = fs::remove_file(db.join("rampart-synced-opens"));
    tracing::info!("--- the store opens from the durable log and the snapshot ahead of it");
    let node = Node::open(crashed.path());
    assert_eq!(node.mvcc.revision(), 6, "the 5 puts made durable");
    assert_eq!(node.dump_at(0).unwrap().len(), 5);
}

/// sled writes a snapshot under a temporary name, fsyncs it and renames it; a crash before the
/// fsync leaves the file empty or torn, yet sled would read it as the newest snapshot.
#[tokio::test]
async fn an_unfinished_sled_snapshot_is_set_aside() {
    let dir = TempDir::new().unwrap();
    {
        let mut node = Node::open(dir.path());
        put_keys(&mut node, 0..5, 16).await;
        node.store.flush().unwrap();
    }
    drop(Node::open(dir.path()));
    let newest = sled_snapshots(dir.path())
        .pop()
        .expect("sled wrote a snapshot");
    fs::write(
        dir.path().join("db").join(format!("{newest}.generating")),
        b"",
    )
    .unwrap();
    let node = Node::open(dir.path());
    assert_eq!(node.dump_at(0).unwrap().len(), 5);
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).unwrap();
        }
    }
}
