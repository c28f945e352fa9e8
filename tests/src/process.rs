//! Clusters of real `rampart` processes.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{bail, Context};
use tempfile::TempDir;

use crate::{wait_until, ELECTION_MS, HEARTBEAT_MS};

/// The `rampart` binary: `$RAMPART_BIN`, or the one cargo builds beside the test binaries,
/// built once per test process if it is missing.
pub fn rampart_binary() -> anyhow::Result<PathBuf> {
    static BINARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BINARY
        .get_or_init(|| find_or_build().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

fn find_or_build() -> anyhow::Result<PathBuf> {
    if let Ok(path) = std::env::var("RAMPART_BIN") {
        return Ok(PathBuf::from(path));
    }
    // Test binaries live in target/<profile>/deps/.
    let exe = std::env::current_exe()?;
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .context("test binary is not inside a cargo target directory")?;
    let binary = profile_dir.join("rampart");
    let profile = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("debug");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    build.args(["build", "-p", "rampart", "--bin", "rampart"]);
    if profile == "release" {
        build.arg("--release");
    }
    let status = build
        .status()
        .context("running cargo build for the rampart binary")?;
    if !status.success() || !binary.exists() {
        bail!("could not build {}", binary.display());
    }
    Ok(binary)
}

/// A free loopback port. The port is released before the process binds it, so another process
/// may take it first; [`ProcessCluster::start`] retries with new ports when that happens.
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// One `rampart` process of a [`ProcessCluster`].
pub struct ProcessMember {
    pub name: String,
    pub client_url: String,
    pub peer_url: String,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
}

impl ProcessMember {
    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)?;
        let child = Command::new(rampart_binary()?)
            .args(&self.args)
            .env("RUST_LOG", "info,openraft=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawning rampart")?;
        self.child = Some(child);
        Ok(())
    }

    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// The process's log so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

/// Real `rampart` processes on loopback, each with its own data directory.
pub struct ProcessCluster {
    pub members: Vec<ProcessMember>,
    pub dir: TempDir,
}

impl ProcessCluster {
    /// Starts `size` processes and waits until each answers a serializable read.
    pub async fn start(size: usize) -> anyhow::Result<ProcessCluster> {
        let mut last_error = None;
        for _attempt in 0..3 {
            match Self::try_start(size).await {
                Ok(cluster) => return Ok(cluster),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.expect("three attempts were made"))
    }

    async fn try_start(size: usize) -> anyhow::Result<ProcessCluster> {
        let dir = tempfile::tempdir()?;
        let mut ports = Vec::new();
        for _ in 0..size {
            ports.push((free_port()?, free_port()?));
        }
        let initial_cluster = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("p{i}=http://127.0.0.1:{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut members = Vec::new();
        for (i, (client, peer)) in ports.into_iter().enumerate() {
            let name = format!("p{i}");
            let client_url = format!("http://127.0.0.1:{client}");
            let peer_url = format!("http://127.0.0.1:{peer}");
            let data_dir = dir.path().join(&name);
            let args = vec![
                format!("--name={name}"),
                format!("--data-dir={}", data_dir.display()),
                format!("--listen-client-urls={client_url}"),
                format!("--listen-peer-urls={peer_url}"),
                format!("--initial-cluster={initial_cluster}"),
                "--initial-cluster-token=process-test".to_string(),
                format!("--heartbeat-interval={HEARTBEAT_MS}"),
                format!("--election-timeout={ELECTION_MS}"),
            ];
            let mut member = ProcessMember {
                log_path: dir.path().join(format!("{name}.log")),
                name,
                client_url,
                peer_url,
                data_dir,
                args,
                child: None,
            };
            member.spawn()?;
            members.push(member);
        }
        let mut cluster = ProcessCluster { members, dir };
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

    /// Waits until member `index` answers a serializable read.
    pub async fn wait_serving(&mut self, index: usize) -> anyhow::Result<()> {
        let url = self.members[index].client_url.clone();
        let result = wait_until("member to serve", Duration::from_secs(30), || {
            let url = url.clone();
            async move {
                let mut client = crate::kv_client(&url).await?;
                crate::get(&mut client, "probe", true).await?;
                Ok(Some(()))
            }
        })
        .await;
        if result.is_err() && !self.members[index].is_running() {
            bail!(
                "member {} exited; its log:\n{}",
                self.members[index].name,
                self.members[index].log()
            );
        }
        result
    }

    /// Kills member `index` with SIGKILL: no shutdown, no flush.
    pub fn kill(&mut self, index: usize) -> anyhow::Result<()> {
        if let Some(mut child) = self.members[index].child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Starts member `index` again on its old addresses and data.
    pub async fn restart(&mut self, index: usize) -> anyhow::Result<()> {
        self.members[index].spawn()?;
        self.wait_serving(index).await
    }
}

impl Drop for ProcessCluster {
    fn drop(&mut self) {
        for member in &mut self.members {
            if let Some(mut child) = member.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
