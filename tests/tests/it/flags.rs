//! etcd's command line: a member started with a production-style etcd flag set and `ETCD_*`
//! variables serves; unknown flags, values asking for what Rampart lacks and `ETCD_*`
//! variables shadowed by a flag are refused, naming them; an unknown `ETCD_*` variable is
//! logged, as etcd 3.4 does; ids equal those of a real etcd started with the same flags;
//! auto-compaction in both modes compacts what etcd would and keeps what etcd would; and
//! `--max-concurrent-streams` bounds a connection's calls and `--grpc-keepalive-*` closes a
//! connection that answers no ping.
//!
//! Each flag's parsing, and each accepted and refused value, is tested beside the table in
//! `rampart-server`'s `config.rs`; here are the effects.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use rampart_api::etcdserverpb as pb;
use rampart_api::etcdserverpb::kv_client::KvClient;
use rampart_api::etcdserverpb::watch_client::WatchClient;
use rampart_launcher::free_port;
use rampart_tests::{kv_client, put, rampart_binary, wait_until, TestCluster};
use tokio::time::Instant;
use tonic::transport::Channel;
use tracing::info;

/// How long a member may take to start serving.
const SERVE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a process that must refuse to start may take to exit.
const EXIT_DEADLINE: Duration = Duration::from_secs(30);

/// A process killed when dropped, so that a failing test leaves none behind.
struct Running {
    child: Child,
    log: PathBuf,
}

