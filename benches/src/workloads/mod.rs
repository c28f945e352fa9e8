//! The workloads, one file each (and `keepalive` and `session`, the leases that lease, lock and
//! election hold). Each builds one [`Worker`](crate::driver::Worker) per client
//! and hands them to the [`driver`](crate::driver).

mod delete;
mod election;
mod keepalive;
mod lease;
mod lease_hold;
mod load;
mod lock;
mod mixed;
mod put;
mod range;
mod session;
mod txn_put;
mod watch;

use tokio::time::Instant;
use tonic::transport::Channel;

use crate::config::Config;
use crate::connect::Connections;
use crate::driver::{drive, Run, Worker};
use crate::error::BenchError;
use crate::keys::worker_rng;
use crate::options::Workload;
use crate::schedule::{Pace, Stop};

/// Runs the workload of `config` over `conns`.
pub async fn run(config: &Config, conns: &Connections) -> Result<Run, BenchError> {
    let origin = Instant::now();
    let run = match config.workload {
        Workload::Put => drive_clients(config, conns, origin, put::PutWorker::random).await,
        Workload::Range => drive_clients(config, conns, origin, range::RangeWorker::new).await,
        Workload::TxnPut => drive_clients(config, conns, origin, txn_put::TxnPutWorker::new).await,
        Workload::Delete => drive_clients(config, conns, origin, delete::DeleteWorker::new).await,
        Workload::Mixed => drive_clients(config, conns, origin, mixed::MixedWorker::new).await,
        Workload::Lease => drive_clients(config, conns, origin, lease::LeaseWorker::new).await,
        Workload::LeaseHold => {
            drive_clients(config, conns, origin, lease_hold::LeaseHoldWorker::new).await
        }
        Workload::LeaseRenew => {
            drive_clients(config, conns, origin, lease_hold::LeaseRenewWorker::new).await
        }
        Workload::Lock => drive_clients(config, conns, origin, lock::LockWorker::new).await,
        Workload::Load => drive_clients(config, conns, origin, load::LoadWorker::new).await,
        Workload::Watch => watch::run(config, conns, origin).await,
        Workload::Election => election::run(config, conns, origin).await,
    };
    Ok(run)
}

/// Puts every key of the key space once, with all clients in a closed loop. Nothing is
/// measured; any failure fails the run, as reads of a partly filled key space would measure
/// something else than asked.
pub async fn prefill(config: &Config, conns: &Connections) -> Result<(), BenchError> {
    let workers = (0..config.clients)
        .map(|client| put::PutWorker::sequential(config, conns.channel(client)))
        .collect();
    let run = drive(
        workers,
        Pace::Closed,
        Stop::Total(config.keys.size()),
        Instant::now(),
        "prefill",
    )
    .await;
    let errors = run.recorder.errors();
    if errors.is_empty() {
        return Ok(());
    }
    let summary = errors
        .iter()
        .map(|(kind, count)| format!("{count} × {kind}"))
        .collect::<Vec<_>>()
        .join("; ");
    Err(BenchError::Prefill(summary))
}

/// A constructor of a worker: the run's config, the client's number (which seeds its random
/// choices) and its connection.
type MakeWorker<W> = fn(&Config, usize, Channel) -> W;

/// Runs one worker per client on the run's schedule.
async fn drive_clients<W: Worker>(
    config: &Config,
    conns: &Connections,
    origin: Instant,
    make: MakeWorker<W>,
) -> Run {
    let workers = (0..config.clients)
        .map(|client| make(config, client, conns.channel(client)))
        .collect();
    drive(
        workers,
        config.pace,
        config.stop,
        origin,
        config.workload.name(),
    )
    .await
}

/// The error of a request made before its worker's setup took a lease. The driver sends no
/// request for a worker whose setup failed, so this does not happen.
fn no_session() -> tonic::Status {
    tonic::Status::failed_precondition("no lease: the worker's setup did not run")
}

/// The random choices of client `client`.
fn client_rng(config: &Config, client: usize) -> rand::rngs::StdRng {
    worker_rng(config.seed, client)
}
