//! Hand-built client byte streams through `AuthorityFix`: what comes out must be the same
//! frames, with only the header blocks re-encoded and `:authority` fixed.

mod support;

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use loona_hpack::encoder::encode_integer_into;
use loona_hpack::{Decoder, Encoder};
use rampart_h2_compat::AuthorityFix;
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

use support::*;

/// Serves a fixed byte string at most `chunk` bytes per read, to split frames anywhere.
struct ChunkedReader {
    data: Vec<u8>,
    pos: usize,
    chunk: usize,
}

impl AsyncRead for ChunkedReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let n = self
            .chunk
            .min(buf.remaining())
            .min(self.data.len() - self.pos);
        let start = self.pos;
        buf.put_slice(&self.data[start..start + n]);
        self.pos += n;
        Poll::Ready(Ok(()))
    }
}

/// Runs `input` through the adapter, reading it `in_chunk` bytes at a time and handing it on
/// through a buffer of `out_chunk` bytes.
async fn run(input: &[u8], in_chunk: usize, out_chunk: usize) -> io::Result<Vec<u8>> {
    let mut fix = AuthorityFix::new(ChunkedReader {
        data: input.to_vec(),
        pos: 0,
        chunk: in_chunk,
    });
    let mut out = Vec::new();
    let mut buf = vec![0; out_chunk];
    loop {
        let n = fix.read(&mut buf).await?;
        if n == 0 {
            return Ok(out);
        }
        out.extend_from_slice(&buf[..n]);
    }
}

fn stream_of(frames: &[Frame]) -> Vec<u8> {
    let mut bytes = PREFACE.to_vec();
    for frame in frames {
        bytes.extend_from_slice(&frame.to_bytes());
    }
    bytes
}

/// Checks the adapter's output against the input frames: the preface and every non-header
/// frame byte for byte and in order, each header block (decoded with a fresh decoder) equal to
/// `want_blocks`, and no header frame over the 16 KiB every peer accepts.
fn check_output(output: &[u8], input: &[Frame], want_blocks: &[(u32, bool, HeaderList)]) {
    assert_eq!(&output[..24], PREFACE, "preface");
    let frames = parse_frames(&output[24..]);
    for frame in frames.iter().filter(|f| f.is_header_frame()) {
        assert!(
            frame.payload.len() <= 16_384,
            "frame of {} bytes",
            frame.payload.len()
        );
    }
    let others = |frames: &[Frame]| -> Vec<Frame> {
        frames
            .iter()
            .filter(|f| !f.is_header_frame())
            .cloned()
            .collect()
    };
    assert_eq!(others(&frames), others(input), "non-header frames");
    // Header blocks and other frames must also keep their relative order: each run of header
    // frames sits where the input's run was.
    let shape = |frames: &[Frame]| -> Vec<u8> {
        let mut shape: Vec<u8> = frames
            .iter()
            .map(|f| if f.is_header_frame() { HEADERS } else { f.kind })
            .collect();
        shape.dedup_by(|a, b| *a == HEADERS && *b == HEADERS);
        shape
    };
    assert_eq!(shape(&frames), shape(input), "frame order");

    let mut decoder = Decoder::new();
    let blocks = header_blocks(&frames);
    assert_eq!(blocks.len(), want_blocks.len(), "number of header blocks");
    for ((stream, end_stream, block), (want_stream, want_end, want_list)) in
        blocks.iter().zip(want_blocks)
    {
        assert_eq!(
            (stream, end_stream),
            (want_stream, want_end),
            "stream and END_STREAM"
        );
        let list = decoder.decode(block).expect("output block decodes");
        assert_eq!(&list, want_list, "header list on stream {stream}");
    }
}

fn rewritten(list: &HeaderList) -> HeaderList {
    list.iter()
        .map(|(n, v)| match (n.as_slice(), v.as_slice()) {
            (b":authority", b"http://127.0.0.1:23790") => (n.clone(), b"127.0.0.1:23790".to_vec()),
            _ => (n.clone(), v.clone()),
        })
        .collect()
}

