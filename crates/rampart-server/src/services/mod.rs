//! The etcd v3 gRPC services a client reaches, one file per service: each turns gRPC requests
//! into calls of the in-process client (`crate::client`) or of `Node`, and errors into etcd's
//! statuses. They are registered, behind the interceptor chain, in `crate::server`.

mod cluster;
mod kv;
mod lease;
mod maintenance;
mod watch;

pub use cluster::ClusterService;
pub use kv::KvService;
pub use lease::LeaseService;
pub use maintenance::MaintenanceService;
pub use watch::WatchService;
