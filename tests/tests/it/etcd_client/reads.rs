//! Reads: every member serves what was written through any of them, with Range's options
//! (prefix, limit, explicit ranges, sorting, keys or count only, serializable).

use anyhow::Context;
use etcd_client::{GetOptions, SortOrder, SortTarget};
use tracing::info;

use super::{pairs, revision, value_of, Fixture};
use crate::common::owned;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_and_get_through_every_member() -> anyhow::Result<()> {
    let mut f = Fixture::start().await?;
    let cluster_id = f.cluster_id();

    info!("--- put through each member in turn, the followers included");
    for i in 0..3 {
        let response = f.members[i]
            .put(format!("member-{i}"), format!("value-{i}"), None)
            .await?;
        let header = response.header().context("put response has no header")?;
        assert_eq!(header.cluster_id(), cluster_id, "put through member {i}");
        assert_eq!(
            header.member_id(),
            f.cluster.members[i].id,
            "put through member {i} must be answered by member {i}"
        );
        assert!(
            header.raft_term() > 0,
            "put through member {i}: raft_term 0"
        );
        assert!(
            header.revision() > 1,
            "put through member {i}: revision {}",
            header.revision()
        );
    }

    info!("--- every member and the balanced client read every value, linearizably");
    for reader in 0..3 {
        for i in 0..3 {
            let key = format!("member-{i}");
            let response = f.members[reader].get(key.as_str(), None).await?;
            assert_eq!(
                pairs(&response),
                owned(&[(&key, &format!("value-{i}"))]),
                "member {reader} reading {key}"
            );
            let header = response.header().context("get response has no header")?;
            assert_eq!(header.member_id(), f.cluster.members[reader].id);
            assert_eq!(header.cluster_id(), cluster_id);
            assert!(header.raft_term() > 0);
        }
    }
    let all = f
        .all
        .get("member-", Some(GetOptions::new().with_prefix()))
        .await?;
    assert_eq!(
        pairs(&all),
        owned(&[
            ("member-0", "value-0"),
            ("member-1", "value-1"),
            ("member-2", "value-2")
        ])
    );

    info!("--- a key never written reads as absent, with a header");
    let missing = f.all.get("never-written", None).await?;
    assert!(missing.kvs().is_empty(), "{missing:?}");
    assert_eq!(missing.count(), 0);
    assert!(revision(missing.header())? > 1);

    f.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_options_prefix_limit_sort_keys_only_count_only() -> anyhow::Result<()> {
    let mut f = Fixture::start().await?;
    let follower = f.followers()[0];

    info!("--- five keys under r/ whose values sort in the opposite order of the keys");
    for (key, value) in [
        ("r/1", "e"),
        ("r/2", "d"),
        ("r/3", "c"),
        ("r/4", "b"),
        ("r/5", "a"),
    ] {
        f.all.put(key, value, None).await?;
    }
    f.all.put("rz", "outside the prefix", None).await?;
    let expected_all = owned(&[
        ("r/1", "e"),
        ("r/2", "d"),
        ("r/3", "c"),
        ("r/4", "b"),
        ("r/5", "a"),
    ]);

    let client = &mut f.members[follower];
    info!("--- prefix: only the keys under r/, in key order");
    let response = client
        .get("r/", Some(GetOptions::new().with_prefix()))
        .await?;
    assert_eq!(pairs(&response), expected_all);
    assert_eq!(response.count(), 5);
    assert!(!response.more());

    info!("--- limit: the first keys, the full count and `more`");
    let response = client
        .get("r/", Some(GetOptions::new().with_prefix().with_limit(2)))
        .await?;
    assert_eq!(pairs(&response), expected_all[..2].to_vec());
    assert_eq!(response.count(), 5, "count ignores the limit");
    assert!(response.more(), "keys remain beyond the limit");
    let response = client
        .get("r/", Some(GetOptions::new().with_prefix().with_limit(5)))
        .await?;
    assert_eq!(response.kvs().len(), 5);
    assert!(!response.more(), "no key remains beyond a limit of 5");

    info!("--- explicit ranges: [r/2, r/4) and every key from r/4 on");
    let response = client
        .get("r/2", Some(GetOptions::new().with_range("r/4")))
        .await?;
    assert_eq!(pairs(&response), expected_all[1..3].to_vec());
    let response = client
        .get("r/4", Some(GetOptions::new().with_from_key()))
        .await?;
    assert_eq!(
        pairs(&response),
        owned(&[("r/4", "b"), ("r/5", "a"), ("rz", "outside the prefix")])
    );

    info!("--- sort by value ascending, by key descending, by create revision descending");
    let response = client
        .get(
            "r/",
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_sort(SortTarget::Value, SortOrder::Ascend),
            ),
        )
        .await?;
    let mut by_value = expected_all.clone();
    by_value.reverse();
    assert_eq!(pairs(&response), by_value);
    let response = client
        .get(
            "r/",
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_sort(SortTarget::Key, SortOrder::Descend),
            ),
        )
        .await?;
    assert_eq!(pairs(&response), by_value);
    let response = client
        .get(
            "r/",
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_sort(SortTarget::Create, SortOrder::Descend)
                    .with_limit(2),
            ),
        )
        .await?;
    assert_eq!(
        pairs(&response),
        owned(&[("r/5", "a"), ("r/4", "b")]),
        "sorting happens before the limit"
    );

    info!("--- keys_only: keys without values; count_only: the count without keys");
    let response = client
        .get("r/", Some(GetOptions::new().with_prefix().with_keys_only()))
        .await?;
    let keys: Vec<_> = pairs(&response);
    assert_eq!(
        keys,
        owned(&[
            ("r/1", ""),
            ("r/2", ""),
            ("r/3", ""),
            ("r/4", ""),
            ("r/5", "")
        ])
    );
    let response = client
        .get(
            "r/",
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await?;
    assert!(
        response.kvs().is_empty(),
        "count_only returned keys: {response:?}"
    );
    assert_eq!(response.count(), 5);

    info!("--- a serializable read on the follower sees what it applied");
    let response = client
        .get(
            "r/",
            Some(GetOptions::new().with_prefix().with_serializable()),
        )
        .await?;
    assert_eq!(pairs(&response), expected_all);

    f.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_a_follower_are_read_linearizably_elsewhere() -> anyhow::Result<()> {
    let mut f = Fixture::start().await?;
    let followers = f.followers();

    info!("--- write through a follower, then read at once from each other member");
    for round in 0..20 {
        let writer = followers[round % 2];
        let key = format!("lin/{round}");
        let value = format!("v{round}");
        let written = revision(
            f.members[writer]
                .put(key.as_str(), value.as_str(), None)
                .await?
                .header(),
        )?;
        for reader in (0..3).filter(|&r| r != writer) {
            let response = f.members[reader].get(key.as_str(), None).await?;
            assert_eq!(
                pairs(&response),
                owned(&[(&key, &value)]),
                "round {round}: written through member {writer}, read from member {reader}"
            );
            assert!(
                revision(response.header())? >= written,
                "round {round}: member {reader} answered at an older revision"
            );
        }
        assert_eq!(
            value_of(&mut f.all, &key).await?.as_deref(),
            Some(value.as_str()),
            "round {round}: balanced client"
        );
    }

    f.shutdown().await;
    Ok(())
}
