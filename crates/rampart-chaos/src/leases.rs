//! The lease clients: each grants short leases (2-5 s), puts one to three keys under
//! [`PREFIX`] with each, and then treats it as a client would: abandons it at once, keeps it
//! alive for a while and then stops (a client that died), or revokes it, right away or after
//! keeping it alive. Every request is recorded as a [`LeaseRecord`] with the time it was sent
//! and the time its answer came (or the client gave up), outcomes the client never learned
//! recorded as unknown.
//!
//! Keep-alives go over a LeaseKeepAlive stream, one request at a time, a few times per TTL at
//! an irregular pace (between a quarter and six tenths of the TTL apart), not always at
//! etcd's client's TTL/3: what etcd promises (the lease lives at least a TTL after the leader
//! took the last keep-alive) does not depend on the pace.
//!
//! After the run, [`await_expiry`] reads the prefix until every key is gone, giving the checker
//! ([`crate::lease_check`]) the time by which each key was deleted.

use std::time::Duration;

use rampart_api::etcdserverpb as pb;
use rampart_api::etcdserverpb::kv_client::KvClient;
use rampart_api::etcdserverpb::lease_client::LeaseClient;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic::Streaming;

use crate::cluster::{channel, stream_channel};
use crate::history::{Clock, LeaseOp, LeaseOutcome, LeasePoll, LeaseRecord};
use crate::workload::{describe, surely_not_executed};

/// The prefix of every key attached to a lease; the lease watcher watches it.
pub const PREFIX: &str = "lease/";

/// TTLs the clients ask for, in seconds. The server raises any below its minimum (1.5
/// election timeouts, rounded up: 2 s in chaos clusters).
const TTLS: std::ops::RangeInclusive<i64> = 2..=5;

/// How long a grant, put or revoke may take before its outcome counts as unknown.
pub(crate) const OP_TIMEOUT: Duration = Duration::from_secs(5);

/// How long one keep-alive may take: longer than the shortest TTL is pointless.
pub(crate) const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(2);

/// Leases one client has in flight at once.
const CONCURRENT_LEASES: usize = 3;

/// How often [`await_expiry`] reads the prefix.
const POLL_EVERY: Duration = Duration::from_millis(250);

/// How the lease clients behave.
#[derive(Clone, Debug)]
pub struct LeaseOptions {
    pub clients: usize,
    /// Seeds each client's choices.
    pub seed: u64,
}

/// Runs the lease clients against the members at `urls` until `deadline`, when every lease
/// still kept alive is abandoned. Returns their records.
pub async fn run(
    urls: Vec<String>,
    options: LeaseOptions,
    clock: Clock,
    deadline: Instant,
) -> Vec<LeaseRecord> {
    let mut clients = JoinSet::new();
    for id in 0..options.clients as u32 {
        let urls = urls.clone();
        let seed = options
            .seed
            .wrapping_add(u64::from(id + 1).wrapping_mul(0xa076_1d64_78bd_642f));
        clients.spawn(client(id, urls, seed, clock, deadline));
    }
    let mut records = Vec::new();
    while let Some(result) = clients.join_next().await {
        match result {
            Ok(r) => records.extend(r),
            // A client that panicked lost its records: the history would be incomplete.
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
    records.sort_by_key(|r| (r.lease, r.call));
    records
}

/// One lease client: starts a lease every few hundred milliseconds, up to
/// [`CONCURRENT_LEASES`] at once, until `deadline`.
async fn client(
    id: u32,
    urls: Vec<String>,
    seed: u64,
    clock: Clock,
    deadline: Instant,
) -> Vec<LeaseRecord> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut leases = JoinSet::new();
    let mut records = Vec::new();
    let mut count: i64 = 0;
    while Instant::now() < deadline {
        while leases.len() >= CONCURRENT_LEASES {
            if let Some(result) = leases.join_next().await {
                records
                    .extend(result.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic())));
            }
        }
        count += 1;
        let session = LeaseSession {
            client: id,
            // Chosen by the client, so that a grant whose outcome is unknown still names its
            // lease: (client + 1) in the high bits, a count in the low ones.
            lease: (i64::from(id) + 1) << 32 | count,
            endpoint: rng.gen_range(0..urls.len()),
            rng: StdRng::seed_from_u64(rng.gen()),
            urls: urls.clone(),
            clock,
            deadline,
            records: Vec::new(),
        };
        leases.spawn(session.run());
        let pause = Duration::from_millis(rng.gen_range(200..800));
        tokio::time::sleep_until((Instant::now() + pause).min(deadline)).await;
    }
    while let Some(result) = leases.join_next().await {
        records.extend(result.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic())));
    }
    records
}

