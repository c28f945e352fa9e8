//! etcdserverpb.Maintenance: Status, Alarm and Defragment so far.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use rampart_api::etcdserverpb as pb;
use rampart_api::etcdserverpb::maintenance_server::Maintenance;
use tonic::{Request, Response, Status};

use crate::error::ServerError;
use crate::membership::Membership;
use crate::node::Node;

/// The etcd API version Rampart speaks, reported by Status.
pub const API_VERSION: &str = "3.5.0";

pub struct MaintenanceService {
    node: Arc<Node>,
    membership: Arc<Membership>,
}

impl MaintenanceService {
    /// `Mvcc::hash_kv` off the async threads: it reads the whole store.
    async fn hash_kv_at(&self, revision: i64) -> Result<rampart_storage::KvHash, ServerError> {
        let mvcc = self.node.mvcc().clone();
        tokio::task::spawn_blocking(move || mvcc.hash_kv(revision))
            .await
            .map_err(|e| ServerError::Internal(format!("hashing failed: {e}")))?
            .map_err(ServerError::from)
    }

    pub fn new(node: Arc<Node>, membership: Arc<Membership>) -> Self {
        MaintenanceService { node, membership }
    }
}

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<pb::SnapshotResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    /// No alarm is ever raised yet, so the list is always empty and activating one is refused.
    async fn alarm(
        &self,
        request: Request<pb::AlarmRequest>,
    ) -> Result<Response<pb::AlarmResponse>, Status> {
        let request = request.into_inner();
        if request.action != pb::alarm_request::AlarmAction::Get as i32 {
            return Err(ServerError::Unimplemented("raising or clearing alarms").into());
        }
        Ok(Response::new(pb::AlarmResponse {
            header: Some(self.node.current_header()),
            alarms: vec![],
        }))
    }

    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let metrics = self.node.metrics();
        let db_size = self.node.db_size() as i64;
        let db_size_in_use = self.node.db_size_in_use() as i64;
        let is_learner = self.node.is_learner();
        Ok(Response::new(pb::StatusResponse {
            header: Some(self.node.current_header()),
            version: API_VERSION.to_string(),
            db_size,
            leader: metrics.current_leader.unwrap_or(0),
            raft_index: metrics.last_log_index.unwrap_or(0),
            raft_term: metrics.current_term,
            raft_applied_index: metrics.last_applied.map_or(0, |id| id.index),
            errors: vec![],
            db_size_in_use,
            is_learner,
            ..Default::default()
        }))
    }

    /// Rewrites this member's database into a fresh one holding only the live data and swaps
    /// it in, giving the rest back to the file system (`rampart_storage`'s `defrag`). Unlike
    /// etcd's, reads and writes go on while it copies; they wait only for the swap's pause,
    /// which is logged with the sizes before and after. A request while one runs joins it. The
    /// response carries no header, as etcd 3.4's does not.
    async fn defragment(
        &self,
        _request: Request<pb::DefragmentRequest>,
    ) -> Result<Response<pb::DefragmentResponse>, Status> {
        self.node.defragment().await?;
        Ok(Response::new(pb::DefragmentResponse { header: None }))
    }

    /// The hash of this member's whole key-value state at its current revision (etcd hashes its
    /// whole backend file; Rampart's is the `HashKV` of the current revision, so two members
    /// that applied the same log answer the same).
    async fn hash(
        &self,
        _request: Request<pb::HashRequest>,
    ) -> Result<Response<pb::HashResponse>, Status> {
        let hashed = self.hash_kv_at(0).await?;
        Ok(Response::new(pb::HashResponse {
            header: Some(self.node.current_header()),
            hash: hashed.hash,
        }))
    }

    /// etcd's `HashKV`: equal on every member at the same revision (see `Mvcc::hash_kv`), for
    /// `etcdctl endpoint hashkv`.
    async fn hash_kv(
        &self,
        request: Request<pb::HashKvRequest>,
    ) -> Result<Response<pb::HashKvResponse>, Status> {
        let hashed = self.hash_kv_at(request.into_inner().revision).await?;
        Ok(Response::new(pb::HashKvResponse {
            header: Some(self.node.current_header()),
            hash: hashed.hash,
            compact_revision: hashed.compact_revision,
            hash_revision: hashed.revision,
        }))
    }

    type SnapshotStream = SnapshotStream;

    async fn snapshot(
        &self,
        _request: Request<pb::SnapshotRequest>,
    ) -> Result<Response<SnapshotStream>, Status> {
        Err(ServerError::Unimplemented("Snapshot").into())
    }

    /// Hands the leadership to another voter; only the leader answers (see
    /// `Membership::move_leader`).
    async fn move_leader(
        &self,
        request: Request<pb::MoveLeaderRequest>,
    ) -> Result<Response<pb::MoveLeaderResponse>, Status> {
        let target = request.into_inner().target_id;
        self.membership.move_leader(target).await?;
        Ok(Response::new(pb::MoveLeaderResponse {
            header: Some(self.node.current_header()),
        }))
    }

    async fn downgrade(
        &self,
        _request: Request<pb::DowngradeRequest>,
    ) -> Result<Response<pb::DowngradeResponse>, Status> {
        Err(ServerError::Unimplemented("Downgrade").into())
    }
}
