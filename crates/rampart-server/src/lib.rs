//! A Rampart member: the wiring of Raft ([`openraft`]), storage ([`rampart_storage`]) and the
//! peer network ([`rampart_network`]), and the etcd v3 gRPC services clients talk to.
//!
//! [`RunningNode::start`] takes a validated [`Config`], listeners bound by the caller and the
//! peer-link fault rules (empty outside tests). Requests enter through `services`, are checked and
//! converted to domain types in `convert`, and take the write or read path of [`Node`]. Errors
//! become gRPC statuses in one place, `error`.

pub mod config;
mod convert;
pub mod error;
mod fault_control;
mod lessor;
pub mod node;
mod services;

pub use config::{Config, ConfigError, RawConfig};
pub use error::ServerError;
pub use node::{Listeners, Node, RunningNode, StartError};
pub use rampart_network::LinkFaults;
