//! Helpers shared by the test modules: etcd-client connections, etcd's errors, etcdctl.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{ensure, Context};
use etcd_client::{Client, ConnectOptions};
use tonic::Code;

/// An etcd-client `Client` that balances over `urls`.
pub async fn connect(urls: &[String]) -> anyhow::Result<Client> {
    let options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(20));
    Client::connect(urls, Some(options))
        .await
        .with_context(|| format!("connecting etcd-client to {urls:?}"))
}

/// An etcd-client `Client` over `urls` whose calls may wait up to two minutes: for Lock and
/// Campaign calls that wait for others to let go.
pub async fn connect_patient(urls: &[String]) -> anyhow::Result<Client> {
    let options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(120));
    Client::connect(urls, Some(options))
        .await
        .with_context(|| format!("connecting etcd-client to {urls:?}"))
}

/// The key-value stored at `key`, read linearizably through `client`, if any.
pub async fn stored(
    client: &mut Client,
    key: &[u8],
) -> anyhow::Result<Option<etcd_client::KeyValue>> {
    Ok(client.get(key, None).await?.kvs().first().cloned())
}

/// Checks that `result` is a gRPC error with etcd's `code` and exact `message`.
pub fn expect_error<T: std::fmt::Debug>(
    what: &str,
    result: Result<T, etcd_client::Error>,
    code: Code,
    message: &str,
) -> anyhow::Result<()> {
    match result {
        Ok(value) => anyhow::bail!("{what}: expected {code:?} {message:?}, got success: {value:?}"),
        Err(etcd_client::Error::GRpcStatus(status)) => {
            ensure!(
                status.code() == code && status.message() == message,
                "{what}: expected {code:?} {message:?}, got {:?} {:?}",
                status.code(),
                status.message()
            );
            Ok(())
        }
        Err(other) => anyhow::bail!("{what}: expected gRPC {code:?} {message:?}, got {other}"),
    }
}

/// `(key, value)` pairs as owned strings, to compare with what a range returned.
pub fn owned(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The `etcdctl` on `PATH`, or an error saying how to install it.
pub fn etcdctl_path() -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("etcdctl"))
        .find(|candidate| candidate.is_file())
        .context(
            "etcdctl is not on PATH: these compatibility tests need the real etcdctl 3.4; \
             install the Debian package etcd-client (`apt-get install etcd-client`), as CI does",
        )
}

/// Starts the real etcdctl (v3 API) against `endpoints` with `args`, its output piped and the
/// process killed when the handle is dropped.
pub fn spawn_etcdctl(endpoints: &[String], args: &[&str]) -> anyhow::Result<tokio::process::Child> {
    Ok(tokio::process::Command::new(etcdctl_path()?)
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", endpoints.join(",")))
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?)
}
