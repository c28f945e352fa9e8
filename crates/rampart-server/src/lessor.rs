//! The lessor: decides, on the leader only, when leases expire, and revokes them through Raft.
//!
//! The state machine records each lease (id, granted TTL, and the remaining TTL of the last
//! checkpoint); when a lease expires is not replicated state but the leader's clock. While this
//! node leads, the lessor keeps every lease's expiry in memory:
//!
//! - **Promotion.** On becoming leader it first waits until it has applied every entry committed
//!   before its term (the read index of a new leader is its first entry), then loads each lease
//!   with expiry = now + (checkpointed remaining TTL, else the granted TTL) + one election
//!   timeout of grace. etcd (without its experimental checkpoints) restarts every lease at its
//!   full TTL on a leader change instead; resuming the checkpoint lets an abandoned lease expire
//!   about on time across leader changes and restarts.
//! - **Keep-alive** moves a lease's expiry to now + TTL; if the lease's last checkpoint recorded
//!   less than its TTL, the renewal first commits a checkpoint of the full TTL, so that a leader
//!   change right after it cannot resume the lease at the stale remainder. Renewals and periodic
//!   checkpoints are ordered (`checkpoint_order`): a renewal waits for a checkpoint in flight
//!   to apply before it compares, so a checkpoint computed before a renewal never lands after
//!   it unanswered. Keep-alives and TimeToLive questions
//!   reaching a follower are sent to the leader's lessor (the peer `Lease` RPC); a follower's
//!   lessor answers "not the leader".
//! - **Every [`TICK`]** the leader proposes `LeaseRevoke` for each expired lease, starts the
//!   clock of leases granted since the last look (at their full TTL) and forgets revoked ones.
//!   An expired lease is never renewed again: its revoke is on its way.
//! - **Every `lease_checkpoint_interval`** it proposes one `LeaseCheckpoint` with the remaining
//!   TTL of every live lease, so the next leader resumes them.
//!
//! Why a lease that its owner keeps alive is never expired by a leader change: a client renews
//! at least every TTL/3, so any checkpoint records at least about 2/3 TTL for a live lease. The
//! new leader gives it that much again, plus the grace, counted from when it has loaded the
//! leases; the owner's next keep-alive is due at most TTL/3 after its last one, which was before
//! the old leader was lost, and keep-alives sent meanwhile wait on the follower until the new
//! leader answers (see [`Node::ask_leader_lease`]). And a revoke or checkpoint is proposed only
//! on this node, never forwarded: a deposed leader's stale decision cannot reach the new one.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rampart_network::{ForwardError, LeaseHandler, LeaseReply, LeaseRequest, LeaseStatus};
use rampart_storage::{Command, CommandResult, LeaseCheckpoint, MvccError};
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::error::ServerError;
use crate::node::Node;

/// How often the leader looks for expired and newly granted leases (etcd: 500 ms).
const TICK: Duration = Duration::from_millis(250);

/// Most leases in one checkpoint entry (etcd's `maxLeaseCheckpointBatchSize`).
const CHECKPOINT_BATCH: usize = 1000;

/// The lease clock of one member; only the leader's is running.
pub struct Lessor {
    node: Arc<Node>,
    /// The leases and their expiries, while this node leads and has loaded them.
    leading: Mutex<Option<Leading>>,
    /// Held for writing by a tick from computing its periodic checkpoint until that is applied,
    /// and for reading by a renewal from reading the lease's checkpoint until its reset
    /// checkpoint (if it needs one) is applied. Without it, a checkpoint computed just before a
    /// renewal could apply just after it, recording less than the TTL the client was promised.
    checkpoint_order: tokio::sync::RwLock<()>,
    /// The term whose leases are loaded. Lease questions reaching a new leader before it has
    /// loaded wait on it, so none is answered from an empty table.
    loaded: watch::Sender<Option<u64>>,
    /// Cancelled when the node stops: ends the background task and the keep-alive streams.
    stop: CancellationToken,
}

/// What the leader knows of the leases during one term.
struct Leading {
    term: u64,
    leases: HashMap<i64, Tracked>,
    next_checkpoint: Instant,
}

#[derive(Clone, Copy, Debug)]
struct Tracked {
    /// The granted TTL, in seconds.
    ttl: i64,
    /// When the lease expires unless it is kept alive. Once passed, it stays passed.
    expiry: Instant,
}

