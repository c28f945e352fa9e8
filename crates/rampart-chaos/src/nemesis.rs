//! The nemesis: faults on a random schedule drawn from the run's seed.
//!
//! The run alternates quiet spells (1-3 s) with fault rounds. A round injects one fault, or
//! several at once (two in ~30% of rounds, three in ~10%), holds them 2-7 s, then heals
//! everything: paused members resume, killed ones (by kill -9 or a power loss) restart, every
//! link delivers again, a member the membership fault left out of the cluster is added back. A
//! round that restarts the whole cluster runs alone, and so does a membership round
//! ([`crate::membership`]): a member removed (or lost and replaced) and added back as a new
//! member, all while the other members run and every link delivers.
//!
//! A power loss kills members and drops every write they had not fsynced: their data
//! directories are on crash filesystems (`rampart-crashfs`), which the cluster mounts only when
//! `power-loss` is among the faults. A plain kill -9 loses nothing written: the page cache
//! keeps it. The same seed gives the same schedule of kinds,
//! variants and timings; which member is hit when the plan says "the leader" depends on the run.
//!
//! Network faults are peer-link rules set on the members (see [`NetworkRules`]); a member's
//! rules act on the calls it sends (Raft messages, forwarded writes, read-index and lease
//! requests). A symmetric partition A | B has every member of A drop its requests to every
//! member of B and the other way round. In a one-way cut a -> b, a drops its requests to b: b
//! hears nothing a initiates (heartbeats, appends, votes, forwards), while b's own requests
//! still reach a and a's answers to them still come back. Losing those answers is a fault of
//! its own, `lost-replies`: b's requests reach a and are carried out, but b never learns the
//! outcome.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::cluster::{Cluster, NetworkRules, ProcessState};
use crate::history::{Clock, NemesisEvent, NemesisLog};
use crate::membership::{self, Change};

/// The share of rounds that are membership rounds when there are other kinds to choose from:
/// one takes 5-15 s, several ordinary rounds' time.
const MEMBERSHIP_SHARE: f64 = 0.3;

/// The kinds of fault, as named by `--faults`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum FaultKind {
    /// kill -9 of the leader or of followers; restarted when the round heals.
    Kill,
    /// SIGSTOP of the leader or of followers; SIGCONT when the round heals.
    Pause,
    /// Network partitions: majority/minority, the leader isolated, a bridge, one-way cuts.
    Partition,
    /// Delays on peer links.
    Delay,
    /// kill -9 of every member, then all restarted.
    RestartAll,
    /// Lost answers: a member's requests to another are carried out but their replies never
    /// come back (to the leader's forwards and read-index calls, or from followers' appends).
    LostReplies,
    /// Power cut to one member, a minority, or the whole cluster: killed, and every write not
    /// fsynced dropped; restarted when the round heals. Needs FUSE (crash filesystems).
    PowerLoss,
    /// A member (the leader half the time) removed, or killed with its data lost and removed,
    /// then added back on the same URLs as a learner with an empty data directory and promoted
    /// (see [`crate::membership`]).
    Membership,
}

impl FaultKind {
    /// The faults a run injects unless told otherwise: all but the last two, the power loss,
    /// which needs FUSE and puts the members' data on crash filesystems, and the membership
    /// changes, asked for by name so that default runs, and the schedules of their seeds, stay
    /// what they were.
    pub const DEFAULT: &'static [FaultKind] = FaultKind::ALL.split_at(FaultKind::ALL.len() - 2).0;

    /// Every kind of fault (`--faults all`), the default ones first.
    pub const ALL: &'static [FaultKind] = &[
        FaultKind::Kill,
        FaultKind::Pause,
        FaultKind::Partition,
        FaultKind::Delay,
        FaultKind::RestartAll,
        FaultKind::LostReplies,
        FaultKind::PowerLoss,
        FaultKind::Membership,
    ];

    /// Whether the fault is made of peer-link rules.
    fn is_network(self) -> bool {
        matches!(
            self,
            FaultKind::Partition | FaultKind::Delay | FaultKind::LostReplies
        )
    }

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Kill => "kill",
            FaultKind::Pause => "pause",
            FaultKind::Partition => "partition",
            FaultKind::Delay => "delay",
            FaultKind::RestartAll => "restart-all",
            FaultKind::LostReplies => "lost-replies",
            FaultKind::PowerLoss => "power-loss",
            FaultKind::Membership => "membership",
        }
    }

    /// Parses a comma-separated list such as `kill,partition`; `none` is the empty list,
    /// `default` the default kinds, `all` every kind.
    pub fn parse_list(text: &str) -> Result<Vec<FaultKind>, String> {
        let mut kinds = BTreeSet::new();
        for name in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            match name {
                "none" => {}
                "default" => kinds.extend(FaultKind::DEFAULT),
                "all" => kinds.extend(FaultKind::ALL),
                _ => {
                    kinds.insert(name.parse()?);
                }
            }
        }
        Ok(kinds.into_iter().collect())
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for FaultKind {
    type Err = String;

    fn from_str(s: &str) -> Result<FaultKind, String> {
        FaultKind::ALL
            .iter()
            .copied()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                format!(
                    "unknown fault {s:?}: expected kill, pause, partition, delay, restart-all, \
                     lost-replies, power-loss, membership, or default, all, none"
                )
            })
    }
}

