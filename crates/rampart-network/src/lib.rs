//! Rampart's peer network: openraft's RPCs, and client requests a follower passes to the leader,
//! carried over gRPC (service `rampart.peer.v1.Peer`) as bincode bytes.
//!
//! - [`PeerNetwork`] is openraft's `RaftNetworkFactory`: one cached, lazily connected gRPC channel
//!   per peer, shared by the Raft connections and by [`PeerNetwork::forward`] and
//!   [`PeerNetwork::read_index`].
//! - [`PeerService`] answers those RPCs on the receiving node.
//! - [`Proposer`] batches the leader's proposals, [`Forwarder`] a follower's forwarded writes,
//!   [`ReadIndexer`] read-index rounds.
//! - [`LinkFaults`] can drop or delay traffic between chosen nodes; tests use it to cut links,
//!   production leaves it empty.
//!
//! This crate knows nothing of the etcd client API.

mod batching;
mod client;
mod faults;
mod forwarder;
mod messages;
mod proposer;
mod read_index;
mod service;

pub use client::{CallError, PeerConnection, PeerNetwork};
pub use faults::LinkFaults;
pub use forwarder::{Forwarded, Forwarder};
pub use messages::{
    ForwardError, ForwardReply, LeaseReply, LeaseRequest, LeaseStatus, ReadIndexReply,
};
pub use proposer::{Proposer, MAX_IN_FLIGHT};
pub use read_index::ReadIndexer;
pub use service::{propose, read_index, LeaseHandler, PeerService};
