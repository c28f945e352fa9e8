//! The load workload: the key space written in key order, many keys to a txn.

use rampart_api::etcdserverpb::kv_client::KvClient;
use rampart_api::etcdserverpb::request_op::Request;
use rampart_api::etcdserverpb::{PutRequest, RequestOp, TxnRequest};
use tonic::transport::Channel;
use tonic::Status;

use crate::config::Config;
use crate::driver::Worker;
use crate::keys::KeySpace;
use crate::payload;
use crate::stats::Recorder;

/// Request `n` is a txn without compares that puts the `n`-th run of `batch` consecutive keys of
/// one pass over the key space: a pass takes `ceil(key_space / batch)` requests (the last txn
/// holds the remainder), and request numbers past it start the next pass, so `--total` in
/// multiples of that overwrites every key the same number of times. A txn never holds a key
/// twice (etcd refuses that), and concurrent clients write disjoint runs.
pub struct LoadWorker {
    kv: KvClient<Channel>,
    keys: KeySpace,
    batch: u64,
    value: Vec<u8>,
}

impl LoadWorker {
    pub fn new(config: &Config, _client: usize, channel: Channel) -> LoadWorker {
        LoadWorker {
            kv: KvClient::new(channel),
            keys: config.keys.clone(),
            batch: config.batch,
            value: payload::value(config.value_size),
        }
    }
}

impl Worker for LoadWorker {
    async fn execute(&mut self, seq: u64, recorder: &mut Recorder) -> Result<(), Status> {
        let indexes = run_of(seq, self.batch, self.keys.size());
        let count = indexes.end - indexes.start;
        let success = indexes
            .map(|index| RequestOp {
                request: Some(Request::RequestPut(PutRequest {
                    key: self.keys.key(index),
                    value: self.value.clone(),
                    ..Default::default()
                })),
            })
            .collect();
        self.kv
            .txn(TxnRequest {
                compare: vec![],
                success,
                failure: vec![],
            })
            .await?;
        recorder.add("keys_written", count);
        Ok(())
    }
}

/// The key indexes that request `seq` writes.
fn run_of(seq: u64, batch: u64, key_space: u64) -> std::ops::Range<u64> {
    let per_pass = key_space.div_ceil(batch);
    let start = (seq % per_pass) * batch;
    start..(start + batch).min(key_space)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_cover_every_key_once() {
        let runs: Vec<_> = (0..8).map(|seq| run_of(seq, 3, 10)).collect();
        assert_eq!(runs, [0..3, 3..6, 6..9, 9..10, 0..3, 3..6, 6..9, 9..10]);
        assert_eq!(
            run_of(0, 100, 10),
            0..10,
            "a batch larger than the key space"
        );
    }
}
