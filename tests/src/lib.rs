//! Test harnesses for Rampart clusters.
//!
//! - [`TestCluster`]: members running in this process, on port-0 listeners, sharing one set of
//!   [`LinkFaults`] so a test can cut, delay and heal the links between them.
//! - [`ProcessCluster`]: real `rampart` processes on free ports, for kill -9 and restart, started
//!   through `rampart-launcher`, which the chaos harness shares.
//!
//! Both wait on conditions with deadlines ([`wait_until`]); nothing sleeps blindly.

mod process;

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use rampart_api::etcdserverpb as pb;
use rampart_api::etcdserverpb::cluster_client::ClusterClient;
use rampart_api::etcdserverpb::kv_client::KvClient;
use rampart_server::{Config, LinkFaults, Listeners, RawConfig, RunningNode};
use rampart_storage::NodeId;
use tempfile::TempDir;
use tokio::net::TcpListener;
use tonic::transport::Channel;

pub use process::{rampart_binary, ProcessCluster, ProcessMember};

/// Timing used by test clusters: faster than etcd's defaults, slow enough for a loaded 2-core
/// machine running many tests at once not to see spurious elections.
pub const HEARTBEAT_MS: u64 = 100;
pub const ELECTION_MS: u64 = 800;

/// Installs a tracing subscriber once, honouring `RUST_LOG` (quiet by default).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// Polls `check` until it returns `Ok(Some(value))` or `timeout` passes; the last error or
/// `what` is reported on failure.
pub async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last_error = None;
    loop {
        match check().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(e) => last_error = Some(e),
        }
        if tokio::time::Instant::now() >= deadline {
            match last_error {
                Some(e) => {
                    bail!("timed out after {timeout:?} waiting for {what}: last error: {e:#}")
                }
                None => bail!("timed out after {timeout:?} waiting for {what}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Connects a KV client to `url`.
pub async fn kv_client(url: &str) -> anyhow::Result<KvClient<Channel>> {
    let channel = Channel::from_shared(url.to_string())?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(20))
        .connect()
        .await
        .with_context(|| format!("connecting to {url}"))?;
    Ok(KvClient::new(channel))
}

/// Connects to the single member at `client_url` once it serves, and waits until a put of
/// `key` = `value` through it succeeds (a new member elects itself first).
pub async fn first_put(
    client_url: &str,
    key: &str,
    value: &str,
) -> anyhow::Result<KvClient<Channel>> {
    let client = wait_until("the member to serve", Duration::from_secs(30), || async {
        Ok(Some(kv_client(client_url).await?))
    })
    .await?;
    wait_until("a write to succeed", Duration::from_secs(30), || {
        let mut client = client.clone();
        async move { Ok(put(&mut client, key, value).await.ok()) }
    })
    .await?;
    Ok(client)
}

/// Puts `key = value` and returns the revision it created.
pub async fn put(client: &mut KvClient<Channel>, key: &str, value: &str) -> anyhow::Result<i64> {
    let response = client
        .put(pb::PutRequest {
            key: key.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
            ..Default::default()
        })
        .await?
        .into_inner();
    Ok(response.header.context("no header")?.revision)
}

/// Reads `key`, linearizably unless `serializable`; `None` if missing.
pub async fn get(
    client: &mut KvClient<Channel>,
    key: &str,
    serializable: bool,
) -> anyhow::Result<Option<String>> {
    let response = client
        .range(pb::RangeRequest {
            key: key.as_bytes().to_vec(),
            serializable,
            ..Default::default()
        })
        .await?
        .into_inner();
    Ok(response
        .kvs
        .first()
        .map(|kv| String::from_utf8_lossy(&kv.value).into_owned()))
}

/// The answer to a membership change, or `None` while the strict reconfiguration check
/// refuses it because the cluster has not been healthy for etcd's health interval (5 s) yet:
/// for [`wait_until`] to try again. Any other error ends the wait.
pub fn unless_unhealthy<T>(
    result: Result<tonic::Response<T>, tonic::Status>,
) -> anyhow::Result<Option<T>> {
    match result {
        Ok(response) => Ok(Some(response.into_inner())),
        Err(status) if status.message() == "etcdserver: unhealthy cluster" => Ok(None),
        Err(status) => Err(status.into()),
    }
}

/// One in-process member and what it needs to restart.
pub struct Member {
    pub name: String,
    pub id: NodeId,
    pub client_url: String,
    pub peer_url: String,
    /// `None` while the member is stopped.
    pub running: Option<RunningNode>,
    raw: RawConfig,
}

/// A cluster of in-process members with shared, controllable peer links.
pub struct TestCluster {
    pub members: Vec<Member>,
    pub faults: LinkFaults,
    /// Holds every member's data directory; removed when the cluster is dropped.
    pub dir: TempDir,
    /// The cluster's id, which peer calls must name.
    pub cluster_id: u64,
}

async fn bind_local() -> anyhow::Result<(TcpListener, String)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    Ok((listener, url))
}

impl TestCluster {
    /// Starts `size` members with the default settings of the test harness.
    pub async fn start(size: usize) -> anyhow::Result<TestCluster> {
        Self::start_with(size, |_| {}).await
    }

    /// Starts `size` members; `adjust` may change each member's settings first.
    pub async fn start_with(
        size: usize,
        adjust: impl Fn(&mut RawConfig),
    ) -> anyhow::Result<TestCluster> {
        init_tracing();
        let dir = tempfile::tempdir()?;
        let mut bound = Vec::new();
        for i in 0..size {
            let (client, client_url) = bind_local().await?;
            let (peer, peer_url) = bind_local().await?;
            bound.push((format!("m{i}"), client, client_url, peer, peer_url));
        }
        let initial_cluster = bound
            .iter()
            .map(|(name, _, _, _, peer_url)| format!("{name}={peer_url}"))
            .collect::<Vec<_>>()
            .join(",");
        let faults = LinkFaults::default();
        let mut members = Vec::new();
        let mut cluster_id = 0;
        for (name, client, client_url, peer, peer_url) in bound {
            let mut raw = RawConfig {
                name: Some(name.clone()),
                data_dir: Some(dir.path().join(&name)),
                listen_client_urls: Some(client_url.clone()),
                listen_peer_urls: Some(peer_url.clone()),
                initial_cluster: Some(initial_cluster.clone()),
                initial_cluster_token: Some("test-cluster".into()),
                heartbeat_interval: Some(HEARTBEAT_MS),
                election_timeout: Some(ELECTION_MS),
                ..Default::default()
            };
            adjust(&mut raw);
            let config = Config::from_raw(raw.clone())?;
            cluster_id = config.cluster_id;
            let listeners = Listeners {
                client: vec![client],
                peer: vec![peer],
                metrics: Vec::new(),
            };
            let running = RunningNode::start(config.clone(), listeners, faults.clone()).await?;
            members.push(Member {
                name,
                id: config.member_id,
                client_url,
                peer_url,
                running: Some(running),
                raw,
            });
        }
        Ok(TestCluster {
            members,
            faults,
            dir,
            cluster_id,
        })
    }

    pub fn ids(&self) -> Vec<NodeId> {
        self.members.iter().map(|m| m.id).collect()
    }

    pub fn index_of(&self, id: NodeId) -> usize {
        self.members
            .iter()
            .position(|m| m.id == id)
            .expect("no member with that id")
    }

    /// Waits until every running member named in `among` agrees on one leader from `among`.
    pub async fn wait_for_leader_among(
        &self,
        among: &[NodeId],
        timeout: Duration,
    ) -> anyhow::Result<NodeId> {
        wait_until("a leader", timeout, || async {
            let mut seen = None;
            for member in &self.members {
                if !among.contains(&member.id) {
                    continue;
                }
                let Some(running) = &member.running else {
                    continue;
                };
                let leader = running.node.metrics().current_leader;
                match (leader, seen) {
                    (Some(l), _) if !among.contains(&l) => return Ok(None),
                    (Some(l), None) => seen = Some(l),
                    (Some(l), Some(s)) if l == s => {}
                    _ => return Ok(None),
                }
            }
            Ok(seen)
        })
        .await
    }

    pub async fn wait_for_leader(&self, timeout: Duration) -> anyhow::Result<NodeId> {
        self.wait_for_leader_among(&self.ids(), timeout).await
    }

    /// Every member's client URL, in member order.
    pub fn client_urls(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_url.clone()).collect()
    }

    pub async fn client(&self, index: usize) -> anyhow::Result<KvClient<Channel>> {
        kv_client(&self.members[index].client_url).await
    }

    /// Stops member `index` in order (its data stays).
    pub async fn stop(&mut self, index: usize) {
        if let Some(running) = self.members[index].running.take() {
            running.shutdown().await;
        }
    }

    /// Restarts a stopped member on its old addresses and data.
    pub async fn restart(&mut self, index: usize) -> anyhow::Result<()> {
        let member = &mut self.members[index];
        anyhow::ensure!(
            member.running.is_none(),
            "member {} is running",
            member.name
        );
        let config = Config::from_raw(member.raw.clone())?;
        let listeners = Listeners::bind(&config).await?;
        member.running = Some(RunningNode::start(config, listeners, self.faults.clone()).await?);
        Ok(())
    }

    /// The applied log index of member `index`.
    pub fn applied_index(&self, index: usize) -> u64 {
        self.members[index]
            .running
            .as_ref()
            .and_then(|r| r.node.metrics().last_applied)
            .map_or(0, |id| id.index)
    }

    /// The data directory of member `index`.
    pub fn data_dir(&self, index: usize) -> PathBuf {
        self.dir.path().join(&self.members[index].name)
    }

    /// A Cluster-service client of member `index`.
    pub async fn cluster_client(&self, index: usize) -> anyhow::Result<ClusterClient<Channel>> {
        let channel = Channel::from_shared(self.members[index].client_url.clone())?
            .connect()
            .await?;
        Ok(ClusterClient::new(channel))
    }

    /// Adds a member through `MemberAdd` on member `via` (a learner if `is_learner`), then starts
    /// it with `--initial-cluster-state existing`, as etcdctl's `member add` says to; returns
    /// its index. The new member's settings are member 0's, on new addresses.
    pub async fn add_member(&mut self, via: usize, is_learner: bool) -> anyhow::Result<usize> {
        let (client, client_url) = bind_local().await?;
        let (peer, peer_url) = bind_local().await?;
        // A voter is added only once every voter has been reachable for etcd's health
        // interval (5 s): a cluster that just started answers "unhealthy cluster" until then.
        let request = pb::MemberAddRequest {
            peer_ur_ls: vec![peer_url.clone()],
            is_learner,
        };
        let this = &*self;
        let added =
            wait_until("MemberAdd to be accepted", Duration::from_secs(30), || {
                let request = request.clone();
                async move {
                    unless_unhealthy(this.cluster_client(via).await?.member_add(request).await)
                }
            })
            .await?;
        let id = added.member.context("MemberAdd answered no member")?.id;
        let name = format!("m{}", self.members.len());
        let initial_cluster = self
            .members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url))
            .chain([format!("{name}={peer_url}")])
            .collect::<Vec<_>>()
            .join(",");
        let raw = RawConfig {
            name: Some(name.clone()),
            data_dir: Some(self.dir.path().join(&name)),
            listen_client_urls: Some(client_url.clone()),
            listen_peer_urls: Some(peer_url.clone()),
            initial_cluster: Some(initial_cluster),
            initial_cluster_state: Some("existing".into()),
            ..self.members[0].raw.clone()
        };
        let config = Config::from_raw(raw.clone())?;
        let listeners = Listeners {
            client: vec![client],
            peer: vec![peer],
            metrics: Vec::new(),
        };
        let running = RunningNode::start(config, listeners, self.faults.clone()).await?;
        anyhow::ensure!(
            running.node.id() == id,
            "the new member took id {:x}, MemberAdd gave {id:x}",
            running.node.id()
        );
        self.members.push(Member {
            name,
            id,
            client_url,
            peer_url,
            running: Some(running),
            raw,
        });
        Ok(self.members.len() - 1)
    }

    /// Stops every member.
    pub async fn shutdown(mut self) {
        for i in 0..self.members.len() {
            self.stop(i).await;
        }
    }
}
