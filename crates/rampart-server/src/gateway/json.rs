//! The gateway's JSON, as etcd 3.4's (grpc-gateway v1.9 with its default `JSONPb{OrigName:
//! true}` marshaler) reads and writes it.
//!
//! - Messages: the protobuf JSON mapping generated for the etcd packages in `rampart_api`
//!   (`pbjson`): field names as in the .proto, 64-bit integers as strings, bytes as base64, enums
//!   by name, default values left out; requests may also give integers and enums as numbers and
//!   fields by their lowerCamelCase JSON names. An empty body is the empty request, as
//!   grpc-gateway reads it. Unlike etcd 3.4's gateway, which ignores unknown fields, a field the
//!   message does not have is refused (a misspelt option is not silently dropped); bad JSON,
//!   wrong types, data after the message and a body over the limit are refused too, all with
//!   HTTP 400 and an InvalidArgument error.
//! - Errors: the HTTP status grpc-gateway maps the gRPC code to ([`http_status`]), and its body
//!   `{"error": message, "message": message, "code": grpc code}`.
//! - Streams (Watch, LeaseKeepAlive, Snapshot, Observe): HTTP 200 and one line per message,
//!   `{"result": message}` and a newline, each sent as it comes; an error ends the stream with
//!   `{"error": {"grpc_code", "http_code", "message", "http_status"}}`.

use std::convert::Infallible;
use std::marker::PhantomData;
use std::time::Duration;

use axum::body::{Body, BodyDataStream, Bytes};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::{Code, Status};

use crate::error::ServerError;

/// The JSON media type grpc-gateway's marshaler answers with.
const CONTENT_TYPE: &str = "application/json";

/// The HTTP status grpc-gateway v1 answers for gRPC code `code` (`runtime.HTTPStatusFromCode`).
pub(super) fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::REQUEST_TIMEOUT,
        Code::Unknown => StatusCode::INTERNAL_SERVER_ERROR,
        Code::InvalidArgument => StatusCode::BAD_REQUEST,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        // grpc-gateway deliberately does not answer 412 Precondition Failed.
        Code::FailedPrecondition => StatusCode::BAD_REQUEST,
        Code::Aborted => StatusCode::CONFLICT,
        Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// grpc-gateway's error body (`runtime.errorBody`), in its field order.
#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    message: &'a str,
    code: i32,
}

/// The error at the end of a stream (`runtime.StreamError`), with proto names.
#[derive(Serialize)]
struct StreamError<'a> {
    grpc_code: i32,
    http_code: u16,
    message: &'a str,
    http_status: &'a str,
}

/// One line of a streamed response.
#[derive(Serialize)]
enum Chunk<'a, T> {
    #[serde(rename = "result")]
    Result(&'a T),
    #[serde(rename = "error")]
    Error(StreamError<'a>),
}

/// The answer for a failed call: its status and grpc-gateway's error body.
pub(super) fn error(status: &Status) -> Response {
    let body = ErrorBody {
        error: status.message(),
        message: status.message(),
        code: status.code() as i32,
    };
    let text = serde_json::to_string(&body).unwrap_or_else(|_| fallback_error());
    (
        http_status(status.code()),
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        text,
    )
        .into_response()
}

/// grpc-gateway's body when an error cannot be written (never expected: its fields are plain).
fn fallback_error() -> String {
    r#"{"error": "failed to marshal error message"}"#.to_string()
}

/// The answer for a call that succeeded with `message`.
pub(super) fn message<T: Serialize>(message: &T) -> Response {
    match serde_json::to_vec(message) {
        Ok(body) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response(),
        Err(e) => error(&unwritable(e)),
    }
}

/// A response message that has no JSON form (an enum value the .proto does not define).
fn unwritable(e: serde_json::Error) -> Status {
    Status::from(ServerError::Internal(format!(
        "cannot write the response as JSON: {e}"
    )))
}

/// The line of a streamed response for one message, or for the error that ends the stream;
/// and whether it is that error.
fn line<T: Serialize>(item: &Result<T, Status>) -> (Bytes, bool) {
    let status = match item {
        Ok(message) => match serde_json::to_vec(&Chunk::Result(message)) {
            Ok(mut line) => {
                line.push(b'\n');
                return (Bytes::from(line), false);
            }
            Err(e) => unwritable(e),
        },
        Err(status) => status.clone(),
    };
    let http = http_status(status.code());
    let chunk: Chunk<'_, ()> = Chunk::Error(StreamError {
        grpc_code: status.code() as i32,
        http_code: http.as_u16(),
        message: status.message(),
        http_status: http.canonical_reason().unwrap_or(""),
    });
    // grpc-gateway writes no newline after the error, the stream's last line.
    let line = serde_json::to_vec(&chunk).unwrap_or_else(|_| fallback_error().into_bytes());
    (Bytes::from(line), true)
}

