//! The membership fault: a member leaves the cluster through etcd's Cluster service and comes
//! back as a new member on the same client and peer URLs, so that the clients, which know the
//! cluster by a fixed list of endpoints, keep working.
//!
//! A round ([`cycle`]) takes one member (the leader half the time, as the nemesis draws it)
//! out in one of two ways ([`Change`]):
//! - **remove and re-add**: MemberRemove while it runs, retried while the leader answers
//!   "unhealthy cluster" (etcd's strict reconfiguration check wants every voter reachable for
//!   5 s); the member must then stop by itself, and its data is wiped;
//! - **replace a lost member**: kill -9 and its data wiped (a lost disk), then MemberRemove;
//!
//! and then brings it back ([`rejoin`]): MemberAdd as a learner on its old peer URL (under a
//! new id), a start with an empty data directory and `--initial-cluster-state existing`, and
//! MemberPromote, retried until the learner is in sync. Each step is a nemesis event
//! (`member-lost`, `member-remove`, `member-stopped`, `member-add-learner`, `member-start`,
//! `member-promote`) naming the member and its ids.
//!
//! Each step is decided on a linearizable MemberList, the cluster's word, not on what the
//! harness believes: a call whose answer was lost (a timeout, a leader change) may have taken
//! effect, and the next look shows whether it did. A round that cannot finish in time leaves
//! its member [`Standing::Out`] or [`Standing::Learner`]; the nemesis's next heal calls
//! [`repair`], which takes it the rest of the way, and so does the final heal. The member's
//! new id replaces the old one in [`crate::cluster::Member::id`], where the partitions' rules
//! and the leader's detection find it.
//!
//! At the end of a run every member must list the same members, all voters, one per member
//! slot ([`problems`]).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use rampart_api::etcdserverpb as pb;
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::cluster::{Cluster, Listed, ProcessState, Standing};
use crate::history::{NemesisEvent, NemesisLog};
use crate::workload::describe;

/// A lost member killed and its data wiped (the first step of a replacement).
pub const LOST: &str = "member-lost";
/// A MemberRemove that took effect.
pub const REMOVE: &str = "member-remove";
/// A removed member that stopped by itself.
pub const STOPPED: &str = "member-stopped";
/// A MemberAdd of a learner that took effect.
pub const ADD_LEARNER: &str = "member-add-learner";
/// A member added again, started with an empty data directory.
pub const START: &str = "member-start";
/// A MemberPromote that took effect.
pub const PROMOTE: &str = "member-promote";

/// How long a removal may take: etcd's strict check alone holds one back for 5 s after any
/// member was unreachable, and a new leader must be elected first when the leader was lost.
const REMOVE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a removed member may take to notice and stop: it asks every election timeout,
/// and shuts down in order.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// How long bringing a member back may take: the add, the start (a new member asks its peers
/// who the cluster is), the catching up (a snapshot), the promotion.
const REJOIN_TIMEOUT: Duration = Duration::from_secs(60);

/// The wait between two attempts of a call that was refused or failed.
const RETRY_WAIT: Duration = Duration::from_millis(250);

/// etcd's refusals of a change that change nothing and pass with time.
const UNHEALTHY: &str = "etcdserver: unhealthy cluster";
const NOT_ENOUGH_STARTED: &str =
    "etcdserver: re-configuration failed due to not enough started members";
const NOT_IN_SYNC: &str =
    "etcdserver: can only promote a learner member which is in sync with leader";

/// How a round takes its member out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// MemberRemove while it runs; it stops by itself; its data is wiped.
    RemoveAndReAdd,
    /// kill -9 and its data wiped, as if its disk were lost; then MemberRemove.
    ReplaceLost,
}

/// What the membership fault did in a run, counted from the nemesis's events.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipCounts {
    /// MemberRemoves that took effect, replacements' included.
    pub removes: usize,
    /// Of those, removals of lost members (killed, data wiped).
    pub replacements: usize,
    /// MemberAdds of learners that took effect.
    pub adds: usize,
    /// MemberPromotes that took effect.
    pub promotes: usize,
}

impl MembershipCounts {
    pub fn of(events: &[NemesisEvent]) -> MembershipCounts {
        let count = |action: &str| events.iter().filter(|e| e.action == action).count();
        MembershipCounts {
            removes: count(REMOVE),
            replacements: count(LOST),
            adds: count(ADD_LEARNER),
            promotes: count(PROMOTE),
        }
    }

    /// Membership changes made: removes, adds and promotes.
    pub fn changes(&self) -> usize {
        self.removes + self.adds + self.promotes
    }
}

