//! The election workload: campaign cycles (v3electionpb Campaign, Proclaim, Resign) on a few
//! election names, and the fan-out of each proclamation to observers (Observe).
//!
//! Phases: open an Observe stream for each of `observers` observers on each of `elections`
//! names, and confirm every stream by a first leader in each election that waits until each
//! observer has seen it; then let the clients run campaign cycles on the run's schedule; then
//! close the streams.
//!
//! A cycle campaigns in a random election with the worker's lease and an empty value, waits
//! for the leadership (behind the campaigners before it: with more clients than elections,
//! campaigners queue), proclaims once a value that starts with its send time, holds the
//! leadership until every observer of that election has received the proclamation, and
//! resigns. Holding it is what makes every proclamation due at every observer: Observe reports
//! the leader's current value, so a value replaced or resigned before an observer looked would
//! never reach it (in etcd as in Rampart), and a lost proclamation could not be told from a
//! late one. The cycle is the request; its steps are parts `campaign` (from the Campaign's send
//! to the leadership), `proclaim` and `resign`; each proclamation's arrival at each observer,
//! from the Proclaim's send time, is part `observe`.

use std::sync::Arc;
use std::time::Duration;

use rampart_api::v3electionpb::election_client::ElectionClient;
use rampart_api::v3electionpb::{
    CampaignRequest, LeaderKey, LeaderRequest, ProclaimRequest, ResignRequest,
};
use rand::rngs::StdRng;
use rand::Rng;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::Status;

use super::session::Session;
use crate::config::Config;
use crate::connect::Connections;
use crate::driver::{drive, Run, Worker};
use crate::error::in_step;
use crate::payload;
use crate::stats::Recorder;

/// How long the first leader of each election may take to reach every observer.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a leader holds its leadership waiting for every observer to receive its
/// proclamation; observers still missing it after that are counted as errors.
const OBSERVE_TIMEOUT: Duration = Duration::from_secs(10);

/// The names of `count` elections under `prefix`: `<prefix>election/<i>`. They are apart from
/// the key space's keys and lock names, so that no key left by another workload sits in an
/// election as a campaigner.
fn election_names(prefix: &[u8], count: usize) -> Vec<Vec<u8>> {
    (0..count)
        .map(|i| [prefix, format!("election/{i}").as_bytes()].concat())
        .collect()
}

pub async fn run(config: &Config, conns: &Connections, origin: Instant) -> Run {
    let started = Instant::now();
    let names = election_names(config.keys.prefix(), config.elections);
    let stop = CancellationToken::new();

    // Phase 1: the observers, each with a stream on every election, confirmed by a first leader.
    let mut seen = vec![Vec::with_capacity(config.observers); names.len()];
    let mut observers = Vec::new();
    for observer in 0..config.observers {
        for (election, name) in names.iter().enumerate() {
            let (sender, receiver) = watch::channel(0);
            seen[election].push(receiver);
            observers.push(tokio::spawn(observe(
                conns.channel(observer),
                name.clone(),
                sender,
                origin,
                stop.clone(),
            )));
        }
    }
    let sightings = Arc::new(Sightings { seen });
    let mut setup = Recorder::new(origin);
    if let Err(status) = confirm(conns.channel(0), &names, config.lease_ttl, &sightings).await {
        setup.record_error(&status);
        // Without every stream the fan-out would mean nothing; report why instead.
        stop.cancel();
        merge_observers(&mut setup, observers).await;
        return Run {
            recorder: setup,
            started,
            elapsed: started.elapsed(),
        };
    }

    // Phase 2: the campaigners.
    let workers = (0..config.clients)
        .map(|client| {
            ElectionWorker::new(config, client, conns.channel(client), &names, &sightings)
        })
        .collect();
    let mut run = drive(workers, config.pace, config.stop, origin, "election").await;

    // Phase 3: every proclamation was observed (or counted missing) before its leader resigned.
    stop.cancel();
    merge_observers(&mut run.recorder, observers).await;
    let recorder = &mut run.recorder;
    recorder.add("elections", names.len() as u64);
    recorder.add("observers", config.observers as u64);
    let proclaimed = recorder.counter("proclamations");
    recorder.add(
        "observations_expected",
        proclaimed * config.observers as u64,
    );
    run
}

