//! The options of a run as given on the command line, before validation.
//!
//! The CLI parses these with clap and tests build them with [`Options::default`] and struct
//! update syntax, so the defaults live in one place: the `#[arg]` attributes below.
//! [`Options::validate`] turns them into the [`Config`] a run uses. [`Cli`] is the whole
//! command line: those options, or a subcommand that runs no workload ([`Command`]).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Serialize;

/// What a run measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// Put a random key of the key space.
    Put,
    /// Read a random key (see --consistency).
    Range,
    /// Compare-and-swap: read a random key, then put it in a txn guarded by its mod_revision.
    TxnPut,
    /// Delete a random key.
    Delete,
    /// Reads and puts of random keys, in the proportion --read-ratio.
    Mixed,
    /// Puts under the prefix while --watchers watchers on it, over --streams streams, measure
    /// put-to-event latency and events delivered per second.
    Watch,
    /// Grant a lease, refresh it once over a keep-alive stream, revoke it.
    Lease,
    /// Grant lease --first-lease-id + n and put key n with it, and leave both: leases that
    /// pile up (`benches/leases.sh`).
    LeaseHold,
    /// Renew lease --first-lease-id + n over the client's keep-alive stream: leases granted by
    /// lease-hold, renewed all at once so that they expire together.
    LeaseRenew,
    /// Lock a random name of the key space (v3lockpb), then unlock it; contended when
    /// --clients outnumber --key-space.
    Lock,
    /// Campaign in one of --elections elections (v3electionpb), proclaim once, resign; while
    /// --observers observers on every election measure each proclamation's arrival.
    Election,
    /// Write the key space in key order, --batch puts per txn: one pass over it by default
    /// (a bulk load; `benches/capacity.sh` loads and overwrites with it).
    Load,
}

impl Workload {
    /// The name used on the command line and in file names.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Put => "put",
            Workload::Range => "range",
            Workload::TxnPut => "txn-put",
            Workload::Delete => "delete",
            Workload::Mixed => "mixed",
            Workload::Watch => "watch",
            Workload::Lease => "lease",
            Workload::LeaseHold => "lease-hold",
            Workload::LeaseRenew => "lease-renew",
            Workload::Lock => "lock",
            Workload::Election => "election",
            Workload::Load => "load",
        }
    }
}

/// How reads are served, as in etcd's `benchmark --consistency`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Consistency {
    /// Through the Raft leader's read index: sees every write acknowledged before it.
    #[value(alias = "l")]
    Linearizable,
    /// From the member's local state: may be stale, needs no round trip to the leader.
    #[value(alias = "s")]
    Serializable,
}

/// The command line of `rampart-bench`: a run of a workload, as the options describe (no
/// subcommand), or one of the subcommands, which take none of those options.
#[derive(Debug, Parser)]
#[command(
    name = "rampart-bench",
    version,
    about = "Load generator for the etcd v3 gRPC API: drives Rampart and etcd with the same \
             workloads.",
    long_about = None,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// What to do instead of a run; none runs the workload.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// The run's options, used when no subcommand is given.
    #[command(flatten)]
    pub run: Options,
}

/// The subcommands: work on results, without connecting to a server.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Draw overload.png (puts per second and p99 latency against the number of clients, one
    /// line per system) from the summary that benches/overload.sh writes.
    PlotSweep(PlotSweep),
}

/// The arguments of `plot-sweep`.
#[derive(Debug, Clone, Args)]
pub struct PlotSweep {
    /// The sweep's summary: one JSON object a line, with `system`, `clients`, `throughput`
    /// and `p99_us`.
    #[arg(long)]
    pub summary: PathBuf,

    /// The directory to write overload.png into (created if missing).
    #[arg(long)]
    pub out: PathBuf,
}

/// Load generator for the etcd v3 gRPC API: drives Rampart and etcd with the same workloads.
#[derive(Debug, Clone, Parser, Serialize)]
#[command(name = "rampart-bench", version)]
pub struct Options {
    /// The workload to run.
    #[arg(long, short = 'w', value_enum, default_value_t = Workload::Put)]
    pub workload: Workload,

