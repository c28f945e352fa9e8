//! The Auth service's paths (`auth/...`). Rampart has no authentication yet, and serves no Auth
//! service over gRPC either: `auth/status` answers as etcd does with authentication disabled
//! (`enabled` false, so left out, and auth revision 0), and every other `auth/` path is refused
//! as not implemented (HTTP 501, "rampart does not support Auth yet"), as the gRPC calls are.

use axum::extract::{Request, State};
use axum::response::Response;
use axum::routing::any;
use axum::Router;
use rampart_api::etcdserverpb as pb;
use tonic::Status;

use super::json;
use super::{post, Shared};
use crate::error::ServerError;

pub(super) fn routes() -> Router<Shared> {
    Router::new()
        .route("/auth/status", post(status))
        .route("/auth/{*call}", any(unimplemented))
}

async fn status(State(g): State<Shared>, request: Request) -> Response {
    g.unary(
        "/etcdserverpb.Auth/AuthStatus",
        request,
        |_: tonic::Request<pb::AuthStatusRequest>| async {
            Ok(tonic::Response::new(pb::AuthStatusResponse {
                header: Some(g.node.current_header()),
                enabled: false,
                auth_revision: 0,
            }))
        },
    )
    .await
}

async fn unimplemented(request: Request) -> Response {
    json::discard(request.into_body()).await;
    json::error(&Status::from(ServerError::Unimplemented("Auth")))
}
