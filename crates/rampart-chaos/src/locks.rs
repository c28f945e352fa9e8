//! The lock clients: each, in a loop, opens a session (a lease of 3-5 s kept alive, see
//! [`crate::session`]), calls Lock on one of [`NAMES`], reads the key it was answered for its
//! create revision (the fencing token), and then does a few guarded writes to the name's
//! register ([`register_key`]): a txn that puts `<client>/<token>/<seq>` only if the lock key
//! still has that create revision, so that a holder whose key is gone cannot write. Then it
//! releases the lock (Unlock and a revoke), abandons it (stops keeping its lease alive and walks
//! away: the lock must pass on once the lease expires), or goes on writing after abandoning it
//! (a holder that does not know it lost the lock, whose writes the guard must refuse).
//!
//! Every request is recorded as a [`LockRecord`] and every lease operation as a
//! [`LeaseRecord`]; the checker ([`crate::lock_check`]) judges only what the guards and the
//! tokens guarantee, never what a client believed.
//!
//! A run has [`DEFAULT_CLIENTS`] of them on the two names, so that an abandoned lock usually
//! has a waiter, which the hand-over check needs: at an abandonment each other client is on
//! the same name half the time, and is then most likely queued behind the holder (a holder
//! keeps a lock for about a second, an abandoned lease holds it up for its TTL and more). With
//! two clients the other one is on the other name half the time; with many more, waiting
//! behind a few abandoned leases in a row more often outlasts [`LOCK_PATIENCE`], and a Lock
//! given up on keeps its window from being judged.

use std::time::Duration;

use rampart_api::etcdserverpb as pb;
use rampart_api::etcdserverpb::kv_client::KvClient;
use rampart_api::v3lockpb::lock_client::LockClient;
use rampart_api::v3lockpb::{LockRequest, UnlockRequest};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::cluster::{channel, stream_channel};
use crate::history::{Clock, LeaseRecord, LockOp, LockOutcome, LockRecord};
use crate::leases::{flatten, OP_TIMEOUT};
use crate::session::{self, Session};
use crate::workload::{describe, surely_not_executed};

/// The locks the clients contend for: few, so that they wait for each other.
pub const NAMES: &[&str] = &["locks/a", "locks/b"];

/// Lock clients in a run unless told otherwise (`--lock-clients`): two per name on average.
pub const DEFAULT_CLIENTS: usize = 4;

/// TTLs of the sessions' leases, in seconds.
pub const TTLS: std::ops::RangeInclusive<i64> = 3..=5;

/// How long a client waits for a lock before it gives up (and revokes its lease): longer than
/// a lease's TTL plus its expiry, so that a waiter outlives an abandoned holder.
pub const LOCK_PATIENCE: Duration = Duration::from_secs(25);

/// The register the holders of lock `name` write to.
pub fn register_key(name: &str) -> String {
    format!("registers/{name}")
}

/// How the lock clients behave.
#[derive(Clone, Debug)]
pub struct LockOptions {
    pub clients: usize,
    /// Seeds each client's choices.
    pub seed: u64,
}

/// What the lock clients recorded.
#[derive(Debug, Default)]
pub struct LockRecords {
    pub records: Vec<LockRecord>,
    pub leases: Vec<LeaseRecord>,
}

/// Runs the lock clients against the members at `urls` until `deadline`.
pub async fn run(
    urls: Vec<String>,
    options: LockOptions,
    clock: Clock,
    deadline: Instant,
) -> LockRecords {
    let mut clients = JoinSet::new();
    for id in 0..options.clients as u32 {
        let seed = options
            .seed
            .wrapping_add(u64::from(id + 1).wrapping_mul(0x8ebc_6af0_9c88_c6e3));
        let client = LockClientState {
            id,
            urls: urls.clone(),
            endpoint: id as usize % urls.len(),
            rng: StdRng::seed_from_u64(seed),
            clock,
            deadline,
            out: LockRecords::default(),
        };
        clients.spawn(client.run());
    }
    let mut out = LockRecords::default();
    while let Some(result) = clients.join_next().await {
        let records = result.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        out.records.extend(records.records);
        out.leases.extend(records.leases);
    }
    out.records.sort_by_key(|r| (r.call, r.client));
    out.leases.sort_by_key(|r| (r.lease, r.call));
    out
}

/// What a holder does once its writes are done.
#[derive(Clone, Copy, Debug)]
enum Plan {
    /// Unlock, then revoke the lease.
    Release,
    /// Stop keeping the lease alive and walk away.
    Abandon,
    /// Stop keeping the lease alive, and go on writing past the lease's expiry.
    WriteAfterAbandoning,
}

