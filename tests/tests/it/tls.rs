//! TLS on the client and peer URLs, against real `rampart` processes and the real etcdctl 3.4:
//! a cluster whose clients and peers must all show certificates of their CA, refused clients
//! (no certificate, one from another CA, plain HTTP on a TLS port, TLS on a plain port), the
//! metrics endpoint over https, a certificate rotated on disk served without a restart,
//! `--cipher-suites` narrowing what TLS 1.2 clients can negotiate, and a client certificate's
//! common name as the user of calls without a token once authentication is on.
//!
//! The CAs and certificates are made here with rcgen, each test in its own directory: ECDSA P-256
//! keys, leaf certificates for `localhost` and `127.0.0.1` good for both server and client
//! authentication (a member's peer certificate is both).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use rampart_launcher::{retry_start, Plan};
use rampart_tests::{rampart_binary, wait_until, ProcessMember, ELECTION_MS, HEARTBEAT_MS};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;
use tracing::info;

use crate::common::{http_get, parse_http_response};
use crate::etcdctl::Etcdctl;

/// How long members may take to start, elect a leader, or pick up a rotated certificate
/// (checked at most every 2 s by the server).
const WAIT: Duration = Duration::from_secs(30);
/// How long a refused client may take to learn it was refused: far less than a hang.
const REFUSAL_WITHIN: Duration = Duration::from_secs(10);

/// A CA made for a test: its certificate and the key it signs with.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// The files of one certificate: the CA's, the leaf's and its key's.
#[derive(Clone, Debug)]
struct CertFiles {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl Ca {
    fn new(name: &str) -> anyhow::Result<Ca> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Ca { cert, key })
    }

    /// A new leaf certificate for `localhost` and `127.0.0.1`, written with its key and this
    /// CA's certificate into `dir` as `{name}.pem`, `{name}-key.pem` and `{name}-ca.pem`
    /// (replacing any earlier ones by rename, as a rotation tool would).
    fn issue(&self, dir: &Path, name: &str) -> anyhow::Result<CertFiles> {
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.cert, &self.key)?;
        let files = CertFiles {
            ca: dir.join(format!("{name}-ca.pem")),
            cert: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}-key.pem")),
        };
        for (path, text) in [
            (&files.ca, self.cert.pem()),
            (&files.key, key.serialize_pem()),
            (&files.cert, cert.pem()),
        ] {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, text)?;
            std::fs::rename(&tmp, path)?;
        }
        Ok(files)
    }
}

/// etcdctl's TLS flags for `files`.
fn etcdctl_tls(files: &CertFiles) -> Vec<String> {
    vec![
        format!("--cacert={}", files.ca.display()),
        format!("--cert={}", files.cert.display()),
        format!("--key={}", files.key.display()),
    ]
}

/// Runs etcdctl against `endpoints` with `tls` flags first, then `args`.
async fn etcdctl(
    endpoints: &[&str],
    tls: &[String],
    args: &[&str],
) -> anyhow::Result<crate::etcdctl::Run> {
    let mut all: Vec<&str> = tls.iter().map(String::as_str).collect();
    all.extend_from_slice(args);
    Etcdctl::new(endpoints)?.run(&all, None).await
}

/// etcdctl's timeouts for a run that should fail: etcdctl 3.4 keeps retrying a refused
/// handshake until its command timeout, 30 s in [`Etcdctl::run`] (a later flag wins).
const FAIL_FAST: [&str; 2] = ["--dial-timeout=2s", "--command-timeout=4s"];

/// Runs etcdctl as [`etcdctl`] does, with the [`FAIL_FAST`] timeouts, and requires it to fail.
async fn etcdctl_refused(endpoints: &[&str], tls: &[String], args: &[&str]) -> anyhow::Result<()> {
    let mut all = FAIL_FAST.to_vec();
    all.extend_from_slice(args);
    let run = etcdctl(endpoints, tls, &all).await?;
    ensure!(
        !run.success,
        "etcdctl {args:?} against {endpoints:?} succeeded: {}",
        run.stdout
    );
    info!(
        "etcdctl {args:?} against {endpoints:?} refused: {}",
        run.stderr.trim()
    );
    Ok(())
}

