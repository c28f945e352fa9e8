//! The interceptor chain every client call passes before its service sees it, as etcd's
//! `v3rpc/interceptor.go`: what applies to every call alike (checks on the call's metadata
//! today; authentication tokens and request metrics belong here too) is done once, here, and
//! registered once, in `crate::server`.
//!
//! A tonic interceptor sees a call's metadata when the call begins (for a stream, when it is
//! opened), not its messages; checks of a message's content stay with the service.

use std::sync::Arc;

use tonic::{Request, Status};

use crate::error::ServerError;
use crate::node::Node;

/// The metadata key with which a client asks that its call fail unless the cluster has a
/// leader (etcd's `rpctypes.MetadataRequireLeaderKey`; clientv3's `WithRequireLeader`).
pub const REQUIRE_LEADER_KEY: &str = "hasleader";

/// The value of [`REQUIRE_LEADER_KEY`] that asks for it (etcd's `MetadataHasLeader`).
pub const REQUIRE_LEADER_VALUE: &str = "true";

/// The checks of every client call, in order.
#[derive(Clone)]
pub struct RequestInterceptor {
    node: Arc<Node>,
}

impl RequestInterceptor {
    pub fn new(node: Arc<Node>) -> Self {
        RequestInterceptor { node }
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

impl tonic::service::Interceptor for RequestInterceptor {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        self.require_leader(&request)?;
        Ok(request)
    }
}
