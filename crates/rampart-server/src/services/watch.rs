//! etcdserverpb.Watch: each gRPC stream is a watch stream of `crate::watch`, opened through the
//! in-process client.

use std::pin::Pin;

use futures::{Stream, StreamExt};
use rampart_api::etcdserverpb as pb;
use rampart_api::etcdserverpb::watch_server::Watch;
use tonic::{Request, Response, Status, Streaming};

use crate::client::Client;

pub struct WatchService {
    client: Client,
}

impl WatchService {
    pub fn new(client: Client) -> Self {
        WatchService { client }
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<Streaming<pb::WatchRequest>>,
    ) -> Result<Response<WatchStream>, Status> {
        let responses = self
            .client
            .for_request(&request)
            .watch(request.into_inner());
        Ok(Response::new(Box::pin(
            responses.map(|response| response.map_err(Status::from)),
        )))
    }
}
