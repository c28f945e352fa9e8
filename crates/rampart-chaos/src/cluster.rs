//! A cluster of real `rampart` processes on loopback, and the faults the nemesis inflicts on
//! them: kill -9 and restart, SIGSTOP and SIGCONT, power losses of members whose data is on
//! crash filesystems (through `rampart-launcher`, which the tests crate shares), peer-link
//! rules set through each member's test-only `Faults` service
//! (`--experimental-peer-fault-injection`), and what the membership fault
//! ([`crate::membership`]) does to a member's process: wait for a removed member to stop,
//! wipe its data and make it a new member that joins the running cluster on the same URLs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use anyhow::{bail, Context};
use rampart_api::etcdserverpb as pb;
use rampart_api::etcdserverpb::cluster_client::ClusterClient;
use rampart_api::etcdserverpb::maintenance_client::MaintenanceClient;
use rampart_api::faults::faults_client::FaultsClient;
use rampart_api::faults::{Delay, FaultRules, HealRequest};
use rampart_launcher::{NotAnswering, Plan};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};

pub use rampart_launcher::{rampart_binary, ProcessState};

/// Raft timing of chaos clusters: etcd's defaults, so faults held for a second or more cause
/// elections and shorter ones may not.
pub const HEARTBEAT_MS: u64 = 100;
pub const ELECTION_MS: u64 = 1000;

/// How long a control call (Status, Faults, MemberList) may take: a paused member never answers.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a membership call (MemberAdd, MemberRemove, MemberPromote, a linearizable
/// MemberList) may take: a change answers once joint consensus committed it.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a started member may take to answer on its client URL.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A control channel to `url` that connects on first use and gives up quickly.
pub fn channel(url: &str, timeout: Duration) -> anyhow::Result<Channel> {
    Ok(Endpoint::from_shared(url.to_string())?
        .connect_timeout(timeout)
        .timeout(timeout)
        .tcp_nodelay(true)
        .connect_lazy())
}

/// A channel for long-lived streams (watches, keep-alives) to `url`: it connects on first use
/// and gives up connecting after `connect_timeout`, but sets no per-call deadline, which would
/// end a stream that is meant to stay open. Its users detect a member that stopped answering
/// themselves.
pub fn stream_channel(url: &str, connect_timeout: Duration) -> anyhow::Result<Channel> {
    Ok(Endpoint::from_shared(url.to_string())?
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        .connect_lazy())
}

/// What a member reports about itself (Maintenance.Status).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemberStatus {
    /// The member's own id (from the response header).
    pub id: u64,
    /// The revision of its applied key-value state.
    pub revision: i64,
    pub applied_index: u64,
    pub leader: u64,
    pub term: u64,
}

/// One member as MemberList lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listed {
    pub id: u64,
    /// Empty until the member has started and published itself.
    pub name: String,
    pub peer_urls: Vec<String>,
    pub is_learner: bool,
}

impl From<pb::Member> for Listed {
    fn from(member: pb::Member) -> Listed {
        Listed {
            id: member.id,
            name: member.name,
            peer_urls: member.peer_ur_ls,
            is_learner: member.is_learner,
        }
    }
}

/// Where a member slot stands in the cluster's membership, as the harness last changed it.
/// Only the membership fault moves a slot away from [`Standing::Voter`]; it, or the next heal,
/// brings it back (see [`crate::membership`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Standing {
    /// A voting member with its data: restarted on it whenever it is down.
    Voter,
    /// Out of the cluster, or on the way out: its process is down and its data wiped, and its
    /// old id may still be listed (a lost member not yet removed). It comes back only by being
    /// added anew, so it must not be restarted before that.
    Out,
    /// Added as a learner under [`Member::id`], to be started with
    /// `--initial-cluster-state existing` and promoted.
    Learner,
}

