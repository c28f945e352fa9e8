//! Decoding a connection's header blocks, fixing `:authority`, and encoding them again.
//!
//! The first header block decides. If its `:authority` is a URL, the connection comes from a
//! client like etcdctl 3.4 that sends one on every request, and every block of the connection
//! is re-encoded: rewriting a single field changes the bytes the server's HPACK decoder sees,
//! so the two dynamic tables (the client's encoder's, mirrored here by `decoder`, and the
//! server's decoder's) could not be kept in step field by field. Instead the server's table is
//! kept empty: the first re-encoded block announces a dynamic table size of 0, and `encoder`
//! works with a table of size 0, so it only ever refers to the static table and anything it
//! marks for indexing is evicted at once on both sides.
//!
//! If the first block's authority is fine, the block goes to the server as it came and the
//! connection needs nothing more from this module: gRPC clients derive `:authority` from the
//! channel's target, so it is the same on every request. (Should a later block on such a
//! connection carry a URL after all, the server rejects that one request, as it would
//! without the adapter.) This keeps ordinary clients off the slow path: loona-hpack's Huffman
//! decoder costs tens of microseconds per string.

use bytes::{BufMut, BytesMut};
use loona_hpack::encoder::encode_integer_into;
use loona_hpack::{Decoder, Encoder};

use crate::error::Error;
use crate::frame::{
    FrameHeader, FLAG_END_HEADERS, FLAG_END_STREAM, HEADER_LEN, MIN_MAX_FRAME_SIZE,
    TYPE_CONTINUATION, TYPE_HEADERS,
};

/// The server's SETTINGS_HEADER_TABLE_SIZE: the largest dynamic table the client's encoder may
/// use. tonic leaves h2 at the RFC 9113 default, so a client announcing more is misbehaving
/// (and would make `decoder` hold more of its data).
const SERVER_HEADER_TABLE_SIZE: usize = 4096;

/// Bound on one header block, both as received (HEADERS plus CONTINUATIONs) and as decoded
/// (RFC 9113 §6.5.2 sizing: name + value + 32 per field). hyper's server refuses header lists
/// over 16 KiB anyway; this only stops one connection from making the adapter buffer without
/// limit, or from amplifying a small block of indexed references into a huge one.
pub(crate) const MAX_HEADER_BLOCK_BYTES: usize = 1 << 20;

const AUTHORITY: &[u8] = b":authority";

/// What the rest of the connection needs, decided by its first header block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// Keep parsing: every later header block is re-encoded too.
    Rewrite,
    /// The block was passed on as it came; everything after it can pass through unparsed.
    PassThrough,
}

/// The HPACK state of one connection's client-to-server direction.
pub(crate) struct HeaderBlockRewriter {
    /// Mirrors the client's encoder: its dynamic table must see every block, in order.
    decoder: Decoder<'static>,
    /// Encodes for the server with an always-empty dynamic table.
    encoder: Encoder<'static>,
    /// Whether an earlier block was re-encoded, so this connection's blocks all are.
    rewriting: bool,
    /// The block being encoded, kept to reuse its allocation.
    encoded: Vec<u8>,
}

impl HeaderBlockRewriter {
    pub(crate) fn new() -> Self {
        let mut decoder = Decoder::new();
        decoder.set_max_allowed_table_size(SERVER_HEADER_TABLE_SIZE);
        let mut encoder = Encoder::new();
        encoder.set_max_table_size(0);
        HeaderBlockRewriter {
            decoder,
            encoder,
            rewriting: false,
            encoded: Vec::new(),
        }
    }

