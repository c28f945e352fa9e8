//! What a member tells its operators over plain HTTP: `/metrics` under etcd's names, and the
//! `/health`, `/livez` and `/readyz` probes, on the client port and on `--listen-metrics-urls`.

use std::time::Duration;

use rampart_api::etcdserverpb as pb;
use rampart_server::config::{Config, RawConfig};
use rampart_server::{Listeners, RunningNode};
use rampart_tests::{put, wait_until, TestCluster};
use tokio::net::TcpListener;
use tracing::info;

use crate::common::http_get;

const WAIT: Duration = Duration::from_secs(20);

/// The value of the sample `series` (a metric name with its labels, as written) in `text`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok())?
        })
}

/// The sum of every sample of metric `name` whose labels contain all of `labels`.
fn sum_with(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|line| line.starts_with(&format!("{name}{{")))
        .filter(|line| labels.iter().all(|label| line.contains(label)))
        .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

async fn metrics(url: &str) -> anyhow::Result<String> {
    let (status, text) = http_get(url, "/metrics").await?;
    anyhow::ensure!(status == 200, "/metrics answered {status}: {text}");
    Ok(text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_on_the_client_port_have_etcds_names_and_live_values() -> anyhow::Result<()> {
    let cluster = TestCluster::start(3).await?;
    cluster.wait_for_leader(WAIT).await?;
    let urls = cluster.client_urls();
    let mut client = cluster.client(0).await?;
    for i in 0..5 {
        put(&mut client, &format!("k{i}"), "v").await?;
    }
    let refused = client
        .put(pb::PutRequest::default())
        .await
        .expect_err("a put without a key is refused");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);

    info!("--- every member has a leader, and exactly one is it");
    let mut leaders = 0.0;
    for url in &urls {
        let text = wait_until("a leader in the metrics", WAIT, || async {
            let text = metrics(url).await?;
            Ok((sample(&text, "etcd_server_has_leader") == Some(1.0)).then_some(text))
        })
        .await?;
        leaders += sample(&text, "etcd_server_is_leader").unwrap_or(-1.0);
        assert!(sample(&text, "etcd_server_leader_changes_seen_total") >= Some(1.0));
        assert!(sample(&text, "process_resident_memory_bytes") > Some(0.0));
        assert!(sample(&text, "process_start_time_seconds") > Some(0.0));
        assert!(sample(&text, "etcd_disk_wal_fsync_duration_seconds_count") > Some(0.0));
        let stuck = sample(&text, "rampart_storage_oldest_operation_seconds");
        assert!(
            stuck.is_some_and(|seconds| (0.0..60.0).contains(&seconds)),
            "{text}"
        );
        assert!(text.contains("etcd_server_id{server_id=\""), "{text}");
    }
    assert_eq!(leaders, 1.0);

    info!("--- the member written through counts the writes, applied and handled");
    let text = wait_until("the five keys in the metrics", WAIT, || async {
        let text = metrics(&urls[0]).await?;
        Ok((sample(&text, "etcd_debugging_mvcc_keys_total") == Some(5.0)).then_some(text))
    })
    .await?;
    assert!(sample(&text, "etcd_server_proposals_applied_total") >= Some(5.0));
    assert!(
        sample(&text, "etcd_server_proposals_committed_total")
            >= sample(&text, "etcd_server_proposals_applied_total")
    );
    assert_eq!(sample(&text, "etcd_server_proposals_pending"), Some(0.0));
    assert!(sample(&text, "etcd_mvcc_db_total_size_in_bytes") > Some(0.0));
    // In use: what Status reports as dbSizeInUse (nothing is written meanwhile), less than the
    // file once a defragment has made it a whole sled segment.
    let channel = tonic::transport::Channel::from_shared(urls[0].clone())?
        .connect()
        .await?;
    let mut maintenance = pb::maintenance_client::MaintenanceClient::new(channel);
    maintenance.defragment(pb::DefragmentRequest {}).await?;
    let status = maintenance.status(pb::StatusRequest {}).await?.into_inner();
    assert!(status.db_size_in_use < status.db_size, "{status:?}");
    let text = metrics(&urls[0]).await?;
    assert_eq!(
        sample(&text, "etcd_mvcc_db_total_size_in_use_in_bytes"),
        Some(status.db_size_in_use as f64)
    );
    let put_ok = [
        "grpc_method=\"Put\"",
        "grpc_code=\"OK\"",
        "grpc_service=\"etcdserverpb.KV\"",
        "grpc_type=\"unary\"",
    ];
    assert_eq!(sum_with(&text, "grpc_server_handled_total", &put_ok), 5.0);
    let put_refused = ["grpc_method=\"Put\"", "grpc_code=\"InvalidArgument\""];
    assert_eq!(
        sum_with(&text, "grpc_server_handled_total", &put_refused),
        1.0
    );
    assert_eq!(
        sum_with(&text, "grpc_server_started_total", &["grpc_method=\"Put\""]),
        6.0
    );

    info!("--- an open watch is counted while it lasts");
    let mut watch = etcd_client::Client::connect([urls[1].as_str()], None).await?;
    let stream = watch.watch("k", None).await?;
    wait_until("the watcher to be counted", WAIT, || async {
        let text = metrics(&urls[1]).await?;
        Ok((sample(&text, "etcd_mvcc_watcher_total") == Some(1.0)).then_some(()))
    })
    .await?;
    drop((stream, watch));
    wait_until("the watcher to be gone", WAIT, || async {
        let text = metrics(&urls[1]).await?;
        Ok((sample(&text, "etcd_mvcc_watcher_total") == Some(0.0)).then_some(()))
    })
    .await?;
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_says_false_with_a_reason_once_the_member_has_no_leader() -> anyhow::Result<()> {
    let mut cluster = TestCluster::start(3).await?;
    cluster.wait_for_leader(WAIT).await?;
    let url = cluster.client_urls()[0].clone();

    info!("--- with a quorum, every probe passes");
    let (status, body) = http_get(&url, "/health").await?;
    assert_eq!(
        (status, body.as_str()),
        (200, r#"{"health":"true","reason":""}"#)
    );
    let (status, body) = http_get(&url, "/readyz?verbose").await?;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("[+]linearizable_read ok") && body.ends_with("ok\n"),
        "{body}"
    );
    assert_eq!(http_get(&url, "/livez").await?, (200, "ok\n".to_string()));

    info!("--- a raised alarm makes the cluster unhealthy; CORRUPT makes its member unready");
    let channel = tonic::transport::Channel::from_shared(url.clone())?
        .connect()
        .await?;
    let mut maintenance = pb::maintenance_client::MaintenanceClient::new(channel);
    let member_id = cluster.members[0].id;
    let alarm = |action: pb::alarm_request::AlarmAction, alarm: pb::AlarmType| pb::AlarmRequest {
        action: action as i32,
        member_id,
        alarm: alarm as i32,
    };
    use pb::alarm_request::AlarmAction::{Activate, Deactivate};
    maintenance
        .alarm(alarm(Activate, pb::AlarmType::Nospace))
        .await?;
    let (status, body) = http_get(&url, "/health").await?;
    assert_eq!(
        (status, body.as_str()),
        (503, r#"{"health":"false","reason":"ALARM NOSPACE"}"#)
    );
    assert_eq!(http_get(&url, "/readyz").await?.0, 200);
    maintenance
        .alarm(alarm(Activate, pb::AlarmType::Corrupt))
        .await?;
    let (status, body) = http_get(&url, "/readyz").await?;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("[-]data_corruption failed"), "{body}");
    for kind in [pb::AlarmType::Nospace, pb::AlarmType::Corrupt] {
        maintenance.alarm(alarm(Deactivate, kind)).await?;
    }
    assert_eq!(http_get(&url, "/health").await?.0, 200);
    assert_eq!(http_get(&url, "/readyz").await?.0, 200);

    info!("--- without the other two members, health and readiness fail, liveness holds");
    cluster.stop(1).await;
    cluster.stop(2).await;
    let (status, body) = wait_until("/health to fail", WAIT, || async {
        let answer = http_get(&url, "/health").await?;
        Ok((answer.0 != 200).then_some(answer))
    })
    .await?;
    assert_eq!(status, 503);
    let health: serde_json::Value = serde_json::from_str(&body)?;
    assert_eq!(health["health"], "false", "{body}");
    assert!(
        ["RAFT NO LEADER", "QGET ERROR"].contains(&health["reason"].as_str().unwrap_or("")),
        "{body}"
    );
    let (status, body) = http_get(&url, "/readyz").await?;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("[-]"), "{body}");
    assert_eq!(http_get(&url, "/livez").await?.0, 200);
    let text = metrics(&url).await?;
    assert_eq!(sample(&text, "etcd_server_has_leader"), Some(0.0), "{text}");
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_urls_serve_the_endpoints_and_no_grpc() -> anyhow::Result<()> {
    rampart_tests::init_tracing();
    let dir = tempfile::tempdir()?;
    let client = TcpListener::bind("127.0.0.1:0").await?;
    let peer = TcpListener::bind("127.0.0.1:0").await?;
    let metrics_listener = TcpListener::bind("127.0.0.1:0").await?;
    let client_url = format!("http://{}", client.local_addr()?);
    let peer_url = format!("http://{}", peer.local_addr()?);
    let metrics_url = format!("http://{}", metrics_listener.local_addr()?);
    let config = Config::from_raw(RawConfig {
        name: Some("solo".into()),
        data_dir: Some(dir.path().join("solo")),
        listen_client_urls: Some(client_url.clone()),
        listen_peer_urls: Some(peer_url),
        listen_metrics_urls: Some(metrics_url.clone()),
        ..Default::default()
    })?;
    assert_eq!(config.listen_metrics_urls, vec![metrics_url.clone()]);
    let listeners = Listeners {
        client: vec![client],
        peer: vec![peer],
        metrics: vec![metrics_listener],
    };
    let node = RunningNode::start(config, listeners, Default::default()).await?;

    let text = wait_until("a leader on the metrics URL", WAIT, || async {
        let text = metrics(&metrics_url).await?;
        Ok((sample(&text, "etcd_server_has_leader") == Some(1.0)).then_some(text))
    })
    .await?;
    assert_eq!(sample(&text, "etcd_server_is_leader"), Some(1.0));
    wait_until("/health on the metrics URL", WAIT, || async {
        Ok((http_get(&metrics_url, "/health").await?.0 == 200).then_some(()))
    })
    .await?;
    assert_eq!(http_get(&metrics_url, "/nothing").await?.0, 404);
    let grpc = rampart_tests::kv_client(&metrics_url).await;
    let served = match grpc {
        Ok(mut kv) => kv.range(pb::RangeRequest::default()).await.is_ok(),
        Err(_) => false,
    };
    assert!(!served, "the metrics URL must not serve the KV service");
    node.shutdown().await;
    Ok(())
}

#[test]
fn a_metrics_mode_other_than_etcds_is_refused() {
    let raw = RawConfig {
        metrics: Some("everything".into()),
        ..Default::default()
    };
    let error = Config::from_raw(raw).expect_err("refused").to_string();
    assert!(error.contains("--metrics"), "{error}");
}

/// The identifiers of a PromQL expression that start like Rampart's metric families: its metric
/// names, and label names such as `grpc_code` (which the caller tells apart).
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut current = String::new();
    for c in expr.chars().chain(std::iter::once(' ')) {
        if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
            current.push(c);
            continue;
        }
        let word = std::mem::take(&mut current);
        if ["etcd_", "grpc_", "process_", "rampart_"]
            .iter()
            .any(|prefix| word.starts_with(prefix))
        {
            names.push(word);
        }
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grafana_dashboard_names_only_served_metrics() -> anyhow::Result<()> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/grafana/rampart-dashboard.json");
    let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .ok_or_else(|| anyhow::anyhow!("no panels in {}", path.display()))?
        .iter()
        .flat_map(|panel| panel["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|target| target["expr"].as_str().map(str::to_string))
        .collect();
    assert!(exprs.len() >= 10, "{} queries", exprs.len());

    // Members with peers, one of them stopped, so that the per-peer families have samples
    // (a family with none is not written at all).
    let mut cluster = TestCluster::start(3).await?;
    cluster.wait_for_leader(WAIT).await?;
    let url = cluster.client_urls()[0].clone();
    put(&mut cluster.client(0).await?, "k", "v").await?;
    cluster.stop(2).await;
    let text = wait_until(
        "a round trip and a failed call in the metrics",
        WAIT,
        || async {
            let text = metrics(&url).await?;
            let both = text.contains("etcd_network_peer_round_trip_time_seconds_count")
                && text.contains("etcd_network_peer_sent_failures_total{");
            Ok(both.then_some(text))
        },
    )
    .await?;
    // Every family the member declares, with a histogram's series, and every sample's name.
    let mut served: Vec<String> = Vec::new();
    for line in text.lines() {
        if let Some(declared) = line.strip_prefix("# TYPE ") {
            let mut words = declared.split(' ');
            let (name, kind) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
            served.push(name.to_string());
            if kind == "histogram" {
                for series in ["_bucket", "_sum", "_count"] {
                    served.push(format!("{name}{series}"));
                }
            }
        } else if let Some(name) = line.split(['{', ' ']).next() {
            served.push(name.to_string());
        }
    }
    for expr in &exprs {
        // Label names (`grpc_method`) start like families too; the served text names them so.
        let labels = |name: &str| text.contains(&format!("{name}=\""));
        for name in metric_names(expr).into_iter().filter(|name| !labels(name)) {
            assert!(
                served.contains(&name),
                "the dashboard's {expr:?} names {name}, which a member does not serve"
            );
        }
    }
    cluster.shutdown().await;
    Ok(())
}