/// One member of a chaos cluster: its process and the harness's control channels to it.
pub struct Member {
    /// The process, its addresses, data directory and log.
    pub process: rampart_launcher::Member,
    /// The Raft member id, from MemberList; a new one each time the slot is added again.
    pub id: u64,
    pub standing: Standing,
    /// Control channels to the client URL (Status, MemberList) and to the peer URL (the
    /// `Faults` service): one each for the whole run, reconnecting across restarts.
    client_channel: Channel,
    peer_channel: Channel,
    /// The client URL again, with the longer deadline of membership calls.
    admin_channel: Channel,
}

impl Member {
    pub fn state(&self) -> ProcessState {
        self.process.state()
    }

    pub async fn status(&self) -> anyhow::Result<MemberStatus> {
        status(&self.client_channel, &self.process.name).await
    }

    /// The Cluster service on this member, for membership calls.
    pub fn cluster_client(&self) -> ClusterClient<Channel> {
        ClusterClient::new(self.admin_channel.clone())
    }

    /// The members this member lists: with `linearizable`, as the leader confirms them (a
    /// learner refuses); else its own newest view.
    pub async fn member_list(&self, linearizable: bool) -> Result<Vec<Listed>, tonic::Status> {
        let channel = if linearizable {
            &self.admin_channel
        } else {
            &self.client_channel
        };
        let list = ClusterClient::new(channel.clone())
            .member_list(pb::MemberListRequest { linearizable })
            .await?
            .into_inner();
        Ok(list.members.into_iter().map(Listed::from).collect())
    }
}

/// What the member behind `channel` (named `name`) reports about itself.
async fn status(channel: &Channel, name: &str) -> anyhow::Result<MemberStatus> {
    let mut client = MaintenanceClient::new(channel.clone());
    let status = client
        .status(pb::StatusRequest {})
        .await
        .with_context(|| format!("Status of {name}"))?
        .into_inner();
    let header = status.header.context("Status without a header")?;
    Ok(MemberStatus {
        id: header.member_id,
        revision: header.revision,
        applied_index: status.raft_applied_index,
        leader: status.leader,
        term: status.raft_term,
    })
}

/// The probe of a serving member: it answers Status on its client URL.
async fn answers(channel: &Channel, name: &str) -> anyhow::Result<()> {
    status(channel, name).await.map(drop)
}

/// Each member's peer-link rules: the nemesis's network faults, in the terms of the `Faults`
/// service (each member's rules act on the calls it sends).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetworkRules {
    /// Per member index: member ids whose requests from it are lost.
    pub blocked: BTreeMap<usize, Vec<u64>>,
    /// Per member index: member ids whose replies to its calls are lost.
    pub replies_lost: BTreeMap<usize, Vec<u64>>,
    /// Per member index: (member id, millis) its requests to it wait.
    pub delayed: BTreeMap<usize, Vec<(u64, u64)>>,
}

