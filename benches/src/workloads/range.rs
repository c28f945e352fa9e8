//! The range workload: single-key reads, linearizable or serializable.

use rampart_api::etcdserverpb::kv_client::KvClient;
use rampart_api::etcdserverpb::RangeRequest;
use rand::rngs::StdRng;
use tonic::transport::Channel;
use tonic::Status;

use crate::config::Config;
use crate::driver::Worker;
use crate::keys::KeySpace;
use crate::options::Consistency;
use crate::stats::Recorder;

/// Reads one random key per request.
pub struct RangeWorker {
    kv: KvClient<Channel>,
    keys: KeySpace,
    rng: StdRng,
    serializable: bool,
}

impl RangeWorker {
    pub fn new(config: &Config, client: usize, channel: Channel) -> RangeWorker {
        RangeWorker {
            kv: KvClient::new(channel),
            keys: config.keys.clone(),
            rng: super::client_rng(config, client),
            serializable: config.consistency == Consistency::Serializable,
        }
    }
}

impl Worker for RangeWorker {
    async fn execute(&mut self, _seq: u64, recorder: &mut Recorder) -> Result<(), Status> {
        let found = read(
            &mut self.kv,
            self.keys.random_key(&mut self.rng),
            self.serializable,
        )
        .await?;
        recorder.add("keys_found", u64::from(found.is_some()));
        Ok(())
    }
}

/// Reads `key` and answers its mod_revision, `None` if it does not exist.
pub async fn read(
    kv: &mut KvClient<Channel>,
    key: Vec<u8>,
    serializable: bool,
) -> Result<Option<i64>, Status> {
    let response = kv
        .range(RangeRequest {
            key,
            serializable,
            ..Default::default()
        })
        .await?
        .into_inner();
    Ok(response.kvs.first().map(|kv| kv.mod_revision))
}
