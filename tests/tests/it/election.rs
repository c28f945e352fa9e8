//! The Election service (v3electionpb.Election) through the `etcd-client` crate against a
//! 3-member in-process cluster, and etcdctl 3.4's `elect` (clientv3's concurrency.Election over
//! KV, Lease and Watch) against the same cluster.
//!
//! What they prove: Campaign, Proclaim, Leader, Observe and Resign answer as etcd's, errors
//! included (code `Unknown`, etcd's text); leadership passes in campaign order when a leader
//! resigns, its lease is revoked or its caller goes away; Observe streams each leader's values
//! in order; etcdctl's campaigns and the service's exclude each other.

use std::time::Duration;

use anyhow::{ensure, Context};
use etcd_client::{Client, LeaderKey, ProclaimOptions, ResignOptions};
use rampart_tests::wait_until;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;
use tonic::Code;
use tracing::info;

use crate::common::{connect_patient, expect_error, spawn_etcdctl, stored};
use crate::etcd_client::Fixture;

/// How long a Campaign may take to succeed once its turn has come.
const TURN_WAIT: Duration = Duration::from_secs(30);

/// A Campaign running in its own task, reporting its leadership on `done` tagged with `who`.
fn spawn_campaign(
    mut client: Client,
    name: &'static str,
    value: &'static str,
    lease: i64,
    who: usize,
    done: &mpsc::UnboundedSender<(usize, anyhow::Result<LeaderKey>)>,
) -> tokio::task::JoinHandle<()> {
    let done = done.clone();
    tokio::spawn(async move {
        let result = client
            .campaign(name, value, lease)
            .await
            .map_err(Into::into);
        let leader = result.and_then(|mut r: etcd_client::CampaignResponse| {
            r.take_leader().context("Campaign answered no leader")
        });
        let _ = done.send((who, leader));
    })
}

/// The next Campaign to win, within [`TURN_WAIT`].
async fn next_leader(
    done: &mut mpsc::UnboundedReceiver<(usize, anyhow::Result<LeaderKey>)>,
) -> anyhow::Result<(usize, LeaderKey)> {
    let (who, leader) = tokio::time::timeout(TURN_WAIT, done.recv())
        .await
        .context("no Campaign won in time")?
        .context("every campaigner is gone")?;
    Ok((
        who,
        leader.with_context(|| format!("campaigner {who} failed"))?,
    ))
}

/// The current leader's value, through Leader.
async fn leader_value(client: &mut Client, name: &str) -> anyhow::Result<String> {
    let response = client.leader(name).await?;
    let kv = response.kv().context("Leader answered no kv")?;
    Ok(String::from_utf8_lossy(kv.value()).into_owned())
}

/// Reads `observer` until `observed` holds as many values as `values`, and checks they match.
async fn expect_observed(
    observer: &mut etcd_client::ObserveStream,
    observed: &mut Vec<String>,
    values: &[&str],
) -> anyhow::Result<()> {
    while observed.len() < values.len() {
        let message = tokio::time::timeout(TURN_WAIT, observer.message())
            .await
            .with_context(|| format!("observed {observed:?}, expected {values:?}"))??
            .context("the Observe stream ended")?;
        let kv = message.kv().context("an Observe message without kv")?;
        observed.push(String::from_utf8_lossy(kv.value()).into_owned());
    }
    ensure!(
        observed.as_slice() == values,
        "observed {observed:?}, expected {values:?}"
    );
    Ok(())
}