struct LockClientState {
    id: u32,
    urls: Vec<String>,
    endpoint: usize,
    rng: StdRng,
    clock: Clock,
    deadline: Instant,
    out: LockRecords,
}

impl LockClientState {
    async fn run(mut self) -> LockRecords {
        let mut count: i64 = 0;
        while Instant::now() < self.deadline {
            count += 1;
            // Chosen by the client, as the lease clients' (see `leases.rs`), in a range of
            // its own.
            let lease = (0x100 + i64::from(self.id) + 1) << 32 | count;
            let name = NAMES[self.rng.gen_range(0..NAMES.len())];
            self.acquisition(name, lease).await;
            let pause = Duration::from_millis(self.rng.gen_range(50..400));
            tokio::time::sleep_until((Instant::now() + pause).min(self.deadline)).await;
        }
        self.out
    }

    fn record(
        &mut self,
        name: &str,
        lease: i64,
        op: LockOp,
        call: u64,
        outcome: LockOutcome,
        error: Option<String>,
    ) {
        self.out.records.push(LockRecord {
            client: self.id,
            name: name.to_string(),
            lease,
            op,
            call,
            ret: self.clock.now(),
            outcome,
            endpoint: self.endpoint,
            error,
        });
    }

    fn move_on(&mut self) {
        if self.urls.len() > 1 && self.rng.gen_bool(0.5) {
            self.endpoint =
                (self.endpoint + self.rng.gen_range(1..self.urls.len())) % self.urls.len();
        }
    }

    fn kv(&self) -> KvClient<tonic::transport::Channel> {
        KvClient::new(
            channel(&self.urls[self.endpoint], OP_TIMEOUT).expect("cluster URLs are valid"),
        )
    }

    /// One session: lock, writes, and the end the plan chooses.
    async fn acquisition(&mut self, name: &str, lease: i64) {
        let ttl = self.rng.gen_range(TTLS);
        let (session, grant) = session::open(
            &self.urls,
            self.endpoint,
            self.id,
            lease,
            ttl,
            self.clock,
            self.rng.gen(),
        )
        .await;
        self.out.leases.push(grant);
        let Some(session) = session else {
            self.move_on();
            return;
        };
        let Some((key, token)) = self.lock(name, lease).await else {
            // Not acquired (or not known to be): the revoke withdraws the key if it is there.
            self.out.leases.extend(session.revoke().await);
            return;
        };
        let writes = self.rng.gen_range(1..=4);
        let mut holding = true;
        for seq in 0..writes {
            let hold = Duration::from_millis(self.rng.gen_range(20..300));
            tokio::time::sleep(hold).await;
            if !self.guarded_write(name, lease, token, seq).await {
                holding = false;
                break;
            }
        }
        let plan = match self.rng.gen_range(0..100) {
            0..60 => Plan::Release,
            60..85 => Plan::Abandon,
            _ => Plan::WriteAfterAbandoning,
        };
        match plan {
            Plan::Release => {
                if holding {
                    self.unlock(name, lease, &key).await;
                }
                self.out.leases.extend(session.revoke().await);
            }
            Plan::Abandon | Plan::WriteAfterAbandoning => {
                let ttl = session.ttl;
                self.abandon(name, lease, session).await;
                if matches!(plan, Plan::WriteAfterAbandoning) && holding {
                    // Past the lease's expiry, where the guard must refuse every write.
                    let until = Instant::now() + Duration::from_secs(ttl as u64 + 2);
                    let mut seq = writes;
                    while Instant::now() < until.min(self.deadline) {
                        tokio::time::sleep(Duration::from_millis(self.rng.gen_range(300..900)))
                            .await;
                        if !self.guarded_write(name, lease, token, seq).await {
                            break;
                        }
                        seq += 1;
                    }
                }
            }
        }
    }

