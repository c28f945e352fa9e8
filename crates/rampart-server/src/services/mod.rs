//! The etcd v3 gRPC services a client reaches, one file per service.

mod cluster;
mod kv;
mod lease;
mod maintenance;
mod watch;

use std::sync::Arc;

use rampart_api::etcdserverpb::cluster_server::ClusterServer;
use rampart_api::etcdserverpb::kv_server::KvServer;
use rampart_api::etcdserverpb::lease_server::LeaseServer;
use rampart_api::etcdserverpb::maintenance_server::MaintenanceServer;
use rampart_api::etcdserverpb::watch_server::WatchServer;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Router;

use crate::lessor::Lessor;
use crate::node::Node;

/// etcd lets a gRPC message exceed `--max-request-bytes` by this much, so that an oversized
/// request reaches the server's own check and gets etcd's "request is too large".
const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

/// The client-facing gRPC services of `node`: KV, Watch, Lease, Maintenance, Cluster and gRPC
/// health. `shutdown` is cancelled when the node stops; long-lived streams end on it, so that the
/// server's graceful drain does not wait for clients that never hang up.
pub async fn client_router(
    node: Arc<Node>,
    lessor: Arc<Lessor>,
    shutdown: CancellationToken,
) -> Router {
    let limit = node.config.max_request_bytes + GRPC_OVERHEAD_BYTES;
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<KvServer<kv::KvService>>()
        .await;
    tonic::transport::Server::builder()
        .add_service(health)
        .add_service(
            KvServer::new(kv::KvService::new(node.clone()))
                .max_decoding_message_size(limit)
                .max_encoding_message_size(usize::MAX),
        )
        .add_service(
            WatchServer::new(watch::WatchService::new(node.clone(), shutdown))
                .max_decoding_message_size(limit),
        )
        .add_service(
            LeaseServer::new(lease::LeaseService::new(node.clone(), lessor))
                .max_decoding_message_size(limit),
        )
        .add_service(
            MaintenanceServer::new(maintenance::MaintenanceService::new(node.clone()))
                .max_decoding_message_size(limit),
        )
        .add_service(
            ClusterServer::new(cluster::ClusterService::new(node)).max_decoding_message_size(limit),
        )
}
