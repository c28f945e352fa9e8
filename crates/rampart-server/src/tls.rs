//! TLS for the client and peer listeners, and the peer channels' client side (etcd's
//! `--cert-file`, `--peer-cert-file` and their companions), with rustls on the ring provider.
//!
//! - [`TlsFiles`]: one side's files and whether it demands client certificates.
//! - [`ReloadingCert`]: the certificate and key a side presents, read again when their files
//!   change (checked at most every [`RELOAD_CHECK_INTERVAL`], during a handshake), so that a
//!   rotated certificate is served without a restart, as etcd's `GetCertificate` does.
//! - [`ServingTls`]: the acceptors of the client and peer listeners and the peer channels'
//!   client configuration, built once at start so that unreadable files stop the start.
//! - [`incoming`]: the connections a listener accepts, plain or after a TLS handshake. Each
//!   handshake runs in its own task with a deadline, so a client that never finishes one holds
//!   up no one else. The order on a client listener is TCP accept → TLS handshake →
//!   `rampart_h2_compat::AuthorityFix` → tonic.
//!
//! Only TLS 1.2 and 1.3 are offered (etcd's minimum is 1.2); `--cipher-suites` takes etcd's
//! (Go's) names and narrows the TLS 1.2 suites, and the TLS 1.3 ones if it names any (Go does
//! not let TLS 1.3's be chosen; rustls does).

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use futures::{Stream, StreamExt};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls::crypto::{ring, CryptoProvider};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{
    self, ClientConfig, RootCertStore, ServerConfig, SignatureScheme, SupportedCipherSuite,
};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::config::Config;

/// How often, at most, a handshake looks at the certificate files' modification times.
pub const RELOAD_CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// How long a client may take over its TLS handshake before its connection is closed.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the accept loop waits after a failed accept (out of file descriptors, say) before
/// it tries again, so that it does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The first byte of every TLS connection: a handshake record.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// What a plain HTTP client gets from a TLS port: Go's `net/http` answer to the same mistake,
/// which etcd gives too, so `curl http://` on an https port says what is wrong.
const PLAIN_HTTP_ANSWER: &[u8] =
    b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n";

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {flag} {path}")]
    Read {
        flag: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{flag} {path} holds no PEM certificate{reason}")]
    NoCertificate {
        flag: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("{flag} {path} holds no usable PEM private key: {reason}")]
    BadKey {
        flag: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("the private key {key} does not belong to the certificate {cert}: {reason}")]
    KeyMismatch {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
    #[error("{flag} {path}: {reason}")]
    BadTrustedCa {
        flag: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("cannot build the TLS configuration: {0}")]
    Config(String),
}

/// One side's TLS files (client: `--cert-file` ...; peer: `--peer-cert-file` ...).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// `--cert-file` or `--peer-cert-file`: the certificate chain presented, leaf first.
    pub cert_file: PathBuf,
    /// `--key-file` or `--peer-key-file`: the certificate's private key.
    pub key_file: PathBuf,
    /// `--trusted-ca-file` or `--peer-trusted-ca-file`: the CA that clients' certificates (with
    /// `client_cert_auth`) and, on the peer side, other members' server certificates must come
    /// from.
    pub trusted_ca_file: Option<PathBuf>,
    /// `--client-cert-auth` or `--peer-client-cert-auth`: refuse, at the handshake, a client
    /// without a certificate from `trusted_ca_file`.
    pub client_cert_auth: bool,
    /// "" or "peer-": the flags' prefix, for messages.
    pub prefix: &'static str,
}

/// The TLS that a member serves and dials with, built once from its [`Config`].
#[derive(Clone, Default)]
pub struct ServingTls {
    /// For the `https://` client listeners.
    pub client: Option<TlsAcceptor>,
    /// For the `https://` peer listeners.
    pub peer: Option<TlsAcceptor>,
    /// For the channels to `https://` peer URLs: the peer CA, and the peer certificate as a
    /// client certificate.
    pub peer_client: Option<Arc<ClientConfig>>,
}

