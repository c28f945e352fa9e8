//! One watcher: the task that delivers a watch's events, in revision order, each revision whole,
//! none lost and none twice.
//!
//! The watcher alternates between two states, like etcd's unsynced and synced watcher groups:
//! - **catching up**: it reads the current revision `R` (its feed receiver already in place)
//!   and replays `[next, R]` from history, read in chunks of about [`HISTORY_CHUNK`] events and
//!   sent as etcd's unsynced watchers send, many revisions to a response (up to
//!   [`REPLAY_BATCH_REVISIONS`] or about [`REPLAY_BATCH_BYTES`]);
//! - **live**: it follows the store's feed, one message per applied revision, skipping those it
//!   already replayed. The revisions waiting in the feed when it wakes are handled together (at
//!   most [`MAX_LIVE_BATCH`] of them, or about [`LIVE_BATCH_BYTES`]): one response each, as
//!   etcd's synced watchers send, queued for the stream at once. On `Lagged` (it fell behind a
//!   full feed ring while its client was slow), on a revision whose events the feed dropped (it
//!   fell behind the feed's byte budget), on a `Reset` (a snapshot replaced the state) or on a
//!   gap in the feed's revisions, it catches up again from `next`.
//!
//! A watcher that asked for `prev_kv` holds the store's interest in its keys' previous values
//! for its whole life, registered as it subscribed: every revision it receives from the feed
//! carries them. The feed reads none for other watchers.
//!
//! History that was compacted past `next` cancels the watch with `compact_revision`, as etcd
//! cancels an unsynced watcher below the compact revision.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use prost::Message;
use rampart_api::etcdserverpb as pb;
use rampart_api::mvccpb;
use rampart_storage::{
    ApplyError, Event, EventKind, FedRevision, MvccError, PrevKvInterest, RevisionEvents, WatchFeed,
};
use tokio::sync::broadcast::{
    self,
    error::{RecvError, TryRecvError},
};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::shared::StreamShared;
use crate::convert;
use crate::error::ServerError;

/// About how many events one history read returns (whole revisions only), bounding what a
/// catching-up watcher holds at once.
const HISTORY_CHUNK: usize = 256;

/// A history replay sends the events of up to this many revisions in one response (etcd's
/// `watchBatchMaxRevs`), ...
const REPLAY_BATCH_REVISIONS: usize = 1000;

/// ... and of fewer once they take about this many bytes (a revision's events are never split
/// between responses, except by fragmenting when the client asks for it).
const REPLAY_BATCH_BYTES: usize = 1024 * 1024;

/// Replayed events waiting to go out in one response.
#[derive(Default)]
struct ReplayBatch {
    events: Vec<mvccpb::Event>,
    bytes: usize,
    revisions: usize,
}

/// At most how many revisions waiting in the feed a live watcher handles at once.
const MAX_LIVE_BATCH: usize = 64;

/// A live watcher stops adding revisions to a batch once their events take about this many
/// bytes, so that large values do not pile up in one watcher's hands (or one stream item).
const LIVE_BATCH_BYTES: usize = 1024 * 1024;

/// etcd's error for a create request whose range is empty (`mvcc.ErrEmptyWatcherRange`).
pub(super) const EMPTY_RANGE: &str = "mvcc: watcher range is empty";

/// A watch as its create request asked for it, normalized as etcd's `recvLoop` does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct WatchSpec {
    /// The first key; never empty (etcd watches `"\0"`, the smallest key, for an empty one).
    pub key: Vec<u8>,
    /// etcd's conventions: empty for the single key, `"\0"` for every key from `key` on.
    pub range_end: Vec<u8>,
    pub no_put: bool,
    pub no_delete: bool,
    pub prev_kv: bool,
    pub fragment: bool,
    pub progress_notify: bool,
}

