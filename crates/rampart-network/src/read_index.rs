//! Batched read-index confirmation: concurrent linearizable reads share one quorum round.
//!
//! Every linearizable read needs a read index: the leader confirms with a quorum that it still
//! leads, then names the log index the read must wait for. One round per read costs every member
//! a heartbeat per read. A [`ReadIndexer`] instead runs one round at a time and answers every
//! request that arrived before that round began with the round's index; requests arriving while
//! it runs wait for the next one. That is as strong as a round of their own: the round starts
//! after each of its requests did, so anything acknowledged before a read began is covered by
//! the index the read gets (Raft thesis §6.4 allows exactly this batching).
//!
//! Followers batch the same way: their reads share one `ReadIndex` call to the leader, where
//! those calls join the leader's own rounds.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use openraft::{Raft, ServerState};
use parking_lot::Mutex;
use rampart_storage::{NodeId, PeerNode, TypeConfig};
use tokio::sync::{mpsc, oneshot};

use crate::messages::{ForwardError, ReadIndexReply};
use crate::peer_network::{CallError, PeerNetwork};
use crate::raft_calls::read_index;

/// Read indexes for this node's linearizable reads and for those followers forward to it.
/// Cloning gives another handle on the same rounds.
#[derive(Clone)]
pub struct ReadIndexer {
    /// Rounds on this node's own Raft (it must lead).
    local: Coalescer<(), ReadIndexReply>,
    /// Rounds of `ReadIndex` calls to a leader, one leader per round.
    remote: Coalescer<(NodeId, PeerNode), ReadIndexReply>,
}

impl ReadIndexer {
    /// Starts the rounds' tasks; they end when every handle is dropped. `timeout` bounds each
    /// round; callers have their own deadlines too.
    pub fn start(raft: Raft<TypeConfig>, network: PeerNetwork, timeout: Duration) -> ReadIndexer {
        let start = TermStart::follow(&raft);
        let (local_rounds, remote_rounds) = (network.stats().clone(), network.stats().clone());
        let local = Coalescer::start(move |()| {
            let (raft, start) = (raft.clone(), start.clone());
            local_rounds.read_index_rounds.inc();
            async move {
                let index = read_index(&raft, timeout).await?;
                Ok(index.max(start.floor(&raft)))
            }
        });
        let remote = Coalescer::start(move |(leader, node): (NodeId, PeerNode)| {
            let network = network.clone();
            remote_rounds.read_index_rounds.inc();
            async move {
                match network.read_index(leader, &node, timeout).await {
                    Ok(reply) => reply,
                    Err(CallError::Timeout { .. }) => Err(ForwardError::Timeout),
                    // Asking again is harmless, so any failure to get an answer counts as a
                    // leader change: the caller looks for the leader and asks again.
                    Err(_) => Err(ForwardError::LeaderChanged),
                }
            }
        });
        ReadIndexer { local, remote }
    }

    /// A read index confirmed by a quorum in a round that began after this call, on this node,
    /// which must be the leader ([`ForwardError::NotLeader`] otherwise).
    pub async fn local(&self, timeout: Duration) -> ReadIndexReply {
        Self::bounded(timeout, self.local.ask(())).await
    }

    /// A read index from the leader `leader`, in a round that began after this call.
    pub async fn remote(
        &self,
        leader: NodeId,
        node: PeerNode,
        timeout: Duration,
    ) -> ReadIndexReply {
        Self::bounded(timeout, self.remote.ask((leader, node))).await
    }

    async fn bounded(
        timeout: Duration,
        answer: impl Future<Output = Option<ReadIndexReply>>,
    ) -> ReadIndexReply {
        match tokio::time::timeout(timeout, answer).await {
            Err(_) => Err(ForwardError::Timeout),
            Ok(Some(reply)) => reply,
            Ok(None) => Err(ForwardError::Unavailable(
                "the read indexer has stopped".into(),
            )),
        }
    }
}

