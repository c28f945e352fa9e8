//! The lessor: decides, on the leader only, when leases expire, and revokes them through Raft.
//!
//! The state machine records each lease (id, granted TTL, and the remaining TTL of the last
//! checkpoint); when a lease expires is not replicated state but the leader's clock. While this
//! node leads, the lessor keeps every lease's expiry in memory, in a table ordered by expiry
//! (etcd's lessor heap) as well as by id:
//!
//! - **Promotion.** On becoming leader it first waits until it has applied every entry committed
//!   before its term (the read index of a new leader is its first entry), then loads each lease
//!   with expiry = now + (checkpointed remaining TTL, else the granted TTL) + one election
//!   timeout of grace. etcd (without its experimental checkpoints) restarts every lease at its
//!   full TTL on a leader change instead; resuming the checkpoint lets an abandoned lease expire
//!   about on time across leader changes and restarts.
//! - **Grants and revokes** reach the table through the store's lease feed, opened with the load
//!   ([`rampart_storage::Mvcc::follow_leases`]): every grant and revoke applied after the load,
//!   in apply order, wherever it was proposed (a grant that a follower forwarded reaches the
//!   leader only as an entry it applies). The table takes them in before each decision and
//!   each answer, so nothing rescans the store while this node leads. A lease granted since the
//!   last look starts its clock at its full TTL when the table takes its grant in. If the feed
//!   ends (a snapshot replaced the state machine), the table is dropped and loaded again, as at
//!   a promotion.
//! - **Keep-alive** moves a lease's expiry to now + TTL; if the lease's last checkpoint recorded
//!   less than its TTL, the renewal first commits a checkpoint of the full TTL, so that a leader
//!   change right after it cannot resume the lease at the stale remainder. Renewals and periodic
//!   checkpoints are ordered (`checkpoint_order`): a renewal waits for a checkpoint in flight
//!   to apply before it compares, so a checkpoint computed before a renewal never lands after
//!   it unanswered. Keep-alives and TimeToLive questions
//!   reaching a follower are sent to the leader's lessor (the peer `Lease` RPC); a follower's
//!   lessor answers "not the leader".
//! - **Every [`TICK`]** the leader revokes the leases whose expiry has passed, earliest first:
//!   at most [`REVOKES_PER_TICK`] ([`REVOKE_RATE`] a second, as etcd's `leaseRevokeRate`), in
//!   one `Command::Batch` entry of `LeaseRevoke`s. An expired lease is never renewed again: its
//!   revoke is on its way, at this tick or a later one. It leaves the table only when a revoke
//!   of it applies, so one whose revoke failed is proposed again at the next tick.
//! - **Every `lease_checkpoint_interval`** it starts a round of checkpoints: the remaining TTL
//!   of every live lease, in id order, so the next leader resumes them. A tick proposes at most
//!   one `LeaseCheckpoint` entry of the round, of at most [`CHECKPOINT_BATCH`] leases (4000 a
//!   second; etcd's `leaseCheckpointRate` is 1000), so that neither the revokes nor the
//!   renewals (which wait for a checkpoint in flight) wait for a whole round. A round that
//!   outlasts the interval (more than about 20,000 leases at the default 5 s) is followed at
//!   once by the next; a new leader may then resume a lease from an older checkpoint, which
//!   only makes it end later, never earlier.
//!
//! Why the table never misses a grant nor brings a revoked lease back: the load and the start of
//! the feed are read under one read lock of the state machine, and the applier sends each grant
//! and revoke to the feed under its write lock, once it is applied; so every grant is in the
//! load or in the feed, exactly once, and the feed (unbounded) drops none. Only the load and a
//! grant put a lease in the table, and only a revoke takes it out, in the order they applied; a
//! keep-alive only moves the expiry of a lease the table holds, and a revoke proposed here
//! changes the table only when it comes back through the feed. So once the feed is drained, the
//! table holds exactly the leases of the state machine.
//!
//! Why a lease that its owner keeps alive is never expired by a leader change: a client renews
//! at least every TTL/3, so any checkpoint records at least about 2/3 TTL for a live lease. The
//! new leader gives it that much again, plus the grace, counted from when it has loaded the
//! leases; the owner's next keep-alive is due at most TTL/3 after its last one, which was before
//! the old leader was lost, and keep-alives sent meanwhile wait on the follower until the new
//! leader answers (see [`Node::ask_leader_lease`]). And a revoke or checkpoint is proposed only
//! on this node, never forwarded: a deposed leader's stale decision cannot reach the new one.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, MutexGuard};
use rampart_network::{ForwardError, LeaseHandler, LeaseReply, LeaseRequest, LeaseStatus};
use rampart_storage::{
    ApplyError, Command, CommandResult, Lease, LeaseChange, LeaseCheckpoint, LeaseFeed,
    LeaseFeedEnded,
};
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::error::ServerError;
use crate::node::Node;