    /// Client endpoints, comma-separated (`host:port` or `http://host:port`).
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:2379")]
    pub endpoints: Vec<String>,

    /// gRPC connections (HTTP/2), assigned round-robin over the endpoints.
    #[arg(long, default_value_t = 1)]
    pub conns: usize,

    /// Concurrent clients, assigned round-robin over the connections.
    #[arg(long, default_value_t = 1)]
    pub clients: usize,

    /// Number of distinct keys.
    #[arg(long, default_value_t = 10_000)]
    pub key_space: u64,

    /// Bytes per key, prefix included.
    #[arg(long, default_value_t = 16)]
    pub key_size: usize,

    /// Bytes per value.
    #[arg(long, default_value_t = 256)]
    pub value_size: usize,

    /// The prefix of every key (and of every lock name).
    #[arg(long, default_value = "bench/")]
    pub prefix: String,

    /// Requests to send (10000 when neither --total nor --duration is given).
    #[arg(long, conflicts_with = "duration")]
    pub total: Option<u64>,

    /// How long to send requests, e.g. `30s` or `2m`.
    #[arg(long, value_parser = humantime::parse_duration)]
    #[serde(with = "optional_seconds")]
    pub duration: Option<Duration>,

    /// Target requests per second over all clients (open loop: latency counts from each
    /// request's intended start). Without it the clients run a closed loop.
    #[arg(long)]
    pub rate: Option<f64>,

    /// Read consistency of range, txn-put and mixed reads.
    #[arg(long, value_enum, default_value_t = Consistency::Linearizable)]
    pub consistency: Consistency,

    /// Fraction of reads in the mixed workload.
    #[arg(long, default_value_t = 0.9)]
    pub read_ratio: f64,

    /// Watchers on the prefix (watch workload).
    #[arg(long, default_value_t = 10)]
    pub watchers: usize,

    /// Watch streams the watchers are spread over (watch workload).
    #[arg(long, default_value_t = 1)]
    pub streams: usize,

    /// Elections campaigned in, named `<prefix>election/<i>` (election workload).
    #[arg(long, default_value_t = 4)]
    pub elections: usize,

    /// Observers, each with an Observe stream on every election (election workload).
    #[arg(long, default_value_t = 8)]
    pub observers: usize,

    /// TTL in seconds of the leases granted (lease, lease-hold, lock and election workloads).
    #[arg(long, default_value_t = 30)]
    pub lease_ttl: i64,

    /// The lease id of request 0 of the lease-hold and lease-renew workloads; request n's is
    /// this plus n.
    #[arg(long, default_value_t = 1)]
    pub first_lease_id: i64,

    /// Puts per txn of the load workload; at most the server's --max-txn-ops (128 by default
    /// on etcd and on Rampart).
    #[arg(long, default_value_t = 100)]
    pub batch: u64,

    /// Put every key of the key space once before measuring (for range, txn-put, delete and
    /// mixed to find keys).
    #[arg(long)]
    pub prefill: bool,

    /// Deadline of each request.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    #[serde(with = "seconds")]
    pub timeout: Duration,

    /// Seed of the random key choices; printed, so that a run can be replayed.
    #[arg(long)]
    pub seed: Option<u64>,

    /// Write the report as JSON to this file.
    #[arg(long)]
    pub json_out: Option<PathBuf>,

    /// Write PNG plots (latency by percentile, throughput per second) into this directory.
    #[arg(long)]
    pub plot_dir: Option<PathBuf>,

    /// What the run measures, e.g. the server's name: heads the plots' captions, so that plots
    /// of two servers side by side say which is which.
    #[arg(long)]
    pub label: Option<String>,
}

impl Default for Options {
    /// The options of a bare `rampart-bench` command line.
    fn default() -> Options {
        // No option is required and every default parses (unit-tested), so this cannot fail.
        Options::try_parse_from(["rampart-bench"]).expect("default options parse")
    }
}

