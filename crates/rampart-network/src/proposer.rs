//! Proposal batching: the leader's concurrent client writes go into Raft as few log entries.
//!
//! openraft makes each proposal wait for its entry's fsync on the leader before it takes the
//! next, so proposing every client request as an entry of its own caps the leader at one write
//! per fsync. The [`Proposer`] instead queues the requests and keeps at most
//! [`MAX_IN_FLIGHT`] proposals in Raft: while they are on their way, new requests gather in the
//! queue, and the next proposal carries all of them as one [`Command::Batch`] entry. Under light
//! load a request goes alone and at once; under heavy load one fsync (and one replication round)
//! serves every request that gathered, up to `MAX_BATCH`. This, not the log store, is what
//! spreads an fsync over many writes: each append's flush covers that append only.
//!
//! A batch entry is committed or not as a whole, so every request in it shares its fate: all get
//! the same [`ForwardError`] when it fails, and each its own response when it is applied.
//!
//! The queue is bounded by an [`Admission`] (requests and bytes, the member's
//! `--max-pending-writes` and `--max-pending-write-bytes`): a request that finds it full waits
//! briefly for room and is then refused with [`ForwardError::TooManyRequests`], never proposed.
//! A request holds its room until it is answered, so the bound covers the proposals in Raft too.

use std::sync::Arc;
use std::time::Duration;

use openraft::Raft;
use rampart_storage::{Command, CommandResult, TypeConfig};
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::admission::{Admission, AdmissionLimits, Admitted, ADMISSION_WAIT};
use crate::batching::{gather, Batched};
use crate::messages::{ForwardError, ForwardReply};
use crate::raft_calls::propose;
use crate::stats::NetworkStats;

/// Proposals in Raft at once; more requests wait in the queue and go in the next batch.
pub const MAX_IN_FLIGHT: usize = 2;
/// Most requests in one batch entry (and at most `MAX_BATCH_BYTES` of commands).
const MAX_BATCH: usize = 1024;
/// A request waiting to be proposed.
struct Pending {
    command: Command,
    reply: oneshot::Sender<ForwardReply>,
    /// Its room in the queue, given back once it is answered (or dropped unanswered).
    admitted: Admitted,
}

impl Batched for Pending {
    fn command(&self) -> &Command {
        &self.command
    }
}

/// Proposes commands on this node's Raft, batching concurrent ones. Cloning gives another handle
/// on the same queue.
#[derive(Clone)]
pub struct Proposer {
    queue: mpsc::UnboundedSender<Pending>,
    /// The bound of the queue (and of the proposals in Raft).
    admission: Admission,
}

impl Proposer {
    /// Starts the batching task; it ends when every handle is dropped. `timeout` bounds each
    /// proposal (callers have their own deadlines too); `limits` bound the requests waiting.
    pub fn start(
        raft: Raft<TypeConfig>,
        timeout: Duration,
        stats: Arc<NetworkStats>,
        limits: AdmissionLimits,
    ) -> Proposer {
        let (queue, requests) = mpsc::unbounded_channel();
        tokio::spawn(run(raft, requests, timeout, stats));
        Proposer {
            queue,
            admission: Admission::new(limits),
        }
    }

    /// Proposes `command` and waits until it is applied on this node, which must be the leader;
    /// the same contract as [`propose`]: [`ForwardError::NotLeader`] means it was surely not
    /// committed, [`ForwardError::TooManyRequests`] that it was never proposed, a timeout leaves
    /// the outcome unknown.
    pub async fn propose(&self, command: Command, timeout: Duration) -> ForwardReply {
        match self.enqueue(command, ADMISSION_WAIT).await {
            Ok(answer) => match tokio::time::timeout(timeout, answer).await {
                Ok(Ok(reply)) => reply,
                Ok(Err(_)) => Err(stopped()),
                Err(_) => Err(ForwardError::Timeout),
            },
            Err(refused) => Err(refused),
        }
    }