/// How often the leader looks for expired leases (etcd: 500 ms).
const TICK: Duration = Duration::from_millis(250);

/// Most leases revoked in a second (etcd's `leaseRevokeRate`).
const REVOKE_RATE: u128 = 1000;

/// Most leases revoked at one tick: [`REVOKE_RATE`] spread over the ticks. Leases that expire
/// together are revoked over several ticks, in one entry each, rather than in as many
/// concurrent proposals as there are leases.
const REVOKES_PER_TICK: usize = (REVOKE_RATE * TICK.as_millis() / 1000) as usize;

/// Most leases in one checkpoint entry (etcd's `maxLeaseCheckpointBatchSize`), and in one tick.
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
    table: Table,
    /// The grants and revokes applied since the table was loaded and not taken in yet.
    feed: LeaseFeed,
    checkpoints: CheckpointRounds,
}

/// The periodic checkpoints: a round through the table every interval, a batch a tick.
struct CheckpointRounds {
    /// When the next round starts.
    next: Instant,
    /// Where the round in progress goes on, in id order; `None` between rounds.
    from: Option<Bound<i64>>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
struct Tracked {
    /// The granted TTL, in seconds.
    ttl: i64,
    /// When the lease expires unless it is kept alive. Once passed, it stays passed.
    expiry: Instant,
}

/// The leases of the state machine with their expiries, by id and by expiry.
#[derive(Default)]
struct Table {
    leases: BTreeMap<i64, Tracked>,
    /// The same leases, earliest expiry first (ties by id): the next to expire are at the front,
    /// so a tick finds the expired ones without looking at the others.
    by_expiry: BTreeSet<(Instant, i64)>,
}

/// What one tick has to propose.
struct Work {
    expired: Vec<i64>,
    checkpoints: Vec<LeaseCheckpoint>,
}

fn seconds(secs: i64) -> Duration {
    Duration::from_secs(secs.max(0) as u64)
}

impl Table {
    /// The table of a new leader: each lease resumes its checkpointed remaining TTL (else its
    /// full TTL) from `now`, plus `grace`.
    fn load(leases: &[Lease], now: Instant, grace: Duration) -> Table {
        let mut table = Table::default();
        for lease in leases {
            // A checkpoint of 0 or less would mean "no checkpoint" to etcd; never written.
            let resume = match lease.remaining_ttl {
                Some(remaining) if remaining > 0 => remaining.min(lease.ttl),
                _ => lease.ttl,
            };
            let expiry = now + seconds(resume) + grace;
            table.insert(lease.id, lease.ttl, expiry);
        }
        table
    }

    fn get(&self, id: i64) -> Option<Tracked> {
        self.leases.get(&id).copied()
    }

    /// Sets lease `id`'s TTL and expiry, adding it if it is new.
    fn insert(&mut self, id: i64, ttl: i64, expiry: Instant) {
        if let Some(old) = self.leases.insert(id, Tracked { ttl, expiry }) {
            self.by_expiry.remove(&(old.expiry, id));
        }
        self.by_expiry.insert((expiry, id));
    }

