//! Invalid requests, through the leader and the followers alike: etcd's code and exact message,
//! and nothing changed; the limits themselves are accepted.

use etcd_client::{GetOptions, PutOptions, Txn, TxnOp};
use tonic::Code;
use tracing::info;

use super::{current_revision, revision, value_of, Fixture};
use crate::common::expect_error;

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