/// One round: member `index` leaves the cluster as `change` says and comes back as a voter
/// under a new id. `leader` only names it so in the log. Failures are logged as `error`
/// events; a member left out is brought back by [`repair`].
pub async fn cycle(
    cluster: &mut Cluster,
    log: &mut NemesisLog,
    index: usize,
    change: Change,
    leader: bool,
) {
    let name = cluster.members[index].process.name.clone();
    let id = cluster.members[index].id;
    let role = if leader { " (leader)" } else { "" };
    match change {
        Change::RemoveAndReAdd => {
            log.record(
                "fault",
                format!("membership: remove {name}{role}, id {id:x}, and add it back"),
            );
            if let Err(e) = remove(cluster, log, index).await {
                log.record("error", format!("removing {name}: {e:#}; it stays a voter"));
                return;
            }
            match cluster.await_removed_exit(index, id, STOP_TIMEOUT).await {
                Ok(true) => log.record(
                    STOPPED,
                    format!("{name} (id {id:x}) stopped by itself after its removal"),
                ),
                Ok(false) => log.record(
                    "error",
                    format!("{name} (id {id:x}) kept running {STOP_TIMEOUT:?} after its removal"),
                ),
                Err(e) => log.record("error", format!("{e:#}")),
            }
            if let Err(e) = cluster.make_new(index) {
                log.record("error", format!("{e:#}"));
                return;
            }
        }
        Change::ReplaceLost => {
            log.record(
                "fault",
                format!("membership: replace {name}{role}, id {id:x}, as if its disk were lost"),
            );
            if let Err(e) = cluster
                .kill(index)
                .await
                .and_then(|()| cluster.make_new(index))
            {
                log.record("error", format!("{e:#}"));
                return;
            }
            log.record(
                LOST,
                format!("{name} (id {id:x}) killed -9 and its data directory wiped"),
            );
        }
    }
    if let Err(e) = rejoin(cluster, log, index).await {
        log.record(
            "error",
            format!("bringing {name} back: {e:#}; the next heal tries again"),
        );
    }
}

/// Brings every member that a round left out of the cluster back as a voter.
pub async fn repair(cluster: &mut Cluster, log: &mut NemesisLog) -> anyhow::Result<()> {
    let mut errors = Vec::new();
    for index in 0..cluster.members.len() {
        if cluster.members[index].standing == Standing::Voter {
            continue;
        }
        if let Err(e) = rejoin(cluster, log, index).await {
            let name = &cluster.members[index].process.name;
            errors.push(format!("bringing {name} back: {e:#}"));
        }
    }
    if !errors.is_empty() {
        bail!("{}", errors.join("; "));
    }
    Ok(())
}

/// Takes member `index` from [`Standing::Out`] (or on from [`Standing::Learner`]) to a
/// running voter: one step at a time (see [`step`]) until it is one, or [`REJOIN_TIMEOUT`].
pub async fn rejoin(
    cluster: &mut Cluster,
    log: &mut NemesisLog,
    index: usize,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + REJOIN_TIMEOUT;
    loop {
        match step(cluster, log, index).await {
            Ok(true) => return Ok(()),
            Ok(false) => continue,
            Err(e) if Instant::now() >= deadline => {
                return Err(e.context(format!("not a voter again within {REJOIN_TIMEOUT:?}")))
            }
            Err(e) => tracing::debug!("membership step: {e:#}"),
        }
        tokio::time::sleep(RETRY_WAIT).await;
    }
}