/// What the observers have seen: `seen[election][observer]` holds the mod revision of the
/// latest leader value that observer received in that election. Its sender belongs to the
/// observer's stream and is dropped when the stream ends, so a leader waiting for it learns that
/// it will not come.
struct Sightings {
    seen: Vec<Vec<watch::Receiver<i64>>>,
}

/// The observers of an election that did not receive a value within the time allowed.
#[derive(Debug, Default, PartialEq, Eq)]
struct Missed {
    /// Still streaming, but the value did not arrive in time.
    late: u64,
    /// Their stream had ended.
    gone: u64,
}

impl Sightings {
    /// Waits until every observer of `election` has received the value put at `revision`, or
    /// `deadline`.
    async fn wait(&self, election: usize, revision: i64, deadline: Instant) -> Missed {
        let mut missed = Missed::default();
        for receiver in &self.seen[election] {
            let mut receiver = receiver.clone();
            // `wait_for` answers a read guard on the value; only whether it came matters.
            let seen = tokio::time::timeout_at(deadline, receiver.wait_for(|&r| r >= revision))
                .await
                .map(|seen| seen.is_ok());
            match seen {
                Ok(true) => {}
                Ok(false) => missed.gone += 1,
                Err(_) => missed.late += 1,
            }
        }
        missed
    }

    /// As [`Sightings::wait`], counting the observers missed as errors in `recorder`.
    async fn wait_and_count(
        &self,
        election: usize,
        revision: i64,
        timeout: Duration,
        recorder: &mut Recorder,
    ) {
        let missed = self
            .wait(election, revision, Instant::now() + timeout)
            .await;
        if missed.late > 0 {
            recorder.record_error_kind(
                format!("proclamation not observed within {}s", timeout.as_secs()),
                missed.late,
            );
        }
        if missed.gone > 0 {
            recorder.record_error_kind(
                "proclamation not observed: the observer's stream had ended".into(),
                missed.gone,
            );
        }
    }
}

/// Campaigns in every election with a lease of its own, waits until each observer has seen
/// that leader and resigns: proof that every Observe stream follows its election. A gRPC
/// server may send an Observe's response headers only with its first value, so there is no
/// earlier sign of it.
async fn confirm(
    channel: Channel,
    names: &[Vec<u8>],
    ttl: i64,
    sightings: &Sightings,
) -> Result<(), Status> {
    let session = Session::grant(channel.clone(), ttl).await?;
    let mut client = ElectionClient::new(channel);
    let mut outcome = Ok(());
    for (election, name) in names.iter().enumerate() {
        outcome = confirm_one(&mut client, session.id(), election, name, sightings).await;
        if outcome.is_err() {
            break;
        }
    }
    // Revoking the lease also withdraws a campaign left by a failure.
    session.revoke().await;
    outcome
}

async fn confirm_one(
    client: &mut ElectionClient<Channel>,
    lease: i64,
    election: usize,
    name: &[u8],
    sightings: &Sightings,
) -> Result<(), Status> {
    let timed_out = || {
        Status::deadline_exceeded(format!(
            "[confirm] {} had no leader within {}s (a campaigner left by another run?)",
            String::from_utf8_lossy(name),
            CONFIRM_TIMEOUT.as_secs()
        ))
    };
    let campaign = client.campaign(CampaignRequest {
        name: name.to_vec(),
        lease,
        value: Vec::new(),
    });
    let leader = tokio::time::timeout(CONFIRM_TIMEOUT, campaign)
        .await
        .map_err(|_| timed_out())?
        .map_err(in_step("campaign"))?
        .into_inner()
        .leader
        .ok_or_else(no_leader_key)?;
    let missed = sightings
        .wait(election, leader.rev, Instant::now() + CONFIRM_TIMEOUT)
        .await;
    if missed != Missed::default() {
        return Err(Status::deadline_exceeded(format!(
            "[confirm] the first leader of {} did not reach every observer within {}s: {} late, \
             {} streams ended",
            String::from_utf8_lossy(name),
            CONFIRM_TIMEOUT.as_secs(),
            missed.late,
            missed.gone
        )));
    }
    client
        .resign(ResignRequest {
            leader: Some(leader),
        })
        .await
        .map_err(in_step("resign"))?;
    Ok(())
}

