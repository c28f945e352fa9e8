//! The Raft log: `LogStore::append` of a batch of put entries, through openraft's
//! `blocking_append`, which returns when the log store reports the batch durable. The public API
//! has no append without that flush (openraft counts an entry only once it is on disk), so these
//! numbers include the disk's fsync, and on most disks are mostly that.

use std::hint::black_box;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput};
use openraft::storage::RaftLogStorageExt;
use rampart_storage::Command;

use crate::fixture::{self, TempStore};

pub fn bench(c: &mut Criterion) {
    let rt = fixture::runtime();
    let mut store = TempStore::open();
    let mut log = store.store.log_store();
    let mut group = c.benchmark_group("log_append");
    // An fsync takes milliseconds on a slow disk: give the 10 samples time to complete.
    group.measurement_time(std::time::Duration::from_secs(4));
    for batch in [1u64, 100] {
        group.throughput(Throughput::Elements(batch));
        group.bench_with_input(
            BenchmarkId::new("flushed_put_256b_entries", batch),
            &batch,
            |b, &batch| {
                b.iter_batched(
                    || {
                        (0..batch)
                            .map(|i| store.next.entry(Command::Put(fixture::put(i))))
                            .collect::<Vec<_>>()
                    },
                    |entries| {
                        rt.block_on(log.blocking_append(entries))
                            .expect("append succeeds");
                        black_box(())
                    },
                    BatchSize::SmallInput,
                )
            },
        );
    }
    group.finish();
}
