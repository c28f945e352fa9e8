//! The Lock service (v3lockpb.Lock) through the `etcd-client` crate against a 3-member
//! in-process cluster, and etcdctl 3.4's `lock` (which locks with clientv3's `concurrency`
//! package over KV, Lease and Watch) against the same cluster.
//!
//! What they prove: keys and answers as etcd's (`name/<lease hex>`, errors with code `Unknown`
//! and etcd's text); the lock passes in the order the lockers asked, one holder at a time, each
//! holder's fencing token (its key's create revision) above the previous one's, and a stale
//! holder's guarded write refused; a holder whose lease is revoked or expires passes the lock on;
//! a waiter on a follower keeps its place when the leader stops; a Lock whose caller goes away
//! deletes its key; etcdctl's locks and the Lock service's exclude each other.

use std::time::Duration;

use anyhow::{ensure, Context};
use etcd_client::{Client, Compare, CompareOp, GetOptions, LockOptions, Txn, TxnOp};
use rampart_tests::wait_until;
use tokio::sync::mpsc;
use tonic::Code;
use tracing::info;

use crate::common::{connect, connect_patient, expect_error, spawn_etcdctl, stored};
use crate::etcd_client::Fixture;

/// How long a Lock may take to succeed once its turn has come.
const TURN_WAIT: Duration = Duration::from_secs(30);
/// How long members may take to elect a new leader.
const LEADER_WAIT: Duration = Duration::from_secs(20);

/// The options of a Lock with `lease`.
fn with_lease(lease: i64) -> Option<LockOptions> {
    Some(LockOptions::new().with_lease(lease))
}

/// The lock key etcd makes for `lease` in lock `name`.
fn lock_key(name: &str, lease: i64) -> String {
    format!("{name}/{lease:x}")
}

/// The keys under `name/`, read linearizably.
async fn keys_under(client: &mut Client, name: &str) -> anyhow::Result<Vec<String>> {
    let response = client
        .get(
            format!("{name}/"),
            Some(GetOptions::new().with_prefix().with_keys_only()),
        )
        .await?;
    Ok(response
        .kvs()
        .iter()
        .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
        .collect())
}

/// Waits until `key` exists (present) or is gone (!present).
async fn wait_key(client: &Client, key: &str, present: bool) -> anyhow::Result<()> {
    let what = if present { "appear" } else { "go" };
    wait_until(&format!("key {key} to {what}"), TURN_WAIT, || {
        let mut client = client.clone();
        let key = key.to_string();
        async move {
            Ok((stored(&mut client, key.as_bytes()).await?.is_some() == present).then_some(()))
        }
    })
    .await
}

/// A Lock running in its own task, which reports its outcome on `done` tagged with `who`.
fn spawn_lock(
    mut client: Client,
    name: &'static str,
    lease: i64,
    who: usize,
    done: &mpsc::UnboundedSender<(usize, anyhow::Result<Vec<u8>>)>,
) -> tokio::task::JoinHandle<()> {
    let done = done.clone();
    tokio::spawn(async move {
        let result = client.lock(name, with_lease(lease)).await;
        let _ = done.send((who, result.map(|r| r.key().to_vec()).map_err(Into::into)));
    })
}

/// The next Lock to succeed, within [`TURN_WAIT`].
async fn next_holder(
    done: &mut mpsc::UnboundedReceiver<(usize, anyhow::Result<Vec<u8>>)>,
) -> anyhow::Result<(usize, Vec<u8>)> {
    let (who, key) = tokio::time::timeout(TURN_WAIT, done.recv())
        .await
        .context("no Lock succeeded in time")?
        .context("every locker is gone")?;
    Ok((
        who,
        key.with_context(|| format!("locker {who}'s Lock failed"))?,
    ))
}

