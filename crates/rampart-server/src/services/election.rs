//! v3electionpb.Election: Campaign, Proclaim, Leader, Observe and Resign, etcd's leader
//! election (`v3election`, over clientv3's `concurrency.Election`), built on KV, Lease and Watch
//! through the in-process client.
//!
//! A campaigner for election `name` is the key `name/<lease hex>` holding its proposal; the
//! oldest key (lowest create revision) leads. Campaign creates the key (or, if this lease
//! already campaigns, proclaims the new value on it), waits for every older key to go (see
//! `super::concurrency`) and answers the leadership as a `LeaderKey` (name, key, create
//! revision, lease). Proclaim and Resign act only while that key still exists with that create
//! revision. Leader reads the oldest key; Observe streams the leader's key-value each time the
//! leader or its value changes.
//!
//! As etcd, lease 0 gets a new lease of 60 s that nothing keeps alive (Campaign, Proclaim), and
//! every error is answered with code `Unknown` ([`ServerError::into_concurrency_status`]). Two
//! differences from etcd 3.4, both where it answers something untrue: a Campaign whose key went
//! away while it waited (its lease expired) fails with "election: not leader" instead of
//! answering a leadership that no longer exists; and Observe, whose watch etcd ends when it
//! breaks, looks at the election again and carries on, sending no value twice.

use std::pin::Pin;

