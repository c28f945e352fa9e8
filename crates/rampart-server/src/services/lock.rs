//! v3lockpb.Lock: Lock and Unlock, etcd's distributed lock (`v3lock`, over clientv3's
//! `concurrency.Mutex`), built on KV, Lease and Watch through the in-process client.
//!
//! Lock creates `name/<lease hex>` with the caller's lease, unless it exists, in one txn that
//! also reads the oldest key under `name/`; if that is not its own key, it waits for every older
//! key to be deleted (see `super::concurrency`) and answers the key. The key's create revision is
//! the lock's fencing token: it grows with every holder of the same name. The key lives as long
//! as the lease, so a holder whose lease expires or is revoked passes the lock on; Unlock deletes
//! the key. A Lock whose caller goes away while it waits deletes its key.
//!
//! As etcd, lease 0 gets a new lease of 60 s that nothing keeps alive, and every error is
//! answered with code `Unknown` ([`ServerError::into_concurrency_status`]). Unlike etcd 3.4, and
//! as etcd 3.5, a Lock whose own key went away while it waited (its lease expired) fails with
//! "mutex: session is expired" instead of answering a key that no longer holds anything.

use rampart_api::etcdserverpb as pb;
use rampart_api::v3lockpb::lock_server::Lock;
use rampart_api::v3lockpb::{LockRequest, LockResponse, UnlockRequest, UnlockResponse};
use tonic::{Request, Response, Status};

use super::concurrency::{
    created_at, enter, first_created, get, prefix_of, put_op, range_op, retrying, session_key,
    session_lease, txn_kvs, wait_deletes, Patience,
};
use crate::client::Client;
use crate::error::ServerError;

pub struct LockService {
    client: Client,
}

impl LockService {
    pub fn new(client: Client) -> Self {
        LockService { client }
    }
}

/// Takes lock `name` for `lease`, waiting as long as older keys hold it.
async fn lock(client: &Client, request: LockRequest) -> Result<LockResponse, ServerError> {
    let lease = session_lease(client, request.lease).await?;
    let prefix = prefix_of(&request.name);
    let key = session_key(&prefix, lease);
    // Join the waiters (or find this lease already among them), and read the holder, in one
    // round trip; an uncontended lock needs nothing more.
    let acquire = pb::TxnRequest {
        compare: vec![created_at(&key, 0)],
        success: vec![put_op(&key, b"", lease), range_op(first_created(&prefix))],
        failure: vec![range_op(get(&key)), range_op(first_created(&prefix))],
    };
    let (response, guard) = enter(client, &key, acquire).await?;
    let header = response.header.unwrap_or_default();
    let revision = guard.create_revision();
    let holder = txn_kvs(&response, 1).first();
    if holder.is_none_or(|holder| holder.create_revision == revision) {
        guard.keep();
        return Ok(LockResponse {
            header: Some(header),
            key,
        });
    }

    wait_deletes(client, &prefix, revision - 1).await?;
    // Every older key is gone; this one holds the lock if it is still there.
    let mine = retrying(client, Patience::Step, || client.range(get(&key))).await?;
    if !mine.kvs.iter().any(|kv| kv.create_revision == revision) {
        return Err(ServerError::SessionExpired);
    }
    guard.keep();
    Ok(LockResponse {
        header: mine.header,
        key,
    })
}

#[tonic::async_trait]
impl Lock for LockService {
    async fn lock(&self, request: Request<LockRequest>) -> Result<Response<LockResponse>, Status> {
        lock(&self.client.for_request(&request), request.into_inner())
            .await
            .map(Response::new)
            .map_err(ServerError::into_concurrency_status)
    }

    /// Deletes the key a Lock answered, whoever holds it, as etcd's.
    async fn unlock(
        &self,
        request: Request<UnlockRequest>,
    ) -> Result<Response<UnlockResponse>, Status> {
        let client = &self.client.for_request(&request);
        let delete = pb::DeleteRangeRequest {
            key: request.into_inner().key,
            ..Default::default()
        };
        retrying(client, Patience::Step, || {
            client.delete_range(delete.clone())
        })
        .await
        .map(|deleted| {
            Response::new(UnlockResponse {
                header: deleted.header,
            })
        })
        .map_err(ServerError::into_concurrency_status)
    }
}
