//! The write path of the state machine: `StateMachine::apply` of one entry, as openraft calls it
//! once the entry is committed: the command executed against the MVCC tree and its effect
//! written, visible to readers when the call returns.

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput};
use openraft::storage::RaftStateMachine;
use rampart_storage::Command;

use crate::fixture::{self, TempStore, KEYS, TXN_PUTS};

pub fn bench(c: &mut Criterion) {
    let rt = fixture::runtime();
    let mut store = TempStore::with_keys(&rt);
    let mut group = c.benchmark_group("apply");

    // Overwrites cycle through the existing keys, as a put workload on a filled key space
    // does: each adds a history version and replaces the live one. The entry is built outside
    // the measured routine.
    group.throughput(Throughput::Elements(1));
    let mut written = 0;
    group.bench_function("put_256b", |b| {
        b.iter_batched(
            || {
                written += 1;
                store.next.entry(Command::Put(fixture::put(written % KEYS)))
            },
            |entry| {
                black_box(
                    rt.block_on(store.sm.apply([entry]))
                        .expect("apply succeeds"),
                )
            },
            BatchSize::SmallInput,
        )
    });

    // The same overwrites, 100 keys to an entry: one revision and one sled batch for all.
    group.throughput(Throughput::Elements(TXN_PUTS));
    let mut block = 0;
    group.bench_function("txn_100_puts_256b", |b| {
        b.iter_batched(
            || {
                block = (block + 1) % (KEYS / TXN_PUTS);
                store
                    .next
                    .entry(fixture::txn_puts(block * TXN_PUTS, TXN_PUTS))
            },
            |entry| {
                black_box(
                    rt.block_on(store.sm.apply([entry]))
                        .expect("apply succeeds"),
                )
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}