    fn remove(&mut self, id: i64) {
        if let Some(old) = self.leases.remove(&id) {
            self.by_expiry.remove(&(old.expiry, id));
        }
    }

    /// Takes in a grant or revoke the state machine applied; a grant's clock starts at `now`.
    fn apply(&mut self, change: LeaseChange, now: Instant) {
        match change {
            LeaseChange::Granted { id, ttl } => self.insert(id, ttl, now + seconds(ttl)),
            LeaseChange::Revoked { id } => self.remove(id),
        }
    }

    /// At most `limit` leases whose expiry is `now` or earlier, earliest first.
    fn expired(&self, now: Instant, limit: usize) -> Vec<i64> {
        self.by_expiry
            .iter()
            .take_while(|(expiry, _)| *expiry <= now)
            .take(limit)
            .map(|&(_, id)| id)
            .collect()
    }

    /// The remaining TTL of the first `limit` leases from `from` on, in id order, that have not
    /// expired; and where the next ones start, `None` if there are no more.
    fn checkpoints(
        &self,
        from: Bound<i64>,
        now: Instant,
        limit: usize,
    ) -> (Vec<LeaseCheckpoint>, Option<Bound<i64>>) {
        let mut checkpoints = Vec::new();
        for (&id, t) in self.leases.range((from, Bound::Unbounded)) {
            if t.expiry <= now {
                continue;
            }
            checkpoints.push(LeaseCheckpoint {
                id,
                // Rounded up, as etcd does: a checkpoint never shortens a lease.
                remaining_ttl: (t.expiry - now).as_secs_f64().ceil().min(t.ttl as f64) as i64,
            });
            if checkpoints.len() == limit {
                return (checkpoints, Some(Bound::Excluded(id)));
            }
        }
        (checkpoints, None)
    }
}

impl Leading {
    /// Takes in every grant and revoke applied since the last call. Fails if the feed has
    /// ended: the table no longer follows the state machine.
    fn catch_up(&mut self, now: Instant) -> Result<(), LeaseFeedEnded> {
        while let Some(change) = self.feed.try_next()? {
            self.table.apply(change, now);
        }
        Ok(())
    }

    /// What a tick at `now` proposes: the first expired leases, and the next checkpoints of the
    /// round in progress or due.
    fn work(&mut self, now: Instant, checkpoint_interval: Duration) -> Work {
        Work {
            expired: self.table.expired(now, REVOKES_PER_TICK),
            checkpoints: self.checkpoints.next(&self.table, now, checkpoint_interval),
        }
    }
}

impl CheckpointRounds {
    /// No round before one `interval` from `now`.
    fn new(now: Instant, interval: Duration) -> CheckpointRounds {
        CheckpointRounds {
            next: now + interval,
            from: None,
        }
    }

    /// The checkpoints `table` needs at `now`: the next batch of the round in progress, or of
    /// a new one if one is due (`interval` after the last one started, or at once if that one
    /// outlasted it); none otherwise.
    fn next(&mut self, table: &Table, now: Instant, interval: Duration) -> Vec<LeaseCheckpoint> {
        if self.from.is_none() && now >= self.next {
            self.next = now + interval;
            self.from = Some(Bound::Unbounded);
        }
        let Some(from) = self.from else {
            return Vec::new();
        };
        let (checkpoints, rest) = table.checkpoints(from, now, CHECKPOINT_BATCH);
        self.from = rest;
        checkpoints
    }
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

    /// How many leases this member's clock holds: every live lease while it leads, `None`
    /// otherwise (only the leader keeps the clock).
    pub fn lease_count(&self) -> Option<usize> {
        self.leading
            .lock()
            .as_ref()
            .map(|leading| leading.table.leases.len())
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
        if self.unload(self.leading.lock()) {
            tracing::info!("lessor demoted: no longer expiring leases");
        }
    }