/// Writes `resource` only if `key` is still the lock key created at `token`: the fencing
/// pattern the README describes. Answers whether the write happened.
async fn guarded_write(
    client: &mut Client,
    key: &[u8],
    token: i64,
    value: &str,
) -> anyhow::Result<bool> {
    let txn = Txn::new()
        .when([Compare::create_revision(key, CompareOp::Equal, token)])
        .and_then([TxnOp::put("resource", value, None)]);
    Ok(client.txn(txn).await?.succeeded())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_and_unlock_answer_as_etcd() -> anyhow::Result<()> {
    let mut f = Fixture::start().await?;

    info!("--- an uncontended Lock through each member, again with the same lease, then Unlock");
    for i in 0..3 {
        let client = &mut f.members[i];
        let lease = client.lease_grant(60, None).await?.id();
        let locked = client.lock("jobs", with_lease(lease)).await?;
        ensure!(
            locked.key() == lock_key("jobs", lease).as_bytes(),
            "member {i}: lock key {:?}, expected {}",
            String::from_utf8_lossy(locked.key()),
            lock_key("jobs", lease)
        );
        let kv = stored(client, locked.key())
            .await?
            .context("the lock key is missing")?;
        ensure!(
            kv.lease() == lease && kv.value().is_empty(),
            "member {i}: lock key {kv:?}"
        );
        let header = locked.header().context("Lock answered no header")?;
        ensure!(
            header.revision() >= kv.create_revision(),
            "member {i}: header {header:?}"
        );
        let again = client.lock("jobs", with_lease(lease)).await?;
        ensure!(
            again.key() == locked.key(),
            "member {i}: the same lease locked another key"
        );
        let unlocked = client.unlock(locked.key()).await?;
        let header = unlocked.header().context("Unlock answered no header")?;
        ensure!(
            header.revision() > kv.create_revision(),
            "member {i}: unlock header {header:?}"
        );
        ensure!(
            stored(client, locked.key()).await?.is_none(),
            "member {i}: the key survived Unlock"
        );
    }

    info!("--- lease 0: the key gets a new 60 s lease, as etcd's session grants");
    let locked = f.all.lock("zero", None).await?;
    let kv = stored(&mut f.all, locked.key())
        .await?
        .context("the lock key is missing")?;
    ensure!(kv.lease() != 0, "the lock key has no lease");
    ensure!(
        locked.key() == lock_key("zero", kv.lease()).as_bytes(),
        "key {kv:?}"
    );
    let ttl = f.all.lease_time_to_live(kv.lease(), None).await?;
    ensure!(
        ttl.granted_ttl() == 60 && ttl.ttl() > 0,
        "the granted lease: {ttl:?}"
    );
    f.all.unlock(locked.key()).await?;

    info!("--- errors with etcd's code (Unknown) and text; nothing created");
    expect_error(
        "Lock on a lease never granted",
        f.all.lock("jobs", with_lease(0x1234)).await,
        Code::Unknown,
        "etcdserver: requested lease not found",
    )?;
    let revoked = f.all.lease_grant(60, None).await?.id();
    f.all.lease_revoke(revoked).await?;
    expect_error(
        "Lock on a revoked lease",
        f.all.lock("jobs", with_lease(revoked)).await,
        Code::Unknown,
        "etcdserver: requested lease not found",
    )?;
    ensure!(
        keys_under(&mut f.all, "jobs").await?.is_empty(),
        "a failed Lock left a key"
    );
    expect_error(
        "Unlock of an empty key",
        f.all.unlock("").await,
        Code::Unknown,
        "etcdserver: key is not provided",
    )?;
    f.shutdown().await;
    Ok(())
}

/// Several lockers, each through its own member connection: the lock goes to them one at a
/// time, in the order their keys were created, and each holder's fencing token is above the
/// previous holder's, whose guarded writes then fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contended_lock_passes_in_order_with_growing_fencing_tokens() -> anyhow::Result<()> {
    const LOCKERS: usize = 4;
    let mut f = Fixture::start().await?;
    let urls = f.cluster.client_urls();
    let (done, mut acquired) = mpsc::unbounded_channel();

    info!("--- {LOCKERS} lockers queue, each joining once the previous one's key exists");
    let mut tasks = Vec::new();
    for who in 0..LOCKERS {
        let client = connect_patient(std::slice::from_ref(&urls[who % 3])).await?;
        let lease = f.all.lease_grant(60, None).await?.id();
        tasks.push(spawn_lock(client, "queue", lease, who, &done));
        wait_key(&f.all, &lock_key("queue", lease), true).await?;
    }

    info!("--- each holder in turn: alone, in order, fenced");
    let mut previous: Option<(Vec<u8>, i64)> = None;
    for expected in 0..LOCKERS {
        let (who, key) = next_holder(&mut acquired).await?;
        ensure!(
            who == expected,
            "locker {who} got the lock before locker {expected}"
        );
        let token = stored(&mut f.all, &key)
            .await?
            .context("the holder's key is missing")?
            .create_revision();
        if let Some((old_key, old_token)) = &previous {
            ensure!(
                token > *old_token,
                "fencing token {token} after {old_token}"
            );
            ensure!(
                !guarded_write(&mut f.all, old_key, *old_token, "stale").await?,
                "the previous holder's guarded write went through"
            );
        }
        ensure!(
            guarded_write(&mut f.all, &key, token, &format!("holder {who}")).await?,
            "holder {who}'s guarded write was refused"
        );
        ensure!(
            acquired.try_recv().is_err(),
            "another locker got the lock while locker {who} held it"
        );
        f.all.unlock(key.clone()).await?;
        previous = Some((key, token));
    }
    for task in tasks {
        task.await?;
    }
    f.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_whose_lease_ends_passes_the_lock_on() -> anyhow::Result<()> {
    let mut f = Fixture::start().await?;
    let urls = f.cluster.client_urls();
    let (done, mut acquired) = mpsc::unbounded_channel();

    info!("--- the holder's lease is revoked: the waiter gets the lock");
    let holder = f.all.lease_grant(60, None).await?.id();
    f.all.lock("revoked", with_lease(holder)).await?;
    let waiter = f.all.lease_grant(60, None).await?.id();
    let _task = spawn_lock(connect_patient(&urls).await?, "revoked", waiter, 1, &done);
    wait_key(&f.all, &lock_key("revoked", waiter), true).await?;
    f.all.lease_revoke(holder).await?;
    let (who, key) = next_holder(&mut acquired).await?;
    ensure!(
        who == 1 && key == lock_key("revoked", waiter).as_bytes(),
        "holder {who}"
    );

    info!("--- the holder's lease expires (nobody keeps it alive): the waiter gets the lock");
    let short = f.all.lease_grant(2, None).await?.id();
    f.all.lock("expired", with_lease(short)).await?;
    let waiter = f.all.lease_grant(60, None).await?.id();
    let _task = spawn_lock(connect_patient(&urls).await?, "expired", waiter, 2, &done);
    let (who, _) = next_holder(&mut acquired).await?;
    ensure!(who == 2, "holder {who}");
    ensure!(
        stored(&mut f.all, lock_key("expired", short).as_bytes())
            .await?
            .is_none(),
        "the expired holder's key is still there"
    );

    info!("--- a waiter whose own lease expires while it waits fails, as etcd 3.5's");
    let holder = f.all.lease_grant(60, None).await?.id();
    let held = f.all.lock("lost", with_lease(holder)).await?;
    let short = f.all.lease_grant(2, None).await?.id();
    let _task = spawn_lock(connect_patient(&urls).await?, "lost", short, 3, &done);
    wait_key(&f.all, &lock_key("lost", short), true).await?;
    wait_key(&f.all, &lock_key("lost", short), false).await?;
    f.all.unlock(held.key()).await?;
    let (who, result) = tokio::time::timeout(TURN_WAIT, acquired.recv())
        .await?
        .context("the waiter is gone")?;
    ensure!(who == 3, "locker {who}");
    let error = result
        .err()
        .context("a waiter without a key got the lock")?;
    ensure!(
        format!("{error:#}").contains("mutex: session is expired"),
        "the waiter failed with {error:#}"
    );
    f.shutdown().await;
    Ok(())
}

/// Waiters whose Lock calls went to the followers keep their places, in order, when the leader
/// stops: their reads and watches run on their own member and resume under the new leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_on_followers_keep_their_places_when_the_leader_stops() -> anyhow::Result<()> {
    let mut f = Fixture::start().await?;
    let leader = f.leader;
    let followers = f.followers();
    let urls = f.cluster.client_urls();
    let url = |i: usize| urls[i].clone();
    let (done, mut acquired) = mpsc::unbounded_channel();

    info!("--- a holder through the leader; two waiters, one through each follower");
    let holder = f.members[leader].lease_grant(60, None).await?.id();
    let held = f.members[leader].lock("door", with_lease(holder)).await?;
    let mut waiters = Vec::new();
    for (who, &member) in followers.iter().enumerate() {
        let lease = f.members[member].lease_grant(60, None).await?.id();
        let client = connect_patient(&[url(member)]).await?;
        waiters.push(spawn_lock(client, "door", lease, who, &done));
        wait_key(&f.members[member], &lock_key("door", lease), true).await?;
    }

    info!("--- the leader stops; the followers elect another");
    f.cluster.stop(leader).await;
    let survivors: Vec<_> = followers.iter().map(|&i| f.cluster.members[i].id).collect();
    f.cluster
        .wait_for_leader_among(&survivors, LEADER_WAIT)
        .await?;

    info!("--- the holder unlocks: the first waiter, then the second, get the lock");
    let mut client = connect(&[url(followers[1])]).await?;
    client.unlock(held.key()).await?;
    for expected in 0..2 {
        let (who, key) = next_holder(&mut acquired).await?;
        ensure!(
            who == expected,
            "waiter {who} got the lock before waiter {expected}"
        );
        ensure!(acquired.try_recv().is_err(), "two waiters hold the lock");
        client.unlock(key).await?;
    }
    for waiter in waiters {
        waiter.await?;
    }
    f.shutdown().await;
    Ok(())
}