/// The streamed answer for the messages of `messages`, until it ends or fails.
pub(super) fn stream<T, S>(messages: S) -> Response
where
    T: Serialize + Send + 'static,
    S: Stream<Item = Result<T, Status>> + Send + 'static,
{
    let lines = messages
        .scan(false, |failed, item| {
            if *failed {
                return futures::future::ready(None);
            }
            let (text, last) = line(&item);
            *failed = last;
            futures::future::ready(Some(Ok::<_, Infallible>(text)))
        })
        .boxed();
    (
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        Body::from_stream(lines),
    )
        .into_response()
}

/// How much of a body over the limit is read and dropped before the refusal is answered, and for
/// how long at most.
const DRAIN_BYTES: usize = 64 << 20;
const DRAIN_TIME: Duration = Duration::from_secs(2);

/// The body of a request, refused past `limit` bytes (etcd's "request is too large").
pub(super) async fn read_body(body: Body, limit: usize) -> Result<Vec<u8>, Status> {
    let mut data = body.into_data_stream();
    let mut read = Vec::new();
    while let Some(chunk) = data.next().await {
        let chunk = chunk.map_err(unreadable)?;
        if read.len() + chunk.len() > limit {
            drain(data).await;
            return Err(ServerError::RequestTooLarge.into());
        }
        read.extend_from_slice(&chunk);
    }
    Ok(read)
}

/// Reads and drops the body of a request answered without it (a path or method refused).
pub(super) async fn discard(body: Body) {
    drain(body.into_data_stream()).await
}

/// Reads and drops what is left of a refused body (within bounds), so that the refusal reaches
/// the client: a connection closed with unread data is reset, and a reset can discard the
/// answer before the client reads it.
async fn drain(mut data: BodyDataStream) {
    let mut dropped = 0;
    let _ = tokio::time::timeout(DRAIN_TIME, async {
        while let Some(Ok(chunk)) = data.next().await {
            dropped += chunk.len();
            if dropped > DRAIN_BYTES {
                break;
            }
        }
    })
    .await;
}

fn unreadable(e: axum::Error) -> Status {
    ServerError::InvalidArgument(format!("cannot read the request body: {e}")).into()
}

/// The short name of message type `T` (`PutRequest`), for error texts.
fn message_name<T>() -> &'static str {
    let full = std::any::type_name::<T>();
    full.rsplit("::").next().unwrap_or(full)
}

fn malformed<T>(e: serde_json::Error) -> Status {
    ServerError::InvalidArgument(format!("invalid JSON for {}: {e}", message_name::<T>())).into()
}

/// The one request message a unary call's body holds (the empty request if it holds nothing).
pub(crate) fn decode<T: DeserializeOwned + Default>(body: &[u8]) -> Result<T, Status> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    let mut json = serde_json::Deserializer::from_slice(body);
    let message = T::deserialize(&mut json).map_err(malformed::<T>)?;
    json.end().map_err(malformed::<T>)?;
    Ok(message)
}

/// Takes the next request message of a streaming call's body off the front of `buffered` (and
/// the white space before it); `None` while no whole message is buffered, or, once the body
/// has `ended`, when nothing but white space is left.
pub(crate) fn take_message<T: DeserializeOwned>(
    buffered: &mut Vec<u8>,
    ended: bool,
) -> Option<Result<T, Status>> {
    let start = buffered
        .iter()
        .position(|byte| !byte.is_ascii_whitespace())
        .unwrap_or(buffered.len());
    buffered.drain(..start);
    if buffered.is_empty() {
        return None;
    }
    let mut values = serde_json::Deserializer::from_slice(buffered).into_iter::<T>();
    match values.next() {
        Some(Ok(message)) => {
            let used = values.byte_offset();
            buffered.drain(..used);
            Some(Ok(message))
        }
        // Only part of the next message has arrived.
        Some(Err(e)) if e.is_eof() && !ended => None,
        Some(Err(e)) => Some(Err(malformed::<T>(e))),
        None => None,
    }
}

