//! End-to-end smoke tests of the load generator: tiny runs of the workloads through the library
//! API against a real `rampart` process and, where it is installed, a real etcd 3.4. They check
//! that the generator speaks the API correctly and counts what it should, not performance.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use rampart_bench::{Consistency, Options, Report, Workload};
use rampart_tests::{kv_client, put, wait_until, ProcessCluster};
use tempfile::TempDir;

/// The options of a smoke run: a few hundred requests over 2 connections and 4 clients.
fn options(endpoint: &str, workload: Workload) -> Options {
    Options {
        workload,
        endpoints: vec![endpoint.to_string()],
        conns: 2,
        clients: 4,
        key_space: 50,
        value_size: 64,
        total: Some(100),
        seed: Some(7),
        ..Options::default()
    }
}

async fn bench(options: Options) -> anyhow::Result<Report> {
    let config = options.validate()?;
    let report = rampart_bench::run(&config).await?;
    println!("{report}");
    Ok(report)
}

/// Asserts that `report` answered `ok` requests without any error and measured each.
fn assert_clean(report: &Report, ok: u64) {
    let name = report.workload.name();
    assert_eq!(report.errors, BTreeMap::new(), "{name}: no errors expected");
    assert_eq!(report.ok, ok, "{name}: every request answered");
    assert_eq!(
        report.ops.latency.count, ok,
        "{name}: every answer measured"
    );
    assert!(report.ops.latency.p50_us > 0, "{name}: latency measured");
    assert!(report.ops.latency.max_us >= report.ops.latency.p99_us);
    assert!(report.throughput > 0.0, "{name}: throughput measured");
    assert_eq!(
        report.ops.per_second.iter().sum::<u64>(),
        ok,
        "{name}: the timeline holds every answer"
    );
}

/// Asserts that a run either was clean or was answered only Unimplemented (a service the
/// server does not have yet), and says which.
fn assert_clean_or_unimplemented(report: &Report, ok: u64) -> bool {
    let name = report.workload.name();
    if report.errors.is_empty() {
        assert_clean(report, ok);
        return true;
    }
    assert!(
        report.errors.keys().all(|k| k.starts_with("Unimplemented")),
        "{name}: only Unimplemented may be reported, got {:?}",
        report.errors
    );
    assert!(
        report.errors_total <= 8,
        "{name}: the run stopped at the first Unimplemented answers"
    );
    println!(
        "NOTE: the server does not implement what {name} needs: {:?}",
        report.errors
    );
    false
}

/// Runs 20 campaign cycles of 4 clients in 2 elections with 3 observers, and asserts that each
/// cycle was measured in its parts and each proclamation reached every observer.
async fn assert_election(url: &str) -> anyhow::Result<()> {
    let report = bench(Options {
        total: Some(20),
        elections: 2,
        observers: 3,
        ..options(url, Workload::Election)
    })
    .await?;
    assert_clean(&report, 20);
    for part in ["campaign", "proclaim", "resign"] {
        assert_eq!(report.parts[part].latency.count, 20, "{part}");
    }
    assert_eq!(report.counters["proclamations"], 20);
    assert_eq!(report.counters["observations_expected"], 60);
    assert_eq!(report.parts["observe"].latency.count, 60);
    Ok(())
}

/// Waits until `url` accepts a put (a leader is elected).
async fn wait_writable(url: &str) -> anyhow::Result<()> {
    wait_until("a put to succeed", Duration::from_secs(30), || async {
        let mut client = kv_client(url).await?;
        put(&mut client, "smoke/probe", "x").await?;
        Ok(Some(()))
    })
    .await
}

fn assert_png(path: &Path) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
        "{} is a PNG",
        path.display()
    );
    assert!(bytes.len() > 5_000, "{} has content", path.display());
}

#[tokio::test]
async fn rampart_put_range_watch() -> anyhow::Result<()> {
    println!("--- start one rampart process");
    let cluster = ProcessCluster::start(1).await?;
    let url = cluster.members[0].client_url.clone();
    wait_writable(&url).await?;

    println!("--- put: 200 random keys of 50; JSON and plots");
    let out = tempfile::tempdir()?;
    let report = bench(Options {
        total: Some(200),
        ..options(&url, Workload::Put)
    })
    .await?;
    assert_clean(&report, 200);
    let json_path = out.path().join("put.json");
    report.write_json(&json_path)?;
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&json_path)?)?;
    assert_eq!(json["workload"], "put");
    assert_eq!(json["ok"], 200);
    assert_eq!(json["seed"], 7);
    assert!(json["ops"]["p99_us"].as_u64().is_some_and(|p| p > 0));
    let plots = rampart_bench::plot::write_plots(&report, &out.path().join("plots"))?;
    assert_eq!(plots.len(), 2);
    for plot in &plots {
        assert_png(plot);
    }

    println!("--- load: two passes over the 50 keys, 20 to a txn");
    let report = bench(Options {
        batch: 20,
        total: Some(6),
        ..options(&url, Workload::Load)
    })
    .await?;
    assert_clean(&report, 6);
    assert_eq!(report.counters["keys_written"], 100);

    println!("--- range: linearizable, then serializable, over the keys just put");
    for consistency in [Consistency::Linearizable, Consistency::Serializable] {
        let report = bench(Options {
            consistency,
            ..options(&url, Workload::Range)
        })
        .await?;
        assert_clean(&report, 100);
        // The load wrote every one of the 50 keys.
        assert_eq!(
            report.counters["keys_found"], 100,
            "{consistency:?}: every read finds its key"
        );
    }

    println!("--- watch: 4 watchers over 2 streams see 50 puts each");
    let report = bench(Options {
        watchers: 4,
        streams: 2,
        total: Some(50),
        ..options(&url, Workload::Watch)
    })
    .await?;
    if assert_clean_or_unimplemented(&report, 50) {
        assert_eq!(report.counters["events_expected"], 200);
        assert_eq!(report.counters["events_delivered"], 200);
        assert_eq!(report.parts["event"].latency.count, 200);
    }

    println!("--- lock: 20 locks, then 20 on 2 names that the 4 clients contend for");
    for key_space in [50, 2] {
        let report = bench(Options {
            total: Some(20),
            key_space,
            ..options(&url, Workload::Lock)
        })
        .await?;
        assert_clean(&report, 20);
        assert_eq!(report.parts["lock"].latency.count, 20);
        assert_eq!(report.parts["unlock"].latency.count, 20);
    }

    println!("--- election: 20 cycles in 2 elections, each proclamation seen by 3 observers");
    assert_election(&url).await?;

    println!("--- lease-hold: 20 leases, each with its key, left in place; then renewed");
    for workload in [Workload::LeaseHold, Workload::LeaseRenew] {
        let report = bench(Options {
            total: Some(20),
            first_lease_id: 100,
            ..options(&url, workload)
        })
        .await?;
        assert_clean(&report, 20);
    }
    Ok(())
}

