//! Alarms and the space quota: the Alarm call (get, activate, deactivate, its bad inputs),
//! Status's `errors`, what a NOSPACE alarm refuses and lets through on every member, a CORRUPT
//! alarm's member refusing clients while the others serve, alarms across a restart (in
//! process; snapshots carrying alarms are tested in `rampart-storage`'s `alarms`); and a small `--quota-backend-bytes` filled against real processes,
//! seen and cleared with etcdctl (`alarm list`, `alarm disarm`, `endpoint status`).

use std::time::Duration;

use anyhow::{ensure, Context};
use rampart_api::etcdserverpb as pb;
use rampart_api::etcdserverpb::lease_client::LeaseClient;
use rampart_api::etcdserverpb::maintenance_client::MaintenanceClient;
use rampart_tests::{put, wait_until, ProcessCluster, TestCluster};
use tonic::transport::Channel;
use tonic::Code;
use tracing::info;

use crate::common::etcdctl_path;

const LEADER_WAIT: Duration = Duration::from_secs(30);
const CATCH_UP: Duration = Duration::from_secs(30);
const NO_SPACE: &str = "etcdserver: mvcc: database space exceeded";
const CORRUPT: &str = "etcdserver: corrupt cluster";

async fn maintenance(url: &str) -> anyhow::Result<MaintenanceClient<Channel>> {
    Ok(MaintenanceClient::connect(url.to_string()).await?)
}

fn alarm_request(
    action: pb::alarm_request::AlarmAction,
    member_id: u64,
    alarm: pb::AlarmType,
) -> pb::AlarmRequest {
    pb::AlarmRequest {
        action: action as i32,
        member_id,
        alarm: alarm as i32,
    }
}

fn member(member_id: u64, alarm: pb::AlarmType) -> pb::AlarmMember {
    pb::AlarmMember {
        member_id,
        alarm: alarm as i32,
    }
}

/// The alarms member `url` lists (GET of every alarm).
async fn listed(url: &str) -> anyhow::Result<Vec<pb::AlarmMember>> {
    use pb::alarm_request::AlarmAction;
    let request = alarm_request(AlarmAction::Get, 0, pb::AlarmType::None);
    Ok(maintenance(url)
        .await?
        .alarm(request)
        .await?
        .into_inner()
        .alarms)
}

/// Member `url`'s Status `errors`.
async fn status_errors(url: &str) -> anyhow::Result<Vec<String>> {
    Ok(maintenance(url)
        .await?
        .status(pb::StatusRequest {})
        .await?
        .into_inner()
        .errors)
}

/// Checks that `result` failed with `code` and exactly `message`.
fn refused<T: std::fmt::Debug>(
    what: &str,
    result: Result<T, tonic::Status>,
    code: Code,
    message: &str,
) -> anyhow::Result<()> {
    match result {
        Ok(answer) => anyhow::bail!("{what}: expected {code:?} {message:?}, got {answer:?}"),
        Err(status) => {
            ensure!(
                status.code() == code && status.message() == message,
                "{what}: expected {code:?} {message:?}, got {:?} {:?}",
                status.code(),
                status.message()
            );
            Ok(())
        }
    }
}

fn put_request(key: &str, value: &str) -> pb::PutRequest {
    pb::PutRequest {
        key: key.into(),
        value: value.into(),
        ..Default::default()
    }
}

fn txn_with(op: pb::request_op::Request) -> pb::TxnRequest {
    pb::TxnRequest {
        success: vec![pb::RequestOp { request: Some(op) }],
        ..Default::default()
    }
}

