//! The Lock service's paths (etcd's `v3lock` bindings): `lock/lock` and `lock/unlock`, each one
//! call of the gRPC service. A Lock waits while others hold the lock; a client that hangs up
//! meanwhile abandons it, and its key is deleted, as when a gRPC caller goes away.

use axum::extract::{Request, State};
use axum::response::Response;
use axum::Router;
use rampart_api::v3lockpb::lock_server::Lock;

use super::{post, Shared};

pub(super) fn routes() -> Router<Shared> {
    Router::new()
        .route("/lock/lock", post(lock))
        .route("/lock/unlock", post(unlock))
}

async fn lock(State(g): State<Shared>, request: Request) -> Response {
    g.unary("/v3lockpb.Lock/Lock", request, |r| g.lock.lock(r))
        .await
}

async fn unlock(State(g): State<Shared>, request: Request) -> Response {
    g.unary("/v3lockpb.Lock/Unlock", request, |r| g.lock.unlock(r))
        .await
}
