//! Leases, through the `etcd-client` crate and the raw etcd protobuf client: grant, attach,
//! TimeToLive, keep-alive, revoke and expiry, on every member, across a leader loss and across a
//! restart of the whole cluster.
//!
//! Expiry is the leader's decision alone (see `rampart_server::lessor`): these tests check that a
//! lease expires neither early nor much late, that its keys go in ONE revision on every member,
//! that a lease its owner keeps alive survives the loss of the leader, and that a new leader
//! resumes the remaining TTL recorded by the last checkpoint instead of restarting the lease.
//! The test harness's 800 ms election timeout makes the shortest TTL 2 s.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context};
use etcd_client::{Client, GetOptions, LeaseGrantOptions, LeaseTimeToLiveOptions};
use parking_lot::Mutex;
use rampart_api::etcdserverpb as pb;
use rampart_api::etcdserverpb::lease_client::LeaseClient;
use rampart_server::RawConfig;
use rampart_tests::{wait_until, ProcessCluster, TestCluster, ELECTION_MS};
use tokio::time::Instant;
use tonic::transport::Channel;
use tonic::Code;
use tracing::info;

use crate::common::{connect, expect_error};

const LEADER_WAIT: Duration = Duration::from_secs(20);

/// The longest restarted members take to elect a leader: within two election timeouts
/// (openraft's randomized maximum) of silence, plus the election itself.
const FAILOVER: Duration = Duration::from_millis(3 * ELECTION_MS);

/// A 3-member in-process cluster with one client per member.
pub(crate) struct Fixture {
    pub(crate) cluster: TestCluster,
    /// `members[i]` talks to member `i` only.
    pub(crate) members: Vec<Client>,
    pub(crate) urls: Vec<String>,
    pub(crate) leader: usize,
}

impl Fixture {
    pub(crate) async fn start(checkpoint_interval: Option<&str>) -> anyhow::Result<Fixture> {
        Fixture::start_with(|raw| {
            raw.experimental_lease_checkpoint_interval = checkpoint_interval.map(str::to_string);
        })
        .await
    }

    async fn start_with(adjust: impl Fn(&mut RawConfig)) -> anyhow::Result<Fixture> {
        let cluster = TestCluster::start_with(3, adjust).await?;
        let leader = cluster.index_of(cluster.wait_for_leader(LEADER_WAIT).await?);
        let urls = cluster.client_urls();
        let mut members = Vec::new();
        for url in &urls {
            members.push(connect(std::slice::from_ref(url)).await?);
        }
        Ok(Fixture {
            cluster,
            members,
            urls,
            leader,
        })
    }

    pub(crate) fn followers(&self) -> Vec<usize> {
        (0..3).filter(|&i| i != self.leader).collect()
    }

    pub(crate) fn node(&self, index: usize) -> &rampart_server::Node {
        &self.cluster.members[index]
            .running
            .as_ref()
            .expect("member runs")
            .node
    }
}

/// Grants a lease of `ttl` seconds with a server-chosen id; returns the id.
pub(crate) async fn grant(client: &mut Client, ttl: i64) -> anyhow::Result<i64> {
    let response = client.lease_grant(ttl, None).await?;
    ensure!(response.ttl() == ttl, "granted {response:?}, asked {ttl}");
    Ok(response.id())
}

pub(crate) async fn put_with_lease(
    client: &mut Client,
    key: &str,
    lease: i64,
) -> anyhow::Result<i64> {
    let options = etcd_client::PutOptions::new().with_lease(lease);
    let response = client.put(key, "v", Some(options)).await?;
    Ok(response.header().context("put has no header")?.revision())
}

/// The keys under `prefix` at `revision` (0: now), read linearizably.
/// Waits until no key starts with `prefix`, as `client`'s member sees it.
pub(crate) async fn wait_keys_gone(
    what: &str,
    client: &Client,
    prefix: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    wait_until(what, timeout, || {
        let mut client = client.clone();
        async move {
            Ok(keys_at(&mut client, prefix, 0)
                .await?
                .is_empty()
                .then_some(()))
        }
    })
    .await
}

pub(crate) async fn keys_at(
    client: &mut Client,
    prefix: &str,
    revision: i64,
) -> anyhow::Result<Vec<String>> {
    let options = GetOptions::new()
        .with_prefix()
        .with_keys_only()
        .with_revision(revision);
    let response = client.get(prefix, Some(options)).await?;
    Ok(response
        .kvs()
        .iter()
        .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
        .collect())
}

