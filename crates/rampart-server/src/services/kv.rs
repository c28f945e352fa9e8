//! etcdserverpb.KV: Range, Put, DeleteRange, Txn and Compact, over the in-process client.

use std::pin::Pin;

use futures::Stream;
use rampart_api::etcdserverpb as pb;
use rampart_api::etcdserverpb::kv_server::Kv;
use tonic::{Request, Response, Status};

use crate::client::Client;

pub struct KvService {
    client: Client,
}

impl KvService {
    pub fn new(client: Client) -> Self {
        KvService { client }
    }
}

type RangeStream = Pin<Box<dyn Stream<Item = Result<pb::RangeStreamResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(
        &self,
        request: Request<pb::RangeRequest>,
    ) -> Result<Response<pb::RangeResponse>, Status> {
        Ok(Response::new(
            self.client
                .for_request(&request)
                .range(request.into_inner())
                .await?,
        ))
    }

    type RangeStreamStream = RangeStream;

    /// Answers in one message: the whole range is read at one revision either way.
    async fn range_stream(
        &self,
        request: Request<pb::RangeRequest>,
    ) -> Result<Response<RangeStream>, Status> {
        let response = self
            .client
            .for_request(&request)
            .range(request.into_inner())
            .await?;
        let message = pb::RangeStreamResponse {
            range_response: Some(response),
        };
        Ok(Response::new(Box::pin(futures::stream::iter([Ok(
            message,
        )]))))
    }

    async fn put(
        &self,
        request: Request<pb::PutRequest>,
    ) -> Result<Response<pb::PutResponse>, Status> {
        Ok(Response::new(
            self.client
                .for_request(&request)
                .put(request.into_inner())
                .await?,
        ))
    }

    async fn delete_range(
        &self,
        request: Request<pb::DeleteRangeRequest>,
    ) -> Result<Response<pb::DeleteRangeResponse>, Status> {
        Ok(Response::new(
            self.client
                .for_request(&request)
                .delete_range(request.into_inner())
                .await?,
        ))
    }

    async fn txn(
        &self,
        request: Request<pb::TxnRequest>,
    ) -> Result<Response<pb::TxnResponse>, Status> {
        Ok(Response::new(
            self.client
                .for_request(&request)
                .txn(request.into_inner())
                .await?,
        ))
    }

    async fn compact(
        &self,
        request: Request<pb::CompactionRequest>,
    ) -> Result<Response<pb::CompactionResponse>, Status> {
        Ok(Response::new(
            self.client
                .for_request(&request)
                .compact(request.into_inner())
                .await?,
        ))
    }
}
