//! etcd 3.4's access controller on the HTTP answers of the client URLs (the JSON gateway,
//! `/version`, `/health`, `/metrics`, the probes, unknown paths), a layer over those routes
//! only; gRPC calls pass untouched (a call to an unknown method reaches it through the
//! fallback), as etcd serves them apart from its HTTP handlers. In etcd's order:
//!
//! 1. `--host-whitelist`, on plain-HTTP URLs only: a request whose `Host` (without its port)
//!    is not listed is refused with 421 and etcd's text about DNS rebinding (CVE-2018-5702).
//! 2. `--cors`, so that a page in a browser may call the member: for an allowed origin (any with
//!    `*`, the default, whether the request names one or not; else a request whose `Origin` is
//!    exactly one of `--cors`'s URLs) the answer carries `Access-Control-Allow-Origin` (`*` or
//!    that origin), `Access-Control-Allow-Methods: POST, GET, OPTIONS, PUT, DELETE` and
//!    `Access-Control-Allow-Headers: accept, content-type, authorization`.
//! 3. An `OPTIONS` request (a browser's preflight), to any path, answers 200 with an empty body.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::{
    ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN,
    CONTENT_TYPE, HOST, ORIGIN, X_CONTENT_TYPE_OPTIONS,
};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::config::Cors;

/// The methods etcd's answers allow.
const ALLOW_METHODS: HeaderValue = HeaderValue::from_static("POST, GET, OPTIONS, PUT, DELETE");
/// The request headers etcd's answers allow.
const ALLOW_HEADERS: HeaderValue = HeaderValue::from_static("accept, content-type, authorization");

/// What one client listener lets through: the middleware's state.
pub struct Access {
    /// `--cors`'s origins.
    pub cors: Cors,
    /// `--host-whitelist`'s names, on a plain-HTTP listener; `None` allows any host (the
    /// default, and always on an https:// listener, as etcd checks only requests without TLS).
    pub hosts: Option<Vec<String>>,
}

/// The middleware (`axum::middleware::from_fn_with_state`) that refuses requests naming other
/// hosts, answers preflights and adds the CORS headers to the answers of allowed origins.
pub async fn access_control(
    State(access): State<Arc<Access>>,
    request: Request,
    next: Next,
) -> Response {
    if crate::http::is_grpc(request.headers()) {
        return next.run(request).await;
    }
    if let Some(hosts) = &access.hosts {
        let host = host_name(&request);
        if !hosts.contains(&host) {
            return misdirected(&host);
        }
    }
    let allowed = match &access.cors {
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

/// The host a request names (its `Host` header, or the authority of an HTTP/2 request) without
/// its port, as etcd's `httputil.GetHostname` takes it: what Go's `net.SplitHostPort` returns
/// as the host, or the whole value where that fails (no port, too many colons).
fn host_name(request: &Request) -> String {
    let value = match request.headers().get(HOST) {
        Some(host) => String::from_utf8_lossy(host.as_bytes()).into_owned(),
        None => request
            .uri()
            .authority()
            .map(|a| a.to_string())
            .unwrap_or_default(),
    };
    if let Some(rest) = value.strip_prefix('[') {
        // "[host]:port": the host between the brackets.
        if let Some((host, port)) = rest.split_once(']') {
            if port.starts_with(':') && !port[1..].contains(':') {
                return host.to_string();
            }
        }
        return value;
    }
    match value.split_once(':') {
        Some((host, port)) if !port.contains(':') => host.to_string(),
        _ => value,
    }
}

/// etcd's refusal of a request naming a host that `--host-whitelist` does not list: 421 and
/// its text, as Go's `http.Error` writes it.
fn misdirected(host: &str) -> Response {
    let text = format!(
        "\netcd received your request, but the Host header was unrecognized.\n\n\
         To fix this, choose one of the following options:\n\
         - Enable TLS, then any HTTPS request will be allowed.\n\
         - Add the hostname you want to use to the whitelist in settings.\n  \
         - e.g. etcd --host-whitelist {host:?}\n\n\
         This requirement has been added to help prevent \"DNS Rebinding\" attacks \
         (CVE-2018-5702).\n\n"
    );
    (
        StatusCode::MISDIRECTED_REQUEST,
        [
            (CONTENT_TYPE, "text/plain; charset=utf-8"),
            (X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        text,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(host: &str) -> String {
        let request = Request::builder()
            .uri("/health")
            .header(HOST, host)
            .body(axum::body::Body::empty())
            .unwrap();
        host_name(&request)
    }

    #[test]
    fn host_names_are_taken_as_gos_split_host_port_does() {
        assert_eq!(named("example.com:2379"), "example.com");
        assert_eq!(named("example.com"), "example.com");
        assert_eq!(named("127.0.0.1:2379"), "127.0.0.1");
        assert_eq!(named("[::1]:2379"), "::1");
        assert_eq!(named("[::1]"), "[::1]");
        assert_eq!(named("a:b:c"), "a:b:c");
    }
}
