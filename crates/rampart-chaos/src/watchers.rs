//! The watchers: etcd Watch clients that follow a key prefix from a start revision through
//! the faults, recording every event they receive as a [`WatchedEvent`].
//!
//! A watcher keeps one watch stream (a *session*) open on one member at a time. When the
//! stream breaks (the member was killed, the connection lost), stalls (a paused member
//! answers nothing; the watcher asks for a progress notification every second and gives up
//! after three silent ones), or when the watcher moves on by plan every few seconds, it opens
//! a new session on another member from one past the last revision it received, as etcd's
//! clients resume. It never filters what arrives: duplicates, gaps and disorder are for the
//! checker ([`crate::watch_check`]) to find.
//!
//! A watcher is done once the run names its end revision and a progress notification confirms
//! every event up to it was delivered. The reference watch is a watcher too: started after the
//! faults, on a healed cluster, from the same start revision.

use std::time::Duration;

use rampart_api::etcdserverpb as pb;
use rampart_api::etcdserverpb::watch_client::WatchClient;
use rampart_api::mvccpb;
use rampart_api::prefix_range_end;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;

use crate::cluster::stream_channel;
use crate::history::{Clock, EventKind, WatchSession, WatchedEvent, WatcherLog};
use crate::workload::describe;

/// How long opening a watch stream may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(2);

/// How often a watcher asks for a progress notification: its heartbeat, and how it learns how
/// far it is complete.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// A stream on which nothing arrives for this long, progress requests notwithstanding, is
/// taken for broken (a paused member keeps its connections but answers nothing).
const STALL: Duration = Duration::from_secs(3);

/// How long a watcher stays on one member before it moves on by plan (so that even a run
/// without faults resumes watches), in milliseconds.
const STAY_MS: std::ops::Range<u64> = 2_000..8_000;

/// How long a watcher may take to confirm the end revision once it is named.
const FINISH_TIMEOUT: Duration = Duration::from_secs(30);

/// The id the reference watch records under, apart from the watchers'.
pub const REFERENCE_ID: u32 = 1000;

/// The revision every watcher must reach: `None` until the run knows it.
pub type EndRevision = watch::Receiver<Option<i64>>;

/// What one watcher follows.
#[derive(Clone, Debug)]
pub struct WatcherOptions {
    pub id: u32,
    pub prefix: String,
    /// The revision its first session starts from.
    pub start_revision: i64,
    /// The reference watch: stays on its member unless the stream breaks.
    pub reference: bool,
    /// Seeds the watcher's choices of member and of when to move.
    pub seed: u64,
}

/// Follows `options.prefix` on the members at `urls` until a progress notification confirms
/// the end revision (once `end` names it), or [`FINISH_TIMEOUT`] after it was named, or the
/// run drops `end` without naming one. Returns everything received.
pub async fn follow(
    urls: Vec<String>,
    options: WatcherOptions,
    clock: Clock,
    end: EndRevision,
) -> WatcherLog {
    let mut watcher = Watcher {
        rng: StdRng::seed_from_u64(
            options
                .seed
                .wrapping_add(u64::from(options.id + 1).wrapping_mul(0xd1b5_4a32_d192_ed03)),
        ),
        endpoint: options.id as usize % urls.len(),
        urls,
        clock,
        next: options.start_revision,
        end,
        end_open: true,
        finish_by: None,
        log: WatcherLog {
            watcher: options.id,
            reference: options.reference,
            prefix: options.prefix.clone(),
            start_revision: options.start_revision,
            complete_through: 0,
            sessions: Vec::new(),
            events: Vec::new(),
        },
        options,
    };
    watcher.run().await;
    watcher.log
}

struct Watcher {
    options: WatcherOptions,
    rng: StdRng,
    urls: Vec<String>,
    /// The member of the current (or next) session.
    endpoint: usize,
    clock: Clock,
    /// One past the highest revision received: where the next session starts.
    next: i64,
    end: EndRevision,
    /// False once the run dropped its end of `end`.
    end_open: bool,
    /// Set when the end revision is named: the watcher stops trying then.
    finish_by: Option<Instant>,
    log: WatcherLog,
}

/// Why a session ended, and whether the server canceled the watch.
struct Ended {
    reason: String,
    canceled: Option<String>,
}

impl Ended {
    fn because(reason: impl Into<String>) -> Ended {
        Ended {
            reason: reason.into(),
            canceled: None,
        }
    }
}

impl Watcher {
    async fn run(&mut self) {
        loop {
            self.look_at_end();
            if self.done() {
                return;
            }
            let opened = self.clock.now();
            let started = Instant::now();
            let from = self.next;
            let endpoint = self.endpoint;
            let ended = self.session().await;
            tracing::debug!(
                watcher = self.options.id,
                endpoint,
                from,
                "watch session ended: {}",
                ended.reason
            );
            self.log.sessions.push(WatchSession {
                endpoint,
                from,
                opened,
                closed: self.clock.now(),
                ended: ended.reason,
                canceled: ended.canceled,
            });
            if self.done() {
                return;
            }
            if self.urls.len() > 1 {
                let step = self.rng.gen_range(1..self.urls.len());
                self.endpoint = (self.endpoint + step) % self.urls.len();
            }
            if started.elapsed() < Duration::from_millis(500) {
                // The member is down or refused: do not spin through the members.
                tokio::time::sleep(Duration::from_millis(self.rng.gen_range(100..300))).await;
            }
        }
    }

    /// The end revision, once named.
    fn end_revision(&self) -> Option<i64> {
        *self.end.borrow()
    }