fn range_request(key: &str) -> pb::RangeRequest {
    pb::RangeRequest {
        key: key.into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alarms_are_raised_listed_and_cleared_and_nospace_caps_writes_everywhere(
) -> anyhow::Result<()> {
    use pb::alarm_request::AlarmAction;
    let mut cluster = TestCluster::start(3).await?;
    cluster.wait_for_leader(LEADER_WAIT).await?;
    let urls = cluster.client_urls();
    let ids = cluster.ids();
    put(&mut cluster.client(0).await?, "k", "v").await?;
    ensure!(
        listed(&urls[0]).await?.is_empty(),
        "a new cluster has no alarm"
    );

    info!("--- bad alarm requests are refused and change nothing");
    let mut m0 = maintenance(&urls[0]).await?;
    let none = alarm_request(AlarmAction::Activate, ids[1], pb::AlarmType::None);
    let refusal = m0.alarm(none).await;
    ensure!(
        refusal
            .as_ref()
            .is_err_and(|s| s.code() == Code::InvalidArgument),
        "activating NONE: {refusal:?}"
    );
    let bad_action = pb::AlarmRequest {
        action: 9,
        ..Default::default()
    };
    let refusal = m0.alarm(bad_action).await;
    ensure!(
        refusal
            .as_ref()
            .is_err_and(|s| s.code() == Code::InvalidArgument),
        "action 9: {refusal:?}"
    );
    ensure!(listed(&urls[0]).await?.is_empty());

    info!("--- NOSPACE raised for member 1: answered once, listed by every member");
    let no_space = alarm_request(AlarmAction::Activate, ids[1], pb::AlarmType::Nospace);
    let raised = m0.alarm(no_space).await?.into_inner().alarms;
    let expected = vec![member(ids[1], pb::AlarmType::Nospace)];
    ensure!(raised == expected, "raised {raised:?}");
    let again = m0.alarm(no_space).await?.into_inner().alarms;
    ensure!(
        again.is_empty(),
        "raising it again changes nothing: {again:?}"
    );
    for url in &urls {
        ensure!(listed(url).await? == expected, "{url} lists its alarms");
        let errors = status_errors(url).await?;
        ensure!(
            errors == [format!("memberID:{} alarm:NOSPACE ", ids[1])],
            "{url}: Status errors {errors:?}"
        );
    }
    let only_corrupt = alarm_request(AlarmAction::Get, 0, pb::AlarmType::Corrupt);
    ensure!(m0.alarm(only_corrupt).await?.into_inner().alarms.is_empty());

    info!("--- every member refuses puts, txns with puts and grants; serves the rest");
    for (i, url) in urls.iter().enumerate() {
        let mut kv = cluster.client(i).await?;
        let mut lease = LeaseClient::connect(url.clone()).await?;
        refused(
            "put",
            kv.put(put_request("new", "x")).await,
            Code::ResourceExhausted,
            NO_SPACE,
        )?;
        let txn_put = txn_with(pb::request_op::Request::RequestPut(put_request("new", "x")));
        refused(
            "txn with a put",
            kv.txn(txn_put).await,
            Code::ResourceExhausted,
            NO_SPACE,
        )?;
        let grant = pb::LeaseGrantRequest { ttl: 60, id: 0 };
        refused(
            "lease grant",
            lease.lease_grant(grant).await,
            Code::ResourceExhausted,
            NO_SPACE,
        )?;
        let got = kv.range(range_request("k")).await?.into_inner();
        ensure!(got.count == 1, "{url}: reads are served");
        let txn_read = txn_with(pb::request_op::Request::RequestRange(range_request("k")));
        ensure!(kv.txn(txn_read).await?.into_inner().succeeded);
        let delete = pb::DeleteRangeRequest {
            key: format!("absent-{i}").into(),
            ..Default::default()
        };
        kv.delete_range(delete).await?;
    }
    let mut kv = cluster.client(2).await?;
    let deleted = kv
        .delete_range(pb::DeleteRangeRequest {
            key: "k".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    ensure!(deleted.deleted == 1, "deletes are served");
    let revision = deleted.header.context("no header")?.revision;
    kv.compact(pb::CompactionRequest {
        revision,
        physical: true,
    })
    .await?;

    info!("--- cleared: writes go through again on every member");
    let clear = alarm_request(AlarmAction::Deactivate, ids[1], pb::AlarmType::Nospace);
    let cleared = m0.alarm(clear).await?.into_inner().alarms;
    ensure!(cleared == expected, "cleared {cleared:?}");
    ensure!(m0.alarm(clear).await?.into_inner().alarms.is_empty());
    for (i, url) in urls.iter().enumerate() {
        put(&mut cluster.client(i).await?, &format!("after-{i}"), "v").await?;
        ensure!(status_errors(url).await?.is_empty());
    }

    info!("--- CORRUPT for member 2: it refuses clients, the others serve");
    let corrupt = alarm_request(AlarmAction::Activate, ids[2], pb::AlarmType::Corrupt);
    m0.alarm(corrupt).await?;
    let corrupt_listed = vec![member(ids[2], pb::AlarmType::Corrupt)];
    wait_until("member 2 to refuse clients", CATCH_UP, || async {
        let answer = cluster
            .client(2)
            .await?
            .range(range_request("after-0"))
            .await;
        Ok(answer.is_err().then_some(()))
    })
    .await?;
    let answer = cluster
        .client(2)
        .await?
        .range(range_request("after-0"))
        .await;
    refused(
        "range on the corrupt member",
        answer,
        Code::DataLoss,
        CORRUPT,
    )?;
    let answer = cluster.client(2).await?.put(put_request("x", "y")).await;
    refused("put on the corrupt member", answer, Code::DataLoss, CORRUPT)?;
    put(&mut cluster.client(0).await?, "still", "served").await?;
    ensure!(
        cluster
            .client(1)
            .await?
            .range(range_request("still"))
            .await?
            .into_inner()
            .count
            == 1
    );
    ensure!(
        listed(&urls[2]).await? == corrupt_listed,
        "Alarm is served by it"
    );

    info!("--- the alarm survives a restart of its member");
    cluster.stop(2).await;
    cluster.restart(2).await?;
    ensure!(listed(&urls[2]).await? == corrupt_listed);
    ensure!(status_errors(&urls[2]).await? == [format!("memberID:{} alarm:CORRUPT ", ids[2])]);
    let answer = cluster.client(2).await?.range(range_request("still")).await;
    refused("range after the restart", answer, Code::DataLoss, CORRUPT)?;

    info!("--- cleared: member 2 serves again");
    let clear = alarm_request(AlarmAction::Deactivate, ids[2], pb::AlarmType::Corrupt);
    maintenance(&urls[2]).await?.alarm(clear).await?;
    let got = cluster
        .client(2)
        .await?
        .range(range_request("still"))
        .await?
        .into_inner();
    ensure!(got.count == 1);
    cluster.shutdown().await;
    Ok(())
}

/// One etcdctl run against `endpoints`: its standard output, or an error with what it printed.
pub(crate) async fn etcdctl(endpoints: &[String], args: &[&str]) -> anyhow::Result<String> {
    let output = tokio::process::Command::new(etcdctl_path()?)
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", endpoints.join(",")))
        .arg("--dial-timeout=5s")
        .arg("--command-timeout=30s")
        .args(args)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), output)
        .await
        .context("etcdctl took over a minute")??;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    ensure!(
        output.status.success(),
        "etcdctl {args:?} failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(stdout)
}

/// The quota of the processes below: sled writes its file in 16 MiB steps, so the first step
/// passes it.
const SMALL_QUOTA: u64 = 4 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_quota_raises_nospace_and_etcdctl_sees_and_disarms_it() -> anyhow::Result<()> {
    let quota = format!("--quota-backend-bytes={SMALL_QUOTA}");
    let mut cluster = ProcessCluster::start_with_args(3, &[&quota]).await?;
    let urls = cluster.client_urls();
    let mut kv = rampart_tests::kv_client(&urls[0]).await?;
    let value = "v".repeat(1024 * 1024);

    info!("--- fill the database until the quota refuses a put");
    let mut written = 0;
    let refusal = loop {
        ensure!(
            written < 64,
            "64 MiB written and the quota of 4 MiB never refused a put"
        );
        match kv
            .put(put_request(&format!("big-{written:02}"), &value))
            .await
        {
            Ok(_) => written += 1,
            Err(status) => break status,
        }
    };
    ensure!(
        refusal.code() == Code::ResourceExhausted && refusal.message() == NO_SPACE,
        "after {written} puts: {refusal:?}"
    );
    info!(written, "--- refused; the alarm is listed by etcdctl");
    let list = etcdctl(&urls, &["alarm", "list"]).await?;
    ensure!(
        list.contains("alarm:NOSPACE"),
        "alarm list printed {list:?}"
    );
    let status = etcdctl(&urls[..1], &["endpoint", "status", "-w", "json"]).await?;
    ensure!(
        status.contains("alarm:NOSPACE"),
        "endpoint status printed {status:?}"
    );
    let table = etcdctl(&urls, &["endpoint", "status", "-w", "table"]).await?;
    ensure!(
        table.contains("alarm:NOSPACE"),
        "the ERRORS column: {table}"
    );

    info!("--- every member: writes refused with etcd's text and code, reads and deletes served");
    for url in &urls {
        let mut kv = rampart_tests::kv_client(url).await?;
        refused(
            "put",
            kv.put(put_request("small", "x")).await,
            Code::ResourceExhausted,
            NO_SPACE,
        )?;
        let got = kv.range(range_request("big-00")).await?.into_inner();
        ensure!(got.count == 1, "{url} serves reads");
    }
    let put = etcdctl(&urls, &["put", "small", "x"]).await;
    ensure!(
        put.as_ref()
            .is_err_and(|e| e.to_string().contains("database space exceeded")),
        "etcdctl put: {put:?}"
    );
    let deleted = etcdctl(&urls, &["del", "big-", "--prefix"]).await?;
    ensure!(
        deleted.trim() == written.to_string(),
        "etcdctl del printed {deleted:?}"
    );

    info!("--- stop everyone, give them room, restart: the alarm is still raised");
    for i in 0..3 {
        cluster.kill(i)?;
        cluster.members[i].set_flag("quota-backend-bytes", &(1u64 << 30).to_string());
    }
    for i in 0..3 {
        cluster.restart(i).await?;
    }
    cluster.wait_for_leader().await?;
    let list = etcdctl(&urls, &["alarm", "list"]).await?;
    ensure!(
        list.contains("alarm:NOSPACE"),
        "after the restart, alarm list printed {list:?}"
    );
    let mut kv = rampart_tests::kv_client(&urls[1]).await?;
    refused(
        "put",
        kv.put(put_request("small", "x")).await,
        Code::ResourceExhausted,
        NO_SPACE,
    )?;

    info!("--- etcdctl alarm disarm: writes work again");
    let disarmed = etcdctl(&urls, &["alarm", "disarm"]).await?;
    ensure!(
        disarmed.contains("alarm:NOSPACE"),
        "alarm disarm printed {disarmed:?}"
    );
    ensure!(etcdctl(&urls, &["alarm", "list"]).await?.trim().is_empty());
    for url in &urls {
        let mut kv = rampart_tests::kv_client(url).await?;
        kv.put(put_request("small", "x")).await?;
    }
    Ok(())
}
