//! An in-process client of this member: etcd's KV, Lease and Watch calls, taking and returning
//! the etcd protobuf messages, as etcd's `v3client` gives its Lock and Election services a client
//! of their own server.
//!
//! Everything a call does besides the transport lives here: etcd's checks before Raft (request
//! size, `--max-txn-ops`, the checks of `crate::convert`, the caller's permissions once
//! authentication is on), the write or read path of [`Node`], and the response with its header.
//! A client made by [`Client::new`] is this member's own and is not checked; the services make
//! their calls through [`Client::for_request`], as the call's caller. The gRPC services (`crate::services`) are thin adaptors
//! over it, and services built on KV, Lease and Watch (Lock, Election, the JSON gateway) call it
//! instead of reaching into [`Node`] or dialling the member over gRPC. Errors are
//! [`ServerError`]s, which become etcd's statuses in one place (`crate::error`).

use std::sync::Arc;

use futures::Stream;
use prost::Message;
use rampart_api::etcdserverpb as pb;
use rampart_storage::{Access, ApplyError, AuthState, Command, CommandResult};
use tokio_util::sync::CancellationToken;

use crate::alarm;
use crate::auth::Caller;
use crate::convert::{self, Limits};
use crate::error::ServerError;
use crate::lessor::Lessor;
use crate::node::Node;
use crate::watch;

/// A client of one member; cheap to clone.
#[derive(Clone)]
pub struct Client {
    node: Arc<Node>,
    /// The leader's lease clock, reached through this member's lessor.
    lessor: Arc<Lessor>,
    /// Cancelled when the node stops; ends watch and keep-alive streams.
    shutdown: CancellationToken,
    /// Whose calls these are: their permissions are checked (`crate::auth`) unless this
    /// member's own.
    caller: Caller,
}

impl Client {
    pub fn new(node: Arc<Node>, lessor: Arc<Lessor>, shutdown: CancellationToken) -> Self {
        Client {
            node,
            lessor,
            shutdown,
            caller: Caller::Trusted,
        }
    }

    /// This client, making its calls as `caller` (each call's permissions checked as etcd
    /// checks them), as the services use it for a client's call.
    pub fn as_caller(&self, caller: Caller) -> Client {
        Client {
            caller,
            ..self.clone()
        }
    }

    /// The client for the call `request`: as the caller the interceptor found.
    pub fn for_request<T>(&self, request: &tonic::Request<T>) -> Client {
        self.as_caller(Caller::of(request))
    }

    /// Whose calls these are.
    pub fn caller(&self) -> &Caller {
        &self.caller
    }

    /// `check` of the auth store, as this client's caller.
    fn permit(
        &self,
        check: impl FnOnce(&AuthState, &str) -> Result<(), ApplyError>,
    ) -> Result<(), ServerError> {
        self.caller.check(&self.node.mvcc().auth(), check)
    }

    /// etcd's request-time check of `command` for this caller under `auth`, which the applier
    /// repeats (see [`Caller::wrap`]); the keys of leases are checked there only, where they
    /// are known.
    fn permit_command(&self, auth: &AuthState, command: &Command) -> Result<(), ServerError> {
        self.caller.check(auth, |auth, user| {
            auth.check_command(user, command, &|_| Ok(Vec::new()))
                .unwrap_or(Ok(()))
        })
    }

    /// The member this client talks to.
    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// Completes when the node stops.
    pub async fn stopped(&self) {
        self.shutdown.cancelled().await
    }

    /// etcd's check on the size of a request that goes through Raft.
    fn check_size(&self, request: &impl Message) -> Result<(), ServerError> {
        if request.encoded_len() > self.node.config().max_request_bytes {
            Err(ServerError::RequestTooLarge)
        } else {
            Ok(())
        }
    }

