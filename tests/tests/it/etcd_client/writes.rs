//! Writes: Put's `prev_kv`, `ignore_value` and `ignore_lease`, DeleteRange of a key and of a
//! prefix, and exactly one revision for each write request that changes something.

use anyhow::Context;
use etcd_client::{DeleteOptions, GetOptions, PutOptions, Txn, TxnOp};
use tonic::Code;
use tracing::info;

use super::{current_revision, revision, value_of, Fixture};
use crate::common::expect_error;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_prev_kv_and_ignore_value() -> anyhow::Result<()> {
    let mut f = Fixture::start().await?;
    let follower = f.followers()[0];
    let client = &mut f.members[follower];

    info!("--- the first put of a key has no previous key-value");
    let first = client
        .put("p", "one", Some(PutOptions::new().with_prev_key()))
        .await?;
    assert!(first.prev_key().is_none(), "{first:?}");
    let r1 = revision(first.header())?;

    info!("--- a second put with prev_kv returns the first");
    let second = client
        .put("p", "two", Some(PutOptions::new().with_prev_key()))
        .await?;
    let prev = second.prev_key().context("no prev_kv on the second put")?;
    assert_eq!(prev.key(), b"p");
    assert_eq!(prev.value(), b"one");
    assert_eq!(
        (prev.create_revision(), prev.mod_revision(), prev.version()),
        (r1, r1, 1)
    );
    let third = client.put("p", "three", None).await?;
    assert!(third.prev_key().is_none(), "prev_kv was not asked for");

    info!("--- ignore_value on a missing key fails with \"key not found\" and changes nothing");
    let before = current_revision(client).await?;
    for (i, member) in f.members.iter_mut().enumerate() {
        expect_error(
            &format!("put with ignore_value of a missing key through member {i}"),
            member
                .put("missing", "", Some(PutOptions::new().with_ignore_value()))
                .await,
            Code::InvalidArgument,
            "etcdserver: key not found",
        )?;
    }
    expect_error(
        "put with ignore_lease of a missing key",
        f.all
            .put("missing", "x", Some(PutOptions::new().with_ignore_lease()))
            .await,
        Code::InvalidArgument,
        "etcdserver: key not found",
    )?;
    assert_eq!(
        current_revision(&mut f.all).await?,
        before,
        "failed puts made a revision"
    );
    assert_eq!(value_of(&mut f.all, "missing").await?, None);

    info!("--- ignore_value on an existing key keeps its value and bumps its version");
    let kept = f.members[follower]
        .put(
            "p",
            "",
            Some(PutOptions::new().with_ignore_value().with_prev_key()),
        )
        .await?;
    assert_eq!(revision(kept.header())?, before + 1);
    let response = f.all.get("p", None).await?;
    let kv = response.kvs().first().context("p vanished")?;
    assert_eq!(kv.value(), b"three", "ignore_value must keep the value");
    assert_eq!(kv.version(), 4);
    assert_eq!(kv.mod_revision(), before + 1);

    f.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_with_prev_kv_and_prefix() -> anyhow::Result<()> {
    let mut f = Fixture::start().await?;
    let follower = f.followers()[1];

    info!("--- three keys under d/ and one beside them");
    for (key, value) in [("d/a", "1"), ("d/b", "2"), ("d/c", "3"), ("e", "4")] {
        f.all.put(key, value, None).await?;
    }
    let before = current_revision(&mut f.all).await?;

    let client = &mut f.members[follower];
    info!("--- deleting a single key with prev_kv returns it");
    let response = client
        .delete("d/a", Some(DeleteOptions::new().with_prev_key()))
        .await?;
    assert_eq!(response.deleted(), 1);
    assert_eq!(response.prev_kvs().len(), 1);
    assert_eq!(response.prev_kvs()[0].value(), b"1");
    assert_eq!(revision(response.header())?, before + 1);

    info!("--- deleting by prefix removes the rest of d/ in one revision");
    let response = client
        .delete(
            "d/",
            Some(DeleteOptions::new().with_prefix().with_prev_key()),
        )
        .await?;
    assert_eq!(response.deleted(), 2);
    let deleted: Vec<_> = response
        .prev_kvs()
        .iter()
        .map(|kv| (kv.key().to_vec(), kv.value().to_vec()))
        .collect();
    assert_eq!(
        deleted,
        vec![
            (b"d/b".to_vec(), b"2".to_vec()),
            (b"d/c".to_vec(), b"3".to_vec())
        ]
    );
    assert_eq!(revision(response.header())?, before + 2);

    info!("--- deleting nothing succeeds without a revision");
    let response = client
        .delete("d/", Some(DeleteOptions::new().with_prefix()))
        .await?;
    assert_eq!(response.deleted(), 0);
    assert_eq!(revision(response.header())?, before + 2);

    info!("--- every member agrees: d/ is empty and e remains");
    for (i, member) in f.members.iter_mut().enumerate() {
        let response = member
            .get("d/", Some(GetOptions::new().with_prefix()))
            .await?;
        assert!(response.kvs().is_empty(), "member {i}: {response:?}");
        assert_eq!(
            value_of(member, "e").await?.as_deref(),
            Some("4"),
            "member {i}"
        );
    }

    f.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_write_request_creates_exactly_one_revision() -> anyhow::Result<()> {
    let mut f = Fixture::start().await?;
    let cluster_id = f.cluster_id();

    info!("--- a new cluster's empty store is at revision 1 on every member");
    for (i, client) in f.members.iter_mut().enumerate() {
        assert_eq!(current_revision(client).await?, 1, "member {i}");
    }

    info!("--- writes through alternating members, each one revision later");
    let mut expected = 1;
    for round in 0..6 {
        let i = round % 3;
        expected += 1;
        let response = f.members[i].put("counter", round.to_string(), None).await?;
        let header = response.header().context("no header")?;
        assert_eq!(
            header.revision(),
            expected,
            "put {round} through member {i}"
        );
        assert_eq!(header.cluster_id(), cluster_id);
        assert_eq!(header.member_id(), f.cluster.members[i].id);
        assert!(header.raft_term() > 0);
    }
    let response = f.all.get("counter", None).await?;
    let kv = response.kvs().first().context("counter is missing")?;
    assert_eq!(
        (kv.create_revision(), kv.mod_revision(), kv.version()),
        (2, expected, 6)
    );

    info!("--- a txn writing three keys makes one revision; so does a prefix delete");
    expected += 1;
    let response = f
        .all
        .txn(Txn::new().and_then([
            TxnOp::put("x/1", "a", None),
            TxnOp::put("x/2", "b", None),
            TxnOp::put("x/3", "c", None),
        ]))
        .await?;
    assert_eq!(revision(response.header())?, expected);
    expected += 1;
    let response = f
        .all
        .delete("x/", Some(DeleteOptions::new().with_prefix()))
        .await?;
    assert_eq!(response.deleted(), 3);
    assert_eq!(revision(response.header())?, expected);

    info!("--- reads, empty deletes and failed requests make none");
    f.all.get("counter", None).await?;
    f.all
        .delete("x/", Some(DeleteOptions::new().with_prefix()))
        .await?;
    expect_error(
        "put with ignore_value of a missing key",
        f.all
            .put("nope", "", Some(PutOptions::new().with_ignore_value()))
            .await,
        Code::InvalidArgument,
        "etcdserver: key not found",
    )?;
    for (i, client) in f.members.iter_mut().enumerate() {
        assert_eq!(current_revision(client).await?, expected, "member {i}");
    }

    f.shutdown().await;
    Ok(())
}