/// Runs the schedule from `seed` against `cluster` until `deadline`, then heals everything.
/// Returns what it did. Errors of the harness itself (a signal that could not be sent) are
/// recorded as events, not raised: the run goes on, and the checkers judge the outcome.
pub async fn run(
    cluster: &mut Cluster,
    kinds: &[FaultKind],
    seed: u64,
    clock: Clock,
    deadline: Instant,
) -> Vec<NemesisEvent> {
    let mut nemesis = Nemesis {
        rng: StdRng::seed_from_u64(seed),
        kinds: kinds.to_vec(),
        log: NemesisLog::new(clock),
    };
    if !kinds.is_empty() {
        nemesis.schedule(cluster, deadline).await;
    }
    nemesis.heal(cluster, "final heal").await;
    nemesis.log.events
}

struct Nemesis {
    rng: StdRng,
    kinds: Vec<FaultKind>,
    log: NemesisLog,
}

impl Nemesis {
    fn event(&mut self, action: &str, detail: String) {
        self.log.record(action, detail);
    }

    async fn schedule(&mut self, cluster: &mut Cluster, deadline: Instant) {
        loop {
            let quiet = Duration::from_millis(self.rng.gen_range(1000..3000));
            tokio::time::sleep_until((Instant::now() + quiet).min(deadline)).await;
            let hold = Duration::from_millis(self.rng.gen_range(2000..7000));
            let end = (Instant::now() + hold).min(deadline);
            if end.saturating_duration_since(Instant::now()) < Duration::from_millis(500) {
                return;
            }
            let round = self.choose_round();
            self.inject(cluster, &round, end).await;
            tokio::time::sleep_until(end).await;
            self.heal(cluster, "healed").await;
        }
    }

    /// The kinds of this round: the whole-cluster restart alone, or a membership round alone,
    /// else one to three others.
    fn choose_round(&mut self) -> Vec<FaultKind> {
        let alone = [FaultKind::RestartAll, FaultKind::Membership];
        let others: Vec<FaultKind> = self
            .kinds
            .iter()
            .copied()
            .filter(|k| !alone.contains(k))
            .collect();
        let restart_all = self.kinds.contains(&FaultKind::RestartAll);
        let membership = self.kinds.contains(&FaultKind::Membership);
        // Without membership rounds, the draws are those of the runs before there were any, so
        // that their seeds replay the same schedules.
        if restart_all && ((others.is_empty() && !membership) || self.rng.gen_bool(0.12)) {
            return vec![FaultKind::RestartAll];
        }
        if membership && (others.is_empty() || self.rng.gen_bool(MEMBERSHIP_SHARE)) {
            return vec![FaultKind::Membership];
        }
        let roll: f64 = self.rng.gen();
        let count = if roll < 0.1 {
            3
        } else if roll < 0.4 {
            2
        } else {
            1
        };
        let mut chosen: Vec<FaultKind> = others
            .choose_multiple(&mut self.rng, count.min(others.len()))
            .copied()
            .collect();
        // Network rules first, while every member is up to receive them.
        chosen.sort();
        chosen.sort_by_key(|k| !k.is_network());
        chosen
    }

