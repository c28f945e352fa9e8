//! A lease keep-alive stream that opens itself on first use and reopens after a failure.

use rampart_api::etcdserverpb::lease_client::LeaseClient;
use rampart_api::etcdserverpb::{LeaseKeepAliveRequest, LeaseKeepAliveResponse};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::Channel;
use tonic::{Status, Streaming};

/// One `LeaseKeepAlive` stream: one refresh at a time, each answered in order.
pub struct KeepAliveStream {
    lease: LeaseClient<Channel>,
    open: Option<Open>,
}

struct Open {
    requests: mpsc::UnboundedSender<LeaseKeepAliveRequest>,
    responses: Streaming<LeaseKeepAliveResponse>,
}

impl KeepAliveStream {
    pub fn new(channel: Channel) -> KeepAliveStream {
        KeepAliveStream {
            lease: LeaseClient::new(channel),
            open: None,
        }
    }

    /// Refreshes lease `id` and answers its new TTL. A lease the server does not know is an
    /// error, as etcd's clients treat a keep-alive answered with TTL 0.
    pub async fn refresh(&mut self, id: i64) -> Result<i64, Status> {
        let result = self.try_refresh(id).await;
        if result.is_err() {
            // The stream may be broken; the next refresh opens a new one.
            self.open = None;
        }
        let response = result?;
        if response.ttl <= 0 {
            return Err(Status::not_found(
                "lease keep-alive answered TTL 0 (lease not found)",
            ));
        }
        Ok(response.ttl)
    }

    async fn try_refresh(&mut self, id: i64) -> Result<LeaseKeepAliveResponse, Status> {
        let request = LeaseKeepAliveRequest { id };
        let open = match &mut self.open {
            Some(open) => {
                open.requests
                    .send(request)
                    .map_err(|_| Status::unavailable("keep-alive stream closed"))?;
                open
            }
            None => {
                // The first request goes into the stream before the call: a gRPC server may
                // send its response headers only with its first message, and the call waits for
                // those headers.
                let (requests, receiver) = mpsc::unbounded_channel();
                requests
                    .send(request)
                    .map_err(|_| Status::internal("keep-alive channel closed at once"))?;
                let responses = self
                    .lease
                    .lease_keep_alive(UnboundedReceiverStream::new(receiver))
                    .await?
                    .into_inner();
                self.open.insert(Open {
                    requests,
                    responses,
                })
            }
        };
        open.responses
            .message()
            .await?
            .ok_or_else(|| Status::unavailable("keep-alive stream ended"))
    }
}
