//! The member's metrics, in Prometheus's text format, under etcd's names wherever Rampart has
//! the same thing, so that the dashboards and alerts people keep for etcd work unchanged
//! (`etcd_server_has_leader`, `etcd_disk_wal_fsync_duration_seconds`, `grpc_server_handled_total`,
//! ...), and under `rampart_` for what is Rampart's own (proposal batches, read-index rounds,
//! leases on the leader's clock).
//!
//! Three kinds of source: values read from the member when scraped (leadership, indexes, sizes,
//! key and lease counts: [`Metrics::refresh`]); counters and histograms that the request paths,
//! the storage and the network update as things happen (`NodeStats`, `StorageStats`,
//! `NetworkStats`, registered here by reference); and the process's own figures from `/proc`
//! ([`ProcessCollector`]). `crate::http` serves the text.
//!
//! etcd names Rampart does not serve, and why: `etcd_disk_backend_defrag_duration_seconds` and
//! `etcd_disk_backend_snapshot_duration_seconds` (not measured yet),
//! `etcd_network_client_grpc_sent_bytes_total`/`received_bytes_total` (not counted),
//! `etcd_server_heartbeat_send_failures_total` (heartbeats fail as any Raft call does: in
//! `etcd_network_peer_sent_failures_total`), and the `etcd_debugging_*` families but the key count.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::grpc_stats::GrpcStats;
use crate::lessor::Lessor;
use crate::node::Node;
use crate::services::API_VERSION;

/// The content type of the text [`Metrics::render`] writes: Prometheus's text format 0.0.4.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The values read from the member at each scrape.
#[derive(Debug, Default)]
struct ScrapedValues {
    has_leader: Gauge,
    is_leader: Gauge,
    is_learner: Gauge,
    committed: Gauge,
    applied: Gauge,
    term: Gauge,
    db_size: Gauge,
    db_size_in_use: Gauge,
    keys: Gauge,
    revision: Gauge,
    compact_revision: Gauge,
    leases: Gauge,
    /// Seconds the oldest storage operation in progress has run (0 when none runs).
    storage_stuck: Gauge<f64, AtomicU64>,
}

/// One member's metrics registry and what fills it.
pub struct Metrics {
    registry: Registry,
    node: Arc<Node>,
    lessor: Arc<Lessor>,
    scraped: ScrapedValues,
    /// Leaders this member has seen take office (etcd counts the first one too).
    leader_changes: Counter,
    /// gRPC calls started and handled, for the interceptor-side layer.
    grpc: Arc<GrpcStats>,
}

impl Metrics {
    /// The registry of `node`'s metrics; `lessor` is its lease clock, `grpc` what the client
    /// server's layer counts.
    pub fn new(node: Arc<Node>, lessor: Arc<Lessor>, grpc: Arc<GrpcStats>) -> Metrics {
        let mut registry = Registry::default();
        let scraped = ScrapedValues::default();
        let leader_changes = Counter::default();
        register_server(&mut registry, &node, &scraped, &leader_changes);
        register_storage(&mut registry, &node, &scraped);
        register_network(&mut registry, &node);
        grpc.register(&mut registry);
        registry.register_collector(Box::new(ProcessCollector));
        Metrics {
            registry,
            node,
            lessor,
            scraped,
            leader_changes,
            grpc,
        }
    }

    /// What the client server's gRPC layer counts into.
    pub fn grpc(&self) -> &Arc<GrpcStats> {
        &self.grpc
    }

    /// Counts each leader this member sees take office, until `stop`.
    pub async fn follow_leaders(self: Arc<Self>, stop: CancellationToken) {
        let mut metrics = self.node.subscribe_metrics();
        let mut seen = None;
        loop {
            let leader = metrics.borrow_and_update().current_leader;
            if leader.is_some() && leader != seen {
                self.leader_changes.inc();
            }
            if leader.is_some() {
                seen = leader;
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                changed = metrics.changed() => if changed.is_err() { return },
            }
        }
    }

