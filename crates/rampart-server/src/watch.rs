//! Watch streams: one bidirectional stream carries many watches, served from this member's
//! applied state (no Raft round trip), as etcd's `v3rpc/watch.go` and `mvcc/watchable_store.go`.
//! The gRPC Watch service and in-process clients (`crate::client`) open streams alike, through
//! [`serve`].
//!
//! Layout: this file opens a stream and holds what the tasks of one stream share;
//! [`stream`] runs a stream (reads its requests, creates and cancels watchers, answers progress
//! requests); [`watcher`] runs one watcher (replays history, follows the live feed, filters,
//! fragments, sends periodic progress notifications).
//!
//! Tasks: one per stream and one per watcher. Every response goes through the stream's one
//! bounded channel, [`Outgoing`], whose items are sent whole and in order: the responses a
//! watcher makes of one revision (all its fragments) are one item, so nothing interleaves with a
//! fragmented revision, which etcd's clients rely on.
//!
//! Bounded memory: a watcher holds at most one history chunk (about 256 events, whole
//! revisions) or one batch of feed revisions (about 1 MiB of events) in hand. It follows the
//! store's live feed (`rampart_storage::WatchFeed`: a broadcast ring of `WATCH_FEED_CAPACITY`
//! revisions shared by every subscriber, its events behind `Arc`s, so not copied per watcher,
//! and holding at most `WATCH_FEED_BUDGET` bytes of them); when its client does not read, the
//! channel fills, the watcher waits to send, and its feed receiver falls behind instead of
//! buffering: the feed drops the events of the oldest revisions once past its byte budget (and
//! the ring overwrites the oldest messages once full), and the watcher, when it reads such a
//! revision (or gets `Lagged`), replays from history, from the first revision it has not
//! delivered, as etcd's unsynced watchers do. So a slow client costs its stream at most
//! [`OUTGOING_CAPACITY`] queued items (each one watcher's responses for one batch of
//! revisions, like etcd's per-stream buffer) plus a chunk per watcher, costs the feed at most
//! its budget, and never slows the feed, apply or any other stream. Nothing is dropped
//! silently: a watcher that history can no longer serve (compacted past what it needs) is
//! canceled with `compact_revision`, as etcd cancels it.
//!
//! Ending: the stream's tasks share a cancellation token, a child of the node's shutdown token.
//! It is cancelled when the client goes away (its request stream fails, or the response stream
//! is dropped), and when the node stops: the response stream then ends at once with etcd's
//! "server stopped" (`Unavailable`), so the server's graceful drain does not wait on watches.

mod shared;
mod stream;
mod watcher;

use std::hash::{BuildHasher, Hasher};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use rampart_api::etcdserverpb as pb;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use crate::auth::Caller;
use crate::error::ServerError;
use crate::node::Node;
use shared::{Outgoing, StreamShared};
pub(crate) use watcher::WatchSpec;

/// How many items (a control response, or one watcher's responses for one revision) a stream
/// may have queued for its client before its tasks wait. etcd buffers 128 events and 128
/// control responses per stream.
const OUTGOING_CAPACITY: usize = 256;

/// etcd's floor on the progress notification interval (`minWatchProgressInterval`).
const MIN_PROGRESS_INTERVAL: Duration = Duration::from_millis(100);

/// The responses of one watch stream, in order; it ends with etcd's "server stopped" when the
/// node stops.
pub type Responses = Pin<Box<dyn Stream<Item = Result<pb::WatchResponse, ServerError>> + Send>>;

/// Opens a watch stream on `node` fed by `requests` (creates, cancels, progress requests), until
/// `requests` fails, the returned responses are dropped, or `shutdown` is cancelled.
pub fn serve<R, E>(
    node: Arc<Node>,
    shutdown: &CancellationToken,
    caller: Caller,
    requests: R,
) -> Responses
where
    R: Stream<Item = Result<pb::WatchRequest, E>> + Unpin + Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    let (out, outgoing) = mpsc::channel(OUTGOING_CAPACITY);
    let config = node.config();
    let shared = Arc::new(StreamShared {
        out,
        token: shutdown.child_token(),
        progressed: Notify::new(),
        fragment_limit: config.max_grpc_message_bytes(),
        progress_interval: jittered(
            config
                .watch_progress_notify_interval
                .max(MIN_PROGRESS_INTERVAL),
        ),
        node,
        caller,
    });
    tokio::spawn(stream::run(shared, requests));
    responses(outgoing, shutdown.clone())
}

/// `interval` plus up to a tenth more, as etcd adds, so that streams opened together (say, by a
/// restarted client) do not all get their progress notifications at the same moment.
fn jittered(interval: Duration) -> Duration {
    // A randomly keyed hasher is randomness enough for spreading timers.
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let tenth = (interval.as_nanos() / 10).max(1);
    interval + Duration::from_nanos((u128::from(random) % tenth) as u64)
}

/// The response stream: the items of `outgoing`, flattened, until every sender is gone; or, once
/// the node stops, etcd's "server stopped" at once, dropping whatever was still queued.
fn responses(outgoing: mpsc::Receiver<Outgoing>, shutdown: CancellationToken) -> Responses {
    let items = futures::stream::unfold(
        (outgoing, shutdown, false),
        |(mut outgoing, shutdown, stopped)| async move {
            if stopped {
                return None;
            }
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    let stop: Vec<Result<pb::WatchResponse, ServerError>> =
                        vec![Err(ServerError::Stopped)];
                    Some((stop, (outgoing, shutdown, true)))
                }
                item = outgoing.recv() => {
                    let item = item?.into_iter().map(Ok).collect();
                    Some((item, (outgoing, shutdown, false)))
                }
            }
        },
    );
    Box::pin(items.flat_map(futures::stream::iter))
}