/// What a client does with a lease once its keys are attached.
#[derive(Clone, Copy, Debug)]
enum Plan {
    /// Never keeps it alive: a client that died right away.
    Abandon,
    Revoke,
    /// Keeps it alive this many times, then stops: a client that died later.
    KeepAliveThenAbandon(u32),
    KeepAliveThenRevoke(u32),
}

/// One lease, from its grant to its revoke or abandonment.
struct LeaseSession {
    client: u32,
    lease: i64,
    endpoint: usize,
    rng: StdRng,
    urls: Vec<String>,
    clock: Clock,
    /// Past it the lease is abandoned.
    deadline: Instant,
    records: Vec<LeaseRecord>,
}

/// A keep-alive stream: requests go in, answers come out in order.
pub(crate) struct KeepAliveStream {
    requests: mpsc::Sender<pb::LeaseKeepAliveRequest>,
    responses: Streaming<pb::LeaseKeepAliveResponse>,
}

impl LeaseSession {
    async fn run(mut self) -> Vec<LeaseRecord> {
        let ttl = self.rng.gen_range(TTLS);
        let Some(ttl) = self.grant(ttl).await else {
            return self.records;
        };
        let keys = self.rng.gen_range(1..=3);
        for slot in 0..keys {
            let key = format!("{PREFIX}{:x}/{slot}", self.lease);
            let value = format!("{:x}/{slot}", self.lease);
            if self.put(key, value).await == LeaseOutcome::LeaseNotFound {
                return self.records;
            }
        }
        let plan = match self.rng.gen_range(0..100) {
            0..20 => Plan::Abandon,
            20..35 => Plan::Revoke,
            35..75 => Plan::KeepAliveThenAbandon(self.rng.gen_range(1..=8)),
            _ => Plan::KeepAliveThenRevoke(self.rng.gen_range(1..=4)),
        };
        let (rounds, revoke) = match plan {
            Plan::Abandon => (0, false),
            Plan::Revoke => (0, true),
            Plan::KeepAliveThenAbandon(n) => (n, false),
            Plan::KeepAliveThenRevoke(n) => (n, true),
        };
        if self.keep_alive(ttl, rounds).await && revoke && Instant::now() < self.deadline {
            self.revoke().await;
        }
        self.records
    }

    fn record(&mut self, op: LeaseOp, call: u64, outcome: LeaseOutcome, error: Option<String>) {
        self.records.push(LeaseRecord {
            client: self.client,
            lease: self.lease,
            op,
            call,
            ret: self.clock.now(),
            outcome,
            endpoint: self.endpoint,
            error,
        });
    }

    /// After a failure, half the time tries another member next.
    fn maybe_move(&mut self) {
        if self.urls.len() > 1 && self.rng.gen_bool(0.5) {
            self.endpoint =
                (self.endpoint + self.rng.gen_range(1..self.urls.len())) % self.urls.len();
        }
    }

    fn channel(&self) -> Channel {
        // Only a malformed URL fails here, and the cluster made these URLs.
        channel(&self.urls[self.endpoint], OP_TIMEOUT).expect("cluster URLs are valid")
    }

