//! etcdserverpb.KV: Range, Put, DeleteRange, Txn and Compact.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use prost::Message;
use rampart_api::etcdserverpb as pb;
use rampart_api::etcdserverpb::kv_server::Kv;
use rampart_storage::{Command, CommandResult};
use tonic::{Request, Response, Status};

use crate::convert::{self, Limits};
use crate::error::ServerError;
use crate::node::Node;

pub struct KvService {
    node: Arc<Node>,
}

impl KvService {
    pub fn new(node: Arc<Node>) -> Self {
        KvService { node }
    }

    fn limits(&self) -> Limits {
        Limits {
            max_txn_ops: self.node.config.max_txn_ops,
        }
    }

    /// etcd's check on the size of a request that goes through Raft.
    fn check_size(&self, request: &impl Message) -> Result<(), ServerError> {
        if request.encoded_len() > self.node.config.max_request_bytes {
            Err(ServerError::RequestTooLarge)
        } else {
            Ok(())
        }
    }

    async fn range(&self, request: pb::RangeRequest) -> Result<pb::RangeResponse, ServerError> {
        let request = convert::range_request(request)?;
        if !request.serializable {
            self.node.read_barrier().await?;
        }
        let (response, revision) = self.node.mvcc.try_range(&request)?;
        Ok(convert::range_response(
            response,
            self.node.header(revision),
        ))
    }

    /// Proposes `command` and returns its result with the header at the revision it produced.
    async fn write(
        &self,
        command: Command,
    ) -> Result<(CommandResult, pb::ResponseHeader), ServerError> {
        let response = self.node.write(command).await?;
        let result = response.result?;
        Ok((result, self.node.header(response.revision)))
    }
}

/// A command's result did not match the command: a broken invariant of the state machine.
pub(super) fn mismatch(result: CommandResult) -> Status {
    Status::internal(format!(
        "unexpected result from the state machine: {result:?}"
    ))
}

type RangeStream = Pin<Box<dyn Stream<Item = Result<pb::RangeStreamResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(
        &self,
        request: Request<pb::RangeRequest>,
    ) -> Result<Response<pb::RangeResponse>, Status> {
        Ok(Response::new(self.range(request.into_inner()).await?))
    }

    type RangeStreamStream = RangeStream;

    /// Answers in one message: the whole range is read at one revision either way.
    async fn range_stream(
        &self,
        request: Request<pb::RangeRequest>,
    ) -> Result<Response<RangeStream>, Status> {
        let response = self.range(request.into_inner()).await?;
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
        let request = request.into_inner();
        self.check_size(&request)?;
        let put = convert::put_request(request)?;
        match self.write(Command::Put(put)).await? {
            (CommandResult::Put(r), header) => Ok(Response::new(convert::put_response(r, header))),
            (other, _) => Err(mismatch(other)),
        }
    }

    async fn delete_range(
        &self,
        request: Request<pb::DeleteRangeRequest>,
    ) -> Result<Response<pb::DeleteRangeResponse>, Status> {
        let request = request.into_inner();
        self.check_size(&request)?;
        let delete = convert::delete_request(request)?;
        match self.write(Command::DeleteRange(delete)).await? {
            (CommandResult::DeleteRange(r), header) => {
                Ok(Response::new(convert::delete_response(r, header)))
            }
            (other, _) => Err(mismatch(other)),
        }
    }

    async fn txn(
        &self,
        request: Request<pb::TxnRequest>,
    ) -> Result<Response<pb::TxnResponse>, Status> {
        let request = request.into_inner();
        self.check_size(&request)?;
        let txn = convert::txn_request(request, self.limits())?;
        match self.write(Command::Txn(txn)).await? {
            (CommandResult::Txn(r), header) => Ok(Response::new(convert::txn_response(r, &header))),
            (other, _) => Err(mismatch(other)),
        }
    }

    async fn compact(
        &self,
        request: Request<pb::CompactionRequest>,
    ) -> Result<Response<pb::CompactionResponse>, Status> {
        let request = request.into_inner();
        let revision = request.revision;
        match self.write(Command::Compact { revision }).await? {
            (CommandResult::Compact, header) => {
                if request.physical {
                    // Applied here, the compaction removes what it superseded in the
                    // background; `physical` asks to answer only once that is done, as etcd's.
                    self.node
                        .mvcc
                        .wait_compacted(revision)
                        .await
                        .map_err(|_| ServerError::Stopped)?;
                }
                Ok(Response::new(pb::CompactionResponse {
                    header: Some(header),
                }))
            }
            (other, _) => Err(mismatch(other)),
        }
    }
}
