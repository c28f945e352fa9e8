//! What the tasks of one watch stream share: the node, the stream's one outgoing channel and
//! its cancellation token.

use std::sync::Arc;
use std::time::Duration;

use rampart_api::etcdserverpb as pb;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use crate::auth::Caller;
use crate::node::Node;

/// One item of a stream's outgoing channel: responses that reach the client back to back.
pub(super) type Outgoing = Vec<pb::WatchResponse>;

/// What the tasks of one stream share.
pub(super) struct StreamShared {
    pub(super) node: Arc<Node>,
    /// The stream's only way to its client; see [`Outgoing`].
    pub(super) out: mpsc::Sender<Outgoing>,
    /// Ends every task of the stream.
    pub(super) token: CancellationToken,
    /// Woken whenever a watcher's delivered revision moves, so that a progress request
    /// deferred until every watcher is synced is answered as soon as they are.
    pub(super) progressed: Notify,
    /// A revision's events encoded larger than this are split, for watches that asked for
    /// fragments. etcd compares with `--max-request-bytes` plus its gRPC overhead allowance.
    pub(super) fragment_limit: usize,
    /// How often a `progress_notify` watch hears of its progress when it has had no events.
    pub(super) progress_interval: Duration,
    /// Whose stream it is: each watch needs read access to its range (`crate::auth`).
    pub(super) caller: Caller,
}

impl StreamShared {
    /// Queues `responses` for the client; false if the client went away or `token` (the
    /// caller's: the stream's, or a watcher's child of it) was cancelled meanwhile, in which
    /// case the caller stops.
    pub(super) async fn send(&self, token: &CancellationToken, responses: Outgoing) -> bool {
        tokio::select! {
            _ = token.cancelled() => false,
            sent = self.out.send(responses) => sent.is_ok(),
        }
    }

    /// A response for `watch_id` with a header at `revision`.
    pub(super) fn response(&self, watch_id: i64, revision: i64) -> pb::WatchResponse {
        pb::WatchResponse {
            header: Some(self.node.header(revision)),
            watch_id,
            ..Default::default()
        }
    }
}
