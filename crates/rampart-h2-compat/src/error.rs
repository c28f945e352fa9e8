//! Why the adapter gave up on a connection.

use loona_hpack::decoder::DecoderError;

/// A client-to-server byte stream the adapter cannot parse. It reaches the server as the
/// source of an [`std::io::ErrorKind::InvalidData`] read error, which closes the connection;
/// the server's own HTTP/2 stack would have rejected the same input.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "HEADERS frame on stream {stream_id} is too short for its padding and priority fields"
    )]
    MalformedHeadersFrame { stream_id: u32 },

    #[error("expected a CONTINUATION frame on stream {expected}, got type {kind:#x} on stream {stream_id}")]
    ExpectedContinuation {
        expected: u32,
        kind: u8,
        stream_id: u32,
    },

    #[error("CONTINUATION frame on stream {stream_id} outside a header block")]
    UnexpectedContinuation { stream_id: u32 },

    #[error("header block on stream {stream_id} exceeds {limit} bytes")]
    HeaderBlockTooLarge { stream_id: u32, limit: usize },

    // The cause is in the message rather than the `source()` chain: the error reaches logs
    // wrapped in an `io::Error`, whose `Display` shows only this message.
    #[error("HPACK decoding failed on stream {stream_id}: {cause}")]
    Hpack { stream_id: u32, cause: DecoderError },

    #[error("re-encoding the header block on stream {stream_id} failed: {cause}")]
    Encode {
        stream_id: u32,
        cause: std::io::Error,
    },
}

impl From<Error> for std::io::Error {
    fn from(e: Error) -> Self {
        std::io::Error::new(std::io::ErrorKind::InvalidData, e)
    }
}
