//! A member whose storage stalls exits (`--storage-stall-timeout`) instead of staying frozen,
//! and, started again, serves what it had.

use std::fs::OpenOptions;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use rampart_crashfs::CrashFs;
use rampart_launcher::free_url;
use rampart_tests::{first_put, get, put, rampart_binary, wait_until};

/// The member's limit: short, so that the test is quick; far above what a write on a working
/// (even a loaded) disk takes.
const STALL_TIMEOUT: &str = "3s";

/// The member's process, killed when dropped, whatever the test's outcome.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(data_dir: &Path, client_url: &str, peer_url: &str, log: &Path) -> anyhow::Result<Process> {
    let log = OpenOptions::new().create(true).append(true).open(log)?;
    Command::new(rampart_binary()?)
        .arg(format!("--data-dir={}", data_dir.display()))
        .arg(format!("--listen-client-urls={client_url}"))
        .arg(format!("--listen-peer-urls={peer_url}"))
        .arg(format!("--storage-stall-timeout={STALL_TIMEOUT}"))
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .spawn()
        .map(Process)
        .context("spawning rampart")
}

#[tokio::test]
async fn a_member_whose_disk_freezes_exits_and_serves_its_data_when_started_again(
) -> anyhow::Result<()> {
    if !rampart_crashfs::fuse_available() {
        println!("SKIPPED: /dev/fuse is missing, so no disk can be frozen here");
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let (backing, data_dir) = (dir.path().join("disk"), dir.path().join("m.rampart"));
    std::fs::create_dir(&backing)?;
    std::fs::create_dir(&data_dir)?;
    // Dropped last: thawed and unmounted once the processes using it are gone.
    let disk = CrashFs::mount(&backing, &data_dir)?;
    let log = dir.path().join("member.log");
    let (client_url, peer_url) = (free_url()?, free_url()?);

    let mut child = start(&data_dir, &client_url, &peer_url, &log)?;
    let client = first_put(&client_url, "k", "kept").await?;

    // The disk stops answering; the next write waits on it, and the member gives up.
    disk.freeze();
    let stuck_write = tokio::spawn({
        let mut client = client.clone();
        async move { put(&mut client, "k", "written while frozen").await }
    });
    let stalled = wait_until(
        "the member to report its stall",
        Duration::from_secs(60),
        || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            async move {
                Ok(text
                    .lines()
                    .find(|l| l.contains("storage stalled"))
                    .map(str::to_owned))
            }
        },
    )
    .await;
    // The process is aborting, but its threads waiting on the disk cannot end before it
    // answers: as with a real disk, they leave once it thaws.
    disk.thaw();
    let stalled = stalled?;
    let operations = [
        "log append",
        "log fsync",
        "database flush",
        "apply",
        "compaction",
    ];
    assert!(
        operations
            .iter()
            .any(|operation| stalled.contains(operation)),
        "the line names no storage operation: {stalled}"
    );
    let exit = wait_until("the member to exit", Duration::from_secs(30), || {
        let exited = child.0.try_wait().map_err(anyhow::Error::from);
        async move { exited }
    })
    .await?;
    assert_eq!(exit.signal(), Some(6), "exited with {exit}, not SIGABRT");
    stuck_write.abort();

    // Started again, it serves what it acknowledged, and takes writes.
    let _child = start(&data_dir, &client_url, &peer_url, &log)?;
    let value = wait_until(
        "the restarted member to serve",
        Duration::from_secs(60),
        || {
            let mut client = client.clone();
            async move { Ok(get(&mut client, "k", true).await.ok().flatten()) }
        },
    )
    .await?;
    // The write made while frozen was never acknowledged: it may or may not have stayed.
    assert!(
        value == "kept" || value == "written while frozen",
        "the member serves {value:?}"
    );
    let mut client = client.clone();
    put(&mut client, "after", "restart").await?;
    Ok(())
}