    /// Reads the member's current values into the registry's gauges.
    pub async fn refresh(&self) {
        let node = &self.node;
        let raft = node.metrics();
        let scraped = &self.scraped;
        let has_leader = node.has_leader();
        scraped.has_leader.set(has_leader.into());
        scraped
            .is_leader
            .set((has_leader && raft.current_leader == Some(node.id())).into());
        scraped.is_learner.set(node.is_learner().into());
        let committed = node
            .raft()
            .with_raft_state(|state| state.committed.map_or(0, |id| id.index))
            .await
            .unwrap_or(0);
        scraped.committed.set(to_i64(committed));
        scraped
            .applied
            .set(to_i64(raft.last_applied.map_or(0, |id| id.index)));
        scraped.term.set(to_i64(raft.current_term));
        let db_size = to_i64(node.db_size());
        scraped.db_size.set(db_size);
        // Status reports the same (`Node::db_size_in_use`: the live keys and values).
        scraped.db_size_in_use.set(to_i64(node.db_size_in_use()));
        let mvcc = node.mvcc();
        scraped.keys.set(to_i64(mvcc.key_count() as u64));
        scraped.revision.set(mvcc.revision());
        scraped.compact_revision.set(mvcc.compact_revision());
        scraped
            .leases
            .set(to_i64(self.lessor.lease_count().unwrap_or(0) as u64));
        let oldest = node.storage_stats().in_flight.oldest();
        scraped
            .storage_stuck
            .set(oldest.map_or(0.0, |(_, age)| age.as_secs_f64()));
    }

