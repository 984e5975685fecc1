//! Structured logs and Prometheus metrics.

use std::{sync::OnceLock, time::Instant};

use axum::{
    extract::{MatchedPath, Request},
    http::{HeaderName, HeaderValue},
    middleware::Next,
    response::Response,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing::Span;
use tracing_subscriber::EnvFilter;

/// The header a client may send to name its request, and reads back on every answer.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest client-chosen request id kept; a longer one is replaced by a generated one.
const MAX_REQUEST_ID_CHARS: usize = 128;

/// Upper bounds (seconds) of the latency histograms: 1 ms to 30 s. Histograms (not summaries)
/// so that replicas' latencies can be summed and their quantiles computed in Prometheus.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Creates per group commit (at most 64).
const GROUP_SIZE_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0];

/// Upper bounds (seconds) of a create group's write, commit included: finer than the request
/// latencies, as a group on a local disk takes about a millisecond.
const GROUP_WRITE_BUCKETS: &[f64] = &[
    0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.1, 0.5, 2.5,
];

/// Logs go to stderr (stdout carries the CLI's output, e.g. a new API key), as JSON lines when
/// `ANNOTASK_LOG_FORMAT=json`, else as text (coloured only on a terminal).
pub fn init_tracing() {
    use std::io::IsTerminal;

    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let installed = if std::env::var("ANNOTASK_LOG_FORMAT").is_ok_and(|format| format == "json") {
        builder.json().try_init()
    } else {
        builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init()
    };
    // Already installed (tests embed several servers in one process): keep the first.
    drop(installed);
}

static PROMETHEUS: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// The process-wide Prometheus recorder (installed once, shared by every server in the process).
pub fn prometheus() -> Option<&'static PrometheusHandle> {
    PROMETHEUS
        .get_or_init(|| {
            let installed = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Suffix("_duration_seconds".to_owned()),
                    LATENCY_BUCKETS,
                )
                .and_then(|builder| {
                    builder.set_buckets_for_metric(
                        Matcher::Full("annotask_create_group_size".to_owned()),
                        GROUP_SIZE_BUCKETS,
                    )
                })
                .and_then(|builder| {
                    builder.set_buckets_for_metric(
                        Matcher::Full("annotask_create_group_write_seconds".to_owned()),
                        GROUP_WRITE_BUCKETS,
                    )
                })
                .and_then(PrometheusBuilder::install_recorder);
            match installed {
                Ok(handle) => {
                    spawn_upkeep(handle.clone());
                    Some(handle)
                }
                Err(err) => {
                    tracing::warn!(error = %err, "metrics recorder not installed");
                    None
                }
            }
        })
        .as_ref()
}

/// How often histogram samples are folded into their buckets.
const METRICS_UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// The recorder buffers every histogram sample until it is folded into the buckets, which
/// only a scrape or an upkeep does: with nobody scraping `/metrics`, the buffer grew by every
/// request's samples (≈ 7 MiB a minute at 5,000 requests/s in a soak).
fn spawn_upkeep(handle: PrometheusHandle) {
    let spawned = std::thread::Builder::new()
        .name("metrics-upkeep".to_owned())
        .spawn(move || loop {
            std::thread::sleep(METRICS_UPKEEP_EVERY);
            handle.run_upkeep();
        });
    if let Err(err) = spawned {
        tracing::warn!(error = %err, "metrics upkeep thread not started");
    }
}

/// Drops a client's `x-request-id` that is not one printable ASCII word of at most
/// [`MAX_REQUEST_ID_CHARS`] (it would be echoed and logged), so that one is generated instead.
pub async fn drop_unusable_request_id(mut request: Request) -> Request {
    let sent = request.headers().get_all(&REQUEST_ID);
    let mut ids = sent.iter();
    let usable = match (ids.next(), ids.next()) {
        (Some(id), None) => is_usable_request_id(id),
        (None, _) => true,
        // Several ids: none of them names the request.
        (Some(_), Some(_)) => false,
    };
    if !usable {
        request.headers_mut().remove(&REQUEST_ID);
    }
    request
}

fn is_usable_request_id(id: &HeaderValue) -> bool {
    let id = id.as_bytes();
    !id.is_empty() && id.len() <= MAX_REQUEST_ID_CHARS && id.iter().all(u8::is_ascii_graphic)
}

/// The span around one request: every log line written while serving it carries its id.
/// The path, not the URI, so that query strings stay out of the logs.
pub fn request_span(request: &Request) -> Span {
    let id = request
        .headers()
        .get(&REQUEST_ID)
        .and_then(|id| id.to_str().ok())
        .unwrap_or_default();
    tracing::info_span!(
        "request",
        request_id = %id,
        method = %request.method(),
        path = %request.uri().path(),
    )
}

/// Counts requests and their latency by route (not by raw path, which would be unbounded).
pub async fn record_request(request: Request, next: Next) -> Response {
    let matched = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_owned());
    let path = request.uri().path().to_owned();
    let method = request.method().as_str().to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    let route = route_label(matched, path, &response);
    let status = response.status().as_u16().to_string();
    metrics::counter!("annotask_http_requests_total", "method" => method.clone(), "route" => route.clone(), "status" => status).increment(1);
    metrics::histogram!("annotask_http_request_duration_seconds", "method" => method, "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}

/// gRPC services match as `/{service}/{*rest}`: name the method too, unless tonic answered
/// UNIMPLEMENTED or refused the request, so labels stay bounded by the services' real methods.
fn route_label(matched: Option<String>, path: String, response: &Response) -> String {
    const UNIMPLEMENTED: &str = "12";
    match matched {
        Some(route) if route.ends_with("/{*rest}") => {
            let unknown_method = !response.status().is_success()
                || response
                    .headers()
                    .get("grpc-status")
                    .is_some_and(|status| status == UNIMPLEMENTED);
            if unknown_method {
                route
            } else {
                path
            }
        }
        Some(route) => route,
        None => "unmatched".to_owned(),
    }
}
