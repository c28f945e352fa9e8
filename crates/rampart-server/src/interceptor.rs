//! The interceptor chain every client call passes before its service sees it, as etcd's
//! `v3rpc/interceptor.go`: what applies to every call alike (require-leader, a learner's
//! refusals, who the caller is from its token, the root-only Maintenance calls) is done once,
//! here, and registered once, in `crate::server`. The caller goes to the service as a
//! [`Caller`] extension of the request; the permissions a call's content needs are checked by
//! the client the service calls (`crate::client`).
//!
//! A tonic interceptor sees a call's metadata when the call begins (for a stream, when it is
//! opened), not its messages; checks of a message's content stay with the service. The call's
//! method reaches it as a [`CallPath`] extension, set by [`with_call_path`] just before.

use std::sync::Arc;

use tonic::codegen::http;
use tonic::{Request, Status};

use crate::auth::{Caller, AUTHORIZATION_KEY, TOKEN_KEY};
use crate::error::ServerError;
use crate::node::Node;
use crate::tls::ConnInfo;

/// The metadata key with which a client asks that its call fail unless the cluster has a
/// leader (etcd's `rpctypes.MetadataRequireLeaderKey`; clientv3's `WithRequireLeader`).
pub const REQUIRE_LEADER_KEY: &str = "hasleader";

/// The value of [`REQUIRE_LEADER_KEY`] that asks for it (etcd's `MetadataHasLeader`).
pub const REQUIRE_LEADER_VALUE: &str = "true";

/// The gRPC method of a call (`/etcdserverpb.KV/Range`), for the interceptor.
#[derive(Clone, Debug)]
pub struct CallPath(pub String);

/// Puts each call's method in its extensions as a [`CallPath`]; registered in front of the
/// [`RequestInterceptor`].
pub fn with_call_path<B>(mut request: http::Request<B>) -> http::Request<B> {
    let path = CallPath(request.uri().path().to_string());
    request.extensions_mut().insert(path);
    request
}

/// The calls a learner serves (etcd's `isRPCSupportedForLearner`): Status, and Range, which
/// `Node::read_barrier` refuses unless serializable.
const LEARNER_CALLS: &[&str] = &["/etcdserverpb.Maintenance/Status", "/etcdserverpb.KV/Range"];

/// The plain HTTP endpoints served beside the gRPC services, which the checks let through.
const HTTP_PATHS: &[&str] = &["/metrics", "/health", "/livez", "/readyz", "/version"];

/// The JSON gateway's paths (`crate::gateway`), which the checks let through too: the gateway
/// makes the same checks of the gRPC call each request becomes, and answers their errors as JSON.
const HTTP_PREFIXES: &[&str] = &["/v3/", "/v3beta/"];

/// Whether `path` is one of the HTTP endpoints' rather than a gRPC method.
fn is_http_path(path: &str) -> bool {
    HTTP_PATHS.contains(&path) || HTTP_PREFIXES.iter().any(|prefix| path.starts_with(prefix))
}

/// The checks of every client call, in order.
#[derive(Clone)]
pub struct RequestInterceptor {
    node: Arc<Node>,
    /// `--client-cert-auth`: a client certificate's common name names the caller of a call
    /// without a token.
    client_cert_auth: bool,
}

impl RequestInterceptor {
    pub fn new(node: Arc<Node>) -> Self {
        let client_cert_auth = node
            .config()
            .client_tls
            .as_ref()
            .is_some_and(|tls| tls.client_cert_auth);
        RequestInterceptor {
            node,
            client_cert_auth,
        }
    }

    /// etcd refuses a call that requires a leader with "no leader" when its member knows of
    /// none, instead of letting it wait (a watch would otherwise sit on a member cut off from
    /// the cluster).
    fn require_leader(&self, request: &Request<()>) -> Result<(), ServerError> {
        let required = request
            .metadata()
            .get(REQUIRE_LEADER_KEY)
            .is_some_and(|value| value.as_bytes() == REQUIRE_LEADER_VALUE.as_bytes());
        if required && !self.node.has_leader() {
            return Err(ServerError::NoLeader);
        }
        Ok(())
    }
}

