//! The Maintenance service's paths (etcd's `Maintenance` bindings): `maintenance/status`,
//! `alarm`, `defragment`, `hash`, `hashkv`, `snapshot` (streamed: `{"result": {"blob": ...}}`
//! lines), `transfer-leadership` (MoveLeader) and `downgrade`, each one call of the gRPC service.
//!
//! etcd 3.4 binds both Hash and HashKV to `maintenance/hash`; the first binding, Hash's, is the
//! one that answers (`{"header": ..., "hash": ...}`, compared with etcd 3.4.23), so it is Hash
//! here too. HashKV is served at `maintenance/hashkv`, its path from etcd 3.5 on.

use axum::extract::{Request, State};
use axum::response::Response;
use axum::Router;
use rampart_api::etcdserverpb::maintenance_server::Maintenance;

use super::{post, Shared};

pub(super) fn routes() -> Router<Shared> {
    Router::new()
        .route("/maintenance/status", post(status))
        .route("/maintenance/alarm", post(alarm))
        .route("/maintenance/defragment", post(defragment))
        .route("/maintenance/hash", post(hash))
        .route("/maintenance/hashkv", post(hash_kv))
        .route("/maintenance/snapshot", post(snapshot))
        .route("/maintenance/transfer-leadership", post(move_leader))
        .route("/maintenance/downgrade", post(downgrade))
}

async fn status(State(g): State<Shared>, request: Request) -> Response {
    g.unary("/etcdserverpb.Maintenance/Status", request, |r| {
        g.maintenance.status(r)
    })
    .await
}

async fn alarm(State(g): State<Shared>, request: Request) -> Response {
    g.unary("/etcdserverpb.Maintenance/Alarm", request, |r| {
        g.maintenance.alarm(r)
    })
    .await
}

async fn defragment(State(g): State<Shared>, request: Request) -> Response {
    g.unary("/etcdserverpb.Maintenance/Defragment", request, |r| {
        g.maintenance.defragment(r)
    })
    .await
}

async fn hash(State(g): State<Shared>, request: Request) -> Response {
    g.unary("/etcdserverpb.Maintenance/Hash", request, |r| {
        g.maintenance.hash(r)
    })
    .await
}

async fn hash_kv(State(g): State<Shared>, request: Request) -> Response {
    g.unary("/etcdserverpb.Maintenance/HashKV", request, |r| {
        g.maintenance.hash_kv(r)
    })
    .await
}

async fn snapshot(State(g): State<Shared>, request: Request) -> Response {
    g.server_stream("/etcdserverpb.Maintenance/Snapshot", request, |r| {
        g.maintenance.snapshot(r)
    })
    .await
}

async fn move_leader(State(g): State<Shared>, request: Request) -> Response {
    g.unary("/etcdserverpb.Maintenance/MoveLeader", request, |r| {
        g.maintenance.move_leader(r)
    })
    .await
}

async fn downgrade(State(g): State<Shared>, request: Request) -> Response {
    g.unary("/etcdserverpb.Maintenance/Downgrade", request, |r| {
        g.maintenance.downgrade(r)
    })
    .await
}
