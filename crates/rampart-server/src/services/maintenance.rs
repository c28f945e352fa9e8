//! etcdserverpb.Maintenance: Status, Alarm and Defragment so far.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use rampart_api::etcdserverpb as pb;
use rampart_api::etcdserverpb::maintenance_server::Maintenance;
use tonic::{Request, Response, Status};

use crate::node::Node;

/// The etcd API version Rampart speaks, reported by Status.
pub const API_VERSION: &str = "3.5.0";

pub struct MaintenanceService {
    node: Arc<Node>,
}

impl MaintenanceService {
    pub fn new(node: Arc<Node>) -> Self {
        MaintenanceService { node }
    }
}

fn not_yet(what: &str) -> Status {
    Status::unimplemented(format!("rampart does not support {what} yet"))
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
            return Err(not_yet("raising or clearing alarms"));
        }
        Ok(Response::new(pb::AlarmResponse {
            header: Some(self.node.header(self.node.mvcc.revision())),
            alarms: vec![],
        }))
    }

    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let metrics = self.node.metrics();
        let db_size = self.node.store.size_on_disk() as i64;
        let is_learner = !metrics
            .membership_config
            .membership()
            .voter_ids()
            .any(|id| id == self.node.id());
        Ok(Response::new(pb::StatusResponse {
            header: Some(self.node.header(self.node.mvcc.revision())),
            version: API_VERSION.to_string(),
            db_size,
            leader: metrics.current_leader.unwrap_or(0),
            raft_index: metrics.last_log_index.unwrap_or(0),
            raft_term: metrics.current_term,
            raft_applied_index: metrics.last_applied.map_or(0, |id| id.index),
            errors: vec![],
            db_size_in_use: db_size,
            is_learner,
            ..Default::default()
        }))
    }

    /// Only flushes the database: unlike etcd's, this returns no space to the file system.
    /// sled cannot rewrite its file in place; it reuses a log segment of its own accord once at
    /// most half of it is live, which leaves a database that was overwritten several times at
    /// several times the size of its live data even after a compaction (see
    /// `benches/capacity.sh`). Building a snapshot so as to purge the Raft log was weighed and
    /// not done: the snapshot file is a full copy of the state machine (with 100,000 keys
    /// written three times, 140 MiB before a compaction and about 65 after it, against 87 MiB
    /// of Raft log), and building it raised one store's RSS from 93 to 267 MiB.
    async fn defragment(
        &self,
        _request: Request<pb::DefragmentRequest>,
    ) -> Result<Response<pb::DefragmentResponse>, Status> {
        self.node
            .store
            .flush()
            .map_err(|e| Status::internal(format!("flush failed: {e}")))?;
        Ok(Response::new(pb::DefragmentResponse {
            header: Some(self.node.header(self.node.mvcc.revision())),
        }))
    }

    async fn hash(
        &self,
        _request: Request<pb::HashRequest>,
    ) -> Result<Response<pb::HashResponse>, Status> {
        Err(not_yet("Hash"))
    }

    async fn hash_kv(
        &self,
        _request: Request<pb::HashKvRequest>,
    ) -> Result<Response<pb::HashKvResponse>, Status> {
        Err(not_yet("HashKV"))
    }

    type SnapshotStream = SnapshotStream;

    async fn snapshot(
        &self,
        _request: Request<pb::SnapshotRequest>,
    ) -> Result<Response<SnapshotStream>, Status> {
        Err(not_yet("Snapshot"))
    }

    async fn move_leader(
        &self,
        _request: Request<pb::MoveLeaderRequest>,
    ) -> Result<Response<pb::MoveLeaderResponse>, Status> {
        Err(not_yet("MoveLeader"))
    }

    async fn downgrade(
        &self,
        _request: Request<pb::DowngradeRequest>,
    ) -> Result<Response<pb::DowngradeResponse>, Status> {
        Err(not_yet("Downgrade"))
    }
}
