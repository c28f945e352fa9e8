//! The Election service's paths (etcd's `v3election` bindings): `election/campaign`,
//! `proclaim`, `leader`, `observe` (streamed: a `{"result": LeaderResponse}` line each time the
//! leadership or its value changes) and `resign`, each one call of the gRPC service.

use axum::extract::{Request, State};
use axum::response::Response;
use axum::Router;
use rampart_api::v3electionpb::election_server::Election;

use super::{post, Shared};

pub(super) fn routes() -> Router<Shared> {
    Router::new()
        .route("/election/campaign", post(campaign))
        .route("/election/proclaim", post(proclaim))
        .route("/election/leader", post(leader))
        .route("/election/observe", post(observe))
        .route("/election/resign", post(resign))
}

async fn campaign(State(g): State<Shared>, request: Request) -> Response {
    g.unary("/v3electionpb.Election/Campaign", request, |r| {
        g.election.campaign(r)
    })
    .await
}

async fn proclaim(State(g): State<Shared>, request: Request) -> Response {
    g.unary("/v3electionpb.Election/Proclaim", request, |r| {
        g.election.proclaim(r)
    })
    .await
}

async fn leader(State(g): State<Shared>, request: Request) -> Response {
    g.unary("/v3electionpb.Election/Leader", request, |r| {
        g.election.leader(r)
    })
    .await
}

async fn observe(State(g): State<Shared>, request: Request) -> Response {
    g.server_stream("/v3electionpb.Election/Observe", request, |r| {
        g.election.observe(r)
    })
    .await
}

async fn resign(State(g): State<Shared>, request: Request) -> Response {
    g.unary("/v3electionpb.Election/Resign", request, |r| {
        g.election.resign(r)
    })
    .await
}
