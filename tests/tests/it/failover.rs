//! Leader loss seen by a client, against real `rampart` processes: a lease that the real
//! `etcdctl lease keep-alive` keeps alive through a follower outlives a kill -9 of the leader.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context};
use parking_lot::Mutex;
use rampart_tests::{wait_until, ProcessCluster};
use tokio::time::Instant;
use tracing::info;

use crate::common::{connect, etcdctl_path};

/// `etcdctl lease keep-alive`, with every line it prints kept, stamped with the time since
/// it started.
struct KeepAlive {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl KeepAlive {
    fn start(endpoint: &str, lease: i64) -> anyhow::Result<KeepAlive> {
        let mut child = Command::new(etcdctl_path()?)
            .env("ETCDCTL_API", "3")
            .args([
                &format!("--endpoints={endpoint}"),
                "lease",
                "keep-alive",
                &format!("{lease:x}"),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting etcdctl lease keep-alive")?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let started = std::time::Instant::now();
        for output in [
            child
                .stdout
                .take()
                .map(|o| Box::new(o) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|o| Box::new(o) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(output).lines().map_while(Result::ok) {
                    let at = started.elapsed().as_millis();
                    lines.lock().push(format!("{at:>6} ms  {line}"));
                }
            });
        }
        Ok(KeepAlive { child, lines })
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().clone()
    }

    fn renewals(&self) -> usize {
        self.lines()
            .iter()
            .filter(|l| l.contains("keepalived"))
            .count()
    }
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The user's view of failover: a client keeps a short lease alive through a follower (etcd's
/// clients give a lease up when no keep-alive answer comes within its TTL), the leader is
/// killed, and the lease and its key must live on, every time. The new leader must be elected
/// and answering well within the lease's TTL, and keep-alives sent meanwhile must wait for it,
/// never answered "expired".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_kept_alive_through_a_follower_outlives_the_leaders_kill() -> anyhow::Result<()> {
    rampart_tests::init_tracing();
    let mut cluster = ProcessCluster::start(3).await?;
    let leader = cluster.leader_index(&[0, 1, 2]).await?;
    let follower = (leader + 1) % 3;
    let endpoint = cluster.members[follower].client_url.clone();
    let mut client = connect(std::slice::from_ref(&endpoint)).await?;

    info!("--- a 3 s lease with a key, kept alive by etcdctl through a follower");
    let lease = client.lease_grant(3, None).await?.id();
    let options = etcd_client::PutOptions::new().with_lease(lease);
    client.put("held", "yes", Some(options)).await?;
    let keep_alive = KeepAlive::start(&endpoint, lease)?;
    let renewed = |count: usize| {
        let renewals = keep_alive.renewals();
        async move { Ok((renewals >= count).then_some(Instant::now())) }
    };
    let first = wait_until("a first renewal", Duration::from_secs(10), || renewed(1)).await?;
    let last = wait_until("a second renewal", Duration::from_secs(10), || renewed(2)).await?;
    // etcdctl renews about every TTL/3 and gives up when no answer comes within the TTL of the
    // last one: the hardest moment to lose the leader is just before a renewal is due, when
    // the client has the least time left.
    let period = last - first;
    tokio::time::sleep_until(last + period.saturating_sub(Duration::from_millis(200))).await;

    info!("--- kill -9 the leader; watch the lease for three TTLs");
    let renewals_before = keep_alive.renewals();
    cluster.kill(leader)?;
    info!(killed = leader, lines = ?keep_alive.lines(), "leader killed");
    let watched = Instant::now();
    while watched.elapsed() < Duration::from_secs(9) {
        let lines = keep_alive.lines();
        ensure!(
            !lines.iter().any(|l| l.contains("expired or revoked")),
            "etcdctl gave the lease up after the leader's kill: {lines:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    ensure!(
        keep_alive.renewals() >= renewals_before + 3,
        "renewals stopped after the leader's kill: {:#?}",
        keep_alive.lines()
    );

    info!(lines = ?keep_alive.lines(), "--- the key and the lease are still there");
    let value = client.get("held", None).await?;
    ensure!(value.kvs().len() == 1, "the lease's key is gone");
    let ttl = client.lease_time_to_live(lease, None).await?.ttl();
    ensure!(ttl > 0, "the lease's remaining TTL is {ttl}");
    Ok(())
}
