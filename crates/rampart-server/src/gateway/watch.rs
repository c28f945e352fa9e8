//! `watch`: the bidirectional Watch (etcd's `Watch` binding). The body holds one or more
//! `WatchRequest`s (`{"create_request": {...}}`, `{"cancel_request": {...}}`,
//! `{"progress_request": {}}`), read as they arrive; the answer is a stream of
//! `{"result": WatchResponse}` lines, from the same watch stream the gRPC service opens
//! (`Client::watch`). As over gRPC, the end of the body does not end the watches: the answer
//! goes on until the client hangs up or the member stops.
//!
//! A first request that cannot be read is refused with HTTP 400; a later one ends the stream
//! with an error line (etcd's gateway stops reading the body there and keeps the watches; an
//! error tells the client why its request had no effect).

use axum::extract::{Request, State};
use axum::response::Response;
use axum::Router;
use futures::StreamExt;
use rampart_api::etcdserverpb as pb;
use tokio::sync::oneshot;
use tonic::Status;

use super::json::{self, Requests};
use super::{metadata, post, Shared};

pub(super) fn routes() -> Router<Shared> {
    Router::new().route("/watch", post(watch))
}

async fn watch(State(g): State<Shared>, request: Request) -> Response {
    let caller = match g.check("/etcdserverpb.Watch/Watch", &metadata(request.headers())) {
        Ok(caller) => caller,
        Err(status) => return json::error(&status),
    };
    let mut requests = Requests::<pb::WatchRequest>::new(request.into_body(), g.body_limit);
    let first = match requests.next().await {
        Some(Ok(first)) => Some(first),
        Some(Err(status)) => {
            requests.discard().await;
            return json::error(&status);
        }
        None => None,
    };
    // A request that cannot be read ends the requests, and its error the answer.
    let (refused, refusal) = oneshot::channel::<Status>();
    let feed = futures::stream::unfold(
        (first, requests, Some(refused)),
        |(first, mut requests, mut refused)| async move {
            let request = match first {
                Some(first) => first,
                None => match requests.next().await? {
                    Ok(request) => request,
                    Err(status) => {
                        if let Some(refused) = refused.take() {
                            let _ = refused.send(status);
                        }
                        return None;
                    }
                },
            };
            Some((
                Ok::<_, std::convert::Infallible>(request),
                (None, requests, refused),
            ))
        },
    );
    let responses = g
        .client
        .as_caller(caller)
        .watch(Box::pin(feed))
        .map(|response| response.map_err(Status::from));
    let refusal = futures::stream::once(refusal)
        .filter_map(|refused| async move { refused.ok().map(Err::<pb::WatchResponse, Status>) });
    json::stream(futures::stream::select(responses, refusal))
}