    /// The registry in Prometheus's text format ([`CONTENT_TYPE`]), refreshed first.
    pub async fn render(&self) -> String {
        self.refresh().await;
        let mut text = String::new();
        if let Err(e) =
            prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry)
        {
            tracing::warn!("cannot encode the metrics: {e}");
        }
        text
    }
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// etcd's `etcd_server_*` and `etcd_mvcc_*` families, and Rampart's own about the same.
fn register_server(
    registry: &mut Registry,
    node: &Node,
    scraped: &ScrapedValues,
    leader_changes: &Counter,
) {
    let stats = node.stats();
    let etcd = registry.sub_registry_with_prefix("etcd");
    etcd.register(
        "server_has_leader",
        "Whether or not a leader exists. 1 is existence, 0 is not.",
        scraped.has_leader.clone(),
    );
    etcd.register(
        "server_is_leader",
        "Whether or not this member is a leader. 1 if is, 0 otherwise.",
        scraped.is_leader.clone(),
    );
    etcd.register(
        "server_is_learner",
        "Whether or not this member is a learner. 1 if is, 0 otherwise.",
        scraped.is_learner.clone(),
    );
    etcd.register(
        "server_leader_changes_seen",
        "The number of leader changes seen.",
        leader_changes.clone(),
    );
    etcd.register(
        "server_proposals_committed_total",
        "The total number of consensus proposals committed.",
        scraped.committed.clone(),
    );
    etcd.register(
        "server_proposals_applied_total",
        "The total number of consensus proposals applied.",
        scraped.applied.clone(),
    );
    etcd.register(
        "server_proposals_pending",
        "The current number of pending proposals to commit.",
        stats.proposals_pending.clone(),
    );
    etcd.register(
        "server_proposals_failed",
        "The total number of failed proposals seen.",
        stats.proposals_failed.clone(),
    );
    let server_id = Family::<[(&'static str, String); 1], Gauge>::default();
    server_id
        .get_or_create(&[("server_id", format!("{:x}", node.id()))])
        .set(1);
    let version = Family::<[(&'static str, String); 1], Gauge>::default();
    version
        .get_or_create(&[("server_version", API_VERSION.to_string())])
        .set(1);
    etcd.register(
        "server_version",
        "Which version is running. 1 for 'server_version' label with current version.",
        version,
    );
    etcd.register(
        "server_id",
        "Server or member ID in hexadecimal format. 1 for 'server_id' label with current ID.",
        server_id,
    );
    etcd.register(
        "mvcc_watcher_total",
        "Total number of watchers.",
        stats.watchers.clone(),
    );
    etcd.register(
        "debugging_mvcc_keys_total",
        "Total number of keys.",
        scraped.keys.clone(),
    );
    etcd.register(
        "mvcc_db_total_size_in_bytes",
        "Total size of the underlying database physically allocated in bytes.",
        scraped.db_size.clone(),
    );
    etcd.register(
        "mvcc_db_total_size_in_use_in_bytes",
        "Total size of the underlying database logically in use in bytes.",
        scraped.db_size_in_use.clone(),
    );
    etcd.register(
        "debugging_mvcc_current_revision",
        "The current revision of store.",
        scraped.revision.clone(),
    );
    etcd.register(
        "debugging_mvcc_compact_revision",
        "The revision of the last compaction in store.",
        scraped.compact_revision.clone(),
    );
    let rampart = registry.sub_registry_with_prefix("rampart");
    rampart.register(
        "raft_term",
        "The Raft term this member is in.",
        scraped.term.clone(),
    );
    rampart.register(
        "leases",
        "Leases on the lease clock; only the leader keeps it (0 on the others).",
        scraped.leases.clone(),
    );
    rampart.register(
        "server_writes_refused",
        "Writes refused with \"too many requests\" before they were proposed",
        stats.writes_refused.clone(),
    );
}

/// etcd's `etcd_disk_*` families and the slow applies, and Rampart's stall gauge.
fn register_storage(registry: &mut Registry, node: &Node, scraped: &ScrapedValues) {
    let stats = node.storage_stats();
    let etcd = registry.sub_registry_with_prefix("etcd");
    etcd.register(
        "disk_wal_fsync_duration_seconds",
        "The latency distributions of fsync called by WAL.",
        stats.wal_fsync.clone(),
    );
    etcd.register(
        "disk_backend_commit_duration_seconds",
        "The latency distributions of commit called by backend.",
        stats.backend_commit.clone(),
    );
    etcd.register(
        "server_slow_apply",
        "The total number of slow apply requests (likely overloaded from slow disk).",
        stats.slow_applies.clone(),
    );
    registry.sub_registry_with_prefix("rampart").register(
        "storage_oldest_operation_seconds",
        "How long the oldest storage operation in progress (a flush, an fsync, an apply) has \
         run; past --storage-stall-timeout the member exits.",
        scraped.storage_stuck.clone(),
    );
}

/// etcd's `etcd_network_peer_*` families and Rampart's batching figures.
fn register_network(registry: &mut Registry, node: &Node) {
    let stats = node.network_stats();
    let etcd = registry.sub_registry_with_prefix("etcd");
    etcd.register(
        "network_peer_round_trip_time_seconds",
        "Round-Trip-Time histogram between peers.",
        stats.peer_round_trip.clone(),
    );
    etcd.register(
        "network_peer_sent_failures",
        "The total number of send failures from peers.",
        stats.peer_sent_failures.clone(),
    );
    let rampart = registry.sub_registry_with_prefix("rampart");
    rampart.register(
        "proposal_batch_size",
        "Client writes per proposal the leader made (one Raft entry, one fsync).",
        stats.proposal_batch.clone(),
    );
    rampart.register(
        "read_index_rounds",
        "Read-index rounds begun (one serves every linearizable read waiting for it).",
        stats.read_index_rounds.clone(),
    );
}

/// The `process_*` figures Prometheus's client libraries export, read from `/proc` at each
/// scrape (Linux only; elsewhere none are written).
#[derive(Debug)]
pub struct ProcessCollector;

/// `/proc` counts CPU time in ticks of `USER_HZ`, which Linux fixes at 100 for user space.
const TICKS_PER_SECOND: f64 = 100.0;

/// The process's figures from `/proc`.
struct ProcessFigures {
    cpu_seconds: f64,
    virtual_bytes: u64,
    resident_bytes: u64,
    open_fds: u64,
    max_fds: u64,
    start_time_seconds: f64,
}

/// A `Name:   123 kB` line of `/proc/self/status`, in bytes.
fn status_bytes(status: &str, name: &str) -> Option<u64> {
    let line = status.lines().find(|line| line.starts_with(name))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn read_proc() -> Option<ProcessFigures> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The fields after the command name, which is in parentheses and may hold spaces: the
    // state is field 3 of the line, so field n is at n - 3 here.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let field = |n: usize| -> Option<f64> { fields.get(n - 3)?.parse().ok() };
    let (utime, stime, start_ticks) = (field(14)?, field(15)?, field(22)?);
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let boot_time: f64 = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|line| line.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let max_fds = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .and_then(|line| line.split_whitespace().nth(3))
        .and_then(|soft| soft.parse().ok())
        .unwrap_or(0);
    Some(ProcessFigures {
        cpu_seconds: (utime + stime) / TICKS_PER_SECOND,
        virtual_bytes: status_bytes(&status, "VmSize:")?,
        resident_bytes: status_bytes(&status, "VmRSS:")?,
        open_fds: std::fs::read_dir("/proc/self/fd").ok()?.count() as u64,
        max_fds,
        start_time_seconds: boot_time + start_ticks / TICKS_PER_SECOND,
    })
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(figures) = read_proc() else {
            return Ok(());
        };
        let cpu = ConstCounter::new(figures.cpu_seconds);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds.",
            None,
            cpu.metric_type(),
        )?)?;
        let gauges: [(&str, &str, f64); 5] = [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                figures.resident_bytes as f64,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
                figures.virtual_bytes as f64,
            ),
            (
                "process_open_fds",
                "Number of open file descriptors.",
                figures.open_fds as f64,
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors.",
                figures.max_fds as f64,
            ),
            (
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
                figures.start_time_seconds,
            ),
        ];
        for (name, help, value) in gauges {
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        Ok(())
    }
}