    /// Proposes `command` and returns its result with the header at the revision it produced.
    async fn write(
        &self,
        command: Command,
    ) -> Result<(CommandResult, pb::ResponseHeader), ServerError> {
        let auth = self.node.mvcc().auth();
        self.permit_command(&auth, &command)?;
        let command = self.caller.wrap(command, auth.enabled());
        let response = self.node.write(command).await?;
        let result = response.result?;
        Ok((result, self.node.header(response.revision)))
    }

    pub async fn range(&self, request: pb::RangeRequest) -> Result<pb::RangeResponse, ServerError> {
        let request = convert::range_request(request)?;
        // Also checked by the interceptor when the call began; a Range of an in-process
        // client (Lock, Election) passes only here.
        self.node.check_not_corrupt()?;
        if !request.serializable {
            self.node.read_barrier().await?;
        }
        // After the barrier, as etcd: against an auth store at least as new as the read.
        self.permit(|auth, user| {
            auth.check_range(user, Access::Read, &request.key, &request.range_end)
        })?;
        let (response, revision) = self.node.mvcc().try_range(&request)?;
        Ok(convert::range_response(
            response,
            self.node.header(revision),
        ))
    }

    pub async fn put(&self, request: pb::PutRequest) -> Result<pb::PutResponse, ServerError> {
        self.check_size(&request)?;
        let cost = alarm::put_cost(&request);
        let put = convert::put_request(request)?;
        self.node.check_quota(cost).await?;
        match self.write(Command::Put(put)).await? {
            (CommandResult::Put(r), header) => Ok(convert::put_response(r, header)),
            (other, _) => Err(mismatch(other)),
        }
    }

    pub async fn delete_range(
        &self,
        request: pb::DeleteRangeRequest,
    ) -> Result<pb::DeleteRangeResponse, ServerError> {
        self.check_size(&request)?;
        let delete = convert::delete_request(request)?;
        match self.write(Command::DeleteRange(delete)).await? {
            (CommandResult::DeleteRange(r), header) => Ok(convert::delete_response(r, header)),
            (other, _) => Err(mismatch(other)),
        }
    }

    pub async fn txn(&self, request: pb::TxnRequest) -> Result<pb::TxnResponse, ServerError> {
        self.check_size(&request)?;
        let limits = Limits {
            max_txn_ops: self.node.config().max_txn_ops,
        };
        let cost = alarm::txn_cost(&request);
        let txn = convert::txn_request(request, limits)?;
        if cost > 0 {
            self.node.check_quota(cost).await?;
        }
        match self.write(Command::Txn(txn)).await? {
            (CommandResult::Txn(r), header) => Ok(convert::txn_response(r, &header)),
            (other, _) => Err(mismatch(other)),
        }
    }

    pub async fn compact(
        &self,
        request: pb::CompactionRequest,
    ) -> Result<pb::CompactionResponse, ServerError> {
        let revision = request.revision;
        match self.write(Command::Compact { revision }).await? {
            (CommandResult::Compact, header) => {
                if request.physical {
                    // Applied here, the compaction removes what it superseded in the
                    // background; `physical` asks to answer only once that is done, as etcd's.
                    self.node
                        .mvcc()
                        .wait_compacted(revision)
                        .await
                        .map_err(|_| ServerError::Stopped)?;
                }
                Ok(pb::CompactionResponse {
                    header: Some(header),
                })
            }
            (other, _) => Err(mismatch(other)),
        }
    }

    /// A positive lease id that this node does not know to be in use. Another member may have
    /// granted it meanwhile; the grant then fails with `LeaseExists` and a new id is drawn.
    fn unused_lease_id(&self) -> Result<i64, ServerError> {
        loop {
            let id = rand::random::<i64>() & i64::MAX;
            if id != 0 && self.node.mvcc().lease(id)?.is_none() {
                return Ok(id);
            }
        }
    }

