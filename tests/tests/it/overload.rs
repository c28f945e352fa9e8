//! Overload against real processes: a flood of writes past the members' bounds
//! (`--max-pending-writes`, `--max-pending-write-bytes`) gets "too many requests" for what does
//! not fit, at once and definitely (a refused write changed nothing, an accepted one is
//! applied, no write times out), while reads on another member go on answering, and memory
//! stays bounded.

use std::collections::BTreeSet;

use anyhow::{bail, ensure, Context};
use rampart_api::etcdserverpb as pb;
use rampart_api::etcdserverpb::kv_client::KvClient;
use rampart_tests::{kv_client, ProcessCluster};
use tokio::task::JoinSet;
use tonic::transport::Channel;
use tonic::Code;
use tracing::info;

const TOO_MANY_REQUESTS: &str = "etcdserver: too many requests";
/// Concurrent writers, each putting one key of its own once.
const WRITERS: usize = 400;
/// Connections the writers share.
const CONNECTIONS: usize = 8;
const VALUE_BYTES: usize = 16 * 1024;
/// The flood's bounds: a few dozen writes at once per member.
const MAX_PENDING_WRITES: u64 = 32;
const MAX_PENDING_WRITE_BYTES: u64 = 256 * 1024;
/// What a member may reach, at its peak, under this flood (it starts near 30 MB).
const PEAK_RSS_BOUND: u64 = 768 * 1024 * 1024;

/// What became of one write.
enum Outcome {
    Applied,
    Refused,
}

fn key(writer: usize) -> Vec<u8> {
    format!("flood/{writer:04}").into_bytes()
}

fn value(writer: usize) -> Vec<u8> {
    let mut value = vec![b'v'; VALUE_BYTES];
    value[..4].copy_from_slice(format!("{writer:04}").as_bytes());
    value
}

/// Puts writer `writer`'s key once; any answer but success or "too many requests" is an error.
async fn write_once(mut client: KvClient<Channel>, writer: usize) -> anyhow::Result<Outcome> {
    let request = pb::PutRequest {
        key: key(writer),
        value: value(writer),
        ..Default::default()
    };
    match client.put(request).await {
        Ok(_) => Ok(Outcome::Applied),
        Err(status)
            if status.code() == Code::ResourceExhausted
                && status.message() == TOO_MANY_REQUESTS =>
        {
            Ok(Outcome::Refused)
        }
        Err(status) => bail!("write {writer}: neither applied nor refused: {status:?}"),
    }
}

/// The peak resident memory of process `pid` (`VmHWM`), in bytes.
fn peak_rss(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|line| line.starts_with("VmHWM:"))
        .context("no VmHWM line")?;
    let kib: u64 = line
        .trim_start_matches("VmHWM:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()?;
    Ok(kib * 1024)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_past_the_bounds_is_refused_at_once_and_changes_nothing() -> anyhow::Result<()> {
    rampart_tests::init_tracing();
    let pending = format!("--max-pending-writes={MAX_PENDING_WRITES}");
    let pending_bytes = format!("--max-pending-write-bytes={MAX_PENDING_WRITE_BYTES}");
    let cluster = ProcessCluster::start_with_args(3, &[&pending, &pending_bytes]).await?;
    let urls = cluster.client_urls();

    info!("--- {WRITERS} writers flood member 1 while member 2 serves reads");
    let mut connections = Vec::new();
    for _ in 0..CONNECTIONS {
        connections.push(kv_client(&urls[1]).await?);
    }
    let mut writers = JoinSet::new();
    for writer in 0..WRITERS {
        let client = connections[writer % CONNECTIONS].clone();
        writers.spawn(async move { (writer, write_once(client, writer).await) });
    }
    let mut reader = kv_client(&urls[2]).await?;
    let mut applied = BTreeSet::new();
    let mut refused = BTreeSet::new();
    let mut reads = 0;
    while !writers.is_empty() {
        // Linearizable reads through another member keep being answered during the flood.
        reader
            .range(pb::RangeRequest {
                key: b"flood/".to_vec(),
                range_end: b"flood0".to_vec(),
                count_only: true,
                ..Default::default()
            })
            .await
            .context("a read during the flood")?;
        reads += 1;
        while let Some(done) = writers.try_join_next() {
            let (writer, outcome) = done?;
            match outcome? {
                Outcome::Applied => applied.insert(key(writer)),
                Outcome::Refused => refused.insert(key(writer)),
            };
        }
        tokio::task::yield_now().await;
    }
    info!(
        applied = applied.len(),
        refused = refused.len(),
        reads,
        "the flood is over"
    );
    ensure!(
        !refused.is_empty(),
        "no write was refused: the bounds did not hold"
    );
    ensure!(!applied.is_empty(), "every write was refused");

    info!("--- every applied write is there with its value, no refused one is");
    let mut client = kv_client(&urls[0]).await?;
    let stored = client
        .range(pb::RangeRequest {
            key: b"flood/".to_vec(),
            range_end: b"flood0".to_vec(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut found = BTreeSet::new();
    for kv in stored.kvs {
        let writer: usize = std::str::from_utf8(&kv.key["flood/".len()..])?.parse()?;
        ensure!(
            kv.value == value(writer),
            "key {writer} holds another value"
        );
        found.insert(kv.key);
    }
    ensure!(
        found == applied,
        "stored keys differ from the applied writes: {} stored, {} applied; refused but stored: {}",
        found.len(),
        applied.len(),
        found.intersection(&refused).count()
    );

    info!("--- memory stayed bounded");
    for member in &cluster.members {
        let pid = member.pid().context("a member has no process")?;
        let peak = peak_rss(pid)?;
        info!(member = %member.name, peak_mib = peak / (1024 * 1024), "peak resident memory");
        ensure!(
            peak < PEAK_RSS_BOUND,
            "{} reached {peak} bytes resident",
            member.name
        );
    }
    Ok(())
}
