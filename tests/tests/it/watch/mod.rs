//! The etcd v3 Watch service against a 3-member in-process cluster (and, for `etcdctl watch`,
//! against three `rampart` processes).
//!
//! Tests speak through the `etcd-client` crate where it exposes what they check, and through the
//! raw generated `WatchClient` where they need a field or a request it hides (ids, fragments,
//! progress requests, a stream that is not read). Every wait has a deadline; randomized tests
//! print their seed.
//!
//! - [`create_cancel`]: creating and canceling watches on a key, a range and a prefix; many
//!   watches on one stream, their ids and etcd's refusals.
//! - [`history`]: start revisions in the past (replay) and in the future; compacted revisions.
//! - [`events`]: what a response carries: `prev_kv`, the NOPUT and NODELETE filters, a txn's
//!   events together, fragments of a large revision.
//! - [`progress`]: progress notifications, periodic and requested, never ahead of the events.
//! - [`delivery`]: every event once and in order across the loss of the leader and past a slow
//!   reader; a stopped member ends its streams.
//! - [`etcdctl`]: `etcdctl watch` against real processes.
//!
//! This module holds what they share: [`RawWatch`], the request builders and the cluster start.

mod create_cancel;
mod delivery;
mod etcdctl;
mod events;
mod history;
mod progress;

use std::time::Duration;

use anyhow::{bail, ensure, Context};
use etcd_client::{Client, EventType, WatchStream};
use rampart_api::etcdserverpb as pb;
use rampart_api::etcdserverpb::kv_client::KvClient;
use rampart_api::etcdserverpb::watch_client::WatchClient;
use rampart_api::mvccpb;
use rampart_tests::TestCluster;
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};

use crate::common::connect;

const LEADER_WAIT: Duration = Duration::from_secs(20);
/// How long a test waits for a response it expects.
const RESPONSE_WAIT: Duration = Duration::from_secs(20);
/// How long a test listens to be sure a response does not come.
const QUIET: Duration = Duration::from_millis(500);

/// An etcd-client `Client` talking to `url` only.
async fn etcd(url: &str) -> anyhow::Result<Client> {
    connect(&[url.to_string()]).await
}

/// The next message of an etcd-client watch stream, within [`RESPONSE_WAIT`].
async fn message(stream: &mut WatchStream) -> anyhow::Result<etcd_client::WatchResponse> {
    tokio::time::timeout(RESPONSE_WAIT, stream.message())
        .await
        .context("no watch response in time")??
        .context("the watch stream ended")
}

/// `(type, key, value, mod_revision)` of each event of an etcd-client response.
fn summary(response: &etcd_client::WatchResponse) -> Vec<(EventType, String, String, i64)> {
    response
        .events()
        .iter()
        .map(|e| {
            let kv = e.kv().expect("an event has a kv");
            (
                e.event_type(),
                kv.key_str().unwrap_or("?").to_string(),
                kv.value_str().unwrap_or("?").to_string(),
                kv.mod_revision(),
            )
        })
        .collect()
}

/// A watch stream through the generated client: every field and request of the protocol.
struct RawWatch {
    requests: mpsc::Sender<pb::WatchRequest>,
    responses: tonic::Streaming<pb::WatchResponse>,
}

impl RawWatch {
    async fn open(url: &str) -> anyhow::Result<RawWatch> {
        let channel = Endpoint::from_shared(url.to_string())?
            .connect_timeout(Duration::from_secs(2))
            .connect()
            .await?;
        RawWatch::open_on(channel).await
    }

    async fn open_on(channel: Channel) -> anyhow::Result<RawWatch> {
        let (requests, receiver) = mpsc::channel(16);
        let responses = WatchClient::new(channel)
            .max_decoding_message_size(64 * 1024 * 1024)
            .watch(futures::stream::unfold(
                receiver,
                |mut receiver| async move {
                    let request = receiver.recv().await?;
                    Some((request, receiver))
                },
            ))
            .await?
            .into_inner();
        Ok(RawWatch {
            requests,
            responses,
        })
    }

    async fn send(&self, request: pb::watch_request::RequestUnion) -> anyhow::Result<()> {
        self.requests
            .send(pb::WatchRequest {
                request_union: Some(request),
            })
            .await
            .context("the request stream is closed")
    }

    async fn create(&self, create: pb::WatchCreateRequest) -> anyhow::Result<()> {
        self.send(pb::watch_request::RequestUnion::CreateRequest(create))
            .await
    }

