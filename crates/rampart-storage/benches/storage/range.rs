//! The read path: `Mvcc::range` at the current revision, as a serializable Range is served
//! (a linearizable one puts a Raft read index in front of the same call).

use std::hint::black_box;

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, Throughput};
use rampart_storage::{Mvcc, RangeRequest};

use crate::fixture::{self, TempStore, KEYS};

pub fn bench(c: &mut Criterion) {
    let rt = fixture::runtime();
    let store = TempStore::with_keys(&rt);
    let mvcc = store.store.mvcc();
    let mut group = c.benchmark_group("range");

    let singles: Vec<RangeRequest> = (0..KEYS)
        .map(|i| RangeRequest {
            key: fixture::key(i),
            ..Default::default()
        })
        .collect();
    bench_requests(&mut group, &mvcc, "single_key", &singles, 1);

    let blocks: Vec<RangeRequest> = (0..KEYS / 100)
        .map(|block| {
            let prefix = fixture::key_block_prefix(block);
            RangeRequest {
                range_end: prefix_end(&prefix),
                key: prefix,
                ..Default::default()
            }
        })
        .collect();
    bench_requests(&mut group, &mvcc, "prefix_100_keys", &blocks, 100);
    group.finish();
}

/// Measures `requests`, built beforehand and taken in turn so that each read finds other keys;
/// each answers `keys` keys (checked on the first, before measuring).
fn bench_requests(
    group: &mut BenchmarkGroup<'_, WallTime>,
    mvcc: &Mvcc,
    name: &str,
    requests: &[RangeRequest],
    keys: usize,
) {
    let (first, _) = mvcc.range(&requests[0]).expect("range succeeds");
    assert_eq!(first.kvs.len(), keys, "{name}: a request reads {keys} keys");
    group.throughput(Throughput::Elements(keys as u64));
    let mut n = 0;
    group.bench_function(name, |b| {
        b.iter(|| {
            n = (n + 1) % requests.len();
            black_box(mvcc.range(&requests[n]).expect("range succeeds"))
        })
    });
}

/// The `range_end` of a prefix, as etcd's clients compute it; the prefixes here end with an
/// ASCII digit, so incrementing the last byte is enough.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    end
}