use futures::{Stream, StreamExt};
use rampart_api::etcdserverpb as pb;
use rampart_api::mvccpb;
use rampart_api::v3electionpb::election_server::Election;
use rampart_api::v3electionpb::{
    CampaignRequest, CampaignResponse, LeaderKey, LeaderRequest, LeaderResponse, ProclaimRequest,
    ProclaimResponse, ResignRequest, ResignResponse,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::concurrency::{
    created_at, delete_if_created_at, enter, first_created, get, prefix_of, put_op, range_op,
    retrying, session_key, session_lease, txn_kvs, wait_deletes, Patience,
};
use crate::client::Client;
use crate::error::ServerError;

pub struct ElectionService {
    client: Client,
}

impl ElectionService {
    pub fn new(client: Client) -> Self {
        ElectionService { client }
    }
}

/// Campaigns in election `name` for `lease` with `value`, waiting until it leads.
async fn campaign(
    client: &Client,
    request: CampaignRequest,
) -> Result<CampaignResponse, ServerError> {
    let lease = session_lease(client, request.lease).await?;
    let prefix = prefix_of(&request.name);
    let key = session_key(&prefix, lease);
    let entry = pb::TxnRequest {
        compare: vec![created_at(&key, 0)],
        success: vec![put_op(&key, &request.value, lease)],
        failure: vec![range_op(get(&key))],
    };
    // From here on a failure, or the caller going away, withdraws the campaign (etcd resigns).
    let (response, guard) = enter(client, &key, entry).await?;
    let header = response.header.unwrap_or_default();
    let revision = guard.create_revision();
    // If this lease campaigns already, it keeps its place, and posts the new value if it differs.
    let stale_value = !response.succeeded
        && txn_kvs(&response, 0)
            .first()
            .is_some_and(|existing| existing.value != request.value);
    if stale_value {
        proclaim_on(client, &key, revision, lease, &request.value).await?;
    }
    wait_deletes(client, &prefix, revision - 1).await?;
    let mine = retrying(client, Patience::Step, || client.range(get(&key))).await?;
    if !mine.kvs.iter().any(|kv| kv.create_revision == revision) {
        return Err(ServerError::ElectionNotLeader);
    }
    guard.keep();
    // etcd answers the header of the txn that entered the campaign.
    Ok(CampaignResponse {
        header: Some(header),
        leader: Some(LeaderKey {
            name: request.name,
            key,
            rev: revision,
            lease,
        }),
    })
}

/// Puts `value` on `key` with `lease` if the key is still the one created at `revision`.
async fn proclaim_on(
    client: &Client,
    key: &[u8],
    revision: i64,
    lease: i64,
    value: &[u8],
) -> Result<pb::ResponseHeader, ServerError> {
    let txn = pb::TxnRequest {
        compare: vec![created_at(key, revision)],
        success: vec![put_op(key, value, lease)],
        failure: vec![],
    };
    let response = retrying(client, Patience::Step, || client.txn(txn.clone())).await?;
    if !response.succeeded {
        return Err(ServerError::ElectionNotLeader);
    }
    Ok(response.header.unwrap_or_default())
}

async fn proclaim(
    client: &Client,
    request: ProclaimRequest,
) -> Result<ProclaimResponse, ServerError> {
    let leader = request.leader.ok_or(ServerError::MissingLeaderKey)?;
    // As etcd's, whose session for lease 0 grants a new one, which the value is then put with.
    let lease = session_lease(client, leader.lease).await?;
    let header = proclaim_on(client, &leader.key, leader.rev, lease, &request.value).await?;
    Ok(ProclaimResponse {
        header: Some(header),
    })
}

/// Deletes the leader's key if it is still the one created at its revision; answers the header
/// either way, as etcd's.
async fn resign(client: &Client, request: ResignRequest) -> Result<ResignResponse, ServerError> {
    let leader = request.leader.ok_or(ServerError::MissingLeaderKey)?;
    let txn = delete_if_created_at(&leader.key, leader.rev);
    let response = retrying(client, Patience::Step, || client.txn(txn.clone())).await?;
    Ok(ResignResponse {
        header: response.header,
    })
}

/// The current leader's key-value, or "election: no leader".
async fn leader(client: &Client, request: LeaderRequest) -> Result<LeaderResponse, ServerError> {
    let prefix = prefix_of(&request.name);
    let response = retrying(client, Patience::Step, || {
        client.range(first_created(&prefix))
    })
    .await?;
    let kv = response
        .kvs
        .into_iter()
        .next()
        .ok_or(ServerError::ElectionNoLeader)?;
    Ok(LeaderResponse {
        header: response.header,
        kv: Some(kv),
    })
}

/// Where an [`Observer`] sends its responses.
type Outgoing = mpsc::Sender<Result<LeaderResponse, Status>>;

/// One Observe stream: sends the current leader's key-value, then every new value of it, then
/// the next leader's when its key is deleted, and so on, until the client goes away or the node
/// stops (etcd's `Election.observe`).
struct Observer {
    client: Client,
    prefix: Vec<u8>,
    out: Outgoing,
    /// The key and mod revision of the last key-value sent, so that a look at the election
    /// after a broken watch does not send it twice.
    last_sent: Option<(Vec<u8>, i64)>,
}

/// Why an observer stops.
enum Stop {
    /// The client went away: nobody to tell.
    Gone,
    /// The node stops, or a read failed for good: the client is told.
    Failed(ServerError),
}

impl Observer {
    async fn run(mut self) {
        if let Err(Stop::Failed(error)) = self.observe().await {
            let _ = self.out.send(Err(error.into_concurrency_status())).await;
        }
    }

    async fn observe(&mut self) -> Result<(), Stop> {
        loop {
            let client = &self.client;
            let current = retrying(client, Patience::Waiter, || {
                client.range(first_created(&self.prefix))
            });
            let current = tokio::select! {
                _ = self.out.closed() => return Err(Stop::Gone),
                current = current => current.map_err(Stop::Failed)?,
            };
            let header = current.header.unwrap_or_default();
            let (header, kv) = match current.kvs.into_iter().next() {
                Some(kv) => (header, kv),
                None => match self.first_put(header.revision).await? {
                    Some(found) => found,
                    // The watch broke: look again.
                    None => continue,
                },
            };
            let from = header.revision + 1;
            self.send(header, kv.clone()).await?;
            self.follow(&kv.key, from).await?;
        }
    }

    /// Sends `kv` with `header` unless it is the last one sent.
    async fn send(&mut self, header: pb::ResponseHeader, kv: mvccpb::KeyValue) -> Result<(), Stop> {
        let id = (kv.key.clone(), kv.mod_revision);
        if self.last_sent.as_ref() == Some(&id) {
            return Ok(());
        }
        let response = LeaderResponse {
            header: Some(header),
            kv: Some(kv),
        };
        self.out.send(Ok(response)).await.map_err(|_| Stop::Gone)?;
        self.last_sent = Some(id);
        Ok(())
    }

    /// Opens a watch of `key` (of every key under it if `prefix`) from `revision`.
    fn watch(&self, key: &[u8], prefix: bool, revision: i64) -> crate::watch::Responses {
        let range_end = if prefix {
            first_created(key).range_end
        } else {
            Vec::new()
        };
        let create = pb::WatchRequest {
            request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
                pb::WatchCreateRequest {
                    key: key.to_vec(),
                    range_end,
                    start_revision: revision,
                    ..Default::default()
                },
            )),
        };
        self.client
            .watch(futures::stream::iter([Ok::<_, std::convert::Infallible>(
                create,
            )]))
    }

    /// Waits, in an election without campaigners at `revision`, for the first key put under
    /// the prefix: the first leader. `None` if the watch broke first.
    async fn first_put(
        &self,
        revision: i64,
    ) -> Result<Option<(pb::ResponseHeader, mvccpb::KeyValue)>, Stop> {
        let mut watch = self.watch(&self.prefix, true, revision);
        loop {
            let response = tokio::select! {
                _ = self.out.closed() => return Err(Stop::Gone),
                response = watch.next() => response,
            };
            let response = match response {
                Some(Ok(response)) if !response.canceled => response,
                Some(Err(ServerError::Stopped)) => return Err(Stop::Failed(ServerError::Stopped)),
                _ => return Ok(None),
            };
            let put = response
                .events
                .into_iter()
                .find(|event| event.r#type == mvccpb::event::EventType::Put as i32);
            if let Some(kv) = put.and_then(|event| event.kv) {
                let mut header = response.header.unwrap_or_default();
                // A response may hold several revisions; this one's is the key's.
                header.revision = kv.mod_revision;
                return Ok(Some((header, kv)));
            }
        }
    }

    /// Sends every new value of the leader's `key` from `revision` on, until the key is deleted
    /// or the watch breaks.
    async fn follow(&mut self, key: &[u8], revision: i64) -> Result<(), Stop> {
        let mut watch = self.watch(key, false, revision);
        loop {
            let response = tokio::select! {
                _ = self.out.closed() => return Err(Stop::Gone),
                response = watch.next() => response,
            };
            let response = match response {
                Some(Ok(response)) if !response.canceled => response,
                Some(Err(ServerError::Stopped)) => return Err(Stop::Failed(ServerError::Stopped)),
                // Compacted past what it needs, or broken: look at the election again.
                _ => return Ok(()),
            };
            let header = response.header.unwrap_or_default();
            for event in response.events {
                if event.r#type == mvccpb::event::EventType::Delete as i32 {
                    return Ok(());
                }
                if let Some(kv) = event.kv {
                    self.send(header, kv).await?;
                }
            }
        }
    }
}

