//! A Rampart member: the wiring of Raft ([`openraft`]), storage ([`rampart_storage`]) and the
//! peer network ([`rampart_network`]), and the etcd v3 gRPC services clients talk to.
//!
//! [`RunningNode::start`] takes a validated [`Config`], listeners bound by the caller and the
//! peer-link fault rules (empty outside tests). The modules, each using only those below it:
//!
//! - `server`: start-up, the registration of every service behind the interceptor chain, and
//!   the ordered shutdown; nothing else imports it.
//! - `services`: one file per etcd gRPC service, thin adaptors over the in-process client;
//!   `interceptor`: the checks every client call passes first; `gateway`: etcd's JSON gateway,
//!   the same services over HTTP/JSON.
//! - `client`: the in-process client (etcd's KV, Lease and Watch calls on protobuf messages),
//!   on which services, and those built on KV, Lease and Watch, are written.
//! - `watch`: watch streams; `lessor`: the leader's lease clock; `membership`: membership
//!   changes, leader transfer and the peer side of them.
//! - `node`: [`Node`], the paths requests take into Raft and back (write, read barrier, lease
//!   questions to the leader).
//! - `convert`: protobuf ⇄ domain types with etcd's request checks; `error`: [`ServerError`] and
//!   its one mapping to gRPC statuses; `config`: flags, environment and file into [`Config`];
//!   `forward_check`: the leader's checks of commands other members forward;
//!   `alarm`: alarms in the API's terms and the space quota; `corruption`: the comparison of
//!   the members' data (start-up and periodic); `compactor`: the leader's auto-compaction;
//!   `log_retention`: snapshots and purges by requests applied;
//!   `fault_control`: TEST ONLY remote control of the peer-link faults; `tls`: the client and
//!   peer listeners' TLS, certificates reloaded when their files change; `access`: etcd's
//!   access controller on the client URLs' HTTP requests (`--host-whitelist`, `--cors`);
//!   `auth`: who a call is from (tokens this member issued) and password hashing;
//!   `watchdog`: the exit of a member whose storage stalls (`--storage-stall-timeout`).

mod access;
mod alarm;
pub mod auth;
mod client;
mod compactor;
pub mod config;
mod convert;
mod corruption;
pub mod error;
mod fault_control;
mod forward_check;
#[doc(hidden)]
pub mod fuzzing;
mod gateway;
mod grpc_stats;
mod http;
mod interceptor;
pub mod jwt;
mod lessor;
mod log_retention;
mod membership;
pub mod metrics;
pub mod node;
mod server;
mod services;
pub mod tls;
mod watch;
pub mod watchdog;

pub use client::Client;
pub use config::{Config, ConfigError, RawConfig};
pub use error::ServerError;
pub use node::Node;
pub use rampart_network::LinkFaults;
pub use server::{Listeners, RunningNode, StartError};
