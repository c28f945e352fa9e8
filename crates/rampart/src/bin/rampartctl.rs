//! `rampartctl`: a small command-line client for Rampart (and any etcd v3 server).

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use rampart_api::etcdserverpb as pb;
use rampart_api::etcdserverpb::cluster_client::ClusterClient;
use rampart_api::etcdserverpb::kv_client::KvClient;
use rampart_api::etcdserverpb::lease_client::LeaseClient;
use rampart_api::etcdserverpb::maintenance_client::MaintenanceClient;
use rampart_api::v3electionpb as epb;
use rampart_api::v3electionpb::election_client::ElectionClient;
use rampart_api::v3lockpb as lpb;
use rampart_api::v3lockpb::lock_client::LockClient;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

#[path = "rampartctl/snapshot.rs"]
mod snapshot;

#[derive(Parser, Debug)]
#[command(name = "rampartctl", version, about = "Talk to a Rampart cluster")]
struct Cli {
    /// Client URL of the member to talk to.
    #[arg(
        long,
        default_value = "http://127.0.0.1:2379",
        env = "RAMPARTCTL_ENDPOINT"
    )]
    endpoint: String,

    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Writes a value.
    Put { key: String, value: String },
    /// Reads a key, or every key under a prefix.
    Get {
        key: String,
        #[arg(long)]
        prefix: bool,
        /// Answer from the member's local state, without asking the quorum.
        #[arg(long)]
        serializable: bool,
    },
    /// Deletes a key, or every key under a prefix.
    Del {
        key: String,
        #[arg(long)]
        prefix: bool,
    },
    /// Shows the member's status.
    Status,
    /// Checks the member as `etcdctl endpoint health` does: a linearizable read through it
    /// must succeed within TIMEOUT (so the member must reach a leader). Exits 1 if not: for
    /// container health checks.
    Health {
        /// How long the read may take, e.g. "3s".
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Lists the cluster's members.
    Members,
    /// Takes a named lock (etcdctl's `lock`): runs COMMAND while holding it and releases it
    /// after, or without a command prints the lock key and holds the lock until interrupted.
    /// COMMAND sees the key in ETCD_LOCK_KEY and the revision it got the lock at in
    /// ETCD_LOCK_REV.
    Lock {
        name: String,
        /// The session lease's TTL in seconds; the lease is kept alive while the lock is held.
        #[arg(long, default_value_t = 10)]
        ttl: i64,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// Campaigns in a named election with PROPOSAL and, once leader, prints the leader key and
    /// value and leads until interrupted (etcdctl's `elect`); with --listen, prints every
    /// leader's key and value as they change.
    Elect {
        name: String,
        proposal: Option<String>,
        /// Observe instead of campaigning.
        #[arg(short, long)]
        listen: bool,
        /// The session lease's TTL in seconds; the lease is kept alive while campaigning.
        #[arg(long, default_value_t = 60)]
        ttl: i64,
    },
    /// Saves, checks and restores snapshots (etcdctl's `snapshot save|status|restore`).
    #[command(subcommand)]
    Snapshot(snapshot::SnapshotCmd),
}

/// A lease kept alive for as long as the command runs (clientv3's `concurrency.Session`).
struct Session {
    lease: i64,
    /// Turns true when a keep-alive finds the lease gone or the stream breaks.
    lost: watch::Receiver<bool>,
    keeper: tokio::task::JoinHandle<()>,
    channel: Channel,
}

impl Session {
    async fn start(channel: &Channel, ttl: i64) -> anyhow::Result<Session> {
        let mut leases = LeaseClient::new(channel.clone());
        let lease = leases
            .lease_grant(pb::LeaseGrantRequest { ttl, id: 0 })
            .await?
            .into_inner()
            .id;
        let (requests, outgoing) = mpsc::channel(1);
        let mut responses = leases
            .lease_keep_alive(ReceiverStream::new(outgoing))
            .await?
            .into_inner();
        let (lose, lost) = watch::channel(false);
        let period = Duration::from_millis((ttl.max(1) as u64) * 1000 / 3);
        let keeper = tokio::spawn(async move {
            loop {
                let request = pb::LeaseKeepAliveRequest { id: lease };
                if requests.send(request).await.is_err() {
                    break;
                }
                match responses.message().await {
                    Ok(Some(response)) if response.ttl > 0 => {}
                    _ => break,
                }
                tokio::time::sleep(period).await;
            }
            let _ = lose.send(true);
        });
        Ok(Session {
            lease,
            lost,
            keeper,
            channel: channel.clone(),
        })
    }

    /// Completes when the lease is lost.
    async fn lost(&mut self) {
        let _ = self.lost.wait_for(|lost| *lost).await;
    }

    /// Stops the keep-alives and revokes the lease, which deletes every key attached to it.
    async fn close(self) {
        self.keeper.abort();
        let _ = LeaseClient::new(self.channel)
            .lease_revoke(pb::LeaseRevokeRequest { id: self.lease })
            .await;
    }
}

/// Completes on SIGINT or SIGTERM.
async fn interrupted() {
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async {
            match terminate.as_mut() {
                Some(terminate) => { terminate.recv().await; }
                None => std::future::pending::<()>().await,
            }
        } => {}
    }
}

