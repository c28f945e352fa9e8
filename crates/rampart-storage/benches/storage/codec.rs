//! Encoding of a log entry, as the log stores it and reads it back. The crate's codec module is
//! private; its `encode`/`decode` are bincode with its default options (`bincode::serialize` and
//! `bincode::deserialize`, with an error context), so those calls are measured here: a change of
//! the codec's encoding must be made here too.

use std::hint::black_box;

use criterion::{Criterion, Throughput};
use openraft::Entry;
use rampart_storage::{Command, TypeConfig};

use crate::fixture;

pub fn bench(c: &mut Criterion) {
    let entry = fixture::entry(1 << 20, Command::Put(fixture::put(4242)));
    let bytes = bincode::serialize(&entry).expect("entry encodes");
    let mut group = c.benchmark_group("codec");
    group.throughput(Throughput::Bytes(bytes.len() as u64));
    group.bench_function("encode_put_256b_entry", |b| {
        b.iter(|| bincode::serialize(black_box(&entry)).expect("entry encodes"))
    });
    group.bench_function("decode_put_256b_entry", |b| {
        b.iter(|| {
            bincode::deserialize::<Entry<TypeConfig>>(black_box(&bytes)).expect("entry decodes")
        })
    });
    group.finish();
}
