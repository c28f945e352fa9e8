//! The wiring of a member: opening its data directory, starting Raft, registering every gRPC
//! service behind one interceptor chain, serving the listeners, and stopping in order.
//!
//! This is the one place a service is registered (etcd's `v3rpc/grpc.go::Server()`): client
//! services in [`serve_clients`], the peer protocol in [`serve_peers`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use openraft::{Raft, SnapshotPolicy};
use rampart_api::etcdserverpb::auth_server::AuthServer;
use rampart_api::etcdserverpb::cluster_server::ClusterServer;
use rampart_api::etcdserverpb::kv_server::KvServer;
use rampart_api::etcdserverpb::lease_server::LeaseServer;
use rampart_api::etcdserverpb::maintenance_server::MaintenanceServer;
use rampart_api::etcdserverpb::watch_server::WatchServer;
use rampart_api::v3electionpb::election_server::ElectionServer;
use rampart_api::v3lockpb::lock_server::LockServer;
use rampart_h2_compat::AuthorityFix;
use rampart_network::{
    AdminAnswer, AdminRequest, LinkFaults, PeerHandlers, PeerNetwork, PeerService,
};
use rampart_storage::{ClusterIdentity, Command, MemberAttributes, NodeId, PeerNode, Store};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::service::InterceptorLayer;
use tower::util::MapRequestLayer;