/// The request messages of a streaming call's body, one JSON value after another (separated by
/// white space or nothing, as Go's `json.Decoder` reads them), each decoded as soon as it is
/// whole, so a client can send more while it reads the answers.
pub(super) struct Requests<T> {
    body: BodyDataStream,
    buffered: Vec<u8>,
    ended: bool,
    limit: usize,
    message: PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned> Requests<T> {
    pub(super) fn new(body: Body, limit: usize) -> Self {
        Requests {
            body: body.into_data_stream(),
            buffered: Vec::new(),
            ended: false,
            limit,
            message: PhantomData,
        }
    }

    /// Reads and drops the rest of the body, after a request that is refused.
    pub(super) async fn discard(self) {
        drain(self.body).await
    }

    /// The next request, or `None` at the end of the body.
    pub(super) async fn next(&mut self) -> Option<Result<T, Status>> {
        loop {
            if let Some(message) = take_message(&mut self.buffered, self.ended) {
                return Some(message);
            }
            if self.ended {
                return None;
            }
            match self.body.next().await {
                Some(Ok(chunk)) => {
                    if self.buffered.len() + chunk.len() > self.limit {
                        return Some(Err(ServerError::RequestTooLarge.into()));
                    }
                    self.buffered.extend_from_slice(&chunk);
                }
                Some(Err(e)) => return Some(Err(unreadable(e))),
                None => self.ended = true,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use rampart_api::etcdserverpb as pb;

    use super::*;

    #[test]
    fn codes_map_as_grpc_gateways() {
        assert_eq!(http_status(Code::InvalidArgument), StatusCode::BAD_REQUEST);
        assert_eq!(http_status(Code::OutOfRange), StatusCode::BAD_REQUEST);
        assert_eq!(
            http_status(Code::FailedPrecondition),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(http_status(Code::NotFound), StatusCode::NOT_FOUND);
        assert_eq!(
            http_status(Code::ResourceExhausted),
            StatusCode::TOO_MANY_REQUESTS
        );
        assert_eq!(
            http_status(Code::Unavailable),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            http_status(Code::Unknown),
            StatusCode::INTERNAL_SERVER_ERROR
        );
        assert_eq!(http_status(Code::Cancelled), StatusCode::REQUEST_TIMEOUT);
    }

    #[test]
    fn a_request_is_read_with_proto_names_strings_or_numbers() {
        let put: pb::PutRequest =
            decode(br#"{"key":"Zm9v","value":"YmFy","lease":"7","prev_kv":true}"#).unwrap();
        assert_eq!(put.key, b"foo");
        assert_eq!(put.value, b"bar");
        assert_eq!(put.lease, 7);
        assert!(put.prev_kv);
        let range: pb::RangeRequest =
            decode(br#"{"key":"YQ==","limit":3,"sort_order":"DESCEND","sort_target":4}"#).unwrap();
        assert_eq!(range.limit, 3);
        assert_eq!(range.sort_order, 2);
        assert_eq!(range.sort_target, 4);
        let grant: pb::LeaseGrantRequest = decode(br#"{"TTL": 10, "ID": 0}"#).unwrap();
        assert_eq!(grant.ttl, 10);
        let empty: pb::StatusRequest = decode(b"  \n").unwrap();
        assert_eq!(empty, pb::StatusRequest::default());
    }

    #[test]
    fn a_compare_against_zero_keeps_its_target() {
        let txn: pb::TxnRequest = decode(
            br#"{"compare":[{"key":"YQ==","result":"EQUAL","target":"CREATE","create_revision":0}],
                 "success":[{"request_put":{"key":"YQ==","value":"Yg=="}}],"failure":[]}"#,
        )
        .unwrap();
        assert_eq!(
            txn.compare[0].target_union,
            Some(pb::compare::TargetUnion::CreateRevision(0))
        );
        assert!(matches!(
            txn.success[0].request,
            Some(pb::request_op::Request::RequestPut(_))
        ));
    }

    #[test]
    fn bad_requests_are_invalid_arguments() {
        for body in [
            &br#"{"key":"Zm9v","colour":"red"}"#[..],
            br#"{"key":12}"#,
            br#"{"key":"Zm9v""#,
            br#"{"key":"Zm9v"} {"key":"YmFy"}"#,
            br#"[1,2]"#,
            br#"{"lease":"ten"}"#,
        ] {
            let refused = decode::<pb::PutRequest>(body).expect_err("refused");
            assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
            assert!(
                refused.message().contains("invalid JSON for PutRequest"),
                "{refused:?}"
            );
        }
    }

    #[test]
    fn a_response_is_written_as_etcds_gateway_writes_it() {
        let response = pb::RangeResponse {
            header: Some(pb::ResponseHeader {
                cluster_id: 14841639068965178418,
                member_id: 10276657743932975437,
                revision: 2,
                raft_term: 3,
            }),
            kvs: vec![rampart_api::mvccpb::KeyValue {
                key: b"foo".to_vec(),
                create_revision: 2,
                mod_revision: 2,
                version: 1,
                value: b"bar".to_vec(),
                lease: 0,
            }],
            more: false,
            count: 1,
        };
        let text = serde_json::to_string(&response).unwrap();
        assert_eq!(
            text,
            r#"{"header":{"cluster_id":"14841639068965178418","member_id":"10276657743932975437","revision":"2","raft_term":"3"},"kvs":[{"key":"Zm9v","create_revision":"2","mod_revision":"2","version":"1","value":"YmFy"}],"count":"1"}"#
        );
        let grant = pb::LeaseGrantResponse {
            header: Some(pb::ResponseHeader::default()),
            id: 5,
            ttl: 10,
            error: String::new(),
        };
        assert_eq!(
            serde_json::to_string(&grant).unwrap(),
            r#"{"header":{},"ID":"5","TTL":"10"}"#
        );
    }

    #[test]
    fn stream_lines_carry_results_and_a_last_error() {
        let ok: Result<pb::WatchResponse, Status> = Ok(pb::WatchResponse {
            created: true,
            ..Default::default()
        });
        assert_eq!(
            line(&ok),
            (
                Bytes::from_static(b"{\"result\":{\"created\":true}}\n"),
                false
            )
        );
        let failed: Result<pb::WatchResponse, Status> = Err(Status::from(ServerError::NoLeader));
        let (text, last) = line(&failed);
        assert!(last);
        assert_eq!(
            std::str::from_utf8(&text).unwrap(),
            r#"{"error":{"grpc_code":14,"http_code":503,"message":"etcdserver: no leader","http_status":"Service Unavailable"}}"#
        );
    }

    #[tokio::test]
    async fn streamed_requests_are_split_as_they_arrive() {
        let parts: Vec<Result<Bytes, Infallible>> = vec![
            Ok(Bytes::from_static(br#"{"create_request":{"key":"YQ=="}}"#)),
            Ok(Bytes::from_static(b"\n{\"cancel_req")),
            Ok(Bytes::from_static(
                br#"uest":{"watch_id":"1"}}{"progress_request":{}}"#,
            )),
        ];
        let body = Body::from_stream(futures::stream::iter(parts));
        let mut requests = Requests::<pb::WatchRequest>::new(body, 1024);
        let mut kinds = Vec::new();
        while let Some(request) = requests.next().await {
            kinds.push(request.unwrap().request_union.unwrap());
        }
        assert!(matches!(
            kinds[..],
            [
                pb::watch_request::RequestUnion::CreateRequest(_),
                pb::watch_request::RequestUnion::CancelRequest(pb::WatchCancelRequest {
                    watch_id: 1
                }),
                pb::watch_request::RequestUnion::ProgressRequest(_),
            ]
        ));
    }

    #[tokio::test]
    async fn a_streamed_request_over_the_limit_is_refused() {
        let body = Body::from(
            vec![b' '; 10]
                .into_iter()
                .chain(*b"{\"create_request\":{}}")
                .collect::<Vec<_>>(),
        );
        let mut requests = Requests::<pb::WatchRequest>::new(body, 16);
        let refused = requests.next().await.unwrap().expect_err("too large");
        assert_eq!(refused.message(), "etcdserver: request is too large");
    }
}