    /// Drops the table `leading` holds, if any (true if there was one); lease questions wait
    /// for the next load.
    fn unload(&self, mut leading: MutexGuard<'_, Option<Leading>>) -> bool {
        let had_table = leading.take().is_some();
        self.loaded.send_if_modified(|term| term.take().is_some());
        had_table
    }

    /// Loads every lease of the state machine for `term`, resuming checkpointed TTLs, and the
    /// feed of the grants and revokes applied after them.
    async fn promote(&self, term: u64) -> Result<(), ServerError> {
        let deadline = Instant::now() + self.node.config().request_timeout();
        // A new leader's read index is at least its first entry: once that is applied here,
        // the state machine holds every grant, revoke and checkpoint committed before this term.
        let read_index = self.node.read_index_here().await.map_err(|e| match e {
            ForwardError::Timeout => ServerError::Timeout,
            _ => ServerError::LeaderChanged,
        })?;
        self.node.wait_applied(read_index, deadline).await?;

        // Read before the table's lock, which nothing may hold while it waits for the store.
        let (stored, feed) = self.node.mvcc().follow_leases()?;
        let table = Table::load(&stored, Instant::now(), self.node.config().election_timeout);
        let mut leading = self.leading.lock();
        if self.node.leading_term() != Some(term) {
            return Err(ServerError::LeaderChanged);
        }
        tracing::info!(
            term,
            leases = table.leases.len(),
            "lessor promoted: expiring leases"
        );
        *leading = Some(Leading {
            term,
            table,
            feed,
            checkpoints: CheckpointRounds::new(
                Instant::now(),
                self.node.config().lease_checkpoint_interval,
            ),
        });
        self.loaded.send_replace(Some(term));
        Ok(())
    }

    /// Runs `f` on the table of `term`, caught up with the state machine, at the time `f` is
    /// given; `None` if this node no longer leads `term`. Takes the table's lock, and no store's.
    fn with_table<R>(&self, term: u64, f: impl FnOnce(&mut Leading, Instant) -> R) -> Option<R> {
        let mut guard = self.leading.lock();
        let leading = guard.as_mut().filter(|l| l.term == term)?;
        let now = Instant::now();
        if let Err(e) = leading.catch_up(now) {
            // The run loop loads the leases again at its next turn.
            tracing::warn!("{e}: the lessor loads the leases again");
            self.unload(guard);
            return None;
        }
        Some(f(leading, now))
    }

    /// One round of the leader's work: the next checkpoints when due, then revoke the first
    /// expired leases.
    async fn tick(&self, term: u64) {
        let order = self.checkpoint_order.write().await;
        let interval = self.node.config().lease_checkpoint_interval;
        let Some(work) = self.with_table(term, |leading, now| leading.work(now, interval)) else {
            return;
        };
        if !work.checkpoints.is_empty() {
            let checkpoints = work.checkpoints;
            if let Err(e) = self.propose(Command::LeaseCheckpoint { checkpoints }).await {
                tracing::info!("lease checkpoint failed: {e}");
            }
        }
        // Applied (or failed for good): renewals may compare with it now.
        drop(order);
        if !work.expired.is_empty() {
            self.revoke(work.expired).await;
        }
    }

