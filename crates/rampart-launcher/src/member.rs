//! One `rampart` process: spawn, wait until it answers, kill, pause, resume, signal, restart.

use std::future::Future;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use rampart_crashfs::{CrashFs, MountedCrashFs};
use tokio::time::Instant;

/// How often [`Member::wait_answering`] probes.
const PROBE_INTERVAL: Duration = Duration::from_millis(100);

/// How many times [`Member::restart`] starts again a process that found its port taken, and
/// how long it waits before each.
const PORT_RETRIES: usize = 20;
const PORT_RETRY_WAIT: Duration = Duration::from_millis(500);

/// Whether a member's process runs, is stopped by SIGSTOP, or is dead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProcessState {
    Running,
    Paused,
    Killed,
}

/// Why a member did not answer its probe.
#[derive(Debug, thiserror::Error)]
pub enum NotAnswering {
    /// The process exited by itself (a crash, a refusal to start, a port already taken).
    #[error("the process exited with {0}")]
    Exited(ExitStatus),
    /// The process could not be started at all.
    #[error("could not start: {0:#}")]
    NotStarted(anyhow::Error),
    /// The process ran, but the probe had not succeeded when the time was up.
    #[error("no answer in time: {0:#}")]
    TimedOut(anyhow::Error),
}

/// One `rampart` process and what it takes to start it again: the same flags, so the same
/// addresses and data directory. The process is killed (SIGKILL) when the member is dropped, so
/// a harness that fails or panics leaves no process behind.
pub struct Member {
    pub name: String,
    pub client_url: String,
    pub peer_url: String,
    pub data_dir: PathBuf,
    /// Every process of this member appends its standard output and error here.
    pub log_path: PathBuf,
    pub(crate) binary: PathBuf,
    pub(crate) args: Vec<String>,
    pub(crate) rust_log: String,
    /// `None` once killed, or found exited by [`Member::exited`].
    pub(crate) child: Option<Child>,
    pub(crate) paused: bool,
    /// The log's length when the current process started: what it wrote comes after.
    pub(crate) log_start: u64,
    /// Where the data directory lives: the plain filesystem, or a crash filesystem.
    pub(crate) disk: Disk,
}

/// A member's data directory: on the machine's filesystem, where a killed process loses
/// nothing it wrote (the kernel's page cache keeps it), or on a crash filesystem
/// (`rampart-crashfs`), where [`Member::power_loss`] drops every write not fsynced.
#[derive(Debug, Default)]
pub(crate) enum Disk {
    #[default]
    Plain,
    /// Mounted at the data directory over `backing` at the next start, and then kept
    /// mounted across kills, power losses and restarts until the member is dropped.
    CrashFs {
        backing: PathBuf,
        mount: Option<MountedCrashFs>,
    },
}