fn no_leader_key() -> Status {
    Status::internal("[campaign] answered without a leader key")
}

/// One Observe stream: publishes the mod revision of each leader value received in `seen`, and
/// records the latency of each proclamation (a value carrying its send time) as part `observe`,
/// until `stop` is cancelled or the stream ends (an error).
async fn observe(
    channel: Channel,
    name: Vec<u8>,
    seen: watch::Sender<i64>,
    origin: Instant,
    stop: CancellationToken,
) -> Recorder {
    let mut recorder = Recorder::new(origin);
    let call = async {
        ElectionClient::new(channel)
            .observe(LeaderRequest { name })
            .await
    };
    let mut responses = tokio::select! {
        _ = stop.cancelled() => return recorder,
        responses = call => match responses {
            Ok(responses) => responses.into_inner(),
            Err(status) => {
                recorder.record_error(&in_step("observe")(status));
                return recorder;
            }
        },
    };
    loop {
        let message = tokio::select! {
            _ = stop.cancelled() => break,
            message = responses.message() => message,
        };
        let kv = match message {
            Ok(Some(response)) => response.kv,
            Ok(None) => {
                recorder.record_error(&Status::unavailable("[observe] stream ended"));
                break;
            }
            Err(status) => {
                recorder.record_error(&in_step("observe")(status));
                break;
            }
        };
        let Some(kv) = kv else { continue };
        let now = payload::now_nanos();
        // A campaign's value is empty; only proclamations carry a send time.
        if let Some(sent) = payload::read_timestamp(&kv.value) {
            recorder.record_part_latency("observe", payload::latency_since(sent, now));
        }
        seen.send_if_modified(|latest| {
            let newer = kv.mod_revision > *latest;
            if newer {
                *latest = kv.mod_revision;
            }
            newer
        });
    }
    recorder
}

async fn merge_observers(into: &mut Recorder, observers: Vec<JoinHandle<Recorder>>) {
    for observer in observers {
        match observer.await {
            Ok(recorder) => into.merge(&recorder),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => into.record_error_kind(format!("observer failed: {e}"), 1),
        }
    }
}

/// Runs campaign cycles in random elections with a lease held for the whole run.
struct ElectionWorker {
    election: ElectionClient<Channel>,
    channel: Channel,
    names: Vec<Vec<u8>>,
    sightings: Arc<Sightings>,
    rng: StdRng,
    ttl: i64,
    value_size: usize,
    /// The lease the worker campaigns with; `None` before setup.
    session: Option<Session>,
}

impl ElectionWorker {
    fn new(
        config: &Config,
        client: usize,
        channel: Channel,
        names: &[Vec<u8>],
        sightings: &Arc<Sightings>,
    ) -> ElectionWorker {
        ElectionWorker {
            election: ElectionClient::new(channel.clone()),
            channel,
            names: names.to_vec(),
            sightings: sightings.clone(),
            rng: super::client_rng(config, client),
            ttl: config.lease_ttl,
            value_size: config.value_size,
            session: None,
        }
    }
}

impl Worker for ElectionWorker {
    async fn setup(&mut self) -> Result<(), Status> {
        let session = Session::grant(self.channel.clone(), self.ttl).await?;
        self.session = Some(session);
        Ok(())
    }

    async fn execute(&mut self, _seq: u64, recorder: &mut Recorder) -> Result<(), Status> {
        let session = self.session.as_mut().ok_or_else(super::no_session)?;
        session.clean().await.map_err(in_step("clean-up"))?;
        let election = self.rng.gen_range(0..self.names.len());
        let name = &self.names[election];
        let cycle = Cycle {
            client: &mut self.election,
            sightings: &self.sightings,
            election,
            name,
            lease: session.id(),
            value_size: self.value_size,
        };
        let outcome = cycle.run(recorder).await;
        if outcome.is_err() {
            session.abandon(name).await;
        }
        outcome
    }

