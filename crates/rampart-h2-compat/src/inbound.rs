//! The client-to-server frame parser: which input bytes pass through and which header blocks
//! are rewritten.

use bytes::{Buf, BytesMut};

use crate::error::Error;
use crate::frame::{
    FrameHeader, FLAG_END_HEADERS, FLAG_END_STREAM, FLAG_PADDED, FLAG_PRIORITY, HEADER_LEN,
    PREFACE, PRIORITY_LEN, TYPE_CONTINUATION, TYPE_HEADERS,
};
use crate::header_block::{HeaderBlockRewriter, Next, MAX_HEADER_BLOCK_BYTES};

/// What the caller should do after one [`InboundParser::step`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Pass the next `n` input bytes to the server unchanged, including ones not read yet;
    /// `usize::MAX` stands for the rest of the connection.
    Forward(usize),
    /// A header frame was taken from the input; any bytes it completed are in the output.
    Consumed,
    /// Read more: the next step needs at least this many input bytes buffered.
    NeedMore(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before the client connection preface.
    Preface,
    /// At a frame boundary.
    Frames,
    /// Everything else passes through: the first header block needed no fix, or the client
    /// did not open with the HTTP/2 preface (for the server to reject as it would without the
    /// adapter).
    Transparent,
}

/// An open header block: a HEADERS frame without END_HEADERS, awaiting CONTINUATION frames.
#[derive(Debug, Clone, Copy)]
struct OpenBlock {
    stream_id: u32,
    end_stream: bool,
}

pub(crate) struct InboundParser {
    state: State,
    open_block: Option<OpenBlock>,
    /// The fragments of `open_block` so far, kept to reuse the allocation.
    block: Vec<u8>,
    rewriter: HeaderBlockRewriter,
}

impl InboundParser {
    pub(crate) fn new() -> Self {
        InboundParser {
            state: State::Preface,
            open_block: None,
            block: Vec::new(),
            rewriter: HeaderBlockRewriter::new(),
        }
    }

    /// Looks at the start of `input`, which is at a frame boundary (or at the preface). Header
    /// frames are removed from `input` and their re-encoded block appended to `output`; every
    /// other frame is left in `input` and reported as [`Step::Forward`].
    pub(crate) fn step(
        &mut self,
        input: &mut BytesMut,
        output: &mut BytesMut,
    ) -> Result<Step, Error> {
        match self.state {
            State::Transparent => Ok(Step::Forward(usize::MAX)),
            State::Preface => {
                let seen = input.len().min(PREFACE.len());
                if input[..seen] != PREFACE[..seen] {
                    self.state = State::Transparent;
                    return Ok(Step::Forward(usize::MAX));
                }
                if seen < PREFACE.len() {
                    return Ok(Step::NeedMore(PREFACE.len()));
                }
                self.state = State::Frames;
                Ok(Step::Forward(PREFACE.len()))
            }
            State::Frames => {
                let Some(header) = input.first_chunk::<HEADER_LEN>().map(FrameHeader::parse) else {
                    return Ok(Step::NeedMore(HEADER_LEN));
                };
                let is_header_frame =
                    header.kind == TYPE_HEADERS || header.kind == TYPE_CONTINUATION;
                if !is_header_frame {
                    if let Some(open) = self.open_block {
                        // RFC 9113 §6.10: nothing may come between a header block's frames.
                        return Err(Error::ExpectedContinuation {
                            expected: open.stream_id,
                            kind: header.kind,
                            stream_id: header.stream_id,
                        });
                    }
                    return Ok(Step::Forward(HEADER_LEN + header.len));
                }
                if header.len > MAX_HEADER_BLOCK_BYTES {
                    return Err(Error::HeaderBlockTooLarge {
                        stream_id: header.stream_id,
                        limit: MAX_HEADER_BLOCK_BYTES,
                    });
                }
                let frame_len = HEADER_LEN + header.len;
                if input.len() < frame_len {
                    return Ok(Step::NeedMore(frame_len));
                }
                self.on_header_frame(header, &input[HEADER_LEN..frame_len], output)?;
                input.advance(frame_len);
                Ok(Step::Consumed)
            }
        }
    }

    fn on_header_frame(
        &mut self,
        header: FrameHeader,
        payload: &[u8],
        output: &mut BytesMut,
    ) -> Result<(), Error> {
        let end_headers = header.flags & FLAG_END_HEADERS != 0;
        if header.kind == TYPE_HEADERS {
            if let Some(open) = self.open_block {
                return Err(Error::ExpectedContinuation {
                    expected: open.stream_id,
                    kind: header.kind,
                    stream_id: header.stream_id,
                });
            }
            let fragment = headers_fragment(header, payload)?;
            let end_stream = header.flags & FLAG_END_STREAM != 0;
            if end_headers {
                let next = self
                    .rewriter
                    .rewrite(header.stream_id, end_stream, fragment, output)?;
                self.follow(next);
                return Ok(());
            }
            self.block.clear();
            self.block.extend_from_slice(fragment);
            self.open_block = Some(OpenBlock {
                stream_id: header.stream_id,
                end_stream,
            });
            return Ok(());
        }

        let open = match self.open_block {
            Some(open) if open.stream_id == header.stream_id => open,
            Some(open) => {
                return Err(Error::ExpectedContinuation {
                    expected: open.stream_id,
                    kind: header.kind,
                    stream_id: header.stream_id,
                })
            }
            None => {
                return Err(Error::UnexpectedContinuation {
                    stream_id: header.stream_id,
                })
            }
        };
        if self.block.len() + payload.len() > MAX_HEADER_BLOCK_BYTES {
            return Err(Error::HeaderBlockTooLarge {
                stream_id: header.stream_id,
                limit: MAX_HEADER_BLOCK_BYTES,
            });
        }
        self.block.extend_from_slice(payload);
        if end_headers {
            self.open_block = None;
            let next =
                self.rewriter
                    .rewrite(open.stream_id, open.end_stream, &self.block, output)?;
            self.follow(next);
        }
        Ok(())
    }

    fn follow(&mut self, next: Next) {
        if next == Next::PassThrough {
            self.state = State::Transparent;
            // Only the first block can pass through; nothing parsed is needed after it, so free
            // the block buffer and the mirrored dynamic table.
            self.block = Vec::new();
            self.rewriter = HeaderBlockRewriter::new();
        }
    }
}

/// The header block fragment of a HEADERS frame's payload, without its padding and priority
/// fields (RFC 9113 §6.2). Priority is advisory and h2 ignores it, so it is dropped.
fn headers_fragment(header: FrameHeader, payload: &[u8]) -> Result<&[u8], Error> {
    let malformed = || Error::MalformedHeadersFrame {
        stream_id: header.stream_id,
    };
    let (pad_len, rest) = if header.flags & FLAG_PADDED != 0 {
        let (&pad_len, rest) = payload.split_first().ok_or_else(malformed)?;
        (usize::from(pad_len), rest)
    } else {
        (0, payload)
    };
    let rest = if header.flags & FLAG_PRIORITY != 0 {
        rest.get(PRIORITY_LEN..).ok_or_else(malformed)?
    } else {
        rest
    };
    let fragment_len = rest.len().checked_sub(pad_len).ok_or_else(malformed)?;
    Ok(&rest[..fragment_len])
}
