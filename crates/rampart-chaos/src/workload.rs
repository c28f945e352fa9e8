//! The clients: concurrent closed loops of linearizable reads, writes, compare-and-swaps and
//! deletes on a few keys, over the etcd KV API, each operation recorded as a [`Record`].
//!
//! Every write puts a value no other write puts (a counter shared by all clients, written as a
//! decimal string), so a read names the write it saw. Keys live for one `key_period` each
//! (`chaos/<generation>/<slot>`): the checker's search grows with the operations one key has,
//! so a long run is many short histories rather than a few long ones.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rampart_api::etcdserverpb as pb;
use rampart_api::etcdserverpb::kv_client::KvClient;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::cluster::channel;
use crate::history::{Clock, Record};
use crate::linearizability::{Input, Operation, Output, Value};

/// How the clients behave.
#[derive(Clone, Debug)]
pub struct WorkloadOptions {
    pub clients: usize,
    /// Keys in use at any time; few, so that operations contend.
    pub keys: usize,
    /// How long one generation of keys is used before the clients move to fresh ones.
    pub key_period: Duration,
    /// A client gives up on an operation after this long; its outcome is then unknown.
    pub op_timeout: Duration,
    /// Seeds each client's choices (client `i` uses a stream derived from it).
    pub seed: u64,
}

/// The prefix of every key the clients use; the watchers watch it.
pub const PREFIX: &str = "chaos/";

/// The name of key `slot` of generation `generation`.
pub fn key_name(generation: u64, slot: usize) -> String {
    format!("{PREFIX}{generation:04}/{slot}")
}

/// Every key any record touched, in order.
pub fn keys_of(records: &[Record]) -> Vec<String> {
    let keys: BTreeSet<&str> = records.iter().map(|r| r.op.key.as_str()).collect();
    keys.into_iter().map(str::to_string).collect()
}

