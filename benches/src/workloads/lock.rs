//! The lock workload: Lock and Unlock of the v3lockpb Lock service.

use rampart_api::v3lockpb::lock_client::LockClient;
use rampart_api::v3lockpb::{LockRequest, UnlockRequest};
use rand::rngs::StdRng;
use tokio::time::Instant;
use tonic::transport::Channel;
use tonic::Status;

use super::session::Session;
use crate::config::Config;
use crate::driver::Worker;
use crate::error::in_step;
use crate::keys::KeySpace;
use crate::stats::Recorder;

/// Locks a random name of the key space and unlocks it. Locks need a lease; each worker holds a
/// [`Session`] for the whole run. Names collide when workers outnumber them (a small
/// `--key-space`), and a Lock then waits for the holders before it: that wait is part of the
/// latency. The steps are also measured apart, as parts `lock` and `unlock`.
pub struct LockWorker {
    lock: LockClient<Channel>,
    channel: Channel,
    keys: KeySpace,
    rng: StdRng,
    ttl: i64,
    /// The lease the worker's locks are held with; `None` before setup.
    session: Option<Session>,
}

impl LockWorker {
    pub fn new(config: &Config, client: usize, channel: Channel) -> LockWorker {
        LockWorker {
            lock: LockClient::new(channel.clone()),
            channel,
            keys: config.keys.clone(),
            rng: super::client_rng(config, client),
            ttl: config.lease_ttl,
            session: None,
        }
    }
}

impl Worker for LockWorker {
    async fn setup(&mut self) -> Result<(), Status> {
        let session = Session::grant(self.channel.clone(), self.ttl).await?;
        self.session = Some(session);
        Ok(())
    }

    async fn execute(&mut self, _seq: u64, recorder: &mut Recorder) -> Result<(), Status> {
        let session = self.session.as_mut().ok_or_else(super::no_session)?;
        session.clean().await.map_err(in_step("clean-up"))?;
        let name = self.keys.random_key(&mut self.rng);
        let outcome = lock_unlock(&mut self.lock, session.id(), &name, recorder).await;
        if outcome.is_err() {
            session.abandon(&name).await;
        }
        outcome
    }

    async fn finish(self) {
        if let Some(session) = self.session {
            session.revoke().await;
        }
    }
}

/// Locks `name` with `lease` and unlocks it, recording parts `lock` and `unlock`.
async fn lock_unlock(
    client: &mut LockClient<Channel>,
    lease: i64,
    name: &[u8],
    recorder: &mut Recorder,
) -> Result<(), Status> {
    let began = Instant::now();
    let key = client
        .lock(LockRequest {
            name: name.to_vec(),
            lease,
        })
        .await
        .map_err(in_step("lock"))?
        .into_inner()
        .key;
    recorder.record_part("lock", began);

    let began = Instant::now();
    client
        .unlock(UnlockRequest { key })
        .await
        .map_err(in_step("unlock"))?;
    recorder.record_part("unlock", began);
    Ok(())
}
