//! The etcd v3 gRPC services a client reaches, one file per service: each turns gRPC requests
//! into calls of the in-process client (`crate::client`) or of `Node`, and errors into etcd's
//! statuses. They are registered, behind the interceptor chain, in `crate::server`. Lock and
//! Election share `concurrency` (session leases, waiting for older keys to go), as etcd's share
//! clientv3's `concurrency` package.

mod auth;
mod cluster;
mod concurrency;
mod election;
mod kv;
mod lease;
mod lock;
mod maintenance;
mod watch;

pub(crate) use auth::permission;
pub use auth::AuthService;
pub use cluster::ClusterService;
pub use election::ElectionService;
pub use kv::KvService;
pub use lease::LeaseService;
pub use lock::LockService;
pub use maintenance::{MaintenanceService, API_VERSION};
pub use watch::WatchService;
