//! The put workload, and the prefill that writes every key once.

use rampart_api::etcdserverpb::kv_client::KvClient;
use rampart_api::etcdserverpb::PutRequest;
use rand::rngs::StdRng;
use tonic::transport::Channel;
use tonic::Status;

use crate::config::Config;
use crate::driver::Worker;
use crate::keys::KeySpace;
use crate::payload;
use crate::stats::Recorder;

/// Which key a put writes.
enum KeyChoice {
    /// A key drawn uniformly from the key space.
    Random(Box<StdRng>),
    /// The key numbered like the request: a closed-loop run of `key_space` requests writes
    /// every key once.
    Sequential,
}

/// Puts one key per request.
pub struct PutWorker {
    kv: KvClient<Channel>,
    keys: KeySpace,
    choice: KeyChoice,
    value: Vec<u8>,
}

impl PutWorker {
    pub fn random(config: &Config, client: usize, channel: Channel) -> PutWorker {
        PutWorker {
            kv: KvClient::new(channel),
            keys: config.keys.clone(),
            choice: KeyChoice::Random(Box::new(super::client_rng(config, client))),
            value: payload::value(config.value_size),
        }
    }

    pub fn sequential(config: &Config, channel: Channel) -> PutWorker {
        PutWorker {
            kv: KvClient::new(channel),
            keys: config.keys.clone(),
            choice: KeyChoice::Sequential,
            value: payload::value(config.value_size),
        }
    }
}

impl Worker for PutWorker {
    async fn execute(&mut self, seq: u64, _recorder: &mut Recorder) -> Result<(), Status> {
        let key = match &mut self.choice {
            KeyChoice::Random(rng) => self.keys.random_key(rng.as_mut()),
            KeyChoice::Sequential => self.keys.key(seq),
        };
        self.kv
            .put(PutRequest {
                key,
                value: self.value.clone(),
                ..Default::default()
            })
            .await?;
        Ok(())
    }
}