    /// Notes that the end revision was named (starting the finish deadline), or that it never
    /// will be.
    fn look_at_end(&mut self) {
        if self.finish_by.is_none() && self.end_revision().is_some() {
            self.finish_by = Some(Instant::now() + FINISH_TIMEOUT);
        }
    }

    /// Whether there is nothing more to do: the end revision confirmed, or out of time.
    fn done(&self) -> bool {
        match self.end_revision() {
            Some(end) => {
                self.log.complete_through >= end
                    || self.finish_by.is_some_and(|by| Instant::now() >= by)
            }
            None => !self.end_open,
        }
    }

    /// One watch stream on `self.endpoint`, from `self.next`, until it breaks, stalls, is
    /// left by plan, or the watcher is done.
    async fn session(&mut self) -> Ended {
        let session = self.log.sessions.len() as u32;
        let url = &self.urls[self.endpoint];
        let channel = match stream_channel(url, OPEN_TIMEOUT) {
            Ok(channel) => channel,
            Err(e) => return Ended::because(format!("bad URL {url}: {e:#}")),
        };
        let mut client = WatchClient::new(channel);
        let (requests, outgoing) = mpsc::channel(4);
        let create = pb::WatchRequest {
            request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
                pb::WatchCreateRequest {
                    key: self.options.prefix.as_bytes().to_vec(),
                    range_end: prefix_range_end(self.options.prefix.as_bytes()),
                    start_revision: self.next,
                    ..Default::default()
                },
            )),
        };
        // The channel is new and has room.
        let _ = requests.try_send(create);
        let opened =
            tokio::time::timeout(OPEN_TIMEOUT, client.watch(ReceiverStream::new(outgoing))).await;
        let mut responses = match opened {
            Err(_) => return Ended::because(format!("no answer within {OPEN_TIMEOUT:?}")),
            Ok(Err(status)) => return Ended::because(format!("refused: {}", describe(&status))),
            Ok(Ok(response)) => response.into_inner(),
        };
        let progress_request = pb::WatchRequest {
            request_union: Some(pb::watch_request::RequestUnion::ProgressRequest(
                pb::WatchProgressRequest {},
            )),
        };
        // The first request goes out at once: a watch started after the end was named (the
        // reference) learns as soon as possible that it is done.
        let mut progress = tokio::time::interval(PROGRESS_EVERY);
        let mut heard = Instant::now();
        let mut move_at = self.plan_move();
        loop {
            self.look_at_end();
            if self.done() {
                return Ended::because("done: the end revision is confirmed, or out of time");
            }
            if self.end_revision().is_some() {
                // No more planned moves once the end is named: just finish.
                move_at = None;
            }
            tokio::select! {
                message = tokio::time::timeout_at(heard + STALL, responses.next()) => {
                    let response = match message {
                        Err(_) => return Ended::because(format!("stalled: nothing for {STALL:?}")),
                        Ok(None) => return Ended::because("the server ended the stream"),
                        Ok(Some(Err(status))) => {
                            return Ended::because(format!("stream error: {}", describe(&status)))
                        }
                        Ok(Some(Ok(response))) => response,
                    };
                    heard = Instant::now();
                    if let Some(ended) = self.receive(session, response) {
                        return ended;
                    }
                }
                _ = progress.tick() => {
                    // A full queue means the member is not reading: the stall check notices.
                    let _ = requests.try_send(progress_request.clone());
                }
                changed = self.end.changed(), if self.end_open => {
                    if changed.is_err() {
                        self.end_open = false;
                    } else {
                        // The end is named: ask at once how far this stream has got.
                        let _ = requests.try_send(progress_request.clone());
                    }
                }
                _ = sleep_until_some(move_at) => {
                    return Ended::because("moved on to another member, as planned");
                }
            }
        }
    }

    /// When to leave the member by plan: never for the reference watch.
    fn plan_move(&mut self) -> Option<Instant> {
        if self.options.reference {
            return None;
        }
        Some(Instant::now() + Duration::from_millis(self.rng.gen_range(STAY_MS)))
    }

    /// Records one response; `Some` if it ends the session.
    fn receive(&mut self, session: u32, response: pb::WatchResponse) -> Option<Ended> {
        if response.canceled {
            let reason = if response.compact_revision > 0 {
                format!(
                    "compacted: the oldest revision left is {} ({})",
                    response.compact_revision, response.cancel_reason
                )
            } else {
                format!("canceled: {:?}", response.cancel_reason)
            };
            return Some(Ended {
                reason: "the server canceled the watch".to_string(),
                canceled: Some(reason),
            });
        }
        if response.created {
            return None;
        }
        if response.events.is_empty() {
            // A progress notification: every event up to its revision was sent before it, on
            // this session; the earlier sessions delivered everything before this one's start.
            if let Some(header) = &response.header {
                self.log.complete_through = self.log.complete_through.max(header.revision);
            }
            return None;
        }
        let received = self.clock.now();
        for event in response.events {
            let kind = match mvccpb::event::EventType::try_from(event.r#type) {
                Ok(mvccpb::event::EventType::Delete) => EventKind::Delete,
                _ => EventKind::Put,
            };
            let kv = event.kv.unwrap_or_default();
            self.next = self.next.max(kv.mod_revision + 1);
            self.log.events.push(WatchedEvent {
                received,
                session,
                kind,
                key: String::from_utf8_lossy(&kv.key).into_owned(),
                value: String::from_utf8_lossy(&kv.value).into_owned(),
                revision: kv.mod_revision,
                lease: kv.lease,
            });
        }
        None
    }
}

/// Sleeps until `at`, or forever when there is none.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