impl NetworkRules {
    fn for_member(&self, index: usize) -> FaultRules {
        FaultRules {
            blocked: self.blocked.get(&index).cloned().unwrap_or_default(),
            replies_lost: self.replies_lost.get(&index).cloned().unwrap_or_default(),
            delayed: self
                .delayed
                .get(&index)
                .into_iter()
                .flatten()
                .map(|&(target, millis)| Delay { target, millis })
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.blocked.is_empty() && self.replies_lost.is_empty() && self.delayed.is_empty()
    }

    /// Cuts the link from member `from` to member `to` (indices) one way: `from`'s requests to
    /// `to` are lost. `to`'s requests to `from`, and their answers, still pass.
    pub fn cut(&mut self, ids: &[u64], from: usize, to: usize) {
        self.blocked.entry(from).or_default().push(ids[to]);
    }

    /// Loses `from`'s answers to `to`'s calls: `to`'s requests reach `from` and are carried
    /// out, but `to` never learns the outcome.
    pub fn lose_replies(&mut self, ids: &[u64], from: usize, to: usize) {
        self.replies_lost.entry(to).or_default().push(ids[from]);
    }

    /// Cuts every link between the two sides, both directions.
    pub fn split(&mut self, ids: &[u64], side_a: &[usize], side_b: &[usize]) {
        for &a in side_a {
            for &b in side_b {
                self.cut(ids, a, b);
                self.cut(ids, b, a);
            }
        }
    }

    /// Delays `from`'s requests to `to` by `millis`.
    pub fn delay(&mut self, ids: &[u64], from: usize, to: usize, millis: u64) {
        self.delayed
            .entry(from)
            .or_default()
            .push((ids[to], millis));
    }

    /// Sorts and deduplicates every member's rules (a delay set twice keeps the longer).
    pub fn normalize(&mut self) {
        for targets in self
            .blocked
            .values_mut()
            .chain(self.replies_lost.values_mut())
        {
            targets.sort_unstable();
            targets.dedup();
        }
        for delays in self.delayed.values_mut() {
            delays.sort_unstable_by_key(|&(target, millis)| (target, std::cmp::Reverse(millis)));
            delays.dedup_by_key(|&mut (target, _)| target);
        }
    }
}

/// A member that exited without being killed: a panic, or a refusal to start.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Crash {
    pub member: String,
    pub status: String,
    /// The end of its log.
    pub log_tail: String,
}

/// A member removed from the cluster that had not stopped by itself when the harness gave up
/// waiting and killed it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotStopped {
    pub member: String,
    /// The id it was removed under.
    pub id: u64,
    pub waited_ms: u64,
    /// The end of its log.
    pub log_tail: String,
}

/// Real `rampart` processes on loopback, each with its own data directory and log.
pub struct Cluster {
    pub members: Vec<Member>,
    pub dir: PathBuf,
    /// Every crash seen so far; each is a finding of the run.
    pub crashes: Vec<Crash>,
    /// Every removed member that did not stop by itself; each is a finding of the run.
    pub not_stopped: Vec<NotStopped>,
    /// What the members were made from: a member that joins again is made from it too.
    plan: Plan,
    binary: PathBuf,
}

impl Cluster {
    /// Starts `size` members under `dir` (data directories and logs) and waits until each
    /// answers and a leader is elected. With `crashfs`, each member's data directory is on a
    /// crash filesystem, so that [`Cluster::power_loss`] can drop what it did not fsync.
    pub async fn start(
        binary: &Path,
        size: usize,
        dir: &Path,
        crashfs: bool,
    ) -> anyhow::Result<Cluster> {
        rampart_launcher::retry_start(|attempt| async move {
            let attempt_dir = dir.join(format!("cluster-{attempt}"));
            Self::try_start(binary, size, &attempt_dir, crashfs)
                .await
                .inspect_err(|e| tracing::warn!("cluster start attempt {attempt} failed: {e:#}"))
        })
        .await
    }

