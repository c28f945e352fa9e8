//! A member stops in order on SIGTERM and SIGINT: it exits 0 and its data is intact.

use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use rampart_launcher::{free_url, send_signal};
use rampart_tests::{first_put, get, rampart_binary, wait_until};

async fn stops_cleanly_on(signal: &str) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (client_url, peer_url) = (free_url()?, free_url()?);
    let start = || {
        Command::new(rampart_binary()?)
            .arg(format!(
                "--data-dir={}",
                dir.path().join("m.rampart").display()
            ))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("spawning rampart")
    };
    let mut child = start()?;
    let client = first_put(&client_url, "k", "kept").await?;

    send_signal(child.id(), signal)?;
    let exit = wait_until("the member to exit", Duration::from_secs(30), || {
        let exited = child.try_wait().map_err(anyhow::Error::from);
        async move { exited }
    })
    .await?;
    assert!(
        exit.success(),
        "member exited with {exit} after SIG{signal}"
    );

    let mut child = start()?;
    let value = wait_until(
        "the restarted member to serve",
        Duration::from_secs(30),
        || {
            let mut client = client.clone();
            async move { Ok(get(&mut client, "k", true).await.ok()) }
        },
    )
    .await;
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(value?.as_deref(), Some("kept"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_member_in_order() -> anyhow::Result<()> {
    stops_cleanly_on("TERM").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_stops_the_member_in_order() -> anyhow::Result<()> {
    stops_cleanly_on("INT").await
}
