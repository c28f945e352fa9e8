//! The Cluster service's paths (etcd's `Cluster` bindings): `cluster/member/list`, `add`,
//! `remove`, `update` and `promote`, each one call of the gRPC service.

use axum::extract::{Request, State};
use axum::response::Response;
use axum::Router;
use rampart_api::etcdserverpb::cluster_server::Cluster;

use super::{post, Shared};

pub(super) fn routes() -> Router<Shared> {
    Router::new()
        .route("/cluster/member/list", post(list))
        .route("/cluster/member/add", post(add))
        .route("/cluster/member/remove", post(remove))
        .route("/cluster/member/update", post(update))
        .route("/cluster/member/promote", post(promote))
}

async fn list(State(g): State<Shared>, request: Request) -> Response {
    g.unary("/etcdserverpb.Cluster/MemberList", request, |r| {
        g.cluster.member_list(r)
    })
    .await
}

async fn add(State(g): State<Shared>, request: Request) -> Response {
    g.unary("/etcdserverpb.Cluster/MemberAdd", request, |r| {
        g.cluster.member_add(r)
    })
    .await
}

async fn remove(State(g): State<Shared>, request: Request) -> Response {
    g.unary("/etcdserverpb.Cluster/MemberRemove", request, |r| {
        g.cluster.member_remove(r)
    })
    .await
}

async fn update(State(g): State<Shared>, request: Request) -> Response {
    g.unary("/etcdserverpb.Cluster/MemberUpdate", request, |r| {
        g.cluster.member_update(r)
    })
    .await
}

async fn promote(State(g): State<Shared>, request: Request) -> Response {
    g.unary("/etcdserverpb.Cluster/MemberPromote", request, |r| {
        g.cluster.member_promote(r)
    })
    .await
}