#[tokio::test]
async fn etcdctl_like_connection_is_rewritten_and_everything_else_kept() {
    let request = headers(&[
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/etcdserverpb.Maintenance/Status"),
        (":authority", "http://127.0.0.1:23790"),
        ("content-type", "application/grpc"),
        ("user-agent", "grpc-go/1.26.0"),
        ("te", "trailers"),
        ("x-request-token", "secret-1"),
    ]);
    let mut encoder = Encoder::new();
    let block1 = encode_block(&mut encoder, &request);
    // The second block refers to the dynamic table entries the first one created.
    let block2 = encode_block(&mut encoder, &request);
    assert!(
        block2.iter().any(|&b| b >= 0x80 | 62),
        "no dynamic-table index in {block2:?}"
    );
    let mut big = request.clone();
    big.push((b"x-big".to_vec(), vec![b'v'; 20_000]));
    let block3 = encode_block(&mut encoder, &big);

    // Block 2 arrives PADDED and with PRIORITY; block 3 as HEADERS + 2 CONTINUATIONs.
    let mut padded = vec![4u8];
    padded.extend_from_slice(&[0x80, 0, 0, 1, 15]); // exclusive dependency on stream 1, weight 16
    padded.extend_from_slice(&block2);
    padded.extend_from_slice(&[0; 4]);
    let (part1, rest) = block3.split_at(100);
    let (part2, part3) = rest.split_at(10_000);
    let input = vec![
        Frame::new(SETTINGS, 0, 0, vec![0, 4, 0, 0x40, 0, 0]),
        Frame::new(WINDOW_UPDATE, 0, 0, 65_535u32.to_be_bytes()),
        Frame::new(HEADERS, END_HEADERS, 1, block1),
        Frame::new(DATA, END_STREAM, 1, vec![0, 0, 0, 0, 0]),
        Frame::new(SETTINGS, ACK, 0, vec![]),
        Frame::new(
            HEADERS,
            END_HEADERS | END_STREAM | PADDED | PRIORITY_FLAG,
            3,
            padded,
        ),
        Frame::new(PING, 0, 0, *b"12345678"),
        Frame::new(HEADERS, 0, 5, part1),
        Frame::new(CONTINUATION, 0, 5, part2),
        Frame::new(CONTINUATION, END_HEADERS, 5, part3),
        Frame::new(DATA, 0, 5, vec![7; 40_000]),
        Frame::new(PRIORITY, 0, 5, vec![0, 0, 0, 3, 200]),
        Frame::new(RST_STREAM, 0, 5, 8u32.to_be_bytes()),
        Frame::new(0xfa, 0xff, 9, b"unknown frame types pass".to_vec()),
        Frame::new(GOAWAY, 0, 0, vec![0, 0, 0, 5, 0, 0, 0, 0]),
    ];
    let want = [
        (1, false, rewritten(&request)),
        (3, true, rewritten(&request)),
        (5, false, rewritten(&big)),
    ];
    let bytes = stream_of(&input);
    for (in_chunk, out_chunk) in [(1 << 20, 1 << 20), (1, 7), (9, 16_384), (1000, 1)] {
        let output = run(&bytes, in_chunk, out_chunk)
            .await
            .expect("adapter output");
        check_output(&output, &input, &want);
    }
}