    /// Revokes the expired leases `expired` in one entry. The table forgets each one only when
    /// the feed brings its revoke: until then it stays expired, and a revoke that failed is
    /// proposed again at the next tick.
    async fn revoke(&self, expired: Vec<i64>) {
        let count = expired.len();
        let revokes = expired
            .iter()
            .map(|&id| Command::LeaseRevoke { id })
            .collect();
        let results = match self.propose(Command::Batch(revokes)).await {
            Ok(CommandResult::Batch(results)) => results,
            Ok(other) => {
                tracing::error!("a batch of revokes was answered {other:?}");
                return;
            }
            Err(e) => {
                tracing::warn!("revoking {count} expired leases failed, will retry: {e}");
                return;
            }
        };
        for (id, response) in expired.iter().zip(results) {
            match response.result {
                Ok(_) => tracing::debug!("lease {id:x} expired and was revoked"),
                // Revoked meanwhile, by a client.
                Err(ApplyError::LeaseNotFound) => {}
                Err(e) => tracing::warn!("revoking expired lease {id:x} failed: {e}"),
            }
        }
        tracing::debug!(count, "expired leases revoked");
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
    /// Answers a lease question on the leader, from its table once it has taken in the grants
    /// and revokes applied since its last look (a lease granted since starts its clock now).
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
        // The checkpoint the state machine records, read before the table's lock, which nothing
        // may hold while it waits for the store. The table, caught up after this read, knows
        // at least the leases this read saw; which leases exist is the table's to say.
        let checkpointed = self
            .node
            .mvcc()
            .lease(id)
            .map_err(|e| ForwardError::Unavailable(format!("cannot read lease {id:x}: {e}")))?
            .and_then(|lease| lease.remaining_ttl);
        let answered = self.with_table(term, |leading, now| {
            let Some(tracked) = leading.table.get(id) else {
                // etcd: a keep-alive of an unknown lease answers TTL 0, TimeToLive answers -1.
                return answer(if renew { 0 } else { -1 }, 0);
            };
            if tracked.expiry <= now {
                // Expired: its revoke is on its way, and a renewal would not survive it.
                return answer(0, tracked.ttl);
            }
            let mut expiry = tracked.expiry;
            if renew {
                expiry = now + seconds(tracked.ttl);
                leading.table.insert(id, tracked.ttl, expiry);
            }
            // Whole seconds, rounded down, as etcd's TimeToLive; never above the granted TTL
            // (the grace a new leader adds is not promised to the client).
            let remaining = (expiry - now).as_secs() as i64;
            let mut reply = answer(remaining.min(tracked.ttl), tracked.ttl);
            if renew && checkpointed.is_some_and(|checkpointed| checkpointed < tracked.ttl) {
                reply.reset_checkpoint = Some(LeaseCheckpoint {
                    id,
                    remaining_ttl: tracked.ttl,
                });
            }
            reply
        });
        answered.ok_or(ForwardError::LeaderChanged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    /// A time with an hour before it, so that tests may count back from it.
    fn now() -> Instant {
        Instant::now() + secs(3600)
    }

    /// The table's two orders describe the same leases.
    fn check(table: &Table) {
        let mut by_id: Vec<(Instant, i64)> =
            table.leases.iter().map(|(&id, t)| (t.expiry, id)).collect();
        by_id.sort();
        let by_expiry: Vec<(Instant, i64)> = table.by_expiry.iter().copied().collect();
        assert_eq!(by_id, by_expiry);
    }

    #[test]
    fn a_new_leader_resumes_each_checkpoint_plus_the_grace() {
        let now = now();
        let grace = Duration::from_millis(800);
        let leases = [
            Lease {
                id: 1,
                ttl: 60,
                remaining_ttl: None,
            },
            Lease {
                id: 2,
                ttl: 60,
                remaining_ttl: Some(20),
            },
            Lease {
                id: 3,
                ttl: 10,
                remaining_ttl: Some(99),
            },
            Lease {
                id: 4,
                ttl: 10,
                remaining_ttl: Some(0),
            },
        ];
        let table = Table::load(&leases, now, grace);
        check(&table);
        let expiry = |id| table.get(id).unwrap().expiry - now;
        assert_eq!(expiry(1), secs(60) + grace);
        assert_eq!(expiry(2), secs(20) + grace);
        assert_eq!(expiry(3), secs(10) + grace, "never more than the TTL");
        assert_eq!(expiry(4), secs(10) + grace, "0 means no checkpoint");
    }

    #[test]
    fn expired_leases_come_earliest_first_and_at_most_the_limit() {
        let now = now();
        let mut table = Table::default();
        for id in 0..10 {
            // Lease 9 expired first, lease 0 last; leases 5 to 9 have expired.
            table.insert(id, 5, now + secs(10) - secs(id as u64 * 2));
        }
        check(&table);
        assert_eq!(table.expired(now, 100), [9, 8, 7, 6, 5]);
        assert_eq!(table.expired(now, 3), [9, 8, 7]);
        assert_eq!(table.expired(now - secs(100), 100), Vec::<i64>::new());

        // A renewal moves a lease later; a revoke takes it out.
        table.insert(9, 5, now + secs(5));
        table.apply(LeaseChange::Revoked { id: 8 }, now);
        check(&table);
        assert_eq!(table.expired(now, 100), [7, 6, 5]);
        assert_eq!(table.leases.len(), 9);
    }

    #[test]
    fn a_lease_revoked_then_granted_again_starts_afresh() {
        let now = now();
        let mut table = Table::default();
        table.insert(7, 5, now - secs(1));
        assert_eq!(table.expired(now, 10), [7]);
        let later = now + secs(3);
        table.apply(LeaseChange::Revoked { id: 7 }, later);
        table.apply(LeaseChange::Granted { id: 7, ttl: 30 }, later);
        check(&table);
        assert_eq!(
            table.get(7),
            Some(Tracked {
                ttl: 30,
                expiry: later + secs(30)
            })
        );
        assert!(table.expired(later, 10).is_empty());
        // A revoke of a lease the table does not hold changes nothing.
        table.apply(LeaseChange::Revoked { id: 8 }, later);
        check(&table);
        assert_eq!(table.leases.len(), 1);
    }

    #[test]
    fn checkpoints_round_up_and_leave_out_expired_leases() {
        let now = now();
        let mut table = Table::default();
        table.insert(1, 10, now + Duration::from_millis(4100));
        table.insert(2, 10, now + secs(10) + Duration::from_millis(800));
        table.insert(3, 10, now);
        let (checkpoints, next) = table.checkpoints(Bound::Unbounded, now, 10);
        assert_eq!(next, None);
        assert_eq!(
            checkpoints,
            [
                LeaseCheckpoint {
                    id: 1,
                    remaining_ttl: 5
                },
                LeaseCheckpoint {
                    id: 2,
                    remaining_ttl: 10
                },
            ]
        );
    }

    #[test]
    fn a_round_of_checkpoints_goes_a_batch_a_tick_through_every_live_lease() {
        let start = now();
        let interval = secs(5);
        let mut table = Table::default();
        for id in 0..2500 {
            table.insert(id, 60, start + secs(30));
        }
        let mut rounds = CheckpointRounds::new(start - interval, interval);
        let ids = |checkpoints: &[LeaseCheckpoint]| -> Vec<i64> {
            checkpoints.iter().map(|c| c.id).collect()
        };

        let first = rounds.next(&table, start, interval);
        assert_eq!(ids(&first), (0..1000).collect::<Vec<_>>());
        // Meanwhile lease 1500 is revoked and lease 5000 granted: the round sees both.
        table.remove(1500);
        table.insert(5000, 60, start + secs(60));
        let second = rounds.next(&table, start + TICK, interval);
        let expected: Vec<i64> = (1000..2001).filter(|&id| id != 1500).collect();
        assert_eq!(ids(&second), expected);
        let third = rounds.next(&table, start + secs(2), interval);
        let mut rest: Vec<i64> = (2001..2500).collect();
        rest.push(5000);
        assert_eq!(ids(&third), rest);
        assert_eq!(third[0].remaining_ttl, 28, "counted at its own tick");

        // Over: nothing until the next round is due, one interval after this one started.
        assert!(rounds.next(&table, start + secs(4), interval).is_empty());
        assert_eq!(rounds.next(&table, start + interval, interval).len(), 1000);
    }
}
