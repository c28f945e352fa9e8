//! Durability with real processes: members killed with SIGKILL (no shutdown, no flush) and
//! restarted on their data directories must keep every acknowledged write; and a node refuses to
//! start on bad settings or on another cluster's data.
//!
//! A write counts as acknowledged only when the client got a success. A write that failed or
//! timed out has an unknown outcome: it may or may not have been committed, so the checks accept
//! either for it (but never another value).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use rampart_api::etcdserverpb as pb;
use rampart_api::etcdserverpb::kv_client::KvClient;
use rampart_launcher::free_url;
use rampart_tests::{kv_client, put, rampart_binary, wait_until, ProcessCluster};
use tokio::time::Instant;
use tonic::transport::Channel;
use tracing::info;

/// How long one write may keep being retried (through an election) before it is given up.
const WRITE_DEADLINE: Duration = Duration::from_secs(30);
/// How long members may take to converge after a restart.
const CONVERGE: Duration = Duration::from_secs(60);
/// How long a node that must refuse to start may take to exit.
const EXIT_DEADLINE: Duration = Duration::from_secs(30);

/// What the test knows about the writes it made.
#[derive(Default)]
struct Ledger {
    /// Keys whose last write the cluster acknowledged: they must hold exactly this value.
    acknowledged: BTreeMap<String, String>,
    /// Keys whose last write was given up with an unknown outcome: any of these values, or
    /// absence when `may_be_absent`.
    unknown: BTreeMap<String, Uncertain>,
}

/// What a key may hold after a write with an unknown outcome.
struct Uncertain {
    values: Vec<String>,
    may_be_absent: bool,
}

impl Ledger {
    /// Writes `key = value` through `client`, retrying failures until [`WRITE_DEADLINE`]; the
    /// value is the same on every attempt, so a retry of a write that did commit changes nothing.
    async fn write(&mut self, client: &mut KvClient<Channel>, key: String, value: String) {
        let deadline = Instant::now() + WRITE_DEADLINE;
        loop {
            match put(client, &key, &value).await {
                Ok(_) => {
                    self.unknown.remove(&key);
                    self.acknowledged.insert(key, value);
                    return;
                }
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!("write of {key} failed, retrying: {e:#}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => {
                    tracing::warn!("write of {key} given up, outcome unknown: {e:#}");
                    let previous = self.acknowledged.remove(&key);
                    let entry = self.unknown.entry(key).or_insert(Uncertain {
                        values: vec![],
                        may_be_absent: previous.is_none(),
                    });
                    entry.values.extend(previous);
                    entry.values.push(value);
                    return;
                }
            }
        }
    }

    /// Compares the keys a member holds with the ledger; `None` if they agree.
    fn mismatch(&self, found: &BTreeMap<String, String>) -> Option<String> {
        for (key, value) in &self.acknowledged {
            match found.get(key) {
                Some(v) if v == value => {}
                other => return Some(format!("acknowledged {key}={value}, found {other:?}")),
            }
        }
        for (key, uncertain) in &self.unknown {
            match found.get(key) {
                None if uncertain.may_be_absent => {}
                Some(v) if uncertain.values.contains(v) => {}
                other => {
                    return Some(format!(
                        "{key} may hold one of {:?}, found {other:?}",
                        uncertain.values
                    ))
                }
            }
        }
        found
            .keys()
            .find(|key| !self.acknowledged.contains_key(*key) && !self.unknown.contains_key(*key))
            .map(|key| format!("found {key}, which was never written"))
    }
}

/// Every key under `prefix` on the member behind `client`, read serializably, so that it is
/// that member's own state, and the revision it answered at.
async fn local_keys(
    client: &mut KvClient<Channel>,
    prefix: &str,
) -> anyhow::Result<(BTreeMap<String, String>, i64)> {
    let response = local_range(client, prefix, 0).await?;
    let revision = response.header.context("no header")?.revision;
    let kvs = response
        .kvs
        .into_iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(&kv.key).into_owned(),
                String::from_utf8_lossy(&kv.value).into_owned(),
            )
        })
        .collect();
    Ok((kvs, revision))
}

