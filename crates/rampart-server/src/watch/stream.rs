//! One watch stream: the task that reads the client's requests and answers the control ones
//! (created, canceled, progress), in the order they came, as etcd's `serverWatchStream`.
//!
//! Ordering, which etcd's clients depend on:
//! - created responses go out in the order of the create requests (clients match them to their
//!   requests by order), each before any event of its watch: the stream queues it before it
//!   starts the watcher;
//! - a canceled response is the last message of its watch: the stream waits for the watcher's
//!   task to end before it queues it;
//! - a progress response (watch id -1) claims a revision every watcher of the stream has
//!   queued everything up to: the stream reads how far each has got only after they queued it.

use std::collections::HashMap;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use rampart_api::etcdserverpb as pb;
use rampart_storage::Access;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::shared::StreamShared;
use super::watcher::{Progress, SharedProgress, WatchSpec, Watcher};
use crate::error::ServerError;
use crate::node::Held;

/// A create request's `watch_id` that asks the server to choose (etcd's `AutoWatchID`).
const AUTO_WATCH_ID: i64 = 0;

/// The watch id of responses that belong to no watch (etcd's `InvalidWatchID`): refused creates
/// and stream-wide progress notifications.
const INVALID_WATCH_ID: i64 = -1;

/// etcd's `mvcc.ErrWatcherDuplicateID`.
const DUPLICATE_ID: &str = "mvcc: duplicate watch ID provided on the WatchStream";

/// A watcher as its stream holds it.
struct WatcherHandle {
    token: CancellationToken,
    task: JoinHandle<()>,
    progress: Arc<SharedProgress>,
    /// Counts the watcher in the member's `etcd_mvcc_watcher_total` while the stream holds it.
    _counted: Held,
}

/// How far a whole stream has delivered.
enum StreamProgress {
    /// Some watcher is catching up from history.
    Behind,
    /// No watcher that can still send.
    Idle,
    /// Every watcher has queued everything up to this revision.
    Through(i64),
}

/// A stream's watchers and the state of its requests.
struct WatchStream {
    shared: Arc<StreamShared>,
    /// By watch id. A watcher stays here until canceled, even once it has ended (compacted),
    /// so its id stays taken, as in etcd.
    watchers: HashMap<i64, WatcherHandle>,
    /// The next id to try for an automatic one; etcd 3.4/3.5 count up from 0 per stream,
    /// skipping ids in use.
    next_id: i64,
    /// A progress request waits for every watcher to be live (etcd 3.5's `deferredProgress`).
    progress_deferred: bool,
}

/// Serves one stream until the client goes away or the node stops, then stops its watchers.
/// `requests` are the client's: a gRPC stream's, or an in-process client's.
pub(super) async fn run<R, E>(shared: Arc<StreamShared>, mut requests: R)
where
    R: Stream<Item = Result<pb::WatchRequest, E>> + Unpin,
    E: std::fmt::Display,
{
    // However this task ends, every watcher of the stream ends with it.
    let _stop = shared.token.clone().drop_guard();
    let mut stream = WatchStream {
        shared: shared.clone(),
        watchers: HashMap::new(),
        next_id: 0,
        progress_deferred: false,
    };
    let mut requests_open = true;
    loop {
        tokio::select! {
            _ = shared.token.cancelled() => break,
            // The response stream was dropped: the client is gone.
            _ = shared.out.closed() => break,
            _ = shared.progressed.notified(), if stream.progress_deferred => {
                if !stream.answer_progress().await {
                    break;
                }
            }
            request = requests.next(), if requests_open => match request {
                Some(Ok(request)) => {
                    if !stream.handle(request).await {
                        break;
                    }
                }
                // A client that closes its side still gets its watches' events, as from etcd,
                // until it goes away.
                None => requests_open = false,
                Some(Err(status)) => {
                    tracing::debug!("watch stream ended: {status}");
                    break;
                }
            },
        }
    }
}

impl WatchStream {
    /// Handles one request; false once the stream is over.
    async fn handle(&mut self, request: pb::WatchRequest) -> bool {
        use pb::watch_request::RequestUnion;
        match request.request_union {
            Some(RequestUnion::CreateRequest(create)) => self.create(create).await,
            Some(RequestUnion::CancelRequest(cancel)) => self.cancel(cancel.watch_id).await,
            Some(RequestUnion::ProgressRequest(_)) => self.request_progress().await,
            // etcd ignores a request it does not know instead of ending the stream.
            None => true,
        }
    }