impl Member {
    /// Keeps the data directory on a crash filesystem from the next start on, so that
    /// [`Member::power_loss`] can drop what the member did not fsync. What the filesystem
    /// holds as synced lives in `{data_dir}.disk`. Needs FUSE (see `rampart-crashfs`).
    pub fn use_crashfs(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            bail!("{} is running: its data directory cannot move", self.name);
        }
        let mut backing = self.data_dir.clone().into_os_string();
        backing.push(".disk");
        self.disk = Disk::CrashFs {
            backing: backing.into(),
            mount: None,
        };
        Ok(())
    }

    /// Whether the data directory is on a crash filesystem.
    pub fn on_crashfs(&self) -> bool {
        matches!(self.disk, Disk::CrashFs { .. })
    }

    /// Mounts the crash filesystem at the data directory if it is not mounted yet.
    fn mount_disk(&mut self) -> anyhow::Result<()> {
        if let Disk::CrashFs {
            backing,
            mount: mount @ None,
        } = &mut self.disk
        {
            for dir in [&*backing, &self.data_dir] {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
            }
            *mount = Some(CrashFs::mount(backing, &self.data_dir)?);
        }
        Ok(())
    }

    /// Starts the process with `--flag=value` from its next start on, in place of any value
    /// the flag had (a flag given twice is refused).
    pub fn set_flag(&mut self, flag: &str, value: &str) {
        let prefix = format!("--{flag}=");
        self.args.retain(|arg| !arg.starts_with(&prefix));
        self.args.push(format!("{prefix}{value}"));
    }

    /// Starts the process, its output appended to [`Member::log_path`].
    pub fn spawn(&mut self) -> anyhow::Result<()> {
        self.mount_disk()?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .with_context(|| format!("opening {}", self.log_path.display()))?;
        self.log_start = log.metadata()?.len();
        let child = Command::new(&self.binary)
            .args(&self.args)
            .env("RUST_LOG", &self.rust_log)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawning {}", self.binary.display()))?;
        self.child = Some(child);
        self.paused = false;
        Ok(())
    }

    pub fn state(&self) -> ProcessState {
        match (&self.child, self.paused) {
            (None, _) => ProcessState::Killed,
            (Some(_), true) => ProcessState::Paused,
            (Some(_), false) => ProcessState::Running,
        }
    }

    /// Whether the process is alive (running or paused). Unlike [`Member::exited`], this keeps
    /// the exit status of a process that ended for a later look.
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// The exit status if the process ended without being killed through this member; the
    /// member then counts as killed.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok().flatten()?;
        self.child = None;
        self.paused = false;
        Some(status)
    }

    /// Kills the process with SIGKILL (no shutdown, no flush) and waits until it is gone, so
    /// that a restart finds its ports and data directory free. A paused process dies too.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child
                .kill()
                .with_context(|| format!("killing {}", self.name))?;
            child.wait()?;
        }
        self.paused = false;
        Ok(())
    }

    /// Cuts the power: kills the process with SIGKILL, then drops every write to the data
    /// directory that was not fsynced (the member must be on a crash filesystem, see
    /// [`Member::use_crashfs`]). [`Member::restart`] starts it again on what is left.
    pub fn power_loss(&mut self) -> anyhow::Result<()> {
        self.kill()?;
        match &self.disk {
            Disk::CrashFs {
                mount: Some(mount), ..
            } => {
                mount.crash()?;
                Ok(())
            }
            Disk::CrashFs { mount: None, .. } => Ok(()),
            Disk::Plain => bail!(
                "{} keeps its data on the plain filesystem: no power to cut",
                self.name
            ),
        }
    }

    /// Bytes the member wrote and did not fsync: what a power loss now would drop (0 off a
    /// crash filesystem).
    pub fn unsynced_bytes(&self) -> u64 {
        match &self.disk {
            Disk::CrashFs {
                mount: Some(mount), ..
            } => mount.unsynced_bytes(),
            _ => 0,
        }
    }

    /// Kills the process, unmounts its crash filesystem if it has one, and deletes its data
    /// directory (and the crash filesystem's backing directory).
    pub fn remove_data(&mut self) -> anyhow::Result<()> {
        self.kill()?;
        let mut dirs = vec![self.data_dir.clone()];
        if let Disk::CrashFs { backing, mount } = &mut self.disk {
            if let Some(mount) = mount.take() {
                mount.unmount();
            }
            dirs.push(backing.clone());
        }
        for dir in dirs {
            match std::fs::remove_dir_all(&dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(e).with_context(|| format!("removing {}", dir.display()))
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The process's id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends `signal` (a name `kill` knows: `TERM`, `INT`, `STOP`, ...) to the process.
    pub fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let pid = self
            .pid()
            .with_context(|| format!("{} has no process", self.name))?;
        send_signal(pid, signal).with_context(|| format!("signalling {}", self.name))
    }

    /// Stops the process with SIGSTOP: it keeps its sockets but answers nothing.
    pub fn pause(&mut self) -> anyhow::Result<()> {
        self.signal("STOP")?;
        self.paused = true;
        Ok(())
    }

    /// Lets a paused process run again (SIGCONT); does nothing to one that is not paused.
    pub fn resume(&mut self) -> anyhow::Result<()> {
        if self.paused {
            self.signal("CONT")?;
            self.paused = false;
        }
        Ok(())
    }

    /// Probes the member until `probe` succeeds, the process exits, or `timeout` passes.
    pub async fn wait_answering<F, Fut>(
        &mut self,
        timeout: Duration,
        mut probe: F,
    ) -> Result<(), NotAnswering>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = anyhow::Result<()>>,
    {
        let deadline = Instant::now() + timeout;
        loop {
            let error = match probe().await {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            if let Some(status) = self.exited() {
                return Err(NotAnswering::Exited(status));
            }
            if Instant::now() >= deadline {
                return Err(NotAnswering::TimedOut(error));
            }
            tokio::time::sleep(PROBE_INTERVAL).await;
        }
    }

    /// Starts the process again if it is not alive, on its old flags (addresses, data
    /// directory), and waits as [`Member::wait_answering`] does. A process that exits because
    /// another one took its port while it was down is started again, up to 20 times, half a
    /// second apart.
    pub async fn restart<F, Fut>(
        &mut self,
        timeout: Duration,
        mut probe: F,
    ) -> Result<(), NotAnswering>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = anyhow::Result<()>>,
    {
        let mut retries = 0;
        loop {
            if self.child.is_none() {
                self.spawn().map_err(NotAnswering::NotStarted)?;
            }
            match self.wait_answering(timeout, &mut probe).await {
                Err(NotAnswering::Exited(_)) if self.lost_its_port() && retries < PORT_RETRIES => {
                    tracing::warn!(member = %self.name, "member could not bind its port");
                    retries += 1;
                    tokio::time::sleep(PORT_RETRY_WAIT).await;
                }
                result => return result,
            }
        }
    }

    /// Everything every process of this member wrote to its log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The last `lines` lines the current (or last) process wrote to the log.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = std::fs::read(&self.log_path).unwrap_or_default();
        let start = (self.log_start as usize).min(log.len());
        let log = String::from_utf8_lossy(&log[start..]);
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Whether the last process exited because its port was taken: while a member is down, any
    /// process on the machine may be given its port for an outgoing connection.
    pub fn lost_its_port(&self) -> bool {
        self.log_tail(5).contains("Address already in use")
    }
}

impl Drop for Member {
    /// Kills the process; then the crash filesystem, if any, is unmounted (a field dropped
    /// after this runs), with no process left using it.
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Sends `signal` (a name `kill` knows) to process `pid`, through the `kill` command: this
/// workspace forbids the `unsafe` a direct `kill(2)` would take.
pub fn send_signal(pid: u32, signal: &str) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .context("running kill")?;
    if !status.success() {
        bail!("kill -{signal} {pid} failed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    use super::*;
    use crate::Plan;

    /// A one-member plan whose "rampart" is `binary`.
    fn member(binary: &Path, dir: &Path) -> Member {
        let plan = Plan {
            size: 1,
            name_prefix: "t".into(),
            token: "member-test".into(),
            heartbeat_ms: 100,
            election_ms: 1000,
            data_dir_suffix: String::new(),
            extra_args: vec![],
            rust_log: "info".into(),
        };
        plan.members(binary, dir).unwrap().remove(0)
    }

    #[tokio::test]
    async fn a_process_that_exits_is_reported_with_only_its_own_log() {
        let dir = tempfile::tempdir().unwrap();
        // echo prints the flags it was given and exits 0.
        let mut member = member(Path::new("/bin/echo"), dir.path());
        for run in 1..=2 {
            let waited = member
                .restart(Duration::from_secs(10), || async {
                    anyhow::bail!("no answer")
                })
                .await;
            match waited {
                Err(NotAnswering::Exited(status)) => assert!(status.success(), "{status}"),
                other => panic!("run {run}: expected an exit, got {other:?}"),
            }
            assert_eq!(member.state(), ProcessState::Killed);
            assert_eq!(member.log().lines().count(), run, "one line a run");
            assert_eq!(
                member.log_tail(10).lines().count(),
                1,
                "the last run's line"
            );
            assert!(member.log_tail(1).contains("--name=t0"), "{}", member.log());
        }
    }

    #[tokio::test]
    async fn pause_resume_and_kill_follow_the_process() {
        let dir = tempfile::tempdir().unwrap();
        // A stand-in for rampart that ignores its flags and runs until it is killed.
        let script = dir.path().join("sleeper");
        std::fs::write(&script, "#!/bin/sh\nexec sleep 60\n").unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut member = member(&script, dir.path());
        member.spawn().unwrap();
        member
            .wait_answering(Duration::from_millis(300), || async { Ok(()) })
            .await
            .unwrap();
        assert_eq!(member.state(), ProcessState::Running);
        member.pause().unwrap();
        assert_eq!(member.state(), ProcessState::Paused);
        assert!(member.is_running(), "a paused process is alive");
        member.resume().unwrap();
        assert_eq!(member.state(), ProcessState::Running);
        let timed_out = member
            .wait_answering(Duration::from_millis(300), || async {
                anyhow::bail!("silent")
            })
            .await;
        assert!(
            matches!(&timed_out, Err(NotAnswering::TimedOut(e)) if e.to_string() == "silent"),
            "{timed_out:?}"
        );
        member.kill().unwrap();
        assert_eq!(member.state(), ProcessState::Killed);
        assert!(!member.is_running());
        assert!(
            member.signal("TERM").is_err(),
            "a killed member has no process"
        );
    }

    #[tokio::test]
    async fn a_power_loss_keeps_only_what_the_process_fsynced() {
        if !rampart_crashfs::fuse_available() {
            println!("SKIPPED: /dev/fuse is missing, so no crash filesystem can be mounted here");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        // A stand-in for rampart that writes two files in its data directory, fsyncs one
        // (dd conv=fsync), says so, and runs until killed.
        let script = dir.path().join("writer");
        std::fs::write(
            &script,
            "#!/bin/sh\n\
             for a in \"$@\"; do case $a in --data-dir=*) d=${a#--data-dir=};; esac; done\n\
             echo synced | dd of=$d/synced conv=fsync status=none\n\
             echo lost >> $d/unsynced\n\
             echo written\n\
             exec sleep 60\n",
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut member = member(&script, dir.path());
        member.use_crashfs().unwrap();
        for run in 1..=2 {
            member.spawn().unwrap();
            let deadline = Instant::now() + Duration::from_secs(10);
            while !member.log_tail(1).contains("written") {
                assert!(Instant::now() < deadline, "run {run}: {}", member.log());
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            assert_eq!(
                std::fs::read_to_string(member.data_dir.join("unsynced")).unwrap(),
                "lost\n",
                "run {run}: read back before the power loss"
            );
            assert!(member.unsynced_bytes() > 0);
            member.power_loss().unwrap();
            assert_eq!(member.state(), ProcessState::Killed);
            assert_eq!(
                std::fs::read_to_string(member.data_dir.join("synced")).unwrap(),
                "synced\n"
            );
            assert_eq!(
                std::fs::read_to_string(member.data_dir.join("unsynced")).unwrap(),
                "",
                "run {run}: the unsynced append is gone"
            );
        }
        member.remove_data().unwrap();
        assert!(!member.data_dir.exists());
    }
}