/// Like [`etcdctl`], but requires success and returns the standard output.
async fn etcdctl_ok(endpoints: &[&str], tls: &[String], args: &[&str]) -> anyhow::Result<String> {
    let run = etcdctl(endpoints, tls, args).await?;
    ensure!(
        run.success,
        "etcdctl {args:?} against {endpoints:?} failed:\nstdout: {}\nstderr: {}",
        run.stdout,
        run.stderr
    );
    Ok(run.stdout)
}

/// A rustls client trusting `ca` and, with `identity`, presenting that certificate.
fn client_config(
    ca: &Path,
    identity: Option<&CertFiles>,
    alpn: &[u8],
) -> anyhow::Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca)? {
        roots.add(cert?)?;
    }
    // ring, as the members use (rustls deprecates it only for lacking post-quantum exchange).
    #[allow(deprecated)]
    let provider = Arc::new(ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let mut config = match identity {
        Some(files) => {
            let chain = CertificateDer::pem_file_iter(&files.cert)?.collect::<Result<_, _>>()?;
            let key = PrivateKeyDer::from_pem_file(&files.key)?;
            builder.with_client_auth_cert(chain, key)?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(Arc::new(config))
}

/// A TLS connection to `url` (`https://host:port`), handshake done.
async fn tls_connect(
    url: &str,
    config: Arc<ClientConfig>,
) -> anyhow::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let address = url.trim_start_matches("https://");
    let tcp = TcpStream::connect(address).await?;
    let name = ServerName::try_from("127.0.0.1")?;
    Ok(TlsConnector::from(config).connect(name, tcp).await?)
}

/// An HTTP/1.0 GET of `path` over TLS: the status code and the body. Any failure, the
/// handshake's or a refusal the server sends after it (TLS 1.3 checks the client's certificate
/// after the client thinks it is done), is an error; so is no answer within
/// [`REFUSAL_WITHIN`].
async fn https_get(
    url: &str,
    path: &str,
    config: Arc<ClientConfig>,
) -> anyhow::Result<(u16, String)> {
    let exchange = async {
        let mut stream = tls_connect(url, config).await?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        anyhow::Ok(response)
    };
    let response = tokio::time::timeout(REFUSAL_WITHIN, exchange)
        .await
        .context("no answer in time")??;
    parse_http_response(response)
}

/// Requires `attempt` to fail, and to fail within [`REFUSAL_WITHIN`]; returns its error text.
async fn refused<T: std::fmt::Debug>(
    what: &str,
    attempt: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<String> {
    let began = Instant::now();
    match attempt.await {
        Ok(answer) => bail!("{what}: expected a refusal, got {answer:?}"),
        Err(e) => {
            let text = format!("{e:#}");
            ensure!(
                began.elapsed() < REFUSAL_WITHIN && !text.contains("no answer in time"),
                "{what}: the refusal took {:?}: {text}",
                began.elapsed()
            );
            info!("{what}: refused: {text}");
            Ok(text)
        }
    }
}

/// Members of a cluster whose client URLs are `client_scheme` and peer URLs `peer_scheme`
/// ("http" or "https"), with `args` added, started and answering etcdctl (with `client_tls`
/// on https) and agreeing on a leader.
async fn start_members(
    dir: &Path,
    size: usize,
    client_https: bool,
    peer_https: bool,
    args: Vec<String>,
    client_tls: &[String],
) -> anyhow::Result<Vec<ProcessMember>> {
    retry_start(|attempt| {
        let args = args.clone();
        async move {
            let plan = Plan {
                size,
                name_prefix: format!("t{attempt}-"),
                token: "tls-test".into(),
                heartbeat_ms: HEARTBEAT_MS,
                election_ms: ELECTION_MS,
                data_dir_suffix: String::new(),
                extra_args: args,
                rust_log: "info,openraft=warn".into(),
            };
            let mut members = plan.members(&rampart_binary()?, dir)?;
            let https = |url: &str, on: bool| {
                if on {
                    url.replacen("http://", "https://", 1)
                } else {
                    url.to_string()
                }
            };
            let initial_cluster = members
                .iter()
                .map(|m| format!("{}={}", m.name, https(&m.peer_url, peer_https)))
                .collect::<Vec<_>>()
                .join(",");
            for member in &mut members {
                member.client_url = https(&member.client_url, client_https);
                member.peer_url = https(&member.peer_url, peer_https);
                let (client_url, peer_url) = (member.client_url.clone(), member.peer_url.clone());
                member.set_flag("listen-client-urls", &client_url);
                member.set_flag("listen-peer-urls", &peer_url);
                member.set_flag("initial-cluster", &initial_cluster);
                member.spawn()?;
            }
            for member in &mut members {
                let url = member.client_url.clone();
                let probe = || {
                    let url = url.clone();
                    async move {
                        // Before the member listens, etcdctl would wait out its dial timeout.
                        let address = url.split("://").nth(1).unwrap_or_default();
                        TcpStream::connect(address).await?;
                        etcdctl_ok(&[&url], client_tls, &["get", "probe", "--consistency=s"])
                            .await
                            .map(drop)
                    }
                };
                member.wait_answering(WAIT, probe).await.map_err(|e| {
                    anyhow::anyhow!(
                        "{} not answering: {e}\n{}",
                        member.name,
                        member.log_tail(30)
                    )
                })?;
            }
            let first = members[0].client_url.clone();
            wait_until("a leader", WAIT, || async {
                etcdctl_ok(&[&first], client_tls, &["get", "probe"]).await?;
                Ok(Some(()))
            })
            .await?;
            Ok(members)
        }
    })
    .await
}

/// The client and peer flags of a member whose clients and peers must show certificates.
fn tls_flags(client: &CertFiles, peer: &CertFiles) -> Vec<String> {
    vec![
        format!("--cert-file={}", client.cert.display()),
        format!("--key-file={}", client.key.display()),
        format!("--trusted-ca-file={}", client.ca.display()),
        "--client-cert-auth".to_string(),
        format!("--peer-cert-file={}", peer.cert.display()),
        format!("--peer-key-file={}", peer.key.display()),
        format!("--peer-trusted-ca-file={}", peer.ca.display()),
        "--peer-client-cert-auth".to_string(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_over_tls_serves_etcdctl_and_refuses_clients_without_its_certificates(
) -> anyhow::Result<()> {
    rampart_tests::init_tracing();
    let dir = TempDir::new()?;
    let client_ca = Ca::new("rampart test client CA")?;
    let peer_ca = Ca::new("rampart test peer CA")?;
    // The members share one server certificate per side; each test client gets its own.
    let server = client_ca.issue(dir.path(), "server")?;
    let peer = peer_ca.issue(dir.path(), "peer")?;
    let user = client_ca.issue(dir.path(), "user")?;
    let user_tls = etcdctl_tls(&user);

    info!("--- three members, https:// client and peer URLs, certificates required on both");
    let members = start_members(
        dir.path(),
        3,
        true,
        true,
        tls_flags(&server, &peer),
        &user_tls,
    )
    .await?;
    let urls: Vec<&str> = members.iter().map(|m| m.client_url.as_str()).collect();

    info!("--- a write through one member is read, linearizably, through another");
    etcdctl_ok(&[urls[0]], &user_tls, &["put", "tls-key", "over-tls"]).await?;
    let read = etcdctl_ok(
        &[urls[2]],
        &user_tls,
        &["get", "tls-key", "--print-value-only"],
    )
    .await?;
    ensure!(read.trim() == "over-tls", "read {read:?} through member 2");

    info!("--- etcdctl's per-endpoint calls (a URL as :authority) work behind TLS");
    let status = etcdctl_ok(&urls, &user_tls, &["endpoint", "status"]).await?;
    for url in &urls {
        ensure!(status.contains(url), "no status line for {url}:\n{status}");
    }

    info!("--- /metrics and /health over https, with a client certificate");
    let with_user = client_config(&user.ca, Some(&user), b"http/1.1")?;
    let (code, metrics) = https_get(urls[1], "/metrics", with_user.clone()).await?;
    ensure!(code == 200, "/metrics answered {code}");
    ensure!(
        metrics.contains("etcd_server_has_leader 1"),
        "/metrics over https lacks etcd_server_has_leader 1"
    );
    let (code, health) = https_get(urls[1], "/health", with_user).await?;
    ensure!(
        code == 200 && health.contains("true"),
        "/health: {code} {health}"
    );

    info!("--- refused at the handshake: no certificate, or one from another CA");
    let no_cert = client_config(&user.ca, None, b"http/1.1")?;
    refused(
        "no client certificate",
        https_get(urls[0], "/health", no_cert),
    )
    .await?;
    let strange = Ca::new("some other CA")?.issue(dir.path(), "stranger")?;
    let other_ca = client_config(&user.ca, Some(&strange), b"http/1.1")?;
    refused(
        "a certificate from another CA",
        https_get(urls[0], "/health", other_ca),
    )
    .await?;
    let mut no_cert_flags = user_tls.clone();
    no_cert_flags.truncate(1);
    etcdctl_refused(&[urls[0]], &no_cert_flags, &["get", "tls-key"]).await?;
    let logged = members[0].log();
    ensure!(
        logged.contains("TLS handshake refused"),
        "member 0 logged no refused handshake"
    );

    info!("--- plain HTTP on an https port gets a clear answer at once");
    let plain = async {
        let url = urls[0].replacen("https://", "http://", 1);
        let (code, body) = http_get(&url, "/health").await?;
        anyhow::Ok((code, body))
    };
    let (code, body) = tokio::time::timeout(REFUSAL_WITHIN, plain).await??;
    ensure!(
        code == 400 && body.contains("Client sent an HTTP request to an HTTPS server"),
        "plain HTTP on the TLS port got {code} {body:?}"
    );
    let plain_url = urls[0].replacen("https://", "http://", 1);
    etcdctl_refused(&[&plain_url], &[], &["get", "tls-key"]).await?;

    info!("--- the peer port takes only peer certificates: a client certificate is refused");
    let peer_url = members[0].peer_url.clone();
    let client_on_peer = client_config(&peer.ca, Some(&user), b"h2")?;
    refused(
        "a client certificate on the peer port",
        tls_connect_and_read(&peer_url, client_on_peer),
    )
    .await?;
    let member_on_peer = client_config(&peer.ca, Some(&peer), b"h2")?;
    let mut stream = tls_connect(&peer_url, member_on_peer).await?;
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await?;
    let mut settings = [0u8; 9];
    tokio::time::timeout(REFUSAL_WITHIN, stream.read_exact(&mut settings)).await??;
    ensure!(
        settings[3] == 0x4,
        "the peer port answered frame type {}",
        settings[3]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_auth_on_a_client_certificates_common_name_is_its_user() -> anyhow::Result<()> {
    rampart_tests::init_tracing();
    let dir = TempDir::new()?;
    let ca = Ca::new("rampart test client CA")?;
    let server = ca.issue(dir.path(), "server")?;
    // Leaf certificates whose common names are users: root, a reader, and no user at all.
    let root = etcdctl_tls(&ca.issue(dir.path(), "root")?);
    let alice = etcdctl_tls(&ca.issue(dir.path(), "alice")?);
    let nobody = etcdctl_tls(&ca.issue(dir.path(), "nobody")?);
    let args = vec![
        format!("--cert-file={}", server.cert.display()),
        format!("--key-file={}", server.key.display()),
        format!("--trusted-ca-file={}", server.ca.display()),
        "--client-cert-auth".to_string(),
    ];
    let members = start_members(dir.path(), 1, true, false, args, &root).await?;
    let url = [members[0].client_url.as_str()];
    for setup in [
        &["user", "add", "root:rootpw"][..],
        &["user", "grant-role", "root", "root"],
        &["user", "add", "alice:alicepw"],
        &["role", "add", "reader"],
        &["role", "grant-permission", "reader", "read", "k"],
        &["user", "grant-role", "alice", "reader"],
        &["put", "k", "v"],
        &["auth", "enable"],
    ] {
        etcdctl_ok(&url, &root, setup).await?;
    }
    info!("--- no token: the certificate names the user");
    etcdctl_ok(&url, &root, &["put", "k", "by-root"]).await?;
    let read = etcdctl_ok(&url, &alice, &["get", "k", "--print-value-only"]).await?;
    ensure!(read.trim() == "by-root", "alice read {read:?}");
    for (who, tls, args) in [
        ("alice", &alice, &["put", "k", "x"][..]),
        ("nobody", &nobody, &["get", "k"]),
    ] {
        let run = etcdctl(&url, tls, args).await?;
        ensure!(
            !run.success && run.stderr.contains("etcdserver: permission denied"),
            "{who} {args:?}: {} {}",
            run.stdout,
            run.stderr
        );
    }
    info!("--- a token wins over the certificate");
    let mut alice_as_root = alice.clone();
    alice_as_root.extend(["--user".to_string(), "root:rootpw".to_string()]);
    etcdctl_ok(&url, &alice_as_root, &["put", "k", "by-token"]).await?;
    Ok(())
}

/// Connects over TLS and reads: the server's refusal of the client's certificate (TLS 1.3: after
/// the client's handshake) shows as a failed read, and so as an error.
async fn tls_connect_and_read(url: &str, config: Arc<ClientConfig>) -> anyhow::Result<usize> {
    let exchange = async {
        let mut stream = tls_connect(url, config).await?;
        stream
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
            .await?;
        let mut buf = [0u8; 64];
        let n = stream.read(&mut buf).await?;
        ensure!(n > 0, "the connection was closed without a word");
        anyhow::Ok(n)
    };
    tokio::time::timeout(REFUSAL_WITHIN, exchange)
        .await
        .context("no answer in time")?
}

/// The leaf certificate `url` presents now.
async fn served_certificate(url: &str, ca: &Path) -> anyhow::Result<Vec<u8>> {
    let stream = tls_connect(url, client_config(ca, None, b"http/1.1")?).await?;
    let (_, session) = stream.get_ref();
    let leaf = session
        .peer_certificates()
        .and_then(|chain| chain.first())
        .context("the server presented no certificate")?;
    Ok(leaf.to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_is_served_without_a_restart() -> anyhow::Result<()> {
    rampart_tests::init_tracing();
    let dir = TempDir::new()?;
    let ca = Ca::new("rampart rotation CA")?;
    let first = ca.issue(dir.path(), "server")?;
    let tls = vec![format!("--cacert={}", first.ca.display())];

    info!("--- one member, https:// clients, no client certificates required");
    let mut members = start_members(
        dir.path(),
        1,
        true,
        false,
        vec![
            format!("--cert-file={}", first.cert.display()),
            format!("--key-file={}", first.key.display()),
        ],
        &tls,
    )
    .await?;
    let url = members[0].client_url.clone();
    let before = served_certificate(&url, &first.ca).await?;
    ensure!(
        before == pem_der(&first.cert)?,
        "the member serves another certificate than its --cert-file"
    );
    etcdctl_ok(&[&url], &tls, &["put", "rotation", "before"]).await?;

    info!("--- a new certificate and key replace the files; the member keeps running");
    let second = ca.issue(dir.path(), "server")?;
    let wanted = pem_der(&second.cert)?;
    ensure!(wanted != before, "rcgen issued the same certificate twice");
    wait_until("the rotated certificate to be served", WAIT, || async {
        Ok((served_certificate(&url, &second.ca).await? == wanted).then_some(()))
    })
    .await?;
    ensure!(
        members[0].is_running(),
        "the member stopped:\n{}",
        members[0].log_tail(30)
    );
    let value = etcdctl_ok(&[&url], &tls, &["get", "rotation", "--print-value-only"]).await?;
    ensure!(
        value.trim() == "before",
        "read {value:?} after the rotation"
    );
    ensure!(
        members[0].log().contains("serving the new one"),
        "the member did not log the reload"
    );
    Ok(())
}

/// The DER of the first certificate in a PEM file.
fn pem_der(path: &Path) -> anyhow::Result<Vec<u8>> {
    Ok(CertificateDer::from_pem_file(path)?.to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_a_plain_port_fails_at_once() -> anyhow::Result<()> {
    rampart_tests::init_tracing();
    let dir = TempDir::new()?;
    let ca = Ca::new("rampart plain-port CA")?;
    let files = ca.issue(dir.path(), "client")?;

    info!("--- one member with plain http:// URLs");
    let members = start_members(dir.path(), 1, false, false, Vec::new(), &[]).await?;
    let url = members[0].client_url.replacen("http://", "https://", 1);
    let text = refused(
        "TLS to a plain client port",
        https_get(
            &url,
            "/health",
            client_config(&files.ca, None, b"http/1.1")?,
        ),
    )
    .await?;
    info!("the TLS client said: {text}");
    let ca = [format!("--cacert={}", files.ca.display())];
    etcdctl_refused(&[&url], &ca, &["get", "x"]).await?;
    Ok(())
}

/// A TLS 1.2-only client trusting `ca` that offers just the suite named `suite` (rustls's name).
fn tls12_client(ca: &Path, suite: &str) -> anyhow::Result<Arc<ClientConfig>> {
    #[allow(deprecated)]
    let mut provider = ring::default_provider();
    provider
        .cipher_suites
        .retain(|s| format!("{:?}", s.suite()) == suite);
    ensure!(
        provider.cipher_suites.len() == 1,
        "rustls has no suite {suite}"
    );
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca)? {
        roots.add(cert?)?;
    }
    let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&tokio_rustls::rustls::version::TLS12])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cipher_suites_limit_what_tls_1_2_clients_can_negotiate() -> anyhow::Result<()> {
    rampart_tests::init_tracing();
    let dir = TempDir::new()?;
    let ca = Ca::new("rampart cipher CA")?;
    let files = ca.issue(dir.path(), "server")?;
    let tls = vec![format!("--cacert={}", files.ca.display())];

    info!("--- one member allowing one TLS 1.2 suite, by etcd's name");
    let members = start_members(
        dir.path(),
        1,
        true,
        false,
        vec![
            format!("--cert-file={}", files.cert.display()),
            format!("--key-file={}", files.key.display()),
            "--cipher-suites=TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384".to_string(),
        ],
        &tls,
    )
    .await?;
    let url = members[0].client_url.clone();

    info!("--- a TLS 1.2 client offering that suite gets it; one offering another is refused");
    let chosen = tls12_client(&files.ca, "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384")?;
    let (code, _) = https_get(&url, "/health", chosen).await?;
    ensure!(
        code == 200,
        "/health over the allowed suite answered {code}"
    );
    let other = tls12_client(&files.ca, "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256")?;
    let text = refused(
        "a suite not in --cipher-suites",
        https_get(&url, "/health", other),
    )
    .await?;
    ensure!(
        text.contains("HandshakeFailure"),
        "refused for another reason: {text}"
    );
    info!("--- TLS 1.3 is untouched by a list of TLS 1.2 suites, as in etcd; etcdctl connects");
    let stream = tls_connect(&url, client_config(&files.ca, None, b"http/1.1")?).await?;
    let version = stream.get_ref().1.protocol_version();
    ensure!(
        version == Some(tokio_rustls::rustls::ProtocolVersion::TLSv1_3),
        "a default client negotiated {version:?}"
    );
    etcdctl_ok(&[&url], &tls, &["put", "cipher", "ok"]).await?;
    Ok(())
}
