//! Compatibility with the `etcd-client` crate, a real etcd v3 client, against a 3-member
//! in-process cluster.
//!
//! Each test talks to the cluster through a client that balances over all three client URLs and
//! through one client per member, so requests land on followers as well as on the leader: a
//! follower forwards writes to the leader and answers linearizable reads through a read index,
//! and both paths must give what etcd gives, errors included (code and exact message).

use std::time::Duration;

use anyhow::Context;
use etcd_client::{
    Client, CompactionOptions, Compare, CompareOp, DeleteOptions, GetOptions, GetResponse,
    PutOptions, SortOrder, SortTarget, Txn, TxnOp, TxnOpResponse,
};
use rampart_tests::{wait_until, TestCluster};
use tonic::Code;
use tracing::info;

use crate::common::{connect, expect_error, owned};

const LEADER_WAIT: Duration = Duration::from_secs(20);
/// How long members may take to publish their client URLs after start.
const PUBLISH_WAIT: Duration = Duration::from_secs(20);

/// A started 3-member cluster with one client per member and one over all members.
struct Fixture {
    cluster: TestCluster,
    /// Balances over every member's client URL.
    all: Client,
    /// `members[i]` talks to member `i` only.
    members: Vec<Client>,
    /// The index of the leader when the fixture was made.
    leader: usize,
}

impl Fixture {
    /// Starts the cluster and waits until it has a leader and every member has published its
    /// client URLs (publishing goes through Raft; waiting keeps it out of the tests' way).
    async fn start() -> anyhow::Result<Fixture> {
        let cluster = TestCluster::start(3).await?;
        let leader = cluster.wait_for_leader(LEADER_WAIT).await?;
        let leader = cluster.index_of(leader);
        let urls: Vec<String> = cluster
            .members
            .iter()
            .map(|m| m.client_url.clone())
            .collect();
        let all = connect(&urls).await?;
        let mut members = Vec::new();
        for url in &urls {
            members.push(connect(std::slice::from_ref(url)).await?);
        }
        let fixture = Fixture {
            cluster,
            all,
            members,
            leader,
        };
        fixture.wait_published().await?;
        Ok(fixture)
    }

    /// The indexes of the members that were followers when the fixture was made.
    fn followers(&self) -> Vec<usize> {
        (0..3).filter(|&i| i != self.leader).collect()
    }

    fn cluster_id(&self) -> u64 {
        self.cluster.members[0]
            .running
            .as_ref()
            .expect("member 0 runs")
            .node
            .config()
            .cluster_id
    }

    /// Waits until every member lists all three members with their client URLs.
    async fn wait_published(&self) -> anyhow::Result<()> {
        for (i, client) in self.members.iter().enumerate() {
            wait_until(
                &format!("member {i} to list every member's client URLs"),
                PUBLISH_WAIT,
                || {
                    let mut client = client.clone();
                    async move {
                        let list = client.member_list().await?;
                        let complete = list.members().len() == 3
                            && list.members().iter().all(|m| !m.client_urls().is_empty());
                        Ok(complete.then_some(()))
                    }
                },
            )
            .await?;
        }
        Ok(())
    }

    async fn shutdown(self) {
        // Clients first, so that no open connection waits on the members' graceful stop.
        drop(self.all);
        drop(self.members);
        self.cluster.shutdown().await;
    }
}

/// The revision in a response header.
fn revision(header: Option<&etcd_client::ResponseHeader>) -> anyhow::Result<i64> {
    Ok(header.context("response has no header")?.revision())
}

/// The store's current revision, read linearizably through `client`.
async fn current_revision(client: &mut Client) -> anyhow::Result<i64> {
    revision(client.get("no-such-key", None).await?.header())
}

/// The `(key, value)` pairs of a range response, as strings.
fn pairs(response: &GetResponse) -> Vec<(String, String)> {
    response
        .kvs()
        .iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(kv.key()).into_owned(),
                String::from_utf8_lossy(kv.value()).into_owned(),
            )
        })
        .collect()
}

