//! What the Lock and Election services share, as etcd's `v3lock` and `v3election` servers share
//! clientv3's `concurrency` package: session leases, the keys that stand for a locker or a
//! campaigner, the wait for every older key to go (`waitDeletes`), and the clean-up of a key
//! whose call went away.
//!
//! A lock or an election called `name` is the set of keys under `name/`, one per lease,
//! `name/<lease in lowercase hex>`; the key with the lowest create revision holds the lock (leads
//! the election). A waiter with create revision `r` waits for the deletion of the key just before
//! it (the highest create revision below `r`), then looks again, so that when a holder goes only
//! the next waiter wakes, not every waiter (no thundering herd), and the lock passes in the
//! order the keys were created.
//!
//! Everything goes through the in-process [`Client`], so a waiter on a follower reads through
//! the leader's read index and watches this member's applied state: it lives through a leader
//! change. A read that fails for a transient reason (no leader, leader changed, timeout) is
//! retried, and a watch that breaks (compaction) is replaced by a new look at the keys; a
//! waiter's place is its key's create revision, which neither changes.

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use futures::StreamExt;
use rampart_api::etcdserverpb as pb;
use rampart_api::mvccpb;
use rampart_api::prefix_range_end;
use tokio::time::Instant;

use crate::client::Client;
use crate::error::ServerError;

/// The TTL of the lease granted for a call that names lease 0, as etcd's `NewSession`
/// (`defaultSessionTTL`) grants. Nothing keeps it alive: etcd's servers orphan the session at
/// once.
const SESSION_TTL: i64 = 60;

/// The first pause between retries of a call that failed for a transient reason.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
/// The longest pause between retries.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// How many election timeouts a one-shot step (create a key, proclaim, resign) keeps retrying
/// transient failures before it answers with the last one. A waiter retries as long as its
/// caller waits.
const PATIENCE_ELECTIONS: u32 = 10;

/// How long [`retrying`] keeps at it.
#[derive(Clone, Copy, Debug)]
pub(super) enum Patience {
    /// A bounded number of election timeouts: a step the caller did not ask to wait for.
    Step,
    /// Until the call succeeds, fails for good, or its caller goes away.
    Waiter,
}

/// The lease a call's key is attached to: `lease` itself, or for 0 a new lease of
/// [`SESSION_TTL`] seconds that nobody keeps alive, as etcd's servers do (`NewSession` grants
/// one when given `NoLease`).
pub(super) async fn session_lease(client: &Client, lease: i64) -> Result<i64, ServerError> {
    if lease != 0 {
        return Ok(lease);
    }
    let request = pb::LeaseGrantRequest {
        ttl: SESSION_TTL,
        id: 0,
    };
    Ok(
        retrying(client, Patience::Step, || client.lease_grant(request))
            .await?
            .id,
    )
}

/// The prefix of every key of lock or election `name`: `name/`.
pub(super) fn prefix_of(name: &[u8]) -> Vec<u8> {
    let mut prefix = name.to_vec();
    prefix.push(b'/');
    prefix
}

/// The key that stands for `lease` under `prefix`: the lease in lowercase hex, as Go's `%x`
/// prints an `int64` (a minus sign and the magnitude when negative).
pub(super) fn session_key(prefix: &[u8], lease: i64) -> Vec<u8> {
    let hex = if lease < 0 {
        format!("-{:x}", lease.unsigned_abs())
    } else {
        format!("{lease:x}")
    };
    let mut key = prefix.to_vec();
    key.extend_from_slice(hex.as_bytes());
    key
}

/// A read of `key` alone.
pub(super) fn get(key: &[u8]) -> pb::RangeRequest {
    pb::RangeRequest {
        key: key.to_vec(),
        ..Default::default()
    }
}

/// A read of the key under `prefix` with the lowest create revision: the holder or leader
/// (clientv3's `WithFirstCreate`).
pub(super) fn first_created(prefix: &[u8]) -> pb::RangeRequest {
    pb::RangeRequest {
        key: prefix.to_vec(),
        range_end: prefix_range_end(prefix),
        limit: 1,
        sort_order: pb::range_request::SortOrder::Ascend as i32,
        sort_target: pb::range_request::SortTarget::Create as i32,
        ..Default::default()
    }
}

/// A read of the key under `prefix` with the highest create revision up to
/// `max_create_revision`: the one a waiter waits for (`WithLastCreate`, `WithMaxCreateRev`).
fn last_created_up_to(prefix: &[u8], max_create_revision: i64) -> pb::RangeRequest {
    pb::RangeRequest {
        key: prefix.to_vec(),
        range_end: prefix_range_end(prefix),
        limit: 1,
        sort_order: pb::range_request::SortOrder::Descend as i32,
        sort_target: pb::range_request::SortTarget::Create as i32,
        max_create_revision,
        ..Default::default()
    }
}