/// One step towards member `index` being a running voter, decided on the member list:
/// `Ok(true)` once it is one, `Ok(false)` after a step that took effect, an error for one
/// that did not (refused, failed, or not yet possible), to be tried again.
async fn step(cluster: &mut Cluster, log: &mut NemesisLog, index: usize) -> anyhow::Result<bool> {
    let list = member_list(cluster, index).await?;
    let member = &cluster.members[index];
    let name = member.process.name.clone();
    let listed = list
        .iter()
        .find(|m| m.peer_urls.contains(&member.process.peer_url))
        .cloned();
    match (member.standing, listed) {
        (Standing::Voter, _) => Ok(true),
        (Standing::Out, Some(old)) if old.id == member.id => {
            // Lost, and still a member under its old id: out first.
            try_remove(cluster, log, index, "").await.map(|()| false)
        }
        (Standing::Out, Some(added)) => {
            // An add whose answer was lost took effect.
            let member = &mut cluster.members[index];
            member.id = added.id;
            member.standing = Standing::Learner;
            log.record(
                ADD_LEARNER,
                format!(
                    "{name} added as a learner on {}, new id {:x} (its answer was lost; the \
                     member list has it)",
                    member.process.peer_url, added.id
                ),
            );
            Ok(false)
        }
        (Standing::Out, None) => {
            let via = any_voter(cluster, index)?;
            let peer_url = cluster.members[index].process.peer_url.clone();
            let added = cluster.members[via]
                .cluster_client()
                .member_add(pb::MemberAddRequest {
                    peer_ur_ls: vec![peer_url.clone()],
                    is_learner: true,
                })
                .await
                .map_err(|s| anyhow!("MemberAdd: {}", describe(&s)))?
                .into_inner()
                .member
                .context("MemberAdd answered without the member")?;
            let member = &mut cluster.members[index];
            let old_id = member.id;
            member.id = added.id;
            member.standing = Standing::Learner;
            log.record(
                ADD_LEARNER,
                format!(
                    "{name} added as a learner on {peer_url}, new id {:x} (was {old_id:x}), \
                     asked {}",
                    added.id, cluster.members[via].process.name
                ),
            );
            Ok(false)
        }
        (Standing::Learner, None) => {
            // Added, then gone from the list: nothing the harness does. Start over.
            cluster.make_new(index)?;
            bail!("{name} was added, and is no longer listed");
        }
        (Standing::Learner, Some(listed)) => {
            cluster.members[index].id = listed.id;
            if cluster.members[index].state() != ProcessState::Running {
                cluster.restart(index).await?;
                log.record(
                    START,
                    format!(
                        "{name} (id {:x}) started with --initial-cluster-state existing, \
                         serving",
                        listed.id
                    ),
                );
            }
            let how = if listed.is_learner {
                let via = any_voter(cluster, index)?;
                cluster.members[via]
                    .cluster_client()
                    .member_promote(pb::MemberPromoteRequest { id: listed.id })
                    .await
                    .map_err(|s| match s.message() {
                        NOT_IN_SYNC => anyhow!("{name} is not in sync with the leader yet"),
                        _ => anyhow!("MemberPromote: {}", describe(&s)),
                    })?;
                format!("asked {}", cluster.members[via].process.name)
            } else {
                "its answer was lost; the member list has it as a voter".to_string()
            };
            cluster.members[index].standing = Standing::Voter;
            log.record(
                PROMOTE,
                format!("{name} (id {:x}) promoted to voter ({how})", listed.id),
            );
            Ok(true)
        }
    }
}

/// Removes member `index`, a running voter, retrying until it is out or [`REMOVE_TIMEOUT`].
async fn remove(cluster: &Cluster, log: &mut NemesisLog, index: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + REMOVE_TIMEOUT;
    let mut failed = 0;
    let mut before = String::new();
    loop {
        match try_remove(cluster, log, index, &before).await {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(e) => {
                failed += 1;
                before = format!("; {failed} attempt(s) failed before, the last: {e:#}");
            }
        }
        tokio::time::sleep(RETRY_WAIT).await;
    }
}

/// One MemberRemove of member `index` under its current id, through a running voter. `Ok`
/// once the removal took effect (answered, or the member list no longer has the id); an error
/// if it did not yet (refused, or still listed), to be tried again. `before` ends the event's
/// detail: what came of the attempts before this one.
async fn try_remove(
    cluster: &Cluster,
    log: &mut NemesisLog,
    index: usize,
    before: &str,
) -> anyhow::Result<()> {
    let member = &cluster.members[index];
    let (name, id) = (&member.process.name, member.id);
    let via = any_voter(cluster, index)?;
    let asked = &cluster.members[via].process.name;
    let status = match cluster.members[via]
        .cluster_client()
        .member_remove(pb::MemberRemoveRequest { id })
        .await
    {
        Ok(_) => {
            log.record(
                REMOVE,
                format!("{name} (id {id:x}) removed, asked {asked}{before}"),
            );
            return Ok(());
        }
        Err(status) => status,
    };
    if matches!(status.message(), UNHEALTHY | NOT_ENOUGH_STARTED) {
        // Refused before anything changed.
        bail!("MemberRemove refused: {}", status.message());
    }
    // The removal may have taken effect all the same ("member not found" for one that did
    // earlier, a timeout or a leader change for one that may have now): the list says.
    let list = member_list(cluster, index).await?;
    if list.iter().any(|m| m.id == id) {
        bail!("MemberRemove: {}", describe(&status));
    }
    log.record(
        REMOVE,
        format!(
            "{name} (id {id:x}) removed, asked {asked} (answered {}; the member list no \
             longer has it){before}",
            status.message()
        ),
    );
    Ok(())
}

/// A running voter other than `except` to send a membership call to, a different one from
/// call to call where there are several.
fn any_voter(cluster: &Cluster, except: usize) -> anyhow::Result<usize> {
    let voters = cluster.running_voters_except(except);
    anyhow::ensure!(!voters.is_empty(), "no running voter to ask");
    Ok(voters[rand::thread_rng().gen_range(0..voters.len())])
}

