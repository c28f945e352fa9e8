//! The mixed workload: reads and puts of random keys in a fixed proportion.

use rampart_api::etcdserverpb::kv_client::KvClient;
use rampart_api::etcdserverpb::PutRequest;
use rand::rngs::StdRng;
use rand::Rng;
use tokio::time::Instant;
use tonic::transport::Channel;
use tonic::Status;

use crate::config::Config;
use crate::driver::Worker;
use crate::error::in_step;
use crate::keys::KeySpace;
use crate::options::Consistency;
use crate::payload;
use crate::stats::Recorder;

/// Reads a random key with probability `read_ratio`, puts one otherwise. Reads and writes are
/// also measured apart, as parts `read` and `write`.
pub struct MixedWorker {
    kv: KvClient<Channel>,
    keys: KeySpace,
    rng: StdRng,
    read_ratio: f64,
    serializable: bool,
    value: Vec<u8>,
}

impl MixedWorker {
    pub fn new(config: &Config, client: usize, channel: Channel) -> MixedWorker {
        MixedWorker {
            kv: KvClient::new(channel),
            keys: config.keys.clone(),
            rng: super::client_rng(config, client),
            read_ratio: config.read_ratio,
            serializable: config.consistency == Consistency::Serializable,
            value: payload::value(config.value_size),
        }
    }
}

impl Worker for MixedWorker {
    async fn execute(&mut self, _seq: u64, recorder: &mut Recorder) -> Result<(), Status> {
        let key = self.keys.random_key(&mut self.rng);
        let began = Instant::now();
        if self.rng.gen_bool(self.read_ratio) {
            super::range::read(&mut self.kv, key, self.serializable)
                .await
                .map_err(in_step("read"))?;
            recorder.record_part("read", began);
            recorder.add("reads", 1);
        } else {
            self.kv
                .put(PutRequest {
                    key,
                    value: self.value.clone(),
                    ..Default::default()
                })
                .await
                .map_err(in_step("write"))?;
            recorder.record_part("write", began);
            recorder.add("writes", 1);
        }
        Ok(())
    }
}