impl ServingTls {
    /// Reads every configured file now, so that a missing or bad one stops the start.
    pub fn from_config(config: &Config) -> Result<ServingTls, TlsError> {
        let provider = provider(&config.cipher_suites)?;
        let mut tls = ServingTls::default();
        if let Some(files) = &config.client_tls {
            let cert = Arc::new(ReloadingCert::open(files, provider.clone())?);
            let alpn = [b"h2".to_vec(), b"http/1.1".to_vec()];
            tls.client = Some(TlsAcceptor::from(server_config(
                files, &provider, cert, &alpn,
            )?));
        }
        if let Some(files) = &config.peer_tls {
            // One reloading certificate serves both directions: the peer certificate is the
            // server certificate of the peer listener and the client one of the peer channels.
            let cert = Arc::new(ReloadingCert::open(files, provider.clone())?);
            let alpn = [b"h2".to_vec()];
            tls.peer = Some(TlsAcceptor::from(server_config(
                files,
                &provider,
                cert.clone(),
                &alpn,
            )?));
            tls.peer_client = Some(peer_client_config(files, &provider, cert)?);
        }
        Ok(tls)
    }
}

/// The TLS protocol versions offered: etcd's minimum is TLS 1.2, and rustls has nothing older.
static VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

fn server_config(
    files: &TlsFiles,
    provider: &Arc<CryptoProvider>,
    cert: Arc<ReloadingCert>,
    alpn: &[Vec<u8>],
) -> Result<Arc<ServerConfig>, TlsError> {
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match (files.client_cert_auth, &files.trusted_ca_file) {
        (true, Some(ca)) => {
            let roots = trusted_roots(files.prefix, ca)?;
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| TlsError::Config(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        (true, None) => {
            return Err(TlsError::Config(format!(
                "--{p}client-cert-auth needs --{p}trusted-ca-file",
                p = files.prefix
            )))
        }
        (false, _) => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(cert);
    config.alpn_protocols = alpn.to_vec();
    Ok(Arc::new(config))
}

fn peer_client_config(
    files: &TlsFiles,
    provider: &Arc<CryptoProvider>,
    cert: Arc<ReloadingCert>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let ca = files.trusted_ca_file.as_ref().ok_or_else(|| {
        TlsError::Config(
            "--peer-trusted-ca-file is needed to check the other members' certificates".into(),
        )
    })?;
    let roots = trusted_roots(files.prefix, ca)?;
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_cert_resolver(cert);
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// The CA certificates of a trusted-CA file.
fn trusted_roots(prefix: &'static str, path: &Path) -> Result<RootCertStore, TlsError> {
    let flag = if prefix.is_empty() {
        "--trusted-ca-file"
    } else {
        "--peer-trusted-ca-file"
    };
    let certs = read_certificates(flag, path)?;
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots.add(cert).map_err(|e| TlsError::BadTrustedCa {
            flag,
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    }
    Ok(roots)
}

fn read_file(flag: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        flag,
        path: path.to_owned(),
        source,
    })
}

fn read_certificates(
    flag: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_file(flag, path)?;
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(&pem).collect();
    match certs {
        Ok(certs) if !certs.is_empty() => Ok(certs),
        Ok(_) => Err(TlsError::NoCertificate {
            flag,
            path: path.to_owned(),
            reason: String::new(),
        }),
        Err(e) => Err(TlsError::NoCertificate {
            flag,
            path: path.to_owned(),
            reason: format!(": {e}"),
        }),
    }
}

/// Reads a certificate chain and its key, and checks that they belong together.
fn load_certified_key(
    files: &TlsFiles,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let (cert_flag, key_flag) = if files.prefix.is_empty() {
        ("--cert-file", "--key-file")
    } else {
        ("--peer-cert-file", "--peer-key-file")
    };
    let chain = read_certificates(cert_flag, &files.cert_file)?;
    let bad_key = |reason: String| TlsError::BadKey {
        flag: key_flag,
        path: files.key_file.clone(),
        reason,
    };
    let key_pem = read_file(key_flag, &files.key_file)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| bad_key(e.to_string()))?;
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| bad_key(e.to_string()))?;
    let certified = CertifiedKey::new(chain, signing_key);
    // A rotation that has replaced one file but not yet the other lands here, and the old
    // pair stays in use until both are new.
    // (A key type that cannot tell its public key is let through, as rustls's own
    // `CertifiedKey::from_der` does.)
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Ok(certified)
        }
        Err(e) => Err(TlsError::KeyMismatch {
            cert: files.cert_file.clone(),
            key: files.key_file.clone(),
            reason: e.to_string(),
        }),
    }
}

/// What identifies a version of a file without reading it: its modification time and length.
type FileStamp = Option<(SystemTime, u64)>;