/// A compare that holds when `key`'s create revision is `revision` (0: the key is absent).
pub(super) fn created_at(key: &[u8], revision: i64) -> pb::Compare {
    pb::Compare {
        result: pb::compare::CompareResult::Equal as i32,
        target: pb::compare::CompareTarget::Create as i32,
        key: key.to_vec(),
        target_union: Some(pb::compare::TargetUnion::CreateRevision(revision)),
        range_end: Vec::new(),
    }
}

pub(super) fn put_op(key: &[u8], value: &[u8], lease: i64) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
            key: key.to_vec(),
            value: value.to_vec(),
            lease,
            ..Default::default()
        })),
    }
}

pub(super) fn range_op(range: pb::RangeRequest) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(pb::request_op::Request::RequestRange(range)),
    }
}

pub(super) fn delete_op(key: &[u8]) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(pb::request_op::Request::RequestDeleteRange(
            pb::DeleteRangeRequest {
                key: key.to_vec(),
                ..Default::default()
            },
        )),
    }
}

/// The key-values read by the `index`th operation of a txn's answer (empty if it was not a
/// read).
pub(super) fn txn_kvs(response: &pb::TxnResponse, index: usize) -> &[mvccpb::KeyValue] {
    match response
        .responses
        .get(index)
        .and_then(|r| r.response.as_ref())
    {
        Some(pb::response_op::Response::ResponseRange(range)) => &range.kvs,
        _ => &[],
    }
}

/// A txn that deletes `key` if it is still the one created at `revision` (etcd's Resign).
pub(super) fn delete_if_created_at(key: &[u8], revision: i64) -> pb::TxnRequest {
    pb::TxnRequest {
        compare: vec![created_at(key, revision)],
        success: vec![delete_op(key)],
        failure: vec![],
    }
}

/// Whether a call failed without a decision that retrying could change: the cluster had no
/// leader, changed leader, or did not answer in time. The steps retried here are idempotent
/// (create a key if absent, put the same value, delete if created at a revision, read), so a
/// retry after a write that did commit is harmless.
fn transient(error: &ServerError) -> bool {
    matches!(
        error,
        ServerError::NoLeader
            | ServerError::LeaderChanged
            | ServerError::Timeout
            | ServerError::TimeoutWaitAppliedIndex
    )
}