/// What one tick has to propose.
struct Work {
    expired: Vec<i64>,
    checkpoints: Vec<LeaseCheckpoint>,
}

fn seconds(secs: i64) -> Duration {
    Duration::from_secs(secs.max(0) as u64)
}

impl Lessor {
    pub fn new(node: Arc<Node>, stop: CancellationToken) -> Arc<Lessor> {
        Arc::new(Lessor {
            node,
            leading: Mutex::new(None),
            checkpoint_order: tokio::sync::RwLock::new(()),
            loaded: watch::Sender::new(None),
            stop,
        })
    }

    /// Completes when the node stops.
    pub async fn stopped(&self) {
        self.stop.cancelled().await
    }

    /// Renews lease `id` on the leader, wherever it is; its TTL, or 0 if it is unknown or has
    /// expired.
    pub async fn keep_alive(&self, id: i64) -> Result<i64, ServerError> {
        let status = self
            .node
            .ask_leader_lease(LeaseRequest::KeepAlive { id }, self)
            .await?;
        Ok(status.remaining_ttl)
    }

    /// The remaining and granted TTL of lease `id`, as the leader sees them; a remaining TTL of
    /// -1 if it is unknown.
    pub async fn time_to_live(&self, id: i64) -> Result<LeaseStatus, ServerError> {
        self.node
            .ask_leader_lease(LeaseRequest::TimeToLive { id }, self)
            .await
    }

