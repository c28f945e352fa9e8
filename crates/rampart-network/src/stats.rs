//! What the peer network and the request batching measure, for the server's metrics: per peer,
//! the round-trip time of the probes and the calls that failed (etcd's
//! `etcd_network_peer_round_trip_time_seconds` and `etcd_network_peer_sent_failures_total`), and
//! Rampart's own batching figures (proposal batch sizes, read-index rounds).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};

use rampart_storage::NodeId;

/// The label that names a peer, as etcd's: `To`, the member id in hex.
pub type PeerLabel = [(&'static str, String); 1];

/// The label of `peer`.
pub fn peer_label(peer: NodeId) -> PeerLabel {
    [("To", format!("{peer:x}"))]
}

/// A histogram of round-trip times: etcd's buckets, 0.1 ms doubling to about 0.8 s.
fn round_trip_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 14))
}

/// One member's network and batching measurements; every clone of a metric shares its values.
#[derive(Debug)]
pub struct NetworkStats {
    /// Seconds each answered probe (a `ClusterInfo` question, every second) took, per peer.
    pub peer_round_trip: Family<PeerLabel, Histogram, fn() -> Histogram>,
    /// Calls to a peer that got no answer (Raft's and the others), per peer.
    pub peer_sent_failures: Family<PeerLabel, Counter>,
    /// Requests per proposal the proposer made: 1 for a lone one, more for a batch entry.
    pub proposal_batch: Histogram,
    /// Read-index rounds (quorum confirmations, or asks of the leader) begun.
    pub read_index_rounds: Counter,
}

impl Default for NetworkStats {
    fn default() -> Self {
        NetworkStats {
            peer_round_trip: Family::new_with_constructor(round_trip_histogram),
            peer_sent_failures: Family::default(),
            proposal_batch: Histogram::new(exponential_buckets(1.0, 2.0, 11)),
            read_index_rounds: Counter::default(),
        }
    }
}