impl WatchSpec {
    /// The watch `request` asks for, or the reason etcd refuses it.
    pub(crate) fn from_request(request: &pb::WatchCreateRequest) -> Result<WatchSpec, String> {
        use pb::watch_create_request::FilterType;
        let key = if request.key.is_empty() {
            vec![0]
        } else {
            request.key.clone()
        };
        let range_end = request.range_end.clone();
        if !range_end.is_empty() && range_end != [0] && key >= range_end {
            return Err(EMPTY_RANGE.to_string());
        }
        let mut spec = WatchSpec {
            key,
            range_end,
            no_put: false,
            no_delete: false,
            prev_kv: request.prev_kv,
            fragment: request.fragment,
            progress_notify: request.progress_notify,
        };
        for filter in &request.filters {
            // etcd ignores a filter it does not know.
            match FilterType::try_from(*filter) {
                Ok(FilterType::Noput) => spec.no_put = true,
                Ok(FilterType::Nodelete) => spec.no_delete = true,
                Err(_) => {}
            }
        }
        Ok(spec)
    }

    fn contains(&self, key: &[u8]) -> bool {
        match self.range_end.as_slice() {
            [] => key == self.key,
            [0] => key >= self.key.as_slice(),
            end => key >= self.key.as_slice() && key < end,
        }
    }

    /// Whether `event` is on this watch's keys and passes its filters.
    fn wants(&self, event: &Event) -> bool {
        let filtered = match event.kind {
            EventKind::Put => self.no_put,
            EventKind::Delete => self.no_delete,
        };
        !filtered && self.contains(&event.kv.key)
    }
}

/// Where a watcher stands, as its stream reads it to answer progress requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Progress {
    /// Replaying history: not synced, in etcd's terms.
    CatchingUp,
    /// Following the feed; every event up to this revision is queued for the client.
    Live(i64),
    /// Ended (canceled, compacted or failed): sends nothing more.
    Done,
}

/// A watcher's [`Progress`], shared with its stream.
pub(super) struct SharedProgress(AtomicI64);

impl SharedProgress {
    // Revisions are at least 1, so 0 and i64::MAX are free to mark the other states.
    const CATCHING_UP: i64 = 0;
    const DONE: i64 = i64::MAX;

    pub(super) fn new(progress: Progress) -> Self {
        let shared = SharedProgress(AtomicI64::new(Self::CATCHING_UP));
        shared.set(progress);
        shared
    }

    pub(super) fn get(&self) -> Progress {
        match self.0.load(Ordering::Acquire) {
            Self::CATCHING_UP => Progress::CatchingUp,
            Self::DONE => Progress::Done,
            revision => Progress::Live(revision),
        }
    }

    fn set(&self, progress: Progress) {
        let value = match progress {
            Progress::CatchingUp => Self::CATCHING_UP,
            Progress::Live(revision) => revision,
            Progress::Done => Self::DONE,
        };
        self.0.store(value, Ordering::Release);
    }
}

/// The watcher must end: its stream is over, it was canceled, or it can deliver no more.
struct Stop;

pub(super) struct Watcher {
    id: i64,
    spec: WatchSpec,
    shared: Arc<StreamShared>,
    /// Cancelled by the stream on a cancel request, or with the whole stream.
    token: CancellationToken,
    progress: Arc<SharedProgress>,
    /// The first revision whose events this watcher has not delivered yet.
    next: i64,
    /// The last revision this watcher has dealt with: all its wanted events up to here are
    /// queued for the client. Below `next - 1` only while a future start revision is awaited.
    seen: i64,
    /// Whether events were sent since the last progress tick (etcd elides the next progress
    /// notification of a watch that just sent events).
    sent_since_tick: bool,
    /// For a `prev_kv` watch: keeps the feed reading previous values on its keys while the
    /// watcher lives.
    _prev_kv: Option<PrevKvInterest>,
}

impl Watcher {
    /// A watcher that delivers from revision `next` on; `prev_kv` is the interest its feed was
    /// subscribed with, if the spec asks for previous values.
    pub(super) fn new(
        id: i64,
        spec: WatchSpec,
        shared: Arc<StreamShared>,
        token: CancellationToken,
        progress: Arc<SharedProgress>,
        next: i64,
        prev_kv: Option<PrevKvInterest>,
    ) -> Self {
        Watcher {
            id,
            spec,
            shared,
            token,
            progress,
            next,
            seen: 0,
            sent_since_tick: false,
            _prev_kv: prev_kv,
        }
    }

