//! etcdserverpb.Lease: LeaseGrant, LeaseRevoke, LeaseKeepAlive, LeaseTimeToLive and
//! LeaseLeases, over the in-process client.
//!
//! Grants and revokes go through Raft like any write. Keep-alives and TimeToLive are answered by
//! the leader's lessor, wherever the client asks (see `crate::lessor`).

use rampart_api::etcdserverpb as pb;
use rampart_api::etcdserverpb::lease_server::Lease;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::client::Client;

pub struct LeaseService {
    client: Client,
}

impl LeaseService {
    pub fn new(client: Client) -> Self {
        LeaseService { client }
    }
}

/// Answers the keep-alives of one stream in order, until the client closes it, an error ends it
/// (as etcd, which returns the error and ends the stream), or the node stops.
async fn keep_alive_stream(
    client: Client,
    mut requests: Streaming<pb::LeaseKeepAliveRequest>,
    responses: mpsc::Sender<Result<pb::LeaseKeepAliveResponse, Status>>,
) {
    loop {
        let request = tokio::select! {
            _ = client.stopped() => return,
            request = requests.message() => match request {
                Ok(Some(request)) => request,
                // Closed or broken by the client: nobody to answer.
                Ok(None) | Err(_) => return,
            },
        };
        let renewed = tokio::select! {
            _ = client.stopped() => return,
            renewed = client.lease_keep_alive(request.id) => renewed,
        };
        let last = renewed.is_err();
        if responses.send(renewed.map_err(Status::from)).await.is_err() || last {
            return;
        }
    }
}

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(
        &self,
        request: Request<pb::LeaseGrantRequest>,
    ) -> Result<Response<pb::LeaseGrantResponse>, Status> {
        Ok(Response::new(
            self.client
                .for_request(&request)
                .lease_grant(request.into_inner())
                .await?,
        ))
    }

    async fn lease_revoke(
        &self,
        request: Request<pb::LeaseRevokeRequest>,
    ) -> Result<Response<pb::LeaseRevokeResponse>, Status> {
        Ok(Response::new(
            self.client
                .for_request(&request)
                .lease_revoke(request.into_inner())
                .await?,
        ))
    }

    type LeaseKeepAliveStream = ReceiverStream<Result<pb::LeaseKeepAliveResponse, Status>>;

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<pb::LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let (sender, receiver) = mpsc::channel(16);
        tokio::spawn(keep_alive_stream(
            self.client.for_request(&request),
            request.into_inner(),
            sender,
        ));
        Ok(Response::new(ReceiverStream::new(receiver)))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<pb::LeaseTimeToLiveRequest>,
    ) -> Result<Response<pb::LeaseTimeToLiveResponse>, Status> {
        Ok(Response::new(
            self.client
                .for_request(&request)
                .lease_time_to_live(request.into_inner())
                .await?,
        ))
    }

    async fn lease_leases(
        &self,
        _request: Request<pb::LeaseLeasesRequest>,
    ) -> Result<Response<pb::LeaseLeasesResponse>, Status> {
        Ok(Response::new(self.client.lease_leases().await?))
    }
}
