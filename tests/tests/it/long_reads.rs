//! Long reads against real processes: a Range over the whole keyspace of a large store, repeated
//! on every member while writes go on, must not stall the cluster. A member whose runtime
//! blocked behind the read (on the state's lock, or with every worker busy) would stop sending
//! or answering heartbeats, and the cluster would change leader.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context};
use rampart_api::etcdserverpb as pb;
use rampart_api::etcdserverpb::kv_client::KvClient;
use rampart_api::etcdserverpb::maintenance_client::MaintenanceClient;
use rampart_tests::{put, ProcessCluster};
use tonic::transport::Channel;
use tracing::info;

/// Values of 1 MiB (below the default request limit of 1.5 MiB), 100 of them: a 100 MiB store.
const VALUE_BYTES: usize = 1 << 20;
const VALUES: usize = 100;
/// Whole-keyspace reads on each member.
const ROUNDS: usize = 2;

async fn channel(url: &str) -> anyhow::Result<Channel> {
    Ok(Channel::from_shared(url.to_string())?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(120))
        .connect()
        .await?)
}

/// Each member's view of (leader id, Raft term).
async fn leadership(cluster: &ProcessCluster) -> anyhow::Result<Vec<(u64, u64)>> {
    let mut views = Vec::new();
    for member in &cluster.members {
        let status = MaintenanceClient::new(channel(&member.client_url).await?)
            .status(pb::StatusRequest {})
            .await?
            .into_inner();
        views.push((status.leader, status.raft_term));
    }
    Ok(views)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_keyspace_reads_of_a_large_store_under_writes_change_no_leader() -> anyhow::Result<()>
{
    rampart_tests::init_tracing();
    let cluster = ProcessCluster::start(3).await?;

    info!("--- fill the store with {VALUES} values of {VALUE_BYTES} bytes");
    let mut fillers = Vec::new();
    for part in 0..4 {
        let url = cluster.members[part % 3].client_url.clone();
        fillers.push(tokio::spawn(async move {
            let mut client = KvClient::new(channel(&url).await?);
            for i in (part..VALUES).step_by(4) {
                client
                    .put(pb::PutRequest {
                        key: format!("big/{i:03}").into_bytes(),
                        value: vec![b'v'; VALUE_BYTES],
                        ..Default::default()
                    })
                    .await
                    .with_context(|| format!("filling big/{i:03}"))?;
            }
            anyhow::Ok(())
        }));
    }
    for filler in fillers {
        if let Err(e) = filler.await? {
            for m in &cluster.members {
                eprintln!("=== {}\n{}", m.name, m.log());
            }
            return Err(e);
        }
    }

    let before = leadership(&cluster).await?;
    let (leader, term) = before[0];
    ensure!(
        leader != 0 && before.iter().all(|&view| view == (leader, term)),
        "the members disagree on the leader before the reads: {before:?}"
    );

    info!("--- small writes go on while every member reads the whole keyspace");
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let writer = tokio::spawn({
        let (stop, written) = (stop.clone(), written.clone());
        let url = cluster.members[0].client_url.clone();
        async move {
            let mut client = KvClient::new(channel(&url).await?);
            while !stop.load(Ordering::Relaxed) {
                let n = written.load(Ordering::Relaxed);
                put(&mut client, &format!("small/{n}"), "x").await?;
                written.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }
    });
    let mut readers = Vec::new();
    for member in &cluster.members {
        let url = member.client_url.clone();
        readers.push(tokio::spawn(async move {
            let mut client =
                KvClient::new(channel(&url).await?).max_decoding_message_size(usize::MAX);
            for _ in 0..ROUNDS {
                let response = client
                    .range(pb::RangeRequest {
                        key: vec![0],
                        range_end: vec![0],
                        ..Default::default()
                    })
                    .await
                    .with_context(|| format!("whole-keyspace read on {url}"))?
                    .into_inner();
                let big = response.kvs.iter().filter(|kv| kv.key.starts_with(b"big/"));
                ensure!(
                    big.filter(|kv| kv.value.len() == VALUE_BYTES).count() == VALUES,
                    "the read on {url} did not return every large value"
                );
            }
            anyhow::Ok(())
        }));
    }
    for reader in readers {
        reader.await??;
    }
    let after_reads = written.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    writer.await??;
    info!(writes = after_reads, "--- the reads are done");

    let after = leadership(&cluster).await?;
    ensure!(
        after.iter().all(|&view| view == (leader, term)),
        "leadership changed during the reads: before ({leader:x}, term {term}), after {after:?}"
    );
    ensure!(after_reads > 0, "no write went through during the reads");
    Ok(())
}
