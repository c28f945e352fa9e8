//! A real tonic server behind `incoming`: ordinary gRPC clients keep working, and a request
//! with etcdctl 3.4's `:authority` is answered instead of reset.

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use loona_hpack::{Decoder, Encoder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use support::*;

/// A health service on a port-0 listener, recording the `remote_addr` each request saw.
struct TestServer {
    addr: SocketAddr,
    remote_addrs: Arc<Mutex<Vec<Option<SocketAddr>>>>,
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl TestServer {
    async fn start(with_adapter: bool) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (_reporter, health) = tonic_health::server::health_reporter();
        let remote_addrs = Arc::new(Mutex::new(Vec::new()));
        let seen = remote_addrs.clone();
        let record = move |request: tonic::Request<()>| {
            seen.lock().expect("lock").push(request.remote_addr());
            Ok(request)
        };
        let router = tonic::transport::Server::builder()
            .layer(tonic::service::InterceptorLayer::new(record))
            .add_service(health);
        let (shutdown, stop) = oneshot::channel::<()>();
        let stop = async {
            let _ = stop.await;
        };
        let task = if with_adapter {
            let incoming = rampart_h2_compat::incoming(listener);
            tokio::spawn(router.serve_with_incoming_shutdown(incoming, stop))
        } else {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            tokio::spawn(router.serve_with_incoming_shutdown(incoming, stop))
        };
        TestServer {
            addr,
            remote_addrs,
            shutdown,
            task,
        }
    }

    async fn stop(self) {
        let _ = self.shutdown.send(());
        self.task
            .await
            .expect("server task")
            .expect("server ended cleanly");
    }
}

#[tokio::test]
async fn tonic_client_works_through_the_adapter() {
    let server = TestServer::start(true).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut client = HealthClient::new(channel);
    // Several calls on one connection. The adapter decodes the first block (Huffman-coded by
    // h2's client) and then steps aside; the later blocks, which refer to the client's dynamic
    // table, must still reach the server intact.
    for i in 0..20 {
        let service = if i % 2 == 0 { "" } else { "unknown.Service" };
        let reply = client
            .check(HealthCheckRequest {
                service: service.to_string(),
            })
            .await;
        match (service, reply) {
            ("", Ok(reply)) => assert_eq!(reply.into_inner().status(), ServingStatus::Serving),
            (_, Err(status)) => assert_eq!(status.code(), tonic::Code::NotFound, "{status}"),
            (service, reply) => panic!("unexpected reply for {service:?}: {reply:?}"),
        }
    }
    let remote_addrs = server.remote_addrs.lock().expect("lock").clone();
    assert_eq!(remote_addrs.len(), 20);
    for addr in remote_addrs {
        let addr = addr.expect("remote_addr is known through the adapter");
        assert!(addr.ip().is_loopback(), "{addr}");
    }
    server.stop().await;
}

/// How a hand-written request ended.
#[derive(Debug)]
#[allow(dead_code)] // The error codes are read through `Debug`, in failure messages.
enum Outcome {
    /// Response headers and trailers, decoded in order.
    Completed(HeaderList),
    Reset(u32),
    GoAway(u32),
    Closed,
}

/// Sends what etcdctl 3.4 sends for `calls` unary calls on one connection (streams 1, 3, ...),
/// with `authority`, and reads until each stream has ended.
async fn raw_health_checks(addr: SocketAddr, authority: &str, calls: u32) -> Vec<Outcome> {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let request = headers(&[
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/grpc.health.v1.Health/Check"),
        (":authority", authority),
        ("content-type", "application/grpc"),
        ("user-agent", "grpc-go/1.26.0"),
        ("te", "trailers"),
    ]);
    let mut out = PREFACE.to_vec();
    out.extend(Frame::new(SETTINGS, 0, 0, vec![]).to_bytes());
    // One encoder for the connection: later blocks refer to its dynamic table.
    let mut encoder = Encoder::new();
    for i in 0..calls {
        let stream_id = 2 * i + 1;
        let block = encode_block(&mut encoder, &request);
        out.extend(Frame::new(HEADERS, END_HEADERS, stream_id, block).to_bytes());
        // An empty, uncompressed HealthCheckRequest message.
        out.extend(Frame::new(DATA, END_STREAM, stream_id, vec![0, 0, 0, 0, 0]).to_bytes());
    }
    stream.write_all(&out).await.expect("write requests");

    let mut decoder = Decoder::new();
    let mut responses: Vec<HeaderList> = (0..calls).map(|_| HeaderList::new()).collect();
    let mut outcomes: Vec<Option<Outcome>> = (0..calls).map(|_| None).collect();
    let mut input = Vec::new();
    let mut buf = vec![0; 16 * 1024];
    while outcomes.iter().any(Option::is_none) {
        let n = stream.read(&mut buf).await.expect("read");
        if n == 0 {
            break;
        }
        input.extend_from_slice(&buf[..n]);
        let (frames, rest) = try_parse_frames(&input).expect("frames");
        let rest = rest.to_vec();
        for frame in frames {
            let call = (frame.stream_id as usize).wrapping_sub(1) / 2;
            match frame.kind {
                SETTINGS if frame.flags & ACK == 0 => {
                    let ack = Frame::new(SETTINGS, ACK, 0, vec![]).to_bytes();
                    stream.write_all(&ack).await.expect("settings ack");
                }
                HEADERS => {
                    assert_ne!(frame.flags & END_HEADERS, 0, "response needs CONTINUATION");
                    let fields = decoder.decode(&frame.payload).expect("response headers");
                    responses[call].extend(fields);
                    if frame.flags & END_STREAM != 0 {
                        let response = std::mem::take(&mut responses[call]);
                        outcomes[call] = Some(Outcome::Completed(response));
                    }
                }
                RST_STREAM => {
                    let code = frame.payload[..4].try_into().expect("error code");
                    outcomes[call] = Some(Outcome::Reset(u32::from_be_bytes(code)));
                }
                GOAWAY => {
                    let code = frame.payload[4..8].try_into().expect("error code");
                    for outcome in outcomes.iter_mut().filter(|o| o.is_none()) {
                        *outcome = Some(Outcome::GoAway(u32::from_be_bytes(code)));
                    }
                }
                _ => {}
            }
        }
        input = rest;
    }
    outcomes
        .into_iter()
        .map(|o| o.unwrap_or(Outcome::Closed))
        .collect()
}

#[tokio::test]
async fn etcdctl_authority_is_answered_through_the_adapter() {
    let authority = "http://127.0.0.1:23790";
    let deadline = Duration::from_secs(10);

    // Without the adapter h2 resets the stream with PROTOCOL_ERROR: the bug being fixed.
    let plain = TestServer::start(false).await;
    let outcomes = tokio::time::timeout(deadline, raw_health_checks(plain.addr, authority, 1))
        .await
        .expect("plain server answered in time");
    assert!(
        matches!(outcomes[..], [Outcome::Reset(1)]),
        "without the adapter: {outcomes:?}"
    );
    plain.stop().await;

    // With it, three calls on one connection all succeed; the later ones reach the adapter
    // as references to the client's dynamic table.
    let fixed = TestServer::start(true).await;
    let outcomes = tokio::time::timeout(deadline, raw_health_checks(fixed.addr, authority, 3))
        .await
        .expect("adapted server answered in time");
    for outcome in outcomes {
        let Outcome::Completed(response) = outcome else {
            panic!("with the adapter: {outcome:?}");
        };
        let field = |name: &str| {
            response
                .iter()
                .find(|(n, _)| n == name.as_bytes())
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        };
        assert_eq!(field(":status").as_deref(), Some("200"), "{response:?}");
        assert_eq!(field("grpc-status").as_deref(), Some("0"), "{response:?}");
    }
    assert_eq!(fixed.remote_addrs.lock().expect("lock").len(), 3);
    fixed.stop().await;
}