/// Waits until `key` exists.
async fn wait_key(client: &Client, key: &str) -> anyhow::Result<()> {
    wait_until(&format!("key {key}"), TURN_WAIT, || {
        let mut client = client.clone();
        let key = key.to_string();
        async move { Ok(stored(&mut client, key.as_bytes()).await?.map(|_| ())) }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn campaign_proclaim_leader_and_resign_answer_as_etcd() -> anyhow::Result<()> {
    let mut f = Fixture::start().await?;
    let urls = f.cluster.client_urls();
    let (done, mut won) = mpsc::unbounded_channel();

    info!("--- no campaigner: no leader");
    expect_error(
        "Leader of an empty election",
        f.all.leader("office").await,
        Code::Unknown,
        "election: no leader",
    )?;

    info!("--- a first campaign wins at once; Leader and Proclaim");
    let first = f.all.lease_grant(60, None).await?.id();
    let response = f.all.campaign("office", "a1", first).await?;
    let leader = response
        .leader()
        .context("Campaign answered no leader")?
        .clone();
    let kv = stored(&mut f.all, leader.key())
        .await?
        .context("the leader key is missing")?;
    ensure!(
        leader.name() == b"office"
            && leader.key() == format!("office/{first:x}").as_bytes()
            && leader.rev() == kv.create_revision()
            && leader.lease() == first,
        "leader {leader:?}, key {kv:?}"
    );
    ensure!(response.header().is_some(), "Campaign answered no header");
    for i in 0..3 {
        ensure!(
            leader_value(&mut f.members[i], "office").await? == "a1",
            "member {i}"
        );
    }
    let proclaimed = f
        .all
        .proclaim(
            "a2",
            Some(ProclaimOptions::new().with_leader(leader.clone())),
        )
        .await?;
    ensure!(proclaimed.header().is_some(), "Proclaim answered no header");
    ensure!(
        leader_value(&mut f.all, "office").await? == "a2",
        "Proclaim changed nothing"
    );

    info!("--- the same lease campaigns again with another value: same key, new value");
    let again = f.all.campaign("office", "a3", first).await?;
    let again = again.leader().context("no leader")?;
    ensure!(
        again.key() == leader.key() && again.rev() == leader.rev(),
        "{again:?}"
    );
    ensure!(
        leader_value(&mut f.all, "office").await? == "a3",
        "the new value was not posted"
    );

    info!("--- a second campaigner waits; errors for a leadership it does not hold");
    let second = f.all.lease_grant(60, None).await?.id();
    let _task = spawn_campaign(
        connect_patient(&urls).await?,
        "office",
        "b1",
        second,
        1,
        &done,
    );
    wait_key(&f.all, &format!("office/{second:x}")).await?;
    let pretender = LeaderKey::new()
        .with_name("office")
        .with_key(format!("office/{second:x}"))
        .with_rev(leader.rev())
        .with_lease(second);
    expect_error(
        "Proclaim with a wrong create revision",
        f.all
            .proclaim("b0", Some(ProclaimOptions::new().with_leader(pretender)))
            .await,
        Code::Unknown,
        "election: not leader",
    )?;
    expect_error(
        "Proclaim without a leader",
        f.all.proclaim("x", None).await,
        Code::Unknown,
        "\"leader\" field must be provided",
    )?;
    expect_error(
        "Resign without a leader",
        f.all.resign(None).await,
        Code::Unknown,
        "\"leader\" field must be provided",
    )?;
    ensure!(
        won.try_recv().is_err(),
        "the second campaigner won while the first led"
    );
    ensure!(
        leader_value(&mut f.all, "office").await? == "a3",
        "the leader's value changed"
    );

    info!("--- the leader resigns: the second wins; the old leadership is void");
    let resigned = f
        .all
        .resign(Some(ResignOptions::new().with_leader(leader.clone())))
        .await?;
    ensure!(resigned.header().is_some(), "Resign answered no header");
    let (who, next) = next_leader(&mut won).await?;
    ensure!(
        who == 1 && next.lease() == second && next.rev() > leader.rev(),
        "{next:?}"
    );
    ensure!(
        leader_value(&mut f.all, "office").await? == "b1",
        "Leader after the resign"
    );
    expect_error(
        "Proclaim by the resigned leader",
        f.all
            .proclaim(
                "a4",
                Some(ProclaimOptions::new().with_leader(leader.clone())),
            )
            .await,
        Code::Unknown,
        "election: not leader",
    )?;
    // A stale Resign changes nothing, and says nothing, as etcd's.
    f.all
        .resign(Some(ResignOptions::new().with_leader(leader)))
        .await?;
    ensure!(
        leader_value(&mut f.all, "office").await? == "b1",
        "a stale Resign deposed the leader"
    );

    info!("--- Campaign on a lease never granted");
    expect_error(
        "Campaign on a missing lease",
        f.all.campaign("office", "z", 0x1234).await,
        Code::Unknown,
        "etcdserver: requested lease not found",
    )?;
    f.shutdown().await;
    Ok(())
}

/// Observe through a follower streams the current leader's value, each value it proclaims, then
/// the next leader's, whether the leader resigns, loses its lease or its Campaign's caller goes
/// away; waiting campaigners win in the order they campaigned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observe_follows_each_leader_in_order() -> anyhow::Result<()> {
    let mut f = Fixture::start().await?;
    let urls = f.cluster.client_urls();
    let follower = f.followers()[0];
    let (done, mut won) = mpsc::unbounded_channel();

    info!("--- an observer on an empty election, through a follower");
    let mut observer = f.members[follower].observe("council").await?;
    let mut observed = Vec::new();
    info!("--- a leader, its proclamation, three waiting campaigners");
    let first = f.all.lease_grant(60, None).await?.id();
    let leader = f
        .all
        .campaign("council", "a1", first)
        .await?
        .take_leader()
        .context("no leader")?;
    f.all
        .proclaim(
            "a2",
            Some(ProclaimOptions::new().with_leader(leader.clone())),
        )
        .await?;
    let mut campaigns = Vec::new();
    let mut leases = Vec::new();
    for (who, value) in [(1, "b1"), (2, "c1"), (3, "d1")] {
        let lease = f.all.lease_grant(60, None).await?.id();
        campaigns.push(spawn_campaign(
            connect_patient(&urls).await?,
            "council",
            value,
            lease,
            who,
            &done,
        ));
        wait_key(&f.all, &format!("council/{lease:x}")).await?;
        leases.push(lease);
    }
    expect_observed(&mut observer, &mut observed, &["a1", "a2"]).await?;

    info!("--- the leader resigns: the first waiter leads");
    f.all
        .resign(Some(ResignOptions::new().with_leader(leader)))
        .await?;
    let (who, _) = next_leader(&mut won).await?;
    ensure!(who == 1, "campaigner {who} won first");
    expect_observed(&mut observer, &mut observed, &["a1", "a2", "b1"]).await?;

    info!("--- its lease is revoked: the second waiter leads");
    f.all.lease_revoke(leases[0]).await?;
    let (who, _) = next_leader(&mut won).await?;
    ensure!(who == 2, "campaigner {who} won second");
    expect_observed(&mut observer, &mut observed, &["a1", "a2", "b1", "c1"]).await?;

    info!("--- the third waiter's caller goes away: its key goes, and it never leads");
    campaigns[2].abort();
    wait_until("the abandoned campaign's key to go", TURN_WAIT, || {
        let mut client = f.all.clone();
        let key = format!("council/{:x}", leases[2]);
        async move {
            Ok(stored(&mut client, key.as_bytes())
                .await?
                .is_none()
                .then_some(()))
        }
    })
    .await?;
    f.all.lease_revoke(leases[1]).await?;
    wait_until("the election to be empty", TURN_WAIT, || {
        let mut client = f.all.clone();
        async move { Ok(client.leader("council").await.is_err().then_some(())) }
    })
    .await?;

    info!("--- a later observer starts with the current leader");
    let lease = f.all.lease_grant(60, None).await?.id();
    f.all.campaign("council", "e1", lease).await?;
    expect_observed(
        &mut observer,
        &mut observed,
        &["a1", "a2", "b1", "c1", "e1"],
    )
    .await?;
    let mut late = f.members[follower].observe("council").await?;
    let first_seen = tokio::time::timeout(TURN_WAIT, late.message())
        .await??
        .context("the Observe stream ended")?;
    let kv = first_seen.kv().context("no kv")?;
    ensure!(kv.value() == b"e1", "a late observer first saw {kv:?}");
    f.shutdown().await;
    Ok(())
}

/// etcdctl 3.4's `elect` campaigns and observes with clientv3's concurrency.Election; its leader
/// and the service's exclude each other and pass leadership in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_elect_and_the_election_service_agree() -> anyhow::Result<()> {
    let mut f = Fixture::start().await?;
    let endpoints = f.cluster.client_urls();
    let etcdctl = |args: &[&str]| spawn_etcdctl(&endpoints, args);
    /// The lines a child prints, as they come.
    fn lines(child: &mut tokio::process::Child) -> anyhow::Result<mpsc::UnboundedReceiver<String>> {
        let stdout = child.stdout.take().context("no stdout")?;
        let (sender, receiver) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let _ = sender.send(line);
            }
        });
        Ok(receiver)
    }
    async fn line(lines: &mut mpsc::UnboundedReceiver<String>) -> anyhow::Result<String> {
        tokio::time::timeout(TURN_WAIT, lines.recv())
            .await
            .context("etcdctl printed nothing in time")?
            .context("etcdctl's output ended")
    }

    info!("--- etcdctl observes, and campaigns first: it leads and prints its key and value");
    let mut listener = etcdctl(&["elect", "--listen", "chair"])?;
    let mut listened = lines(&mut listener)?;
    let mut campaigner = etcdctl(&["elect", "chair", "from-etcdctl"])?;
    let mut printed = lines(&mut campaigner)?;
    let key = line(&mut printed).await?;
    ensure!(key.starts_with("chair/"), "etcdctl elect printed {key:?}");
    ensure!(
        line(&mut printed).await? == "from-etcdctl",
        "etcdctl elect's value"
    );
    ensure!(
        leader_value(&mut f.all, "chair").await? == "from-etcdctl",
        "Leader"
    );
    ensure!(
        line(&mut listened).await? == key,
        "etcdctl elect -l's first key"
    );
    ensure!(
        line(&mut listened).await? == "from-etcdctl",
        "etcdctl elect -l's first value"
    );

    info!("--- the service's campaign waits behind etcdctl's leader, and wins when it resigns");
    let (done, mut won) = mpsc::unbounded_channel();
    let lease = f.all.lease_grant(60, None).await?.id();
    let _task = spawn_campaign(
        connect_patient(&endpoints).await?,
        "chair",
        "from-rampart",
        lease,
        0,
        &done,
    );
    wait_key(&f.all, &format!("chair/{lease:x}")).await?;
    ensure!(
        won.try_recv().is_err(),
        "the service's campaign won while etcdctl led"
    );
    let pid = campaigner.id().context("etcdctl has no pid")?;
    // etcdctl resigns on SIGINT.
    let status = std::process::Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()?;
    ensure!(status.success(), "kill -INT failed");
    let (who, _) = next_leader(&mut won).await?;
    ensure!(who == 0, "campaigner {who}");
    tokio::time::timeout(TURN_WAIT, campaigner.wait()).await??;
    ensure!(
        line(&mut listened).await? == format!("chair/{lease:x}"),
        "the listener's second key"
    );
    ensure!(
        line(&mut listened).await? == "from-rampart",
        "the listener's second value"
    );
    let _ = listener.kill().await;
    f.shutdown().await;
    Ok(())
}