type ObserveStream = Pin<Box<dyn Stream<Item = Result<LeaderResponse, Status>> + Send>>;

/// How many responses an Observe stream may queue for a slow client; its observer then waits,
/// and its watch falls behind and later replays, as any watch.
const OBSERVE_QUEUE: usize = 16;

#[tonic::async_trait]
impl Election for ElectionService {
    async fn campaign(
        &self,
        request: Request<CampaignRequest>,
    ) -> Result<Response<CampaignResponse>, Status> {
        campaign(&self.client.for_request(&request), request.into_inner())
            .await
            .map(Response::new)
            .map_err(ServerError::into_concurrency_status)
    }

    async fn proclaim(
        &self,
        request: Request<ProclaimRequest>,
    ) -> Result<Response<ProclaimResponse>, Status> {
        proclaim(&self.client.for_request(&request), request.into_inner())
            .await
            .map(Response::new)
            .map_err(ServerError::into_concurrency_status)
    }

    async fn leader(
        &self,
        request: Request<LeaderRequest>,
    ) -> Result<Response<LeaderResponse>, Status> {
        leader(&self.client.for_request(&request), request.into_inner())
            .await
            .map(Response::new)
            .map_err(ServerError::into_concurrency_status)
    }

    type ObserveStream = ObserveStream;

    async fn observe(
        &self,
        request: Request<LeaderRequest>,
    ) -> Result<Response<ObserveStream>, Status> {
        let (out, responses) = mpsc::channel(OBSERVE_QUEUE);
        let observer = Observer {
            client: self.client.for_request(&request),
            prefix: prefix_of(&request.into_inner().name),
            out,
            last_sent: None,
        };
        tokio::spawn(observer.run());
        Ok(Response::new(Box::pin(ReceiverStream::new(responses))))
    }

    async fn resign(
        &self,
        request: Request<ResignRequest>,
    ) -> Result<Response<ResignResponse>, Status> {
        resign(&self.client.for_request(&request), request.into_inner())
            .await
            .map(Response::new)
            .map_err(ServerError::into_concurrency_status)
    }
}