    async fn finish(self) {
        if let Some(session) = self.session {
            session.revoke().await;
        }
    }
}

/// One campaign cycle of a worker.
struct Cycle<'a> {
    client: &'a mut ElectionClient<Channel>,
    sightings: &'a Sightings,
    election: usize,
    name: &'a [u8],
    lease: i64,
    value_size: usize,
}

impl Cycle<'_> {
    async fn run(self, recorder: &mut Recorder) -> Result<(), Status> {
        let began = Instant::now();
        let leader: LeaderKey = self
            .client
            .campaign(CampaignRequest {
                name: self.name.to_vec(),
                lease: self.lease,
                value: Vec::new(),
            })
            .await
            .map_err(in_step("campaign"))?
            .into_inner()
            .leader
            .ok_or_else(no_leader_key)?;
        recorder.record_part("campaign", began);

        let began = Instant::now();
        let value = payload::timestamped_value(self.value_size, payload::now_nanos());
        let header = self
            .client
            .proclaim(ProclaimRequest {
                leader: Some(leader.clone()),
                value,
            })
            .await
            .map_err(in_step("proclaim"))?
            .into_inner()
            .header
            .ok_or_else(|| Status::internal("[proclaim] answered without a header"))?;
        recorder.record_part("proclaim", began);
        recorder.add("proclamations", 1);

        // The header's revision is the proclamation's: the put is the txn's only write.
        self.sightings
            .wait_and_count(self.election, header.revision, OBSERVE_TIMEOUT, recorder)
            .await;

        let began = Instant::now();
        self.client
            .resign(ResignRequest {
                leader: Some(leader),
            })
            .await
            .map_err(in_step("resign"))?;
        recorder.record_part("resign", began);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn election_names_are_apart_from_the_key_space() {
        let names = election_names(b"bench/", 3);
        assert_eq!(
            names,
            [
                b"bench/election/0".to_vec(),
                b"bench/election/1".to_vec(),
                b"bench/election/2".to_vec()
            ]
        );
        let keys = crate::keys::KeySpace::new("bench/", 10_000, 16).expect("fits");
        for name in &names {
            assert!(
                (0..keys.size()).all(|i| !name.starts_with(&keys.key(i))),
                "no key of the key space is a prefix of {name:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_leader_waits_for_every_observer_and_counts_those_missed() {
        // Three observers of election 0: one sees revision 7 at once, one only after 3 s, one
        // whose stream ends without it. One observer of election 1 never sees anything.
        let (prompt, prompt_seen) = watch::channel(0);
        let (slow, slow_seen) = watch::channel(0);
        let (ended, ended_seen) = watch::channel(5);
        let (_idle, idle_seen) = watch::channel(0);
        let sightings = Sightings {
            seen: vec![vec![prompt_seen, slow_seen, ended_seen], vec![idle_seen]],
        };
        prompt.send_replace(7);
        drop(ended);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            slow.send_replace(8);
            // Kept open until the end of the test.
            std::future::pending::<()>().await;
        });

        let start = Instant::now();
        let missed = sightings.wait(0, 7, start + Duration::from_secs(10)).await;
        assert_eq!(missed, Missed { late: 0, gone: 1 });
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_secs(3) && waited < Duration::from_secs(10),
            "waited {waited:?} for the slow one, not for the ended one"
        );

        let mut recorder = Recorder::new(start);
        sightings
            .wait_and_count(1, 7, Duration::from_secs(2), &mut recorder)
            .await;
        sightings
            .wait_and_count(0, 8, Duration::from_secs(2), &mut recorder)
            .await;
        // Election 1's idle observer, and election 0's prompt one (which saw 7, not 8).
        assert_eq!(recorder.errors()["proclamation not observed within 2s"], 2);
        assert_eq!(
            recorder.errors()["proclamation not observed: the observer's stream had ended"],
            1
        );
        assert_eq!(recorder.error_count(), 3);
    }
}