use crate::client::Client;
use crate::config::{is_https, ClusterState, Config};
use crate::convert::Limits;
use crate::fault_control::FaultControl;
use crate::forward_check::ForwardedCommands;
use crate::grpc_stats::{GrpcStats, GrpcStatsLayer};
use crate::interceptor::{with_call_path, RequestInterceptor};
use crate::lessor::Lessor;
use crate::membership::Membership;
use crate::metrics::Metrics;
use crate::node::Node;
use crate::services::{
    AuthService, ClusterService, ElectionService, KvService, LeaseService, LockService,
    MaintenanceService, WatchService,
};
use crate::tls::ServingTls;

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot open data directory {dir}")]
    Storage {
        dir: String,
        #[source]
        source: rampart_storage::StoreError,
    },
    #[error(
        "data directory {dir} belongs to cluster {found_cluster:016x} as member \
         {found_member:016x}, but this configuration makes cluster {want_cluster:016x} member \
         {want_member:016x}; check --data-dir, --initial-cluster and --initial-cluster-token \
         (a member that joined with `member add`, or whose peer URLs `member update` changed, \
         restarts with --initial-cluster-state existing)"
    )]
    WrongCluster {
        dir: String,
        found_cluster: u64,
        found_member: u64,
        want_cluster: u64,
        want_member: u64,
    },
    #[error(
        "cannot join the cluster: no member of --initial-cluster answered ({reason}); start \
         the members first, and add this one with `member add`"
    )]
    JoinUnreachable { reason: String },
    #[error(
        "cannot join the cluster: no member has the peer URLs {peer_urls:?}; add this member \
         with `member add` first, with the URLs of --initial-advertise-peer-urls"
    )]
    JoinNotAdded { peer_urls: Vec<String> },
    #[error("invalid Raft configuration")]
    RaftConfig(#[source] openraft::ConfigError),
    #[error("cannot start Raft")]
    Raft(#[source] openraft::error::Fatal<NodeId>),
    #[error("{0}")]
    InvalidUrl(String),
    #[error("cannot listen on {url}")]
    Listen {
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS configuration")]
    Tls(#[source] crate::tls::TlsError),
    #[error("cannot start the storage stall watchdog")]
    Watchdog(#[source] std::io::Error),
}

/// The listeners a node serves on, bound by the caller so that tests can use port 0.
pub struct Listeners {
    pub client: Vec<TcpListener>,
    pub peer: Vec<TcpListener>,
    /// `--listen-metrics-urls`: plain HTTP, the `crate::http` endpoints only.
    pub metrics: Vec<TcpListener>,
}

impl Listeners {
    /// Binds every listen URL of `config`.
    pub async fn bind(config: &Config) -> Result<Listeners, StartError> {
        async fn bind_all(urls: &[String]) -> Result<Vec<TcpListener>, StartError> {
            let mut listeners = Vec::new();
            for url in urls {
                let addr = crate::config::socket_addr(url).map_err(StartError::InvalidUrl)?;
                let listener =
                    TcpListener::bind(addr)
                        .await
                        .map_err(|source| StartError::Listen {
                            url: url.clone(),
                            source,
                        })?;
                listeners.push(listener);
            }
            Ok(listeners)
        }
        Ok(Listeners {
            client: bind_all(&config.listen_client_urls).await?,
            peer: bind_all(&config.listen_peer_urls).await?,
            metrics: bind_all(&config.listen_metrics_urls).await?,
        })
    }
}

/// How long [`RunningNode::shutdown`] lets requests in flight finish.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(5);

/// A started member; dropping it does not stop it, [`RunningNode::shutdown`] does.
pub struct RunningNode {
    pub node: Arc<Node>,
    cancel: CancellationToken,
    tasks: TaskTracker,
}

impl RunningNode {
    /// Opens the data directory, starts Raft and serves the client and peer listeners.
    pub async fn start(
        config: Config,
        listeners: Listeners,
        faults: LinkFaults,
    ) -> Result<RunningNode, StartError> {
        let dir = config.data_dir.display().to_string();
        let storage_error = |source| StartError::Storage {
            dir: dir.clone(),
            source,
        };
        let mut config = config;
        // The certificate files are read before anything else, so a bad one stops the start.
        let tls = ServingTls::from_config(&config).map_err(StartError::Tls)?;
        let store = Store::open(&config.data_dir).map_err(storage_error)?;
        crate::watchdog::start(
            &store.stats(),
            config.storage_stall_timeout,
            crate::watchdog::exit_frozen,
        )
        .map_err(StartError::Watchdog)?;
        let mut want = ClusterIdentity {
            cluster_id: config.cluster_id,
            member_id: config.member_id,
        };
        let joining = config.initial_cluster_state == ClusterState::Existing;
        let fresh = match store.identity().map_err(storage_error)? {
            // A member that joined a running cluster got its id from the leader, and the
            // cluster's from its peers; one whose directory an earlier build created has the
            // ids that build derived: its data directory, not its flags, says who it is.
            Some(found) if joining || found == config.legacy_identity => {
                want = found;
                false
            }
            Some(found) if found != want => {
                return Err(StartError::WrongCluster {
                    dir,
                    found_cluster: found.cluster_id,
                    found_member: found.member_id,
                    want_cluster: want.cluster_id,
                    want_member: want.member_id,
                })
            }
            Some(_) => false,
            None => true,
        };
        if fresh && joining {
            want = join(&config, &faults, &tls).await?;
        }
        config.member_id = want.member_id;
        config.cluster_id = want.cluster_id;

        // openraft 0.9 splits a follower's wait for a lost leader in two: for
        // `election_timeout_max` after the leader's last message it refuses votes (the leader's
        // lease), and it starts an election only once its own timeout, drawn once per process
        // from [min, max), has passed on top of that. With max = 3/5 and min = 2/5 of
        // `--election-timeout`, a follower stands between 1 and 1.2 election timeouts after the
        // last heartbeat, as an etcd follower stands between 1 and 2; a first follower's
        // election is not refused by the second, whose lease ran out 2/5 of an election timeout
        // before. (openraft's defaults of max = 2 min would make it 3 to 4.) Both stay above 2
        // heartbeats, as the configuration requires 5 per election timeout.
        let election_ms = config.election_timeout.as_millis() as u64;
        let raft_config = openraft::Config {
            cluster_name: config.initial_cluster_token.clone(),
            heartbeat_interval: config.heartbeat_interval.as_millis() as u64,
            election_timeout_min: election_ms * 2 / 5,
            election_timeout_max: election_ms * 3 / 5,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_count),
            max_in_snapshot_log_to_keep: config.snapshot_catchup_entries,
            // Purge as soon as a snapshot allows, so the log stays bounded.
            purge_batch_size: 1,
            // Each chunk is one peer message, within the bound the peers accept.
            snapshot_max_chunk_size: rampart_network::SNAPSHOT_CHUNK_BYTES,
            ..Default::default()
        };
        let raft_config = Arc::new(raft_config.validate().map_err(StartError::RaftConfig)?);
        let network = PeerNetwork::new(
            config.member_id,
            faults.clone(),
            rampart_network::max_peer_message_bytes(config.max_request_bytes),
        )
        .with_cluster(config.cluster_id)
        .with_tls(tls.peer_client.clone());
        let raft = Raft::new(
            config.member_id,
            raft_config,
            network.clone(),
            store.log_store(),
            store.state_machine().for_raft_start(),
        )
        .await
        .map_err(StartError::Raft)?;

        if fresh && !joining {
            let members: BTreeMap<NodeId, PeerNode> = config
                .initial_cluster
                .iter()
                .map(|m| {
                    (
                        m.id,
                        PeerNode {
                            name: m.name.clone(),
                            peer_urls: m.peer_urls.clone(),
                        },
                    )
                })
                .collect();
            // Every initial member initializes with the same membership; openraft refuses a
            // second initialization, which is harmless here.
            if let Err(e) = raft.initialize(members).await {
                tracing::info!("cluster already initialized: {e}");
            }
        }
        if fresh {
            // Record the identity last: a crash before this point leaves a directory that the
            // next start treats as fresh again, which initializes (or joins) identically.
            store.set_identity(&want).map_err(storage_error)?;
        }

        let node = Arc::new(Node::new(config, raft, store, network));
        let cancel = CancellationToken::new();
        let tasks = TaskTracker::new();
        let lessor = Lessor::new(node.clone(), cancel.clone());
        let client = Client::new(node.clone(), lessor.clone(), cancel.clone());

        let checks = ForwardedCommands {
            limits: Limits {
                max_txn_ops: node.config().max_txn_ops,
            },
            max_command_bytes: node.config().max_grpc_message_bytes(),
        };
        let membership = Membership::new(node.clone());
        let peer_service = node.peer_service(PeerHandlers {
            leases: lessor.clone(),
            admin: membership.clone(),
            checks: Arc::new(checks),
        });
        // Listeners come in the order of their URLs (`Listeners::bind`); each URL's scheme says
        // whether its listener speaks TLS.
        let peer_urls = node.config().listen_peer_urls.clone();
        for (listener, url) in listeners.peer.into_iter().zip(&peer_urls) {
            tasks.spawn(serve_peers(
                &node,
                peer_service.clone(),
                &faults,
                listener,
                is_https(url).then(|| tls.peer.clone()).flatten(),
                cancel.clone(),
            ));
        }
        // etcd's initial corruption check, before any client is served. A fresh member has
        // nothing to compare yet.
        if node.config().initial_corrupt_check && !fresh {
            crate::corruption::initial_check(&node, &cancel).await;
        }
        let grpc_stats = Arc::new(GrpcStats::default());
        let metrics = Arc::new(Metrics::new(node.clone(), lessor.clone(), grpc_stats));
        let endpoints = crate::http::router(node.clone(), metrics.clone());
        let client_urls = node.config().listen_client_urls.clone();
        for (listener, url) in listeners.client.into_iter().zip(&client_urls) {
            tasks.spawn(serve_clients(
                &node,
                &client,
                &membership,
                listener,
                is_https(url).then(|| tls.client.clone()).flatten(),
                endpoints.clone(),
                metrics.grpc().clone(),
                cancel.clone(),
            ));
        }
        for listener in listeners.metrics {
            tasks.spawn(serve_http(listener, endpoints.clone(), cancel.clone()));
        }
        tasks.spawn(metrics.follow_leaders(cancel.clone()));
        tasks.spawn(membership.clone().watch_removal(cancel.clone()));
        tasks.spawn(membership.clone().probe_peers(cancel.clone()));
        tasks.spawn(publish(node.clone(), cancel.clone()));
        tasks.spawn(lessor.run());
        tasks.spawn(crate::compactor::run(node.clone(), cancel.clone()));
        tasks.spawn(crate::log_retention::run(node.clone(), cancel.clone()));
        let corrupt_check_time = node.config().corrupt_check_time;
        if !corrupt_check_time.is_zero() {
            tasks.spawn(crate::corruption::run_periodic(
                node.clone(),
                corrupt_check_time,
                cancel.clone(),
            ));
        }

        tracing::info!(
            name = %node.config().name,
            member_id = format_args!("{:016x}", node.id()),
            cluster_id = format_args!("{:016x}", node.config().cluster_id),
            "rampart member started"
        );
        Ok(RunningNode {
            node,
            cancel,
            tasks,
        })
    }

    /// Stops in order: stop accepting and drain client and peer requests, stop Raft, then
    /// flush storage.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        self.tasks.close();
        // Serving stops gracefully: requests in flight finish. A client that keeps a stream or
        // connection open past the drain time is cut off rather than allowed to hold the stop.
        if tokio::time::timeout(SHUTDOWN_DRAIN, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                name = %self.node.config().name,
                "requests still in flight after {SHUTDOWN_DRAIN:?}; stopping without them"
            );
        }
        self.node.shutdown_raft().await;
        // openraft's workers may drop their storage handles a moment after `shutdown` returns;
        // flush only once nothing else can write.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.node.storage_released() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if let Err(e) = self.node.flush() {
            tracing::error!("final flush failed: {}", crate::error::chain(&e));
        }
        tracing::info!(name = %self.node.config().name, "rampart member stopped");
    }

    /// Completes when the node is asked to stop.
    pub async fn stopped(&self) {
        self.cancel.cancelled().await
    }
}

