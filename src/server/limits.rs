//! Limits every request passes before routing: a cap on requests in flight (refused at once,
//! never queued), a time limit until the answer starts, and reading away what is left of a
//! body the handler did not read, so an HTTP/1 client sees the answer instead of a reset.

use std::{
    collections::HashMap,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    body::{Body, Bytes},
    extract::{Request, State},
    http::{header, HeaderValue, StatusCode, Version},
    middleware::Next,
    response::{IntoResponse, Response},
    Json,
};
use futures_util::StreamExt;
use http_body::{Body as HttpBody, Frame, SizeHint};
use serde_json::json;
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};
use tonic::Code;
use tonic_types::{ErrorDetails, StatusExt};

use crate::config::Limits;

/// Their answer may only start once the whole upload is read, which takes as long as it takes.
const UNTIMED_PATHS: [&str; 2] = ["/v1/tasks/import", "/annotask.v1.TaskService/ImportTasks"];

/// Health checks and metric scrapes must still answer when the server is saturated.
const UNCOUNTED_PATHS: [&str; 3] = ["/healthz", "/metrics", "/grpc.health.v1.Health/Check"];

pub struct RequestLimits {
    in_flight: Arc<Semaphore>,
    max_in_flight: usize,
    request_timeout: Duration,
    max_discarded_body_bytes: u64,
}

impl RequestLimits {
    pub fn new(limits: &Limits) -> Arc<Self> {
        let max_in_flight = limits.max_concurrent_requests.max(1);
        Arc::new(RequestLimits {
            in_flight: Arc::new(Semaphore::new(max_in_flight)),
            max_in_flight,
            request_timeout: limits.request_timeout,
            max_discarded_body_bytes: limits.max_discarded_body_bytes,
        })
    }
}

/// The middleware: admission, then the timed call, then the leftover body read away.
pub async fn enforce(
    State(limits): State<Arc<RequestLimits>>,
    request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path();
    let grpc_content_type = grpc_content_type(&request);
    let timed = !UNTIMED_PATHS.contains(&path);
    let permit = if UNCOUNTED_PATHS.contains(&path) {
        None
    } else {
        match limits.in_flight.clone().try_acquire_owned() {
            Ok(permit) => Some(Arc::new(permit)),
            Err(_) => {
                tracing::debug!(path, "refused: too many requests in flight");
                let message = format!(
                    "The server is handling its maximum of {} requests; retry shortly.",
                    limits.max_in_flight
                );
                // Read away even here: a browser shown a reset cannot tell it was asked to retry.
                let http1 = is_http1(&request);
                let body = request.into_body();
                if http1 && !body.is_end_stream() {
                    let (max_bytes, deadline) =
                        (limits.max_discarded_body_bytes, limits.request_timeout);
                    tokio::spawn(discard(body, max_bytes, deadline));
                }
                return refusal(
                    grpc_content_type,
                    StatusCode::TOO_MANY_REQUESTS,
                    Code::ResourceExhausted,
                    "OVERLOADED",
                    message,
                );
            }
        }
    };

    let (request, mut leftover) = watch_body(request);
    let outcome = if timed {
        tokio::time::timeout(limits.request_timeout, next.run(request))
            .await
            .ok()
    } else {
        Some(next.run(request).await)
    };
    // The body comes back once the handler has dropped it unread (or timed out and was dropped).
    let mut still_held = false;
    let unread = match leftover.as_mut().map(oneshot::Receiver::try_recv) {
        Some(Ok(body)) => Some(body),
        Some(Err(oneshot::error::TryRecvError::Empty)) => {
            still_held = true;
            None
        }
        Some(Err(oneshot::error::TryRecvError::Closed)) | None => None,
    };
    let response = outcome
        .unwrap_or_else(|| timed_out(grpc_content_type, limits.request_timeout, unread.is_some()));

    let (max_bytes, deadline) = (limits.max_discarded_body_bytes, limits.request_timeout);
    if let Some(body) = unread {
        let permit = permit.clone();
        tokio::spawn(async move {
            discard(body, max_bytes, deadline).await;
            drop(permit);
        });
    } else if let Some(receiver) = leftover.filter(|_| still_held) {
        // Still held by a handler that answered early (a streaming answer): wait for it.
        let permit = permit.clone();
        tokio::spawn(async move {
            if let Ok(body) = receiver.await {
                discard(body, max_bytes, deadline).await;
            }
            drop(permit);
        });
    }
    match permit {
        Some(permit) => response.map(|body| {
            Body::new(Holding {
                body,
                _permit: permit,
            })
        }),
        None => response,
    }
}

