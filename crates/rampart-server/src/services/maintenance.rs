//! etcdserverpb.Maintenance: Status, Alarm, Defragment, Hash, HashKV, Snapshot and MoveLeader.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use rampart_api::etcdserverpb as pb;
use rampart_api::etcdserverpb::maintenance_server::Maintenance;
use tonic::{Request, Response, Status};

use crate::alarm;
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

/// Bytes of backup per Snapshot message (etcd sends 32 KiB; larger blobs mean fewer messages).
const SNAPSHOT_BLOB_BYTES: usize = 256 * 1024;

/// Reads until `buf` is full or the input ends; returns how many bytes it read.
fn read_full(input: &mut impl std::io::Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<pb::SnapshotResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    /// etcd's Alarm: GET lists the raised alarms (all of them for NONE, else those of the type
    /// asked; linearizable, as etcd's goes through Raft), ACTIVATE and DEACTIVATE raise and
    /// clear one member's alarm through Raft and answer the alarm changed (none if it already
    /// was so). Clearing NOSPACE lets writes through again on every member; clearing CORRUPT
    /// lets its member serve clients again.
    async fn alarm(
        &self,
        request: Request<pb::AlarmRequest>,
    ) -> Result<Response<pb::AlarmResponse>, Status> {
        use pb::alarm_request::AlarmAction as Action;
        let request = request.into_inner();
        let action = match Action::try_from(request.action) {
            Ok(Action::Get) => None,
            Ok(Action::Activate) => Some(rampart_storage::AlarmAction::Activate),
            Ok(Action::Deactivate) => Some(rampart_storage::AlarmAction::Deactivate),
            Err(_) => {
                return Err(ServerError::InvalidArgument(format!(
                    "unknown alarm action {}",
                    request.action
                ))
                .into())
            }
        };
        let alarms = match action {
            None => {
                // NONE asks for every alarm.
                let wanted = match request.alarm {
                    0 => None,
                    other => Some(alarm::alarm_type_from_pb(other)?),
                };
                self.node.read_barrier().await?;
                self.node
                    .alarms()
                    .into_iter()
                    .filter(|a| wanted.is_none_or(|w| a.alarm == w))
                    .collect()
            }
            Some(action) => {
                let target = rampart_storage::AlarmMember {
                    member_id: request.member_id,
                    alarm: alarm::alarm_type_from_pb(request.alarm)?,
                };
                self.node.alarm(action, target).await?
            }
        };
        Ok(Response::new(pb::AlarmResponse {
            header: Some(self.node.current_header()),
            alarms: alarms.iter().map(alarm::alarm_member).collect(),
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
            // One entry per raised alarm, as etcd's.
            errors: self.node.alarms().iter().map(alarm::status_error).collect(),
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

    /// Streams a backup of this member's state machine (`etcdctl snapshot save`): a snapshot
    /// of one applied entry, taken while writes go on, in Rampart's backup format with its
    /// SHA-256 last (see `rampart_storage::Backup`). The snapshot is first written whole to a
    /// file with no name in the data directory, so the stream can tell the bytes that remain
    /// (etcd's `remaining_bytes`), and is then sent a blob at a time.
    async fn snapshot(
        &self,
        _request: Request<pb::SnapshotRequest>,
    ) -> Result<Response<SnapshotStream>, Status> {
        let mvcc = self.node.mvcc().clone();
        let scratch = self.node.config().data_dir.clone();
        let mut backup =
            tokio::task::spawn_blocking(move || rampart_storage::Backup::export(&mvcc, &scratch))
                .await
                .map_err(|e| ServerError::Internal(format!("snapshot failed: {e}")))?
                .map_err(ServerError::from)?;
        let header = self.node.header(backup.revision());
        let (blobs, stream) = tokio::sync::mpsc::channel(4);
        // Reading the file is blocking I/O; the channel's bound keeps at most a few blobs
        // ahead of a slow client.
        tokio::task::spawn_blocking(move || {
            let total = backup.len();
            let mut sent = 0;
            loop {
                let mut blob = vec![0; SNAPSHOT_BLOB_BYTES];
                let read = read_full(&mut backup, &mut blob).map_err(|e| {
                    ServerError::Internal(format!("reading the snapshot failed: {e}"))
                });
                let message = match read {
                    Ok(0) => break,
                    Ok(n) => {
                        blob.truncate(n);
                        sent += n as u64;
                        Ok(pb::SnapshotResponse {
                            header: Some(header),
                            remaining_bytes: total - sent,
                            blob,
                            version: String::new(),
                        })
                    }
                    Err(e) => Err(Status::from(e)),
                };
                let failed = message.is_err();
                // A client gone away closes the channel: stop reading.
                if blobs.blocking_send(message).is_err() || failed {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(stream),
        )))
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
