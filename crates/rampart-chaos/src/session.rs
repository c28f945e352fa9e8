//! The lease a lock or election client holds its keys with, as etcd's `concurrency.Session`:
//! granted with a short TTL and kept alive in the background, a keep-alive every quarter to
//! third of the TTL, until the client revokes it or abandons it (stops keeping it alive and
//! walks away, as a client that died). Every grant, keep-alive and revoke is recorded as a
//! [`LeaseRecord`], so that a checker knows until when the lease was surely alive and by when
//! it must be gone.

use std::time::Duration;

use rampart_api::etcdserverpb as pb;
use rampart_api::etcdserverpb::lease_client::LeaseClient;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::cluster::channel;
use crate::history::{Clock, LeaseOp, LeaseOutcome, LeaseRecord};
use crate::leases::{
    failed_or_unknown, flatten, keep_alive_once, KeepAliveStream, KEEP_ALIVE_TIMEOUT, OP_TIMEOUT,
};
use crate::workload::describe;

/// A granted lease being kept alive.
pub(crate) struct Session {
    pub lease: i64,
    /// The TTL granted, in seconds.
    pub ttl: i64,
    /// Dropped or fired: the keep-alive task stops after the keep-alive it may be sending.
    stop: oneshot::Sender<()>,
    keeper: JoinHandle<Vec<LeaseRecord>>,
    urls: Vec<String>,
    endpoint: usize,
    client: u32,
    clock: Clock,
}

/// Grants `lease` with `ttl` on the member `endpoint` and starts keeping it alive; the
/// grant's record, and the session if it was granted.
pub(crate) async fn open(
    urls: &[String],
    endpoint: usize,
    client: u32,
    lease: i64,
    ttl: i64,
    clock: Clock,
    seed: u64,
) -> (Option<Session>, LeaseRecord) {
    let mut leases =
        LeaseClient::new(channel(&urls[endpoint], OP_TIMEOUT).expect("cluster URLs are valid"));
    let call = clock.now();
    let request = pb::LeaseGrantRequest { ttl, id: lease };
    let result = tokio::time::timeout(OP_TIMEOUT, leases.lease_grant(request)).await;
    let mut record = LeaseRecord {
        client,
        lease,
        op: LeaseOp::Grant { ttl },
        call,
        ret: 0,
        outcome: LeaseOutcome::Unknown,
        endpoint,
        error: None,
    };
    let granted = match flatten(result) {
        Ok(response) => response.into_inner().ttl,
        Err(status) => {
            record.ret = clock.now();
            record.outcome = failed_or_unknown(&status);
            record.error = Some(describe(&status));
            return (None, record);
        }
    };
    record.ret = clock.now();
    record.outcome = LeaseOutcome::Granted { ttl: granted };
    let (stop, stopped) = oneshot::channel();
    let keeper = tokio::spawn(keep_alive(
        urls.to_vec(),
        endpoint,
        client,
        lease,
        granted,
        clock,
        StdRng::seed_from_u64(seed),
        stopped,
    ));
    let session = Session {
        lease,
        ttl: granted,
        stop,
        keeper,
        urls: urls.to_vec(),
        endpoint,
        client,
        clock,
    };
    (Some(session), record)
}

impl Session {
    /// Stops keeping the lease alive (after the keep-alive in flight, if any, is answered or
    /// given up on) and returns its records: the lease expires a TTL after the last one.
    pub async fn abandon(self) -> Vec<LeaseRecord> {
        let _ = self.stop.send(());
        self.keeper
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    }

    /// Stops keeping the lease alive and revokes it, which deletes the client's keys.
    pub async fn revoke(self) -> Vec<LeaseRecord> {
        let (lease, client, clock, endpoint) = (self.lease, self.client, self.clock, self.endpoint);
        let url = self.urls[endpoint].clone();
        let mut records = self.abandon().await;
        let mut leases =
            LeaseClient::new(channel(&url, OP_TIMEOUT).expect("cluster URLs are valid"));
        let call = clock.now();
        let result = tokio::time::timeout(
            OP_TIMEOUT,
            leases.lease_revoke(pb::LeaseRevokeRequest { id: lease }),
        )
        .await;
        let (outcome, error) = match flatten(result) {
            Ok(_) => (LeaseOutcome::Revoked, None),
            Err(status) if status.code() == tonic::Code::NotFound => {
                (LeaseOutcome::LeaseNotFound, Some(describe(&status)))
            }
            Err(status) => (failed_or_unknown(&status), Some(describe(&status))),
        };
        records.push(LeaseRecord {
            client,
            lease,
            op: LeaseOp::Revoke,
            call,
            ret: clock.now(),
            outcome,
            endpoint,
            error,
        });
        records
    }
}

/// Keeps `lease` alive until `stopped` fires or the lease is found gone; every keep-alive's
/// record. A failed keep-alive is retried at once on another member.
#[allow(clippy::too_many_arguments)]
async fn keep_alive(
    urls: Vec<String>,
    mut endpoint: usize,
    client: u32,
    lease: i64,
    ttl: i64,
    clock: Clock,
    mut rng: StdRng,
    mut stopped: oneshot::Receiver<()>,
) -> Vec<LeaseRecord> {
    let mut records = Vec::new();
    let mut stream: Option<KeepAliveStream> = None;
    let mut pace = Duration::ZERO;
    loop {
        let next = Instant::now()
            + if pace.is_zero() {
                Duration::from_millis((ttl.max(1) as u64) * rng.gen_range(250..340))
            } else {
                pace
            };
        tokio::select! {
            _ = &mut stopped => return records,
            _ = tokio::time::sleep_until(next) => {}
        }
        let call = clock.now();
        let sent_to = endpoint;
        let result = tokio::time::timeout(
            KEEP_ALIVE_TIMEOUT,
            keep_alive_once(&urls[endpoint], lease, &mut stream),
        )
        .await
        .unwrap_or_else(|_| {
            Err(tonic::Status::deadline_exceeded(format!(
                "client gave up after {KEEP_ALIVE_TIMEOUT:?}"
            )))
        });
        let (outcome, error) = match result {
            Ok(0) => (LeaseOutcome::Expired, None),
            Ok(ttl) => (LeaseOutcome::Renewed { ttl }, None),
            Err(status) => {
                stream = None;
                if urls.len() > 1 {
                    endpoint = (endpoint + rng.gen_range(1..urls.len())) % urls.len();
                }
                (failed_or_unknown(&status), Some(describe(&status)))
            }
        };
        // After a failure the next attempt goes at once (to another member), so that one lost
        // keep-alive does not cost the lease.
        pace = if error.is_some() {
            Duration::from_millis(50)
        } else {
            Duration::ZERO
        };
        let expired = outcome == LeaseOutcome::Expired;
        records.push(LeaseRecord {
            client,
            lease,
            op: LeaseOp::KeepAlive,
            call,
            ret: clock.now(),
            outcome,
            endpoint: sent_to,
            error,
        });
        if expired {
            return records;
        }
    }
}
