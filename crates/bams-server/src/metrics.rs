//! Prometheus metrics: HTTP latency histograms per route, job counters and durations (from the
//! director), repository sizes.

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Install the process-wide recorder once; later calls return the same handle.
pub fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Suffix("_seconds".into()),
                    &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0, 600.0, 3600.0],
                )
                .ok()
                .and_then(|b| b.install_recorder().ok())
        })
        .clone()
}

/// Middleware: request latency by method, route pattern and status.
pub async fn track(req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().to_string();
    let route =
        req.extensions().get::<MatchedPath>().map_or_else(|| "unmatched".to_string(), |m| m.as_str().to_string());
    let resp = next.run(req).await;
    let code = resp.status().as_u16();
    let reason = match code {
        400 => Some("bad_request"),
        401 => Some("unauthorized"),
        403 => Some("forbidden"),
        408 => Some("timeout"),
        413 => Some("too_large"),
        429 => Some("too_many_requests"),
        _ => None,
    };
    if let Some(reason) = reason {
        metrics::counter!("bams_http_rejected_total", "reason" => reason, "route" => route.clone()).increment(1);
    }
    let status = code.to_string();
    metrics::histogram!("bams_http_request_duration_seconds", "method" => method, "route" => route, "status" => status)
        .record(start.elapsed().as_secs_f64());
    resp
}

/// Record a repository's stored size.
pub fn set_repository_bytes(name: &str, bytes: u64) {
    metrics::gauge!("bams_repository_stored_bytes", "repository" => name.to_string()).set(bytes as f64);
}
