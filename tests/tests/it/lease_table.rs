//! The leader's lease table (see `rampart_server::lessor`): it follows every grant and revoke
//! applied, wherever it was proposed, never forgets a granted lease nor brings back a revoked
//! one, and revokes expired leases in batches at a bounded rate (etcd's `leaseRevokeRate`, 1000
//! a second) rather than one proposal per lease, all at once.

use std::time::Duration;

use anyhow::{ensure, Context};
use etcd_client::{LeaseGrantOptions, PutOptions, Txn, TxnOp};
use futures::{StreamExt, TryStreamExt};
use rampart_api::etcdserverpb as pb;
use rampart_api::etcdserverpb::lease_client::LeaseClient;
use tokio::time::Instant;
use tonic::transport::Channel;
use tracing::info;

use crate::lease::{
    grant, keep_alive_once, keys_at, put_with_lease, time_to_live, wait_keys_gone, Fixture,
};

/// Leases left to expire together.
const MANY: usize = 3000;

/// Their TTL: long enough for a debug build on a busy machine (the whole suite running on two
/// cores) to grant them all and attach their keys before the first one expires; 10 s was not.
const MANY_TTL: i64 = 30;

/// etcd's `leaseRevokeRate`, and the lessor's tick: no revoke entry holds more than this.
const REVOKES_PER_TICK: usize = 1000 / 4;

/// Renews every lease of `ids` on the leader through the member at `url`, over a few concurrent
/// keep-alive streams; returns the TTLs answered, in the order of `ids`.
async fn keep_alive_all(url: &str, ids: &[i64]) -> anyhow::Result<Vec<i64>> {
    const STREAMS: usize = 8;
    let channel = Channel::from_shared(url.to_string())?.connect().await?;
    let chunks = ids.chunks(ids.len().div_ceil(STREAMS)).map(|chunk| {
        let mut client = LeaseClient::new(channel.clone());
        async move {
            let requests =
                futures::stream::iter(chunk.to_vec()).map(|id| pb::LeaseKeepAliveRequest { id });
            let mut responses = client.lease_keep_alive(requests).await?.into_inner();
            let mut ttls = Vec::with_capacity(chunk.len());
            for &id in chunk {
                let response = responses
                    .message()
                    .await?
                    .context("keep-alive stream ended early")?;
                ensure!(
                    response.id == id,
                    "answer for {:x}, asked {id:x}",
                    response.id
                );
                ttls.push(response.ttl);
            }
            anyhow::Ok(ttls)
        }
    });
    let answers = futures::future::try_join_all(chunks).await?;
    Ok(answers.concat())
}

