//! Channels to `https://` peer URLs: the TCP connection and the TLS handshake, made by a
//! connector of our own so that the rustls configuration (the peer CA, and the peer
//! certificate presented as a client certificate, reloaded when its files change) is the
//! member's own rather than one tonic builds from fixed bytes.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;

use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::ClientConfig;
use tokio_rustls::TlsConnector;
use tonic::codegen::http::Uri;

/// Marks a failed connection attempt in a call's error text: nothing was sent (see
/// `PeerNetwork::call`). hyper's own connector says "tcp connect error" too.
pub(crate) const TCP_CONNECT_ERROR: &str = "tcp connect error";
/// Marks a failed TLS handshake in a call's error text: nothing was sent either.
pub(crate) const TLS_HANDSHAKE_ERROR: &str = "tls handshake error";

/// What tonic dials for an `https://` peer URL: the same URL with `http://`, so that tonic,
/// which knows nothing of our TLS, does not refuse the scheme, and the connector that does the
/// TLS itself; and the name the peer's certificate must carry.
pub(crate) struct TlsTarget {
    pub(crate) endpoint_url: String,
    pub(crate) connector: PeerConnector,
}

impl TlsTarget {
    /// The target of the URL `https://{host_port}`.
    pub(crate) fn new(host_port: &str, config: &Arc<ClientConfig>) -> Result<TlsTarget, String> {
        let endpoint_url = format!("http://{host_port}");
        let name = server_name(&endpoint_url)?;
        Ok(TlsTarget {
            endpoint_url,
            connector: PeerConnector {
                tls: TlsConnector::from(config.clone()),
                name,
            },
        })
    }
}

/// The name a peer's certificate is checked against: the URL's host, a DNS name or an IP
/// address (a certificate for an address needs it as an IP subject alternative name).
fn server_name(url: &str) -> Result<ServerName<'static>, String> {
    let uri: Uri = url
        .parse()
        .map_err(|e| format!("invalid peer URL {url}: {e}"))?;
    let host = uri
        .host()
        .ok_or_else(|| format!("peer URL {url} has no host"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string())
        .map_err(|e| format!("peer URL {url}: {host:?} is not a valid TLS server name: {e}"))
}

/// Connects to a peer and makes the TLS handshake; tonic's `Endpoint` (its connect timeout
/// included) wraps it.
#[derive(Clone)]
pub(crate) struct PeerConnector {
    tls: TlsConnector,
    name: ServerName<'static>,
}

type Connecting = Pin<Box<dyn Future<Output = io::Result<TokioIo<TlsStream<TcpStream>>>> + Send>>;

impl tower::Service<Uri> for PeerConnector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = io::Error;
    type Future = Connecting;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Connecting {
        let tls = self.tls.clone();
        let name = self.name.clone();
        Box::pin(async move {
            let tagged =
                |what: &str, e: io::Error| io::Error::new(e.kind(), format!("{what}: {e}"));
            let host = uri.host().unwrap_or_default();
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let port = uri.port_u16().unwrap_or(80);
            // The name resolves at each connection: a member's address may change (a pod
            // rescheduled) while its URL does not.
            let tcp = TcpStream::connect((host, port))
                .await
                .map_err(|e| tagged(TCP_CONNECT_ERROR, e))?;
            // As tonic's own connector: a small peer message must not wait for a delayed ACK.
            tcp.set_nodelay(true)
                .map_err(|e| tagged(TCP_CONNECT_ERROR, e))?;
            let stream = tls
                .connect(name, tcp)
                .await
                .map_err(|e| tagged(TLS_HANDSHAKE_ERROR, e))?;
            Ok(TokioIo::new(stream))
        })
    }
}
