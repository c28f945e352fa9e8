//! Building and reading raw HTTP/2 frames in tests.

#![allow(dead_code)]

pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const PRIORITY: u8 = 0x2;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const WINDOW_UPDATE: u8 = 0x8;
pub const CONTINUATION: u8 = 0x9;

pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
pub const PADDED: u8 = 0x8;
pub const PRIORITY_FLAG: u8 = 0x20;

/// One frame as it appears on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream_id: u32,
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn new(kind: u8, flags: u8, stream_id: u32, payload: impl Into<Vec<u8>>) -> Self {
        Frame {
            kind,
            flags,
            stream_id,
            payload: payload.into(),
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let len = (self.payload.len() as u32).to_be_bytes();
        let mut out = vec![len[1], len[2], len[3], self.kind, self.flags];
        out.extend_from_slice(&self.stream_id.to_be_bytes());
        out.extend_from_slice(&self.payload);
        out
    }

    pub fn is_header_frame(&self) -> bool {
        self.kind == HEADERS || self.kind == CONTINUATION
    }
}

/// Splits `bytes` into the frames it holds; `None` if it ends inside a frame.
pub fn try_parse_frames(mut bytes: &[u8]) -> Option<(Vec<Frame>, &[u8])> {
    let mut frames = Vec::new();
    while bytes.len() >= 9 {
        let len = usize::from(bytes[0]) << 16 | usize::from(bytes[1]) << 8 | usize::from(bytes[2]);
        if bytes.len() < 9 + len {
            break;
        }
        frames.push(Frame {
            kind: bytes[3],
            flags: bytes[4],
            stream_id: u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]) & 0x7fff_ffff,
            payload: bytes[9..9 + len].to_vec(),
        });
        bytes = &bytes[9 + len..];
    }
    Some((frames, bytes))
}

/// Splits `bytes` into whole frames, failing the test if any bytes are left over.
pub fn parse_frames(bytes: &[u8]) -> Vec<Frame> {
    let (frames, rest) = try_parse_frames(bytes).expect("frames");
    assert!(
        rest.is_empty(),
        "{} bytes after the last whole frame",
        rest.len()
    );
    frames
}

pub type HeaderList = Vec<(Vec<u8>, Vec<u8>)>;

pub fn headers(list: &[(&str, &str)]) -> HeaderList {
    list.iter()
        .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect()
}

/// Encodes with `encoder`, which (like grpc-go's) indexes new fields in its dynamic table.
pub fn encode_block(encoder: &mut loona_hpack::Encoder<'_>, list: &HeaderList) -> Vec<u8> {
    encoder.encode(list.iter().map(|(n, v)| (&n[..], &v[..])))
}

/// Groups header frames into (stream, END_STREAM, block) triples, checking the framing rules.
pub fn header_blocks(frames: &[Frame]) -> Vec<(u32, bool, Vec<u8>)> {
    let mut blocks = Vec::new();
    let mut open: Option<(u32, bool, Vec<u8>)> = None;
    for frame in frames.iter().filter(|f| f.is_header_frame()) {
        match (frame.kind, open.take()) {
            (HEADERS, None) => {
                assert_eq!(
                    frame.flags & (PADDED | PRIORITY_FLAG),
                    0,
                    "padding or priority kept"
                );
                open = Some((
                    frame.stream_id,
                    frame.flags & END_STREAM != 0,
                    frame.payload.clone(),
                ));
            }
            (CONTINUATION, Some((stream, end_stream, mut block))) => {
                assert_eq!(frame.stream_id, stream);
                assert_eq!(
                    frame.flags & !END_HEADERS,
                    0,
                    "unexpected CONTINUATION flags"
                );
                block.extend_from_slice(&frame.payload);
                open = Some((stream, end_stream, block));
            }
            (kind, open) => panic!("header frame of type {kind} while open block is {open:?}"),
        }
        if frame.flags & END_HEADERS != 0 {
            blocks.push(open.take().expect("open block"));
        }
    }
    assert!(open.is_none(), "header block left open");
    blocks
}
