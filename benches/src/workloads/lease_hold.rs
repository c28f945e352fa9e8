//! The lease-hold and lease-renew workloads: leases that pile up, each holding one key, and
//! their renewal all at once.

use rampart_api::etcdserverpb::kv_client::KvClient;
use rampart_api::etcdserverpb::lease_client::LeaseClient;
use rampart_api::etcdserverpb::PutRequest;
use tonic::transport::Channel;
use tonic::Status;

use super::keepalive::KeepAliveStream;
use super::lease::grant;
use crate::config::Config;
use crate::driver::Worker;
use crate::error::in_step;
use crate::keys::KeySpace;
use crate::payload;
use crate::stats::Recorder;

/// Request `n` grants lease `first_lease_id + n` and puts key `n` of the key space with it, then
/// leaves both: the leases stay until they expire. `benches/leases.sh` measures the leader's
/// lease clock with it.
pub struct LeaseHoldWorker {
    lease: LeaseClient<Channel>,
    kv: KvClient<Channel>,
    keys: KeySpace,
    ttl: i64,
    first_lease_id: i64,
    value: Vec<u8>,
}

impl LeaseHoldWorker {
    pub fn new(config: &Config, _client: usize, channel: Channel) -> LeaseHoldWorker {
        LeaseHoldWorker {
            lease: LeaseClient::new(channel.clone()),
            kv: KvClient::new(channel),
            keys: config.keys.clone(),
            ttl: config.lease_ttl,
            first_lease_id: config.first_lease_id,
            value: payload::value(config.value_size),
        }
    }
}

impl Worker for LeaseHoldWorker {
    async fn execute(&mut self, seq: u64, _recorder: &mut Recorder) -> Result<(), Status> {
        let id = grant(&mut self.lease, self.ttl, self.first_lease_id + seq as i64)
            .await
            .map_err(in_step("lease grant"))?;
        self.kv
            .put(PutRequest {
                key: self.keys.key(seq),
                value: self.value.clone(),
                lease: id,
                ..Default::default()
            })
            .await
            .map_err(in_step("put"))?;
        Ok(())
    }
}

/// Request `n` renews lease `first_lease_id + n` over the client's keep-alive stream; a lease
/// the server does not know is an error.
pub struct LeaseRenewWorker {
    keepalive: KeepAliveStream,
    first_lease_id: i64,
}

impl LeaseRenewWorker {
    pub fn new(config: &Config, _client: usize, channel: Channel) -> LeaseRenewWorker {
        LeaseRenewWorker {
            keepalive: KeepAliveStream::new(channel),
            first_lease_id: config.first_lease_id,
        }
    }
}

impl Worker for LeaseRenewWorker {
    async fn execute(&mut self, seq: u64, _recorder: &mut Recorder) -> Result<(), Status> {
        self.keepalive
            .refresh(self.first_lease_id + seq as i64)
            .await
            .map_err(in_step("lease keep-alive"))?;
        Ok(())
    }
}
