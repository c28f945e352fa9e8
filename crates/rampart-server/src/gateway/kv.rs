//! The KV service's paths (etcd's `KV` bindings): `kv/range`, `kv/put`, `kv/deleterange`,
//! `kv/txn` and `kv/compaction`, each one call of the gRPC service.

use axum::extract::{Request, State};
use axum::response::Response;
use axum::Router;
use rampart_api::etcdserverpb::kv_server::Kv;

use super::{post, Shared};

pub(super) fn routes() -> Router<Shared> {
    Router::new()
        .route("/kv/range", post(range))
        .route("/kv/put", post(put))
        .route("/kv/deleterange", post(delete_range))
        .route("/kv/txn", post(txn))
        .route("/kv/compaction", post(compact))
}

async fn range(State(g): State<Shared>, request: Request) -> Response {
    g.unary("/etcdserverpb.KV/Range", request, |r| g.kv.range(r))
        .await
}

async fn put(State(g): State<Shared>, request: Request) -> Response {
    g.unary("/etcdserverpb.KV/Put", request, |r| g.kv.put(r))
        .await
}

async fn delete_range(State(g): State<Shared>, request: Request) -> Response {
    g.unary("/etcdserverpb.KV/DeleteRange", request, |r| {
        g.kv.delete_range(r)
    })
    .await
}

async fn txn(State(g): State<Shared>, request: Request) -> Response {
    g.unary("/etcdserverpb.KV/Txn", request, |r| g.kv.txn(r))
        .await
}

async fn compact(State(g): State<Shared>, request: Request) -> Response {
    g.unary("/etcdserverpb.KV/Compact", request, |r| g.kv.compact(r))
        .await
}