fn stamp(path: &Path) -> FileStamp {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// A certificate and key read from their files, and read again when the files change:
/// etcd reloads its certificates at each handshake, so a rotation needs no restart. This reads
/// them only when a handshake finds that one of the files' modification time or length changed,
/// looking at most every [`RELOAD_CHECK_INTERVAL`]. A pair that fails to load (a half-finished
/// rotation, a bad file) is reported and the previous one kept.
#[derive(Debug)]
pub struct ReloadingCert {
    files: TlsFiles,
    provider: Arc<CryptoProvider>,
    state: Mutex<LoadedCert>,
}

#[derive(Debug)]
struct LoadedCert {
    key: Arc<CertifiedKey>,
    /// The files' stamps when `key` was read.
    stamps: (FileStamp, FileStamp),
    checked: Instant,
}

impl ReloadingCert {
    /// Reads the pair now: a start with bad files fails here.
    pub fn open(files: &TlsFiles, provider: Arc<CryptoProvider>) -> Result<Self, TlsError> {
        // Stamps first: a change after them is seen at the next check.
        let stamps = (stamp(&files.cert_file), stamp(&files.key_file));
        let key = load_certified_key(files, &provider)?;
        Ok(ReloadingCert {
            files: files.clone(),
            provider,
            state: Mutex::new(LoadedCert {
                key: Arc::new(key),
                stamps,
                checked: Instant::now(),
            }),
        })
    }

    /// The pair to present now, read again first if the files changed.
    pub fn current(&self) -> Arc<CertifiedKey> {
        let mut state = self.state.lock();
        if state.checked.elapsed() >= RELOAD_CHECK_INTERVAL {
            state.checked = Instant::now();
            let stamps = (stamp(&self.files.cert_file), stamp(&self.files.key_file));
            if stamps != state.stamps {
                match load_certified_key(&self.files, &self.provider) {
                    Ok(key) => {
                        tracing::info!(
                            cert = %self.files.cert_file.display(),
                            "TLS certificate changed on disk; serving the new one"
                        );
                        state.key = Arc::new(key);
                        state.stamps = stamps;
                    }
                    // The stamps stay old, so the next check tries again.
                    Err(e) => tracing::warn!(
                        "TLS certificate files changed but cannot be loaded; keeping the \
                         previous certificate: {}",
                        crate::error::chain(&e)
                    ),
                }
            }
        }
        state.key.clone()
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

impl rustls::client::ResolvesClientCert for ReloadingCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The suites of `--cipher-suites` (etcd's names), or `Err` with the reason a name is refused.
/// Empty: rustls's defaults.
fn provider(names: &[String]) -> Result<Arc<CryptoProvider>, TlsError> {
    let mut provider = ring_provider();
    if !names.is_empty() {
        let chosen = names
            .iter()
            .map(|name| cipher_suite(name))
            .collect::<Result<Vec<_>, _>>()
            .map_err(TlsError::Config)?;
        let names_tls13 = chosen.iter().any(|s| s.tls13().is_some());
        let named =
            |suite: &SupportedCipherSuite| chosen.iter().any(|c| c.suite() == suite.suite());
        provider.cipher_suites.retain(|suite| {
            if suite.tls13().is_some() && !names_tls13 {
                // As in Go (and so etcd): the list chooses among TLS 1.2's suites only.
                true
            } else {
                named(suite)
            }
        });
    }
    Ok(Arc::new(provider))
}

/// rustls's ring provider with its defaults. rustls 0.23.48 deprecates it in favour of
/// aws-lc-rs, which offers post-quantum key exchange but builds a C library; ring's classical
/// key exchange is what etcd (Go's crypto/tls before 1.24) offers too.
#[allow(deprecated)]
fn ring_provider() -> CryptoProvider {
    ring::default_provider()
}

/// The names `--cipher-suites` accepts, as etcd spells them (Go's `crypto/tls` names).
pub const CIPHER_SUITE_NAMES: &[&str] = &[
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
];

/// Suites Go implements that rustls does not offer: no forward secrecy, CBC, RC4 or 3DES
/// (etcd itself refuses the last two). Named so that the refusal says why, rather than
/// "unknown".
const REFUSED_SUITE_NAMES: &[&str] = &[
    "TLS_RSA_WITH_RC4_128_SHA",
    "TLS_RSA_WITH_3DES_EDE_CBC_SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA256",
    "TLS_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_RC4_128_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_RC4_128_SHA",
    "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256",
];

/// The rustls suite of one of etcd's cipher suite names.
pub fn cipher_suite(name: &str) -> Result<SupportedCipherSuite, String> {
    use tokio_rustls::rustls::crypto::ring::cipher_suite as s;
    Ok(match name {
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256" => s::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384" => s::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305"
        | "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256" => {
            s::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
        }
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256" => s::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384" => s::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305" | "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256" => {
            s::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
        }
        "TLS_AES_128_GCM_SHA256" => s::TLS13_AES_128_GCM_SHA256,
        "TLS_AES_256_GCM_SHA384" => s::TLS13_AES_256_GCM_SHA384,
        "TLS_CHACHA20_POLY1305_SHA256" => s::TLS13_CHACHA20_POLY1305_SHA256,
        // etcd's own refusal of RC4 and 3DES.
        insecure if insecure.contains("RC4") || insecure.contains("3DES") => {
            return Err(format!("insecure TLS cipher suite {insecure:?}"))
        }
        refused if REFUSED_SUITE_NAMES.contains(&refused) => {
            return Err(format!(
                "TLS cipher suite {refused:?} is not offered (no forward secrecy, or CBC); \
                 choose among {}",
                CIPHER_SUITE_NAMES.join(", ")
            ))
        }
        // etcd's text (`tlsutil.GetCipherSuite` failing in `embed.Config`).
        unknown => return Err(format!("unexpected TLS cipher suite {unknown:?}")),
    })
}

/// An accepted connection, plain or TLS; tonic serves either (through `AuthorityFix` on the
/// client port).
pub enum Conn {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            Conn::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            Conn::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
            Conn::Tls(stream) => Pin::new(stream.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Plain(stream) => stream.is_write_vectored(),
            Conn::Tls(stream) => stream.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(stream) => Pin::new(stream).poll_flush(cx),
            Conn::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            Conn::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }
}

/// What tonic puts in each request's extensions about its connection: the TCP addresses, and
/// the common name of the client's certificate, which names the user of calls without a token
/// when `--client-cert-auth` is on (etcd's `AuthInfoFromTLS`).
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub tcp: TcpConnectInfo,
    /// The subject's common name of the certificate the client presented, if any (only a
    /// certificate from `--trusted-ca-file` passes the handshake).
    pub common_name: Option<String>,
}

impl Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        match self {
            Conn::Plain(stream) => ConnInfo {
                tcp: stream.connect_info(),
                common_name: None,
            },
            Conn::Tls(stream) => {
                let (tcp, session) = stream.get_ref();
                let common_name = session
                    .peer_certificates()
                    .and_then(|chain| chain.first())
                    .and_then(|leaf| common_name(leaf.as_ref()));
                ConnInfo {
                    tcp: tcp.connect_info(),
                    common_name,
                }
            }
        }
    }
}