/// The last log index this node held when it took up the leadership of its current term: a
/// floor for its read indexes.
///
/// An elected leader's read log id (its term's blank entry, or a later commit index) is past
/// every entry of earlier terms. But openraft 0.9 also restores a leader that restarts within
/// its term, without an election and without a new blank entry (`Engine::startup`): its read
/// log id is then the first entry of its term, and entries of its term acknowledged before the
/// restart may lie beyond it, committed though its restored commit index does not say so. A
/// read waits for every entry the leader held when it (re)took the term; those are all
/// committed once it leads, so the floor costs a wait only until they are.
#[derive(Clone)]
struct TermStart {
    /// `(term, last log index)` when this node was first seen leading `term`.
    seen: Arc<Mutex<Option<(u64, u64)>>>,
}

impl TermStart {
    /// Follows the node's metrics until Raft stops, noting each term it starts to lead.
    fn follow(raft: &Raft<TypeConfig>) -> TermStart {
        let start = TermStart {
            seen: Arc::default(),
        };
        let mut metrics = raft.metrics();
        let seen = start.seen.clone();
        tokio::spawn(async move {
            loop {
                {
                    let m = metrics.borrow_and_update();
                    let leads = m.state == ServerState::Leader && m.current_leader == Some(m.id);
                    let mut seen = seen.lock();
                    if leads && seen.is_none_or(|(term, _)| term != m.current_term) {
                        *seen = Some((m.current_term, m.last_log_index.unwrap_or(0)));
                    }
                }
                if metrics.changed().await.is_err() {
                    return;
                }
            }
        });
        start
    }

    /// The floor for a read index confirmed just now: the last log index noted when this node
    /// took up its current term, or, if it has not been noted yet, its last log index now.
    fn floor(&self, raft: &Raft<TypeConfig>) -> u64 {
        let metrics = raft.metrics();
        let m = metrics.borrow();
        match *self.seen.lock() {
            Some((term, index)) if term == m.current_term => index,
            _ => m.last_log_index.unwrap_or(0),
        }
    }
}

/// A question asked of `ask`, waiting for a round.
struct Waiter<I, T> {
    input: I,
    answer: oneshot::Sender<T>,
}

/// Runs `ask` one round at a time, and gives each round's answer to every caller with the same
/// input that was waiting when the round began.
struct Coalescer<I, T> {
    queue: mpsc::UnboundedSender<Waiter<I, T>>,
}

impl<I, T> Clone for Coalescer<I, T> {
    fn clone(&self) -> Self {
        Coalescer {
            queue: self.queue.clone(),
        }
    }
}

impl<I, T> Coalescer<I, T>
where
    I: Clone + PartialEq + Send + 'static,
    T: Clone + Send + 'static,
{
    fn start<F, Fut>(ask: F) -> Coalescer<I, T>
    where
        F: Fn(I) -> Fut + Send + 'static,
        Fut: Future<Output = T> + Send + 'static,
    {
        let (queue, waiters) = mpsc::unbounded_channel();
        tokio::spawn(rounds(ask, waiters));
        Coalescer { queue }
    }

    /// The answer of the next round that begins after this call (the question is queued at
    /// once, before the future is first polled); `None` once the rounds' task has stopped (the
    /// runtime is shutting down).
    fn ask(&self, input: I) -> impl Future<Output = Option<T>> {
        let (answer, answered) = oneshot::channel();
        let queued = self.queue.send(Waiter { input, answer }).is_ok();
        async move {
            if !queued {
                return None;
            }
            answered.await.ok()
        }
    }
}