/// The members as a linearizable MemberList on a running voter other than `except` lists
/// them: the first of them to answer.
async fn member_list(cluster: &Cluster, except: usize) -> anyhow::Result<Vec<Listed>> {
    let mut errors = Vec::new();
    for via in cluster.running_voters_except(except) {
        match cluster.members[via].member_list(true).await {
            Ok(list) => return Ok(list),
            Err(status) => errors.push(format!(
                "{}: {}",
                cluster.members[via].process.name,
                describe(&status)
            )),
        }
    }
    bail!("no member listed the members: {}", errors.join("; "))
}

/// What is wrong with the member lists at the end of a run, by member name: each must list
/// the same members, every one a voter, one on each of `peer_urls` (the cluster's member
/// slots) and no other. Empty when nothing is.
pub fn problems(lists: &BTreeMap<String, Vec<Listed>>, peer_urls: &[String]) -> Vec<String> {
    // What identifies a member in a list; a name is filled in only once it has started.
    let key = |m: &Listed| {
        let mut urls = m.peer_urls.clone();
        urls.sort();
        (m.id, urls, m.is_learner)
    };
    let mut problems = Vec::new();
    let mut seen: Option<(&String, BTreeSet<_>)> = None;
    for (name, list) in lists {
        let members: BTreeSet<_> = list.iter().map(key).collect();
        if let Some((first, theirs)) = &seen {
            if *theirs != members {
                problems.push(format!("{name} lists other members than {first}"));
            }
        } else {
            seen = Some((name, members));
        }
        let learners: Vec<String> = list
            .iter()
            .filter(|m| m.is_learner)
            .map(|m| format!("{:x}", m.id))
            .collect();
        if !learners.is_empty() {
            problems.push(format!("{name} lists learners {}", learners.join(", ")));
        }
        if list.len() != peer_urls.len() {
            problems.push(format!(
                "{name} lists {} members, not {}",
                list.len(),
                peer_urls.len()
            ));
        }
        for url in peer_urls {
            if !list.iter().any(|m| m.peer_urls.contains(url)) {
                problems.push(format!("{name} lists no member on {url}"));
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(id: u64, url: &str, is_learner: bool) -> Listed {
        Listed {
            id,
            name: format!("m{id}"),
            peer_urls: vec![url.to_string()],
            is_learner,
        }
    }

    #[test]
    fn members_that_agree_on_their_voters_have_no_problem() {
        let urls = ["a".to_string(), "b".to_string(), "c".to_string()];
        let voters = vec![
            listed(1, "a", false),
            listed(2, "b", false),
            listed(3, "c", false),
        ];
        let mut unnamed = voters.clone();
        // A member that has not yet learned a name still lists the same member.
        unnamed[2].name.clear();
        let lists = BTreeMap::from([
            ("n0".to_string(), voters.clone()),
            ("n1".to_string(), voters),
            ("n2".to_string(), unnamed),
        ]);
        assert_eq!(problems(&lists, &urls), Vec::<String>::new());
    }

    #[test]
    fn learners_missing_members_and_disagreement_are_problems() {
        let urls = ["a".to_string(), "b".to_string(), "c".to_string()];
        let voters = vec![
            listed(1, "a", false),
            listed(2, "b", false),
            listed(3, "c", false),
        ];
        let with_learner = vec![
            listed(1, "a", false),
            listed(2, "b", false),
            listed(4, "c", true),
        ];
        let lists = BTreeMap::from([
            ("n0".to_string(), voters.clone()),
            ("n1".to_string(), with_learner),
            ("n2".to_string(), voters[..2].to_vec()),
        ]);
        assert_eq!(
            problems(&lists, &urls),
            [
                "n1 lists other members than n0",
                "n1 lists learners 4",
                "n2 lists other members than n0",
                "n2 lists 2 members, not 3",
                "n2 lists no member on c",
            ]
        );
    }

    #[test]
    fn changes_are_counted_from_the_nemesis_events() {
        let event = |action: &str| NemesisEvent {
            at: 0,
            action: action.to_string(),
            detail: String::new(),
        };
        let events = [
            event("fault"),
            event(LOST),
            event(REMOVE),
            event(ADD_LEARNER),
            event(START),
            event(PROMOTE),
            event("heal"),
            event("fault"),
            event(REMOVE),
            event(STOPPED),
            event(ADD_LEARNER),
        ];
        let counts = MembershipCounts::of(&events);
        assert_eq!(
            counts,
            MembershipCounts {
                removes: 2,
                replacements: 1,
                adds: 2,
                promotes: 1,
            }
        );
        assert_eq!(counts.changes(), 5);
    }
}
