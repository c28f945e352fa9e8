//! etcd's JSON gateway: the HTTP/JSON form of the client API that etcd 3.4 serves on its client
//! URLs (grpc-gateway v1 over the gRPC services), for clients without gRPC (Python's `etcd3gw`,
//! Patroni, `curl`).
//!
//! Every path is `POST /v3/<area>/<call>` (and the same under `/v3beta/`, which etcd 3.4 still
//! serves), its body one request message in the protobuf JSON mapping and its answer one response
//! message, as `crate::gateway::json` describes. One JSON request is one call of the same service
//! implementation that serves the gRPC call (`crate::services`, or for the two bidirectional
//! streams the in-process [`Client`] calls their services make), after the checks the interceptor
//! makes of that gRPC call (`crate::interceptor`: learners, a corrupt member, `hasleader`
//! metadata, sent as grpc-gateway forwards metadata, in `Grpc-Metadata-<key>` headers).
//!
//! The areas, one file each: [`kv`], [`watch`] (a streaming response), [`lease`] (keep-alives
//! streamed too), [`cluster`], [`maintenance`] (snapshot streamed), [`lock`], [`election`]
//! (observe streamed), [`auth`] (users, roles, authenticate; the token then goes in the
//! `Authorization` header). `GET /version` answers etcd's version document, which clients
//! (etcd3gw, Patroni) read to choose the API prefix. Unknown paths under the prefixes answer 404
//! with grpc-gateway's plain `Not Found`.

mod auth;
mod cluster;
mod election;
pub(crate) mod json;
mod kv;
mod lease;
mod lock;
mod maintenance;
mod watch;

use std::future::Future;
use std::sync::Arc;

use axum::extract::Request;
use axum::handler::Handler;
use axum::http::{header, HeaderMap, HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, MethodRouter};
use axum::Router;
use futures::Stream;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::metadata::MetadataMap;
use tonic::service::Interceptor;
use tonic::Status;

use crate::auth::Caller;
use crate::client::Client;
use crate::interceptor::{CallPath, RequestInterceptor};
use crate::membership::Membership;
use crate::node::Node;
use crate::services::{
    AuthService, ClusterService, ElectionService, KvService, LeaseService, LockService,
    MaintenanceService, API_VERSION,
};

/// What every route's handler shares: the services it calls and the checks it makes first.
pub(super) struct Gateway {
    kv: KvService,
    lease: LeaseService,
    cluster: ClusterService,
    maintenance: MaintenanceService,
    lock: LockService,
    election: ElectionService,
    auth: AuthService,
    /// For the bidirectional streams (Watch, LeaseKeepAlive), whose services take a gRPC stream:
    /// the same client calls their services make.
    client: Client,
    interceptor: RequestInterceptor,
    /// The most bytes of JSON one request message may take: the gRPC limit on a request
    /// (`--max-request-bytes` and etcd's overhead) twice over, for base64 (4/3) and the names
    /// and quotes around the values. The services then apply etcd's own limit on the message.
    body_limit: usize,
}

/// The state of every route.
type Shared = Arc<Gateway>;

/// The gateway's routes, served beside the gRPC services and `crate::http` on the client URLs.
pub fn router(node: &Arc<Node>, client: &Client, membership: &Arc<Membership>) -> Router {
    let gateway = Gateway {
        kv: KvService::new(client.clone()),
        lease: LeaseService::new(client.clone()),
        cluster: ClusterService::new(node.clone(), membership.clone()),
        maintenance: MaintenanceService::new(node.clone(), membership.clone()),
        lock: LockService::new(client.clone()),
        election: ElectionService::new(client.clone()),
        auth: AuthService::new(node.clone()),
        client: client.clone(),
        interceptor: RequestInterceptor::new(node.clone()),
        body_limit: 2 * node.config().max_grpc_message_bytes(),
    };
    let api = Router::new()
        .merge(kv::routes())
        .merge(watch::routes())
        .merge(lease::routes())
        .merge(cluster::routes())
        .merge(maintenance::routes())
        .merge(lock::routes())
        .merge(election::routes())
        .merge(auth::routes())
        .route("/{*unknown}", any(not_found));
    Router::new()
        .nest("/v3", api.clone())
        .nest("/v3beta", api)
        .route("/version", get(version).fallback(method_not_allowed))
        .with_state(Arc::new(gateway))
}

/// A route for `POST` only, as every gateway binding is; other methods get grpc-gateway's 405.
fn post<H, T>(handler: H) -> MethodRouter<Shared>
where
    H: Handler<T, Shared>,
    T: 'static,
{
    axum::routing::post(handler).fallback(method_not_allowed)
}

/// grpc-gateway's answer to a bound path asked with another method than `POST`.
async fn method_not_allowed(request: Request) -> Response {
    json::discard(request.into_body()).await;
    plain(StatusCode::METHOD_NOT_ALLOWED)
}