/// How long a member joining a running cluster keeps asking its peers who the cluster is.
const JOIN_PATIENCE: Duration = Duration::from_secs(30);

/// The identity of a member joining a running cluster (`--initial-cluster-state existing`
/// with an empty data directory): it asks the other members of `--initial-cluster` for the
/// cluster's id and members, and is the member whose peer URLs are its own, which `member add`
/// put there.
async fn join(
    config: &Config,
    faults: &LinkFaults,
    tls: &ServingTls,
) -> Result<ClusterIdentity, StartError> {
    let mut mine = config.initial_advertise_peer_urls.clone();
    mine.sort();
    let network = PeerNetwork::new(
        config.member_id,
        faults.clone(),
        rampart_network::max_peer_message_bytes(config.max_request_bytes),
    )
    .with_tls(tls.peer_client.clone());
    let peers: Vec<_> = config
        .initial_cluster
        .iter()
        .filter(|m| m.id != config.member_id)
        .collect();
    let deadline = Instant::now() + JOIN_PATIENCE;
    let mut last_error = "no other member in --initial-cluster".to_string();
    let mut not_added = false;
    loop {
        for peer in &peers {
            let node = PeerNode {
                name: peer.name.clone(),
                peer_urls: peer.peer_urls.clone(),
            };
            let reply = network
                .admin(
                    peer.id,
                    &node,
                    &AdminRequest::ClusterInfo,
                    config.election_timeout,
                )
                .await;
            let info = match reply {
                Ok(Ok(AdminAnswer::ClusterInfo(info))) => info,
                Ok(other) => {
                    last_error = format!("{} answered {other:?}", peer.name);
                    continue;
                }
                Err(e) => {
                    last_error = e.to_string();
                    continue;
                }
            };
            let me = info.members.iter().find(|m| {
                let mut urls = m.node.peer_urls.clone();
                urls.sort();
                urls == mine
            });
            // A member that lags may not know of the add yet: ask the others too.
            let Some(me) = me else {
                not_added = true;
                continue;
            };
            tracing::info!(
                member_id = format_args!("{:016x}", me.id),
                cluster_id = format_args!("{:016x}", info.cluster_id),
                asked = %peer.name,
                "joining a running cluster"
            );
            return Ok(ClusterIdentity {
                cluster_id: info.cluster_id,
                member_id: me.id,
            });
        }
        if Instant::now() >= deadline {
            return Err(if not_added {
                StartError::JoinNotAdded { peer_urls: mine }
            } else {
                StartError::JoinUnreachable { reason: last_error }
            });
        }
        tokio::time::sleep(config.election_timeout).await;
    }
}

