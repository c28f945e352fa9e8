//! The plain HTTP endpoints, served on the client URLs beside gRPC (as etcd serves them there)
//! and on `--listen-metrics-urls`:
//!
//! - `/metrics`: [`crate::metrics`] in Prometheus's text format.
//! - `/health`: etcd's health check, `{"health":"true"}` (HTTP 200), or `"false"` with a reason
//!   (HTTP 503) when an alarm is raised, this member knows of no leader, or a linearizable read
//!   through it fails within a second, as etcd's `/health` decides (etcd 3.5 adds the `reason`
//!   field; 3.4's clients read only `health`).
//! - `/livez` and `/readyz`: etcd 3.5's probes for orchestrators. Live: the process serves
//!   and its Raft runs. Ready: live, this member not found corrupt, a leader known, and a
//!   linearizable read succeeds. Each answers `ok` (HTTP 200) or the failed checks (HTTP 503);
//!   `?verbose` lists every check.
//!
//! A path no route serves answers as etcd's: Go's `404 page not found` ([`unknown_path`]).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use rampart_storage::AlarmType;
use serde::Deserialize;

use crate::metrics::{Metrics, CONTENT_TYPE};
use crate::node::Node;

/// How long the health checks' read may take before the member counts as unhealthy (etcd's).
const HEALTH_READ_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Clone)]
struct Endpoints {
    node: Arc<Node>,
    metrics: Arc<Metrics>,
}

/// The routes of the HTTP endpoints.
pub fn router(node: Arc<Node>, metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .route("/health", get(health))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .with_state(Endpoints { node, metrics })
}

/// Whether a request is a gRPC call (its content type `application/grpc`, or `+proto` and the
/// like), which the client URLs serve apart from the HTTP endpoints.
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"application/grpc"))
}

/// The answer to a path no route serves: to a gRPC call, gRPC's `Unimplemented` (as tonic's
/// own fallback answers); to anything else, Go's `404 page not found`, as etcd's HTTP mux
/// answers, not a gRPC answer to a browser or `curl`.
pub async fn unknown_path(request: Request) -> Response {
    if is_grpc(request.headers()) {
        let (parts, ()) = tonic::Status::unimplemented("")
            .into_http::<()>()
            .into_parts();
        return Response::from_parts(parts, Body::empty());
    }
    (
        StatusCode::NOT_FOUND,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        "404 page not found\n",
    )
        .into_response()
}

async fn metrics_text(State(endpoints): State<Endpoints>) -> Response {
    let text = endpoints.metrics.render().await;
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response()
}

/// Why this member is unhealthy in etcd's sense, if it is: an alarm is raised anywhere in the
/// cluster, or it would not serve a linearizable request now.
async fn unhealthy_because(node: &Node) -> Option<&'static str> {
    if let Some(alarm) = node.alarms().first() {
        return Some(match alarm.alarm {
            AlarmType::Corrupt => "ALARM CORRUPT",
            AlarmType::NoSpace => "ALARM NOSPACE",
            AlarmType::None => "ALARM NONE",
        });
    }
    serves_linearizable_reads(node).await
}

/// Why this member would not serve a linearizable request now, if it would not.
async fn serves_linearizable_reads(node: &Node) -> Option<&'static str> {
    if !node.has_leader() {
        return Some("RAFT NO LEADER");
    }
    match tokio::time::timeout(HEALTH_READ_TIMEOUT, node.read_barrier()).await {
        Ok(Ok(())) => None,
        Ok(Err(_)) | Err(_) => Some("QGET ERROR"),
    }
}

async fn health(State(endpoints): State<Endpoints>) -> Response {
    let reason = unhealthy_because(&endpoints.node).await;
    if let Some(reason) = reason {
        tracing::warn!(reason, "/health error");
    }
    let body = serde_json::json!({
        "health": if reason.is_none() { "true" } else { "false" },
        "reason": reason.unwrap_or(""),
    });
    let status = if reason.is_none() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body.to_string(),
    )
        .into_response()
}

#[derive(Deserialize)]
struct Probe {
    verbose: Option<String>,
}

/// One named check of `/livez` or `/readyz`, and whether it passed.
type Check = (&'static str, bool);

fn probe_answer(checks: &[Check], verbose: bool) -> Response {
    let passed = checks.iter().all(|(_, ok)| *ok);
    let mut text = String::new();
    for (name, ok) in checks {
        if verbose || !ok {
            let mark = if *ok { "[+]" } else { "[-]" };
            let verdict = if *ok { "ok" } else { "failed" };
            text.push_str(&format!("{mark}{name} {verdict}\n"));
        }
    }
    let status = if passed {
        text.push_str("ok\n");
        StatusCode::OK
    } else {
        text.push_str("check failed\n");
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        text,
    )
        .into_response()
}

fn raft_runs(node: &Node) -> bool {
    node.metrics().running_state.is_ok()
}

async fn livez(State(endpoints): State<Endpoints>, Query(probe): Query<Probe>) -> Response {
    let checks = [("raft_running", raft_runs(&endpoints.node))];
    probe_answer(&checks, probe.verbose.is_some())
}

async fn readyz(State(endpoints): State<Endpoints>, Query(probe): Query<Probe>) -> Response {
    let node = &endpoints.node;
    let has_leader = node.has_leader();
    let read = has_leader && serves_linearizable_reads(node).await.is_none();
    let checks = [
        ("raft_running", raft_runs(node)),
        ("data_corruption", node.check_not_corrupt().is_ok()),
        ("leader", has_leader),
        ("linearizable_read", read),
    ];
    probe_answer(&checks, probe.verbose.is_some())
}
