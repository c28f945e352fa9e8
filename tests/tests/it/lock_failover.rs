//! The Lock service across kill -9, against real processes: a holder that dies without a word
//! passes the lock on once its lease ends, and a waiter on a follower keeps its place when the
//! leader dies.

use std::time::Duration;

use anyhow::{ensure, Context};
use etcd_client::{Client, LockOptions, LockResponse};
use rampart_tests::{wait_until, ProcessCluster};
use tokio::task::JoinHandle;
use tracing::info;

use crate::common::{connect_patient, spawn_etcdctl, stored};

/// How long a lock may take to pass on once its holder is gone, or members to elect a leader.
const PATIENCE: Duration = Duration::from_secs(60);

/// A Lock of `name` with `lease` through `client`, in a task of its own.
fn spawn_lock(
    mut client: Client,
    name: &str,
    lease: i64,
) -> JoinHandle<anyhow::Result<LockResponse>> {
    let name = name.to_string();
    tokio::spawn(async move {
        Ok(client
            .lock(name, Some(LockOptions::new().with_lease(lease)))
            .await?)
    })
}

/// The create revision of the lock key `key` (its fencing token), read through `client`.
async fn token(client: &mut Client, key: &[u8]) -> anyhow::Result<i64> {
    Ok(stored(client, key)
        .await?
        .context("the lock key is gone")?
        .create_revision())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_killed_passes_the_lock_on_when_its_lease_ends() -> anyhow::Result<()> {
    rampart_tests::init_tracing();
    let cluster = ProcessCluster::start(3).await?;
    let urls = cluster.client_urls();
    let mut client = connect_patient(&urls).await?;

    info!("--- etcdctl takes the lock with a 3 s session and holds it");
    let mut holder = spawn_etcdctl(&urls, &["lock", "--ttl=3", "door", "--", "sleep", "600"])?;
    let held = wait_until("etcdctl to hold the lock", PATIENCE, || {
        let mut client = client.clone();
        async move {
            let keys = client
                .get("door/", Some(etcd_client::GetOptions::new().with_prefix()))
                .await?;
            Ok(keys.kvs().first().map(|kv| kv.key().to_vec()))
        }
    })
    .await?;
    let held_token = token(&mut client, &held).await?;

    info!("--- a waiter queues behind it; then the holder is killed with SIGKILL");
    // Long enough to outlast the test: the waiter's lease needs no keep-alive.
    let lease = client.lease_grant(300, None).await?.id();
    let waiter = spawn_lock(client.clone(), "door", lease);
    let waiter_key = format!("door/{lease:x}");
    wait_until("the waiter's key", PATIENCE, || {
        let mut client = client.clone();
        let key = waiter_key.clone();
        async move { Ok(stored(&mut client, key.as_bytes()).await?.map(|_| ())) }
    })
    .await?;
    ensure!(!waiter.is_finished(), "the waiter got a held lock");
    holder.start_kill()?;
    holder.wait().await?;

    info!("--- once the dead holder's lease ends, the waiter holds the lock");
    let acquired = tokio::time::timeout(PATIENCE, waiter)
        .await
        .context("the lock never passed on")???;
    ensure!(
        stored(&mut client, &held).await?.is_none(),
        "the waiter got the lock while the dead holder's key was still there"
    );
    ensure!(
        token(&mut client, acquired.key()).await? > held_token,
        "the new holder's fencing token is not above the dead holder's"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_on_a_follower_gets_the_lock_after_the_leader_is_killed() -> anyhow::Result<()> {
    rampart_tests::init_tracing();
    let mut cluster = ProcessCluster::start(3).await?;
    let leader = cluster.leader_index(&[0, 1, 2]).await?;
    let followers: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let url = |i: usize| cluster.members[i].client_url.clone();

    info!("--- a holder through one follower, a waiter through the other");
    let mut holder = connect_patient(&[url(followers[0])]).await?;
    let holder_lease = holder.lease_grant(300, None).await?.id();
    let held = holder
        .lock("door", Some(LockOptions::new().with_lease(holder_lease)))
        .await?;
    let held_token = token(&mut holder, held.key()).await?;
    let mut waiting = connect_patient(&[url(followers[1])]).await?;
    let lease = waiting.lease_grant(300, None).await?.id();
    let waiter = spawn_lock(waiting.clone(), "door", lease);
    let waiter_key = format!("door/{lease:x}");
    wait_until("the waiter's key", PATIENCE, || {
        let mut client = waiting.clone();
        let key = waiter_key.clone();
        async move { Ok(stored(&mut client, key.as_bytes()).await?.map(|_| ())) }
    })
    .await?;

    info!("--- the leader is killed with SIGKILL; the followers elect another");
    cluster.kill(leader)?;
    cluster.leader_index(&followers).await?;
    ensure!(!waiter.is_finished(), "the waiter got a held lock");

    info!("--- the holder unlocks: the waiter on the other follower gets the lock");
    holder.unlock(held.key()).await?;
    let acquired = tokio::time::timeout(PATIENCE, waiter)
        .await
        .context("the waiter never got the lock")???;
    ensure!(
        acquired.key() == waiter_key.as_bytes(),
        "the waiter got key {:?}",
        String::from_utf8_lossy(acquired.key())
    );
    ensure!(
        token(&mut waiting, acquired.key()).await? > held_token,
        "the waiter's fencing token is not above the holder's"
    );
    Ok(())
}
