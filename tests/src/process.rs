//! Clusters of real `rampart` processes, started through `rampart-launcher`.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{bail, Context};
use rampart_api::etcdserverpb as pb;
use rampart_api::etcdserverpb::maintenance_client::MaintenanceClient;
use rampart_launcher::{NotAnswering, Plan};
use tempfile::TempDir;
use tonic::transport::Channel;

use crate::{wait_until, ELECTION_MS, HEARTBEAT_MS};

/// One `rampart` process of a [`ProcessCluster`].
pub use rampart_launcher::Member as ProcessMember;

/// How long a started member may take to answer a serializable read.
const SERVE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long members may take to agree on a leader.
const LEADER_TIMEOUT: Duration = Duration::from_secs(60);

/// The `rampart` binary ([`rampart_launcher::rampart_binary`]: `$RAMPART_BIN`, or the one cargo
/// builds beside the test binaries, built if it is missing or stale), found once per test
/// process.
pub fn rampart_binary() -> anyhow::Result<PathBuf> {
    static BINARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BINARY
        .get_or_init(|| rampart_launcher::rampart_binary(None).map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

/// Real `rampart` processes on loopback, each with its own data directory. Dropping the
/// cluster kills them, then removes the directory.
pub struct ProcessCluster {
    pub members: Vec<ProcessMember>,
    pub dir: TempDir,
    /// How the members were started, for members added later.
    plan: Plan,
}

impl ProcessCluster {
    /// Starts `size` processes and waits until each answers a serializable read.
    pub async fn start(size: usize) -> anyhow::Result<ProcessCluster> {
        Self::start_with(size, &[], |_, _| Ok(())).await
    }

    /// Starts `size` processes with `extra_args` (`--flag=value`) besides the usual flags.
    pub async fn start_with_args(
        size: usize,
        extra_args: &[&str],
    ) -> anyhow::Result<ProcessCluster> {
        Self::start_with(size, extra_args, |_, _| Ok(())).await
    }

    /// Starts `size` processes as [`ProcessCluster::start`] does, once `prepare` has been given
    /// the members, not yet started, and the cluster token: e.g. to restore a backup into their
    /// data directories.
    pub async fn start_prepared<F>(size: usize, prepare: F) -> anyhow::Result<ProcessCluster>
    where
        F: Fn(&[ProcessMember], &str) -> anyhow::Result<()>,
    {
        Self::start_with(size, &[], prepare).await
    }

    /// Starts `size` processes with `extra_args` besides the usual flags, once `prepare` has
    /// been given the members and the cluster token.
    async fn start_with<F>(
        size: usize,
        extra_args: &[&str],
        prepare: F,
    ) -> anyhow::Result<ProcessCluster>
    where
        F: Fn(&[ProcessMember], &str) -> anyhow::Result<()>,
    {
        let extra: Vec<String> = extra_args.iter().map(|a| a.to_string()).collect();
        rampart_launcher::retry_start(|_attempt| Self::try_start(size, extra.clone(), &prepare))
            .await
    }

    async fn try_start<F>(
        size: usize,
        extra_args: Vec<String>,
        prepare: &F,
    ) -> anyhow::Result<ProcessCluster>
    where
        F: Fn(&[ProcessMember], &str) -> anyhow::Result<()>,
    {
        let dir = tempfile::tempdir()?;
        let plan = Plan {
            size,
            name_prefix: "p".into(),
            token: "process-test".into(),
            heartbeat_ms: HEARTBEAT_MS,
            election_ms: ELECTION_MS,
            data_dir_suffix: String::new(),
            extra_args,
            rust_log: "info,openraft=warn".into(),
        };
        let members = plan.members(&rampart_binary()?, dir.path())?;
        prepare(&members, &plan.token)?;
        let mut cluster = ProcessCluster { members, dir, plan };
        for member in &mut cluster.members {
            member.spawn()?;
        }
        for i in 0..size {
            cluster.wait_serving(i).await?;
        }
        cluster.wait_for_leader().await?;
        Ok(cluster)
    }

    /// Waits until the cluster has a leader: member 0 answers a linearizable read, which needs
    /// the leader's read index. (A busy machine can take longer to elect one than a request
    /// waits for a leader.)
    pub async fn wait_for_leader(&self) -> anyhow::Result<()> {
        let url = self.members[0].client_url.clone();
        wait_until("a leader", Duration::from_secs(30), || {
            let url = url.clone();
            async move {
                let mut client = crate::kv_client(&url).await?;
                crate::get(&mut client, "probe", false).await?;
                Ok(Some(()))
            }
        })
        .await
    }

    /// Every member's client URL, in member order.
    pub fn client_urls(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_url.clone()).collect()
    }

    /// Waits until every member in `among` names the same leader, one of them, and returns its
    /// index in `members`. Each member's Status header carries its own id, which maps ids to
    /// indexes.
    pub async fn leader_index(&self, among: &[usize]) -> anyhow::Result<usize> {
        let urls: Vec<String> = among
            .iter()
            .map(|&i| self.members[i].client_url.clone())
            .collect();
        let position = wait_until("one leader among the members", LEADER_TIMEOUT, || {
            let urls = urls.clone();
            async move {
                let mut leaders = Vec::new();
                let mut ids = Vec::new();
                for url in &urls {
                    let channel = Channel::from_shared(url.clone())?
                        .connect_timeout(Duration::from_secs(2))
                        .timeout(Duration::from_secs(5))
                        .connect()
                        .await?;
                    let status = MaintenanceClient::new(channel)
                        .status(pb::StatusRequest {})
                        .await?
                        .into_inner();
                    leaders.push(status.leader);
                    ids.push(status.header.context("no header")?.member_id);
                }
                // Members that still name a leader outside `among` (one just killed) have not
                // noticed its loss yet: wait for them.
                let agreed = leaders[0] != 0 && leaders.iter().all(|&l| l == leaders[0]);
                Ok(agreed
                    .then(|| ids.iter().position(|&id| id == leaders[0]))
                    .flatten())
            }
        })
        .await?;
        Ok(among[position])
    }

    /// Waits until member `index` answers a serializable read.
    pub async fn wait_serving(&mut self, index: usize) -> anyhow::Result<()> {
        let member = &mut self.members[index];
        let url = member.client_url.clone();
        let answered = member
            .wait_answering(SERVE_TIMEOUT, || serves(url.clone()))
            .await;
        serving(member, answered)
    }

    /// Starts a member that `member add` added on `urls.1` (its peer URL; `urls.0` is its client
    /// URL), with `initial_cluster` as `member add` printed it, and waits until it serves a
    /// serializable read; returns its index.
    pub async fn start_joining(
        &mut self,
        name: &str,
        urls: (String, String),
        initial_cluster: &str,
    ) -> anyhow::Result<usize> {
        let member = self.plan.joining_member(
            &rampart_binary()?,
            self.dir.path(),
            name,
            urls,
            initial_cluster,
        );
        self.members.push(member);
        let index = self.members.len() - 1;
        self.members[index].spawn()?;
        self.wait_serving(index).await?;
        Ok(index)
    }

    /// Kills member `index` with SIGKILL: no shutdown, no flush.
    pub fn kill(&mut self, index: usize) -> anyhow::Result<()> {
        self.members[index].kill()
    }

    /// Starts member `index` again on its old addresses and data.
    pub async fn restart(&mut self, index: usize) -> anyhow::Result<()> {
        let member = &mut self.members[index];
        let url = member.client_url.clone();
        let answered = member.restart(SERVE_TIMEOUT, || serves(url.clone())).await;
        serving(member, answered)
    }
}

/// The probe of a serving member: it answers a serializable read. With authentication on,
/// its refusal of a read without credentials is an answer too.
async fn serves(url: String) -> anyhow::Result<()> {
    let mut client = crate::kv_client(&url).await?;
    let probe = pb::RangeRequest {
        key: b"probe".to_vec(),
        serializable: true,
        ..Default::default()
    };
    match client.range(probe).await {
        Ok(_) => Ok(()),
        Err(status) if status.message() == "etcdserver: user name is empty" => Ok(()),
        Err(status) => Err(status.into()),
    }
}

/// What waiting for `member` to serve came to, with its log if it exited.
fn serving(member: &ProcessMember, answered: Result<(), NotAnswering>) -> anyhow::Result<()> {
    match answered {
        Ok(()) => Ok(()),
        Err(NotAnswering::Exited(_)) => {
            bail!("member {} exited; its log:\n{}", member.name, member.log())
        }
        Err(NotAnswering::NotStarted(e)) => Err(e),
        Err(NotAnswering::TimedOut(e)) => bail!(
            "timed out after {SERVE_TIMEOUT:?} waiting for member to serve: last error: {e:#}"
        ),
    }
}
