//! The shape of a cluster of `rampart` processes, and starting one despite taken ports.

use std::future::Future;
use std::path::Path;

use crate::member::{Disk, Member};

/// How many times [`retry_start`] tries.
pub const START_ATTEMPTS: usize = 3;

/// What the members of a cluster have in common; [`Plan::members`] makes them.
#[derive(Clone, Debug)]
pub struct Plan {
    pub size: usize,
    /// Member `i` is named `{name_prefix}{i}`.
    pub name_prefix: String,
    /// `--initial-cluster-token`: members of clusters with other tokens refuse each other.
    pub token: String,
    /// `--heartbeat-interval`, in milliseconds.
    pub heartbeat_ms: u64,
    /// `--election-timeout`, in milliseconds.
    pub election_ms: u64,
    /// A member's data directory is `{name}{data_dir_suffix}` in the cluster's directory.
    pub data_dir_suffix: String,
    /// Flags every member gets after the common ones.
    pub extra_args: Vec<String>,
    /// The members' `RUST_LOG`.
    pub rust_log: String,
}

impl Plan {
    /// The members, not started yet, of a cluster running `binary` with its data directories
    /// and logs (`{name}.log`) in `dir`, each on two newly chosen free ports (client and peer).
    pub fn members(&self, binary: &Path, dir: &Path) -> anyhow::Result<Vec<Member>> {
        let mut urls = Vec::new();
        for _ in 0..self.size {
            urls.push((crate::free_url()?, crate::free_url()?));
        }
        let name = |i: usize| format!("{}{i}", self.name_prefix);
        let initial_cluster = urls
            .iter()
            .enumerate()
            .map(|(i, (_, peer_url))| format!("{}={peer_url}", name(i)))
            .collect::<Vec<_>>()
            .join(",");
        let members = urls
            .into_iter()
            .enumerate()
            .map(|(i, (client_url, peer_url))| {
                self.member(binary, dir, name(i), client_url, peer_url, &initial_cluster)
            })
            .collect();
        Ok(members)
    }

    /// A member, not started yet, to add to a running cluster of this plan: named `name`, on
    /// `client_url` and `peer_url` (see [`crate::free_url`]), started with
    /// `--initial-cluster-state existing` and `initial_cluster`, the running members' and its
    /// own, as `member add` prints it once told `peer_url`.
    pub fn joining_member(
        &self,
        binary: &Path,
        dir: &Path,
        name: &str,
        (client_url, peer_url): (String, String),
        initial_cluster: &str,
    ) -> Member {
        let mut member = self.member(
            binary,
            dir,
            name.to_string(),
            client_url,
            peer_url,
            initial_cluster,
        );
        member
            .args
            .push("--initial-cluster-state=existing".to_string());
        member
    }

    fn member(
        &self,
        binary: &Path,
        dir: &Path,
        name: String,
        client_url: String,
        peer_url: String,
        initial_cluster: &str,
    ) -> Member {
        let data_dir = dir.join(format!("{name}{}", self.data_dir_suffix));
        let mut args = vec![
            format!("--name={name}"),
            format!("--data-dir={}", data_dir.display()),
            format!("--listen-client-urls={client_url}"),
            format!("--listen-peer-urls={peer_url}"),
            format!("--initial-cluster={initial_cluster}"),
            format!("--initial-cluster-token={}", self.token),
            format!("--heartbeat-interval={}", self.heartbeat_ms),
            format!("--election-timeout={}", self.election_ms),
        ];
        args.extend(self.extra_args.iter().cloned());
        Member {
            log_path: dir.join(format!("{name}.log")),
            name,
            client_url,
            peer_url,
            data_dir,
            binary: binary.to_owned(),
            args,
            rust_log: self.rust_log.clone(),
            child: None,
            paused: false,
            log_start: 0,
            disk: Disk::Plain,
        }
    }
}

/// Runs `start(attempt)` until it succeeds, at most [`START_ATTEMPTS`] times, and returns the
/// last error if it never does. Each attempt should choose new ports ([`Plan::members`]): a port
/// chosen free can be taken by another process before the member binds it.
pub async fn retry_start<T, F, Fut>(mut start: F) -> anyhow::Result<T>
where
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let mut last_error = None;
    for attempt in 0..START_ATTEMPTS {
        match start(attempt).await {
            Ok(started) => return Ok(started),
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error.expect("START_ATTEMPTS is not zero"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(size: usize) -> Plan {
        Plan {
            size,
            name_prefix: "n".into(),
            token: "plan-test".into(),
            heartbeat_ms: 100,
            election_ms: 1000,
            data_dir_suffix: ".rampart".into(),
            extra_args: vec!["--experimental-peer-fault-injection".into()],
            rust_log: "info".into(),
        }
    }

    #[test]
    fn every_member_gets_its_own_ports_and_the_same_initial_cluster() {
        let dir = Path::new("/tmp/cluster");
        let members = plan(3).members(Path::new("rampart"), dir).unwrap();
        let names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["n0", "n1", "n2"]);
        let mut urls: Vec<&str> = members
            .iter()
            .flat_map(|m| [m.client_url.as_str(), m.peer_url.as_str()])
            .collect();
        urls.sort_unstable();
        urls.dedup();
        assert_eq!(urls.len(), 6, "two ports per member, none shared");
        let initial_cluster = format!(
            "--initial-cluster=n0={},n1={},n2={}",
            members[0].peer_url, members[1].peer_url, members[2].peer_url
        );
        for member in &members {
            let args = &member.args;
            assert!(args.contains(&initial_cluster), "{args:?}");
            assert!(args.contains(&format!("--listen-peer-urls={}", member.peer_url)));
            assert!(args.contains(&format!("--listen-client-urls={}", member.client_url)));
            assert!(args.contains(&"--initial-cluster-token=plan-test".to_string()));
            assert_eq!(
                args.last().map(String::as_str),
                Some("--experimental-peer-fault-injection"),
                "the extra flags come last"
            );
            assert_eq!(
                member.data_dir,
                dir.join(format!("{}.rampart", member.name))
            );
            assert_eq!(member.log_path, dir.join(format!("{}.log", member.name)));
        }
    }

    #[tokio::test]
    async fn a_start_is_tried_again_until_it_succeeds() {
        let mut tried = Vec::new();
        let started = retry_start(|attempt| {
            tried.push(attempt);
            async move {
                anyhow::ensure!(attempt == 1, "port taken");
                Ok(attempt)
            }
        })
        .await
        .unwrap();
        assert_eq!(started, 1);
        assert_eq!(tried, [0, 1]);
        let never: anyhow::Result<()> =
            retry_start(|attempt| async move { anyhow::bail!("attempt {attempt} failed") }).await;
        assert_eq!(
            never.unwrap_err().to_string(),
            format!("attempt {} failed", START_ATTEMPTS - 1)
        );
    }
}
