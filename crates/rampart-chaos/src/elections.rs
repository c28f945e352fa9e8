//! The election clients and observers. Each client, in a loop, opens a session (a lease of
//! 3-5 s kept alive, see [`crate::session`]), campaigns in one of [`NAMES`] with the value
//! `<client>/<lease hex>/0`, proclaims a few more values (`<client>/<lease hex>/<seq>`, seq
//! from 1) while leading, then resigns (and revokes) or abandons its lease. A lease serves one
//! term only, so every value is unique in the run: the checker tells from an observed value
//! which request sent it. One observer per election follows it through an Observe
//! stream, reopened on another member when it breaks or every few seconds by plan, recording
//! every leader value it is sent ([`ObservedLeader`]).

use std::time::Duration;

use rampart_api::v3electionpb::election_client::ElectionClient;
use rampart_api::v3electionpb::{
    CampaignRequest, LeaderKey, LeaderRequest, ProclaimRequest, ResignRequest,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_stream::StreamExt;

use crate::cluster::{channel, stream_channel};
use crate::history::{
    Clock, ElectionHistory, ElectionOp, ElectionOutcome, ElectionRecord, ObservedLeader,
};
use crate::leases::{flatten, OP_TIMEOUT};
use crate::locks::{LOCK_PATIENCE, TTLS};
use crate::session;
use crate::workload::{describe, surely_not_executed};

/// The elections the clients campaign in.
pub const NAMES: &[&str] = &["elections/a", "elections/b"];

/// How long an observer keeps one Observe stream before it moves to another member.
const OBSERVE_PERIOD: std::ops::Range<u64> = 2_000..6_000;

/// How the election clients behave.
#[derive(Clone, Debug)]
pub struct ElectionOptions {
    pub clients: usize,
    pub seed: u64,
}

/// Runs the election clients, and one observer per election, until `deadline`.
pub async fn run(
    urls: Vec<String>,
    options: ElectionOptions,
    clock: Clock,
    deadline: Instant,
) -> ElectionHistory {
    let mut clients = JoinSet::new();
    for id in 0..options.clients as u32 {
        let seed = options
            .seed
            .wrapping_add(u64::from(id + 1).wrapping_mul(0x5891_b5b5_22d5_df09));
        let client = Campaigner {
            id,
            endpoint: id as usize % urls.len(),
            urls: urls.clone(),
            rng: StdRng::seed_from_u64(seed),
            clock,
            deadline,
            out: ElectionHistory::default(),
        };
        clients.spawn(client.run());
    }
    let observers: Vec<_> = NAMES
        .iter()
        .enumerate()
        .map(|(id, name)| {
            let seed = options.seed.wrapping_add(id as u64 * 7919);
            tokio::spawn(observe(
                urls.clone(),
                id as u32,
                name,
                seed,
                clock,
                deadline,
            ))
        })
        .collect();
    let mut out = ElectionHistory::default();
    while let Some(result) = clients.join_next().await {
        let history = result.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        out.records.extend(history.records);
        out.leases.extend(history.leases);
    }
    for observer in observers {
        out.observed.extend(
            observer
                .await
                .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic())),
        );
    }
    out.records.sort_by_key(|r| (r.call, r.client));
    out.leases.sort_by_key(|r| (r.lease, r.call));
    out
}

struct Campaigner {
    id: u32,
    urls: Vec<String>,
    endpoint: usize,
    rng: StdRng,
    clock: Clock,
    deadline: Instant,
    /// Its records and leases (no observations).
    out: ElectionHistory,
}

impl Campaigner {
    async fn run(mut self) -> ElectionHistory {
        let mut count: i64 = 0;
        while Instant::now() < self.deadline {
            count += 1;
            let lease = (0x200 + i64::from(self.id) + 1) << 32 | count;
            let name = NAMES[self.rng.gen_range(0..NAMES.len())];
            self.term(name, lease).await;
            let pause = Duration::from_millis(self.rng.gen_range(50..400));
            tokio::time::sleep_until((Instant::now() + pause).min(self.deadline)).await;
        }
        self.out
    }

