//! Runs a workload's workers on the schedule and gathers what they measured.
//!
//! A workload supplies one [`Worker`] per client. The driver prepares them all, starts the
//! clock, and lets each claim request numbers from one shared counter until the [`Plan`] says
//! the run is over. A worker's requests are sequential; the run's concurrency is the number of
//! workers.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use tonic::{Code, Status};

use crate::progress::Progress;
use crate::schedule::{Pace, Plan, Stop};
use crate::stats::Recorder;

/// One client of a workload.
pub trait Worker: Send + 'static {
    /// Prepares what the requests need (a lease to hold locks with). Not measured; a failure is
    /// counted as an error and the worker sends nothing.
    fn setup(&mut self) -> impl Future<Output = Result<(), Status>> + Send {
        async { Ok(()) }
    }

    /// Sends request `seq` and waits for its answer, recording any parts and counts in
    /// `recorder`. The driver records the request itself.
    fn execute(
        &mut self,
        seq: u64,
        recorder: &mut Recorder,
    ) -> impl Future<Output = Result<(), Status>> + Send;

    /// Releases what `setup` took (revokes the lease). Not measured.
    fn finish(self) -> impl Future<Output = ()> + Send
    where
        Self: Sized,
    {
        async {}
    }
}

/// What a run measured.
#[derive(Debug)]
pub struct Run {
    pub recorder: Recorder,
    /// When the first request was due: the start of the measured span.
    pub started: Instant,
    /// From the first request's (intended) start to the last answer: the span throughput is
    /// computed over.
    pub elapsed: Duration,
}

/// What the workers of one run share.
struct Shared {
    plan: Plan,
    /// The number of the next request to claim.
    next: AtomicU64,
    /// Set when the server answers Unimplemented: every further request would too, and a
    /// report of one such error says as much as a report of a million.
    halt: AtomicBool,
    progress: Progress,
}

/// Prepares `workers`, runs them on the schedule given by `pace` and `stop`, and merges their
/// measurements. Completion times count from `origin`, which must not be later than this call,
/// so that a workload measuring other things alongside (watch events) shares the time axis.
pub async fn drive<W: Worker>(
    mut workers: Vec<W>,
    pace: Pace,
    stop: Stop,
    origin: Instant,
    label: &str,
) -> Run {
    let setups = futures::future::join_all(workers.iter_mut().map(|w| w.setup())).await;
    let plan = Plan::new(pace, stop, Instant::now());
    let shared = Arc::new(Shared {
        plan,
        next: AtomicU64::new(0),
        halt: AtomicBool::new(false),
        progress: Progress::start(&plan, label),
    });
    let mut tasks = Vec::with_capacity(workers.len());
    for (mut worker, setup) in workers.into_iter().zip(setups) {
        let shared = shared.clone();
        tasks.push(tokio::spawn(async move {
            let mut recorder = Recorder::new(origin);
            match setup {
                Ok(()) => work(&mut worker, &shared, &mut recorder).await,
                Err(status) => fail(&status, &shared, &mut recorder),
            }
            worker.finish().await;
            recorder
        }));
    }
    let mut recorder = Recorder::new(origin);
    for task in tasks {
        match task.await {
            Ok(measured) => recorder.merge(&measured),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // Nothing cancels these tasks; a runtime shutting down ends the process anyway.
            Err(e) => recorder.record_error_kind(format!("worker task failed: {e}"), 1),
        }
    }
    shared.progress.finish();
    let last = origin + recorder.last_completion();
    let elapsed = if recorder.ops().count() + recorder.error_count() > 0 {
        last.saturating_duration_since(plan.start)
    } else {
        plan.start.elapsed()
    };
    Run {
        recorder,
        started: plan.start,
        elapsed,
    }
}

/// One worker's loop: claim a request number, wait until it is due, send it, record it.
async fn work<W: Worker>(worker: &mut W, shared: &Shared, recorder: &mut Recorder) {
    while !shared.halt.load(Ordering::Relaxed) {
        let seq = shared.next.fetch_add(1, Ordering::Relaxed);
        let claimed = Instant::now();
        let Some(due) = shared.plan.slot(seq, claimed) else {
            break;
        };
        // A request that was already due when claimed counts from when it was due: the time it
        // waited for a free worker is latency the server caused (no coordinated omission). A
        // request claimed early counts from when it is actually sent, so that the timer's
        // millisecond granularity is not charged to the server.
        let began = if due <= claimed || shared.plan.pace == Pace::Closed {
            due
        } else {
            tokio::time::sleep_until(due).await;
            Instant::now()
        };
        match worker.execute(seq, recorder).await {
            Ok(()) => recorder.record_op(began),
            Err(status) => fail(&status, shared, recorder),
        }
        shared.progress.inc();
    }
}