    async fn inject(&mut self, cluster: &mut Cluster, round: &[FaultKind], end: Instant) {
        let leader = cluster.leader().await;
        let mut rules = NetworkRules::default();
        let mut details = Vec::new();
        for &kind in round {
            match kind {
                FaultKind::Partition => details.push(self.partition(cluster, leader, &mut rules)),
                FaultKind::Delay => details.push(self.delay(cluster, leader, &mut rules)),
                FaultKind::LostReplies => {
                    details.push(self.lost_replies(cluster, leader, &mut rules))
                }
                _ => {}
            }
        }
        if !rules.is_empty() {
            rules.normalize();
            for i in 0..cluster.members.len() {
                if let Err(e) = cluster.set_rules(i, &rules).await {
                    self.event("error", format!("{e:#}"));
                }
            }
        }
        for &kind in round {
            match kind {
                FaultKind::Kill | FaultKind::Pause => {
                    let detail = self.stop_some(cluster, leader, kind).await;
                    details.push(detail);
                }
                FaultKind::PowerLoss => {
                    let detail = self.cut_power(cluster, leader).await;
                    details.push(detail);
                }
                FaultKind::RestartAll => {
                    let down = Duration::from_millis(self.rng.gen_range(200..2000));
                    self.event(
                        "fault",
                        format!("restart-all: every member killed for {down:?}"),
                    );
                    for i in 0..cluster.members.len() {
                        if let Err(e) = cluster.kill(i).await {
                            self.event("error", format!("{e:#}"));
                        }
                    }
                    tokio::time::sleep(down.min(end.saturating_duration_since(Instant::now())))
                        .await;
                    // Restarted right away rather than when the round ends.
                    self.heal(cluster, "restarted").await;
                    continue;
                }
                FaultKind::Membership => {
                    let n = cluster.members.len();
                    let target = match leader {
                        Some(leader) if self.rng.gen_bool(0.5) => leader,
                        _ => self.rng.gen_range(0..n),
                    };
                    let change = if self.rng.gen_bool(0.5) {
                        Change::RemoveAndReAdd
                    } else {
                        Change::ReplaceLost
                    };
                    let is_leader = leader == Some(target);
                    membership::cycle(cluster, &mut self.log, target, change, is_leader).await;
                    continue;
                }
                _ => {}
            }
        }
        if !details.is_empty() {
            self.event("fault", details.join("; "));
        }
    }

    /// Kills or pauses the leader (half the time) or followers: one member, or on clusters of
    /// five sometimes two.
    async fn stop_some(
        &mut self,
        cluster: &mut Cluster,
        leader: Option<usize>,
        kind: FaultKind,
    ) -> String {
        let running: Vec<usize> = (0..cluster.members.len())
            .filter(|&i| cluster.members[i].state() == ProcessState::Running)
            .collect();
        let count = if cluster.members.len() >= 5 && self.rng.gen_bool(0.3) {
            2
        } else {
            1
        };
        let mut targets = Vec::new();
        if let Some(leader) = leader.filter(|l| running.contains(l)) {
            if self.rng.gen_bool(0.5) {
                targets.push(leader);
            }
        }
        let mut rest: Vec<usize> = running
            .iter()
            .copied()
            .filter(|i| !targets.contains(i))
            .collect();
        rest.shuffle(&mut self.rng);
        targets.extend(rest.into_iter().take(count - targets.len().min(count)));
        let mut names = Vec::new();
        for &i in &targets {
            let name = cluster.members[i].process.name.clone();
            let role = if Some(i) == leader { " (leader)" } else { "" };
            let result = match kind {
                FaultKind::Kill => cluster.kill(i).await,
                _ => cluster.pause(i),
            };
            match result {
                Ok(()) => names.push(format!("{name}{role}")),
                Err(e) => self.event("error", format!("{e:#}")),
            }
        }
        let verb = if kind == FaultKind::Kill {
            "kill -9"
        } else {
            "SIGSTOP"
        };
        format!("{verb} {}", names.join(", "))
    }

