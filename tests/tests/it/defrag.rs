//! Defragment against real `rampart` processes: etcdctl's `defrag` while clients write, every
//! acknowledged write still there afterwards and after a restart, the databases smaller after
//! a compaction and a defragment, and Status's `dbSize` and `dbSizeInUse` following.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use etcd_client::{CompactionOptions, GetOptions, Txn, TxnOp};
use rampart_tests::{wait_until, ProcessCluster};
use tracing::info;

use crate::common::{connect, spawn_etcdctl};

/// Keys written over and over before the defragment.
const KEYS: usize = 200;
/// How many times each is written.
const ROUNDS: usize = 16;
/// Bytes of each value: KEYS * ROUNDS * VALUE_BYTES, 12.5 MiB, of history of which a compaction
/// leaves one sixteenth live.
const VALUE_BYTES: usize = 4096;
/// How long etcdctl may take to defragment the three members.
const DEFRAG_DEADLINE: Duration = Duration::from_secs(120);

/// Bytes of the database directories (`db`, `db.<n>`) in a member's data directory.
fn database_bytes(data_dir: &Path) -> anyhow::Result<u64> {
    fn size(path: &Path) -> u64 {
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.is_dir() => std::fs::read_dir(path)
                .map(|entries| entries.flatten().map(|e| size(&e.path())).sum())
                .unwrap_or(0),
            Ok(meta) => meta.len(),
            Err(_) => 0,
        }
    }
    let mut total = 0;
    for entry in
        std::fs::read_dir(data_dir).with_context(|| format!("listing {}", data_dir.display()))?
    {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == "db" || name.starts_with("db.") {
            total += size(&entry.path());
        }
    }
    Ok(total)
}

