//! The Lease service's paths (etcd's `Lease` bindings): `lease/grant`, `lease/revoke`,
//! `lease/keepalive` (streamed), `lease/timetolive` and `lease/leases`, and the
//! `kv/lease/revoke`, `kv/lease/timetolive` and `kv/lease/leases` aliases etcd binds too (etcd3gw
//! uses them).
//!
//! `lease/keepalive` is the bidirectional LeaseKeepAlive: its body holds one or more
//! `{"ID": ...}` requests, each answered by a `{"result": ...}` line once renewed (TTL 0 for a
//! lease that does not exist), through the same client call the gRPC service makes; the answer
//! ends when the body has ended and every request is answered, or at the first error, as the
//! gRPC stream ends then.

use axum::extract::{Request, State};
use axum::response::Response;
use axum::Router;
use rampart_api::etcdserverpb as pb;
use rampart_api::etcdserverpb::lease_server::Lease;
use tonic::Status;

use super::json::{self, Requests};
use super::{metadata, post, Shared};

pub(super) fn routes() -> Router<Shared> {
    Router::new()
        .route("/lease/grant", post(grant))
        .route("/lease/revoke", post(revoke))
        .route("/kv/lease/revoke", post(revoke))
        .route("/lease/keepalive", post(keep_alive))
        .route("/lease/timetolive", post(time_to_live))
        .route("/kv/lease/timetolive", post(time_to_live))
        .route("/lease/leases", post(leases))
        .route("/kv/lease/leases", post(leases))
}

async fn grant(State(g): State<Shared>, request: Request) -> Response {
    g.unary("/etcdserverpb.Lease/LeaseGrant", request, |r| {
        g.lease.lease_grant(r)
    })
    .await
}

async fn revoke(State(g): State<Shared>, request: Request) -> Response {
    g.unary("/etcdserverpb.Lease/LeaseRevoke", request, |r| {
        g.lease.lease_revoke(r)
    })
    .await
}

async fn time_to_live(State(g): State<Shared>, request: Request) -> Response {
    g.unary("/etcdserverpb.Lease/LeaseTimeToLive", request, |r| {
        g.lease.lease_time_to_live(r)
    })
    .await
}

async fn leases(State(g): State<Shared>, request: Request) -> Response {
    g.unary("/etcdserverpb.Lease/LeaseLeases", request, |r| {
        g.lease.lease_leases(r)
    })
    .await
}

async fn keep_alive(State(g): State<Shared>, request: Request) -> Response {
    let caller = match g.check(
        "/etcdserverpb.Lease/LeaseKeepAlive",
        &metadata(request.headers()),
    ) {
        Ok(caller) => caller,
        Err(status) => return json::error(&status),
    };
    let mut requests =
        Requests::<pb::LeaseKeepAliveRequest>::new(request.into_body(), g.body_limit);
    // A first request that cannot be read fails the call; later ones end the requests.
    let first = match requests.next().await {
        Some(Ok(first)) => Some(first),
        Some(Err(status)) => {
            requests.discard().await;
            return json::error(&status);
        }
        None => None,
    };
    let client = g.client.as_caller(caller);
    let answers = futures::stream::unfold(
        (first, requests, client),
        |(first, mut requests, client)| async move {
            let request = match first {
                Some(first) => first,
                None => match requests.next().await? {
                    Ok(request) => request,
                    Err(status) => return Some((Err(status), (None, requests, client))),
                },
            };
            let renewed = tokio::select! {
                _ = client.stopped() => return None,
                renewed = client.lease_keep_alive(request.id) => renewed.map_err(Status::from),
            };
            Some((renewed, (None, requests, client)))
        },
    );
    json::stream(answers)
}