    async fn try_start(
        binary: &Path,
        size: usize,
        dir: &Path,
        crashfs: bool,
    ) -> anyhow::Result<Cluster> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let plan = Plan {
            size,
            name_prefix: "n".into(),
            token: "rampart-chaos".into(),
            heartbeat_ms: HEARTBEAT_MS,
            election_ms: ELECTION_MS,
            data_dir_suffix: ".rampart".into(),
            extra_args: vec!["--experimental-peer-fault-injection".into()],
            rust_log: "info,openraft=warn,sled=warn".into(),
        };
        let processes = plan.members(binary, dir)?;
        let mut cluster = Cluster {
            members: Vec::new(),
            dir: dir.to_owned(),
            crashes: Vec::new(),
            not_stopped: Vec::new(),
            plan,
            binary: binary.to_owned(),
        };
        for mut process in processes {
            let client_channel = channel(&process.client_url, CONTROL_TIMEOUT)?;
            let peer_channel = channel(&process.peer_url, CONTROL_TIMEOUT)?;
            let admin_channel = channel(&process.client_url, ADMIN_TIMEOUT)?;
            if crashfs {
                process.use_crashfs()?;
            }
            process.spawn()?;
            cluster.members.push(Member {
                process,
                id: 0,
                standing: Standing::Voter,
                client_channel,
                peer_channel,
                admin_channel,
            });
        }
        for i in 0..size {
            cluster.wait_serving(i).await?;
        }
        cluster.learn_ids().await?;
        cluster.wait_for_leader(START_TIMEOUT).await?;
        Ok(cluster)
    }

    /// Takes each member's id from the MemberList, matching members by peer URL.
    async fn learn_ids(&mut self) -> anyhow::Result<()> {
        let list = self.members[0]
            .member_list(false)
            .await
            .context("MemberList")?;
        for member in &mut self.members {
            member.id = list
                .iter()
                .find(|m| m.peer_urls.contains(&member.process.peer_url))
                .with_context(|| format!("{} is not in the member list", member.process.name))?
                .id;
        }
        Ok(())
    }

    pub fn ids(&self) -> Vec<u64> {
        self.members.iter().map(|m| m.id).collect()
    }

    pub fn index_of(&self, id: u64) -> Option<usize> {
        self.members.iter().position(|m| m.id == id)
    }

    pub fn client_urls(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| m.process.client_url.clone())
            .collect()
    }

    /// Waits until member `index` answers Status on its client URL.
    pub async fn wait_serving(&mut self, index: usize) -> anyhow::Result<()> {
        self.serve(index, false).await
    }

    /// Waits until member `index` answers Status, first starting it again if `restart` (see
    /// [`rampart_launcher::Member::restart`]). An exit is recorded as [`Cluster::reap`] records
    /// it.
    async fn serve(&mut self, index: usize, restart: bool) -> anyhow::Result<()> {
        let Member {
            process,
            client_channel,
            ..
        } = &mut self.members[index];
        let name = process.name.clone();
        let probe = || answers(client_channel, &name);
        let answered = if restart {
            process.restart(START_TIMEOUT, probe).await
        } else {
            process.wait_answering(START_TIMEOUT, probe).await
        };
        match answered {
            Ok(()) => Ok(()),
            Err(NotAnswering::Exited(status)) => {
                self.record_exit(index, status);
                bail!("{name} exited while starting")
            }
            Err(NotAnswering::NotStarted(error)) => Err(error),
            Err(NotAnswering::TimedOut(error)) => {
                Err(error.context(format!("{name} did not serve within {START_TIMEOUT:?}")))
            }
        }
    }

    /// The members that vote and run, but `except`: the ones to send membership calls to.
    pub fn running_voters_except(&self, except: usize) -> Vec<usize> {
        (0..self.members.len())
            .filter(|&i| i != except)
            .filter(|&i| {
                let member = &self.members[i];
                member.standing == Standing::Voter && member.state() == ProcessState::Running
            })
            .collect()
    }

    /// Waits up to `timeout` for member `index`, just removed from the cluster, to stop by
    /// itself, as a removed member does. Its exit is not a crash if it exits with success; if it
    /// does not stop in time it is killed, and recorded in [`Cluster::not_stopped`] under
    /// `removed_id`. Returns whether it stopped by itself.
    pub async fn await_removed_exit(
        &mut self,
        index: usize,
        removed_id: u64,
        timeout: Duration,
    ) -> anyhow::Result<bool> {
        let started = Instant::now();
        let deadline = started + timeout;
        loop {
            if self.members[index].state() == ProcessState::Killed {
                // Killed before (a lost member): nothing to stop.
                return Ok(true);
            }
            if let Some(status) = self.members[index].process.exited() {
                if !status.success() {
                    self.record_exit(index, status);
                }
                return Ok(true);
            }
            if Instant::now() >= deadline {
                let process = &self.members[index].process;
                let not_stopped = NotStopped {
                    member: process.name.clone(),
                    id: removed_id,
                    waited_ms: started.elapsed().as_millis() as u64,
                    log_tail: process.log_tail(40),
                };
                tracing::error!(member = %not_stopped.member, "a removed member kept running");
                self.not_stopped.push(not_stopped);
                self.kill(index).await?;
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Makes member `index` a new member to be: kills its process if it still runs, deletes its
    /// data, and gives it the flags of a member joining the running cluster on the same
    /// addresses (`--initial-cluster-state existing`, every member's peer URL in
    /// `--initial-cluster`), on a crash filesystem if it was on one. It is [`Standing::Out`]
    /// until added again; its id stays the old one until then.
    pub fn make_new(&mut self, index: usize) -> anyhow::Result<()> {
        let initial_cluster = self
            .members
            .iter()
            .map(|m| format!("{}={}", m.process.name, m.process.peer_url))
            .collect::<Vec<_>>()
            .join(",");
        let member = &mut self.members[index];
        member.process.remove_data()?;
        let old = &member.process;
        let mut process = self.plan.joining_member(
            &self.binary,
            &self.dir,
            &old.name,
            (old.client_url.clone(), old.peer_url.clone()),
            &initial_cluster,
        );
        if old.on_crashfs() {
            process.use_crashfs()?;
        }
        member.process = process;
        member.standing = Standing::Out;
        Ok(())
    }

    /// Whether member `index` exited by itself; if so the crash is recorded (see
    /// [`Cluster::record_exit`]).
    fn reap(&mut self, index: usize) -> bool {
        match self.members[index].process.exited() {
            Some(status) => {
                self.record_exit(index, status);
                true
            }
            None => false,
        }
    }

    /// Records that member `index` exited by itself with `status`, as a crash, unless the
    /// process could not bind its port: the harness's problem, not Rampart's.
    fn record_exit(&mut self, index: usize, status: ExitStatus) {
        let member = &self.members[index].process;
        if member.lost_its_port() {
            tracing::warn!(member = %member.name, "member could not bind its port");
            return;
        }
        let crash = Crash {
            member: member.name.clone(),
            status: status.to_string(),
            log_tail: member.log_tail(40),
        };
        tracing::error!(member = %crash.member, status = %crash.status, "member crashed");
        self.crashes.push(crash);
    }

    /// Records every member that exited by itself since the last look.
    pub fn reap_crashed(&mut self) {
        for i in 0..self.members.len() {
            self.reap(i);
        }
    }

    /// The member that the running members name as leader in the highest term, if any.
    pub async fn leader(&self) -> Option<usize> {
        let mut best: Option<(u64, u64)> = None;
        for member in &self.members {
            if member.state() != ProcessState::Running {
                continue;
            }
            if let Ok(status) = member.status().await {
                if status.leader != 0 && best.is_none_or(|(term, _)| status.term > term) {
                    best = Some((status.term, status.leader));
                }
            }
        }
        best.and_then(|(_, leader)| self.index_of(leader))
    }

    /// The highest revision a running member reports.
    pub async fn revision(&self) -> anyhow::Result<i64> {
        let mut highest = None;
        for member in &self.members {
            if member.state() == ProcessState::Running {
                if let Ok(status) = member.status().await {
                    highest = highest.max(Some(status.revision));
                }
            }
        }
        highest.context("no member reported its revision")
    }

    /// Waits until some member names a leader.
    pub async fn wait_for_leader(&self, timeout: Duration) -> anyhow::Result<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(leader) = self.leader().await {
                return Ok(leader);
            }
            if Instant::now() >= deadline {
                bail!("no leader elected within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Kills member `index` with SIGKILL: no shutdown, no flush. A paused member dies too.
    pub async fn kill(&mut self, index: usize) -> anyhow::Result<()> {
        self.members[index].process.kill()
    }

    /// Cuts member `index`'s power: killed with SIGKILL, and every write it had not fsynced
    /// dropped (its data must be on a crash filesystem, see [`Cluster::start`]).
    pub async fn power_loss(&mut self, index: usize) -> anyhow::Result<()> {
        self.members[index].process.power_loss()
    }

    /// Starts member `index` again, on its old addresses and data, and waits until it serves.
    /// A start that fails because another process holds the member's port is tried again.
    pub async fn restart(&mut self, index: usize) -> anyhow::Result<()> {
        self.serve(index, true).await
    }

    /// Stops member `index` with SIGSTOP: it keeps its sockets but answers nothing.
    pub fn pause(&mut self, index: usize) -> anyhow::Result<()> {
        self.members[index].process.pause()
    }

    /// Lets a paused member run again (SIGCONT).
    pub fn resume(&mut self, index: usize) -> anyhow::Result<()> {
        self.members[index].process.resume()
    }

    /// Replaces member `index`'s peer-link rules.
    pub async fn set_rules(&self, index: usize, rules: &NetworkRules) -> anyhow::Result<()> {
        let member = &self.members[index];
        let mut client = FaultsClient::new(member.peer_channel.clone());
        client
            .set(rules.for_member(index))
            .await
            .with_context(|| format!("setting the fault rules of {}", member.process.name))?;
        Ok(())
    }

    /// Removes member `index`'s peer-link rules, retrying until `deadline` (a member that was
    /// just restarted may not listen yet; it starts without rules anyway).
    pub async fn heal_member(&self, index: usize, deadline: Instant) -> anyhow::Result<()> {
        let member = &self.members[index];
        loop {
            let mut client = FaultsClient::new(member.peer_channel.clone());
            match client.heal(HealRequest {}).await {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() >= deadline => {
                    return Err(e).with_context(|| format!("healing {}", member.process.name))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// Undoes every fault: resumes paused members, restarts killed ones, heals every link.
    /// Members out of the cluster are left to [`crate::membership::repair`]: they must be added
    /// before they start.
    pub async fn heal_everything(&mut self) -> anyhow::Result<()> {
        let mut errors = Vec::new();
        for i in 0..self.members.len() {
            if let Err(e) = self.resume(i) {
                errors.push(format!("{e:#}"));
            }
        }
        for i in 0..self.members.len() {
            let member = &self.members[i];
            if member.state() == ProcessState::Killed && member.standing != Standing::Out {
                if let Err(e) = self.restart(i).await {
                    errors.push(format!("{e:#}"));
                }
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for i in 0..self.members.len() {
            let member = &self.members[i];
            if member.standing != Standing::Voter && member.state() == ProcessState::Killed {
                // Not started yet: it starts without rules.
                continue;
            }
            if let Err(e) = self.heal_member(i, deadline).await {
                errors.push(format!("{e:#}"));
            }
        }
        if !errors.is_empty() {
            bail!("could not heal the cluster: {}", errors.join("; "));
        }
        Ok(())
    }

    /// Kills every member (they are dropped with the cluster too; this waits for them).
    pub async fn stop(&mut self) {
        for i in 0..self.members.len() {
            let _ = self.kill(i).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_one_way_cut_is_a_rule_at_the_sending_end() {
        let ids = [10, 20, 30];
        let mut rules = NetworkRules::default();
        rules.cut(&ids, 0, 1);
        assert_eq!(rules.blocked.get(&0), Some(&vec![20]));
        assert!(!rules.blocked.contains_key(&1));
        assert!(rules.replies_lost.is_empty());
        // Lost replies are a rule at the calling end.
        rules.lose_replies(&ids, 0, 1);
        assert_eq!(rules.replies_lost.get(&1), Some(&vec![10]));
    }

    #[test]
    fn a_split_cuts_both_ways_and_leaves_each_side_whole() {
        let ids = [10, 20, 30, 40, 50];
        let mut rules = NetworkRules::default();
        rules.split(&ids, &[0, 1], &[2, 3, 4]);
        rules.normalize();
        assert_eq!(rules.blocked[&0], vec![30, 40, 50]);
        assert_eq!(rules.blocked[&4], vec![10, 20]);
        assert!(rules.replies_lost.is_empty());
    }
}