    /// Cuts the power of one member (the leader half the time), a minority, or the whole
    /// cluster (a third of the time each): each is killed and loses what it had not fsynced,
    /// members killed earlier in the round included. They restart when the round heals.
    async fn cut_power(&mut self, cluster: &mut Cluster, leader: Option<usize>) -> String {
        let n = cluster.members.len();
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut self.rng);
        let (scope, count) = match self.rng.gen_range(0..3) {
            0 => ("one member", 1),
            1 => ("a minority", self.rng.gen_range(1..=(n - 1) / 2)),
            _ => ("the whole cluster", n),
        };
        if let Some(leader) = leader.filter(|_| count < n && self.rng.gen_bool(0.5)) {
            order.retain(|&i| i != leader);
            order.insert(0, leader);
        }
        let mut names = Vec::new();
        for &i in &order[..count] {
            let process = &cluster.members[i].process;
            let lost = process.unsynced_bytes();
            let role = if Some(i) == leader { " (leader)" } else { "" };
            let name = format!("{}{role}", process.name);
            match cluster.power_loss(i).await {
                Ok(()) => names.push(format!("{name}, ~{lost} bytes not fsynced")),
                Err(e) => self.event("error", format!("{e:#}")),
            }
        }
        format!("power loss of {scope}: {}", names.join("; "))
    }

    /// One network partition, chosen among: majority/minority, the leader isolated, a bridge
    /// (two halves that only a middle member reaches), a one-way cut.
    fn partition(
        &mut self,
        cluster: &Cluster,
        leader: Option<usize>,
        rules: &mut NetworkRules,
    ) -> String {
        let ids = cluster.ids();
        let n = ids.len();
        let name = |i: usize| cluster.members[i].process.name.clone();
        let names = |set: &[usize]| set.iter().map(|&i| name(i)).collect::<Vec<_>>().join(",");
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut self.rng);
        let leader = leader.unwrap_or(order[0]);
        match self.rng.gen_range(0..4) {
            0 => {
                let minority = self.rng.gen_range(1..=(n - 1) / 2);
                let (a, b) = order.split_at(minority);
                rules.split(&ids, a, b);
                format!("partition minority {} | majority {}", names(a), names(b))
            }
            1 => {
                let rest: Vec<usize> = (0..n).filter(|&i| i != leader).collect();
                rules.split(&ids, &[leader], &rest);
                format!(
                    "partition isolating leader {} | {}",
                    name(leader),
                    names(&rest)
                )
            }
            2 => {
                let bridge = order[0];
                let (a, b) = order[1..].split_at((n - 1) / 2);
                rules.split(&ids, a, b);
                format!(
                    "partition bridge: {} | {} joined only through {}",
                    names(a),
                    names(b),
                    name(bridge)
                )
            }
            _ => {
                let from = if self.rng.gen_bool(0.5) {
                    leader
                } else {
                    order[0]
                };
                let to: Vec<usize> = if self.rng.gen_bool(0.5) {
                    (0..n).filter(|&i| i != from).collect()
                } else {
                    vec![*order.iter().find(|&&i| i != from).expect("n >= 2")]
                };
                for &t in &to {
                    rules.cut(&ids, from, t);
                }
                format!("one-way cut {} -> {}", name(from), names(&to))
            }
        }
    }

    /// Lost replies: the leader's answers to one or every follower (their forwarded writes and
    /// read-index calls are carried out, unanswered), or one or every follower's answers to the
    /// leader (its appends and heartbeats land, unacknowledged).
    fn lost_replies(
        &mut self,
        cluster: &Cluster,
        leader: Option<usize>,
        rules: &mut NetworkRules,
    ) -> String {
        let ids = cluster.ids();
        let n = ids.len();
        let leader = leader.unwrap_or_else(|| self.rng.gen_range(0..n));
        let mut followers: Vec<usize> = (0..n).filter(|&i| i != leader).collect();
        followers.shuffle(&mut self.rng);
        if !self.rng.gen_bool(0.5) {
            followers.truncate(1);
        }
        let name = |i: usize| cluster.members[i].process.name.clone();
        let names = followers
            .iter()
            .map(|&i| name(i))
            .collect::<Vec<_>>()
            .join(",");
        if self.rng.gen_bool(0.5) {
            for &f in &followers {
                rules.lose_replies(&ids, leader, f);
            }
            format!("lost replies from leader {} to {names}", name(leader))
        } else {
            for &f in &followers {
                rules.lose_replies(&ids, f, leader);
            }
            format!("lost replies from {names} to leader {}", name(leader))
        }
    }

    /// Delays on peer links: every link of one member (the leader half the time), or random
    /// links; from a few milliseconds to more than an election timeout.
    fn delay(
        &mut self,
        cluster: &Cluster,
        leader: Option<usize>,
        rules: &mut NetworkRules,
    ) -> String {
        let ids = cluster.ids();
        let n = ids.len();
        let millis = *[10u64, 50, 200, 500, 1500]
            .choose(&mut self.rng)
            .expect("not empty");
        if self.rng.gen_bool(0.5) {
            let node = match leader {
                Some(l) if self.rng.gen_bool(0.5) => l,
                _ => self.rng.gen_range(0..n),
            };
            for other in (0..n).filter(|&o| o != node) {
                rules.delay(&ids, node, other, millis);
                rules.delay(&ids, other, node, millis);
            }
            format!(
                "delay {millis} ms on every link of {}",
                cluster.members[node].process.name
            )
        } else {
            let mut links = Vec::new();
            for from in 0..n {
                for to in (0..n).filter(|&t| t != from) {
                    if self.rng.gen_bool(0.4) {
                        let ms = self.rng.gen_range(1..=millis);
                        rules.delay(&ids, from, to, ms);
                        links.push(format!(
                            "{}->{} {ms} ms",
                            cluster.members[from].process.name, cluster.members[to].process.name
                        ));
                    }
                }
            }
            format!("delay on links {}", links.join(", "))
        }
    }

    async fn heal(&mut self, cluster: &mut Cluster, what: &str) {
        let healed = cluster.heal_everything().await;
        // Whatever the heal could not undo, members left out come back as voters.
        let repaired = membership::repair(cluster, &mut self.log).await;
        let result = match (healed, repaired) {
            (Ok(()), Ok(())) => Ok(()),
            (Err(e), Ok(())) | (Ok(()), Err(e)) => Err(e),
            (Err(healing), Err(repairing)) => Err(healing.context(format!("{repairing:#}"))),
        };
        let crashes = cluster.crashes.len();
        cluster.reap_crashed();
        for crash in cluster.crashes[crashes..].iter().cloned() {
            self.event(
                "crash",
                format!("{} exited: {}", crash.member, crash.status),
            );
        }
        match result {
            Ok(()) => self.event(
                "heal",
                format!("{what}: all members running, every link healed"),
            ),
            Err(e) => self.event("error", format!("{e:#}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_lists_parse() {
        assert_eq!(
            FaultKind::parse_list("partition,kill,partition").unwrap(),
            vec![FaultKind::Kill, FaultKind::Partition]
        );
        assert_eq!(FaultKind::parse_list("none").unwrap(), vec![]);
        assert!(FaultKind::parse_list("kill,flood").is_err());
        assert_eq!(
            FaultKind::parse_list("default").unwrap(),
            FaultKind::DEFAULT.to_vec()
        );
        assert_eq!(
            FaultKind::parse_list("all").unwrap(),
            FaultKind::ALL.to_vec()
        );
        assert!(!FaultKind::DEFAULT.contains(&FaultKind::Membership));
        assert!(!FaultKind::DEFAULT.contains(&FaultKind::PowerLoss));
        assert_eq!(
            FaultKind::parse_list("default,membership").unwrap().len(),
            FaultKind::DEFAULT.len() + 1
        );
    }

    #[test]
    fn membership_rounds_run_alone_and_only_when_asked_for() {
        let rounds = |kinds: &[FaultKind], seed| {
            let mut nemesis = Nemesis {
                rng: StdRng::seed_from_u64(seed),
                kinds: kinds.to_vec(),
                log: NemesisLog::new(Clock::start()),
            };
            (0..50).map(|_| nemesis.choose_round()).collect::<Vec<_>>()
        };
        let only = rounds(&[FaultKind::Membership], 1);
        assert!(only.iter().all(|r| r == &[FaultKind::Membership]));
        let mixed = rounds(
            &[FaultKind::Kill, FaultKind::Partition, FaultKind::Membership],
            1,
        );
        let with_membership: Vec<_> = mixed
            .iter()
            .filter(|r| r.contains(&FaultKind::Membership))
            .collect();
        assert!(!with_membership.is_empty() && with_membership.len() < mixed.len());
        assert!(with_membership.iter().all(|r| r.len() == 1), "{mixed:?}");
        let both_alone = rounds(&[FaultKind::RestartAll, FaultKind::Membership], 1);
        assert!(both_alone.iter().all(|r| r.len() == 1));
        assert!(both_alone.contains(&vec![FaultKind::RestartAll]));
        assert!(both_alone.contains(&vec![FaultKind::Membership]));
        assert!(rounds(FaultKind::DEFAULT, 1)
            .iter()
            .all(|r| !r.contains(&FaultKind::Membership)));
    }

    #[test]
    fn the_schedule_is_a_function_of_the_seed() {
        let rounds = |seed| {
            let mut nemesis = Nemesis {
                rng: StdRng::seed_from_u64(seed),
                kinds: FaultKind::ALL.to_vec(),
                log: NemesisLog::new(Clock::start()),
            };
            (0..20).map(|_| nemesis.choose_round()).collect::<Vec<_>>()
        };
        assert_eq!(rounds(7), rounds(7));
        assert_ne!(rounds(7), rounds(8));
        assert!(
            rounds(7).iter().any(|r| r.len() > 1),
            "several faults at once"
        );
    }
}