fn fail(status: &Status, shared: &Shared, recorder: &mut Recorder) {
    recorder.record_error(status);
    if status.code() == Code::Unimplemented {
        shared.halt.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Answers after `delay`; fails every request whose number is in `failing`.
    struct Sleeper {
        delay: Duration,
        failing: Vec<u64>,
        code: Code,
    }

    impl Worker for Sleeper {
        async fn execute(&mut self, seq: u64, recorder: &mut Recorder) -> Result<(), Status> {
            tokio::time::sleep(self.delay).await;
            recorder.add("executed", 1);
            if self.failing.contains(&seq) {
                return Err(Status::new(self.code, "no"));
            }
            Ok(())
        }
    }

    fn sleepers(n: usize, delay: Duration, failing: &[u64], code: Code) -> Vec<Sleeper> {
        (0..n)
            .map(|_| Sleeper {
                delay,
                failing: failing.to_vec(),
                code,
            })
            .collect()
    }

    #[tokio::test]
    async fn closed_loop_sends_the_total_once() {
        let workers = sleepers(4, Duration::from_millis(1), &[3, 7], Code::Unavailable);
        let run = drive(workers, Pace::Closed, Stop::Total(40), Instant::now(), "t").await;
        assert_eq!(run.recorder.counter("executed"), 40);
        assert_eq!(run.recorder.ops().count(), 38);
        assert_eq!(run.recorder.errors()["Unavailable: no"], 2);
        assert!(
            run.elapsed >= Duration::from_millis(10),
            "40 requests of 1 ms on 4 workers"
        );
    }

    #[tokio::test]
    async fn unimplemented_halts_every_worker() {
        let workers = sleepers(2, Duration::ZERO, &[0, 1], Code::Unimplemented);
        let run = drive(
            workers,
            Pace::Closed,
            Stop::Total(1000),
            Instant::now(),
            "t",
        )
        .await;
        assert!(
            run.recorder.counter("executed") <= 4,
            "stopped after the first answers, sent {}",
            run.recorder.counter("executed")
        );
        assert!(run.recorder.errors()["Unimplemented: no"] >= 1);
    }

    #[tokio::test(start_paused = true)]
    async fn open_loop_charges_queueing_to_latency() {
        // One worker, a server that takes 100 ms, requests due every 10 ms: request n waits
        // about 90 * n ms for the worker, and that wait is part of its latency.
        let workers = sleepers(1, Duration::from_millis(100), &[], Code::Ok);
        let origin = Instant::now();
        let run = drive(
            workers,
            Pace::Open { rate: 100.0 },
            Stop::Total(10),
            origin,
            "t",
        )
        .await;
        let latency = run.recorder.ops().summary();
        assert_eq!(latency.count, 10);
        // The last request was due at 90 ms and answered at 1000 ms.
        assert!(
            latency.max_us >= 900_000,
            "max {} µs includes the queueing",
            latency.max_us
        );
        assert!(latency.p50_us >= 400_000, "p50 {} µs", latency.p50_us);
    }

    #[tokio::test(start_paused = true)]
    async fn open_loop_keeps_the_rate_when_the_server_keeps_up() {
        let workers = sleepers(2, Duration::from_millis(1), &[], Code::Ok);
        let run = drive(
            workers,
            Pace::Open { rate: 50.0 },
            Stop::Duration(Duration::from_secs(2)),
            Instant::now(),
            "t",
        )
        .await;
        assert_eq!(run.recorder.ops().count(), 100, "50/s for 2 s");
        let latency = run.recorder.ops().summary();
        assert!(
            latency.max_us < 5_000,
            "no queueing: max {} µs",
            latency.max_us
        );
        // Requests due at 0..1.98 s, the last answered 1 ms later.
        assert!(run.elapsed >= Duration::from_millis(1980));
        assert!(
            run.elapsed < Duration::from_millis(2100),
            "{:?}",
            run.elapsed
        );
    }
}