#[tokio::test]
async fn authority_from_the_dynamic_table_is_rewritten_too() {
    // Literal with incremental indexing, name :authority (static index 1), raw value. The
    // second block resizes the table (keeping the entry) and then refers to it by index 62.
    let url = b"http://127.0.0.1:23790";
    let mut block1 = vec![0x82, 0x86, 0x41, url.len() as u8];
    block1.extend_from_slice(url);
    block1.extend_from_slice(&[0x04, 1, b'/']); // :path, not indexed
    let mut block2 = Vec::new();
    encode_integer_into(100, 5, 0x20, &mut block2).expect("size update");
    block2.extend_from_slice(&[0x82, 0x86, 0x80 | 62, 0x04, 1, b'/']);
    let input = vec![
        Frame::new(HEADERS, END_HEADERS | END_STREAM, 1, block1),
        Frame::new(HEADERS, END_HEADERS | END_STREAM, 3, block2),
    ];
    let list = headers(&[
        (":method", "GET"),
        (":scheme", "http"),
        (":authority", "127.0.0.1:23790"),
        (":path", "/"),
    ]);
    let output = run(&stream_of(&input), 1 << 20, 1 << 20)
        .await
        .expect("adapter output");
    check_output(&output, &input, &[(1, true, list.clone()), (3, true, list)]);
}

/// A first block without a URL authority lets the whole connection through byte for byte,
/// later blocks included (the server would reject a URL there, as without the adapter).
#[tokio::test]
async fn a_connection_with_a_normal_authority_passes_through_untouched() {
    let list = headers(&[
        (":method", "POST"),
        (":scheme", "http"),
        (":authority", "127.0.0.1:2379"),
        (":path", "/etcdserverpb.KV/Range"),
        ("x-custom", "indexed in the dynamic table"),
    ]);
    let mut encoder = Encoder::new();
    let mut late_url = list.clone();
    late_url[2].1 = b"http://127.0.0.1:2379".to_vec();
    let input = vec![
        Frame::new(SETTINGS, 0, 0, vec![]),
        Frame::new(HEADERS, END_HEADERS, 1, encode_block(&mut encoder, &list)),
        Frame::new(DATA, END_STREAM, 1, vec![0; 20_000]),
        Frame::new(HEADERS, END_HEADERS, 3, encode_block(&mut encoder, &list)),
        Frame::new(HEADERS, END_HEADERS | PADDED, 5, {
            let mut payload = vec![3];
            payload.extend(encode_block(&mut encoder, &late_url));
            payload.extend([0; 3]);
            payload
        }),
    ];
    let bytes = stream_of(&input);
    for (in_chunk, out_chunk) in [(1 << 20, 1 << 20), (1, 7), (100, 30_000)] {
        let output = run(&bytes, in_chunk, out_chunk)
            .await
            .expect("adapter output");
        assert!(
            output == bytes,
            "output differs from input ({in_chunk}, {out_chunk})"
        );
    }
}

#[tokio::test]
async fn a_stream_that_is_not_http2_passes_through_untouched() {
    let input =
        b"GET / HTTP/1.1\r\nHost: http://x\r\n\r\n\x00\x00\x05\x01\x04\x00\x00\x00\x01garbage"
            .to_vec();
    assert_eq!(run(&input, 3, 5).await.expect("output"), input);
}

#[tokio::test]
async fn a_stream_ending_inside_a_frame_ends_at_the_last_whole_frame() {
    let mut bytes = stream_of(&[Frame::new(PING, 0, 0, *b"12345678")]);
    let whole = bytes.clone();
    bytes.extend_from_slice(&[0, 0, 9, HEADERS, END_HEADERS, 0, 0, 0, 1, 0x82]);
    assert_eq!(run(&bytes, 4, 4).await.expect("output"), whole);
}

