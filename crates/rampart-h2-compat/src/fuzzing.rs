//! The entry point of the `h2_authority` fuzz target (`fuzz/` at the repository root) and its
//! corpus replay: arbitrary bytes as what a client sends, read through [`AuthorityFix`] as the
//! gRPC server reads it. It panics only on a bug: a panic in the parser or the HPACK rewriting,
//! a read that blocks on input that never blocks, or bytes passed through changed. Not part of
//! the API.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, ReadBuf};

use crate::frame::PREFACE;
use crate::AuthorityFix;

/// How many bytes the client's socket hands over per read, picked by the input's first byte.
const SOCKET_READS: [usize; 6] = [1, 7, 64, 1024, 16_393, usize::MAX];
/// How large the server's read buffer is, picked by the input's first byte too.
const SERVER_BUFFERS: [usize; 5] = [1, 9, 100, 4096, 65_536];

/// The first byte of `data` picks the socket's read size and the server's buffer size; the rest
/// is the client-to-server byte stream, read through [`AuthorityFix`] to its end or its error.
pub fn inbound(data: &[u8]) {
    let Some((&sizes, stream)) = data.split_first() else {
        return;
    };
    let socket_read = SOCKET_READS[usize::from(sizes) % SOCKET_READS.len()];
    let buffer = SERVER_BUFFERS[usize::from(sizes / 6) % SERVER_BUFFERS.len()];
    let mut fix = AuthorityFix::new(Chunked {
        rest: stream,
        read: socket_read,
    });
    let mut cx = Context::from_waker(Waker::noop());
    let mut out = Vec::new();
    let mut buf = vec![0; buffer];
    let failed = loop {
        let mut read = ReadBuf::new(&mut buf);
        match Pin::new(&mut fix).poll_read(&mut cx, &mut read) {
            Poll::Ready(Ok(())) if read.filled().is_empty() => break false,
            Poll::Ready(Ok(())) => out.extend_from_slice(read.filled()),
            Poll::Ready(Err(_)) => break true,
            Poll::Pending => panic!("a read blocked on input that never blocks"),
        }
    };
    // A client that does not open with the preface is passed through untouched, for the
    // server to refuse as it would without the adapter.
    let seen = stream.len().min(PREFACE.len());
    if stream[..seen] != PREFACE[..seen] {
        assert!(!failed, "a stream without the preface is not parsed");
        assert_eq!(
            out, stream,
            "a stream without the preface passes through unchanged"
        );
    }
}

/// An in-memory client socket that hands over at most `read` bytes per read and never blocks.
struct Chunked<'a> {
    rest: &'a [u8],
    read: usize,
}

impl AsyncRead for Chunked<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let n = self.rest.len().min(self.read).min(buf.remaining());
        let (now, later) = self.rest.split_at(n);
        buf.put_slice(now);
        self.rest = later;
        Poll::Ready(Ok(()))
    }
}

/// Client streams to start fuzzing from, each with its sizes byte: etcdctl 3.4's request with
/// a URL for `:authority` (rewritten), an ordinary client's (passed through), one with a
/// CONTINUATION, and a stream without the preface.
pub fn seeds() -> Vec<Vec<u8>> {
    let block = |authority: &str| {
        let mut encoder = loona_hpack::Encoder::new();
        encoder.encode(vec![
            (&b":method"[..], &b"POST"[..]),
            (b":scheme", b"http"),
            (b":path", b"/etcdserverpb.Maintenance/Status"),
            (b":authority", authority.as_bytes()),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
        ])
    };
    let frame = |kind: u8, flags: u8, stream: u32, payload: &[u8]| {
        let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        f.extend_from_slice(&[kind, flags]);
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    };
    let settings = frame(0x4, 0, 0, &[]);
    let data = frame(0x0, 0x1, 1, &[0, 0, 0, 0, 0]);
    let request = |authority: &str| {
        [
            PREFACE.to_vec(),
            settings.clone(),
            frame(0x1, 0x4, 1, &block(authority)),
            data.clone(),
        ]
        .concat()
    };
    let url = block("http://127.0.0.1:2379");
    let (first, second) = url.split_at(url.len() / 2);
    let continued = [
        PREFACE.to_vec(),
        settings.clone(),
        frame(0x1, 0x0, 1, first),
        frame(0x9, 0x4, 1, second),
        data.clone(),
    ]
    .concat();
    vec![
        [vec![3], request("http://127.0.0.1:2379")].concat(),
        [vec![8], request("127.0.0.1:2379")].concat(),
        [vec![1], continued].concat(),
        [vec![4], b"GET / HTTP/1.1\r\n\r\n".to_vec()].concat(),
    ]
}

#[cfg(test)]
mod tests {
    //! The replay of the committed inputs (a copy of `rampart_storage::fuzzing::replay`: this
    //! crate depends on no other Rampart crate), and the seed writer.

    use std::path::{Path, PathBuf};

    fn dir(kind: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fuzz")
            .join(kind)
            .join("h2_authority")
    }

    /// Every input of `fuzz/corpus/h2_authority/` and `fuzz/regressions/h2_authority/` runs
    /// through [`super::inbound`]; there must be some.
    #[test]
    fn h2_authority_corpus_replays() {
        let mut inputs = 0;
        for kind in ["corpus", "regressions"] {
            let Ok(files) = std::fs::read_dir(dir(kind)) else {
                assert!(kind != "corpus", "no corpus in {}", dir(kind).display());
                continue;
            };
            let mut paths: Vec<PathBuf> = files.map(|f| f.unwrap().path()).collect();
            paths.sort();
            for path in paths {
                eprintln!("{}", path.display());
                super::inbound(&std::fs::read(&path).unwrap());
                inputs += 1;
            }
        }
        assert!(inputs > 0, "the corpus of h2_authority is empty");
    }

    #[test]
    #[ignore = "writes the fuzz seed corpus; run by hand"]
    fn write_seeds() {
        let dir = dir("corpus");
        std::fs::create_dir_all(&dir).unwrap();
        for (n, seed) in super::seeds().iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{n}")), seed).unwrap();
        }
    }
}