impl Running {
    /// Starts `program` with `args` and `env` in `dir`, its output appended to `log`.
    fn spawn(
        program: &Path,
        args: &[String],
        env: &[(&str, String)],
        dir: &Path,
        log: PathBuf,
    ) -> anyhow::Result<Running> {
        let file = std::fs::File::create(&log)?;
        let child = Command::new(program)
            .args(args)
            // The log lines checked are at info, which a RUST_LOG of the tests could hide.
            .env_remove("RUST_LOG")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("spawning {}", program.display()))?;
        Ok(Running { child, log })
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until a put through `url` succeeds; fails at once if the process exits.
    async fn wait_serving(&mut self, url: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + SERVE_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("exited with {status}; it printed:\n{}", self.output());
            }
            if let Ok(mut client) = kv_client(url).await {
                if put(&mut client, "serving", "yes").await.is_ok() {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "no answer on {url} in {SERVE_TIMEOUT:?}; it printed:\n{}",
                    self.output()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `rampart` with `args` and `env` to its exit (it must refuse to start); returns how it
/// exited and what it printed.
async fn refusal(args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<(ExitStatus, String)> {
    let dir = tempfile::tempdir()?;
    let mut all: Vec<String> = vec![
        format!("--data-dir={}", dir.path().join("m").display()),
        format!("--listen-client-urls=http://127.0.0.1:{}", free_port()?),
        format!("--listen-peer-urls=http://127.0.0.1:{}", free_port()?),
    ];
    all.extend(args.iter().map(|a| a.to_string()));
    let env: Vec<(&str, String)> = env.iter().map(|(k, v)| (*k, v.to_string())).collect();
    let mut process = Running::spawn(
        &rampart_binary()?,
        &all,
        &env,
        dir.path(),
        dir.path().join("out.log"),
    )?;
    let deadline = Instant::now() + EXIT_DEADLINE;
    loop {
        if let Some(status) = process.child.try_wait()? {
            return Ok((status, process.output()));
        }
        if Instant::now() >= deadline {
            bail!(
                "rampart {args:?} was expected to refuse to start; it printed:\n{}",
                process.output()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_production_etcd_command_line_and_etcd_variables_start_a_member() -> anyhow::Result<()> {
    rampart_tests::init_tracing();
    let dir = tempfile::tempdir()?;
    let (client_port, peer_port, metrics_port) = (free_port()?, free_port()?, free_port()?);
    // Host names, as etcd's units and manifests use them.
    let client = format!("http://localhost:{client_port}");
    let peer = format!("http://localhost:{peer_port}");
    let log_file = dir.path().join("etcd.log");
    let env: Vec<(&str, String)> = vec![
        ("ETCD_NAME", "infra0".into()),
        (
            "ETCD_DATA_DIR",
            dir.path().join("infra0.etcd").display().to_string(),
        ),
        ("ETCD_INITIAL_CLUSTER", format!("infra0={peer}")),
        ("ETCD_INITIAL_CLUSTER_STATE", "new".into()),
        ("ETCD_INITIAL_CLUSTER_TOKEN", "etcd-cluster-1".into()),
        ("ETCD_INITIAL_ADVERTISE_PEER_URLS", peer.clone()),
        ("ETCD_LISTEN_PEER_URLS", peer.clone()),
        ("ETCD_ENABLE_V2", "false".into()),
        ("ETCD_AUTO_COMPACTION_MODE", "periodic".into()),
        // Both set: RAMPART_* wins.
        ("ETCD_MAX_TXN_OPS", "3".into()),
        ("RAMPART_MAX_TXN_OPS", "5".into()),
        // Kubernetes sets this for a Service named etcd; etcd 3.4 logs it and starts.
        ("ETCD_SERVICE_HOST", "10.96.0.10".into()),
    ];
    let args: Vec<String> = [
        format!("--listen-client-urls={client}"),
        format!("--advertise-client-urls={client}"),
        format!("--listen-metrics-urls=http://127.0.0.1:{metrics_port}"),
        "--logger=zap".into(),
        "--log-level=info".into(),
        format!("--log-outputs=stderr,{}", log_file.display()),
        "--auto-compaction-retention=1".into(),
        "--quota-backend-bytes=8589934592".into(),
        "--grpc-keepalive-min-time=5s".into(),
        "--grpc-keepalive-interval=2h".into(),
        "--grpc-keepalive-timeout=20s".into(),
        "--max-concurrent-streams=1000".into(),
        "--snapshot-count=10000".into(),
        "--heartbeat-interval=100".into(),
        "--election-timeout=1000".into(),
        "--max-snapshots=5".into(),
        "--max-wals=5".into(),
        "--enable-pprof=false".into(),
        "--experimental-initial-corrupt-check=true".into(),
        "--metrics=basic".into(),
        "--strict-reconfig-check=true".into(),
        "--pre-vote=true".into(),
        "--initial-election-tick-advance=true".into(),
        "--experimental-enable-lease-checkpoint=true".into(),
        "--experimental-backend-bbolt-freelist-type=map".into(),
        "--experimental-compaction-batch-limit=1000".into(),
        "--experimental-warning-apply-duration=100ms".into(),
        "--auth-token=simple".into(),
    ]
    .into();
    info!("--- rampart {args:?} with {env:?}");
    let mut member = Running::spawn(
        &rampart_binary()?,
        &args,
        &env,
        dir.path(),
        dir.path().join("stderr.log"),
    )?;
    let url = format!("http://127.0.0.1:{client_port}");
    member.wait_serving(&url).await?;

    info!("--- the environment named it, and RAMPART_MAX_TXN_OPS won over ETCD_MAX_TXN_OPS");
    let channel = Channel::from_shared(url.clone())?.connect().await?;
    let members = rampart_api::etcdserverpb::cluster_client::ClusterClient::new(channel.clone())
        .member_list(pb::MemberListRequest::default())
        .await?
        .into_inner()
        .members;
    ensure!(
        members.len() == 1 && members[0].name == "infra0",
        "expected the one member infra0 (ETCD_NAME), got {members:?}"
    );
    ensure!(
        members[0].peer_ur_ls == [peer.clone()],
        "expected the peer URL {peer} (ETCD_INITIAL_ADVERTISE_PEER_URLS), got {members:?}"
    );
    let mut kv = KvClient::new(channel);
    let txn = |ops: usize| pb::TxnRequest {
        success: (0..ops)
            .map(|i| pb::RequestOp {
                request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                    key: format!("txn/{i}").into_bytes(),
                    value: b"v".to_vec(),
                    ..Default::default()
                })),
            })
            .collect(),
        ..Default::default()
    };
    kv.txn(txn(5))
        .await
        .context("a txn of 5 ops (RAMPART_MAX_TXN_OPS=5)")?;
    let refused = kv.txn(txn(6)).await;
    ensure!(
        refused
            .as_ref()
            .is_err_and(|s| s.message() == "etcdserver: too many operations in txn request"),
        "a txn of 6 ops should exceed RAMPART_MAX_TXN_OPS=5: {refused:?}"
    );

    info!("--- the metrics URL serves, and the log file has what stderr has");
    let metrics = tokio::net::TcpStream::connect(("127.0.0.1", metrics_port)).await;
    ensure!(
        metrics.is_ok(),
        "--listen-metrics-urls does not listen: {metrics:?}"
    );
    let logged = std::fs::read_to_string(&log_file)
        .with_context(|| format!("--log-outputs wrote no {}", log_file.display()))?;
    for line in [
        "rampart member started",
        "--logger=zap is accepted without effect",
        "--max-wals=5 is accepted without effect",
        "--grpc-keepalive-min-time=5s is accepted without effect",
        "unrecognized environment variable ETCD_SERVICE_HOST=10.96.0.10",
    ] {
        ensure!(
            logged.contains(line),
            "the log lacks {line:?}; it holds:\n{logged}"
        );
    }
    ensure!(
        member.output().contains("rampart member started"),
        "stderr lacks the start line; it holds:\n{}",
        member.output()
    );
    Ok(())
}

/// Flags, environment variables, and the texts the refusal must print.
type RefusalCase = (
    &'static [&'static str],
    &'static [(&'static str, &'static str)],
    &'static [&'static str],
);

#[tokio::test(flavor = "multi_thread")]
async fn unknown_and_unsupported_flags_and_shadowed_variables_are_refused() -> anyhow::Result<()> {
    rampart_tests::init_tracing();
    let cases: [RefusalCase; 5] = [
        (&["--no-such-flag=1"], &[], &["--no-such-flag"]),
        (
            &["--enable-v2=true"],
            &[],
            &["--enable-v2=true is refused", "v3 API only"],
        ),
        (
            &["--auth-token=jwt,pub-key=/nonexistent/a.pem,sign-method=RS256"],
            &[],
            &["--auth-token", "pub-key \"/nonexistent/a.pem\""],
        ),
        (
            &[],
            &[("ETCD_FORCE_NEW_CLUSTER", "true")],
            &["--force-new-cluster=true is refused"],
        ),
        (
            &["--name=m1"],
            &[("ETCD_NAME", "m2")],
            &["conflicting environment variable \"ETCD_NAME\" is shadowed"],
        ),
    ];
    for (args, env, expected) in cases {
        info!("--- rampart {args:?} with {env:?}");
        let (status, printed) = refusal(args, env).await?;
        ensure!(
            !status.success(),
            "rampart {args:?} {env:?} started; it printed:\n{printed}"
        );
        for text in expected {
            ensure!(
                printed.contains(text),
                "rampart {args:?} {env:?} should say {text:?}; it printed:\n{printed}"
            );
        }
    }
    Ok(())
}

/// The `etcd` on `PATH` (Debian's etcd-server, 3.4).
fn etcd_path() -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("etcd"))
        .find(|candidate| candidate.is_file())
        .context("etcd is not on PATH: this test compares with the real etcd 3.4 (apt-get install etcd-server)")
}

/// `(cluster id, member id)` as `etcdctl member list -w json` shows them at `url`, once it
/// answers.
async fn member_list_ids(url: &str) -> anyhow::Result<(u64, u64)> {
    let url = url.to_string();
    wait_until("etcdctl member list to answer", SERVE_TIMEOUT, || {
        let url = url.clone();
        async move {
            let output = crate::common::spawn_etcdctl(&[url], &["member", "list", "-w", "json"])?
                .wait_with_output()
                .await?;
            if !output.status.success() {
                bail!("etcdctl: {}", String::from_utf8_lossy(&output.stderr));
            }
            let json: serde_json::Value = serde_json::from_slice(&output.stdout)?;
            let cluster = json["header"]["cluster_id"]
                .as_u64()
                .context("no cluster_id")?;
            let member = json["members"][0]["ID"].as_u64().context("no member ID")?;
            Ok(Some((cluster, member)))
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn ids_equal_those_of_etcd_started_with_the_same_flags() -> anyhow::Result<()> {
    rampart_tests::init_tracing();
    let dir = tempfile::tempdir()?;
    let (client_port, peer_port) = (free_port()?, free_port()?);
    let url = format!("http://127.0.0.1:{client_port}");
    let flags = |data_dir: &str| -> Vec<String> {
        vec![
            "--name=ids".into(),
            format!("--data-dir={}", dir.path().join(data_dir).display()),
            format!("--listen-client-urls={url}"),
            format!("--advertise-client-urls={url}"),
            format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"),
            format!("--initial-advertise-peer-urls=http://localhost:{peer_port}"),
            format!("--initial-cluster=ids=http://localhost:{peer_port}"),
            "--initial-cluster-token=ids-test-token".into(),
        ]
    };
    info!("--- etcd {:?}", flags("etcd"));
    let etcd_ids = {
        let mut etcd = Running::spawn(
            &etcd_path()?,
            &flags("etcd"),
            &[],
            dir.path(),
            dir.path().join("etcd.out"),
        )?;
        let ids = member_list_ids(&url).await;
        if ids.is_err() {
            info!("etcd printed:\n{}", etcd.output());
        }
        etcd.child.kill()?;
        etcd.child.wait()?;
        ids?
    };
    info!("--- rampart with the same flags");
    let mut rampart = Running::spawn(
        &rampart_binary()?,
        &flags("rampart"),
        &[],
        dir.path(),
        dir.path().join("rampart.out"),
    )?;
    rampart.wait_serving(&url).await?;
    let rampart_ids = member_list_ids(&url).await?;
    ensure!(
        rampart_ids == etcd_ids,
        "etcd has cluster {:016x} member {:016x}, rampart cluster {:016x} member {:016x}",
        etcd_ids.0,
        etcd_ids.1,
        rampart_ids.0,
        rampart_ids.1
    );
    Ok(())
}

/// The compact revision of each member of `cluster`.
fn compact_revisions(cluster: &TestCluster) -> Vec<i64> {
    cluster
        .members
        .iter()
        .map(|m| {
            m.running
                .as_ref()
                .map_or(-1, |r| r.node.mvcc().compact_revision())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn periodic_auto_compaction_keeps_the_retention_and_compacts_the_rest() -> anyhow::Result<()>
{
    const PERIOD: Duration = Duration::from_secs(2);
    const WRITING: Duration = Duration::from_secs(9);
    let cluster = TestCluster::start_with(1, |raw| {
        raw.auto_compaction_mode = Some("periodic".into());
        raw.auto_compaction_retention = Some("2s".into());
    })
    .await?;
    let mut client = cluster.client(0).await?;
    let started = Instant::now();
    // (when the put was sent, the revision it made)
    let mut writes: Vec<(Instant, i64)> = Vec::new();
    // (when it was read, the compact revision)
    let mut seen: Vec<(Instant, i64)> = Vec::new();
    while started.elapsed() < WRITING {
        let sent = Instant::now();
        let revision = put(&mut client, "periodic", &format!("{}", writes.len())).await?;
        writes.push((sent, revision));
        seen.push((Instant::now(), compact_revisions(&cluster)[0]));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    info!(writes = writes.len(), last = ?seen.last(), "--- written");
    // Kept: whatever was written within the retention of a look at the compact revision.
    for &(looked, compacted) in &seen {
        for &(sent, revision) in &writes {
            ensure!(
                sent + PERIOD <= looked || revision > compacted,
                "revision {revision}, written {:?} before the compact revision {compacted} \
                 was seen, is within the {PERIOD:?} retention but compacted",
                looked.duration_since(sent)
            );
        }
    }
    // Compacted: one period after start, then every period, the revision sampled a period
    // (and at most one sample interval more) before. Allow one more period for slow machines.
    let (end, last) = *seen.last().context("no look")?;
    let due = writes
        .iter()
        .filter(|(sent, _)| *sent + 3 * PERIOD + PERIOD / 5 <= end)
        .map(|&(_, revision)| revision)
        .max()
        .context("no write old enough")?;
    ensure!(
        last >= due,
        "the compact revision is {last} at the end, but revision {due} is older than the \
         retention and two compaction intervals"
    );
    let distinct: std::collections::BTreeSet<i64> =
        seen.iter().map(|&(_, c)| c).filter(|&c| c > 0).collect();
    ensure!(
        distinct.len() >= 2,
        "expected a compaction every {PERIOD:?}, saw the compact revisions {distinct:?}"
    );
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn revision_auto_compaction_keeps_the_last_revisions_on_every_member() -> anyhow::Result<()> {
    const RETENTION: i64 = 10;
    let cluster = TestCluster::start_with(3, |raw| {
        raw.auto_compaction_mode = Some("revision".into());
        raw.auto_compaction_retention = Some(RETENTION.to_string());
        raw.test_only_revision_compaction_interval = Some("200ms".into());
    })
    .await?;
    cluster.wait_for_leader(Duration::from_secs(30)).await?;
    let mut client = cluster.client(0).await?;
    for round in 0..2 {
        let mut last = 0;
        for i in 0..25 {
            last = put(&mut client, "revision", &format!("{round}.{i}")).await?;
        }
        let want = last - RETENTION;
        info!(
            last,
            want, "--- written; waiting for every member to compact"
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let found = compact_revisions(&cluster);
            // Never more than etcd would: the last RETENTION revisions stay.
            ensure!(
                found.iter().all(|&c| c <= want),
                "compacted past {want}: {found:?}"
            );
            if found.iter().all(|&c| c == want) {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "the members did not all compact at {want}: {found:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Readable at the compact revision, refused below it.
        let at = |revision: i64| pb::RangeRequest {
            key: b"revision".to_vec(),
            revision,
            ..Default::default()
        };
        client
            .range(at(want))
            .await
            .context("a read at the compact revision")?;
        let refused = client.range(at(want - 1)).await;
        ensure!(
            refused.as_ref().is_err_and(
                |s| s.message() == "etcdserver: mvcc: required revision has been compacted"
            ),
            "a read below the compact revision: {refused:?}"
        );
    }
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn max_concurrent_streams_bounds_the_calls_of_one_connection() -> anyhow::Result<()> {
    let cluster = TestCluster::start_with(1, |raw| raw.max_concurrent_streams = Some(1)).await?;
    cluster.wait_for_leader(Duration::from_secs(30)).await?;
    let url = cluster.members[0].client_url.clone();
    let channel = Channel::from_shared(url.clone())?.connect().await?;
    // A watch stream holds the connection's one stream.
    let create = pb::WatchRequest {
        request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
            pb::WatchCreateRequest {
                key: b"w".to_vec(),
                ..Default::default()
            },
        )),
    };
    let requests =
        futures::StreamExt::chain(futures::stream::iter([create]), futures::stream::pending());
    let mut watch = WatchClient::new(channel.clone())
        .watch(requests)
        .await?
        .into_inner();
    let created = watch.message().await?.context("no watch response")?;
    ensure!(created.created, "the watch was not created: {created:?}");
    let mut same = KvClient::new(channel);
    let blocked = tokio::time::timeout(
        Duration::from_secs(1),
        same.range(pb::RangeRequest {
            key: b"w".to_vec(),
            serializable: true,
            ..Default::default()
        }),
    )
    .await;
    ensure!(
        blocked.is_err(),
        "a second call on the connection ran beside the watch: {blocked:?}"
    );
    // Another connection has a stream of its own.
    let mut other = kv_client(&url).await?;
    other
        .range(pb::RangeRequest {
            key: b"w".to_vec(),
            serializable: true,
            ..Default::default()
        })
        .await
        .context("a call on another connection")?;
    drop(watch);
    cluster.shutdown().await;
    Ok(())
}

/// Opens an HTTP/2 connection to `url` that never answers the server's pings, and waits at
/// most `within` for the server to close it; whether it did.
async fn closed_without_ping_answers(url: &str, within: Duration) -> anyhow::Result<bool> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = url.trim_start_matches("http://");
    let mut socket = tokio::net::TcpStream::connect(addr).await?;
    socket
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await?;
    // An empty SETTINGS frame: length 0, type 4, no flags, stream 0.
    socket.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await?;
    let until_closed = async {
        let mut buf = [0u8; 1024];
        loop {
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    Ok(tokio::time::timeout(within, until_closed).await.is_ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_keepalive_closes_connections_that_do_not_answer_pings() -> anyhow::Result<()> {
    let pinging = TestCluster::start_with(1, |raw| {
        raw.grpc_keepalive_interval = Some("300ms".into());
        raw.grpc_keepalive_timeout = Some("300ms".into());
    })
    .await?;
    pinging.wait_for_leader(Duration::from_secs(30)).await?;
    let url = pinging.members[0].client_url.clone();
    ensure!(
        closed_without_ping_answers(&url, Duration::from_secs(10)).await?,
        "a connection that answers no ping was still open 10 s after a 300ms keepalive"
    );
    pinging.shutdown().await;

    // With etcd's defaults (a ping after 2 hours idle) the same connection stays.
    let quiet = TestCluster::start(1).await?;
    quiet.wait_for_leader(Duration::from_secs(30)).await?;
    let url = quiet.members[0].client_url.clone();
    ensure!(
        !closed_without_ping_answers(&url, Duration::from_secs(2)).await?,
        "the connection was closed within 2 s with etcd's default keepalive"
    );
    quiet.shutdown().await;
    Ok(())
}
