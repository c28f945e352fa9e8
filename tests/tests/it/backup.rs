//! Backup and restore against real processes: the real `etcdctl snapshot save` against a
//! member while writes go on, `rampartctl snapshot status` and `restore`, and a new three-member
//! cluster started on the restored data directories, which must serve exactly the data of the
//! snapshot's revision (keys, values, create and mod revisions, versions, leases and their
//! keys, the compact revision) under a new cluster id. Damaged and truncated files are refused.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{ensure, Context};
use base64::Engine;
use etcd_client::{LeaseTimeToLiveOptions, PutOptions};
use rampart_tests::{init_tracing, wait_until, ProcessCluster, ProcessMember};
use serde_json::Value;
use tracing::info;

use crate::common::connect;
use crate::etcdctl::Etcdctl;

/// How long the writes that go on during a save may take to show progress.
const WRITES_WAIT: Duration = Duration::from_secs(30);

/// The `rampartctl` binary beside the `rampart` one the tests run. Under cargo it is built
/// first (a no-op when fresh), as the launcher builds `rampart`, so that a stale one is never
/// tested.
fn rampartctl() -> anyhow::Result<PathBuf> {
    static BINARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BINARY
        .get_or_init(|| find_rampartctl().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

fn find_rampartctl() -> anyhow::Result<PathBuf> {
    let binary = rampart_tests::rampart_binary()?.with_file_name("rampartctl");
    if let Some(cargo) = std::env::var_os("CARGO") {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
        let status = std::process::Command::new(cargo)
            .args(["build", "--quiet", "-p", "rampart", "--bin", "rampartctl"])
            .arg("--manifest-path")
            .arg(manifest)
            .status()?;
        ensure!(status.success(), "cargo build --bin rampartctl failed");
    }
    ensure!(
        binary.exists(),
        "no rampartctl at {}: build the binaries first (cargo build --bins)",
        binary.display()
    );
    Ok(binary)
}

/// What one `rampartctl` run printed.
struct Ctl {
    success: bool,
    stdout: String,
    stderr: String,
}

fn run_rampartctl(args: &[&str]) -> anyhow::Result<Ctl> {
    let output = std::process::Command::new(rampartctl()?)
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()?;
    Ok(Ctl {
        success: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}

/// `rampartctl snapshot status -w json FILE`, parsed.
fn snapshot_status(file: &Path) -> anyhow::Result<Value> {
    let file = file.to_str().context("a test path is UTF-8")?;
    let run = run_rampartctl(&["snapshot", "status", "-w", "json", file])?;
    ensure!(run.success, "snapshot status failed: {}", run.stderr);
    Ok(serde_json::from_str(&run.stdout)?)
}

/// Restores `file` into the data directory of each of `members` (not started yet), as members
/// of one new cluster with `token`: the command the README gives, once per member.
fn restore_into(file: &Path, members: &[ProcessMember], token: &str) -> anyhow::Result<()> {
    let initial_cluster = members
        .iter()
        .map(|m| format!("{}={}", m.name, m.peer_url))
        .collect::<Vec<_>>()
        .join(",");
    for member in members {
        let run = run_rampartctl(&[
            "snapshot",
            "restore",
            file.to_str().context("a test path is UTF-8")?,
            "--name",
            &member.name,
            "--data-dir",
            member.data_dir.to_str().context("a test path is UTF-8")?,
            "--initial-cluster",
            &initial_cluster,
            "--initial-cluster-token",
            token,
            "--initial-advertise-peer-urls",
            &member.peer_url,
        ])?;
        ensure!(
            run.success,
            "restoring into {} failed: {}",
            member.name,
            run.stderr
        );
        info!(member = %member.name, "{}", run.stdout.trim());
    }
    Ok(())
}

/// The revision a member's own state is at (a serializable read of it alone).
async fn local_revision(url: &str) -> anyhow::Result<i64> {
    let etcdctl = Etcdctl::new(&[url])?;
    let response = etcdctl.json(&["get", "probe", "--consistency=s"]).await?;
    response["header"]["revision"]
        .as_i64()
        .with_context(|| format!("no revision in {response}"))
}

/// Every key's full record (`kvs` of `etcdctl get "" --prefix -w json`), and the revision of
/// the answer.
async fn everything(etcdctl: &Etcdctl, extra: &[&str]) -> anyhow::Result<(Value, i64)> {
    let mut args = vec!["get", "", "--prefix"];
    args.extend_from_slice(extra);
    let response = etcdctl.json(&args).await?;
    let revision = response["header"]["revision"]
        .as_i64()
        .with_context(|| format!("no revision in {response}"))?;
    Ok((response["kvs"].clone(), revision))
}

/// Each lease's id, granted TTL and attached keys, in id order.
async fn leases(urls: &[String]) -> anyhow::Result<Vec<(i64, i64, Vec<Vec<u8>>)>> {
    let mut client = connect(urls).await?;
    let mut ids: Vec<i64> = client
        .leases()
        .await?
        .leases()
        .iter()
        .map(|l| l.id())
        .collect();
    ids.sort_unstable();
    let mut out = Vec::new();
    for id in ids {
        let ttl = client
            .lease_time_to_live(id, Some(LeaseTimeToLiveOptions::new().with_keys()))
            .await?;
        ensure!(ttl.ttl() > 0, "lease {id:x} has expired: {ttl:?}");
        let mut keys = ttl.keys().to_vec();
        keys.sort();
        out.push((id, ttl.granted_ttl(), keys));
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_saves_while_writes_go_on_and_restored_members_serve_the_same_data(
) -> anyhow::Result<()> {
    init_tracing();
    info!("--- a source cluster: history, a delete, leases with keys, a compaction");
    let source = ProcessCluster::start(3).await?;
    let urls = source.client_urls();
    let mut client = connect(&urls).await?;
    for i in 0..40 {
        client
            .put(format!("k/{i:03}"), format!("v{i}"), None)
            .await?;
    }
    for i in 0..10 {
        client
            .put(format!("k/{i:03}"), format!("v{i}-again"), None)
            .await?;
    }
    client.delete("k/039", None).await?;
    let held = client.lease_grant(600, None).await?.id();
    for key in ["leased/a", "leased/b"] {
        let with_lease = PutOptions::new().with_lease(held);
        client.put(key, "held", Some(with_lease)).await?;
    }
    let bare = client.lease_grant(900, None).await?.id();
    let compacted = client.put("k/000", "v0-third", None).await?;
    let compacted = compacted.header().context("no header")?.revision();
    client.compact(compacted, None).await?;

    info!("--- etcdctl snapshot save against a single member while a client writes");
    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn({
        let (mut client, stop) = (client.clone(), stop.clone());
        async move {
            let mut written = 0u64;
            while !stop.load(Ordering::Relaxed) {
                client.put(format!("w/{written:06}"), "x", None).await?;
                written += 1;
            }
            anyhow::Ok(written)
        }
    });
    let member = urls[1].clone();
    let start = local_revision(&member).await?;
    wait_until("the writer to make progress", WRITES_WAIT, || async {
        Ok((local_revision(&member).await? >= start + 20).then_some(()))
    })
    .await?;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("backup.db");
    let before = local_revision(&member).await?;
    let save = Etcdctl::new(&[&member])?
        .ok(&["snapshot", "save", file.to_str().context("UTF-8")?])
        .await?;
    let after = local_revision(&member).await?;
    wait_until("more writes after the save", WRITES_WAIT, || async {
        Ok((local_revision(&member).await? > after).then_some(()))
    })
    .await?;
    stop.store(true, Ordering::Relaxed);
    let written = writer.await??;
    info!(written, before, after, "{}", save.trim());
    ensure!(
        after > before,
        "no write was applied while the snapshot was saved ({before} → {after})"
    );

    info!("--- the snapshot is of one revision among the writes; its status tells which");
    let status = snapshot_status(&file)?;
    let revision = status["revision"].as_i64().context("no revision")?;
    ensure!(
        (before..=after).contains(&revision),
        "the snapshot's revision {revision} is not between {before} and {after}"
    );
    let source_etcdctl = Etcdctl::new(&[&urls[0]])?;
    let at = format!("--rev={revision}");
    let (expected, _) = everything(&source_etcdctl, &[&at]).await?;
    let expected_keys = expected.as_array().context("kvs is a list")?.len();
    ensure!(
        status["totalKey"].as_u64() == Some(expected_keys as u64),
        "status {status} counts other than the {expected_keys} keys at revision {revision}"
    );
    ensure!(
        status["compactRevision"].as_i64() == Some(compacted),
        "status {status}: compacted at {compacted}"
    );
    let source_leases = leases(&urls).await?;
    let source_cluster = source_etcdctl.json(&["endpoint", "status"]).await?[0]["Status"]["header"]
        ["cluster_id"]
        .clone();
    drop(source);

    info!("--- three members restored from the file, started with the restore's flags");
    let restored =
        ProcessCluster::start_prepared(3, |members, token| restore_into(&file, members, token))
            .await?;
    let restored_urls = restored.client_urls();
    let endpoints: Vec<&str> = restored_urls.iter().map(String::as_str).collect();
    let etcdctl = Etcdctl::new(&endpoints)?;

    info!("--- the same keys, values, revisions and versions, at the snapshot's revision");
    let (kvs, restored_revision) = everything(&etcdctl, &[]).await?;
    ensure!(
        restored_revision == revision,
        "the restored cluster is at revision {restored_revision}, the snapshot at {revision}"
    );
    ensure!(
        kvs == expected,
        "restored data differs:\nrestored {kvs}\nexpected {expected}"
    );
    for member in &restored_urls {
        let (kvs, _) = everything(&Etcdctl::new(&[member])?, &["--consistency=s"]).await?;
        ensure!(kvs == expected, "member {member} serves other data: {kvs}");
    }

    info!("--- the compact revision is the source's");
    let below = format!("--rev={}", compacted - 1);
    let refused = etcdctl.run(&["get", "k/000", &below], None).await?;
    ensure!(
        !refused.success
            && refused
                .stderr
                .contains("required revision has been compacted"),
        "a read below the compact revision {compacted}: {} {}",
        refused.stdout,
        refused.stderr
    );
    let at_compacted = format!("--rev={compacted}");
    let old = etcdctl.json(&["get", "k/000", &at_compacted]).await?;
    ensure!(
        old["kvs"][0]["mod_revision"].as_i64() == Some(compacted),
        "k/000 at the compact revision: {old}"
    );

    info!("--- the leases, with their TTLs and keys");
    let restored_leases = leases(&restored_urls).await?;
    ensure!(
        restored_leases == source_leases,
        "leases differ: restored {restored_leases:?}, source {source_leases:?}"
    );
    ensure!(
        source_leases
            .iter()
            .any(|(id, _, keys)| *id == held && keys.len() == 2)
            && source_leases
                .iter()
                .any(|(id, _, keys)| *id == bare && keys.is_empty()),
        "the source's leases: {source_leases:?}"
    );

    info!("--- a new cluster id, the membership of the flags, and it takes writes");
    let status = etcdctl.json(&["endpoint", "status"]).await?;
    let cluster = &status[0]["Status"]["header"]["cluster_id"];
    ensure!(
        cluster != &source_cluster,
        "the restored cluster kept the id {cluster}"
    );
    let members = etcdctl.json(&["member", "list"]).await?;
    let mut peer_urls: Vec<String> = members["members"]
        .as_array()
        .context("members is a list")?
        .iter()
        .filter_map(|m| m["peerURLs"][0].as_str().map(str::to_string))
        .collect();
    peer_urls.sort();
    let mut wanted: Vec<String> = restored
        .members
        .iter()
        .map(|m| m.peer_url.clone())
        .collect();
    wanted.sort();
    ensure!(peer_urls == wanted, "member list {members}");
    let put = etcdctl.json(&["put", "after/restore", "x"]).await?;
    ensure!(
        put["header"]["revision"].as_i64() == Some(revision + 1),
        "the first write after the restore: {put}"
    );

    info!("--- a restored member killed and restarted keeps its data, and does not initialize");
    let mut restored = restored;
    restored.kill(2)?;
    restored.restart(2).await?;
    let member = Etcdctl::new(&[&restored_urls[2]])?;
    let after_restart = wait_until("the restarted member to catch up", WRITES_WAIT, || async {
        let (kvs, revision) = everything(&member, &["--consistency=s"]).await?;
        Ok((revision > restored_revision).then_some(kvs))
    })
    .await?;
    let mut with_new_key = expected.as_array().context("kvs is a list")?.clone();
    with_new_key.push(put_kv(&etcdctl, "after/restore").await?);
    // In key order, as a range answers: by the keys' bytes, not their base64.
    with_new_key.sort_by_key(|kv| {
        let key = kv["key"].as_str().unwrap_or_default();
        base64::engine::general_purpose::STANDARD
            .decode(key)
            .unwrap_or_default()
    });
    ensure!(
        after_restart == Value::Array(with_new_key),
        "the restarted member serves {after_restart}"
    );
    Ok(())
}

/// The full record of `key`, as `etcdctl get -w json` prints it.
async fn put_kv(etcdctl: &Etcdctl, key: &str) -> anyhow::Result<Value> {
    let response = etcdctl.json(&["get", key]).await?;
    Ok(response["kvs"][0].clone())
}

/// Saved with `rampartctl snapshot save` this time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_or_truncated_snapshot_is_refused_with_a_clear_error() -> anyhow::Result<()> {
    init_tracing();
    let cluster = ProcessCluster::start(1).await?;
    let url = cluster.members[0].client_url.clone();
    let mut client = connect(std::slice::from_ref(&url)).await?;
    for i in 0..100 {
        client
            .put(format!("k/{i:03}"), "v".repeat(100), None)
            .await?;
    }
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("backup.db");
    let save = run_rampartctl(&[
        "--endpoint",
        &url,
        "snapshot",
        "save",
        file.to_str().context("UTF-8")?,
    ])?;
    ensure!(save.success, "rampartctl snapshot save: {}", save.stderr);
    let good = std::fs::read(&file)?;
    snapshot_status(&file)?;

    let refused = |name: &str, bytes: &[u8], expected: &str| -> anyhow::Result<()> {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes)?;
        let path_text = path.to_str().context("UTF-8")?;
        let status = run_rampartctl(&["snapshot", "status", path_text])?;
        ensure!(
            !status.success && status.stderr.contains(expected),
            "status of the {name} file: expected {expected:?}, got {} {}",
            status.stdout,
            status.stderr
        );
        let data_dir = dir.path().join(format!("{name}.restored"));
        let restore = run_rampartctl(&[
            "snapshot",
            "restore",
            path_text,
            "--data-dir",
            data_dir.to_str().context("UTF-8")?,
        ])?;
        ensure!(
            !restore.success && restore.stderr.contains(expected),
            "restore of the {name} file: expected {expected:?}, got {} {}",
            restore.stdout,
            restore.stderr
        );
        ensure!(!data_dir.exists(), "a refused restore created {data_dir:?}");
        info!(
            name,
            "refused: {}",
            restore.stderr.lines().next().unwrap_or("")
        );
        Ok(())
    };

    info!("--- one byte changed in the middle");
    let mut damaged = good.clone();
    damaged[good.len() / 2] ^= 0x01;
    refused("damaged", &damaged, "is damaged: sha256 mismatch")?;

    info!("--- cut short, as by a copy that stopped");
    refused("truncated", &good[..good.len() * 2 / 3], "is truncated")?;
    Ok(())
}
