//! A worker's lease for the whole run, kept alive in the background: what the lock and election
//! workloads hold their keys with, as a clientv3 `concurrency.Session` holds a program's.

use std::time::Duration;

use rampart_api::etcdserverpb::kv_client::KvClient;
use rampart_api::etcdserverpb::lease_client::LeaseClient;
use rampart_api::etcdserverpb::{DeleteRangeRequest, LeaseRevokeRequest};
use tokio_util::task::AbortOnDropHandle;
use tonic::transport::Channel;
use tonic::Status;

use super::keepalive::KeepAliveStream;
use crate::error::in_step;

/// A lease granted in a worker's setup, refreshed every third of its TTL until the session is
/// dropped, and revoked at the end. It also remembers a key that a failed request may have
/// left under a name, so that the name is not blocked for the rest of the run (see
/// [`Session::abandon`]).
pub struct Session {
    lease: LeaseClient<Channel>,
    kv: KvClient<Channel>,
    id: i64,
    /// Refreshes the lease; aborted when the session is dropped.
    keeper: AbortOnDropHandle<()>,
    /// A key of this lease that a failed Lock, Unlock, Campaign, Proclaim or Resign may have
    /// left behind, still to delete.
    abandoned: Option<Vec<u8>>,
}

impl Session {
    /// Grants a lease of `ttl` seconds and starts keeping it alive; a failed grant is the step
    /// "lease grant".
    pub async fn grant(channel: Channel, ttl: i64) -> Result<Session, Status> {
        let mut lease = LeaseClient::new(channel.clone());
        let id = super::lease::grant(&mut lease, ttl, 0)
            .await
            .map_err(in_step("lease grant"))?;
        let mut stream = KeepAliveStream::new(channel.clone());
        let period =
            Duration::from_secs(u64::try_from(ttl).unwrap_or(1)).max(Duration::from_secs(1)) / 3;
        let keeper = AbortOnDropHandle::new(tokio::spawn(async move {
            let mut interval = tokio::time::interval(period);
            // The first tick is immediate and the lease was just granted.
            interval.tick().await;
            loop {
                interval.tick().await;
                // A failed refresh is retried at the next tick; if the lease expires meanwhile,
                // the requests made with it fail and are counted as errors.
                let _ = stream.refresh(id).await;
            }
        }));
        Ok(Session {
            lease,
            kv: KvClient::new(channel),
            id,
            keeper,
            abandoned: None,
        })
    }

    /// The lease's id.
    pub fn id(&self) -> i64 {
        self.id
    }

    /// The key this lease holds under `name` when it locks it or campaigns in it.
    pub fn key(&self, name: &[u8]) -> Vec<u8> {
        session_key(name, self.id)
    }

    /// Deletes this lease's key under `name` after a request on it failed. A Lock or Campaign
    /// cut short by its deadline may still have created the key, and a failed Unlock or Resign
    /// leaves it; as the lease is kept alive, the key would hold the name for the rest of the
    /// run and every other worker on it would wait. Deleting a key that is not there does
    /// nothing, so this is safe whatever the failed request did. A failed delete is tried
    /// again by [`Session::clean`].
    pub async fn abandon(&mut self, name: &[u8]) {
        self.abandoned = Some(self.key(name));
        let _ = self.clean().await;
    }

    /// Deletes the key left by [`Session::abandon`], if it is still to delete.
    pub async fn clean(&mut self) -> Result<(), Status> {
        let Some(key) = self.abandoned.clone() else {
            return Ok(());
        };
        self.kv
            .delete_range(DeleteRangeRequest {
                key,
                ..Default::default()
            })
            .await?;
        self.abandoned = None;
        Ok(())
    }

    /// Stops the refreshes and revokes the lease, which deletes every key it holds. Best
    /// effort: an unrevoked lease expires after its TTL anyway.
    pub async fn revoke(self) {
        let Session {
            mut lease,
            id,
            keeper,
            ..
        } = self;
        drop(keeper);
        let _ = lease.lease_revoke(LeaseRevokeRequest { id }).await;
    }
}

/// `name/<lease in lowercase hex>`: the key etcd's `concurrency` package (and Rampart's Lock and
/// Election services after it) writes for a lease that locks `name` or campaigns in it.
pub fn session_key(name: &[u8], lease: i64) -> Vec<u8> {
    let mut key = name.to_vec();
    key.push(b'/');
    // Go's %x of a negative number is a minus sign and the magnitude; leases are positive.
    let hex = if lease < 0 {
        format!("-{:x}", lease.unsigned_abs())
    } else {
        format!("{lease:x}")
    };
    key.extend_from_slice(hex.as_bytes());
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_keys_name_the_lease_in_hex_as_etcd() {
        assert_eq!(
            session_key(b"bench/0001", 0x694d_7a1b_2c3d_4e5f),
            b"bench/0001/694d7a1b2c3d4e5f"
        );
        assert_eq!(session_key(b"e", 10), b"e/a");
        assert_eq!(session_key(b"e", -255), b"e/-ff");
    }
}
