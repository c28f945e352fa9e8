//! `rampartctl snapshot save|restore|status`: etcdctl 3.4's `snapshot` commands, with their
//! flags and meaning, for Rampart's backup files (the format is documented in
//! `rampart_storage`'s `backup` module).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Subcommand, ValueEnum};
use rampart_api::etcdserverpb as pb;
use rampart_api::etcdserverpb::maintenance_client::MaintenanceClient;
use rampart_server::config::{Config, RawConfig};
use rampart_storage::{restore, BackupStatus, ClusterIdentity, PeerNode, RestoreTarget};
use tokio::io::AsyncWriteExt;
use tonic::transport::Channel;

#[derive(Subcommand, Debug)]
pub enum SnapshotCmd {
    /// Saves a snapshot of the member's state machine to FILE (as `etcdctl snapshot save`),
    /// then checks the file.
    Save { file: PathBuf },
    /// Writes the data directory of one member of a new cluster holding the snapshot in FILE
    /// (as `etcdctl snapshot restore`). Start each member restored from the same file with the
    /// same flags and `--initial-cluster-state new`.
    Restore {
        file: PathBuf,
        /// The restored member's name.
        #[arg(long, default_value = "default")]
        name: String,
        /// The data directory to create (default: "<name>.rampart"); it must not exist.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// The new cluster: "name1=http://host1:2380,name2=http://host2:2380" (default: this
        /// member alone, on --initial-advertise-peer-urls).
        #[arg(long)]
        initial_cluster: Option<String>,
        /// The new cluster's token, from which its ids derive.
        #[arg(long, default_value = "etcd-cluster")]
        initial_cluster_token: String,
        /// This member's peer URLs (default: http://127.0.0.1:2380, as `rampart`'s).
        #[arg(long)]
        initial_advertise_peer_urls: Option<String>,
    },
    /// Checks the snapshot in FILE and prints its hash (SHA-256), revision, total keys and
    /// total size (as `etcdctl snapshot status`).
    Status {
        file: PathBuf,
        /// Output format.
        #[arg(short = 'w', long = "write-out", value_enum, default_value_t = Format::Simple)]
        write_out: Format,
    },
}

/// `snapshot status`'s output formats, as etcdctl's.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Format {
    Simple,
    Table,
    Json,
}

/// Runs a snapshot command; `channel` connects to the endpoint (only `save` needs one).
pub async fn run<F, Fut>(command: SnapshotCmd, channel: F) -> anyhow::Result<()>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Channel>>,
{
    match command {
        SnapshotCmd::Save { file } => save(channel().await?, &file).await,
        SnapshotCmd::Restore {
            file,
            name,
            data_dir,
            initial_cluster,
            initial_cluster_token,
            initial_advertise_peer_urls,
        } => {
            // The same validation and id derivation as `rampart` applies to these flags, so a
            // member started with them finds its own identity in the directory.
            let config = Config::from_raw(RawConfig {
                name: Some(name),
                data_dir,
                initial_cluster,
                initial_cluster_token: Some(initial_cluster_token),
                initial_advertise_peer_urls,
                ..Default::default()
            })?;
            let target = RestoreTarget {
                identity: ClusterIdentity {
                    cluster_id: config.cluster_id,
                    member_id: config.member_id,
                },
                members: config
                    .initial_cluster
                    .iter()
                    .map(|m| {
                        let node = PeerNode {
                            name: m.name.clone(),
                            peer_urls: m.peer_urls.clone(),
                        };
                        (m.id, node)
                    })
                    .collect(),
            };
            let (path, dir) = (file.clone(), config.data_dir.clone());
            let status =
                tokio::task::spawn_blocking(move || restore::restore(&path, &dir, &target))
                    .await??;
            println!(
                "Restored snapshot {} (revision {}, {} keys, {} leases) into {} as member {} \
                 ({:016x}) of cluster {:016x}",
                file.display(),
                status.revision,
                status.keys,
                status.leases,
                config.data_dir.display(),
                config.name,
                config.member_id,
                config.cluster_id
            );
            Ok(())
        }
        SnapshotCmd::Status { file, write_out } => {
            let status = tokio::task::spawn_blocking(move || restore::status(&file)).await??;
            print!("{}", render_status(&status, write_out));
            Ok(())
        }
    }
}