/// A waiting Lock whose caller goes away (cancels, or its deadline passes) deletes its key, so
/// that it does not hold up the waiters behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_whose_caller_goes_away_deletes_its_key() -> anyhow::Result<()> {
    let mut f = Fixture::start().await?;
    let follower = f.followers()[0];
    let url = f.cluster.members[follower].client_url.clone();
    let (done, mut acquired) = mpsc::unbounded_channel();
    let holder = f.all.lease_grant(60, None).await?.id();
    let held = f.all.lock("gone", with_lease(holder)).await?;

    info!("--- a waiter through a follower is cancelled: its key goes");
    let cancelled = f.all.lease_grant(60, None).await?.id();
    let task = spawn_lock(
        connect_patient(std::slice::from_ref(&url)).await?,
        "gone",
        cancelled,
        0,
        &done,
    );
    wait_key(&f.all, &lock_key("gone", cancelled), true).await?;
    task.abort();
    wait_key(&f.all, &lock_key("gone", cancelled), false).await?;

    info!("--- a waiter whose deadline passes: its key goes");
    let options = etcd_client::ConnectOptions::new().with_timeout(Duration::from_secs(2));
    let mut hasty = Client::connect([url.clone()], Some(options)).await?;
    let timed_out = f.all.lease_grant(60, None).await?.id();
    ensure!(
        hasty.lock("gone", with_lease(timed_out)).await.is_err(),
        "a Lock behind a held lock succeeded"
    );
    wait_key(&f.all, &lock_key("gone", timed_out), false).await?;

    info!("--- a waiter that stays gets the lock when the holder unlocks");
    let stays = f.all.lease_grant(60, None).await?.id();
    let _task = spawn_lock(connect_patient(&[url]).await?, "gone", stays, 1, &done);
    wait_key(&f.all, &lock_key("gone", stays), true).await?;
    f.all.unlock(held.key()).await?;
    let (who, _) = next_holder(&mut acquired).await?;
    ensure!(who == 1, "locker {who}");
    f.shutdown().await;
    Ok(())
}

