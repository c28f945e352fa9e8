//! The lease workload: grant, refresh over a keep-alive stream, revoke.

use rampart_api::etcdserverpb::lease_client::LeaseClient;
use rampart_api::etcdserverpb::{LeaseGrantRequest, LeaseRevokeRequest};
use tokio::time::Instant;
use tonic::transport::Channel;
use tonic::Status;

use super::keepalive::KeepAliveStream;
use crate::config::Config;
use crate::driver::Worker;
use crate::error::in_step;
use crate::stats::Recorder;

/// Each request grants a lease, refreshes it once over the worker's keep-alive stream and
/// revokes it, so that leases do not pile up and expire together in the middle of a long run.
/// The three steps are also measured apart, as parts `grant`, `keepalive` and `revoke`.
pub struct LeaseWorker {
    lease: LeaseClient<Channel>,
    keepalive: KeepAliveStream,
    ttl: i64,
}

impl LeaseWorker {
    pub fn new(config: &Config, _client: usize, channel: Channel) -> LeaseWorker {
        LeaseWorker {
            lease: LeaseClient::new(channel.clone()),
            keepalive: KeepAliveStream::new(channel),
            ttl: config.lease_ttl,
        }
    }
}

impl Worker for LeaseWorker {
    async fn execute(&mut self, _seq: u64, recorder: &mut Recorder) -> Result<(), Status> {
        let began = Instant::now();
        let id = grant(&mut self.lease, self.ttl, 0)
            .await
            .map_err(in_step("lease grant"))?;
        recorder.record_part("grant", began);

        let began = Instant::now();
        self.keepalive
            .refresh(id)
            .await
            .map_err(in_step("lease keep-alive"))?;
        recorder.record_part("keepalive", began);

        let began = Instant::now();
        self.lease
            .lease_revoke(LeaseRevokeRequest { id })
            .await
            .map_err(in_step("lease revoke"))?;
        recorder.record_part("revoke", began);
        Ok(())
    }
}

/// Grants lease `id` (0: an id the server chooses) of `ttl` seconds and answers its id.
pub async fn grant(lease: &mut LeaseClient<Channel>, ttl: i64, id: i64) -> Result<i64, Status> {
    let response = lease
        .lease_grant(LeaseGrantRequest { ttl, id })
        .await?
        .into_inner();
    // etcd 3.4 may still report a failure in the response's error field.
    if !response.error.is_empty() {
        return Err(Status::unknown(response.error));
    }
    Ok(response.id)
}
