//! `rampart-bench`: a load generator for the etcd v3 gRPC API, to measure Rampart and etcd with
//! the same workloads. It speaks the API through Rampart's generated client (`rampart-api`)
//! over plain tonic channels, so it needs nothing of a server but its endpoints, and must not
//! depend on Rampart's server crates (the tests do, to start one).
//!
//! Layout:
//! - [`options`]: the command-line options and their defaults; [`config`]: the validated
//!   settings of a run.
//! - [`schedule`]: when requests start (closed or open loop) and when a run ends;
//!   [`driver`]: runs one [`driver::Worker`] per client on that schedule.
//! - `workloads/`: one file per workload (put, range, txn-put, delete, mixed, watch, lease,
//!   lease-hold and lease-renew, lock, election, load).
//! - [`keys`] and [`payload`]: the keys and values written.
//! - [`stats`]: latency histograms and per-second counts; [`report`]: the printed and JSON
//!   results; [`plot`]: the PNG plots; [`sweep`]: the plot of a concurrency sweep's summary
//!   (`rampart-bench plot-sweep`, for `benches/overload.sh`).
//!
//! [`run`] is the whole of a run, for the binary and for tests alike.

pub mod config;
pub mod connect;
pub mod driver;
pub mod error;
pub mod keys;
pub mod options;
pub mod payload;
pub mod plot;
pub mod progress;
pub mod report;
pub mod schedule;
pub mod stats;
pub mod sweep;
mod workloads;

pub use config::Config;
pub use error::BenchError;
pub use options::{Consistency, Options, Workload};
pub use report::Report;

use connect::Connections;

/// Connects, fills the key space if asked, runs the workload and reports what it measured.
/// Failed requests do not fail the run: they are counted by kind in the report.
pub async fn run(config: &Config) -> Result<Report, BenchError> {
    let conns = Connections::open(&config.endpoints, config.conns, config.timeout).await?;
    if config.prefill {
        workloads::prefill(config, &conns).await?;
    }
    let measured = workloads::run(config, &conns).await?;
    Ok(Report::new(config, &measured))
}