/// Runs `call` until it succeeds or fails for good, retrying transient failures with a growing
/// pause, for as long as `patience` allows and the node runs.
pub(super) async fn retrying<T, F, Fut>(
    client: &Client,
    patience: Patience,
    mut call: F,
) -> Result<T, ServerError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ServerError>>,
{
    let deadline = match patience {
        Patience::Step => {
            Some(Instant::now() + client.node().config().election_timeout * PATIENCE_ELECTIONS)
        }
        Patience::Waiter => None,
    };
    let mut backoff = FIRST_BACKOFF;
    loop {
        match call().await {
            Err(error)
                if transient(&error)
                    && deadline.is_none_or(|deadline| Instant::now() + backoff < deadline) =>
            {
                tracing::debug!("retrying after a transient failure: {error}");
                tokio::select! {
                    _ = client.stopped() => return Err(ServerError::Stopped),
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            result => return result,
        }
    }
}

/// Waits until every key under `prefix` created at or before `max_create_revision` is deleted
/// (etcd's `waitDeletes`), and answers the header of the read that found none left.
///
/// Each round reads the newest such key and waits for its deletion only, from the revision of
/// that read; then it reads again. It ends only when no such key is left, the node stops, or a
/// read fails for good; dropping it abandons the wait.
pub(super) async fn wait_deletes(
    client: &Client,
    prefix: &[u8],
    max_create_revision: i64,
) -> Result<pb::ResponseHeader, ServerError> {
    let newest = last_created_up_to(prefix, max_create_revision);
    loop {
        let response = retrying(client, Patience::Waiter, || client.range(newest.clone())).await?;
        let header = response.header.unwrap_or_default();
        let Some(kv) = response.kvs.first() else {
            return Ok(header);
        };
        wait_delete(client, &kv.key, header.revision).await?;
    }
}

/// Waits until `key` is deleted at or after `revision`, or until the watch breaks (a
/// compaction past `revision`, say): either way the caller looks again. Fails only when the
/// node stops.
async fn wait_delete(client: &Client, key: &[u8], revision: i64) -> Result<(), ServerError> {
    let create = pb::WatchRequest {
        request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
            pb::WatchCreateRequest {
                key: key.to_vec(),
                start_revision: revision,
                filters: vec![pb::watch_create_request::FilterType::Noput as i32],
                ..Default::default()
            },
        )),
    };
    // The request stream ends after the create; the watch keeps delivering its events.
    let mut responses = client.watch(futures::stream::iter([Ok::<_, Infallible>(create)]));
    while let Some(response) = responses.next().await {
        match response {
            Ok(response) if response.canceled => {
                tracing::debug!(
                    compact_revision = response.compact_revision,
                    "watch for a lock or election key was canceled; looking again"
                );
                return Ok(());
            }
            Ok(response) => {
                let deleted = response
                    .events
                    .iter()
                    .any(|event| event.r#type == mvccpb::event::EventType::Delete as i32);
                if deleted {
                    return Ok(());
                }
            }
            Err(ServerError::Stopped) => return Err(ServerError::Stopped),
            Err(error) => {
                tracing::debug!("watch for a lock or election key broke ({error}); looking again");
                return Ok(());
            }
        }
    }
    Ok(())
}

/// Runs `enter`, the txn that creates `key` unless it exists (its first operation reads the key
/// otherwise), and answers its response with the key's create revision in an [`Abandon`].
///
/// The txn runs in a task of its own, so that a caller that goes away while it is in flight
/// still has its key deleted: the task finishes, and drops the guard nobody took.
pub(super) async fn enter(
    client: &Client,
    key: &[u8],
    enter: pb::TxnRequest,
) -> Result<(pb::TxnResponse, Abandon), ServerError> {
    let client = client.clone();
    let key = key.to_vec();
    let task = tokio::spawn(async move {
        let response = retrying(&client, Patience::Step, || client.txn(enter.clone())).await?;
        let revision = if response.succeeded {
            response.header.as_ref().map_or(0, |header| header.revision)
        } else {
            txn_kvs(&response, 0)
                .first()
                .ok_or_else(|| ServerError::Internal("an entering txn found no key".into()))?
                .create_revision
        };
        let guard = Abandon::new(&client, &key, revision);
        Ok((response, guard))
    });
    task.await
        .map_err(|e| ServerError::Internal(format!("an entering txn's task failed: {e}")))?
}

/// The key of a Lock or Campaign in progress: unless [`Abandon::keep`] is called, dropping it
/// deletes the key (if it is still the one created at that revision), as etcd's `Mutex.Lock`
/// and `Election.Campaign` delete their key when their context is cancelled. gRPC drops a
/// call's future when its client cancels it, times out or disconnects, so a waiter that nobody
/// waits for leaves no key behind to block the lock.
pub(super) struct Abandon {
    client: Client,
    key: Vec<u8>,
    create_revision: i64,
    /// Cleared by [`Abandon::keep`]: the call answered and the key now belongs to its caller.
    armed: bool,
}

impl Abandon {
    fn new(client: &Client, key: &[u8], create_revision: i64) -> Abandon {
        Abandon {
            client: client.clone(),
            key: key.to_vec(),
            create_revision,
            armed: true,
        }
    }

    /// The create revision of the key: the waiter's place, and the lock's fencing token.
    pub(super) fn create_revision(&self) -> i64 {
        self.create_revision
    }

    /// Hands the key to the caller: dropping no longer deletes it.
    pub(super) fn keep(mut self) {
        self.armed = false;
    }
}

impl Drop for Abandon {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        // A drop outside a runtime happens only as the process ends; the key's lease then
        // removes it.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let client = self.client.clone();
        let delete = delete_if_created_at(&self.key, self.create_revision);
        let key = String::from_utf8_lossy(&self.key).into_owned();
        runtime.spawn(async move {
            match retrying(&client, Patience::Step, || client.txn(delete.clone())).await {
                Ok(_) => tracing::debug!(key, "deleted the key of an abandoned lock or campaign"),
                Err(error) => tracing::warn!(
                    key,
                    "could not delete the key of an abandoned lock or campaign (its lease will): \
                     {error}"
                ),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_the_lease_in_lowercase_hex_as_go_prints_it() {
        let prefix = prefix_of(b"jobs");
        assert_eq!(
            session_key(&prefix, 0x694d_a24e_40a9_310b),
            b"jobs/694da24e40a9310b"
        );
        assert_eq!(session_key(&prefix, 255), b"jobs/ff");
        assert_eq!(session_key(&prefix, -1), b"jobs/-1");
        assert_eq!(session_key(&prefix, i64::MIN), b"jobs/-8000000000000000");
        assert_eq!(session_key(&prefix_of(b""), 10), b"/a");
    }
}