/// Streams the member's snapshot into `FILE.part`, fsyncs it, checks it and renames it to
/// `file`, as etcdctl saves into a partial file first.
async fn save(channel: Channel, file: &Path) -> anyhow::Result<()> {
    let mut partial = file.as_os_str().to_owned();
    partial.push(".part");
    let partial = PathBuf::from(partial);
    let mut out = tokio::fs::File::create(&partial)
        .await
        .with_context(|| format!("cannot create {}", partial.display()))?;
    let mut stream = MaintenanceClient::new(channel)
        .max_decoding_message_size(usize::MAX)
        .snapshot(pb::SnapshotRequest {})
        .await?
        .into_inner();
    let mut last_remaining = None;
    while let Some(message) = stream.message().await? {
        out.write_all(&message.blob).await?;
        last_remaining = Some(message.remaining_bytes);
    }
    if last_remaining != Some(0) {
        let _ = tokio::fs::remove_file(&partial).await;
        bail!("the snapshot stream ended early ({last_remaining:?} bytes announced to come)");
    }
    out.sync_all().await?;
    drop(out);
    let checked = partial.clone();
    if let Err(e) = tokio::task::spawn_blocking(move || restore::status(&checked)).await? {
        let _ = tokio::fs::remove_file(&partial).await;
        return Err(e.into());
    }
    tokio::fs::rename(&partial, file)
        .await
        .with_context(|| format!("cannot rename {} to {}", partial.display(), file.display()))?;
    println!("Snapshot saved at {}", file.display());
    Ok(())
}

/// `snapshot status` as etcdctl prints it, but with a SHA-256 for the hash.
fn render_status(status: &BackupStatus, format: Format) -> String {
    let hash = status.sha256_hex();
    let size = human_bytes(status.total_size);
    match format {
        Format::Simple => format!("{hash}, {}, {}, {size}\n", status.revision, status.keys),
        Format::Json => format!(
            "{{\"hash\":\"{hash}\",\"revision\":{},\"totalKey\":{},\"totalSize\":{},\
             \"compactRevision\":{},\"leases\":{}}}\n",
            status.revision, status.keys, status.total_size, status.compact_revision, status.leases
        ),
        Format::Table => {
            let cells = [
                hash,
                status.revision.to_string(),
                status.keys.to_string(),
                size,
            ];
            let heads = ["HASH", "REVISION", "TOTAL KEYS", "TOTAL SIZE"];
            let widths: Vec<usize> = heads
                .iter()
                .zip(&cells)
                .map(|(h, c)| h.len().max(c.len()) + 2)
                .collect();
            let rule: String = widths
                .iter()
                .map(|w| format!("+{}", "-".repeat(*w)))
                .collect::<String>()
                + "+\n";
            let row = |texts: &[&str]| {
                texts
                    .iter()
                    .zip(&widths)
                    .map(|(t, w)| format!("|{:^w$}", t, w = *w))
                    .collect::<String>()
                    + "|\n"
            };
            let cell_refs: Vec<&str> = cells.iter().map(String::as_str).collect();
            format!("{rule}{}{rule}{}{rule}", row(&heads), row(&cell_refs))
        }
    }
}

/// Bytes in SI units, as etcdctl prints them (go-humanize's `Bytes`: "2.1 MB", "83 MB").
fn human_bytes(bytes: u64) -> String {
    if bytes < 10 {
        return format!("{bytes} B");
    }
    let units = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    let exponent = ((bytes as f64).ln() / 1000f64.ln()).floor() as usize;
    let exponent = exponent.min(units.len() - 1);
    let value = bytes as f64 / 1000f64.powi(exponent as i32);
    let value = (value * 10.0 + 0.5).floor() / 10.0;
    if value < 10.0 {
        format!("{value:.1} {}", units[exponent])
    } else {
        format!("{value:.0} {}", units[exponent])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_print_as_etcdctl_prints_them() {
        assert_eq!(human_bytes(7), "7 B");
        assert_eq!(human_bytes(2_138_112), "2.1 MB");
        assert_eq!(human_bytes(82_854_982), "83 MB");
        assert_eq!(human_bytes(20_480), "20 kB");
    }
}