impl RequestInterceptor {
    /// A learner serves only [`LEARNER_CALLS`] ("rpc not supported for learner").
    fn learner(&self, request: &Request<()>) -> Result<(), ServerError> {
        if !self.node.is_learner() {
            return Ok(());
        }
        let path = request.extensions().get::<CallPath>();
        match path {
            Some(CallPath(path)) if LEARNER_CALLS.contains(&path.as_str()) => Ok(()),
            // gRPC health is not etcd's API: a load balancer may probe a learner.
            Some(CallPath(path)) if path.starts_with("/grpc.health.") => Ok(()),
            _ => Err(ServerError::NotSupportedForLearner),
        }
    }
}

impl RequestInterceptor {
    /// A member found corrupt serves only what lets an operator see and clear the alarm
    /// ("etcdserver: corrupt cluster" for everything else): its data differs from the
    /// cluster's, so it must not serve it. See `crate::corruption`.
    fn corrupt(&self, request: &Request<()>) -> Result<(), ServerError> {
        let Err(refused) = self.node.check_not_corrupt() else {
            return Ok(());
        };
        let path = request.extensions().get::<CallPath>();
        match path {
            Some(CallPath(path)) if CORRUPT_MEMBER_CALLS.contains(&path.as_str()) => Ok(()),
            Some(CallPath(path)) if path.starts_with("/etcdserverpb.Cluster/") => Ok(()),
            _ => Err(refused),
        }
    }
}

/// The calls a member found corrupt still serves: none of them reads the key-value data.
const CORRUPT_MEMBER_CALLS: &[&str] = &[
    "/etcdserverpb.Maintenance/Status",
    "/etcdserverpb.Maintenance/Alarm",
    "/etcdserverpb.Maintenance/Hash",
    "/etcdserverpb.Maintenance/HashKV",
    "/etcdserverpb.Maintenance/MoveLeader",
    "/etcdserverpb.Maintenance/Defragment",
];

impl RequestInterceptor {
    /// Who the call is from: the user of its `token` (or `authorization`) metadata when
    /// authentication is on, put in its extensions for the service; and the Maintenance calls
    /// etcd keeps for the root role (its `authMaintenanceServer`).
    fn authenticate(&self, request: &mut Request<()>) -> Result<(), Status> {
        let auth = self.node.mvcc().auth();
        let metadata = request.metadata();
        let token = metadata
            .get(TOKEN_KEY)
            .or_else(|| metadata.get(AUTHORIZATION_KEY))
            .and_then(|value| value.to_str().ok());
        let mut caller = self.node.authenticator().caller(&auth, token);
        // Without a token, the common name of a verified client certificate is the user (etcd's
        // `AuthInfoFromTLS`, with `--client-cert-auth`).
        if token.is_none() && auth.enabled() && self.client_cert_auth {
            if let Some(name) = request
                .extensions()
                .get::<ConnInfo>()
                .and_then(|info| info.common_name.clone())
            {
                caller = Caller::User(name);
            }
        }
        let path = request.extensions().get::<CallPath>();
        if path.is_some_and(|CallPath(path)| ROOT_ONLY_CALLS.contains(&path.as_str())) {
            caller
                .check(&auth, |auth, user| auth.check_admin(user))
                .map_err(ServerError::into_maintenance_auth_status)?;
        }
        request.extensions_mut().insert(caller);
        Ok(())
    }
}

/// The calls only a user with the root role may make while authentication is on (etcd 3.4's
/// `authMaintenanceServer`).
const ROOT_ONLY_CALLS: &[&str] = &[
    "/etcdserverpb.Maintenance/Defragment",
    "/etcdserverpb.Maintenance/Snapshot",
    "/etcdserverpb.Maintenance/Hash",
    "/etcdserverpb.Maintenance/HashKV",
];

impl tonic::service::Interceptor for RequestInterceptor {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        // The HTTP endpoints on the same port (`crate::http`, `crate::gateway`) are no calls of
        // etcd's gRPC API.
        if request
            .extensions()
            .get::<CallPath>()
            .is_some_and(|CallPath(path)| is_http_path(path))
        {
            return Ok(request);
        }
        self.corrupt(&request)?;
        self.learner(&request)?;
        self.require_leader(&request)?;
        self.authenticate(&mut request)?;
        Ok(request)
    }
}
