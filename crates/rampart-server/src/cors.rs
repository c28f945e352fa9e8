//! etcd's cross-origin resource sharing (`--cors`) on the HTTP answers of the client URLs: the
//! JSON gateway, `/version`, `/health`, `/metrics` and the probes, so that a page in a browser
//! may call them. As etcd 3.4's access controller: for an allowed origin (any with `*`, the
//! default, whether the request names one or not; else a request whose `Origin` is exactly one
//! of `--cors`'s URLs) every answer carries `Access-Control-Allow-Origin` (`*` or that origin),
//! `Access-Control-Allow-Methods: POST, GET, OPTIONS, PUT, DELETE` and
//! `Access-Control-Allow-Headers: accept, content-type, authorization`; an `OPTIONS` request (a
//! browser's preflight), to any path, answers 200 with an empty body, allowed or not. gRPC calls
//! pass untouched, as etcd serves them apart from its HTTP handlers.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::{
    ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN, ORIGIN,
};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::config::Cors;

/// The methods etcd's answers allow.
const ALLOW_METHODS: HeaderValue = HeaderValue::from_static("POST, GET, OPTIONS, PUT, DELETE");
/// The request headers etcd's answers allow.
const ALLOW_HEADERS: HeaderValue = HeaderValue::from_static("accept, content-type, authorization");

/// The middleware (`axum::middleware::from_fn_with_state`, with `--cors`'s origins) that answers
/// preflights and adds the headers to the answers of allowed origins.
pub async fn cors(State(cors): State<Arc<Cors>>, request: Request, next: Next) -> Response {
    if crate::http::is_grpc(request.headers()) {
        return next.run(request).await;
    }
    let allowed = match &*cors {
        Cors::AnyOrigin => Some(HeaderValue::from_static("*")),
        Cors::Origins(origins) => request
            .headers()
            .get(ORIGIN)
            .filter(|origin| origins.iter().any(|o| o.as_bytes() == origin.as_bytes()))
            .cloned(),
    };
    let mut response = if request.method() == Method::OPTIONS {
        StatusCode::OK.into_response()
    } else {
        next.run(request).await
    };
    if let Some(origin) = allowed {
        let headers = response.headers_mut();
        headers.insert(ACCESS_CONTROL_ALLOW_METHODS, ALLOW_METHODS);
        headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        headers.insert(ACCESS_CONTROL_ALLOW_HEADERS, ALLOW_HEADERS);
    }
    response
}
