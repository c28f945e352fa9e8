//! Forwarding batching: a follower's concurrent client writes go to the leader in few calls.
//!
//! Each write a follower receives must be proposed on the leader. One `Forward` call per write
//! costs both members a gRPC request of its own; under load that is a large share of their CPU.
//! The [`Forwarder`] queues the writes and keeps at most [`MAX_IN_FLIGHT_CALLS`] calls to the
//! leader open: the writes that gather meanwhile go in the next `ForwardBatch` call, which
//! answers each of them on its own. A call that fails fails for every write in it, with the
//! same [`CallError`] each would have had alone, so the caller's retry rules do not change.

use std::sync::Arc;
use std::time::Duration;

use rampart_storage::{Command, NodeId, PeerNode};
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::batching::{gather, Batched};
use crate::messages::ForwardReply;
use crate::peer_network::{CallError, PeerNetwork};

/// `ForwardBatch` calls open at once; more writes wait in the queue and go in the next call.
const MAX_IN_FLIGHT_CALLS: usize = 4;

impl Batched for Pending {
    fn command(&self) -> &Command {
        &self.command
    }
}

/// Most writes in one call (and at most `MAX_BATCH_BYTES` of commands).
const MAX_BATCH: usize = 512;

/// What a forwarded write gets back: the leader's reply, or why the call got none.
pub type Forwarded = Result<ForwardReply, CallError>;

/// A write waiting to be forwarded.
struct Pending {
    leader: NodeId,
    node: PeerNode,
    command: Command,
    reply: oneshot::Sender<Forwarded>,
}

/// Forwards commands to the leader, batching concurrent ones. Cloning gives another handle on
/// the same queue.
#[derive(Clone)]
pub struct Forwarder {
    queue: mpsc::UnboundedSender<Pending>,
}

impl Forwarder {
    /// Starts the batching task; it ends when every handle is dropped. `timeout` bounds each
    /// call (callers have their own deadlines too).
    pub fn start(network: PeerNetwork, timeout: Duration) -> Forwarder {
        let (queue, requests) = mpsc::unbounded_channel();
        tokio::spawn(run(network, requests, timeout));
        Forwarder { queue }
    }

    /// Asks the leader `leader` to propose `command` and answer once it is applied there: the
    /// same contract as [`PeerNetwork::forward`]. Gives up with [`CallError::Timeout`] after
    /// `timeout`, when the outcome is unknown.
    pub async fn forward(
        &self,
        leader: NodeId,
        node: PeerNode,
        command: Command,
        timeout: Duration,
    ) -> Forwarded {
        let (reply, answer) = oneshot::channel();
        let stopped = || CallError::NotSent {
            target: leader,
            reason: "the forwarder has stopped".into(),
        };
        self.queue
            .send(Pending {
                leader,
                node,
                command,
                reply,
            })
            .map_err(|_| stopped())?;
        match tokio::time::timeout(timeout, answer).await {
            Err(_) => Err(CallError::Timeout {
                target: leader,
                timeout,
            }),
            Ok(Err(_)) => Err(stopped()),
            Ok(Ok(forwarded)) => forwarded,
        }
    }
}

async fn run(
    network: PeerNetwork,
    mut requests: mpsc::UnboundedReceiver<Pending>,
    timeout: Duration,
) {
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT_CALLS));
    // A write for another leader than the batch being gathered waits here for the next one.
    let mut held: Option<Pending> = None;
    loop {
        let first = match held.take() {
            Some(pending) => pending,
            None => match requests.recv().await {
                Some(pending) => pending,
                None => return,
            },
        };
        // Wait for room first: the writes arriving meanwhile join this call.
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let (batch, other_leader) = gather(
            first,
            || requests.try_recv().ok(),
            |first, next| next.leader == first.leader,
            MAX_BATCH,
        );
        held = other_leader;
        let network = network.clone();
        tokio::spawn(async move {
            forward_batch(&network, batch, timeout).await;
            drop(permit);
        });
    }
}

/// Sends `batch` to its leader (a lone write as a plain `Forward`) and answers each write.
async fn forward_batch(network: &PeerNetwork, batch: Vec<Pending>, timeout: Duration) {
    // A caller that stopped waiting was told the outcome is unknown; leaving its command out
    // keeps that true.
    let mut batch: Vec<Pending> = batch.into_iter().filter(|p| !p.reply.is_closed()).collect();
    let Some(first) = batch.first() else {
        return;
    };
    let (leader, node) = (first.leader, first.node.clone());
    if batch.len() == 1 {
        if let Some(only) = batch.pop() {
            let forwarded = network.forward(leader, &node, &only.command, timeout).await;
            let _ = only.reply.send(forwarded);
        }
        return;
    }
    let (commands, replies): (Vec<Command>, Vec<oneshot::Sender<Forwarded>>) =
        batch.into_iter().map(|p| (p.command, p.reply)).unzip();
    match network
        .forward_batch(leader, &node, &commands, timeout)
        .await
    {
        Ok(answers) if answers.len() == replies.len() => {
            for (reply, answer) in replies.into_iter().zip(answers) {
                // An error only means the caller stopped waiting.
                let _ = reply.send(Ok(answer));
            }
        }
        Ok(answers) => {
            // The leader answered, but not once per write: a bug; the writes may have been
            // carried out, so each caller hears the outcome is unknown.
            tracing::error!(
                sent = replies.len(),
                answered = answers.len(),
                "a forwarded batch got the wrong number of answers"
            );
            let error = CallError::Unreachable {
                target: leader,
                reason: "the leader's answer to a forwarded batch did not match it".into(),
            };
            for reply in replies {
                let _ = reply.send(Err(error.clone()));
            }
        }
        Err(error) => {
            for reply in replies {
                let _ = reply.send(Err(error.clone()));
            }
        }
    }
}
