//! The gRPC connections of a run.

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use crate::error::BenchError;

/// How long to wait for a TCP connection before giving up on an endpoint.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// `conns` HTTP/2 connections, connection `i` to endpoint `i % endpoints`. Clients share them
/// round-robin: many concurrent requests multiplex over one connection, as etcd's
/// `benchmark --conns` does.
#[derive(Debug, Clone)]
pub struct Connections {
    channels: Vec<Channel>,
}

impl Connections {
    /// Opens every connection now, so that a wrong endpoint fails the run before it starts
    /// rather than showing up as errors in its results.
    pub async fn open(
        endpoints: &[String],
        conns: usize,
        timeout: Duration,
    ) -> Result<Connections, BenchError> {
        let mut channels = Vec::with_capacity(conns);
        for i in 0..conns {
            let endpoint = &endpoints[i % endpoints.len()];
            let channel = Endpoint::from_shared(endpoint.clone())
                .map_err(|source| BenchError::BadEndpoint {
                    endpoint: endpoint.clone(),
                    source,
                })?
                .connect_timeout(CONNECT_TIMEOUT)
                .timeout(timeout)
                .tcp_nodelay(true)
                .connect()
                .await
                .map_err(|source| BenchError::Connect {
                    endpoint: endpoint.clone(),
                    source,
                })?;
            channels.push(channel);
        }
        Ok(Connections { channels })
    }

    /// The connection of client `client`.
    pub fn channel(&self, client: usize) -> Channel {
        self.channels[client % self.channels.len()].clone()
    }
}