/// `rampartctl lock`: exits with the command's status, or 0 once released.
async fn lock(
    channel: Channel,
    name: String,
    ttl: i64,
    command: Vec<String>,
) -> anyhow::Result<i32> {
    let mut session = Session::start(&channel, ttl).await?;
    let mut locks = LockClient::new(channel.clone());
    let request = lpb::LockRequest {
        name: name.into_bytes(),
        lease: session.lease,
    };
    let locked = tokio::select! {
        locked = locks.lock(request) => locked,
        // Dropping the Lock call makes the server delete the waiter's key.
        _ = interrupted() => {
            session.close().await;
            return Ok(130);
        }
        _ = session.lost() => bail!("session expired while waiting for the lock"),
    };
    let locked = locked?.into_inner();
    let key = String::from_utf8_lossy(&locked.key).into_owned();
    let revision = locked.header.map_or(0, |header| header.revision);
    let code = if let Some((program, args)) = command.split_first() {
        let status = tokio::process::Command::new(program)
            .args(args)
            .env("ETCD_LOCK_KEY", &key)
            .env("ETCD_LOCK_REV", revision.to_string())
            .status()
            .await
            .with_context(|| format!("cannot run {program}"))?;
        status.code().unwrap_or(1)
    } else {
        println!("{key}");
        println!();
        tokio::select! {
            _ = interrupted() => 0,
            _ = session.lost() => {
                eprintln!("session expired: the lock is lost");
                1
            }
        }
    };
    locks
        .unlock(lpb::UnlockRequest {
            key: locked.key.clone(),
        })
        .await?;
    session.close().await;
    Ok(code)
}

/// `rampartctl elect NAME PROPOSAL`: leads until interrupted, then resigns.
async fn campaign(
    channel: Channel,
    name: String,
    proposal: String,
    ttl: i64,
) -> anyhow::Result<i32> {
    let mut session = Session::start(&channel, ttl).await?;
    let mut elections = ElectionClient::new(channel.clone());
    let request = epb::CampaignRequest {
        name: name.into_bytes(),
        lease: session.lease,
        value: proposal.into_bytes(),
    };
    let won = tokio::select! {
        won = elections.campaign(request) => won,
        _ = interrupted() => {
            session.close().await;
            return Ok(130);
        }
        _ = session.lost() => bail!("session expired while campaigning"),
    };
    let leader = won?
        .into_inner()
        .leader
        .context("Campaign answered no leader")?;
    let current = KvClient::new(channel.clone())
        .range(pb::RangeRequest {
            key: leader.key.clone(),
            ..Default::default()
        })
        .await?
        .into_inner();
    for kv in current.kvs {
        println!("{}", String::from_utf8_lossy(&kv.key));
        println!("{}", String::from_utf8_lossy(&kv.value));
    }
    let code = tokio::select! {
        _ = interrupted() => 0,
        _ = session.lost() => {
            eprintln!("elect: session expired");
            1
        }
    };
    elections
        .resign(epb::ResignRequest {
            leader: Some(leader),
        })
        .await?;
    session.close().await;
    Ok(code)
}

