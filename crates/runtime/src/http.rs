//! `/healthz`, `/readyz` and `/metrics` of one process.

use std::net::SocketAddr;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

#[derive(Clone)]
struct HttpState {
    metrics: Metrics,
    nats: async_nats::Client,
}

/// Serves the endpoints on `listen` until `shutdown`; returns the bound address
/// (useful with port 0).
pub async fn serve(
    listen: SocketAddr,
    metrics: Metrics,
    nats: async_nats::Client,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("failed to listen on {listen} (http.listen): {e}"),
        )
    })?;
    let addr = listener.local_addr()?;
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(HttpState { metrics, nats });
    tokio::spawn(async move {
        let result = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = result {
            tracing::error!(error = %e, "health and metrics server stopped");
        }
    });
    tracing::info!(%addr, "serving /healthz, /readyz and /metrics");
    Ok(addr)
}

async fn readyz(State(state): State<HttpState>) -> impl IntoResponse {
    match state.nats.connection_state() {
        async_nats::connection::State::Connected => (StatusCode::OK, "ready\n".to_string()),
        other => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: NATS is {other}\n"),
        ),
    }
}

async fn metrics_text(State(state): State<HttpState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}
