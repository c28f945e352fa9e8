//! History: reads at past revisions on every member, logical and physical compaction, and the
//! refusal of compacted and future revisions.

use std::time::Duration;

use anyhow::Context;
use etcd_client::{Client, CompactionOptions, GetOptions};
use tonic::Code;
use tracing::info;

use super::{current_revision, pairs, revision, Fixture};
use crate::common::{expect_error, owned};

/// Checks member `i`'s history of key `h`: a read at `compacted` is refused as compacted, and a
/// read at each `(revision, value)` of `served` finds that value.
async fn expect_history(
    client: &mut Client,
    i: usize,
    compacted: i64,
    served: &[(i64, &str)],
) -> anyhow::Result<()> {
    expect_error(
        &format!("member {i}: get at compacted revision {compacted}"),
        client
            .get("h", Some(GetOptions::new().with_revision(compacted)))
            .await,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision has been compacted",
    )?;
    for &(revision, value) in served {
        let response = client
            .get("h", Some(GetOptions::new().with_revision(revision)))
            .await?;
        assert_eq!(
            pairs(&response),
            owned(&[("h", value)]),
            "member {i} at {revision}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_reads_and_compaction() -> anyhow::Result<()> {
    let mut f = Fixture::start().await?;
    let follower = f.followers()[0];

    info!("--- write h three times and delete it, remembering each revision");
    let r1 = revision(f.all.put("h", "v1", None).await?.header())?;
    let r2 = revision(f.all.put("h", "v2", None).await?.header())?;
    let r3 = revision(f.all.put("h", "v3", None).await?.header())?;
    let r4 = revision(f.all.delete("h", None).await?.header())?;
    assert_eq!(
        (r2, r3, r4),
        (r1 + 1, r1 + 2, r1 + 3),
        "one revision per write"
    );

    info!("--- every member reads h as it was at each revision");
    for (i, client) in f.members.iter_mut().enumerate() {
        for (rev, value, version) in [(r1, "v1", 1), (r2, "v2", 2), (r3, "v3", 3)] {
            let response = client
                .get("h", Some(GetOptions::new().with_revision(rev)))
                .await?;
            assert_eq!(
                pairs(&response),
                owned(&[("h", value)]),
                "member {i} at {rev}"
            );
            let kv = &response.kvs()[0];
            assert_eq!(kv.create_revision(), r1, "member {i} at {rev}");
            assert_eq!(kv.mod_revision(), rev, "member {i} at {rev}");
            assert_eq!(kv.version(), version, "member {i} at {rev}");
        }
        let response = client
            .get("h", Some(GetOptions::new().with_revision(r4)))
            .await?;
        assert!(
            response.kvs().is_empty(),
            "member {i}: h is deleted at {r4}"
        );
    }

    info!("--- a future revision is refused");
    expect_error(
        "get at a future revision",
        f.all
            .get("h", Some(GetOptions::new().with_revision(r4 + 100)))
            .await,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision is a future revision",
    )?;

    info!("--- compact at r2 through a follower");
    f.members[follower].compact(r2, None).await?;

    info!("--- every member refuses revisions below r2 and serves r2 and later");
    for (i, client) in f.members.iter_mut().enumerate() {
        expect_history(client, i, r1, &[(r2, "v2"), (r3, "v3")]).await?;
    }

    info!("--- a physical compaction at r3 answers once this member's history is compacted");
    tokio::time::timeout(
        Duration::from_secs(30),
        f.members[follower].compact(r3, Some(CompactionOptions::new().with_physical())),
    )
    .await
    .context("a physical compaction did not answer within 30 s")??;
    for (i, client) in f.members.iter_mut().enumerate() {
        expect_history(client, i, r2, &[(r3, "v3")]).await?;
    }

    info!("--- compacting again at or below r3, or in the future, is refused");
    expect_error(
        "compact at an already compacted revision",
        f.all.compact(r2, None).await,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision has been compacted",
    )?;
    let now = current_revision(&mut f.all).await?;
    expect_error(
        "compact at a future revision",
        f.all.compact(now + 10, None).await,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision is a future revision",
    )?;
    assert_eq!(
        current_revision(&mut f.all).await?,
        now,
        "a compaction does not create a revision"
    );

    f.shutdown().await;
    Ok(())
}
