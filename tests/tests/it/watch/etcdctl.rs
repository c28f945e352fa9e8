//! `etcdctl watch`, the real etcdctl 3.4, against three `rampart` processes.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{ensure, Context};
use rampart_tests::{put, ProcessCluster};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::time::Instant;
use tracing::info;

use super::{delete, RESPONSE_WAIT};
use crate::common::etcdctl_path;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_watch_prints_each_event() -> anyhow::Result<()> {
    rampart_tests::init_tracing();
    let etcdctl = etcdctl_path()?;
    let cluster = ProcessCluster::start(3).await?;
    let urls = cluster.client_urls();

    info!("--- etcdctl watch --prefix foo over all three endpoints");
    let mut child = tokio::process::Command::new(&etcdctl)
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", urls.join(",")))
        .arg("--dial-timeout=5s")
        .args(["watch", "--prefix", "foo"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("spawning etcdctl watch")?;
    let mut lines = BufReader::new(child.stdout.take().context("no stdout")?).lines();

    info!("--- put keys until the watch prints the first one (it may start after it)");
    let mut kv = rampart_tests::kv_client(&urls[0]).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let first = loop {
        ensure!(Instant::now() < deadline, "etcdctl watch printed nothing");
        put(&mut kv, "foo/ready", "yes").await?;
        if let Ok(line) = tokio::time::timeout(Duration::from_millis(500), lines.next_line()).await
        {
            break line?.context("etcdctl watch exited")?;
        }
    };
    assert_eq!(first, "PUT");
    // Drain what the readiness puts printed, up to the next quiet moment.
    let mut rest = vec![first];
    while let Ok(line) = tokio::time::timeout(Duration::from_millis(500), lines.next_line()).await {
        rest.push(line?.context("etcdctl watch exited")?);
    }
    ensure!(
        rest.chunks(3).all(|c| c == ["PUT", "foo/ready", "yes"]),
        "unexpected output: {rest:?}"
    );

    info!("--- a put, an unwatched put, and a delete");
    put(&mut kv, "foo1", "bar1").await?;
    put(&mut kv, "other", "x").await?;
    delete(&mut kv, "foo1", "").await?;
    let mut printed = Vec::new();
    for _ in 0..5 {
        let line = tokio::time::timeout(RESPONSE_WAIT, lines.next_line())
            .await
            .context("etcdctl watch printed nothing")??
            .context("etcdctl watch exited")?;
        printed.push(line);
    }
    assert_eq!(printed, ["PUT", "foo1", "bar1", "DELETE", "foo1"]);
    child.kill().await?;
    Ok(())
}
