//! The watch workload: put-to-event latency and events delivered per second.
//!
//! Phases: open `streams` watch streams and create `watchers` watchers on the key prefix,
//! spread round-robin over the streams, and wait until each is confirmed; then let the clients
//! put keys under the prefix on the run's schedule, each value carrying its send time; then
//! wait until every watcher has seen every successful put, or [`DRAIN_TIMEOUT`] has passed.
//! Each event's latency runs from the put's send time to the event's arrival; the puts
//! themselves are the run's requests.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rampart_api::etcdserverpb::kv_client::KvClient;
use rampart_api::etcdserverpb::watch_client::WatchClient;
use rampart_api::etcdserverpb::watch_request::RequestUnion;
use rampart_api::etcdserverpb::{PutRequest, WatchCreateRequest, WatchRequest, WatchResponse};
use rampart_api::mvccpb::event::EventType;
use rand::rngs::StdRng;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::{Status, Streaming};

use crate::config::Config;
use crate::connect::Connections;
use crate::driver::{drive, Run, Worker};
use crate::error::in_step;
use crate::keys::KeySpace;
use crate::payload;
use crate::stats::Recorder;

/// How long watchers may take to confirm their creation.
const CREATE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long after the last put the watchers may take to deliver the events still due; events
/// missing after that are counted as errors.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// What every stream's receiver shares with the run.
struct Delivery {
    /// Events received with a send time, over all watchers.
    events: AtomicU64,
    /// Signalled after each response that carried events.
    arrived: Notify,
}

pub async fn run(config: &Config, conns: &Connections, origin: Instant) -> Run {
    let started = Instant::now();
    let delivery = Arc::new(Delivery {
        events: AtomicU64::new(0),
        arrived: Notify::new(),
    });
    let stop = CancellationToken::new();

    // Phase 1: the watchers.
    let mut setup = Recorder::new(origin);
    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    for stream in 0..config.streams {
        let watchers = watchers_on_stream(stream, config.watchers, config.streams);
        match open_stream(conns.channel(stream), &config.keys, watchers).await {
            Ok((sender, responses)) => {
                senders.push(sender);
                receivers.push(tokio::spawn(receive(
                    responses,
                    origin,
                    delivery.clone(),
                    stop.clone(),
                )));
            }
            Err(status) => setup.record_error(&status),
        }
    }
    if setup.error_count() > 0 {
        // Without every watcher the counts would mean nothing; report why instead.
        stop.cancel();
        merge_receivers(&mut setup, receivers).await;
        return Run {
            recorder: setup,
            started,
            elapsed: started.elapsed(),
        };
    }

    // Phase 2: the writers.
    let writers = (0..config.clients)
        .map(|client| WatchPutWorker::new(config, client, conns.channel(client)))
        .collect();
    let mut run = drive(writers, config.pace, config.stop, origin, "watch").await;

    // Phase 3: the events still on their way.
    let expected = run.recorder.ops().count() * config.watchers as u64;
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    while delivery.events.load(Ordering::Relaxed) < expected {
        // notify_one stores a permit when nobody waits, so an arrival between the check and
        // this wait is not lost.
        if tokio::time::timeout_at(deadline, delivery.arrived.notified())
            .await
            .is_err()
        {
            break;
        }
    }
    stop.cancel();
    drop(senders);
    merge_receivers(&mut run.recorder, receivers).await;

    let delivered = delivery.events.load(Ordering::Relaxed);
    let recorder = &mut run.recorder;
    recorder.add("watchers", config.watchers as u64);
    recorder.add("streams", config.streams as u64);
    recorder.add("events_expected", expected);
    recorder.add("events_delivered", delivered);
    if delivered < expected {
        recorder.record_error_kind(
            format!(
                "watch events not delivered within {}s of the last put",
                DRAIN_TIMEOUT.as_secs()
            ),
            expected - delivered,
        );
    }
    run
}

/// How many of `watchers` go on stream `stream` of `streams` (round-robin).
fn watchers_on_stream(stream: usize, watchers: usize, streams: usize) -> usize {
    watchers / streams + usize::from(stream < watchers % streams)
}

type WatchStream = (
    mpsc::UnboundedSender<WatchRequest>,
    Streaming<WatchResponse>,
);