/// The value of `key` read through `client` (linearizable), or `None`.
async fn value_of(client: &mut Client, key: &str) -> anyhow::Result<Option<String>> {
    let response = client.get(key, None).await?;
    Ok(response
        .kvs()
        .first()
        .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
}

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
async fn txn_compares_choose_then_or_else() -> anyhow::Result<()> {
    let mut f = Fixture::start().await?;
    let follower = f.followers()[0];
    let client = &mut f.members[follower];

    let r1 = revision(client.put("t", "one", None).await?.header())?;

    info!("--- every compare target holds: the then branch runs and reads its own writes");
    let txn = Txn::new()
        .when([
            Compare::version("t", CompareOp::Equal, 1),
            Compare::create_revision("t", CompareOp::Equal, r1),
            Compare::mod_revision("t", CompareOp::Equal, r1),
            Compare::value("t", CompareOp::Equal, "one"),
        ])
        .and_then([
            TxnOp::put("t", "two", None),
            TxnOp::put("u", "new", None),
            TxnOp::get("t", None),
        ])
        .or_else([TxnOp::get("t", None)]);
    let response = client.txn(txn).await?;
    assert!(response.succeeded(), "{response:?}");
    assert_eq!(
        revision(response.header())?,
        r1 + 1,
        "one revision for the whole txn"
    );
    let ops = response.op_responses();
    assert_eq!(ops.len(), 3, "{ops:?}");
    assert!(matches!(ops[0], TxnOpResponse::Put(_)), "{ops:?}");
    assert!(matches!(ops[1], TxnOpResponse::Put(_)), "{ops:?}");
    match &ops[2] {
        TxnOpResponse::Get(get) => assert_eq!(pairs(get), owned(&[("t", "two")])),
        other => anyhow::bail!("expected a range response, got {other:?}"),
    }

    info!("--- a failing compare runs the else branch");
    let txn = Txn::new()
        .when([Compare::value("t", CompareOp::Equal, "one")])
        .and_then([TxnOp::put("t", "three", None)])
        .or_else([TxnOp::get("t", None), TxnOp::put("else", "ran", None)]);
    let response = client.txn(txn).await?;
    assert!(!response.succeeded(), "{response:?}");
    assert_eq!(revision(response.header())?, r1 + 2);
    let ops = response.op_responses();
    match &ops[0] {
        TxnOpResponse::Get(get) => assert_eq!(pairs(get), owned(&[("t", "two")])),
        other => anyhow::bail!("expected a range response, got {other:?}"),
    }
    assert_eq!(value_of(&mut f.all, "t").await?.as_deref(), Some("two"));
    assert_eq!(value_of(&mut f.all, "else").await?.as_deref(), Some("ran"));

    info!("--- greater, less and not-equal, and create_revision 0 for a missing key");
    let txn = Txn::new()
        .when([
            Compare::version("t", CompareOp::Greater, 1),
            Compare::mod_revision("t", CompareOp::Less, r1 + 100),
            Compare::value("t", CompareOp::NotEqual, "one"),
            Compare::create_revision("absent", CompareOp::Equal, 0),
        ])
        .and_then([TxnOp::put("absent", "created", None)]);
    let response = f.members[follower].txn(txn).await?;
    assert!(response.succeeded(), "{response:?}");
    assert_eq!(revision(response.header())?, r1 + 3);

    info!("--- a txn that only reads creates no revision");
    let txn = Txn::new()
        .when([Compare::value("t", CompareOp::Equal, "two")])
        .and_then([TxnOp::get("t", None), TxnOp::get("u", None)]);
    let response = f.all.txn(txn).await?;
    assert!(response.succeeded());
    assert_eq!(revision(response.header())?, r1 + 3);

    info!("--- a nested txn runs inside its parent's revision");
    let inner = Txn::new()
        .when([Compare::version("u", CompareOp::Equal, 1)])
        .and_then([TxnOp::put("nested", "yes", None)]);
    let txn = Txn::new()
        .when([Compare::value("t", CompareOp::Equal, "two")])
        .and_then([TxnOp::txn(inner), TxnOp::put("outer", "yes", None)]);
    let response = f.members[follower].txn(txn).await?;
    assert!(response.succeeded(), "{response:?}");
    assert_eq!(revision(response.header())?, r1 + 4);
    for key in ["nested", "outer"] {
        let response = f.all.get(key, None).await?;
        let kv = response
            .kvs()
            .first()
            .with_context(|| format!("{key} is missing"))?;
        assert_eq!(kv.mod_revision(), r1 + 4, "{key}");
    }

    f.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_requests_fail_with_etcds_errors_and_change_nothing() -> anyhow::Result<()> {
    let mut f = Fixture::start().await?;
    f.all.put("existing", "value", None).await?;
    let before = current_revision(&mut f.all).await?;

    for i in 0..3 {
        let role = if i == f.leader { "leader" } else { "follower" };
        let client = &mut f.members[i];
        info!("--- invalid requests through member {i} ({role})");

        expect_error(
            &format!("member {i}: txn writing one key twice"),
            client
                .txn(Txn::new().and_then([TxnOp::put("d", "1", None), TxnOp::put("d", "2", None)]))
                .await,
            Code::InvalidArgument,
            "etcdserver: duplicate key given in txn request",
        )?;

        expect_error(
            &format!("member {i}: put of an empty key"),
            client.put("", "v", None).await,
            Code::InvalidArgument,
            "etcdserver: key is not provided",
        )?;
        expect_error(
            &format!("member {i}: get of an empty key"),
            client.get("", None).await,
            Code::InvalidArgument,
            "etcdserver: key is not provided",
        )?;
        expect_error(
            &format!("member {i}: delete of an empty key"),
            client.delete("", None).await,
            Code::InvalidArgument,
            "etcdserver: key is not provided",
        )?;

        let too_many: Vec<TxnOp> = (0..129)
            .map(|k| TxnOp::put(format!("many/{k}"), "v", None))
            .collect();
        expect_error(
            &format!("member {i}: txn with 129 operations"),
            client.txn(Txn::new().and_then(too_many)).await,
            Code::InvalidArgument,
            "etcdserver: too many operations in txn request",
        )?;

        expect_error(
            &format!("member {i}: put with a lease that does not exist"),
            client
                .put("leased", "v", Some(PutOptions::new().with_lease(0x1234)))
                .await,
            Code::NotFound,
            "etcdserver: requested lease not found",
        )?;

        let big = vec![b'x'; 1536 * 1024 + 1024];
        expect_error(
            &format!("member {i}: put larger than 1.5 MiB"),
            client.put("big", big, None).await,
            Code::InvalidArgument,
            "etcdserver: request is too large",
        )?;
    }

    info!("--- nothing changed: same revision, none of the keys exists");
    for (i, client) in f.members.iter_mut().enumerate() {
        assert_eq!(
            current_revision(client).await?,
            before,
            "member {i}: a refused request created a revision"
        );
        for key in ["d", "many/", "leased", "big"] {
            let response = client
                .get(key, Some(GetOptions::new().with_prefix()))
                .await?;
            assert!(
                response.kvs().is_empty(),
                "member {i}: {key} exists: {response:?}"
            );
        }
        assert_eq!(
            value_of(client, "existing").await?.as_deref(),
            Some("value")
        );
    }

    info!("--- the limits are inclusive: 128 operations are accepted");
    let ops: Vec<TxnOp> = (0..128)
        .map(|k| TxnOp::put(format!("many/{k:03}"), "v", None))
        .collect();
    let response = f.all.txn(Txn::new().and_then(ops)).await?;
    assert!(response.succeeded());
    assert_eq!(revision(response.header())?, before + 1);
    let count = f
        .all
        .get(
            "many/",
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await?;
    assert_eq!(count.count(), 128);

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_list_names_every_member_with_its_urls() -> anyhow::Result<()> {
    let mut f = Fixture::start().await?;
    let cluster_id = f.cluster_id();

    for i in 0..3 {
        info!("--- member list through member {i}");
        let response = f.members[i].member_list().await?;
        let header = response.header().context("no header")?;
        assert_eq!(header.cluster_id(), cluster_id);
        assert_eq!(header.member_id(), f.cluster.members[i].id);
        let mut listed: Vec<_> = response
            .members()
            .iter()
            .map(|m| {
                (
                    m.name().to_string(),
                    m.id(),
                    m.peer_urls().to_vec(),
                    m.client_urls().to_vec(),
                    m.is_learner(),
                )
            })
            .collect();
        listed.sort();
        let expected: Vec<_> = f
            .cluster
            .members
            .iter()
            .map(|m| {
                (
                    m.name.clone(),
                    m.id,
                    vec![m.peer_url.clone()],
                    vec![m.client_url.clone()],
                    false,
                )
            })
            .collect();
        assert_eq!(listed, expected, "member list through member {i}");
    }
    let names: Vec<_> = f
        .all
        .member_list()
        .await?
        .members()
        .iter()
        .map(|m| m.name().to_string())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(names, ["m0", "m1", "m2"]);

    f.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_status_agrees_on_the_leader() -> anyhow::Result<()> {
    let mut f = Fixture::start().await?;
    let leader = f.cluster.wait_for_leader(LEADER_WAIT).await?;
    let cluster_id = f.cluster_id();

    info!("--- status from every member names the same, non-zero leader");
    for i in 0..3 {
        let member_id = f.cluster.members[i].id;
        let status = f.members[i].status().await?;
        assert_ne!(status.leader(), 0, "member {i} reports no leader");
        assert_eq!(status.leader(), leader, "member {i} names another leader");
        assert!(status.raft_term() > 0, "member {i}: raft term 0");
        assert!(status.raft_index() > 0, "member {i}: raft index 0");
        assert!(
            status.raft_applied_index() <= status.raft_index(),
            "member {i}: applied {} beyond the log {}",
            status.raft_applied_index(),
            status.raft_index()
        );
        assert!(!status.version().is_empty(), "member {i}: no version");
        assert!(!status.is_learner(), "member {i} is a voter");
        let header = status.header().context("no header")?;
        assert_eq!(header.member_id(), member_id);
        assert_eq!(header.cluster_id(), cluster_id);
        assert!(
            header.revision() >= 1,
            "member {i}: revision {}",
            header.revision()
        );
    }

    f.shutdown().await;
    Ok(())
}