    /// Runs until the watch is canceled, its stream ends or it can deliver no more. `feed` must
    /// have been subscribed before the revision the create response named was read, with the
    /// watcher's `prev_kv` interest if it has one (see `Mvcc::subscribe_with_prev_kv`).
    pub(super) async fn run(mut self, mut feed: broadcast::Receiver<WatchFeed>) {
        let _ = self.follow(&mut feed).await;
        self.publish(Progress::Done);
    }

    async fn follow(&mut self, feed: &mut broadcast::Receiver<WatchFeed>) -> Result<(), Stop> {
        self.catch_up().await?;
        let interval = self.shared.progress_interval;
        let mut ticker = tokio::time::interval_at(Instant::now() + interval, interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.token.cancelled() => return Err(Stop),
                _ = ticker.tick(), if self.spec.progress_notify => self.tick().await?,
                received = feed.recv() => match received {
                    Ok(WatchFeed::Revision(revision)) => self.live(revision, feed).await?,
                    Ok(WatchFeed::Reset { revision }) => {
                        tracing::debug!(watch_id = self.id, revision, "store reset: replaying");
                        self.catch_up().await?
                    }
                    Err(RecvError::Lagged(missed)) => {
                        tracing::debug!(watch_id = self.id, missed, "fell behind the feed: replaying");
                        self.catch_up().await?
                    }
                    Err(RecvError::Closed) => return Err(Stop),
                },
            }
        }
    }

    /// One revision from the feed, with those already waiting behind it: a response for each
    /// that has wanted events, queued together.
    async fn live(
        &mut self,
        first: Arc<FedRevision>,
        feed: &mut broadcast::Receiver<WatchFeed>,
    ) -> Result<(), Stop> {
        let mut bytes = first.size();
        let mut batch = vec![first];
        let mut then_catch_up = false;
        while batch.len() < MAX_LIVE_BATCH && bytes < LIVE_BATCH_BYTES {
            match feed.try_recv() {
                Ok(WatchFeed::Revision(revision)) => {
                    bytes += revision.size();
                    batch.push(revision);
                }
                // What follows a reset or a gap in the ring comes from history, after the batch.
                Ok(WatchFeed::Reset { .. }) | Err(TryRecvError::Lagged(_)) => {
                    then_catch_up = true;
                    break;
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Closed) => return Err(Stop),
            }
        }
        let mut responses = Vec::new();
        let mut seen = self.seen;
        for revision in batch {
            let number = revision.revision();
            if number <= seen {
                continue; // already replayed from history
            }
            if number > seen + 1 {
                // The feed skipped revisions; history has them (and this one).
                then_catch_up = true;
                break;
            }
            if number >= self.next {
                let Some(events) = revision.events() else {
                    // The feed dropped its events to stay in its budget; history has them.
                    then_catch_up = true;
                    break;
                };
                responses.extend(self.responses(&events, number));
                self.next = number + 1;
            }
            seen = number;
        }
        self.send_events(responses).await?;
        if seen > self.seen {
            self.seen = seen;
            self.publish(Progress::Live(self.seen));
        }
        if then_catch_up {
            self.catch_up().await?;
        }
        Ok(())
    }

    /// Replays history from `next` up to the current revision, then counts as live there.
    async fn catch_up(&mut self) -> Result<(), Stop> {
        let mvcc = self.shared.node.mvcc().clone();
        // The feed receiver is already in place, so every revision after `target` will come
        // from it: nothing falls between the replay and the feed.
        let target = mvcc.revision();
        if self.next <= target {
            self.publish(Progress::CatchingUp);
        }
        let mut batch = ReplayBatch::default();
        while self.next <= target {
            let replayed = mvcc.events(
                self.next,
                target,
                &self.spec.key,
                &self.spec.range_end,
                HISTORY_CHUNK,
            );
            let (revisions, last) = match replayed {
                Ok(found) => found,
                Err(MvccError::Apply(ApplyError::Compacted)) => return Err(self.compacted().await),
                Err(e) => return Err(self.fail(e.into()).await),
            };
            if last < self.next {
                let stuck = ServerError::Internal(format!(
                    "history replay from revision {} made no progress",
                    self.next
                ));
                return Err(self.fail(stuck).await);
            }
            // As etcd's unsynced watchers, the header names the revision the replay reads to,
            // and one response carries many revisions' events.
            for revision in &revisions {
                let events = self.wanted(revision);
                if events.is_empty() {
                    continue;
                }
                let bytes: usize = events.iter().map(Message::encoded_len).sum();
                if !batch.events.is_empty()
                    && (batch.bytes + bytes > REPLAY_BATCH_BYTES
                        || batch.revisions >= REPLAY_BATCH_REVISIONS)
                {
                    self.flush_replay(&mut batch, target).await?;
                }
                batch.events.extend(events);
                batch.bytes += bytes;
                batch.revisions += 1;
            }
            self.next = last + 1;
            // A long replay shares the thread with other tasks.
            tokio::task::yield_now().await;
        }
        self.flush_replay(&mut batch, target).await?;
        self.seen = self.seen.max(target);
        self.publish(Progress::Live(self.seen));
        Ok(())
    }

    /// The events of `revision` this watch wants, as the client sees them.
    fn wanted(&self, revision: &RevisionEvents) -> Vec<mvccpb::Event> {
        revision
            .events
            .iter()
            .filter(|e| self.spec.wants(e))
            .map(|e| convert::event(e, self.spec.prev_kv))
            .collect()
    }

    /// The response carrying the wanted events of `revision` (or its fragments); none if the
    /// watch filters them all out, as etcd sends nothing then.
    fn responses(&self, revision: &RevisionEvents, header_revision: i64) -> Vec<pb::WatchResponse> {
        self.response_of(self.wanted(revision), header_revision)
    }

    /// One response with `events` (or its fragments); none without events.
    fn response_of(
        &self,
        events: Vec<mvccpb::Event>,
        header_revision: i64,
    ) -> Vec<pb::WatchResponse> {
        if events.is_empty() {
            return Vec::new();
        }
        let mut response = self.shared.response(self.id, header_revision);
        response.events = events;
        if self.spec.fragment {
            fragments(response, self.shared.fragment_limit)
        } else {
            vec![response]
        }
    }

    /// Sends the replayed events gathered in `batch`, if any, and empties it.
    async fn flush_replay(&mut self, batch: &mut ReplayBatch, target: i64) -> Result<(), Stop> {
        let events = std::mem::take(&mut batch.events);
        *batch = ReplayBatch::default();
        let responses = self.response_of(events, target);
        self.send_events(responses).await
    }

    /// Queues event `responses`, if any, for the client.
    async fn send_events(&mut self, responses: Vec<pb::WatchResponse>) -> Result<(), Stop> {
        if responses.is_empty() {
            return Ok(());
        }
        self.send(responses).await?;
        self.sent_since_tick = true;
        Ok(())
    }

    /// A progress tick: a watch that sent no events since the last one hears how far it is.
    /// Only live watchers get here (catching up runs to completion between ticks), as etcd
    /// sends progress notifications to synced watchers only.
    async fn tick(&mut self) -> Result<(), Stop> {
        if std::mem::replace(&mut self.sent_since_tick, false) {
            return Ok(());
        }
        let notification = self.shared.response(self.id, self.seen);
        self.send(vec![notification]).await
    }

    /// Cancels the watch because history no longer reaches back to `next`.
    async fn compacted(&mut self) -> Stop {
        let mvcc = self.shared.node.mvcc();
        let mut response = self.shared.response(self.id, mvcc.revision());
        response.canceled = true;
        response.compact_revision = mvcc.compact_revision();
        let _ = self.send(vec![response]).await;
        Stop
    }

    /// Cancels the watch because storage failed, saying why.
    async fn fail(&mut self, error: ServerError) -> Stop {
        tracing::error!(watch_id = self.id, "watch canceled: {error}");
        let mut response = self
            .shared
            .response(self.id, self.shared.node.mvcc().revision());
        response.canceled = true;
        response.cancel_reason = error.to_string();
        let _ = self.send(vec![response]).await;
        Stop
    }

    async fn send(&self, responses: Vec<pb::WatchResponse>) -> Result<(), Stop> {
        if self.shared.send(&self.token, responses).await {
            Ok(())
        } else {
            Err(Stop)
        }
    }

    fn publish(&self, progress: Progress) {
        self.progress.set(progress);
        self.shared.progressed.notify_one();
    }
}