    /// Grants the lease; its TTL if granted.
    async fn grant(&mut self, ttl: i64) -> Option<i64> {
        let mut lease = LeaseClient::new(self.channel());
        let call = self.clock.now();
        let request = pb::LeaseGrantRequest {
            ttl,
            id: self.lease,
        };
        let result = tokio::time::timeout(OP_TIMEOUT, lease.lease_grant(request)).await;
        let op = LeaseOp::Grant { ttl };
        match flatten(result) {
            Ok(response) => {
                let granted = response.into_inner().ttl;
                self.record(op, call, LeaseOutcome::Granted { ttl: granted }, None);
                Some(granted)
            }
            Err(status) => {
                let outcome = failed_or_unknown(&status);
                self.record(op, call, outcome, Some(describe(&status)));
                self.maybe_move();
                None
            }
        }
    }

    /// Puts `key` with the lease attached.
    async fn put(&mut self, key: String, value: String) -> LeaseOutcome {
        let mut kv = KvClient::new(self.channel());
        let call = self.clock.now();
        let request = pb::PutRequest {
            key: key.clone().into_bytes(),
            value: value.clone().into_bytes(),
            lease: self.lease,
            ..Default::default()
        };
        let result = tokio::time::timeout(OP_TIMEOUT, kv.put(request)).await;
        let (outcome, error) = match flatten(result) {
            Ok(response) => {
                let revision = response.into_inner().header.map_or(0, |h| h.revision);
                (LeaseOutcome::Put { revision }, None)
            }
            Err(status) if status.code() == tonic::Code::NotFound => {
                (LeaseOutcome::LeaseNotFound, Some(describe(&status)))
            }
            Err(status) => (failed_or_unknown(&status), Some(describe(&status))),
        };
        self.record(LeaseOp::Put { key, value }, call, outcome.clone(), error);
        if !matches!(outcome, LeaseOutcome::Put { .. }) {
            self.maybe_move();
        }
        outcome
    }

    async fn revoke(&mut self) {
        let mut lease = LeaseClient::new(self.channel());
        let call = self.clock.now();
        let request = pb::LeaseRevokeRequest { id: self.lease };
        let result = tokio::time::timeout(OP_TIMEOUT, lease.lease_revoke(request)).await;
        let (outcome, error) = match flatten(result) {
            Ok(_) => (LeaseOutcome::Revoked, None),
            Err(status) if status.code() == tonic::Code::NotFound => {
                (LeaseOutcome::LeaseNotFound, Some(describe(&status)))
            }
            Err(status) => (failed_or_unknown(&status), Some(describe(&status))),
        };
        self.record(LeaseOp::Revoke, call, outcome, error);
    }

    /// Keeps the lease alive `rounds` times, each a random fraction of the TTL after the last
    /// attempt, stopping at the deadline. False if the lease is gone (a keep-alive answered
    /// TTL 0).
    async fn keep_alive(&mut self, ttl: i64, rounds: u32) -> bool {
        let mut stream: Option<KeepAliveStream> = None;
        for _ in 0..rounds {
            let pace = Duration::from_millis((ttl.max(1) as u64) * self.rng.gen_range(250..600));
            tokio::time::sleep_until((Instant::now() + pace).min(self.deadline)).await;
            if Instant::now() >= self.deadline {
                return true;
            }
            let call = self.clock.now();
            let result =
                tokio::time::timeout(KEEP_ALIVE_TIMEOUT, self.keep_alive_once(&mut stream))
                    .await
                    .unwrap_or_else(|_| {
                        Err(tonic::Status::deadline_exceeded(format!(
                            "client gave up after {KEEP_ALIVE_TIMEOUT:?}"
                        )))
                    });
            match result {
                Ok(0) => {
                    self.record(LeaseOp::KeepAlive, call, LeaseOutcome::Expired, None);
                    return false;
                }
                Ok(ttl) => self.record(
                    LeaseOp::KeepAlive,
                    call,
                    LeaseOutcome::Renewed { ttl },
                    None,
                ),
                Err(status) => {
                    // A stream that failed or fell silent may still answer this request
                    // later: it is dropped, so that answers are never taken for another's.
                    stream = None;
                    let outcome = failed_or_unknown(&status);
                    self.record(LeaseOp::KeepAlive, call, outcome, Some(describe(&status)));
                    self.maybe_move();
                }
            }
        }
        true
    }