/// `(dbSize, dbSizeInUse)` as member `url` reports them in Status.
async fn sizes(url: &str) -> anyhow::Result<(i64, i64)> {
    let mut client = connect(&[url.to_string()]).await?;
    let status = client.status().await?;
    Ok((status.db_size(), status.raft_used_db_size()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_defrag_under_writes_keeps_every_write_and_shrinks_every_member(
) -> anyhow::Result<()> {
    rampart_tests::init_tracing();
    let mut cluster = ProcessCluster::start(3).await?;
    let urls = cluster.client_urls();
    let mut client = connect(&urls).await?;

    // Overwritten values, then a compaction: most of the database is garbage.
    let value = "v".repeat(VALUE_BYTES);
    for round in 0..ROUNDS {
        for chunk in (0..KEYS).collect::<Vec<_>>().chunks(50) {
            let puts: Vec<TxnOp> = chunk
                .iter()
                .map(|k| TxnOp::put(format!("key/{k:04}"), format!("{round}:{value}"), None))
                .collect();
            client.txn(Txn::new().and_then(puts)).await?;
        }
    }
    let revision = client
        .get("key/0000", None)
        .await?
        .header()
        .unwrap()
        .revision();
    client
        .compact(revision, Some(CompactionOptions::new().with_physical()))
        .await?;
    let mut before = Vec::new();
    for (i, url) in urls.iter().enumerate() {
        // Every member compacts in the background at its own pace; dbSizeInUse shows when it
        // is done: from all the versions to about the last of each key.
        wait_until(
            "the compaction, in dbSizeInUse",
            Duration::from_secs(60),
            || async {
                let (_, in_use) = sizes(url).await?;
                Ok((in_use < (KEYS * VALUE_BYTES * 2) as i64).then_some(()))
            },
        )
        .await?;
        let (db_size, in_use) = sizes(url).await?;
        let on_disk = database_bytes(&cluster.members[i].data_dir)?;
        info!(
            member = i,
            db_size, in_use, on_disk, "before the defragment"
        );
        ensure!(
            0 < in_use && in_use <= db_size,
            "member {i}: dbSizeInUse {in_use} against dbSize {db_size}"
        );
        before.push((db_size, on_disk));
    }

    // Writes go on during the defragment; each acknowledged one is checked afterwards.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn({
        let (urls, stop) = (urls.clone(), stop.clone());
        async move {
            let mut client = connect(&urls).await?;
            let mut acknowledged = Vec::new();
            let mut longest = Duration::ZERO;
            while !stop.load(Ordering::SeqCst) {
                let key = format!("during/{:05}", acknowledged.len());
                let started = Instant::now();
                client.put(key.clone(), "w", None).await?;
                longest = longest.max(started.elapsed());
                acknowledged.push(key);
            }
            anyhow::Ok((acknowledged, longest))
        }
    });
    let endpoints = urls.join(",");
    let defrag = spawn_etcdctl(&urls, &["--command-timeout=100s", "defrag"])?;
    let output = tokio::time::timeout(DEFRAG_DEADLINE, defrag.wait_with_output())
        .await
        .context("etcdctl defrag did not finish in time")??;
    stop.store(true, Ordering::SeqCst);
    let (acknowledged, longest) = writer.await??;
    let stdout = String::from_utf8_lossy(&output.stdout);
    ensure!(
        output.status.success(),
        "etcdctl defrag failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for url in &urls {
        ensure!(
            stdout.contains(&format!("Finished defragmenting etcd member[{url}]")),
            "etcdctl defrag on {endpoints} printed: {stdout}"
        );
    }
    info!(
        writes = acknowledged.len(),
        longest_ms = longest.as_millis() as u64,
        "writes acknowledged during the defragment"
    );
    ensure!(
        !acknowledged.is_empty(),
        "no write went through during the defragment"
    );

    for (i, url) in urls.iter().enumerate() {
        let (db_size, in_use) = sizes(url).await?;
        let on_disk = database_bytes(&cluster.members[i].data_dir)?;
        info!(member = i, db_size, in_use, on_disk, "after the defragment");
        let (db_before, disk_before) = before[i];
        ensure!(
            db_size < db_before && on_disk < disk_before,
            "member {i}: dbSize {db_before} -> {db_size}, on disk {disk_before} -> {on_disk}"
        );
        ensure!(
            0 < in_use && in_use <= db_size,
            "member {i}: dbSizeInUse {in_use} against dbSize {db_size}"
        );
    }

    // Every acknowledged write, and every key's last value, on every member; then again on a
    // member killed and restarted on its defragmented database.
    let expected_last = format!("{}:{value}", ROUNDS - 1);
    let check = |url: String| {
        let (acknowledged, expected_last) = (acknowledged.clone(), expected_last.clone());
        async move {
            let mut client = connect(&[url]).await?;
            let during = client
                .get(
                    "during/",
                    Some(GetOptions::new().with_prefix().with_serializable()),
                )
                .await?;
            let found: Vec<String> = during
                .kvs()
                .iter()
                .map(|kv| kv.key_str().map(str::to_string))
                .collect::<Result<_, _>>()?;
            let missing: Vec<&String> =
                acknowledged.iter().filter(|k| !found.contains(k)).collect();
            if !missing.is_empty() {
                return Ok(None);
            }
            let keys = client
                .get(
                    "key/",
                    Some(GetOptions::new().with_prefix().with_serializable()),
                )
                .await?;
            ensure!(keys.kvs().len() == KEYS, "{} keys", keys.kvs().len());
            for kv in keys.kvs() {
                ensure!(
                    kv.value_str()? == expected_last,
                    "{:?} lost its value",
                    kv.key_str()
                );
            }
            Ok(Some(()))
        }
    };
    for url in &urls {
        wait_until("every acknowledged write", Duration::from_secs(30), || {
            check(url.clone())
        })
        .await?;
    }
    cluster.kill(1)?;
    cluster.restart(1).await?;
    wait_until(
        "every acknowledged write after a restart",
        Duration::from_secs(30),
        || check(urls[1].clone()),
    )
    .await?;
    Ok(())
}