/// Serves the etcd client API on `listener` until `shutdown`: KV, Watch, Lease, Maintenance,
/// Cluster, Lock, Election, Auth and gRPC health, every call through [`RequestInterceptor`] first. Long-lived streams
/// end on `shutdown` too, so that the graceful drain does not wait for clients that never hang
/// up. With `tls` (an https:// URL), every connection is a TLS one.
#[allow(clippy::too_many_arguments)]
fn serve_clients(
    node: &Arc<Node>,
    client: &Client,
    membership: &Arc<Membership>,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    endpoints: axum::Router,
    grpc_stats: Arc<GrpcStats>,
    shutdown: CancellationToken,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let limit = node.config().max_grpc_message_bytes();
    let (health_reporter, health) = tonic_health::server::health_reporter();
    let mut services = tonic::service::Routes::builder();
    services
        .add_service(health)
        .add_service(
            KvServer::new(KvService::new(client.clone()))
                .max_decoding_message_size(limit)
                .max_encoding_message_size(usize::MAX),
        )
        .add_service(
            WatchServer::new(WatchService::new(client.clone())).max_decoding_message_size(limit),
        )
        .add_service(
            LeaseServer::new(LeaseService::new(client.clone())).max_decoding_message_size(limit),
        )
        .add_service(
            MaintenanceServer::new(MaintenanceService::new(node.clone(), membership.clone()))
                .max_decoding_message_size(limit),
        )
        .add_service(
            ClusterServer::new(ClusterService::new(node.clone(), membership.clone()))
                .max_decoding_message_size(limit),
        )
        .add_service(
            LockServer::new(LockService::new(client.clone())).max_decoding_message_size(limit),
        )
        .add_service(
            ElectionServer::new(ElectionService::new(client.clone()))
                .max_decoding_message_size(limit),
        )
        .add_service(
            AuthServer::new(AuthService::new(node.clone())).max_decoding_message_size(limit),
        );
    // The HTTP endpoints share the port, as etcd's do: HTTP/1.1 requests and HTTP/2 ones that
    // are not gRPC calls reach them, past the interceptor (which lets them through). Their
    // requests pass etcd's access controller first (`--host-whitelist` on plain HTTP, `--cors`,
    // OPTIONS on any path); a path no route serves answers 404 (gRPC's Unimplemented to a gRPC
    // call). The gRPC services' routes stay outside the access controller.
    let config = node.config();
    let access = axum::middleware::from_fn_with_state(
        Arc::new(crate::access::Access {
            cors: config.cors.clone(),
            hosts: config.host_whitelist.clone().filter(|_| tls.is_none()),
        }),
        crate::access::access_control,
    );
    let http = endpoints
        .merge(crate::gateway::router(node, client, membership))
        .layer(access.clone());
    let unknown_path = axum::handler::Handler::layer(crate::http::unknown_path, access);
    let routes = tonic::service::Routes::from(
        services
            .routes()
            .into_axum_router()
            .merge(http)
            .fallback(unknown_path),
    );
    // etcd's server options: keepalive pings only when both durations are positive.
    let router = tonic::transport::Server::builder()
        .http2_keepalive_interval(config.grpc_keepalive_interval)
        .http2_keepalive_timeout(Some(config.grpc_keepalive_timeout))
        .max_concurrent_streams(config.max_concurrent_streams)
        .accept_http1(true)
        .layer(GrpcStatsLayer::new(grpc_stats))
        .layer(MapRequestLayer::new(with_call_path))
        .layer(InterceptorLayer::new(RequestInterceptor::new(node.clone())))
        .add_routes(routes);
    async move {
        health_reporter.set_serving::<KvServer<KvService>>().await;
        // etcdctl 3.4 sends a URL as :authority, which h2 rejects; see rampart_h2_compat. The
        // fix reads the HTTP/2 frames, so it comes after the TLS layer.
        let incoming = crate::tls::incoming(listener, tls, shutdown.clone())
            .map(|conn| conn.map(AuthorityFix::new));
        let shutdown = shutdown.cancelled_owned();
        if let Err(e) = router
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await
        {
            tracing::error!("client server failed: {e}");
        }
    }
}