/// The revision whose write deleted the `count` keys under `prefix`, read on one member: the
/// keys are all there at every revision from `since` up to it and all gone from it on. Fails
/// if they went at different revisions.
async fn deletion_revision(
    client: &mut Client,
    prefix: &str,
    count: usize,
    since: i64,
) -> anyhow::Result<i64> {
    let now = client
        .get("no-such-key", None)
        .await?
        .header()
        .context("no header")?
        .revision();
    let mut deleted = None;
    for revision in since..=now {
        let present = keys_at(client, prefix, revision).await?.len();
        match deleted {
            None if present == count => {}
            None if present == 0 => deleted = Some(revision),
            _ => anyhow::bail!(
                "{present} of the {count} keys under {prefix:?} at revision {revision}: \
                 they were not deleted in one revision (first gone at {deleted:?})"
            ),
        }
    }
    deleted.with_context(|| format!("the keys under {prefix:?} are still there at {now}"))
}

/// One keep-alive of lease `id` on its own stream through the member at `url`, with the raw
/// protobuf client (etcd-client turns TTL 0 into an error); returns the TTL answered.
pub(crate) async fn keep_alive_once(url: &str, id: i64) -> anyhow::Result<i64> {
    let channel = Channel::from_shared(url.to_string())?
        .connect_timeout(Duration::from_secs(1))
        .connect()
        .await?;
    let requests = futures::stream::iter([pb::LeaseKeepAliveRequest { id }]);
    let mut responses = LeaseClient::new(channel)
        .lease_keep_alive(requests)
        .await?
        .into_inner();
    let response = responses
        .message()
        .await?
        .context("keep-alive stream ended without an answer")?;
    ensure!(response.id == id, "answer for lease {:x}", response.id);
    Ok(response.ttl)
}

pub(crate) async fn time_to_live(client: &mut Client, id: i64) -> anyhow::Result<i64> {
    Ok(client.lease_time_to_live(id, None).await?.ttl())
}

/// Keeps lease `id` alive from a background task, as a client would: a keep-alive every
/// TTL/3, to the members at `urls` in turn, moving on to the next one when a member does not
/// answer. Records every TTL answered.
struct KeepAlive {
    stop: Arc<AtomicBool>,
    answers: Arc<Mutex<Vec<i64>>>,
    task: tokio::task::JoinHandle<()>,
}

impl KeepAlive {
    fn start(urls: Vec<String>, id: i64, ttl: i64) -> KeepAlive {
        let stop = Arc::new(AtomicBool::new(false));
        let answers = Arc::new(Mutex::new(Vec::new()));
        let period = Duration::from_millis(ttl as u64 * 1000 / 3);
        let task = tokio::spawn({
            let (stop, answers) = (stop.clone(), answers.clone());
            async move {
                let mut next = 0;
                while !stop.load(Ordering::SeqCst) {
                    let url = &urls[next % urls.len()];
                    let attempt = tokio::time::timeout(period, keep_alive_once(url, id)).await;
                    match attempt {
                        Ok(Ok(ttl)) => {
                            answers.lock().push(ttl);
                            tokio::time::sleep(period).await;
                        }
                        // This member is down or has no leader yet: try the next one.
                        _ => next += 1,
                    }
                }
            }
        });
        KeepAlive {
            stop,
            answers,
            task,
        }
    }