    async fn create(&mut self, request: pb::WatchCreateRequest) -> bool {
        if request.start_revision < 0 {
            // Current etcd refuses it (3.4/3.5 misread it as an old revision).
            return self.refuse(ServerError::Compacted.to_string()).await;
        }
        let spec = match WatchSpec::from_request(&request) {
            Ok(spec) => spec,
            Err(reason) => return self.refuse(reason).await,
        };
        // etcd's `isWatchPermitted`: read access to the whole range, or the create is refused
        // with the status's text as the reason.
        let auth = self.shared.node.mvcc().auth();
        if let Err(refused) = self.shared.caller.check(&auth, |auth, user| {
            auth.check_range(user, Access::Read, &request.key, &request.range_end)
        }) {
            let status = tonic::Status::from(refused);
            let reason = format!(
                "rpc error: code = {:?} desc = {}",
                status.code(),
                status.message()
            );
            return self.refuse(reason).await;
        }
        let id = if request.watch_id == AUTO_WATCH_ID {
            self.automatic_id()
        } else if self.watchers.contains_key(&request.watch_id) {
            return self.refuse(DUPLICATE_ID.to_string()).await;
        } else {
            request.watch_id
        };
        let mvcc = self.shared.node.mvcc();
        // Subscribe before reading the revision: every revision after it comes from the feed.
        let (feed, prev_kv) = if spec.prev_kv {
            let (feed, interest) = mvcc.subscribe_with_prev_kv(&spec.key, &spec.range_end);
            (feed, Some(interest))
        } else {
            (mvcc.subscribe(), None)
        };
        let revision = mvcc.revision();
        let next = match request.start_revision {
            0 => revision + 1,
            start => start,
        };
        let progress = Arc::new(SharedProgress::new(if next > revision {
            Progress::Live(revision)
        } else {
            Progress::CatchingUp
        }));

        let mut created = self.shared.response(id, revision);
        created.created = true;
        if !self.shared.send(&self.shared.token, vec![created]).await {
            return false;
        }
        let token = self.shared.token.child_token();
        let watcher = Watcher::new(
            id,
            spec,
            self.shared.clone(),
            token.clone(),
            progress.clone(),
            next,
            prev_kv,
        );
        let task = tokio::spawn(watcher.run(feed));
        self.watchers.insert(
            id,
            WatcherHandle {
                token,
                task,
                progress,
                _counted: Held::new(&self.shared.node.stats().watchers),
            },
        );
        true
    }

    /// etcd answers a create it refuses with created and canceled at once, and the reason.
    async fn refuse(&mut self, reason: String) -> bool {
        let revision = self.shared.node.mvcc().revision();
        let mut response = self.shared.response(INVALID_WATCH_ID, revision);
        response.created = true;
        response.canceled = true;
        response.cancel_reason = reason;
        self.shared.send(&self.shared.token, vec![response]).await
    }

    fn automatic_id(&mut self) -> i64 {
        while self.watchers.contains_key(&self.next_id) {
            self.next_id += 1;
        }
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    async fn cancel(&mut self, id: i64) -> bool {
        // etcd answers nothing for a watch the stream does not have.
        let Some(watcher) = self.watchers.remove(&id) else {
            return true;
        };
        watcher.token.cancel();
        // Once its task has ended, nothing of this watch can follow the canceled response.
        if let Err(e) = watcher.task.await {
            tracing::error!(watch_id = id, "watcher task failed: {e}");
        }
        let mut response = self.shared.response(id, self.shared.node.mvcc().revision());
        response.canceled = true;
        if !self.shared.send(&self.shared.token, vec![response]).await {
            return false;
        }
        // The canceled watch may have been all that held back a deferred progress request.
        if self.progress_deferred {
            return self.answer_progress().await;
        }
        true
    }

    async fn request_progress(&mut self) -> bool {
        // One answer serves every request made while it is pending, as in etcd.
        if self.progress_deferred {
            return true;
        }
        self.progress_deferred = true;
        self.answer_progress().await
    }

    /// Answers the pending progress request if every watcher is live; otherwise it stays
    /// pending until one moves. A stream with no watchers gets no answer, as from etcd.
    async fn answer_progress(&mut self) -> bool {
        match self.progress() {
            StreamProgress::Behind => true,
            StreamProgress::Idle => {
                self.progress_deferred = false;
                true
            }
            StreamProgress::Through(revision) => {
                self.progress_deferred = false;
                let notification = self.shared.response(INVALID_WATCH_ID, revision);
                self.shared
                    .send(&self.shared.token, vec![notification])
                    .await
            }
        }
    }

    /// How far every watcher has delivered. etcd answers with the current revision once all
    /// its watchers are synced; here a live watcher may still be a few feed messages behind the
    /// store, so the answer is the lowest revision every watcher has queued everything up to:
    /// perhaps a little older than etcd's, never one whose events are not all queued before it.
    fn progress(&self) -> StreamProgress {
        let mut through = None;
        for watcher in self.watchers.values() {
            match watcher.progress.get() {
                Progress::CatchingUp => return StreamProgress::Behind,
                Progress::Live(revision) => {
                    through = Some(through.map_or(revision, |t: i64| t.min(revision)))
                }
                Progress::Done => {}
            }
        }
        through.map_or(StreamProgress::Idle, StreamProgress::Through)
    }
}