/// etcd's `sendFragments`: a response encoded at `limit` bytes or more, with at least two
/// events, is split into responses of as many events as stay under `limit` (at least one each),
/// all but the last marked `fragment`. Clients join them back up.
pub(super) fn fragments(response: pb::WatchResponse, limit: usize) -> Vec<pb::WatchResponse> {
    if response.encoded_len() < limit || response.events.len() < 2 {
        return vec![response];
    }
    let mut events = response.events;
    let template = pb::WatchResponse {
        events: Vec::new(),
        fragment: true,
        ..response
    };
    let base = template.encoded_len();
    let mut out = Vec::new();
    let mut current = template.clone();
    let mut size = base;
    for event in events.drain(..) {
        let added = prost::encoding::message::encoded_len(11, &event);
        if !current.events.is_empty() && size + added >= limit {
            out.push(std::mem::replace(&mut current, template.clone()));
            size = base;
        }
        size += added;
        current.events.push(event);
    }
    current.fragment = false;
    out.push(current);
    out
}

#[cfg(test)]
mod tests {
    use rampart_api::mvccpb;

    use super::*;

    fn event(key: &str, value_len: usize) -> mvccpb::Event {
        mvccpb::Event {
            r#type: 0,
            kv: Some(mvccpb::KeyValue {
                key: key.into(),
                value: vec![b'x'; value_len],
                ..Default::default()
            }),
            prev_kv: None,
        }
    }