    /// Stops the task and returns every TTL it was answered.
    async fn stop(self) -> Vec<i64> {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.task.await;
        let answers = self.answers.lock().clone();
        answers
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grant_attach_time_to_live_and_revoke() -> anyhow::Result<()> {
    rampart_tests::init_tracing();
    let mut f = Fixture::start(None).await?;
    let min_ttl = f.node(0).config().min_lease_ttl();
    assert_eq!(min_ttl, 2, "1.5 election timeouts of 800 ms, rounded up");
    let follower = f.followers()[0];
    let other = f.followers()[1];

    info!("--- grant: a server-chosen id, a chosen id, a duplicate, a short and a huge TTL");
    let chosen_id = 0x1234;
    let server_id = grant(&mut f.members[follower], 30).await?;
    assert!(server_id > 0, "server-chosen ids are positive: {server_id}");
    let granted = f.members[f.leader]
        .lease_grant(30, Some(LeaseGrantOptions::new().with_id(chosen_id)))
        .await?;
    assert_eq!((granted.id(), granted.ttl()), (chosen_id, 30));
    expect_error(
        "granting an id in use",
        f.members[other]
            .lease_grant(30, Some(LeaseGrantOptions::new().with_id(chosen_id)))
            .await,
        Code::FailedPrecondition,
        "etcdserver: lease already exists",
    )?;
    let short = f.members[follower].lease_grant(1, None).await?;
    assert_eq!(
        short.ttl(),
        min_ttl,
        "a TTL below the minimum is raised to it"
    );
    expect_error(
        "granting a TTL above etcd's maximum",
        f.members[follower].lease_grant(9_000_000_001, None).await,
        Code::OutOfRange,
        "etcdserver: too large lease TTL",
    )?;

    info!("--- attach keys through a follower; an unknown lease is refused");
    put_with_lease(&mut f.members[follower], "leased/a", server_id).await?;
    put_with_lease(&mut f.members[other], "leased/b", server_id).await?;
    f.members[f.leader].put("free", "v", None).await?;
    expect_error(
        "put with an unknown lease",
        f.members[follower]
            .put(
                "leased/c",
                "v",
                Some(etcd_client::PutOptions::new().with_lease(0x7777)),
            )
            .await,
        Code::NotFound,
        "etcdserver: requested lease not found",
    )?;

    info!("--- TimeToLive, with keys, answered alike by every member");
    for (i, client) in f.members.iter_mut().enumerate() {
        let options = LeaseTimeToLiveOptions::new().with_keys();
        let status = client.lease_time_to_live(server_id, Some(options)).await?;
        assert_eq!(status.id(), server_id);
        assert_eq!(status.granted_ttl(), 30, "member {i}");
        assert!(
            (25..=30).contains(&status.ttl()),
            "member {i}: remaining {} of 30",
            status.ttl()
        );
        let keys: Vec<&[u8]> = status.keys().iter().map(Vec::as_slice).collect();
        assert_eq!(keys, [&b"leased/a"[..], b"leased/b"], "member {i}");
        assert_eq!(
            time_to_live(client, 0x7777).await?,
            -1,
            "member {i}: TimeToLive of an unknown lease"
        );
        assert_eq!(
            keep_alive_once(&f.urls[i], 0x7777).await?,
            0,
            "member {i}: keep-alive of an unknown lease"
        );
        assert_eq!(
            keep_alive_once(&f.urls[i], server_id).await?,
            30,
            "member {i}: keep-alive renews to the full TTL"
        );
    }

    info!("--- LeaseLeases lists every lease, on every member");
    let mut expected = vec![server_id, chosen_id, short.id()];
    expected.sort_unstable();
    for (i, client) in f.members.iter_mut().enumerate() {
        let mut ids: Vec<i64> = client
            .leases()
            .await?
            .leases()
            .iter()
            .map(|l| l.id())
            .collect();
        ids.sort_unstable();
        assert_eq!(ids, expected, "member {i}");
    }

    info!("--- revoke through a follower: both keys go in one revision, everywhere");
    let before = f.members[f.leader]
        .get("no-such-key", None)
        .await?
        .header()
        .context("no header")?
        .revision();
    let revoked = f.members[other].lease_revoke(server_id).await?;
    let revision = revoked.header().context("no header")?.revision();
    assert_eq!(revision, before + 1, "a revoke is one revision");
    for (i, client) in f.members.iter_mut().enumerate() {
        assert_eq!(
            deletion_revision(client, "leased/", 2, before).await?,
            revision,
            "member {i}"
        );
        assert_eq!(keys_at(client, "free", 0).await?, ["free"], "member {i}");
        assert_eq!(time_to_live(client, server_id).await?, -1, "member {i}");
    }
    expect_error(
        "revoking a revoked lease",
        f.members[follower].lease_revoke(server_id).await,
        Code::NotFound,
        "etcdserver: requested lease not found",
    )?;
    let ids: Vec<i64> = f.members[follower]
        .leases()
        .await?
        .leases()
        .iter()
        .map(|l| l.id())
        .collect();
    assert!(
        !ids.contains(&server_id),
        "{ids:?} still lists the revoked lease"
    );

    f.cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_deletes_the_keys_in_one_revision_and_keep_alive_through_a_follower(
) -> anyhow::Result<()> {
    rampart_tests::init_tracing();
    let mut f = Fixture::start(None).await?;
    let (a, b) = (f.followers()[0], f.followers()[1]);
    let ttl = 2;

    info!("--- grant a lease to abandon and one to keep alive through a follower (TTL {ttl} s)");
    let granting = Instant::now();
    let expiring = grant(&mut f.members[a], ttl).await?;
    let kept = grant(&mut f.members[f.leader], ttl).await?;
    put_with_lease(&mut f.members[b], "kept/key", kept).await?;
    let (mut keeper, mut answers) = f.members[b].lease_keep_alive(kept).await?;
    let renewing = Arc::new(AtomicBool::new(true));
    let keeping = tokio::spawn({
        let renewing = renewing.clone();
        async move {
            let mut ttls = Vec::new();
            while renewing.load(Ordering::SeqCst) {
                keeper.keep_alive().await?;
                let answer = answers
                    .message()
                    .await?
                    .context("keep-alive stream ended")?;
                ttls.push(answer.ttl());
                tokio::time::sleep(Duration::from_millis(600)).await;
            }
            anyhow::Ok(ttls)
        }
    });
    let mut since = 0;
    for (i, key) in ["expiring/a", "expiring/b", "expiring/c"]
        .iter()
        .enumerate()
    {
        since = put_with_lease(&mut f.members[i], key, expiring).await?;
    }

    info!("--- the abandoned lease expires after its TTL, not before, and not much later");
    let gone = wait_keys_gone(
        "the expiring keys to go",
        &f.members[a],
        "expiring/",
        Duration::from_secs(15),
    );
    gone.await?;
    let lived = granting.elapsed();
    info!(?lived, "the abandoned lease expired");
    assert!(
        lived >= Duration::from_secs(ttl as u64),
        "the lease expired after {lived:?}, before its TTL of {ttl} s"
    );
    assert!(
        lived <= Duration::from_secs(ttl as u64) + Duration::from_millis(2500),
        "the lease expired only after {lived:?}"
    );

    info!("--- every member deleted the three keys at the same single revision");
    let mut revisions = Vec::new();
    for client in &mut f.members {
        revisions.push(deletion_revision(client, "expiring/", 3, since).await?);
    }
    assert!(
        revisions.iter().all(|&r| r == revisions[0]),
        "members disagree on the revision of the expiry: {revisions:?}"
    );
    for (i, client) in f.members.iter_mut().enumerate() {
        assert_eq!(time_to_live(client, expiring).await?, -1, "member {i}");
        assert_eq!(
            keep_alive_once(&f.urls[i], expiring).await?,
            0,
            "member {i}"
        );
    }

    info!("--- the lease kept alive through a follower outlives two TTLs");
    let kept_since = granting + Duration::from_secs(2 * ttl as u64) + Duration::from_millis(500);
    tokio::time::sleep_until(kept_since).await;
    for (i, client) in f.members.iter_mut().enumerate() {
        assert_eq!(
            keys_at(client, "kept/", 0).await?,
            ["kept/key"],
            "member {i}"
        );
        let remaining = time_to_live(client, kept).await?;
        assert!(
            (1..=ttl).contains(&remaining),
            "member {i}: remaining {remaining}"
        );
    }
    renewing.store(false, Ordering::SeqCst);
    let ttls = keeping.await??;
    assert!(ttls.len() >= 4, "only {} keep-alives answered", ttls.len());
    assert!(
        ttls.iter().all(|&t| t == ttl),
        "keep-alives answered {ttls:?}"
    );

    info!("--- left alone, it expires too");
    wait_keys_gone(
        "the kept key to go",
        &f.members[a],
        "kept/",
        Duration::from_secs(10),
    )
    .await?;

    info!("--- members stop promptly with keep-alive streams still open");
    let lease = grant(&mut f.members[a], 30).await?;
    let mut open = Vec::new();
    for client in &mut f.members {
        open.push(client.lease_keep_alive(lease).await?);
    }
    tokio::time::timeout(Duration::from_secs(20), f.cluster.shutdown())
        .await
        .context("the members did not stop while keep-alive streams were open")?;
    drop(open);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_resumes_checkpoints_and_keeps_live_leases() -> anyhow::Result<()> {
    rampart_tests::init_tracing();
    let mut f = Fixture::start(Some("500ms")).await?;
    let old_leader = f.leader;
    let followers = f.followers();

    info!("--- grant a lease to resume (TTL 10 s) and one kept alive through any member (TTL 3 s)");
    let resumed = grant(&mut f.members[old_leader], 10).await?;
    put_with_lease(&mut f.members[followers[0]], "resumed/key", resumed).await?;
    let kept = grant(&mut f.members[old_leader], 3).await?;
    put_with_lease(&mut f.members[followers[1]], "kept/key", kept).await?;
    let keep_alive = KeepAlive::start(f.urls.clone(), kept, 3);

    info!("--- wait until the followers hold a checkpoint of at most 6 s for the resumed lease");
    wait_until(
        "a checkpoint of at most 6 s",
        Duration::from_secs(15),
        || async {
            for &i in &followers {
                let lease = f.node(i).mvcc().lease(resumed)?.context("lease missing")?;
                if lease.remaining_ttl.is_none_or(|r| r > 6) {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        },
    )
    .await?;

    info!("--- grant a lease to abandon (TTL 3 s) and wait for its first checkpoint");
    let granting = Instant::now();
    let abandoned = grant(&mut f.members[followers[0]], 3).await?;
    put_with_lease(&mut f.members[followers[0]], "abandoned/key", abandoned).await?;
    wait_until(
        "a checkpoint of the abandoned lease",
        Duration::from_secs(5),
        || async {
            for &i in &followers {
                let lease = f
                    .node(i)
                    .mvcc()
                    .lease(abandoned)?
                    .context("lease missing")?;
                if lease.remaining_ttl.is_none() {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        },
    )
    .await?;

    info!("--- stop the leader");
    f.cluster.stop(old_leader).await;
    let ids: Vec<u64> = followers.iter().map(|&i| f.cluster.members[i].id).collect();
    let new_leader = f
        .cluster
        .index_of(f.cluster.wait_for_leader_among(&ids, LEADER_WAIT).await?);
    let elected = Instant::now();
    info!(
        new_leader,
        "--- the new leader resumes the checkpointed TTL, not the full 10 s"
    );
    let remaining = time_to_live(&mut f.members[followers[0]], resumed).await?;
    info!(remaining, "the resumed lease after the leader change");
    assert!(
        (1..=6).contains(&remaining),
        "after the leader change the resumed lease has {remaining} s left, expected at most the \
         checkpointed 6 s"
    );

    info!("--- the abandoned lease expires within about its TTL and an election");
    wait_keys_gone(
        "the abandoned key to go",
        &f.members[new_leader],
        "abandoned/",
        Duration::from_secs(15),
    )
    .await?;
    let lived = granting.elapsed();
    let after_election = elapsed_since(elected);
    info!(?lived, ?after_election, "the abandoned lease expired");
    // The new leader gives it the checkpointed remaining TTL (at most its 3 s) and one election
    // timeout of grace, counted from when it has loaded the leases; then a tick or two.
    let bound = Duration::from_secs(3) + Duration::from_millis(ELECTION_MS + 1000);
    assert!(
        after_election <= bound,
        "the abandoned lease lived {after_election:?} after the election, more than {bound:?}"
    );

    info!("--- the resumed lease expires well before a full TTL after the election");
    wait_keys_gone(
        "the resumed key to go",
        &f.members[new_leader],
        "resumed/",
        Duration::from_secs(15),
    )
    .await?;
    let after_election = elapsed_since(elected);
    info!(?after_election, "the resumed lease expired");
    assert!(
        after_election < Duration::from_secs(9),
        "the resumed lease lived {after_election:?} after the election: restarted, not resumed"
    );

    info!("--- the lease kept alive never expired");
    for &i in &followers {
        assert_eq!(
            keys_at(&mut f.members[i], "kept/", 0).await?,
            ["kept/key"],
            "member {i}"
        );
    }
    let answers = keep_alive.stop().await;
    assert!(
        answers.iter().all(|&ttl| ttl == 3),
        "a keep-alive of the kept lease was answered {answers:?}"
    );
    assert!(
        answers.len() >= 6,
        "only {} keep-alives answered",
        answers.len()
    );

    f.cluster.shutdown().await;
    Ok(())
}

fn elapsed_since(instant: Instant) -> Duration {
    Instant::now().saturating_duration_since(instant)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_cluster_restart_keeps_leases_and_expires_abandoned_ones() -> anyhow::Result<()> {
    rampart_tests::init_tracing();
    info!("--- start 3 processes; grant a long lease and a short one, with keys");
    let mut cluster = ProcessCluster::start(3).await?;
    let urls = cluster.client_urls();
    let mut client = connect(&urls).await?;
    let long = grant(&mut client, 60).await?;
    let short = grant(&mut client, 4).await?;
    put_with_lease(&mut client, "restart/long", long).await?;
    put_with_lease(&mut client, "restart/short", short).await?;

    info!("--- kill -9 every member, then start them again");
    for i in 0..3 {
        cluster.kill(i)?;
    }
    for i in 0..3 {
        cluster.restart(i).await?;
    }
    let restarted = Instant::now();
    let mut client = connect(&urls).await?;

    info!("--- both leases survived the restart");
    let ids: Vec<i64> = client
        .leases()
        .await?
        .leases()
        .iter()
        .map(|l| l.id())
        .collect();
    assert!(ids.contains(&long), "{ids:?} lacks the long lease {long:x}");
    let remaining = time_to_live(&mut client, long).await?;
    assert!(
        (50..=60).contains(&remaining),
        "long lease: {remaining} s left"
    );

    info!("--- the abandoned short lease expires after the restart; the long one stays");
    wait_keys_gone(
        "the short lease's key to go",
        &client,
        "restart/short",
        Duration::from_secs(20),
    )
    .await?;
    let lived = elapsed_since(restarted);
    info!(?lived, "the short lease expired after the restart");
    let bound = Duration::from_secs(4) + FAILOVER + Duration::from_millis(ELECTION_MS + 1000);
    assert!(
        lived <= bound,
        "the short lease lived {lived:?} after the restart"
    );
    assert_eq!(time_to_live(&mut client, short).await?, -1);
    assert_eq!(keys_at(&mut client, "restart/", 0).await?, ["restart/long"]);
    Ok(())
}

/// A renewal promises its lease a full TTL from when it was answered. A periodic checkpoint
/// computed before the renewal but applied after it would record less, and a new leader would
/// resume the lease at that: it would end before the TTL the client was promised.
///
/// Every entry is slowed to commit in about 250 ms, and checkpoints are due every 3.5 s. Each
/// round waits for a periodic checkpoint to apply, renews at once (a reset checkpoint to the
/// full TTL follows), then renews again just as the next periodic checkpoint, computed about
/// 3 s after the first renewal, is in flight. After each renewal the checkpoint the leader
/// applies must never fall below what that renewal promised.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_in_flight_never_undoes_a_renewal() -> anyhow::Result<()> {
    rampart_tests::init_tracing();
    const TTL: i64 = 10;
    const ROUNDS: usize = 4;
    // Heartbeats of 300 ms let a message be delayed 250 ms without timing out (openraft waits a
    // heartbeat interval for an AppendEntries answer).
    let mut f = Fixture::start_with(|raw| {
        raw.experimental_lease_checkpoint_interval = Some("3500ms".to_string());
        raw.heartbeat_interval = Some(300);
        raw.election_timeout = Some(3000);
    })
    .await?;
    let leader = f.leader;
    let leader_id = f.cluster.members[leader].id;
    let id = grant(&mut f.members[leader], TTL).await?;
    let checkpointed = |f: &Fixture| -> anyhow::Result<Option<i64>> {
        let lease = f.node(leader).mvcc().lease(id)?;
        Ok(lease.context("lease missing")?.remaining_ttl)
    };

    info!("--- slow every entry's commit: the leader's messages to both followers are delayed");
    for &follower in &f.followers() {
        let to = f.cluster.members[follower].id;
        f.cluster
            .faults
            .delay(leader_id, to, Duration::from_millis(250));
    }

    for round in 0..ROUNDS {
        info!(round, "--- wait for a periodic checkpoint to apply");
        let before = checkpointed(&f)?;
        wait_until("a periodic checkpoint", Duration::from_secs(10), || async {
            let now = checkpointed(&f)?;
            Ok((now != before && now.is_some_and(|c| c < TTL)).then_some(()))
        })
        .await?;
        // It was proposed about 250 ms ago; the next is proposed 3.5 s after it, within a
        // lessor tick (250 ms).
        let applied = Instant::now();
        for renewal in [Duration::from_millis(100), Duration::from_millis(3500)] {
            tokio::time::sleep_until(applied + renewal).await;
            let ttl = keep_alive_once(&f.urls[leader], id).await?;
            let answered = Instant::now();
            ensure!(ttl == TTL, "round {round}: renewed to {ttl}");
            while answered.elapsed() < Duration::from_millis(800) {
                // The leader renewed a little before the answer reached us: one second of slack.
                let promised = (TTL as f64 - answered.elapsed().as_secs_f64() - 1.0).floor() as i64;
                if let Some(checkpoint) = checkpointed(&f)? {
                    ensure!(
                        checkpoint >= promised,
                        "round {round}: {:?} after a renewal to {TTL} s, the applied \
                         checkpoint says {checkpoint} s left",
                        answered.elapsed()
                    );
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    f.cluster.faults.heal();
    Ok(())
}