/// `rampartctl elect --listen NAME`: prints each leader's key and value until interrupted.
async fn observe(channel: Channel, name: String) -> anyhow::Result<i32> {
    let mut leaders = ElectionClient::new(channel)
        .observe(epb::LeaderRequest {
            name: name.into_bytes(),
        })
        .await?
        .into_inner();
    loop {
        let next = tokio::select! {
            next = leaders.message() => next?,
            _ = interrupted() => return Ok(0),
        };
        let Some(kv) = next.and_then(|response| response.kv) else {
            bail!("elect: observer lost");
        };
        println!("{}", String::from_utf8_lossy(&kv.key));
        println!("{}", String::from_utf8_lossy(&kv.value));
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let code = run().await?;
    std::process::exit(code)
}

/// Runs the command and answers the process's exit status.
async fn run() -> anyhow::Result<i32> {
    let cli = Cli::parse();
    let connect = || async {
        Channel::from_shared(cli.endpoint.clone())?
            .connect()
            .await
            .with_context(|| format!("cannot connect to {}", cli.endpoint))
    };
    let command = match cli.command {
        // Restore and status read files only; save connects when it needs to.
        Cmd::Snapshot(command) => {
            snapshot::run(command, connect).await?;
            return Ok(0);
        }
        command => command,
    };
    let channel = connect().await?;
    let range_end = |key: &str, prefix: bool| {
        if prefix {
            rampart_api::prefix_range_end(key.as_bytes())
        } else {
            Vec::new()
        }
    };
    match command {
        Cmd::Put { key, value } => {
            KvClient::new(channel)
                .put(pb::PutRequest {
                    key: key.into_bytes(),
                    value: value.into_bytes(),
                    ..Default::default()
                })
                .await?;
            println!("OK");
        }
        Cmd::Get {
            key,
            prefix,
            serializable,
        } => {
            let response = KvClient::new(channel)
                .range(pb::RangeRequest {
                    range_end: range_end(&key, prefix),
                    key: key.into_bytes(),
                    serializable,
                    ..Default::default()
                })
                .await?
                .into_inner();
            for kv in response.kvs {
                println!("{}", String::from_utf8_lossy(&kv.key));
                println!("{}", String::from_utf8_lossy(&kv.value));
            }
        }
        Cmd::Del { key, prefix } => {
            let response = KvClient::new(channel)
                .delete_range(pb::DeleteRangeRequest {
                    range_end: range_end(&key, prefix),
                    key: key.into_bytes(),
                    ..Default::default()
                })
                .await?
                .into_inner();
            println!("{}", response.deleted);
        }
        Cmd::Status => {
            let s = MaintenanceClient::new(channel)
                .status(pb::StatusRequest {})
                .await?
                .into_inner();
            let header = s.header.unwrap_or_default();
            println!(
                "member {:016x} leader {:016x} term {} index {} applied {} revision {} db {} bytes",
                header.member_id,
                s.leader,
                s.raft_term,
                s.raft_index,
                s.raft_applied_index,
                header.revision,
                s.db_size
            );
        }
        Cmd::Health { timeout } => {
            let began = std::time::Instant::now();
            let mut kv = KvClient::new(channel);
            let read = kv.range(pb::RangeRequest {
                key: b"health".to_vec(),
                ..Default::default()
            });
            match tokio::time::timeout(timeout, read).await {
                Ok(Ok(_)) => println!(
                    "{} is healthy: successfully committed proposal: took = {:?}",
                    cli.endpoint,
                    began.elapsed()
                ),
                Ok(Err(status)) => {
                    println!("{} is unhealthy: {}", cli.endpoint, status.message());
                    return Ok(1);
                }
                Err(_) => {
                    println!(
                        "{} is unhealthy: no answer within {timeout:?}",
                        cli.endpoint
                    );
                    return Ok(1);
                }
            }
        }
        Cmd::Members => {
            let list = ClusterClient::new(channel)
                .member_list(pb::MemberListRequest {
                    linearizable: false,
                })
                .await?
                .into_inner();
            if list.members.is_empty() {
                bail!("the cluster reported no members");
            }
            for m in list.members {
                println!(
                    "{:016x}, {}, {}, {}, learner={}",
                    m.id,
                    m.name,
                    m.peer_ur_ls.join(","),
                    m.client_ur_ls.join(","),
                    m.is_learner
                );
            }
        }
        Cmd::Lock { name, ttl, command } => return lock(channel, name, ttl, command).await,
        Cmd::Elect {
            name,
            proposal,
            listen,
            ttl,
        } => {
            return match (proposal, listen) {
                (Some(proposal), false) => campaign(channel, name, proposal, ttl).await,
                (None, true) => observe(channel, name).await,
                (Some(_), true) => bail!("proposal given but --listen is set"),
                (None, false) => bail!("no proposal argument but --listen not set"),
            }
        }
        Cmd::Snapshot(_) => unreachable!("handled before connecting"),
    }
    Ok(0)
}