/// A single-member etcd on free loopback ports, killed when dropped.
struct Etcd {
    child: Child,
    url: String,
    log: PathBuf,
    _dir: TempDir,
}

impl Etcd {
    const BINARY: &'static str = "/usr/bin/etcd";

    async fn start() -> anyhow::Result<Etcd> {
        let dir = tempfile::tempdir()?;
        let client = free_port()?;
        let peer = free_port()?;
        let url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let log = dir.path().join("etcd.log");
        let log_file = std::fs::File::create(&log)?;
        let child = Command::new(Self::BINARY)
            .arg("--name=smoke")
            .arg(format!("--data-dir={}", dir.path().join("data").display()))
            .arg(format!("--listen-client-urls={url}"))
            .arg(format!("--advertise-client-urls={url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=smoke={peer_url}"))
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .context("spawning etcd")?;
        let etcd = Etcd {
            child,
            url,
            log,
            _dir: dir,
        };
        if let Err(e) = wait_writable(&etcd.url).await {
            let log = std::fs::read_to_string(&etcd.log).unwrap_or_default();
            anyhow::bail!("etcd did not start: {e:#}\n{log}");
        }
        Ok(etcd)
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

#[tokio::test]
async fn etcd_every_workload() -> anyhow::Result<()> {
    if !Path::new(Etcd::BINARY).exists() {
        // CI installs etcd-server (.ci/run); a developer machine may not have it.
        println!("SKIPPED: {} is not installed", Etcd::BINARY);
        return Ok(());
    }
    println!("--- start etcd");
    let etcd = Etcd::start().await?;
    let url = etcd.url.clone();

    println!("--- the key-value workloads, on a prefilled key space");
    for workload in [
        Workload::Put,
        Workload::Range,
        Workload::TxnPut,
        Workload::Mixed,
        Workload::Delete,
        Workload::Load,
    ] {
        let report = bench(Options {
            prefill: workload == Workload::Range,
            ..options(&url, workload)
        })
        .await?;
        assert_clean(&report, 100);
        match workload {
            Workload::Range => assert_eq!(report.counters["keys_found"], 100),
            Workload::TxnPut => {
                assert_eq!(report.parts["range"].latency.count, 100);
                assert_eq!(report.parts["txn"].latency.count, 100);
            }
            Workload::Mixed => {
                let reads = report.counters["reads"];
                let writes = report.counters["writes"];
                assert_eq!(reads + writes, 100);
                assert!(
                    reads > writes,
                    "read ratio 0.9: {reads} reads, {writes} writes"
                );
            }
            Workload::Delete => assert!(report.counters["keys_deleted"] > 0),
            // 100 txns, each of the whole key space of 50 (less than the batch of 100).
            Workload::Load => assert_eq!(report.counters["keys_written"], 5000),
            _ => {}
        }
    }

    println!("--- watch: 6 watchers over 3 streams see 40 puts each");
    let report = bench(Options {
        watchers: 6,
        streams: 3,
        total: Some(40),
        ..options(&url, Workload::Watch)
    })
    .await?;
    assert_clean(&report, 40);
    assert_eq!(report.counters["events_delivered"], 240);
    assert_eq!(report.parts["event"].latency.count, 240);
    assert!(report.parts["event"].rate_per_s > 0.0);

    println!("--- election: 20 cycles in 2 elections, each proclamation seen by 3 observers");
    assert_election(&url).await?;

    println!("--- lease and lock");
    for workload in [Workload::Lease, Workload::Lock] {
        let report = bench(Options {
            total: Some(40),
            ..options(&url, workload)
        })
        .await?;
        assert_clean(&report, 40);
    }

    println!("--- open loop: 100 requests at 200/s take about half a second");
    let report = bench(Options {
        rate: Some(200.0),
        ..options(&url, Workload::Put)
    })
    .await?;
    assert_clean(&report, 100);
    assert!(
        report.elapsed_s >= 0.49 && report.elapsed_s < 5.0,
        "elapsed {} s",
        report.elapsed_s
    );
    Ok(())
}
