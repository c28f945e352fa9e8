//! Criterion micro-benchmarks of rampart-storage's hot paths, through its public API only (as
//! openraft and the server drive it):
//! - `apply`: the state machine applying a put entry, and a txn entry of 100 puts, to a store
//!   that holds 10,000 keys (`apply.rs`);
//! - `range`: a single-key Range and a 100-key prefix Range over 10,000 keys (`range.rs`);
//! - `log_append`: `LogStore::append` of 1 and of 100 put entries, each call ending once they
//!   are durable (`log.rs`);
//! - `codec`: bincode encoding and decoding of a log entry holding a 256-byte put (`codec.rs`).
//!
//! `cargo bench -p rampart-storage` runs them all in about a minute; `cargo bench -p
//! rampart-storage -- range` runs those whose name contains `range`. Each store lives in a fresh
//! temporary directory, on the disk `TMPDIR` points to: the log-append numbers are that disk's
//! fsync.

mod apply;
mod codec;
mod fixture;
mod log;
mod range;

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};

/// Few samples and short runs: the point is to see a hot path move by tens of percent after a
/// change, on a 2-core machine, without waiting minutes. Pass `--measurement-time` and
/// `--sample-size` on the command line for tighter numbers.
fn quick() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! {
    name = storage;
    config = quick();
    targets = apply::bench, range::bench, log::bench, codec::bench
}
criterion_main!(storage);
