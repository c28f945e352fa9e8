//! What the chaos test binaries share: one run of the harness, failed on any violation.

use std::time::Duration;

use rampart_chaos::nemesis::FaultKind;
use rampart_chaos::{Options, Outcome};
use tempfile::TempDir;

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "rampart_chaos=info".into()),
        )
        .with_test_writer()
        .try_init();
}

/// Runs the harness and fails, keeping the run's directory, on any violation. The directory
/// lives as long as the returned `TempDir`.
pub async fn run_and_check(
    seed: u64,
    nodes: usize,
    duration: Duration,
    faults: &[FaultKind],
) -> (Outcome, TempDir) {
    init_tracing();
    println!("rampart-chaos seed {seed} ({nodes} members, {duration:?}, faults {faults:?})");
    let dir = tempfile::tempdir().expect("temporary directory");
    let options = Options {
        nodes,
        duration,
        faults: faults.to_vec(),
        ..Options::new(seed, dir.path().to_owned())
    };
    let outcome = match rampart_chaos::run(&options).await {
        Ok(outcome) => outcome,
        Err(e) => {
            let kept = dir.keep();
            panic!(
                "harness failed (seed {seed}, files in {}): {e:#}",
                kept.display()
            );
        }
    };
    println!("{}", outcome.summary());
    if !outcome.passed() {
        let kept = dir.keep();
        panic!(
            "seed {seed} found {} violation(s); files in {}:\n{:#?}",
            outcome.findings.len(),
            kept.display(),
            outcome.findings
        );
    }
    assert!(
        outcome.checked >= 200,
        "seed {seed}: only {} operations checked; the cluster barely served",
        outcome.checked
    );
    // The watch and lease checks judged something: events on every watcher, leases granted
    // and their keys stored.
    assert!(
        outcome.watch.watchers == 4 && outcome.watch.events >= 100,
        "seed {seed}: watch checks saw too little: {:?}",
        outcome.watch
    );
    assert!(
        outcome.lease.leases >= 3 && outcome.lease.keys >= 3,
        "seed {seed}: lease checks saw too little: {:?}",
        outcome.lease
    );
    // The lock and election clients took locks and won elections, and the observers saw
    // leaders.
    assert!(
        outcome.lock.acquisitions >= 1 && outcome.lock.writes_ok >= 1,
        "seed {seed}: lock checks saw too little: {:?}",
        outcome.lock
    );
    assert!(
        outcome.election.won >= 1 && outcome.election.observed >= 1,
        "seed {seed}: election checks saw too little: {:?}",
        outcome.election
    );
    (outcome, dir)
}