/// Runs `options.clients` clients against the members at `urls` until `deadline`; operations
/// in flight then complete or time out. Returns every client's records.
pub async fn run(
    urls: Vec<String>,
    options: WorkloadOptions,
    clock: Clock,
    deadline: Instant,
) -> Vec<Record> {
    let values = Arc::new(AtomicU64::new(1));
    let mut tasks = Vec::new();
    for id in 0..options.clients {
        let mut client = Client::new(id as u32, urls.clone(), &options, clock, values.clone());
        tasks.push(tokio::spawn(async move {
            client.run(deadline).await;
            client.records
        }));
    }
    let mut records = Vec::new();
    for task in tasks {
        match task.await {
            Ok(r) => records.extend(r),
            // A client that panicked lost its records: the history would be incomplete.
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
    records
}

/// Reads every key once more, linearizably, after the faults are healed: these reads pin the
/// final value of each key, so a lost acknowledged write shows as a linearizability violation.
/// A read that fails is retried on the next member until `deadline`; every attempt is
/// recorded (failed ones as unknown reads, which the checker ignores).
pub async fn final_reads(
    urls: &[String],
    keys: &[String],
    client_id: u32,
    options: &WorkloadOptions,
    clock: Clock,
    deadline: Instant,
) -> Vec<Record> {
    let mut client = Client::new(
        client_id,
        urls.to_vec(),
        options,
        clock,
        Arc::new(AtomicU64::new(0)),
    );
    for key in keys {
        loop {
            let record = client.invoke(key, Input::Read).await;
            let done = record.completed();
            client.records.push(record);
            if done || Instant::now() >= deadline {
                break;
            }
            client.switch_endpoint((client.endpoint + 1) % urls.len());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    client.records
}

/// One client: one connection to one member at a time.
struct Client {
    id: u32,
    rng: StdRng,
    urls: Vec<String>,
    endpoint: usize,
    kv: KvClient<Channel>,
    keys: usize,
    key_period: Duration,
    op_timeout: Duration,
    clock: Clock,
    /// The source of unique values, shared by all clients.
    values: Arc<AtomicU64>,
    /// The value this client last saw in (or wrote to) each key: what its CAS expects.
    known: HashMap<String, Value>,
    records: Vec<Record>,
}

impl Client {
    fn new(
        id: u32,
        urls: Vec<String>,
        options: &WorkloadOptions,
        clock: Clock,
        values: Arc<AtomicU64>,
    ) -> Client {
        let endpoint = id as usize % urls.len();
        let kv = connect(&urls[endpoint], options.op_timeout);
        Client {
            id,
            // A distinct, reproducible stream per client.
            rng: StdRng::seed_from_u64(
                options
                    .seed
                    .wrapping_add((id as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            ),
            urls,
            endpoint,
            kv,
            keys: options.keys,
            key_period: options.key_period,
            op_timeout: options.op_timeout,
            clock,
            values,
            known: HashMap::new(),
            records: Vec::new(),
        }
    }

    fn switch_endpoint(&mut self, endpoint: usize) {
        self.endpoint = endpoint;
        self.kv = connect(&self.urls[endpoint], self.op_timeout);
    }

    async fn run(&mut self, deadline: Instant) {
        while Instant::now() < deadline {
            let generation = self.clock.now() / self.key_period.as_nanos().max(1) as u64;
            let key = key_name(generation, self.rng.gen_range(0..self.keys));
            let input = self.choose(&key);
            let record = self.invoke(&key, input).await;
            let ok = record.completed();
            self.records.push(record);
            if !ok {
                // Maybe the member is down or cut off: half the time try another, and back off
                // a little so a dead member does not turn into a flood of failed operations.
                if self.urls.len() > 1 && self.rng.gen_bool(0.5) {
                    let other =
                        (self.endpoint + self.rng.gen_range(1..self.urls.len())) % self.urls.len();
                    self.switch_endpoint(other);
                }
                tokio::time::sleep(Duration::from_millis(self.rng.gen_range(50..150))).await;
            }
        }
    }

    /// Reads 35%, writes 25%, compare-and-swaps 30% (of a value this client knows is or was
    /// there; a read when it knows none), deletes 10%.
    fn choose(&mut self, key: &str) -> Input {
        let roll = self.rng.gen_range(0..100);
        if roll < 35 {
            return Input::Read;
        }
        if roll < 90 {
            let new = self.values.fetch_add(1, Ordering::Relaxed);
            if roll < 60 {
                return Input::Write(new);
            }
            return match self.known.get(key) {
                Some(&expected) => Input::Cas { expected, new },
                None => Input::Read,
            };
        }
        Input::Delete
    }

    /// Sends one operation and records what came of it.
    async fn invoke(&mut self, key: &str, input: Input) -> Record {
        let call = self.clock.now();
        let result = tokio::time::timeout(self.op_timeout, self.send(key, input)).await;
        let ret = self.clock.now();
        let mut record = Record {
            op: Operation {
                key: key.to_string(),
                client: self.id,
                call,
                ret: Some(ret),
                input,
                output: Output::Unknown,
            },
            endpoint: self.endpoint,
            member: None,
            revision: None,
            gave_up: None,
            error: None,
            failed: false,
        };
        let status = match result {
            Ok(Ok((output, header))) => {
                record.op.output = output;
                record.member = header.as_ref().map(|h| h.member_id);
                record.revision = header.as_ref().map(|h| h.revision);
                match (input, output) {
                    (Input::Read, Output::Read(Some(v))) => {
                        self.known.insert(key.to_string(), v);
                    }
                    (Input::Write(v), _) | (Input::Cas { new: v, .. }, Output::Cas(true)) => {
                        self.known.insert(key.to_string(), v);
                    }
                    _ => {}
                }
                return record;
            }
            Ok(Err(status)) => status,
            Err(_) => tonic::Status::deadline_exceeded(format!(
                "client gave up after {:?}",
                self.op_timeout
            )),
        };
        record.op.ret = None;
        record.gave_up = Some(ret);
        record.error = Some(describe(&status));
        record.failed = input != Input::Read && surely_not_executed(&status);
        record
    }

    async fn send(
        &mut self,
        key: &str,
        input: Input,
    ) -> Result<(Output, Option<pb::ResponseHeader>), tonic::Status> {
        let key = key.as_bytes().to_vec();
        match input {
            Input::Read => {
                let response = self
                    .kv
                    .range(pb::RangeRequest {
                        key,
                        ..Default::default()
                    })
                    .await?
                    .into_inner();
                let value = response.kvs.first().map(|kv| parse_value(&kv.value));
                Ok((Output::Read(value), response.header))
            }
            Input::Write(value) => {
                let response = self
                    .kv
                    .put(pb::PutRequest {
                        key,
                        value: value.to_string().into_bytes(),
                        ..Default::default()
                    })
                    .await?
                    .into_inner();
                Ok((Output::Written, response.header))
            }
            Input::Delete => {
                let response = self
                    .kv
                    .delete_range(pb::DeleteRangeRequest {
                        key,
                        ..Default::default()
                    })
                    .await?
                    .into_inner();
                Ok((Output::Deleted, response.header))
            }
            Input::Cas { expected, new } => {
                let put = pb::request_op::Request::RequestPut(pb::PutRequest {
                    key: key.clone(),
                    value: new.to_string().into_bytes(),
                    ..Default::default()
                });
                let response = self
                    .kv
                    .txn(pb::TxnRequest {
                        compare: vec![pb::Compare {
                            result: pb::compare::CompareResult::Equal as i32,
                            target: pb::compare::CompareTarget::Value as i32,
                            key,
                            target_union: Some(pb::compare::TargetUnion::Value(
                                expected.to_string().into_bytes(),
                            )),
                            ..Default::default()
                        }],
                        success: vec![pb::RequestOp { request: Some(put) }],
                        failure: vec![],
                    })
                    .await?
                    .into_inner();
                Ok((Output::Cas(response.succeeded), response.header))
            }
        }
    }
}

/// A learner's answer to any call but Status and serializable reads (etcd's
/// `ErrGRPCNotSupportedForLearner`), given before the call reaches its service.
const LEARNER_REFUSAL: &str = "etcdserver: rpc not supported for learner";

/// etcd's refusal of a write its queues have no room for (nothing was proposed).
const TOO_MANY_REQUESTS: &str = "etcdserver: too many requests";

fn connect(url: &str, timeout: Duration) -> KvClient<Channel> {
    // Only a malformed URL fails here, and the cluster made these URLs.
    KvClient::new(channel(url, timeout).expect("cluster URLs are valid"))
}

/// A stored value as the workload wrote it: a decimal `u64`. Anything else was never written by
/// any client, so it is mapped to a value no write has (`u64::MAX`) for the checker to flag.
fn parse_value(bytes: &[u8]) -> Value {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(u64::MAX)
}

/// Whether a failed request was surely not carried out: refused by the server's checks before
/// it reached Raft (InvalidArgument; a learner's refusal of every call but Status and
/// serializable reads, which comes before the call's service; "too many requests", which a
/// member answers only before it proposes), or never sent because no connection could be
/// made. Anything else (Unavailable, timeouts, a connection lost mid-call, "no leader") may
/// have been committed: its outcome is unknown.
pub(crate) fn surely_not_executed(status: &tonic::Status) -> bool {
    if status.code() == tonic::Code::InvalidArgument
        || status.message() == LEARNER_REFUSAL
        || status.message() == TOO_MANY_REQUESTS
    {
        return true;
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(error) = source {
        if let Some(io) = error.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return true;
            }
        }
        source = error.source();
    }
    false
}

/// A status with its chain of causes, on one line.
pub(crate) fn describe(status: &tonic::Status) -> String {
    let mut text = format!("{:?}: {}", status.code(), status.message());
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(error) = source {
        text.push_str(&format!(": {error}"));
        source = error.source();
    }
    text
}
