//! The txn-put workload: compare-and-swap on a key's mod_revision.

use rampart_api::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use rampart_api::etcdserverpb::kv_client::KvClient;
use rampart_api::etcdserverpb::request_op::Request;
use rampart_api::etcdserverpb::{Compare, PutRequest, RequestOp, TxnRequest};
use rand::rngs::StdRng;
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

/// Reads a random key, then puts it in a txn that succeeds only if the key's mod_revision is
/// still the one read (0 for a missing key), as an optimistic read-modify-write does. A txn that
/// loses the race is answered, not failed: it is counted as `txn_conflicts`.
pub struct TxnPutWorker {
    kv: KvClient<Channel>,
    keys: KeySpace,
    rng: StdRng,
    serializable: bool,
    value: Vec<u8>,
}

impl TxnPutWorker {
    pub fn new(config: &Config, client: usize, channel: Channel) -> TxnPutWorker {
        TxnPutWorker {
            kv: KvClient::new(channel),
            keys: config.keys.clone(),
            rng: super::client_rng(config, client),
            serializable: config.consistency == Consistency::Serializable,
            value: payload::value(config.value_size),
        }
    }
}

impl Worker for TxnPutWorker {
    async fn execute(&mut self, _seq: u64, recorder: &mut Recorder) -> Result<(), Status> {
        let key = self.keys.random_key(&mut self.rng);
        let began = Instant::now();
        let mod_revision = super::range::read(&mut self.kv, key.clone(), self.serializable)
            .await
            .map_err(in_step("range"))?
            .unwrap_or(0);
        recorder.record_part("range", began);

        let began = Instant::now();
        let response = self
            .kv
            .txn(TxnRequest {
                compare: vec![Compare {
                    result: CompareResult::Equal as i32,
                    target: CompareTarget::Mod as i32,
                    key: key.clone(),
                    target_union: Some(TargetUnion::ModRevision(mod_revision)),
                    ..Default::default()
                }],
                success: vec![RequestOp {
                    request: Some(Request::RequestPut(PutRequest {
                        key,
                        value: self.value.clone(),
                        ..Default::default()
                    })),
                }],
                failure: vec![],
            })
            .await
            .map_err(in_step("txn"))?
            .into_inner();
        recorder.record_part("txn", began);
        if !response.succeeded {
            recorder.add("txn_conflicts", 1);
        }
        Ok(())
    }
}