    /// Follows this node's leadership until the node stops: loads the leases when it becomes
    /// leader, expires and checkpoints them while it leads, drops them when it no longer does.
    pub async fn run(self: Arc<Self>) {
        let mut metrics = self.node.subscribe_metrics();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let ticked = tokio::select! {
                _ = self.stop.cancelled() => break,
                changed = metrics.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    false
                }
                _ = tick.tick() => true,
            };
            let Some(term) = self.node.leading_term() else {
                self.demote();
                continue;
            };
            if *self.loaded.borrow() != Some(term) {
                self.demote();
                let promoted = tokio::select! {
                    _ = self.stop.cancelled() => break,
                    promoted = self.promote(term) => promoted,
                };
                if let Err(e) = promoted {
                    tracing::info!(term, "cannot load the leases yet, retrying: {e}");
                    continue;
                }
            }
            if ticked {
                tokio::select! {
                    _ = self.stop.cancelled() => break,
                    () = self.tick(term) => {}
                }
            }
        }
        self.demote();
    }

    /// Forgets every expiry: this node does not lead (any more).
    fn demote(&self) {
        let mut leading = self.leading.lock();
        if leading.take().is_some() {
            tracing::info!("lessor demoted: no longer expiring leases");
        }
        self.loaded.send_if_modified(|term| term.take().is_some());
    }

    /// Loads every lease of the state machine for `term`, resuming checkpointed TTLs.
    async fn promote(&self, term: u64) -> Result<(), ServerError> {
        let deadline = Instant::now() + self.node.config().request_timeout();
        // A new leader's read index is at least its first entry: once that is applied here,
        // the state machine holds every grant, revoke and checkpoint committed before this term.
        let read_index = self.node.read_index_here().await.map_err(|e| match e {
            ForwardError::Timeout => ServerError::Timeout,
            _ => ServerError::LeaderChanged,
        })?;
        self.node.wait_applied(read_index, deadline).await?;

        let stored = self.node.mvcc().leases()?;
        let now = Instant::now();
        let grace = self.node.config().election_timeout;
        let leases: HashMap<i64, Tracked> = stored
            .iter()
            .map(|lease| {
                // A checkpoint of 0 or less would mean "no checkpoint" to etcd; never written.
                let resume = match lease.remaining_ttl {
                    Some(remaining) if remaining > 0 => remaining.min(lease.ttl),
                    _ => lease.ttl,
                };
                let tracked = Tracked {
                    ttl: lease.ttl,
                    expiry: now + seconds(resume) + grace,
                };
                (lease.id, tracked)
            })
            .collect();
        let mut leading = self.leading.lock();
        if self.node.leading_term() != Some(term) {
            return Err(ServerError::LeaderChanged);
        }
        tracing::info!(
            term,
            leases = leases.len(),
            "lessor promoted: expiring leases"
        );
        *leading = Some(Leading {
            term,
            leases,
            next_checkpoint: now + self.node.config().lease_checkpoint_interval,
        });
        self.loaded.send_replace(Some(term));
        Ok(())
    }

    /// One round of the leader's work: revoke what expired, checkpoint when due.
    async fn tick(&self, term: u64) {
        let order = self.checkpoint_order.write().await;
        let work = match self.collect(term) {
            Ok(Some(work)) => work,
            Ok(None) => return,
            Err(e) => {
                tracing::error!("cannot read the leases: {e}");
                return;
            }
        };
        for batch in work.checkpoints.chunks(CHECKPOINT_BATCH) {
            let checkpoints = batch.to_vec();
            if let Err(e) = self.propose(Command::LeaseCheckpoint { checkpoints }).await {
                tracing::info!("lease checkpoint failed: {e}");
            }
        }
        // Applied (or failed for good): renewals may compare with it now.
        drop(order);
        let revokes = work
            .expired
            .iter()
            .map(|&id| async move { (id, self.propose(Command::LeaseRevoke { id }).await) });
        let mut revoked = Vec::new();
        for (id, result) in futures::future::join_all(revokes).await {
            match result {
                Ok(_) | Err(ServerError::LeaseNotFound) => {
                    tracing::debug!("lease {id:x} expired and was revoked");
                    revoked.push(id);
                }
                // Still in the state machine: the next tick proposes the revoke again.
                Err(e) => tracing::warn!("revoking expired lease {id:x} failed, will retry: {e}"),
            }
        }
        // Forget them now rather than at the next look, so a lease granted again under the same
        // id meanwhile starts afresh instead of inheriting the passed expiry.
        if let Some(leading) = self.leading.lock().as_mut().filter(|l| l.term == term) {
            for id in revoked {
                leading.leases.remove(&id);
            }
        }
    }

    /// Brings the table up to date with the state machine and says what to propose; called with
    /// `checkpoint_order` held for writing. `None` if this node no longer leads `term`.
    fn collect(&self, term: u64) -> Result<Option<Work>, MvccError> {
        // Read before the table's lock, which nothing may hold while it waits for the store (a
        // long read can hold the store's lock). The caller holds `checkpoint_order`, so no
        // renewal adds a lease to the table meanwhile.
        let stored = self.node.mvcc().leases()?;
        let now = Instant::now();
        let mut guard = self.leading.lock();
        let Some(leading) = guard.as_mut().filter(|l| l.term == term) else {
            return Ok(None);
        };
        let leases: HashMap<i64, Tracked> = stored
            .iter()
            .map(|lease| {
                // Granted since the last look: its clock starts now, at its full TTL.
                let expiry = leading
                    .leases
                    .get(&lease.id)
                    .map_or(now + seconds(lease.ttl), |t| t.expiry);
                let tracked = Tracked {
                    ttl: lease.ttl,
                    expiry,
                };
                (lease.id, tracked)
            })
            .collect();
        // Leases missing from the state machine were revoked: dropped with the old table.
        leading.leases = leases;
        let expired = leading
            .leases
            .iter()
            .filter(|(_, t)| t.expiry <= now)
            .map(|(&id, _)| id)
            .collect();
        let mut checkpoints = Vec::new();
        if now >= leading.next_checkpoint {
            leading.next_checkpoint = now + self.node.config().lease_checkpoint_interval;
            checkpoints = leading
                .leases
                .iter()
                .filter(|(_, t)| t.expiry > now)
                .map(|(&id, t)| LeaseCheckpoint {
                    id,
                    // Rounded up, as etcd does: a checkpoint never shortens a lease.
                    remaining_ttl: (t.expiry - now).as_secs_f64().ceil().min(t.ttl as f64) as i64,
                })
                .collect();
        }
        Ok(Some(Work {
            expired,
            checkpoints,
        }))
    }

    /// Proposes `command` on this node only. Never forwarded: a revoke or checkpoint is this
    /// leader's decision, and if it is deposed its decisions must not reach the new leader.
    async fn propose(&self, command: Command) -> Result<CommandResult, ServerError> {
        match self.node.propose_here(command).await {
            Ok((_, response)) => Ok(response.result?),
            Err(ForwardError::Timeout) => Err(ServerError::Timeout),
            Err(_) => Err(ServerError::LeaderChanged),
        }
    }

    /// Waits until the leases of `term` are loaded, for at most two election timeouts.
    async fn wait_loaded(&self, term: u64) -> Result<(), ForwardError> {
        let mut loaded = self.loaded.subscribe();
        let wait = loaded.wait_for(|loaded| *loaded == Some(term));
        let waited = tokio::time::timeout(2 * self.node.config().election_timeout, wait).await;
        match waited {
            Ok(Ok(_)) => Ok(()),
            _ => Err(ForwardError::LeaderChanged),
        }
    }
}