/// Opens a watch stream and creates `watchers` watchers on the key prefix, waiting until the
/// server has confirmed each. The sender must be kept: dropping it ends the stream.
async fn open_stream(
    channel: Channel,
    keys: &KeySpace,
    watchers: usize,
) -> Result<WatchStream, Status> {
    let (sender, receiver) = mpsc::unbounded_channel();
    for _ in 0..watchers {
        let create = WatchCreateRequest {
            key: keys.prefix().to_vec(),
            range_end: keys.range_end(),
            ..Default::default()
        };
        // The receiver is alive (held above), so the send cannot fail.
        let _ = sender.send(WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(create)),
        });
    }
    // The create requests are queued before the call: a gRPC server may send its response
    // headers only with its first message, and the call waits for those headers.
    let mut responses = WatchClient::new(channel)
        .watch(UnboundedReceiverStream::new(receiver))
        .await
        .map_err(in_step("watch"))?
        .into_inner();
    let mut created = 0;
    while created < watchers {
        let response = tokio::time::timeout(CREATE_TIMEOUT, responses.message())
            .await
            .map_err(|_| Status::deadline_exceeded("watch creation not confirmed in time"))??
            .ok_or_else(|| Status::unavailable("watch stream ended during creation"))?;
        if response.canceled {
            return Err(Status::failed_precondition(format!(
                "watch canceled at creation: {}",
                response.cancel_reason
            )));
        }
        if response.created {
            created += 1;
        }
    }
    Ok((sender, responses))
}

/// Receives one stream's events until the stream ends or `stop` is cancelled, recording each
/// event's latency as part `event`.
async fn receive(
    mut responses: Streaming<WatchResponse>,
    origin: Instant,
    delivery: Arc<Delivery>,
    stop: CancellationToken,
) -> Recorder {
    let mut recorder = Recorder::new(origin);
    loop {
        let message = tokio::select! {
            _ = stop.cancelled() => break,
            message = responses.message() => message,
        };
        let response = match message {
            Ok(Some(response)) => response,
            Ok(None) => break,
            Err(status) => {
                recorder.record_error(&status);
                break;
            }
        };
        if response.canceled {
            recorder.record_error_kind(format!("watch canceled: {}", response.cancel_reason), 1);
            continue;
        }
        let now = payload::now_nanos();
        let mut events = 0;
        for event in &response.events {
            if event.r#type != EventType::Put as i32 {
                continue;
            }
            let sent = event
                .kv
                .as_ref()
                .and_then(|kv| payload::read_timestamp(&kv.value));
            if let Some(sent) = sent {
                recorder.record_part_latency("event", payload::latency_since(sent, now));
                events += 1;
            }
        }
        if events > 0 {
            delivery.events.fetch_add(events, Ordering::Relaxed);
            delivery.arrived.notify_one();
        }
    }
    recorder
}

async fn merge_receivers(into: &mut Recorder, receivers: Vec<JoinHandle<Recorder>>) {
    for receiver in receivers {
        match receiver.await {
            Ok(recorder) => into.merge(&recorder),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => into.record_error_kind(format!("watch receiver failed: {e}"), 1),
        }
    }
}

/// Puts random keys under the watched prefix, each value starting with its send time.
struct WatchPutWorker {
    kv: KvClient<Channel>,
    keys: KeySpace,
    rng: StdRng,
    value_size: usize,
}

impl WatchPutWorker {
    fn new(config: &Config, client: usize, channel: Channel) -> WatchPutWorker {
        WatchPutWorker {
            kv: KvClient::new(channel),
            keys: config.keys.clone(),
            rng: super::client_rng(config, client),
            value_size: config.value_size,
        }
    }
}

impl Worker for WatchPutWorker {
    async fn execute(&mut self, _seq: u64, _recorder: &mut Recorder) -> Result<(), Status> {
        let key = self.keys.random_key(&mut self.rng);
        let value = payload::timestamped_value(self.value_size, payload::now_nanos());
        self.kv
            .put(PutRequest {
                key,
                value,
                ..Default::default()
            })
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchers_spread_round_robin_over_streams() {
        let spread = |watchers, streams| {
            (0..streams)
                .map(|s| watchers_on_stream(s, watchers, streams))
                .collect::<Vec<_>>()
        };
        assert_eq!(spread(10, 3), [4, 3, 3]);
        assert_eq!(spread(4, 4), [1, 1, 1, 1]);
        assert_eq!(spread(1, 1), [1]);
        for (w, s) in [(1000, 7), (5, 2), (64, 64)] {
            assert_eq!(spread(w, s).iter().sum::<usize>(), w);
        }
    }
}