    async fn keep_alive_once(
        &self,
        stream: &mut Option<KeepAliveStream>,
    ) -> Result<i64, tonic::Status> {
        keep_alive_once(&self.urls[self.endpoint], self.lease, stream).await
    }
}

/// Sends one keep-alive of `lease` to the member at `url`, opening a stream first if there is
/// none; the TTL answered. On an error the caller drops the stream: a stream that failed or
/// fell silent may still answer later, and answers must never be taken for another request's.
pub(crate) async fn keep_alive_once(
    url: &str,
    lease: i64,
    stream: &mut Option<KeepAliveStream>,
) -> Result<i64, tonic::Status> {
    if stream.is_none() {
        // Only a malformed URL fails here, and the cluster made these URLs.
        let channel = stream_channel(url, OP_TIMEOUT).expect("cluster URLs are valid");
        let (requests, outgoing) = mpsc::channel(4);
        let responses = LeaseClient::new(channel)
            .lease_keep_alive(ReceiverStream::new(outgoing))
            .await?
            .into_inner();
        *stream = Some(KeepAliveStream {
            requests,
            responses,
        });
    }
    let open = stream.as_mut().expect("opened above");
    open.requests
        .send(pb::LeaseKeepAliveRequest { id: lease })
        .await
        .map_err(|_| tonic::Status::unavailable("the keep-alive stream is closed"))?;
    match open.responses.next().await {
        Some(Ok(response)) => Ok(response.ttl),
        Some(Err(status)) => Err(status),
        None => Err(tonic::Status::unavailable(
            "the server ended the keep-alive stream",
        )),
    }
}

/// A call's result with a client-side timeout folded into the status.
pub(crate) fn flatten<T>(
    result: Result<Result<tonic::Response<T>, tonic::Status>, tokio::time::error::Elapsed>,
) -> Result<tonic::Response<T>, tonic::Status> {
    result.unwrap_or_else(|_| {
        Err(tonic::Status::deadline_exceeded(format!(
            "client gave up after {OP_TIMEOUT:?}"
        )))
    })
}

pub(crate) fn failed_or_unknown(status: &tonic::Status) -> LeaseOutcome {
    if surely_not_executed(status) {
        LeaseOutcome::Failed
    } else {
        LeaseOutcome::Unknown
    }
}

/// Reads the lease prefix linearizably, every [`POLL_EVERY`], until no key is left or
/// `until`; each read that was answered is returned. A read that fails is tried on the next
/// member.
pub async fn await_expiry(urls: &[String], clock: Clock, until: Instant) -> Vec<LeasePoll> {
    let mut polls = Vec::new();
    let mut endpoint = 0;
    loop {
        let mut kv =
            KvClient::new(channel(&urls[endpoint], OP_TIMEOUT).expect("cluster URLs are valid"));
        let call = clock.now();
        let request = pb::RangeRequest {
            key: PREFIX.as_bytes().to_vec(),
            range_end: rampart_api::prefix_range_end(PREFIX.as_bytes()),
            keys_only: true,
            ..Default::default()
        };
        match tokio::time::timeout(OP_TIMEOUT, kv.range(request)).await {
            Ok(Ok(response)) => {
                let keys: Vec<String> = response
                    .into_inner()
                    .kvs
                    .iter()
                    .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
                    .collect();
                let empty = keys.is_empty();
                polls.push(LeasePoll {
                    call,
                    ret: clock.now(),
                    keys,
                });
                if empty {
                    return polls;
                }
            }
            _ => endpoint = (endpoint + 1) % urls.len(),
        }
        if Instant::now() >= until {
            return polls;
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}
