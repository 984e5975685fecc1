//! Structured logs and Prometheus metrics.

use std::{sync::OnceLock, time::Instant};

use axum::{
    extract::{MatchedPath, Request},
    middleware::Next,
    response::Response,
};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

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
        .get_or_init(|| match PrometheusBuilder::new().install_recorder() {
            Ok(handle) => Some(handle),
            Err(err) => {
                tracing::warn!(error = %err, "metrics recorder not installed");
                None
            }
        })
        .as_ref()
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
