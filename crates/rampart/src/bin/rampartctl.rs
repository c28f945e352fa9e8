//! `rampartctl`: a small command-line client for Rampart (and any etcd v3 server).

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use rampart_api::etcdserverpb as pb;
use rampart_api::etcdserverpb::cluster_client::ClusterClient;
use rampart_api::etcdserverpb::kv_client::KvClient;
use rampart_api::etcdserverpb::maintenance_client::MaintenanceClient;
use tonic::transport::Channel;

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
    /// Lists the cluster's members.
    Members,
}

/// The end of the range holding every key that starts with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let channel = Channel::from_shared(cli.endpoint.clone())?
        .connect()
        .await
        .with_context(|| format!("cannot connect to {}", cli.endpoint))?;
    let range_end = |key: &str, prefix: bool| {
        if prefix {
            prefix_end(key.as_bytes())
        } else {
            Vec::new()
        }
    };
    match cli.command {
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
    }
    Ok(())
}