    /// Decodes one complete header block and appends to `out` the HEADERS frame (and, past
    /// [`MIN_MAX_FRAME_SIZE`] bytes, CONTINUATION frames) that carry it: re-encoded, with the
    /// same fields in the same order and only `:authority` changed, or, for the first block of a
    /// connection that needs no fix, as it came.
    pub(crate) fn rewrite(
        &mut self,
        stream_id: u32,
        end_stream: bool,
        block: &[u8],
        out: &mut BytesMut,
    ) -> Result<Next, Error> {
        let HeaderBlockRewriter {
            decoder,
            encoder,
            rewriting,
            encoded,
        } = self;
        encoded.clear();
        let mut write_error = None;
        if !*rewriting {
            // This block may become the first one re-encoded: it then empties the server's
            // table with a dynamic table size update (pattern 001, 5-bit prefix, RFC 7541 §6.3).
            write_error = encode_integer_into(0, 5, 0x20, encoded).err();
        }
        let mut fixed_authority = false;
        let mut list_size = 0usize;
        decoder
            .decode_with_cb(block, |name, value| {
                list_size = list_size.saturating_add(name.len() + value.len() + 32);
                if list_size > MAX_HEADER_BLOCK_BYTES || write_error.is_some() {
                    return;
                }
                let value = if *name == *AUTHORITY {
                    let authority = strip_scheme(&value);
                    fixed_authority |= authority.len() != value.len();
                    authority
                } else {
                    &value
                };
                if let Err(e) = encoder.encode_header_into((&name, value), encoded) {
                    write_error = Some(e);
                }
            })
            .map_err(|cause| Error::Hpack { stream_id, cause })?;
        if list_size > MAX_HEADER_BLOCK_BYTES {
            return Err(Error::HeaderBlockTooLarge {
                stream_id,
                limit: MAX_HEADER_BLOCK_BYTES,
            });
        }
        if let Some(cause) = write_error {
            return Err(Error::Encode { stream_id, cause });
        }
        if !*rewriting && !fixed_authority {
            put_frames(stream_id, end_stream, block, out);
            return Ok(Next::PassThrough);
        }
        *rewriting = true;
        put_frames(stream_id, end_stream, encoded, out);
        Ok(Next::Rewrite)
    }
}

/// Turns the URL grpc-go puts in `:authority` for a passthrough target (`http://host:port`)
/// into the authority it names (`host:port`); any other value is kept.
fn strip_scheme(value: &[u8]) -> &[u8] {
    let Some(scheme_end) = value.windows(3).position(|w| w == b"://") else {
        return value;
    };
    let rest = &value[scheme_end + 3..];
    match rest.iter().position(|&b| b == b'/') {
        Some(path_start) => &rest[..path_start],
        None => rest,
    }
}

/// Appends `block` as a HEADERS frame followed by as many CONTINUATION frames as needed.
fn put_frames(stream_id: u32, end_stream: bool, block: &[u8], out: &mut BytesMut) {
    let frames = block.len().div_ceil(MIN_MAX_FRAME_SIZE).max(1);
    out.reserve(block.len() + frames * HEADER_LEN);
    for i in 0..frames {
        let chunk = &block[i * MIN_MAX_FRAME_SIZE..block.len().min((i + 1) * MIN_MAX_FRAME_SIZE)];
        let (kind, mut flags) = if i == 0 {
            let end_stream = if end_stream { FLAG_END_STREAM } else { 0 };
            (TYPE_HEADERS, end_stream)
        } else {
            (TYPE_CONTINUATION, 0)
        };
        if i + 1 == frames {
            flags |= FLAG_END_HEADERS;
        }
        let header = FrameHeader {
            len: chunk.len(),
            kind,
            flags,
            stream_id,
        };
        out.put_slice(&header.encode());
        out.put_slice(chunk);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strip_scheme_keeps_the_authority() {
        let cases: [(&[u8], &[u8]); 6] = [
            (b"http://127.0.0.1:2379", b"127.0.0.1:2379"),
            (b"https://etcd.example:2379/", b"etcd.example:2379"),
            (b"unix://socket/path", b"socket"),
            (b"127.0.0.1:2379", b"127.0.0.1:2379"),
            (b"localhost", b"localhost"),
            (b"http://", b""),
        ];
        for (input, want) in cases {
            assert_eq!(
                strip_scheme(input),
                want,
                "input {:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn an_empty_block_still_gets_one_headers_frame() {
        let mut out = BytesMut::new();
        put_frames(3, true, &[], &mut out);
        assert_eq!(
            &out[..],
            &[
                0,
                0,
                0,
                TYPE_HEADERS,
                FLAG_END_STREAM | FLAG_END_HEADERS,
                0,
                0,
                0,
                3
            ]
        );
    }
}