    pub async fn lease_grant(
        &self,
        request: pb::LeaseGrantRequest,
    ) -> Result<pb::LeaseGrantResponse, ServerError> {
        let ttl = convert::lease_ttl(request.ttl, self.node.config().min_lease_ttl())?;
        self.node.check_quota(alarm::LEASE_OVERHEAD).await?;
        loop {
            let id = match request.id {
                0 => self.unused_lease_id()?,
                chosen => chosen,
            };
            let response = self.node.write(Command::LeaseGrant { id, ttl }).await?;
            match response.result {
                Ok(CommandResult::LeaseGrant { id, ttl }) => {
                    return Ok(pb::LeaseGrantResponse {
                        header: Some(self.node.header(response.revision)),
                        id,
                        ttl,
                        error: String::new(),
                    })
                }
                // The id we drew was taken by another grant: the failed grant changed nothing.
                Err(ApplyError::LeaseExists) if request.id == 0 => continue,
                Err(e) => return Err(e.into()),
                Ok(other) => return Err(mismatch(other)),
            }
        }
    }

    pub async fn lease_revoke(
        &self,
        request: pb::LeaseRevokeRequest,
    ) -> Result<pb::LeaseRevokeResponse, ServerError> {
        match self.write(Command::LeaseRevoke { id: request.id }).await? {
            (CommandResult::LeaseRevoke, header) => Ok(pb::LeaseRevokeResponse {
                header: Some(header),
            }),
            (other, _) => Err(mismatch(other)),
        }
    }

    /// Renews lease `id` on the leader's lessor, wherever it is; a TTL of 0 if the lease is
    /// unknown or has expired.
    pub async fn lease_keep_alive(
        &self,
        id: i64,
    ) -> Result<pb::LeaseKeepAliveResponse, ServerError> {
        // The header is taken before the renewal, as etcd does, so a revoke the client sees
        // later never has a revision below it.
        let header = self.node.current_header();
        let ttl = self.lessor.keep_alive(id).await?;
        Ok(pb::LeaseKeepAliveResponse {
            header: Some(header),
            id,
            ttl,
        })
    }

    pub async fn lease_time_to_live(
        &self,
        request: pb::LeaseTimeToLiveRequest,
    ) -> Result<pb::LeaseTimeToLiveResponse, ServerError> {
        let id = request.id;
        let status = self.lessor.time_to_live(id).await?;
        let mut keys = Vec::new();
        if status.remaining_ttl >= 0 && request.keys {
            // The leader knows the lease; read its keys here once this node has caught up.
            self.node.read_barrier().await?;
            keys = self.node.mvcc().lease_keys(id)?;
        }
        Ok(pb::LeaseTimeToLiveResponse {
            header: Some(self.node.current_header()),
            id,
            ttl: status.remaining_ttl,
            granted_ttl: status.granted_ttl,
            keys,
        })
    }

    pub async fn lease_leases(&self) -> Result<pb::LeaseLeasesResponse, ServerError> {
        self.node.read_barrier().await?;
        let leases = self.node.mvcc().leases()?;
        Ok(pb::LeaseLeasesResponse {
            header: Some(self.node.current_header()),
            leases: leases
                .iter()
                .map(|lease| pb::LeaseStatus { id: lease.id })
                .collect(),
        })
    }

    /// Opens a watch stream fed by `requests`, with etcd's semantics (see `crate::watch`): the
    /// responses end when `requests` fails, when they are dropped, or, with "server stopped",
    /// when the node stops. A stream whose `requests` end keeps delivering its watches' events.
    pub fn watch<R, E>(&self, requests: R) -> watch::Responses
    where
        R: Stream<Item = Result<pb::WatchRequest, E>> + Unpin + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        watch::serve(
            self.node.clone(),
            &self.shutdown,
            self.caller.clone(),
            requests,
        )
    }
}

/// A command's result did not match the command: a broken invariant of the state machine.
fn mismatch(result: CommandResult) -> ServerError {
    ServerError::Internal(format!(
        "unexpected result from the state machine: {result:?}"
    ))
}
