//! Txn: compares on every target choose the then or the else branch, a read-only txn makes no
//! revision, and a nested txn runs inside its parent's.

use anyhow::Context;
use etcd_client::{Compare, CompareOp, Txn, TxnOp, TxnOpResponse};
use tracing::info;

use super::{pairs, revision, value_of, Fixture};
use crate::common::owned;

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