/// grpc-gateway's plain-text answers (Go's `http.Error`): the status's reason and a newline.
fn plain(status: StatusCode) -> Response {
    let text = format!("{}\n", status.canonical_reason().unwrap_or_default());
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        text,
    )
        .into_response()
}

/// grpc-gateway's answer to a path it has no binding for.
async fn not_found(request: Request) -> Response {
    json::discard(request.into_body()).await;
    plain(StatusCode::NOT_FOUND)
}

/// etcd's `/version` document: the server's version and the cluster's (`major.minor.0`), as
/// Status reports the version.
async fn version() -> Response {
    let cluster = match API_VERSION.rsplit_once('.') {
        Some((major_minor, _)) => format!("{major_minor}.0"),
        None => API_VERSION.to_string(),
    };
    /// etcd's `version.Versions`, in its field order.
    #[derive(Serialize)]
    struct Versions<'a> {
        etcdserver: &'a str,
        etcdcluster: &'a str,
    }
    let body = Versions {
        etcdserver: API_VERSION,
        etcdcluster: &cluster,
    };
    let text = serde_json::to_string(&body).unwrap_or_default();
    ([(header::CONTENT_TYPE, "application/json")], text).into_response()
}

/// The gRPC metadata of a request's HTTP headers, as grpc-gateway forwards them:
/// `Grpc-Metadata-<key>` as `<key>`, and `Authorization` (etcd reads a token there too).
fn metadata(headers: &HeaderMap) -> MetadataMap {
    let mut forwarded = HeaderMap::new();
    for (name, value) in headers {
        if let Some(key) = name.as_str().strip_prefix("grpc-metadata-") {
            if let Ok(key) = HeaderName::from_bytes(key.as_bytes()) {
                forwarded.append(key, value.clone());
            }
        } else if name == header::AUTHORIZATION {
            forwarded.append(name.clone(), value.clone());
        }
    }
    MetadataMap::from_headers(forwarded)
}

impl Gateway {
    /// The interceptor's checks of gRPC call `method` with `metadata`, as if the call had come
    /// over gRPC (etcd's gateway makes the gRPC call, so its interceptors apply), and the
    /// caller they found (from a token in the `Authorization` header).
    fn check(&self, method: &'static str, metadata: &MetadataMap) -> Result<Caller, Status> {
        let mut call = tonic::Request::new(());
        *call.metadata_mut() = metadata.clone();
        call.extensions_mut().insert(CallPath(method.to_string()));
        let checked = self.interceptor.clone().call(call)?;
        Ok(Caller::of(&checked))
    }

    /// The body of `request` as the one request message of gRPC call `method`, which then
    /// passes that call's checks (grpc-gateway decodes before it calls).
    async fn decode<Req>(
        &self,
        method: &'static str,
        request: Request,
    ) -> Result<tonic::Request<Req>, Status>
    where
        Req: DeserializeOwned + Default,
    {
        let metadata = metadata(request.headers());
        let body = json::read_body(request.into_body(), self.body_limit).await?;
        let message = json::decode::<Req>(&body)?;
        let caller = self.check(method, &metadata)?;
        let mut call = tonic::Request::new(message);
        *call.metadata_mut() = metadata;
        call.extensions_mut().insert(caller);
        Ok(call)
    }

    /// A unary call: the request's body is the message for `call` (the gRPC service's method
    /// `method`), whose answer is the response's body, or its error the error's.
    async fn unary<Req, Resp, F, Fut>(
        &self,
        method: &'static str,
        request: Request,
        call: F,
    ) -> Response
    where
        Req: DeserializeOwned + Default,
        Resp: Serialize,
        F: FnOnce(tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
    {
        let request = match self.decode(method, request).await {
            Ok(request) => request,
            Err(status) => return json::error(&status),
        };
        match call(request).await {
            Ok(response) => json::message(response.get_ref()),
            Err(status) => json::error(&status),
        }
    }

    /// A server-streaming call (Snapshot, Observe): one request message, and the stream's
    /// messages as the lines of a streamed response.
    async fn server_stream<Req, Resp, S, F, Fut>(
        &self,
        method: &'static str,
        request: Request,
        call: F,
    ) -> Response
    where
        Req: DeserializeOwned + Default,
        Resp: Serialize + Send + 'static,
        S: Stream<Item = Result<Resp, Status>> + Send + 'static,
        F: FnOnce(tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<S>, Status>>,
    {
        let request = match self.decode(method, request).await {
            Ok(request) => request,
            Err(status) => return json::error(&status),
        };
        match call(request).await {
            Ok(response) => json::stream(response.into_inner()),
            Err(status) => json::error(&status),
        }
    }
}
