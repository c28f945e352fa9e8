//! Compatibility with the `etcd-client` crate, a real etcd v3 client, against a 3-member
//! in-process cluster.
//!
//! Each test talks to the cluster through a client that balances over all three client URLs and
//! through one client per member, so requests land on followers as well as on the leader: a
//! follower forwards writes to the leader and answers linearizable reads through a read index,
//! and both paths must give what etcd gives, errors included (code and exact message).
//!
//! - [`reads`]: puts and gets through every member, Range's options, linearizable reads of
//!   writes made through a follower.
//! - [`writes`]: Put's `prev_kv` and `ignore_value`, DeleteRange by key and prefix, one revision
//!   per write request.
//! - [`txn`]: Txn's compares choosing a branch, and nested txns.
//! - [`history`]: reads at past revisions, compaction and its refusals.
//! - [`errors`]: invalid requests get etcd's codes and messages and change nothing.
//! - [`members`]: MemberList and Status through every member.
//!
//! This module holds what they share: the [`Fixture`] and helpers to read responses.

mod errors;
mod history;
mod members;
mod reads;
mod txn;
mod writes;

use std::time::Duration;

use anyhow::Context;
use etcd_client::{Client, GetResponse};
use rampart_tests::{wait_until, TestCluster};

use crate::common::connect;

const LEADER_WAIT: Duration = Duration::from_secs(20);
/// How long members may take to publish their client URLs after start.
const PUBLISH_WAIT: Duration = Duration::from_secs(20);

/// A started 3-member cluster with one client per member and one over all members (also used by
/// the [`crate::lock`] and [`crate::election`] tests).
pub(crate) struct Fixture {
    pub(crate) cluster: TestCluster,
    /// Balances over every member's client URL.
    pub(crate) all: Client,
    /// `members[i]` talks to member `i` only.
    pub(crate) members: Vec<Client>,
    /// The index of the leader when the fixture was made.
    pub(crate) leader: usize,
}

impl Fixture {
    /// Starts the cluster and waits until it has a leader and every member has published its
    /// client URLs (publishing goes through Raft; waiting keeps it out of the tests' way).
    pub(crate) async fn start() -> anyhow::Result<Fixture> {
        let cluster = TestCluster::start(3).await?;
        let leader = cluster.wait_for_leader(LEADER_WAIT).await?;
        let leader = cluster.index_of(leader);
        let urls = cluster.client_urls();
        let all = connect(&urls).await?;
        let mut members = Vec::new();
        for url in &urls {
            members.push(connect(std::slice::from_ref(url)).await?);
        }
        let fixture = Fixture {
            cluster,
            all,
            members,
            leader,
        };
        fixture.wait_published().await?;
        Ok(fixture)
    }

    /// The indexes of the members that were followers when the fixture was made.
    pub(crate) fn followers(&self) -> Vec<usize> {
        (0..3).filter(|&i| i != self.leader).collect()
    }

    fn cluster_id(&self) -> u64 {
        self.cluster.members[0]
            .running
            .as_ref()
            .expect("member 0 runs")
            .node
            .config()
            .cluster_id
    }

    /// Waits until every member lists all three members with their client URLs.
    async fn wait_published(&self) -> anyhow::Result<()> {
        for (i, client) in self.members.iter().enumerate() {
            wait_until(
                &format!("member {i} to list every member's client URLs"),
                PUBLISH_WAIT,
                || {
                    let mut client = client.clone();
                    async move {
                        let list = client.member_list().await?;
                        let complete = list.members().len() == 3
                            && list.members().iter().all(|m| !m.client_urls().is_empty());
                        Ok(complete.then_some(()))
                    }
                },
            )
            .await?;
        }
        Ok(())
    }

    pub(crate) async fn shutdown(self) {
        // Clients first, so that no open connection waits on the members' graceful stop.
        drop(self.all);
        drop(self.members);
        self.cluster.shutdown().await;
    }
}

/// The revision in a response header.
fn revision(header: Option<&etcd_client::ResponseHeader>) -> anyhow::Result<i64> {
    Ok(header.context("response has no header")?.revision())
}

/// The store's current revision, read linearizably through `client`.
async fn current_revision(client: &mut Client) -> anyhow::Result<i64> {
    revision(client.get("no-such-key", None).await?.header())
}

/// The `(key, value)` pairs of a range response, as strings.
fn pairs(response: &GetResponse) -> Vec<(String, String)> {
    response
        .kvs()
        .iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(kv.key()).into_owned(),
                String::from_utf8_lossy(kv.value()).into_owned(),
            )
        })
        .collect()
}

/// The value of `key` read through `client` (linearizable), or `None`.
async fn value_of(client: &mut Client, key: &str) -> anyhow::Result<Option<String>> {
    let response = client.get(key, None).await?;
    Ok(response
        .kvs()
        .first()
        .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
}
