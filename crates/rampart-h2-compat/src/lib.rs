//! Lets Rampart's gRPC server accept the HTTP/2 requests of etcdctl 3.4's per-endpoint calls.
//!
//! For `endpoint status`, `endpoint hashkv`, `defrag` and `snapshot save`, etcdctl 3.4 dials
//! each endpoint with grpc-go's passthrough resolver, which puts the whole endpoint URL in the
//! `:authority` pseudo-header (`http://127.0.0.1:2379`). etcd's grpc-go server accepts any
//! authority; the h2 crate under tonic refuses that one as a malformed URI and resets the
//! stream with PROTOCOL_ERROR, so the commands fail. Rather than fork h2, this crate sits
//! between the accepted socket and tonic: [`AuthorityFix`] parses the client-to-server byte
//! stream into frames, passes every frame but HEADERS and CONTINUATION through untouched, and
//! re-encodes each header block with the authority cut down to `host:port`. A connection whose
//! first header block has an acceptable authority is left alone after that block, so ordinary
//! clients pay for one decoded block per connection. The server-to-client direction is not
//! touched.
//!
//! Layout:
//! - `frame`: the 9-byte frame header and the frame types and flags that matter here.
//! - `inbound`: the frame parser that decides what passes through and what is rewritten.
//! - `header_block`: HPACK decoding (tracking the client's dynamic table), the authority fix,
//!   re-encoding with an empty dynamic table, and the first block's verdict.
//! - `authority_fix`: [`AuthorityFix`], the `AsyncRead + AsyncWrite` wrapper tonic serves.
//!
//! The crate depends on tonic only for its `Connected` trait and must not depend on any other
//! Rampart crate.

mod authority_fix;
mod error;
mod frame;
#[doc(hidden)]
pub mod fuzzing;
mod header_block;
mod inbound;

use std::io;

use tokio::net::{TcpListener, TcpStream};
use tokio_stream::{Stream, StreamExt};

pub use authority_fix::AuthorityFix;
pub use error::Error;

/// The connections accepted on `listener`, with TCP_NODELAY set as tonic's own listener does
/// (a small reply must not wait for the peer's delayed ACK). Also for servers that need no
/// [`AuthorityFix`], such as Rampart's peer listener.
pub fn accepted(
    listener: TcpListener,
) -> impl Stream<Item = io::Result<TcpStream>> + Send + 'static {
    tokio_stream::wrappers::TcpListenerStream::new(listener).map(|accepted| {
        let stream = accepted?;
        if let Err(e) = stream.set_nodelay(true) {
            tracing::warn!("cannot set TCP_NODELAY on an accepted connection: {e}");
        }
        Ok(stream)
    })
}

/// The connections [`accepted`] on `listener`, wrapped in [`AuthorityFix`]; for
/// `serve_with_incoming_shutdown`.
pub fn incoming(
    listener: TcpListener,
) -> impl Stream<Item = io::Result<AuthorityFix<TcpStream>>> + Send + 'static {
    accepted(listener).map(|stream| Ok(AuthorityFix::new(stream?)))
}
