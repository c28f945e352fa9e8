//! Helpers shared by the test modules: etcd-client connections, etcd's errors, etcdctl, plain
//! HTTP GETs, a real etcd to compare with.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{ensure, Context};
use etcd_client::{Client, ConnectOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
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

/// How long [`http_get`] waits for a whole answer.
const HTTP_ANSWER_WITHIN: Duration = Duration::from_secs(20);

/// The status code and body of a whole HTTP/1.x response.
pub fn parse_http_response(response: Vec<u8>) -> anyhow::Result<(u16, String)> {
    let response = String::from_utf8(response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .with_context(|| format!("no end of headers in {response:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .with_context(|| format!("no status line in {head:?}"))?
        .parse()?;
    Ok((status, body.to_string()))
}

/// An HTTP/1.0 GET of `path` from the server at `url` (`http://host:port`), over plain TCP:
/// its status code and body, within [`HTTP_ANSWER_WITHIN`].
pub async fn http_get(url: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let address = url.trim_start_matches("http://");
    let exchange = async {
        let mut stream = TcpStream::connect(address).await?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        anyhow::Ok(response)
    };
    let response = tokio::time::timeout(HTTP_ANSWER_WITHIN, exchange)
        .await
        .with_context(|| format!("no answer to GET {path} from {url} in time"))??;
    parse_http_response(response)
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

/// A real etcd 3.4 on free loopback ports (the Debian package etcd-server, which CI installs),
/// killed when dropped.
pub struct Etcd {
    process: tokio::process::Child,
    /// Its client URL.
    pub url: String,
    /// Its data directory, removed when dropped.
    _dir: tempfile::TempDir,
}

impl Etcd {
    /// Starts one and waits until its `/health` answers.
    pub async fn start() -> anyhow::Result<Etcd> {
        Self::start_with(&[]).await
    }

    /// Starts one with `extra_args` besides the usual flags, and waits until its `/health`
    /// answers.
    pub async fn start_with(extra_args: &[&str]) -> anyhow::Result<Etcd> {
        let dir = tempfile::tempdir()?;
        let client = format!("http://127.0.0.1:{}", rampart_launcher::free_port()?);
        let peer = format!("http://127.0.0.1:{}", rampart_launcher::free_port()?);
        let process = tokio::process::Command::new("etcd")
            .args(["--name", "e", "--data-dir"])
            .arg(dir.path().join("data"))
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("e={peer}")])
            .args(extra_args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting etcd (Debian package etcd-server; scripts/test installs it)")?;
        let etcd = Etcd {
            process,
            url: client,
            _dir: dir,
        };
        rampart_tests::wait_until("etcd to serve", Duration::from_secs(20), || async {
            let answer = http_get(&etcd.url, "/health").await;
            Ok(answer.is_ok_and(|(status, _)| status == 200).then_some(()))
        })
        .await?;
        Ok(etcd)
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.process.start_kill();
    }
}