/// Durations in JSON as seconds (a float), which is what a reader of the report wants.
mod seconds {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
}

mod optional_seconds {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&d.as_secs_f64()),
            None => s.serialize_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse() {
        let options = Options::default();
        assert_eq!(options.workload, Workload::Put);
        assert_eq!(options.endpoints, ["127.0.0.1:2379"]);
        assert_eq!(options.total, None);
        assert_eq!(options.timeout, Duration::from_secs(30));
    }

    #[test]
    fn command_line_parses() {
        let options = Options::try_parse_from([
            "rampart-bench",
            "-w",
            "txn-put",
            "--endpoints",
            "127.0.0.1:1,http://127.0.0.1:2",
            "--duration",
            "1m",
            "--rate",
            "500",
            "--consistency",
            "s",
        ])
        .expect("parses");
        assert_eq!(options.workload, Workload::TxnPut);
        assert_eq!(options.endpoints, ["127.0.0.1:1", "http://127.0.0.1:2"]);
        assert_eq!(options.duration, Some(Duration::from_secs(60)));
        assert_eq!(options.rate, Some(500.0));
        assert_eq!(options.consistency, Consistency::Serializable);
    }

    #[test]
    fn election_options_parse() {
        let defaults = Options::default();
        assert_eq!((defaults.elections, defaults.observers), (4, 8));
        let options = Options::try_parse_from([
            "rampart-bench",
            "-w",
            "election",
            "--elections",
            "2",
            "--observers",
            "16",
        ])
        .expect("parses");
        assert_eq!(options.workload, Workload::Election);
        assert_eq!((options.elections, options.observers), (2, 16));
    }

    #[test]
    fn the_command_line_is_a_run_or_a_subcommand() {
        let cli = Cli::try_parse_from(["rampart-bench"]).expect("parses");
        assert!(cli.command.is_none());
        assert_eq!(cli.run.workload, Workload::Put);
        // As benches/overload.sh runs its read probe.
        let cli = Cli::try_parse_from([
            "rampart-bench",
            "-w",
            "range",
            "--consistency",
            "linearizable",
            "--clients",
            "2",
            "--rate",
            "20",
            "--endpoints",
            "127.0.0.1:1,127.0.0.1:3",
        ])
        .expect("parses");
        assert!(cli.command.is_none());
        assert_eq!(cli.run.workload, Workload::Range);
        assert_eq!((cli.run.clients, cli.run.rate), (2, Some(20.0)));
        let cli = Cli::try_parse_from([
            "rampart-bench",
            "plot-sweep",
            "--summary",
            "s.jsonl",
            "--out",
            "plots",
        ])
        .expect("parses");
        let Some(Command::PlotSweep(plot)) = cli.command else {
            panic!("plot-sweep parsed as {:?}", cli.command);
        };
        assert_eq!(plot.summary, PathBuf::from("s.jsonl"));
        assert_eq!(plot.out, PathBuf::from("plots"));
        // A run's options do not mix with a subcommand, before it or after it.
        for args in [
            &[
                "rampart-bench",
                "--clients",
                "4",
                "plot-sweep",
                "--summary",
                "s",
                "--out",
                "o",
            ][..],
            &[
                "rampart-bench",
                "plot-sweep",
                "--summary",
                "s",
                "--out",
                "o",
                "--clients",
                "4",
            ],
        ] {
            assert!(Cli::try_parse_from(args).is_err(), "{args:?} is refused");
        }
    }

    #[test]
    fn total_and_duration_exclude_each_other() {
        let err = Options::try_parse_from(["rampart-bench", "--total", "5", "--duration", "1s"])
            .expect_err("both given");
        assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict);
    }

    #[test]
    fn workload_names_match_the_command_line() {
        for workload in Workload::value_variants() {
            let parsed = Workload::from_str(workload.name(), false).expect("parses");
            assert_eq!(parsed, *workload);
        }
    }
}