/// The request's content type when it is gRPC or grpc-web, answered in kind.
fn grpc_content_type(request: &Request) -> Option<HeaderValue> {
    request
        .headers()
        .get(header::CONTENT_TYPE)
        .filter(|value| value.as_bytes().starts_with(b"application/grpc"))
        .cloned()
}

fn timed_out(
    grpc_content_type: Option<HeaderValue>,
    timeout: Duration,
    body_incomplete: bool,
) -> Response {
    let seconds = timeout.as_secs_f64();
    if body_incomplete {
        refusal(
            grpc_content_type,
            StatusCode::REQUEST_TIMEOUT,
            Code::DeadlineExceeded,
            "REQUEST_TIMEOUT",
            format!("The request body was not received within {seconds} s."),
        )
    } else {
        refusal(
            grpc_content_type,
            StatusCode::SERVICE_UNAVAILABLE,
            Code::DeadlineExceeded,
            "REQUEST_TIMEOUT",
            format!("The request did not finish within {seconds} s; retry later."),
        )
    }
}

/// REST: `{"status_code", "error"}` with `Retry-After` on 429/503. gRPC and grpc-web: a
/// trailers-only answer with the same message and an `ErrorInfo`, as every other error has.
fn refusal(
    grpc_content_type: Option<HeaderValue>,
    status: StatusCode,
    code: Code,
    reason: &str,
    message: String,
) -> Response {
    if let Some(content_type) = grpc_content_type {
        let details = ErrorDetails::with_error_info(reason, "annotask", HashMap::new());
        let mut response = tonic::Status::with_error_details(code, message, details)
            .into_http::<Body>()
            .into_response();
        // grpc-web clients need their own content type back (tonic writes `application/grpc`).
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, content_type);
        return response;
    }
    let body = Json(json!({"status_code": status.as_u16(), "error": message}));
    let mut response = (status, body).into_response();
    if matches!(
        status,
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
    ) {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

/// Wraps an HTTP/1 request body that has not ended yet; the receiver gets it back if the
/// handler drops it before its end.
fn watch_body(request: Request) -> (Request, Option<oneshot::Receiver<Body>>) {
    // HTTP/2 resets only the stream; bodies known to be empty need nothing.
    if !is_http1(&request) || request.body().is_end_stream() {
        return (request, None);
    }
    let (handed_back, leftover) = oneshot::channel();
    let request = request.map(|body| {
        Body::new(Watched {
            body: Some(body),
            handed_back: Some(handed_back),
            ended: false,
        })
    });
    (request, Some(leftover))
}

fn is_http1(request: &Request) -> bool {
    matches!(request.version(), Version::HTTP_10 | Version::HTTP_11)
}

/// Reads up to `max_bytes` of the rest of a body within `deadline`, and throws it away.
async fn discard(body: Body, max_bytes: u64, deadline: Duration) {
    let mut chunks = body.into_data_stream();
    let mut discarded: u64 = 0;
    let read_all = tokio::time::timeout(deadline, async {
        while let Some(Ok(chunk)) = chunks.next().await {
            discarded += chunk.len() as u64;
            if discarded > max_bytes {
                return false;
            }
        }
        true
    })
    .await;
    if read_all != Ok(true) {
        tracing::debug!(
            discarded,
            "stopped discarding an unread request body; the connection will be closed"
        );
    }
}

struct Watched {
    body: Option<Body>,
    handed_back: Option<oneshot::Sender<Body>>,
    /// Read to its end, or failed: nothing worth reading is left.
    ended: bool,
}

impl HttpBody for Watched {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let Some(body) = self.body.as_mut() else {
            return Poll::Ready(None);
        };
        let frame = Pin::new(body).poll_frame(cx);
        if matches!(frame, Poll::Ready(None | Some(Err(_)))) {
            self.ended = true;
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.as_ref().is_none_or(HttpBody::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.body
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), HttpBody::size_hint)
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        if let (Some(body), Some(handed_back)) = (self.body.take(), self.handed_back.take()) {
            if !self.ended && !body.is_end_stream() {
                let _ = handed_back.send(body);
            }
        }
    }
}

/// A response body that keeps its request's in-flight permit until it is sent or dropped.
struct Holding {
    body: Body,
    _permit: Arc<OwnedSemaphorePermit>,
}

impl HttpBody for Holding {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
