//! `/healthz`, `/readyz` and `/metrics` of one process.
//!
//! `/healthz` says the process is alive (for a liveness probe: restart when it stops
//! answering). `/readyz` says it can do its work now: NATS connected, Ferry's streams
//! present, and the object store reachable for the workers that use it (for a
//! readiness probe and for `docker compose` health checks).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use ferry_proto::subjects;
use ferry_storage::ObjectStore;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// What `/readyz` checks.
#[derive(Clone)]
pub struct Readiness {
    /// The process's NATS connection.
    pub nats: async_nats::Client,
    /// JetStream on it, to look the streams up.
    pub jetstream: async_nats::jetstream::Context,
    /// The object store, for the workers that read or write it.
    pub store: Option<Arc<dyn ObjectStore>>,
}

/// How long one readiness check may take: a probe must answer before the
/// orchestrator's own timeout (Kubernetes' default is one second more than this).
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// A key no backup uses: looking it up proves the store answers and the
/// credentials are accepted, without listing anything.
const PROBE_KEY: &str = "ready-probe";

impl Readiness {
    /// Every problem that makes the process unready; empty when ready.
    pub async fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        match self.nats.connection_state() {
            async_nats::connection::State::Connected => {
                for stream in [subjects::JOBS_STREAM, subjects::EVENTS_STREAM] {
                    match tokio::time::timeout(CHECK_TIMEOUT, self.jetstream.get_stream(stream))
                        .await
                    {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => problems.push(format!("stream {stream}: {e}")),
                        Err(_) => problems.push(format!("stream {stream}: no answer from NATS")),
                    }
                }
            }
            other => problems.push(format!("NATS is {other}")),
        }
        if let Some(store) = &self.store {
            match tokio::time::timeout(CHECK_TIMEOUT, store.head(PROBE_KEY)).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => problems.push(format!("store {}: {e}", store.describe())),
                Err(_) => problems.push(format!("store {}: no answer", store.describe())),
            }
        }
        problems
    }
}

#[derive(Clone)]
struct HttpState {
    metrics: Metrics,
    readiness: Readiness,
}

/// Serves the endpoints on `listen` until `shutdown`; returns the bound address
/// (useful with port 0).
pub async fn serve(
    listen: SocketAddr,
    metrics: Metrics,
    readiness: Readiness,
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
        .with_state(HttpState { metrics, readiness });
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
    let problems = state.readiness.problems().await;
    if problems.is_empty() {
        (StatusCode::OK, "ready\n".to_string())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", problems.join("; ")),
        )
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