    fn record(
        &mut self,
        name: &str,
        lease: i64,
        op: ElectionOp,
        call: u64,
        outcome: ElectionOutcome,
        error: Option<String>,
    ) {
        self.out.records.push(ElectionRecord {
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

    fn failed(&mut self, status: &tonic::Status) -> (ElectionOutcome, Option<String>) {
        let outcome = if surely_not_executed(status) {
            ElectionOutcome::Failed
        } else {
            ElectionOutcome::Unknown
        };
        if self.urls.len() > 1 && self.rng.gen_bool(0.5) {
            self.endpoint =
                (self.endpoint + self.rng.gen_range(1..self.urls.len())) % self.urls.len();
        }
        (outcome, Some(describe(status)))
    }

    fn client(&self) -> ElectionClient<tonic::transport::Channel> {
        ElectionClient::new(
            channel(&self.urls[self.endpoint], OP_TIMEOUT).expect("cluster URLs are valid"),
        )
    }

    /// One session: campaign, proclaims while leading, then resign or abandon.
    async fn term(&mut self, name: &str, lease: i64) {
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
            return;
        };
        let Some(leader) = self.campaign(name, lease).await else {
            self.out.leases.extend(session.revoke().await);
            return;
        };
        for seq in 1..=self.rng.gen_range(1..=3u32) {
            tokio::time::sleep(Duration::from_millis(self.rng.gen_range(50..400))).await;
            let value = format!("{}/{lease:x}/{seq}", self.id);
            let call = self.clock.now();
            let request = ProclaimRequest {
                leader: Some(leader.clone()),
                value: value.clone().into_bytes(),
            };
            let result = tokio::time::timeout(OP_TIMEOUT, self.client().proclaim(request)).await;
            let op = ElectionOp::Proclaim { value };
            let (outcome, error) = match flatten(result) {
                Ok(response) => {
                    let revision = response.into_inner().header.map_or(0, |h| h.revision);
                    (ElectionOutcome::Proclaimed { revision }, None)
                }
                Err(status) if status.message().contains("not leader") => {
                    (ElectionOutcome::NotLeader, Some(describe(&status)))
                }
                Err(status) => self.failed(&status),
            };
            let go_on = matches!(outcome, ElectionOutcome::Proclaimed { .. });
            self.record(name, lease, op, call, outcome, error);
            if !go_on {
                break;
            }
        }
        if self.rng.gen_bool(0.7) {
            let call = self.clock.now();
            let request = ResignRequest {
                leader: Some(leader),
            };
            let result = tokio::time::timeout(OP_TIMEOUT, self.client().resign(request)).await;
            let (outcome, error) = match flatten(result) {
                Ok(response) => {
                    let revision = response.into_inner().header.map_or(0, |h| h.revision);
                    (ElectionOutcome::Resigned { revision }, None)
                }
                Err(status) => self.failed(&status),
            };
            self.record(name, lease, ElectionOp::Resign, call, outcome, error);
            self.out.leases.extend(session.revoke().await);
        } else {
            let call = self.clock.now();
            self.out.leases.extend(session.abandon().await);
            self.record(
                name,
                lease,
                ElectionOp::Abandon,
                call,
                ElectionOutcome::Done,
                None,
            );
        }
    }

    /// Campaigns in `name` for `lease`; the leader key if it won.
    async fn campaign(&mut self, name: &str, lease: i64) -> Option<LeaderKey> {
        let channel =
            stream_channel(&self.urls[self.endpoint], OP_TIMEOUT).expect("cluster URLs are valid");
        let value = format!("{}/{lease:x}/0", self.id);
        let request = CampaignRequest {
            name: name.as_bytes().to_vec(),
            lease,
            value: value.clone().into_bytes(),
        };
        let patience = LOCK_PATIENCE.min(self.deadline.saturating_duration_since(Instant::now()));
        let call = self.clock.now();
        let op = ElectionOp::Campaign { value };
        let result =
            tokio::time::timeout(patience, ElectionClient::new(channel).campaign(request)).await;
        match result {
            Ok(Ok(response)) => {
                let leader = response.into_inner().leader.unwrap_or_default();
                let outcome = ElectionOutcome::Won {
                    key: String::from_utf8_lossy(&leader.key).into_owned(),
                    rev: leader.rev,
                };
                self.record(name, lease, op, call, outcome, None);
                Some(leader)
            }
            Ok(Err(status)) => {
                let (outcome, error) = self.failed(&status);
                self.record(name, lease, op, call, outcome, error);
                None
            }
            Err(_) => {
                let error = format!("client gave up campaigning after {patience:?}");
                self.record(name, lease, op, call, ElectionOutcome::Unknown, Some(error));
                None
            }
        }
    }
}

/// Follows election `name` through Observe streams until `deadline`, moving to another member
/// when a stream breaks and every few seconds; every response received.
async fn observe(
    urls: Vec<String>,
    observer: u32,
    name: &str,
    seed: u64,
    clock: Clock,
    deadline: Instant,
) -> Vec<ObservedLeader> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut endpoint = observer as usize % urls.len();
    let mut observed = Vec::new();
    let mut session = 0;
    while Instant::now() < deadline {
        let until =
            (Instant::now() + Duration::from_millis(rng.gen_range(OBSERVE_PERIOD))).min(deadline);
        let channel = stream_channel(&urls[endpoint], OP_TIMEOUT).expect("cluster URLs are valid");
        let request = LeaderRequest {
            name: name.as_bytes().to_vec(),
        };
        let opened =
            tokio::time::timeout_at(until, ElectionClient::new(channel).observe(request)).await;
        if let Ok(Ok(stream)) = opened {
            let mut stream = stream.into_inner();
            let mut last: Option<(Vec<u8>, i64)> = None;
            while let Ok(Some(Ok(response))) = tokio::time::timeout_at(until, stream.next()).await {
                let Some(kv) = response.kv else { continue };
                let header = response.header.map_or(0, |h| h.revision);
                let this = (kv.key.clone(), kv.create_revision);
                let leader_at = if last.as_ref() == Some(&this) {
                    kv.mod_revision
                } else {
                    header
                };
                last = Some(this);
                observed.push(ObservedLeader {
                    observer,
                    name: name.to_string(),
                    session,
                    received: clock.now(),
                    endpoint,
                    key: String::from_utf8_lossy(&kv.key).into_owned(),
                    value: String::from_utf8_lossy(&kv.value).into_owned(),
                    create_revision: kv.create_revision,
                    mod_revision: kv.mod_revision,
                    leader_at,
                });
            }
        }
        session += 1;
        if urls.len() > 1 {
            endpoint = (endpoint + rng.gen_range(1..urls.len())) % urls.len();
        }
        if Instant::now() < until {
            // A broken stream: not straight back at it.
            tokio::time::sleep_until((Instant::now() + Duration::from_millis(100)).min(deadline))
                .await;
        }
    }
    observed
}