/// The subject's common name (OID 2.5.4.3) of the DER certificate `der`, if it has one that is
/// UTF-8; anything malformed is none.
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, certificate, _) = der_element(der)?;
    let (_, tbs, _) = der_element(certificate)?;
    // tbsCertificate: [0] version (optional), serialNumber, signature, issuer, validity,
    // subject, ...
    let (tag, _, after_version) = der_element(tbs)?;
    let mut fields = if tag == 0xa0 { after_version } else { tbs };
    for _ in 0..4 {
        fields = der_element(fields)?.2;
    }
    let (_, mut names, _) = der_element(fields)?;
    while !names.is_empty() {
        let (_, mut set, rest) = der_element(names)?;
        names = rest;
        while !set.is_empty() {
            let (_, attribute, rest) = der_element(set)?;
            set = rest;
            let (_, oid, value) = der_element(attribute)?;
            if oid == [0x55, 0x04, 0x03] {
                let (_, text, _) = der_element(value)?;
                return String::from_utf8(text.to_vec()).ok();
            }
        }
    }
    None
}

/// The first DER element of `input`: its tag, its contents, and what follows it.
fn der_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let bytes = usize::from(first & 0x7f);
        if bytes == 0 || bytes > 4 || rest.len() < bytes {
            return None;
        }
        let len = rest[..bytes]
            .iter()
            .fold(0usize, |len, b| (len << 8) | usize::from(*b));
        (len, &rest[bytes..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// The connections accepted on `listener`: plain, or, with `tls`, those whose TLS handshake
/// succeeded, until `shutdown`. Failed handshakes are logged and dropped; tonic never sees them.
pub fn incoming(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    shutdown: CancellationToken,
) -> impl Stream<Item = io::Result<Conn>> + Send + 'static {
    match tls {
        None => rampart_h2_compat::accepted(listener)
            .map(|accepted| accepted.map(Conn::Plain))
            .left_stream(),
        Some(acceptor) => handshaken(listener, acceptor, shutdown).right_stream(),
    }
}

/// Accepts in a task of its own and hands each connection to a task for its handshake, so that
/// a slow handshake delays no other client; the finished ones come out of the stream.
fn handshaken(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    shutdown: CancellationToken,
) -> impl Stream<Item = io::Result<Conn>> + Send + 'static {
    let (done, ready) = tokio::sync::mpsc::channel::<io::Result<Conn>>(64);
    tokio::spawn(async move {
        let accepted = rampart_h2_compat::accepted(listener);
        tokio::pin!(accepted);
        loop {
            let next = tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = done.closed() => return,
                next = accepted.next() => next,
            };
            let stream = match next {
                None => return,
                Some(Ok(stream)) => stream,
                Some(Err(e)) => {
                    tracing::warn!("cannot accept a connection: {e}");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            let acceptor = acceptor.clone();
            let done = done.clone();
            tokio::spawn(async move {
                let from = stream.peer_addr().ok();
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(&acceptor, stream)).await {
                    Ok(Ok(conn)) => {
                        // The server stopped meanwhile: the connection just closes.
                        let _ = done.send(Ok(conn)).await;
                    }
                    Ok(Err(e)) => tracing::info!(?from, "TLS handshake refused: {e}"),
                    Err(_) => tracing::info!(
                        ?from,
                        "TLS handshake not finished after {HANDSHAKE_TIMEOUT:?}; closed"
                    ),
                }
            });
        }
    });
    futures::stream::unfold(ready, |mut ready| async move {
        let conn = ready.recv().await?;
        Some((conn, ready))
    })
}

