//! The gRPC server's call counts, as go-grpc-prometheus names them for etcd:
//! `grpc_server_started_total` and `grpc_server_handled_total` (by type, service, method and
//! status code), counted by a tower layer in front of every client service.
//!
//! A call is counted as started when its request arrives and as handled when its status is
//! known: from the response headers (a call refused at once, "trailers only"), from the
//! trailers at the end of the response body, or as `Canceled` when the body is dropped before
//! either (the client went away). Requests that are not gRPC calls (the HTTP endpoints on the
//! same port) are not counted.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tonic::Code;

/// A call's labels: how it streams, and its service and method.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    grpc_type: &'static str,
    grpc_service: String,
    grpc_method: String,
}

/// A handled call's labels: [`CallLabels`] and its status code's name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandledLabels {
    grpc_type: &'static str,
    grpc_service: String,
    grpc_method: String,
    grpc_code: &'static str,
}

/// The counts, shared by every connection's layer.
#[derive(Debug, Default)]
pub struct GrpcStats {
    started: Family<CallLabels, Counter>,
    handled: Family<HandledLabels, Counter>,
}

impl GrpcStats {
    pub(crate) fn register(&self, registry: &mut Registry) {
        registry.register(
            "grpc_server_started",
            "Total number of RPCs started on the server.",
            self.started.clone(),
        );
        registry.register(
            "grpc_server_handled",
            "Total number of RPCs completed on the server, regardless of success or failure.",
            self.handled.clone(),
        );
    }

    /// The labels of a request for `path` (`/etcdserverpb.KV/Range`), if it is a gRPC call.
    fn call(path: &str) -> Option<CallLabels> {
        let (service, method) = path.strip_prefix('/')?.split_once('/')?;
        if !service.contains('.') || method.is_empty() || method.contains('/') {
            return None;
        }
        Some(CallLabels {
            grpc_type: call_type(service, method),
            grpc_service: service.to_string(),
            grpc_method: method.to_string(),
        })
    }

    fn handled(&self, call: &CallLabels, code: Code) {
        self.handled
            .get_or_create(&HandledLabels {
                grpc_type: call.grpc_type,
                grpc_service: call.grpc_service.clone(),
                grpc_method: call.grpc_method.clone(),
                grpc_code: code_name(code),
            })
            .inc();
    }
}

/// How a method streams, as go-grpc-prometheus labels it.
fn call_type(service: &str, method: &str) -> &'static str {
    match (service, method) {
        ("etcdserverpb.Watch", "Watch") | ("etcdserverpb.Lease", "LeaseKeepAlive") => "bidi_stream",
        ("etcdserverpb.Maintenance", "Snapshot") | ("v3electionpb.Election", "Observe") => {
            "server_stream"
        }
        ("grpc.health.v1.Health", "Watch") => "server_stream",
        _ => "unary",
    }
}

/// A status code's name as grpc-go's `codes.Code.String()` writes it.
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

/// The `grpc-status` in `headers`, if there is one.
fn status_in(headers: &http::HeaderMap) -> Option<Code> {
    let value = headers.get("grpc-status")?.to_str().ok()?;
    Some(Code::from_i32(value.parse().ok()?))
}

/// A call started and not yet counted as handled.
struct Pending {
    stats: Arc<GrpcStats>,
    call: CallLabels,
}

impl Pending {
    fn handled(self, code: Code) {
        self.stats.handled(&self.call, code);
    }
}

/// The layer that counts the calls of the service it wraps.
#[derive(Clone)]
pub struct GrpcStatsLayer {
    stats: Arc<GrpcStats>,
}

impl GrpcStatsLayer {
    pub fn new(stats: Arc<GrpcStats>) -> Self {
        GrpcStatsLayer { stats }
    }
}

impl<S> tower::Layer<S> for GrpcStatsLayer {
    type Service = GrpcStatsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcStatsService {
            inner,
            stats: self.stats.clone(),
        }
    }
}

/// [`GrpcStatsLayer`]'s service.
#[derive(Clone)]
pub struct GrpcStatsService<S> {
    inner: S,
    stats: Arc<GrpcStats>,
}

impl<S, B, ResBody> tower::Service<http::Request<B>> for GrpcStatsService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<CountedBody<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let pending = GrpcStats::call(request.uri().path()).map(|call| {
            self.stats.started.get_or_create(&call).inc();
            Pending {
                stats: self.stats.clone(),
                call,
            }
        });
        let response = self.inner.call(request);
        Box::pin(async move {
            let (parts, body) = response.await?.into_parts();
            let mut pending = pending;
            // A call answered with its status at once (refused, say) has no trailers.
            if let Some(code) = status_in(&parts.headers) {
                if let Some(pending) = pending.take() {
                    pending.handled(code);
                }
            }
            let body = CountedBody {
                inner: Box::pin(body),
                pending,
            };
            Ok(http::Response::from_parts(parts, body))
        })
    }
}

/// A response body that counts its call as handled when its trailers pass, or as canceled if
/// it is dropped first.
pub struct CountedBody<B> {
    inner: Pin<Box<B>>,
    pending: Option<Pending>,
}

impl<B: Body> Body for CountedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = self.inner.as_mut().poll_frame(cx);
        if let Poll::Ready(frame) = &polled {
            let code = match frame {
                Some(Ok(frame)) => frame
                    .trailers_ref()
                    .map(|t| status_in(t).unwrap_or(Code::Ok)),
                Some(Err(_)) => Some(Code::Unknown),
                // A body that ends with no trailers ended a call that sent its status already
                // (or is no gRPC call): nothing left to count.
                None => None,
            };
            if let Some(code) = code {
                if let Some(pending) = self.pending.take() {
                    pending.handled(code);
                }
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for CountedBody<B> {
    fn drop(&mut self) {
        if let Some(pending) = self.pending.take() {
            pending.handled(Code::Cancelled);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_are_told_from_other_requests_by_their_path() {
        let call = GrpcStats::call("/etcdserverpb.KV/Range").expect("a call");
        assert_eq!(
            (
                call.grpc_type,
                call.grpc_service.as_str(),
                call.grpc_method.as_str()
            ),
            ("unary", "etcdserverpb.KV", "Range")
        );
        let watch = GrpcStats::call("/etcdserverpb.Watch/Watch").expect("a call");
        assert_eq!(watch.grpc_type, "bidi_stream");
        let observe = GrpcStats::call("/v3electionpb.Election/Observe").expect("a call");
        assert_eq!(observe.grpc_type, "server_stream");
        for path in [
            "/metrics",
            "/health",
            "/v3/kv/range",
            "/",
            "/a.b/",
            "/a.b/c/d",
        ] {
            assert!(GrpcStats::call(path).is_none(), "{path} is no gRPC call");
        }
    }

    #[test]
    fn a_status_in_the_headers_or_trailers_is_read_as_grpc_writes_it() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(status_in(&headers), None);
        headers.insert("grpc-status", http::HeaderValue::from_static("14"));
        assert_eq!(status_in(&headers), Some(Code::Unavailable));
        assert_eq!(code_name(Code::Unavailable), "Unavailable");
        assert_eq!(code_name(Code::Cancelled), "Canceled");
    }
}