async fn rounds<I, T, F, Fut>(ask: F, mut waiters: mpsc::UnboundedReceiver<Waiter<I, T>>)
where
    I: Clone + PartialEq,
    T: Clone,
    F: Fn(I) -> Fut,
    Fut: Future<Output = T>,
{
    // Waiters for another input than the last round's, in arrival order.
    let mut held: VecDeque<Waiter<I, T>> = VecDeque::new();
    loop {
        let first = match held.pop_front() {
            Some(waiter) => waiter,
            None => match waiters.recv().await {
                Some(waiter) => waiter,
                None => return,
            },
        };
        while let Ok(waiter) = waiters.try_recv() {
            held.push_back(waiter);
        }
        let input = first.input.clone();
        let mut round = vec![first];
        let mut rest = VecDeque::with_capacity(held.len());
        for waiter in held.drain(..) {
            if waiter.input == input {
                round.push(waiter);
            } else {
                rest.push_back(waiter);
            }
        }
        held = rest;
        // Callers that stopped waiting need no round.
        round.retain(|waiter| !waiter.answer.is_closed());
        if round.is_empty() {
            continue;
        }
        let answer = ask(input).await;
        for waiter in round {
            // An error only means the caller stopped waiting.
            let _ = waiter.answer.send(answer.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    use tokio::sync::Notify;

    use super::*;

    /// Rounds that count themselves and wait to be released, one `notify_one` each.
    struct Rounds {
        started: AtomicU64,
        release: Notify,
    }

    fn gated() -> (Arc<Rounds>, Coalescer<u8, (u8, u64)>) {
        let rounds = Arc::new(Rounds {
            started: AtomicU64::new(0),
            release: Notify::new(),
        });
        let counter = rounds.clone();
        let coalescer = Coalescer::start(move |input: u8| {
            let counter = counter.clone();
            async move {
                let round = counter.started.fetch_add(1, Ordering::SeqCst) + 1;
                counter.release.notified().await;
                (input, round)
            }
        });
        (rounds, coalescer)
    }

    async fn wait_rounds_started(rounds: &Rounds, n: u64) {
        tokio::time::timeout(Duration::from_secs(10), async {
            while rounds.started.load(Ordering::SeqCst) < n {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("round did not start");
    }

    #[tokio::test]
    async fn callers_waiting_for_a_round_share_it_and_later_ones_get_the_next() {
        let (rounds, coalescer) = gated();
        // The first caller starts round 1, which is held open.
        let first = coalescer.ask(7);
        wait_rounds_started(&rounds, 1).await;
        // These ask during round 1, so they must not get its answer.
        let later: Vec<_> = (0..5).map(|_| coalescer.ask(7)).collect();
        rounds.release.notify_one();
        assert_eq!(first.await, Some((7, 1)));
        wait_rounds_started(&rounds, 2).await;
        rounds.release.notify_one();
        for answer in later {
            assert_eq!(answer.await, Some((7, 2)));
        }
        assert_eq!(rounds.started.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn callers_with_other_inputs_get_rounds_of_their_own() {
        let (rounds, coalescer) = gated();
        let blocker = coalescer.ask(0);
        wait_rounds_started(&rounds, 1).await;
        let (a, b, c) = (coalescer.ask(1), coalescer.ask(2), coalescer.ask(1));
        // Round 1 (input 0), then one round for both 1s and one for 2, in arrival order.
        for round in 1..=3 {
            wait_rounds_started(&rounds, round).await;
            rounds.release.notify_one();
        }
        assert_eq!(blocker.await, Some((0, 1)));
        assert_eq!(a.await, Some((1, 2)));
        assert_eq!(c.await, Some((1, 2)));
        assert_eq!(b.await, Some((2, 3)));
    }

    #[tokio::test]
    async fn a_round_answers_callers_only_while_they_wait() {
        let (rounds, coalescer) = gated();
        let blocker = coalescer.ask(0);
        wait_rounds_started(&rounds, 1).await;
        drop(coalescer.ask(1));
        let kept = coalescer.ask(2);
        rounds.release.notify_one();
        wait_rounds_started(&rounds, 2).await;
        rounds.release.notify_one();
        assert_eq!(blocker.await, Some((0, 1)));
        // The abandoned question for 1 got no round: round 2 is 2's.
        assert_eq!(kept.await, Some((2, 2)));
    }
}