/// Waits until every member of `cluster` holds exactly what `ledger` allows under `prefix`, then
/// until all report the same revision.
async fn wait_converged(
    cluster: &ProcessCluster,
    ledger: &Ledger,
    prefix: &str,
) -> anyhow::Result<()> {
    for member in &cluster.members {
        let url = member.client_url.clone();
        wait_until(
            &format!("{} to serve every acknowledged write", member.name),
            CONVERGE,
            || {
                let url = url.clone();
                async move {
                    let mut client = kv_client(&url).await?;
                    let (found, _) = local_keys(&mut client, prefix).await?;
                    match ledger.mismatch(&found) {
                        None => Ok(Some(())),
                        Some(problem) => bail!("{problem}"),
                    }
                }
            },
        )
        .await?;
    }
    let urls = cluster.client_urls();
    wait_until("every member to report the same revision", CONVERGE, || {
        let urls = urls.clone();
        async move {
            let mut revisions = Vec::new();
            for url in &urls {
                let mut client = kv_client(url).await?;
                revisions.push(local_keys(&mut client, prefix).await?.1);
            }
            ensure!(
                revisions.iter().all(|&r| r == revisions[0]),
                "revisions differ: {revisions:?}"
            );
            Ok(Some(()))
        }
    })
    .await
}