    fn response(events: Vec<mvccpb::Event>) -> pb::WatchResponse {
        pb::WatchResponse {
            watch_id: 7,
            events,
            ..Default::default()
        }
    }

    #[test]
    fn small_or_single_event_responses_stay_whole() {
        let small = response(vec![event("a", 10), event("b", 10)]);
        assert_eq!(fragments(small.clone(), 1000), vec![small]);
        let single = response(vec![event("a", 5000)]);
        assert_eq!(fragments(single.clone(), 1000), vec![single]);
    }

    #[test]
    fn large_responses_split_in_order_with_the_last_unmarked() {
        let events: Vec<_> = (0..10).map(|i| event(&format!("k{i}"), 300)).collect();
        let parts = fragments(response(events.clone()), 1000);
        assert!(parts.len() > 1, "expected several fragments, got {parts:?}");
        for (i, part) in parts.iter().enumerate() {
            assert_eq!(part.fragment, i + 1 < parts.len());
            assert_eq!(part.watch_id, 7);
            assert!(!part.events.is_empty());
            assert!(part.events.len() == 1 || part.encoded_len() < 1000);
        }
        let joined: Vec<_> = parts.into_iter().flat_map(|p| p.events).collect();
        assert_eq!(joined, events);
    }

    #[test]
    fn specs_follow_etcd_conventions() {
        let request = |key: &str, end: &str| pb::WatchCreateRequest {
            key: key.into(),
            range_end: end.into(),
            filters: vec![1, 42],
            ..Default::default()
        };
        let empty_key = WatchSpec::from_request(&request("", "")).unwrap();
        assert_eq!(empty_key.key, vec![0]);
        assert!(empty_key.no_delete && !empty_key.no_put);
        assert_eq!(
            WatchSpec::from_request(&request("b", "a")),
            Err(EMPTY_RANGE.to_string())
        );
        let from_key = WatchSpec::from_request(&request("b", "\0")).unwrap();
        assert!(from_key.contains(b"zzz") && !from_key.contains(b"a"));
        let range = WatchSpec::from_request(&request("b", "d")).unwrap();
        assert!(range.contains(b"b") && range.contains(b"c\xff") && !range.contains(b"d"));
        let single = WatchSpec::from_request(&request("b", "")).unwrap();
        assert!(single.contains(b"b") && !single.contains(b"ba"));
    }
}
