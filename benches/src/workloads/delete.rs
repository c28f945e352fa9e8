//! The delete workload: single-key deletes.

use rampart_api::etcdserverpb::kv_client::KvClient;
use rampart_api::etcdserverpb::DeleteRangeRequest;
use rand::rngs::StdRng;
use tonic::transport::Channel;
use tonic::Status;

use crate::config::Config;
use crate::driver::Worker;
use crate::keys::KeySpace;
use crate::stats::Recorder;

/// Deletes one random key per request. A key already deleted is still a request through Raft
/// (etcd commits it and answers `deleted: 0`); `keys_deleted` counts the ones that existed.
pub struct DeleteWorker {
    kv: KvClient<Channel>,
    keys: KeySpace,
    rng: StdRng,
}

impl DeleteWorker {
    pub fn new(config: &Config, client: usize, channel: Channel) -> DeleteWorker {
        DeleteWorker {
            kv: KvClient::new(channel),
            keys: config.keys.clone(),
            rng: super::client_rng(config, client),
        }
    }
}

impl Worker for DeleteWorker {
    async fn execute(&mut self, _seq: u64, recorder: &mut Recorder) -> Result<(), Status> {
        let response = self
            .kv
            .delete_range(DeleteRangeRequest {
                key: self.keys.random_key(&mut self.rng),
                ..Default::default()
            })
            .await?
            .into_inner();
        recorder.add("keys_deleted", u64::try_from(response.deleted).unwrap_or(0));
        Ok(())
    }
}
