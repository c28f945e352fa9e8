//! Rampart's peer network and its Raft proposal plumbing: openraft's RPCs, and the client
//! requests a follower passes to the leader, carried over gRPC (service `rampart.peer.v1.Peer`)
//! as bincode bytes; and the batching of proposals, forwarded writes and read-index rounds.
//!
//! Modules, each using only those below it: `peer_service` (the receiving side), `proposer`,
//! `forwarder`, `read_index` (the batching tasks), `raft_calls` (calls into this member's own
//! Raft), `peer_network` (the sending side), `admission`, `batching`, `faults`, `messages`.
//!
//! - [`PeerNetwork`] is openraft's `RaftNetworkFactory`: one cached, lazily connected gRPC channel
//!   per peer, shared by the Raft connections and by [`PeerNetwork::forward`] and
//!   [`PeerNetwork::read_index`].
//! - [`PeerService`] answers those RPCs on the receiving node.
//! - [`Proposer`] batches the leader's proposals, [`Forwarder`] a follower's forwarded writes,
//!   [`ReadIndexer`] read-index rounds.
//! - `caller`: who sent a peer call; the receiving side refuses calls from outside the cluster.
//! - `peer_tls`: the connector of channels to `https://` peer URLs (TCP, then the TLS
//!   handshake with the member's peer CA and certificate).
//! - [`LinkFaults`] can drop or delay traffic between chosen nodes; tests use it to cut links,
//!   production leaves it empty.
//!
//! This crate knows nothing of the etcd client API.

mod admission;
mod batching;
mod caller;
mod faults;
mod forwarder;
#[doc(hidden)]
pub mod fuzzing;
mod messages;
mod peer_network;
mod peer_service;
mod peer_tls;
mod proposer;
mod raft_calls;
mod read_index;
mod stats;

pub use admission::{Admission, AdmissionLimits, Admitted, ADMISSION_WAIT};
pub use caller::{CLUSTER_ID_KEY, MEMBER_ID_KEY};
pub use faults::LinkFaults;
pub use forwarder::{Forwarded, Forwarder};
pub use messages::{
    AdminAnswer, AdminError, AdminReply, AdminRequest, ChangeRefused, ClusterInfo, ForwardError,
    ForwardReply, KvHashAnswer, LeaseReply, LeaseRequest, LeaseStatus, MemberChange, MemberInfo,
    ReadIndexReply,
};
pub use peer_network::{
    max_peer_message_bytes, CallError, PeerConnection, PeerNetwork, PEER_CONNECTION_WINDOW_BYTES,
    PEER_STREAM_WINDOW_BYTES, SNAPSHOT_CHUNK_BYTES,
};
pub use peer_service::{AdminHandler, ForwardCheck, LeaseHandler, PeerHandlers, PeerService};
pub use proposer::{Proposer, MAX_IN_FLIGHT};
pub use raft_calls::propose;
pub use read_index::ReadIndexer;
pub use stats::{peer_label, NetworkStats, PeerLabel};