/// etcdctl 3.4's `lock` (clientv3's concurrency.Mutex over KV, Lease and Watch) runs its
/// command under the lock, waits behind a key the Lock service made, and removes its key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_lock_runs_its_command_under_the_lock() -> anyhow::Result<()> {
    let mut f = Fixture::start().await?;
    let endpoints = f.cluster.client_urls();
    let etcdctl = |args: &[&str]| spawn_etcdctl(&endpoints, args);

    info!("--- uncontended: the command sees the lock key and revision");
    let child = etcdctl(&[
        "lock",
        "door",
        "--",
        "sh",
        "-c",
        "echo \"$ETCD_LOCK_KEY $ETCD_LOCK_REV\"",
    ])?;
    let output = tokio::time::timeout(TURN_WAIT, child.wait_with_output()).await??;
    let stdout = String::from_utf8_lossy(&output.stdout);
    ensure!(
        output.status.success(),
        "etcdctl lock failed: {stdout} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let (key, revision) = stdout
        .trim()
        .split_once(' ')
        .context("etcdctl printed no key")?;
    ensure!(
        key.starts_with("door/") && revision.parse::<i64>()? > 0,
        "printed {stdout:?}"
    );
    ensure!(
        keys_under(&mut f.all, "door").await?.is_empty(),
        "etcdctl left its key"
    );

    info!("--- behind a holder of the Lock service: etcdctl waits, then runs once it unlocks");
    let holder = f.all.lease_grant(60, None).await?.id();
    let held = f.all.lock("door", with_lease(holder)).await?;
    let mut child = etcdctl(&["lock", "door", "echo", "ran"])?;
    wait_until("etcdctl's key behind the holder", TURN_WAIT, || {
        let mut client = f.all.clone();
        async move { Ok((keys_under(&mut client, "door").await?.len() == 2).then_some(())) }
    })
    .await?;
    ensure!(
        child.try_wait()?.is_none(),
        "etcdctl ran its command while the lock was held"
    );
    f.all.unlock(held.key()).await?;
    let output = tokio::time::timeout(TURN_WAIT, child.wait_with_output()).await??;
    ensure!(
        output.status.success() && String::from_utf8_lossy(&output.stdout).trim() == "ran",
        "etcdctl lock: {output:?}"
    );

    info!("--- behind etcdctl's holder: the Lock service waits until etcdctl's command ends");
    // etcdctl holds the lock for as long as its command runs: until the test creates a file.
    let flag = f.cluster.dir.path().join("release");
    let script = format!("while [ ! -e {} ]; do sleep 0.05; done", flag.display());
    let mut child = etcdctl(&["lock", "door", "--", "sh", "-c", &script])?;
    wait_until("etcdctl to hold the lock", TURN_WAIT, || {
        let mut client = f.all.clone();
        async move { Ok((keys_under(&mut client, "door").await?.len() == 1).then_some(())) }
    })
    .await?;
    let (done, mut acquired) = mpsc::unbounded_channel();
    let lease = f.all.lease_grant(60, None).await?.id();
    let _task = spawn_lock(connect_patient(&endpoints).await?, "door", lease, 0, &done);
    wait_key(&f.all, &lock_key("door", lease), true).await?;
    ensure!(
        acquired.try_recv().is_err(),
        "the Lock service granted a lock etcdctl holds"
    );
    std::fs::write(&flag, b"")?;
    let (who, _) = next_holder(&mut acquired).await?;
    ensure!(who == 0, "locker {who}");
    let status = tokio::time::timeout(TURN_WAIT, child.wait()).await??;
    ensure!(status.success(), "etcdctl lock exited with {status}");
    f.shutdown().await;
    Ok(())
}