#[tonic::async_trait]
impl LeaseHandler for Lessor {
    /// Answers a lease question on the leader, from its table. A lease of the state machine that
    /// is not in the table yet was granted since the last tick: its clock starts now.
    async fn handle(&self, request: LeaseRequest) -> LeaseReply {
        let Some(term) = self.node.leading_term() else {
            let leader = self.node.metrics().current_leader;
            return Err(ForwardError::NotLeader {
                leader: leader.filter(|&id| id != self.node.id()),
            });
        };
        self.wait_loaded(term).await?;
        let (id, renew) = match request {
            LeaseRequest::KeepAlive { id } => (id, true),
            LeaseRequest::TimeToLive { id } => (id, false),
        };
        // A renewal waits for a periodic checkpoint in flight to apply, then holds checkpoints
        // back until its own reset (if any) is applied; see `checkpoint_order`.
        let _order = if renew {
            Some(self.checkpoint_order.read().await)
        } else {
            None
        };
        let status = self.answer(term, id, renew)?;
        if let Some(reset) = status.reset_checkpoint {
            // The renewal must survive a leader change: a stale checkpoint would make the next
            // leader resume the lease at what was left before it (etcd checkpoints on renewal
            // for the same reason). Committed before the client hears of the renewal.
            let command = Command::LeaseCheckpoint {
                checkpoints: vec![reset],
            };
            if let Err(e) = self.propose(command).await {
                tracing::info!(
                    lease = format_args!("{id:x}"),
                    "renewal checkpoint failed: {e}"
                );
                return Err(match e {
                    ServerError::Timeout => ForwardError::Timeout,
                    _ => ForwardError::LeaderChanged,
                });
            }
        }
        Ok(status.status)
    }
}

/// The leader's answer to a lease question, and the checkpoint a renewal needs first, if any.
struct Answer {
    status: LeaseStatus,
    reset_checkpoint: Option<LeaseCheckpoint>,
}

impl Lessor {
    /// Answers from the table (see [`LeaseHandler::handle`]); renews when `renew`.
    fn answer(&self, term: u64, id: i64, renew: bool) -> Result<Answer, ForwardError> {
        let answer = |remaining_ttl, granted_ttl| Answer {
            status: LeaseStatus {
                remaining_ttl,
                granted_ttl,
            },
            reset_checkpoint: None,
        };
        // Read before the table's lock, which nothing may hold while it waits for the store.
        let stored = self
            .node
            .mvcc()
            .lease(id)
            .map_err(|e| ForwardError::Unavailable(format!("cannot read lease {id:x}: {e}")))?;
        let now = Instant::now();
        let mut guard = self.leading.lock();
        let Some(leading) = guard.as_mut().filter(|l| l.term == term) else {
            return Err(ForwardError::LeaderChanged);
        };
        let Some(lease) = stored else {
            leading.leases.remove(&id);
            // etcd: a keep-alive of an unknown lease answers TTL 0, TimeToLive answers -1.
            return Ok(answer(if renew { 0 } else { -1 }, 0));
        };
        let tracked = leading.leases.entry(id).or_insert(Tracked {
            ttl: lease.ttl,
            expiry: now + seconds(lease.ttl),
        });
        if tracked.expiry <= now {
            // Expired: its revoke is on its way, and a renewal would not survive it.
            return Ok(answer(0, lease.ttl));
        }
        if renew {
            tracked.expiry = now + seconds(lease.ttl);
        }
        // Whole seconds, rounded down, as etcd's TimeToLive; never above the granted TTL (the
        // grace a new leader adds is not promised to the client).
        let remaining = (tracked.expiry - now).as_secs() as i64;
        let mut reply = answer(remaining.min(lease.ttl), lease.ttl);
        if renew
            && lease
                .remaining_ttl
                .is_some_and(|checkpointed| checkpointed < lease.ttl)
        {
            reply.reset_checkpoint = Some(LeaseCheckpoint {
                id,
                remaining_ttl: lease.ttl,
            });
        }
        Ok(reply)
    }
}
