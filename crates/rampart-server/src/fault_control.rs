//! TEST ONLY: `rampart.faults.v1.Faults`, remote control of this member's peer-link fault rules
//! ([`LinkFaults`]), so a harness can partition and delay real processes.
//!
//! Served on the peer listeners only with `--experimental-peer-fault-injection`. A member's rules
//! act on the calls it sends (see `rampart_network::PeerNetwork`): a blocked target never sees
//! this member's requests; a target whose replies are lost carries the request out, but this
//! member never learns the answer.

use std::time::Duration;

use rampart_api::faults as pb;
use rampart_api::faults::faults_server::{Faults, FaultsServer};
use rampart_network::LinkFaults;
use rampart_storage::NodeId;
use tonic::{Request, Response, Status};

use crate::error::ServerError;

/// Longest delay a rule may set: longer ones are surely a harness's mistake.
const MAX_DELAY: Duration = Duration::from_secs(60);

pub(crate) struct FaultControl {
    /// This member: the sending end of every rule it sets.
    id: NodeId,
    /// The rules this member's `PeerNetwork` consults; a clone of the node's one instance.
    faults: LinkFaults,
}

impl FaultControl {
    pub(crate) fn server(id: NodeId, faults: LinkFaults) -> FaultsServer<FaultControl> {
        FaultsServer::new(FaultControl { id, faults })
    }
}

#[tonic::async_trait]
impl Faults for FaultControl {
    async fn set(
        &self,
        request: Request<pb::FaultRules>,
    ) -> Result<Response<pb::SetReply>, Status> {
        let rules = request.into_inner();
        tracing::info!(
            ?rules,
            "replacing peer fault rules (--experimental-peer-fault-injection)"
        );
        let mut delays = Vec::with_capacity(rules.delayed.len());
        for delay in &rules.delayed {
            let duration = Duration::from_millis(delay.millis);
            if duration > MAX_DELAY {
                return Err(ServerError::InvalidArgument(format!(
                    "delay of {} ms to {:016x} is longer than {MAX_DELAY:?}",
                    delay.millis, delay.target
                ))
                .into());
            }
            delays.push((delay.target, duration));
        }
        // Not atomic: for an instant between `heal` and the new rules every call passes, which
        // a harness cannot tell from an unlucky network.
        self.faults.heal();
        for target in rules.blocked {
            self.faults.block(self.id, target);
        }
        for target in rules.replies_lost {
            // `PeerNetwork` checks the link (target, self) when the reply comes back.
            self.faults.block(target, self.id);
        }
        for (target, duration) in delays {
            self.faults.delay(self.id, target, duration);
        }
        Ok(Response::new(pb::SetReply {}))
    }

    async fn heal(
        &self,
        _request: Request<pb::HealRequest>,
    ) -> Result<Response<pb::HealReply>, Status> {
        self.faults.heal();
        tracing::info!("peer fault rules healed (--experimental-peer-fault-injection)");
        Ok(Response::new(pb::HealReply {}))
    }
}
