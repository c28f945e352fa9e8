//! The leader's lease table (see `rampart_server::lessor`): it follows every grant and revoke
//! applied, wherever it was proposed, and never forgets a granted lease nor brings back a revoked
//! one.

use std::time::Duration;

use anyhow::ensure;
use etcd_client::LeaseGrantOptions;
use tokio::time::Instant;
use tracing::info;

use crate::lease::{
    keep_alive_once, keys_at, put_with_lease, time_to_live, wait_keys_gone, Fixture,
};

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
