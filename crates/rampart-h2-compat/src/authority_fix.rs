//! The connection wrapper the gRPC server reads from and writes to.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

use crate::error::Error;
use crate::inbound::{InboundParser, Step};

/// How much to ask the socket for at a time; one maximum-size default frame plus its header.
const READ_CHUNK: usize = 16 * 1024 + 9;

/// A server-side connection on which a client that sends `:authority` as
/// `scheme://host:port[/path]` has it replaced by `host:port`. Such a connection has all its
/// header blocks re-encoded; every other frame the client sends reaches the server unchanged,
/// in order. A connection whose first header block needs no fix passes through untouched from
/// then on. The server-to-client direction is never touched.
pub struct AuthorityFix<IO> {
    io: IO,
    /// Bytes read from the client and not yet handed to the server.
    input: BytesMut,
    /// Re-encoded header frames not yet handed to the server.
    output: BytesMut,
    /// How many of the next `input` bytes (buffered or still to be read) pass through as they
    /// are: the rest of the preface or of a non-header frame, or `usize::MAX` once the whole
    /// connection passes through.
    forward: usize,
    parser: InboundParser,
    /// Set once the input could not be parsed; the connection is then beyond repair.
    failed: bool,
    /// Why parsing failed, until a read has reported it.
    error: Option<Error>,
}

impl<IO> AuthorityFix<IO> {
    pub fn new(io: IO) -> Self {
        AuthorityFix {
            io,
            input: BytesMut::new(),
            output: BytesMut::new(),
            forward: 0,
            parser: InboundParser::new(),
            failed: false,
            error: None,
        }
    }

    pub fn get_ref(&self) -> &IO {
        &self.io
    }
}

impl<IO: AsyncRead + Unpin> AuthorityFix<IO> {
    /// Reads from the client into `input`; `Ok(0)` is the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
        self.input.reserve(want.max(READ_CHUNK));
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.input)
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for AuthorityFix<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // Fill `buf` with as much as is ready without touching the socket; once something is
        // in it, return rather than wait for the socket.
        let start = buf.filled().len();
        loop {
            if buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            if !this.output.is_empty() {
                let n = this.output.len().min(buf.remaining());
                buf.put_slice(&this.output[..n]);
                this.output.advance(n);
                continue;
            }
            let mut want = 0;
            if this.forward > 0 {
                if !this.input.is_empty() {
                    let n = this.forward.min(this.input.len()).min(buf.remaining());
                    buf.put_slice(&this.input[..n]);
                    this.input.advance(n);
                    this.forward -= n;
                    continue;
                }
                if buf.filled().len() > start {
                    return Poll::Ready(Ok(()));
                }
                if buf.remaining() <= this.forward {
                    // Whatever the socket gives fits in what passes through: read straight
                    // into the server's buffer. Once the connection passes through for good,
                    // every read takes this path and the buffers are no longer needed.
                    if this.forward == usize::MAX && this.input.capacity() != 0 {
                        this.input = BytesMut::new();
                        this.output = BytesMut::new();
                    }
                    ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
                    this.forward -= buf.filled().len() - start;
                    return Poll::Ready(Ok(()));
                }
            } else {
                if this.failed {
                    // Whatever was parsed before the error still goes to the server first.
                    if buf.filled().len() > start {
                        return Poll::Ready(Ok(()));
                    }
                    let error = match this.error.take() {
                        Some(e) => e.into(),
                        None => io::Error::new(
                            io::ErrorKind::InvalidData,
                            "HTTP/2 input already rejected on this connection",
                        ),
                    };
                    return Poll::Ready(Err(error));
                }
                match this.parser.step(&mut this.input, &mut this.output) {
                    Ok(Step::Forward(n)) => {
                        this.forward = n;
                        continue;
                    }
                    Ok(Step::Consumed) => continue,
                    Ok(Step::NeedMore(total)) => want = total - this.input.len(),
                    Err(e) => {
                        this.failed = true;
                        this.error = Some(e);
                        continue;
                    }
                }
                if buf.filled().len() > start {
                    return Poll::Ready(Ok(()));
                }
            }
            // Either the rest of a forwarded frame or the rest of a header frame is unread.
            // At the end of the stream a partial frame in `input` is dropped: the client ended
            // the connection in the middle of it, and the server sees the end at a frame boundary.
            if ready!(this.poll_fill(cx, want))? == 0 {
                return Poll::Ready(Ok(()));
            }
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// The wrapped connection's own connect info, so a service's `Request::remote_addr()` still
/// sees the client's address.
impl<IO: Connected> Connected for AuthorityFix<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}