    async fn cancel(&self, watch_id: i64) -> anyhow::Result<()> {
        self.send(pb::watch_request::RequestUnion::CancelRequest(
            pb::WatchCancelRequest { watch_id },
        ))
        .await
    }

    async fn request_progress(&self) -> anyhow::Result<()> {
        self.send(pb::watch_request::RequestUnion::ProgressRequest(
            pb::WatchProgressRequest {},
        ))
        .await
    }

    async fn next_within(&mut self, wait: Duration) -> anyhow::Result<Option<pb::WatchResponse>> {
        match tokio::time::timeout(wait, self.responses.message()).await {
            Err(_) => Ok(None),
            Ok(message) => Ok(Some(message?.context("the watch stream ended")?)),
        }
    }

    async fn next(&mut self) -> anyhow::Result<pb::WatchResponse> {
        self.next_within(RESPONSE_WAIT)
            .await?
            .context("no watch response in time")
    }

    /// Reads the created response of a successful create and returns its watch id.
    async fn created(&mut self) -> anyhow::Result<i64> {
        let response = self.next().await?;
        ensure!(
            response.created && !response.canceled,
            "expected a created response, got {response:?}"
        );
        Ok(response.watch_id)
    }

    /// Creates a watch and returns its id.
    async fn watch(&mut self, create: pb::WatchCreateRequest) -> anyhow::Result<i64> {
        self.create(create).await?;
        self.created().await
    }

    /// Reads event responses of watch `id` until `count` events came; fails on anything else.
    async fn events(&mut self, id: i64, count: usize) -> anyhow::Result<Vec<mvccpb::Event>> {
        let mut events = Vec::new();
        while events.len() < count {
            let response = self.next().await?;
            ensure!(
                response.watch_id == id && !response.events.is_empty() && !response.canceled,
                "expected events of watch {id}, got {response:?} after {} events",
                events.len()
            );
            events.extend(response.events);
        }
        ensure!(
            events.len() == count,
            "got {} events, not {count}",
            events.len()
        );
        Ok(events)
    }

    /// Checks that nothing arrives for a while.
    async fn expect_quiet(&mut self) -> anyhow::Result<()> {
        if let Some(response) = self.next_within(QUIET).await? {
            bail!("expected no response, got {response:?}");
        }
        Ok(())
    }
}

fn create(key: &str) -> pb::WatchCreateRequest {
    pb::WatchCreateRequest {
        key: key.into(),
        ..Default::default()
    }
}

fn prefix_create(prefix: &str) -> pb::WatchCreateRequest {
    let mut end = prefix.as_bytes().to_vec();
    *end.last_mut().expect("a non-empty prefix") += 1;
    pb::WatchCreateRequest {
        key: prefix.into(),
        range_end: end,
        ..Default::default()
    }
}

fn key_of(event: &mvccpb::Event) -> String {
    String::from_utf8_lossy(&event.kv.as_ref().expect("a kv").key).into_owned()
}

fn revision_of(event: &mvccpb::Event) -> i64 {
    event.kv.as_ref().expect("a kv").mod_revision
}

fn header_revision(response: &pb::WatchResponse) -> i64 {
    response.header.as_ref().map_or(0, |h| h.revision)
}

async fn delete(client: &mut KvClient<Channel>, key: &str, range_end: &str) -> anyhow::Result<i64> {
    let response = client
        .delete_range(pb::DeleteRangeRequest {
            key: key.into(),
            range_end: range_end.into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    Ok(response.header.context("no header")?.revision)
}

/// The current revision as member `client` serves it (linearizable).
async fn current_revision(client: &mut KvClient<Channel>) -> anyhow::Result<i64> {
    let response = client
        .range(pb::RangeRequest {
            key: b"-".to_vec(),
            ..Default::default()
        })
        .await?
        .into_inner();
    Ok(response.header.context("no header")?.revision)
}

/// A started cluster with a leader.
async fn cluster() -> anyhow::Result<(TestCluster, usize)> {
    cluster_with(|_| {}).await
}

async fn cluster_with(
    adjust: impl Fn(&mut rampart_server::RawConfig),
) -> anyhow::Result<(TestCluster, usize)> {
    let cluster = TestCluster::start_with(3, adjust).await?;
    let leader = cluster.wait_for_leader(LEADER_WAIT).await?;
    let leader = cluster.index_of(leader);
    Ok((cluster, leader))
}