    /// Locks `name` for `lease` and reads the key's create revision; the key and the token if
    /// the lock was acquired and the key was still there.
    async fn lock(&mut self, name: &str, lease: i64) -> Option<(Vec<u8>, i64)> {
        // No per-call deadline on the channel: a Lock waits as long as the holders hold.
        let channel =
            stream_channel(&self.urls[self.endpoint], OP_TIMEOUT).expect("cluster URLs are valid");
        let mut locks = LockClient::new(channel);
        let call = self.clock.now();
        let request = LockRequest {
            name: name.as_bytes().to_vec(),
            lease,
        };
        let patience = LOCK_PATIENCE.min(self.deadline.saturating_duration_since(Instant::now()));
        let answered = match tokio::time::timeout(patience, locks.lock(request)).await {
            Ok(Ok(response)) => response.into_inner().key,
            Ok(Err(status)) => {
                let outcome = if surely_not_executed(&status) {
                    LockOutcome::Failed
                } else {
                    LockOutcome::Unknown
                };
                self.record(
                    name,
                    lease,
                    LockOp::Lock,
                    call,
                    outcome,
                    Some(describe(&status)),
                );
                self.move_on();
                return None;
            }
            Err(_) => {
                let error = format!("client gave up waiting after {patience:?}");
                self.record(
                    name,
                    lease,
                    LockOp::Lock,
                    call,
                    LockOutcome::Unknown,
                    Some(error),
                );
                return None;
            }
        };
        let key = String::from_utf8_lossy(&answered).into_owned();
        let read = pb::RangeRequest {
            key: answered.clone(),
            ..Default::default()
        };
        let mut kv = self.kv();
        match flatten(tokio::time::timeout(OP_TIMEOUT, kv.range(read)).await) {
            Ok(response) => {
                let token = response
                    .into_inner()
                    .kvs
                    .first()
                    .map(|kv| kv.create_revision);
                self.record(
                    name,
                    lease,
                    LockOp::Lock,
                    call,
                    LockOutcome::Acquired { key, token },
                    None,
                );
                token.map(|token| (answered, token))
            }
            Err(status) => {
                // Acquired, but its token unknown: the client lets it go.
                let error = format!("reading the lock key: {}", describe(&status));
                self.record(
                    name,
                    lease,
                    LockOp::Lock,
                    call,
                    LockOutcome::Acquired { key, token: None },
                    Some(error),
                );
                self.move_on();
                None
            }
        }
    }

    /// One guarded write; false once the guard failed (the lock is lost) or the outcome is
    /// not known.
    async fn guarded_write(&mut self, name: &str, lease: i64, token: i64, seq: u32) -> bool {
        let lock_key = format!("{name}/{lease:x}");
        let value = format!("{}/{token}/{seq}", self.id);
        let txn = pb::TxnRequest {
            compare: vec![pb::Compare {
                result: pb::compare::CompareResult::Equal as i32,
                target: pb::compare::CompareTarget::Create as i32,
                key: lock_key.into_bytes(),
                target_union: Some(pb::compare::TargetUnion::CreateRevision(token)),
                ..Default::default()
            }],
            success: vec![pb::RequestOp {
                request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                    key: register_key(name).into_bytes(),
                    value: value.clone().into_bytes(),
                    ..Default::default()
                })),
            }],
            failure: vec![],
        };
        let mut kv = self.kv();
        let call = self.clock.now();
        let op = LockOp::GuardedWrite { token, seq, value };
        match flatten(tokio::time::timeout(OP_TIMEOUT, kv.txn(txn)).await) {
            Ok(response) => {
                let response = response.into_inner();
                let revision = response.header.map_or(0, |h| h.revision);
                if response.succeeded {
                    self.record(
                        name,
                        lease,
                        op,
                        call,
                        LockOutcome::Written { revision },
                        None,
                    );
                    true
                } else {
                    self.record(
                        name,
                        lease,
                        op,
                        call,
                        LockOutcome::CompareFailed { revision },
                        None,
                    );
                    false
                }
            }
            Err(status) => {
                let outcome = if surely_not_executed(&status) {
                    LockOutcome::Failed
                } else {
                    LockOutcome::Unknown
                };
                self.record(name, lease, op, call, outcome, Some(describe(&status)));
                self.move_on();
                false
            }
        }
    }

    async fn unlock(&mut self, name: &str, lease: i64, key: &[u8]) {
        let mut locks = LockClient::new(
            channel(&self.urls[self.endpoint], OP_TIMEOUT).expect("cluster URLs are valid"),
        );
        let call = self.clock.now();
        let op = LockOp::Unlock {
            key: String::from_utf8_lossy(key).into_owned(),
        };
        let request = UnlockRequest { key: key.to_vec() };
        match flatten(tokio::time::timeout(OP_TIMEOUT, locks.unlock(request)).await) {
            Ok(_) => self.record(name, lease, op, call, LockOutcome::Done, None),
            Err(status) => {
                let outcome = if surely_not_executed(&status) {
                    LockOutcome::Failed
                } else {
                    LockOutcome::Unknown
                };
                self.record(name, lease, op, call, outcome, Some(describe(&status)));
                self.move_on();
            }
        }
    }

    /// Stops keeping the lease alive, records that, and walks away.
    async fn abandon(&mut self, name: &str, lease: i64, session: Session) {
        let call = self.clock.now();
        self.out.leases.extend(session.abandon().await);
        self.record(name, lease, LockOp::Abandon, call, LockOutcome::Done, None);
    }
}
