//! The lock workload: Lock and Unlock of the v3lockpb Lock service.

use std::time::Duration;

use rampart_api::etcdserverpb::lease_client::LeaseClient;
use rampart_api::etcdserverpb::LeaseRevokeRequest;
use rampart_api::v3lockpb::lock_client::LockClient;
use rampart_api::v3lockpb::{LockRequest, UnlockRequest};
use rand::rngs::StdRng;
use tokio::time::Instant;
use tokio_util::task::AbortOnDropHandle;
use tonic::transport::Channel;
use tonic::Status;

use super::keepalive::KeepAliveStream;
use crate::config::Config;
use crate::driver::Worker;
use crate::error::in_step;
use crate::keys::KeySpace;
use crate::stats::Recorder;

/// Locks a random name of the key space and unlocks it. Locks need a lease; each worker grants
/// one in setup, keeps it alive in the background for the whole run and revokes it at the end.
/// Names collide when workers outnumber them, and a Lock then waits for the holder: that wait is
/// part of the latency. The steps are also measured apart, as parts `lock` and `unlock`.
pub struct LockWorker {
    lock: LockClient<Channel>,
    lease: LeaseClient<Channel>,
    channel: Channel,
    keys: KeySpace,
    rng: StdRng,
    ttl: i64,
    /// The lease the worker's locks are held with; 0 before setup.
    lease_id: i64,
    /// Refreshes the lease every third of its TTL; stopped when the worker is dropped.
    keeper: Option<AbortOnDropHandle<()>>,
}

impl LockWorker {
    pub fn new(config: &Config, client: usize, channel: Channel) -> LockWorker {
        LockWorker {
            lock: LockClient::new(channel.clone()),
            lease: LeaseClient::new(channel.clone()),
            channel,
            keys: config.keys.clone(),
            rng: super::client_rng(config, client),
            ttl: config.lease_ttl,
            lease_id: 0,
            keeper: None,
        }
    }
}

impl Worker for LockWorker {
    async fn setup(&mut self) -> Result<(), Status> {
        let id = super::lease::grant(&mut self.lease, self.ttl, 0)
            .await
            .map_err(in_step("lease grant"))?;
        self.lease_id = id;
        let mut stream = KeepAliveStream::new(self.channel.clone());
        let period = Duration::from_secs(u64::try_from(self.ttl).unwrap_or(1))
            .max(Duration::from_secs(1))
            / 3;
        self.keeper = Some(AbortOnDropHandle::new(tokio::spawn(async move {
            let mut interval = tokio::time::interval(period);
            // The first tick is immediate and the lease was just granted.
            interval.tick().await;
            loop {
                interval.tick().await;
                // A failed refresh is retried at the next tick; if the lease expires meanwhile,
                // the locks fail and are counted as errors.
                let _ = stream.refresh(id).await;
            }
        })));
        Ok(())
    }

    async fn execute(&mut self, _seq: u64, recorder: &mut Recorder) -> Result<(), Status> {
        let began = Instant::now();
        let key = self
            .lock
            .lock(LockRequest {
                name: self.keys.random_key(&mut self.rng),
                lease: self.lease_id,
            })
            .await
            .map_err(in_step("lock"))?
            .into_inner()
            .key;
        recorder.record_part("lock", began);

        let began = Instant::now();
        self.lock
            .unlock(UnlockRequest { key })
            .await
            .map_err(in_step("unlock"))?;
        recorder.record_part("unlock", began);
        Ok(())
    }

    async fn finish(mut self) {
        self.keeper = None;
        if self.lease_id != 0 {
            // Best effort: an unrevoked lease expires after its TTL anyway.
            let _ = self
                .lease
                .lease_revoke(LeaseRevokeRequest { id: self.lease_id })
                .await;
        }
    }
}