/// One client per member.
async fn connect_all(cluster: &ProcessCluster) -> anyhow::Result<Vec<KvClient<Channel>>> {
    let mut clients = Vec::new();
    for member in &cluster.members {
        clients.push(kv_client(&member.client_url).await?);
    }
    Ok(clients)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_killing_the_leader() -> anyhow::Result<()> {
    rampart_tests::init_tracing();
    info!("--- start 3 processes");
    let mut cluster = ProcessCluster::start(3).await?;
    let mut clients = connect_all(&cluster).await?;
    let mut ledger = Ledger::default();

    info!("--- 300 writes through every member in turn");
    for i in 0..300 {
        let member = i % 3;
        ledger
            .write(
                &mut clients[member],
                format!("key/{i:04}"),
                format!("first-{i}"),
            )
            .await;
    }
    ensure!(
        ledger.unknown.is_empty(),
        "writes failed with every member up: {:?}",
        ledger.unknown.keys().collect::<Vec<_>>()
    );

    info!("--- find the leader and kill it with SIGKILL");
    let leader = cluster.leader_index(&[0, 1, 2]).await?;
    info!("leader is {}", cluster.members[leader].name);
    cluster.kill(leader)?;
    let survivors: Vec<usize> = (0..3).filter(|&i| i != leader).collect();

    info!("--- 200 more writes through the two survivors, through the election");
    for i in 300..500 {
        let member = survivors[i % 2];
        // Half the keys are new, half overwrite keys written before the kill.
        let key = if i % 2 == 0 {
            format!("key/{i:04}")
        } else {
            format!("key/{:04}", i - 300)
        };
        ledger
            .write(&mut clients[member], key, format!("second-{i}"))
            .await;
    }
    let new_leader = cluster.leader_index(&survivors).await?;
    assert_ne!(new_leader, leader, "a killed member cannot lead");

    info!("--- restart the killed member on its data directory");
    cluster.restart(leader).await?;

    info!("--- every member serves every acknowledged write, at the same revision");
    wait_converged(&cluster, &ledger, "key/").await?;
    ensure!(
        ledger.unknown.is_empty(),
        "two of three members must stay writable, but {} writes failed for {WRITE_DEADLINE:?}: {:?}",
        ledger.unknown.len(),
        ledger.unknown.keys().collect::<Vec<_>>()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_killing_every_member() -> anyhow::Result<()> {
    rampart_tests::init_tracing();
    info!("--- start 3 processes and write 200 keys through every member in turn");
    let mut cluster = ProcessCluster::start(3).await?;
    let mut clients = connect_all(&cluster).await?;
    let mut ledger = Ledger::default();
    for i in 0..200 {
        ledger
            .write(&mut clients[i % 3], format!("all/{i:04}"), format!("v{i}"))
            .await;
    }
    ensure!(
        ledger.unknown.is_empty(),
        "writes failed with every member up"
    );

    info!("--- kill -9 all three, then restart all three");
    for i in 0..3 {
        cluster.kill(i)?;
    }
    for i in 0..3 {
        cluster.restart(i).await?;
    }
    cluster.leader_index(&[0, 1, 2]).await?;

    info!("--- every member serves every acknowledged write");
    wait_converged(&cluster, &ledger, "all/").await?;

    info!("--- the restarted cluster takes new writes and reads them linearizably");
    // Fresh channels: the old ones were connected to the killed processes.
    let mut clients = connect_all(&cluster).await?;
    for (i, client) in clients.iter_mut().enumerate() {
        ledger
            .write(client, format!("all/after-{i}"), format!("after-{i}"))
            .await;
    }
    ensure!(ledger.unknown.is_empty(), "writes failed after the restart");
    for (i, client) in clients.iter_mut().enumerate() {
        for j in 0..3 {
            let value = rampart_tests::get(client, &format!("all/after-{j}"), false).await?;
            assert_eq!(
                value,
                Some(format!("after-{j}")),
                "member {i} reading after-{j}"
            );
        }
    }
    Ok(())
}

/// Runs `rampart` with `args` in `cwd` and waits, at most [`EXIT_DEADLINE`], for it to exit.
fn run_to_exit(args: &[String], cwd: &Path) -> anyhow::Result<Output> {
    let mut child = Command::new(rampart_binary()?)
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawning rampart")?;
    let deadline = std::time::Instant::now() + EXIT_DEADLINE;
    loop {
        if child.try_wait()?.is_some() {
            return Ok(child.wait_with_output()?);
        }
        if std::time::Instant::now() >= deadline {
            child.kill()?;
            let output = child.wait_with_output()?;
            bail!(
                "rampart {args:?} was expected to exit but still ran after {EXIT_DEADLINE:?}; its output:\n{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `rampart` with `args` in `cwd` to its exit, on a blocking thread (see [`run_to_exit`]);
/// returns how it exited and everything it printed, standard output first.
async fn exit_of(args: Vec<String>, cwd: PathBuf) -> anyhow::Result<(ExitStatus, String)> {
    let output = tokio::task::spawn_blocking(move || run_to_exit(&args, &cwd)).await??;
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok((output.status, printed))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_directory_from_another_cluster_is_refused() -> anyhow::Result<()> {
    rampart_tests::init_tracing();
    info!("--- make a data directory with a one-member cluster, then stop it");
    let mut cluster = ProcessCluster::start(1).await?;
    let client = kv_client(&cluster.members[0].client_url).await?;
    wait_until("the member to take a write", CONVERGE, || {
        let mut client = client.clone();
        async move { Ok(put(&mut client, "owned", "yes").await.ok()) }
    })
    .await?;
    cluster.kill(0)?;
    let data_dir = cluster.members[0].data_dir.clone();
    let peer_url = free_url()?;

    info!("--- start a node of another cluster (another token) on that directory");
    let args = vec![
        "--name=p0".to_string(),
        format!("--data-dir={}", data_dir.display()),
        format!("--listen-client-urls={}", free_url()?),
        format!("--listen-peer-urls={peer_url}"),
        format!("--initial-cluster=p0={peer_url}"),
        "--initial-cluster-token=some-other-cluster".to_string(),
    ];
    let (status, printed) = exit_of(args, cluster.dir.path().to_path_buf()).await?;
    ensure!(
        !status.success(),
        "rampart started on another cluster's data directory; it printed:\n{printed}"
    );
    ensure!(
        printed.contains(&data_dir.display().to_string()),
        "the refusal must name the data directory {}; rampart printed:\n{printed}",
        data_dir.display()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_initial_cluster_state_is_refused() -> anyhow::Result<()> {
    rampart_tests::init_tracing();
    let dir = tempfile::tempdir()?;
    let args = vec![
        "--initial-cluster-state=maybe".to_string(),
        format!("--data-dir={}", dir.path().join("node").display()),
        format!("--listen-client-urls={}", free_url()?),
        format!("--listen-peer-urls={}", free_url()?),
    ];
    info!("--- rampart {args:?}");
    let (status, printed) = exit_of(args, dir.path().to_path_buf()).await?;
    ensure!(
        !status.success(),
        "rampart accepted --initial-cluster-state=maybe; it printed:\n{printed}"
    );
    ensure!(
        printed.contains("--initial-cluster-state"),
        "the refusal must name the flag --initial-cluster-state; rampart printed:\n{printed}"
    );
    ensure!(
        printed.contains("maybe"),
        "the refusal should quote the bad value; rampart printed:\n{printed}"
    );
    Ok(())
}

/// Puts `keys` under `prefix` with `value`, up to 100 to a txn, through `client`; returns the
/// revision of the last txn.
async fn put_all(
    client: &mut KvClient<Channel>,
    keys: &[String],
    value: &str,
) -> anyhow::Result<i64> {
    let mut revision = 0;
    for chunk in keys.chunks(100) {
        let success = chunk
            .iter()
            .map(|key| pb::RequestOp {
                request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                    key: key.as_bytes().to_vec(),
                    value: value.as_bytes().to_vec(),
                    ..Default::default()
                })),
            })
            .collect();
        let response = client
            .txn(pb::TxnRequest {
                success,
                ..Default::default()
            })
            .await?
            .into_inner();
        revision = response.header.context("no header")?.revision;
    }
    Ok(revision)
}

/// The keys under `prefix` (not empty) at `revision` (0: the latest) on the member behind
/// `client`, read serializably, so that it is that member's own state.
async fn local_range(
    client: &mut KvClient<Channel>,
    prefix: &str,
    revision: i64,
) -> Result<pb::RangeResponse, tonic::Status> {
    let mut range_end = prefix.as_bytes().to_vec();
    let Some(last) = range_end.last_mut() else {
        return Err(tonic::Status::invalid_argument("empty prefix"));
    };
    *last += 1;
    Ok(client
        .range(pb::RangeRequest {
            key: prefix.as_bytes().to_vec(),
            range_end,
            revision,
            serializable: true,
            ..Default::default()
        })
        .await?
        .into_inner())
}

/// Every key, value and mod revision under `prefix` at `revision` on the member behind
/// `client`, from its own state.
async fn local_keys_at(
    client: &mut KvClient<Channel>,
    prefix: &str,
    revision: i64,
) -> Result<Vec<(Vec<u8>, Vec<u8>, i64)>, tonic::Status> {
    let response = local_range(client, prefix, revision).await?;
    Ok(response
        .kvs
        .into_iter()
        .map(|kv| (kv.key, kv.value, kv.mod_revision))
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_killed_during_a_background_compaction_serves_the_same_history(
) -> anyhow::Result<()> {
    rampart_tests::init_tracing();
    info!("--- start 3 processes; write 1,500 keys three times over, deleting some in between");
    let mut cluster = ProcessCluster::start(3).await?;
    let leader = cluster.leader_index(&[0, 1, 2]).await?;
    let victim = (leader + 1) % 3;
    let mut clients = connect_all(&cluster).await?;
    let keys: Vec<String> = (0..1500).map(|i| format!("c/{i:05}")).collect();
    put_all(&mut clients[leader], &keys, "first").await?;
    for key in keys.iter().step_by(5) {
        clients[leader]
            .delete_range(pb::DeleteRangeRequest {
                key: key.as_bytes().to_vec(),
                ..Default::default()
            })
            .await?;
    }
    let middle = put_all(&mut clients[leader], &keys[..700], "second").await?;
    let last = put_all(&mut clients[leader], &keys, "third").await?;

    info!("--- compact at {middle} through member {victim}, then kill -9 it at once");
    clients[victim]
        .compact(pb::CompactionRequest {
            revision: middle,
            physical: false,
        })
        .await?;
    cluster.kill(victim)?;

    info!("--- restart it: it finishes the compaction and serves what the others serve");
    cluster.restart(victim).await?;
    let mut clients = connect_all(&cluster).await?;
    // A physical compaction one revision on answers once the restarted member's history is
    // compacted past both.
    tokio::time::timeout(
        Duration::from_secs(30),
        clients[victim].compact(pb::CompactionRequest {
            revision: middle + 1,
            physical: true,
        }),
    )
    .await
    .context("no answer to a physical compaction within 30 s")??;
    for revision in [middle + 1, middle + 2, last - 1, last] {
        let mut answers = Vec::new();
        for client in clients.iter_mut() {
            answers.push(local_keys_at(client, "c/", revision).await?);
        }
        ensure!(
            answers.iter().all(|a| a == &answers[0]),
            "at revision {revision}, the members disagree (sizes {:?})",
            answers.iter().map(Vec::len).collect::<Vec<_>>()
        );
        ensure!(
            !answers[0].is_empty(),
            "nothing under c/ at revision {revision}"
        );
    }
    let below = local_keys_at(&mut clients[victim], "c/", middle).await;
    ensure!(
        below.is_err_and(|s| s.message() == "etcdserver: mvcc: required revision has been compacted"),
        "a read below the compact revision must be refused"
    );
    Ok(())
}