/// Each malformed stream must fail with `InvalidData`, not panic and not pass through.
#[tokio::test]
async fn malformed_input_is_an_error() {
    let mut too_big_update = Vec::new();
    encode_integer_into(1 << 20, 5, 0x20, &mut too_big_update).expect("size update");
    too_big_update.push(0x82);
    let cases: Vec<(&str, Vec<Frame>)> = vec![
        (
            "index 0",
            vec![Frame::new(HEADERS, END_HEADERS, 1, vec![0x80])],
        ),
        (
            "index past the tables",
            vec![Frame::new(HEADERS, END_HEADERS, 1, vec![0x80 | 70])],
        ),
        (
            "truncated literal",
            vec![Frame::new(HEADERS, END_HEADERS, 1, vec![0x40, 10, b'a'])],
        ),
        (
            "bad huffman",
            vec![Frame::new(
                HEADERS,
                END_HEADERS,
                1,
                vec![0x40, 0x81, 0xff, 0x81, 0xff],
            )],
        ),
        (
            "overlong integer",
            vec![Frame::new(
                HEADERS,
                END_HEADERS,
                1,
                vec![0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
            )],
        ),
        (
            "table size above the server's",
            vec![Frame::new(HEADERS, END_HEADERS, 1, too_big_update)],
        ),
        (
            "size update at the end",
            vec![Frame::new(HEADERS, END_HEADERS, 1, vec![0x82, 0x20])],
        ),
        (
            "padding longer than the payload",
            vec![Frame::new(HEADERS, END_HEADERS | PADDED, 1, vec![5, 0x82])],
        ),
        (
            "padded without a pad length",
            vec![Frame::new(HEADERS, END_HEADERS | PADDED, 1, vec![])],
        ),
        (
            "priority without its fields",
            vec![Frame::new(
                HEADERS,
                END_HEADERS | PRIORITY_FLAG,
                1,
                vec![0, 0],
            )],
        ),
        (
            "continuation without headers",
            vec![Frame::new(CONTINUATION, END_HEADERS, 1, vec![0x82])],
        ),
        (
            "data inside a header block",
            vec![
                Frame::new(HEADERS, 0, 1, vec![0x82]),
                Frame::new(DATA, 0, 1, vec![1]),
            ],
        ),
        (
            "continuation on another stream",
            vec![
                Frame::new(HEADERS, 0, 1, vec![0x82]),
                Frame::new(CONTINUATION, END_HEADERS, 3, vec![]),
            ],
        ),
        (
            "headers inside a header block",
            vec![
                Frame::new(HEADERS, 0, 1, vec![0x82]),
                Frame::new(HEADERS, END_HEADERS, 3, vec![0x82]),
            ],
        ),
        (
            "a header block over 1 MiB",
            (0..70)
                .map(|i| {
                    let kind = if i == 0 { HEADERS } else { CONTINUATION };
                    Frame::new(kind, 0, 1, vec![0x82; 16_384])
                })
                .collect(),
        ),
        (
            "a header list that decodes to over 1 MiB",
            vec![Frame::new(HEADERS, END_HEADERS, 1, {
                // One 3000-byte field in the dynamic table, then 400 references to it.
                let mut block = vec![0x40, 1, b'x'];
                encode_integer_into(3000, 7, 0, &mut block).expect("length");
                block.extend_from_slice(&[b'v'; 3000]);
                block.extend_from_slice(&[0x80 | 62; 400]);
                block
            })],
        ),
    ];
    for (name, frames) in cases {
        let err = run(&stream_of(&frames), 1 << 20, 1 << 20)
            .await
            .expect_err(name);
        println!("{name}: {err}");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{name}: {err}");
        assert!(
            err.get_ref()
                .is_some_and(|e| e.is::<rampart_h2_compat::Error>()),
            "{name}: {err}"
        );
    }
}

/// Random frame sequences: the adapter may accept or reject them, but never panics.
#[tokio::test]
async fn random_input_never_panics() {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        | 1;
    println!("random_input_never_panics seed {seed}");
    let mut state = seed;
    let mut next = move || {
        // xorshift64
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..2000 {
        let mut frames = Vec::new();
        for _ in 0..(next() % 6 + 1) {
            let kind = [HEADERS, CONTINUATION, DATA, HEADERS][(next() % 4) as usize];
            let flags = (next() & 0x2d) as u8;
            let payload: Vec<u8> = (0..next() % 40).map(|_| next() as u8).collect();
            frames.push(Frame::new(kind, flags, (next() % 3) as u32, payload));
        }
        let bytes = stream_of(&frames);
        let chunk = (next() % 17 + 1) as usize;
        if let Err(e) = run(&bytes, chunk, chunk).await {
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "seed {seed}: {e}");
        }
    }
}