/// One server-side handshake. A client that opens with anything but a TLS record (plain HTTP
/// or gRPC on an https port) gets [`PLAIN_HTTP_ANSWER`] and a closed connection at once.
async fn handshake(acceptor: &TlsAcceptor, mut stream: TcpStream) -> io::Result<Conn> {
    let mut first = [0u8; 1];
    let seen = stream.peek(&mut first).await?;
    if seen == 1 && first[0] != TLS_HANDSHAKE_RECORD {
        // Best effort: the client may already be gone.
        let _ = stream.write_all(PLAIN_HTTP_ANSWER).await;
        let _ = stream.shutdown().await;
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the client spoke plain text, not TLS",
        ));
    }
    let tls = acceptor.accept(stream).await?;
    Ok(Conn::Tls(Box::new(tls)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_common_name_is_read_from_a_certificate() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "Rampart tests");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "alice");
        let der = params.self_signed(&key).unwrap().der().to_vec();
        assert_eq!(common_name(&der).as_deref(), Some("alice"));
        let mut nameless = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
        nameless.distinguished_name = rcgen::DistinguishedName::new();
        let cert = nameless.self_signed(&key).unwrap();
        assert_eq!(common_name(cert.der()), None);
        // Cut short anywhere, or not DER at all: no name, no panic.
        for end in 0..der.len() {
            let _ = common_name(&der[..end]);
        }
        assert_eq!(common_name(b"\x30\x84\xff\xff\xff\xff"), None);
    }

    #[test]
    fn cipher_suites_take_etcds_names_and_refuse_others() {
        for name in CIPHER_SUITE_NAMES {
            assert!(cipher_suite(name).is_ok(), "{name}");
        }
        let err = cipher_suite("TLS_RSA_WITH_AES_128_CBC_SHA").unwrap_err();
        assert!(err.contains("not offered"), "{err}");
        let err = cipher_suite("TLS_RSA_WITH_RC4_128_SHA").unwrap_err();
        assert_eq!(
            err,
            "insecure TLS cipher suite \"TLS_RSA_WITH_RC4_128_SHA\""
        );
        let err = cipher_suite("TLS_MADE_UP").unwrap_err();
        assert_eq!(err, "unexpected TLS cipher suite \"TLS_MADE_UP\"");
    }

    #[test]
    fn a_tls12_list_keeps_tls13_and_narrows_tls12() {
        let provider = provider(&["TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256".to_string()]).unwrap();
        let tls12: Vec<_> = provider
            .cipher_suites
            .iter()
            .filter(|s| s.tls13().is_none())
            .collect();
        assert_eq!(tls12.len(), 1);
        assert_eq!(
            provider
                .cipher_suites
                .iter()
                .filter(|s| s.tls13().is_some())
                .count(),
            ring_provider()
                .cipher_suites
                .iter()
                .filter(|s| s.tls13().is_some())
                .count()
        );
    }
}
