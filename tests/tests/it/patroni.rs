//! PostgreSQL high availability on Rampart: Patroni (from PyPI, with its `etcd3` DCS, which
//! speaks etcd's JSON gateway) manages two PostgreSQL nodes with a three-member cluster of
//! `rampart` processes as its DCS (`tests/patroni/run` does the Patroni side). The Rampart
//! leader is killed while Patroni runs, then the PostgreSQL primary: Patroni keeps a primary
//! through the first and fails over through the second.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{ensure, Context};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tracing::info;

use rampart_tests::ProcessCluster;

/// How long the whole script may take: it bounds each of its own waits (the first start of
/// its virtual environment, which installs Patroni from PyPI, included); this only catches a
/// script that hangs.
const SCRIPT_DEADLINE: Duration = Duration::from_secs(480);
/// How long the script may take to stop (removing its nodes) once told to.
const STOP_DEADLINE: Duration = Duration::from_secs(30);
/// The line with which the script asks for the Rampart leader to be killed.
const KILL_REQUEST: &str = "READY: kill the Rampart leader";

/// Two Patroni nodes on three `rampart` processes: one primary and one streaming replica;
/// a kill -9 of the Rampart leader leaves Patroni's primary in place (Patroni has all three
/// members' URLs); a kill -9 of the primary's Patroni and postmaster makes the replica the
/// primary, and Patroni's keys in Rampart follow (`tests/patroni/run` checks each step).
#[tokio::test(flavor = "multi_thread")]
async fn postgres_failover_on_rampart() -> anyhow::Result<()> {
    rampart_tests::init_tracing();
    let mut cluster = ProcessCluster::start(3).await?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("patroni/run");
    info!("--- {} {:?}", script.display(), cluster.client_urls());
    let mut child = tokio::process::Command::new(&script)
        .arg("--pause-for-rampart-leader-kill")
        .args(cluster.client_urls())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", script.display()))?;
    let pid = child.id().context("the script has no pid")?;
    let mut stdin = child.stdin.take().context("no stdin")?;
    let mut stdout = BufReader::new(child.stdout.take().context("no stdout")?).lines();
    let mut stderr = child.stderr.take().context("no stderr")?;
    let stderr_text = tokio::spawn(async move {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text).await;
        text
    });

    // Follow the script's output; when it asks, kill the Rampart leader and say so.
    let mut output = String::new();
    let mut killed = None;
    let follow = async {
        while let Some(line) = stdout.next_line().await? {
            info!("patroni: {line}");
            output.push_str(&line);
            output.push('\n');
            if line == KILL_REQUEST {
                let leader = cluster.leader_index(&[0, 1, 2]).await?;
                info!("--- killing the Rampart leader, member {leader}");
                cluster.kill(leader)?;
                killed = Some(leader);
                stdin.write_all(b"killed\n").await?;
                stdin.flush().await?;
            }
        }
        anyhow::Ok(())
    };
    let followed = tokio::time::timeout(SCRIPT_DEADLINE, follow).await;
    if !matches!(followed, Ok(Ok(()))) {
        // Its trap stops Patroni and PostgreSQL and removes their directory on SIGTERM.
        let _ = rampart_launcher::send_signal(pid, "TERM");
    }
    let status = tokio::time::timeout(STOP_DEADLINE, child.wait())
        .await
        .context("the Patroni script did not stop")??;
    let errors = stderr_text.await?;
    info!("patroni script's stderr:\n{errors}");
    ensure!(
        followed.is_ok(),
        "the Patroni script took over {SCRIPT_DEADLINE:?}:\n{output}\n{errors}"
    );
    followed.unwrap_or(Ok(()))?;
    ensure!(
        status.success(),
        "the Patroni script failed ({status}):\n{output}\n{errors}"
    );
    ensure!(
        killed.is_some(),
        "the script never asked for the Rampart leader to be killed:\n{output}"
    );
    ensure!(
        output.lines().last().is_some_and(|l| l.ends_with("PASS")),
        "the script did not end with PASS:\n{output}\n{errors}"
    );
    Ok(())
}