/// The index of the leader's last log entry.
fn last_log_index(f: &Fixture) -> u64 {
    f.node(f.leader).metrics().last_log_index.unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_leases_expiring_together_are_all_revoked_in_batches() -> anyhow::Result<()> {
    rampart_tests::init_tracing();
    // No periodic checkpoint in the test's time: while the leases expire, the only entries the
    // leader appends are their revokes.
    let mut f = Fixture::start(Some("1h")).await?;

    info!("--- grant {MANY} leases of {MANY_TTL} s, through every member in turn");
    let clients = f.members.clone();
    let ids: Vec<i64> = futures::stream::iter(0..MANY)
        .map(|i| {
            let mut client = clients[i % clients.len()].clone();
            async move { grant(&mut client, MANY_TTL).await }
        })
        .buffered(64)
        .try_collect()
        .await?;

    info!("--- attach a key to each, 100 puts to a txn");
    for (n, chunk) in ids.chunks(100).enumerate() {
        let puts: Vec<TxnOp> = chunk
            .iter()
            .enumerate()
            .map(|(i, &id)| {
                let key = format!("many/{:05}", n * 100 + i);
                TxnOp::put(key, "v", Some(PutOptions::new().with_lease(id)))
            })
            .collect();
        let client = &mut f.members[n % 3];
        ensure!(client.txn(Txn::new().and_then(puts)).await?.succeeded());
    }

    info!("--- renew them all at once, so that they expire together");
    let ttls = keep_alive_all(&f.urls[f.leader], &ids).await?;
    ensure!(
        ttls.iter().all(|&ttl| ttl == MANY_TTL),
        "renewals answered {:?}",
        ttls.iter()
            .filter(|&&ttl| ttl != MANY_TTL)
            .collect::<Vec<_>>()
    );
    let renewed = Instant::now();
    let first_entry = last_log_index(&f) + 1;

    info!("--- once every one has expired, none is renewed, even before its revoke applies");
    tokio::time::sleep_until(renewed + Duration::from_secs(MANY_TTL as u64 + 1)).await;
    let left = keys_at(&mut f.members[f.leader], "many/", 0).await?.len();
    let ttls = keep_alive_all(&f.urls[f.leader], &ids).await?;
    info!(left, "keys left when the expired leases were renewed");
    let renewed_again: Vec<_> = ids.iter().zip(&ttls).filter(|(_, &ttl)| ttl != 0).collect();
    ensure!(
        renewed_again.is_empty(),
        "expired leases were renewed (id, TTL): {renewed_again:?}"
    );

    info!("--- every key goes, on every member");
    let deadline = Duration::from_secs(60);
    wait_keys_gone("the keys to go", &f.members[f.leader], "many/", deadline).await?;
    let last_entry = last_log_index(&f);
    for (i, client) in f.members.iter().enumerate() {
        wait_keys_gone(
            &format!("member {i}'s keys to go"),
            client,
            "many/",
            deadline,
        )
        .await?;
    }
    let follower = f.followers()[0];
    let listed = f.members[follower].leases().await?.leases().len();
    ensure!(listed == 0, "{listed} leases still listed");

    info!("--- in a few entries, none holding more than a tick's worth");
    let entries = (last_entry + 1).saturating_sub(first_entry) as usize;
    info!(entries, "entries appended while the leases were revoked");
    ensure!(
        entries <= MANY / 10,
        "{MANY} revokes took {entries} log entries: they were not batched"
    );
    ensure!(
        entries >= MANY.div_ceil(REVOKES_PER_TICK),
        "{MANY} revokes took only {entries} log entries: more than {REVOKES_PER_TICK} in one"
    );
    f.cluster.shutdown().await;
    Ok(())
}

/// A lease the leader revoked on expiry, then granted again under the same id, starts afresh;
/// a lease revoked by a client stays revoked; granted once more, it expires by itself. Every
/// grant and revoke goes through a follower: the leader hears of them only by applying them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_lease_is_never_resurrected_and_its_id_starts_afresh() -> anyhow::Result<()> {
    rampart_tests::init_tracing();
    let mut f = Fixture::start(None).await?;
    let (a, b) = (f.followers()[0], f.followers()[1]);
    let leader = f.leader;
    let min_ttl = f.node(0).config().min_lease_ttl();
    let id = 0x5eed;
    let with_id = || Some(LeaseGrantOptions::new().with_id(id));

    info!("--- a lease of {min_ttl} s granted through a follower expires by itself");
    let granted = f.members[a].lease_grant(min_ttl, with_id()).await?;
    ensure!(granted.ttl() == min_ttl, "granted {granted:?}");
    put_with_lease(&mut f.members[a], "again/first", id).await?;
    wait_keys_gone(
        "the first key to go",
        &f.members[b],
        "again/",
        Duration::from_secs(10),
    )
    .await?;

    info!("--- granted again at once under the same id, with 30 s: it starts afresh");
    let regranted = Instant::now();
    f.members[b].lease_grant(30, with_id()).await?;
    put_with_lease(&mut f.members[b], "again/second", id).await?;
    ensure!(
        keep_alive_once(&f.urls[a], id).await? == 30,
        "the lease granted again was not renewed"
    );
    tokio::time::sleep_until(regranted + Duration::from_secs(min_ttl as u64 + 1)).await;
    for (i, client) in f.members.iter_mut().enumerate() {
        let keys = keys_at(client, "again/", 0).await?;
        ensure!(keys == ["again/second"], "member {i}: {keys:?}");
    }
    let remaining = time_to_live(&mut f.members[leader], id).await?;
    ensure!((25..=30).contains(&remaining), "{remaining} s left of 30");

    info!("--- revoked through a follower: never renewed or known again");
    f.members[a].lease_revoke(id).await?;
    let revoked = Instant::now();
    while revoked.elapsed() < Duration::from_secs(1) {
        for (i, url) in f.urls.iter().enumerate() {
            let ttl = keep_alive_once(url, id).await?;
            ensure!(ttl == 0, "member {i} renewed the revoked lease to {ttl} s");
        }
        let remaining = time_to_live(&mut f.members[leader], id).await?;
        ensure!(remaining == -1, "the revoked lease has {remaining} s left");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ensure!(keys_at(&mut f.members[leader], "again/", 0)
        .await?
        .is_empty());

    info!("--- granted once more through a follower and left alone: it expires again");
    let granting = Instant::now();
    f.members[b].lease_grant(min_ttl, with_id()).await?;
    put_with_lease(&mut f.members[a], "again/third", id).await?;
    wait_keys_gone(
        "the third key to go",
        &f.members[leader],
        "again/",
        Duration::from_secs(10),
    )
    .await?;
    let lived = granting.elapsed();
    info!(?lived, "the lease granted once more expired");
    ensure!(
        lived >= Duration::from_secs(min_ttl as u64),
        "it expired after {lived:?}, before its {min_ttl} s"
    );
    ensure!(time_to_live(&mut f.members[a], id).await? == -1);
    f.cluster.shutdown().await;
    Ok(())
}