/// Serves the HTTP endpoints (`crate::http`) alone on `listener` (`--listen-metrics-urls`)
/// until `shutdown`.
async fn serve_http(listener: TcpListener, endpoints: axum::Router, shutdown: CancellationToken) {
    if let Err(e) = axum::serve(listener, endpoints.fallback(crate::http::unknown_path))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
    {
        tracing::error!("metrics server failed: {e}");
    }
}

/// Serves the peer protocol on `listener` until `shutdown`, and, with
/// `--experimental-peer-fault-injection` only (TEST ONLY), the remote control of `faults`.
/// With `tls` (an https:// URL), every connection is a TLS one, from a member with a
/// certificate of the peer CA if `--peer-client-cert-auth` is set.
fn serve_peers(
    node: &Node,
    service: PeerService,
    faults: &LinkFaults,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    shutdown: CancellationToken,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let fault_control = node
        .config()
        .peer_fault_injection
        .then(|| FaultControl::server(node.id(), faults.clone()));
    async move {
        let incoming = crate::tls::incoming(listener, tls, shutdown.clone());
        if let Err(e) = tonic::transport::Server::builder()
            .initial_stream_window_size(rampart_network::PEER_STREAM_WINDOW_BYTES)
            .initial_connection_window_size(rampart_network::PEER_CONNECTION_WINDOW_BYTES)
            .add_service(service.into_server())
            .add_optional_service(fault_control)
            .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
            .await
        {
            tracing::error!("peer server failed: {e}");
        }
    }
}

/// Publishes this member's name and client URLs through Raft, as etcd's members do after they
/// start, retrying until it is applied, so every member can list them.
async fn publish(node: Arc<Node>, cancel: CancellationToken) {
    let attributes = MemberAttributes {
        id: node.id(),
        name: node.config().name.clone(),
        client_urls: node.config().advertise_client_urls.clone(),
    };
    while !cancel.is_cancelled() {
        if node.mvcc().members().contains(&attributes) {
            return;
        }
        let attempt = node.write(Command::Publish(attributes.clone()));
        tokio::select! {
            _ = cancel.cancelled() => return,
            result = attempt => match result {
                Ok(_) => return,
                Err(e) => {
                    tracing::debug!("publishing member attributes failed, retrying: {e}");
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(node.config().election_timeout) => {}
                    }
                }
            },
        }
    }
}
