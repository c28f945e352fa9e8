//! The etcd v3 gRPC services a client reaches, one file per service.

mod cluster;
mod kv;
mod maintenance;

use std::sync::Arc;

use rampart_api::etcdserverpb::cluster_server::ClusterServer;
use rampart_api::etcdserverpb::kv_server::KvServer;
use rampart_api::etcdserverpb::maintenance_server::MaintenanceServer;
use tonic::transport::server::Router;

use crate::node::Node;

/// etcd lets a gRPC message exceed `--max-request-bytes` by this much, so that an oversized
/// request reaches the server's own check and gets etcd's "request is too large".
const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

/// The client-facing gRPC services of `node`: KV, Maintenance, Cluster and gRPC health.
pub async fn client_router(node: Arc<Node>) -> Router {
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
            MaintenanceServer::new(maintenance::MaintenanceService::new(node.clone()))
                .max_decoding_message_size(limit),
        )
        .add_service(
            ClusterServer::new(cluster::ClusterService::new(node)).max_decoding_message_size(limit),
        )
}