    /// Queues `command` once the queue has room for it, waiting at most `wait` (see
    /// [`Admission::admit`]).
    async fn enqueue(
        &self,
        command: Command,
        wait: Duration,
    ) -> Result<oneshot::Receiver<ForwardReply>, ForwardError> {
        let admitted = self
            .admission
            .admit(command.encoded_size(), wait)
            .await
            .ok_or(ForwardError::TooManyRequests)?;
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Pending {
                command,
                reply,
                admitted,
            })
            .map_err(|_| stopped())?;
        Ok(answer)
    }
}

fn stopped() -> ForwardError {
    ForwardError::Unavailable("the proposer has stopped".into())
}

impl Proposer {
    /// Proposes each of `commands` like [`Proposer::propose`], queued in order at once so that
    /// they can share batch entries, and returns their replies in order.
    pub async fn propose_many(
        &self,
        commands: Vec<Command>,
        timeout: Duration,
    ) -> Vec<ForwardReply> {
        // The commands share one wait for room: those that find none by then are refused.
        let admission_deadline = tokio::time::Instant::now() + ADMISSION_WAIT;
        let mut answers = Vec::with_capacity(commands.len());
        for command in commands {
            let wait = admission_deadline.saturating_duration_since(tokio::time::Instant::now());
            answers.push(self.enqueue(command, wait).await);
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let mut replies = Vec::with_capacity(answers.len());
        for answer in answers {
            replies.push(match answer {
                Err(refused) => Err(refused),
                Ok(answer) => match tokio::time::timeout_at(deadline, answer).await {
                    Err(_) => Err(ForwardError::Timeout),
                    Ok(Err(_)) => Err(stopped()),
                    Ok(Ok(reply)) => reply,
                },
            });
        }
        replies
    }
}

async fn run(
    raft: Raft<TypeConfig>,
    mut requests: mpsc::UnboundedReceiver<Pending>,
    timeout: Duration,
    stats: Arc<NetworkStats>,
) {
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    while let Some(first) = requests.recv().await {
        // Wait for room first: the requests arriving meanwhile join this batch.
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let (batch, _) = gather(first, || requests.try_recv().ok(), |_, _| true, MAX_BATCH);
        stats.proposal_batch.observe(batch.len() as f64);
        let raft = raft.clone();
        tokio::spawn(async move {
            propose_batch(&raft, batch, timeout).await;
            drop(permit);
        });
    }
}

/// Proposes `batch` as one entry (a lone command as itself) and answers each request.
async fn propose_batch(raft: &Raft<TypeConfig>, batch: Vec<Pending>, timeout: Duration) {
    // A caller that stopped waiting was told the outcome is unknown; leaving its command out
    // keeps that true.
    let mut batch: Vec<Pending> = batch.into_iter().filter(|p| !p.reply.is_closed()).collect();
    if batch.len() <= 1 {
        if let Some(only) = batch.pop() {
            let reply = propose(raft, only.command, timeout).await;
            let _ = only.reply.send(reply);
        }
        return;
    }
    let mut commands = Vec::with_capacity(batch.len());
    let mut replies = Vec::with_capacity(batch.len());
    // The requests keep their room until they are answered.
    let mut admitted = Vec::with_capacity(batch.len());
    for pending in batch {
        commands.push(pending.command);
        replies.push(pending.reply);
        admitted.push(pending.admitted);
    }
    let count = commands.len();
    match propose(raft, Command::Batch(commands), timeout).await {
        Ok((index, response)) => match response.result {
            Ok(CommandResult::Batch(responses)) if responses.len() == count => {
                for (reply, response) in replies.into_iter().zip(responses) {
                    // An error only means the caller stopped waiting.
                    let _ = reply.send(Ok((index, response)));
                }
            }
            other => {
                // Applied, but not answered as a batch: a bug; say so to every caller.
                tracing::error!(?other, "a batch entry was not answered as a batch");
                let error = ForwardError::Unavailable("a batch entry got no batch answer".into());
                for reply in replies {
                    let _ = reply.send(Err(error.clone()));
                }
            }
        },
        Err(error) => {
            for reply in replies {
                let _ = reply.send(Err(error.clone()));
            }
        }
    }
    drop(admitted);
}
