//! Ferry telemetry: one `init()` per process, returning a guard that flushes traces
//! on drop; W3C trace context carried in NATS headers so one job is one trace across
//! every worker.
//!
//! A tracer provider is always installed, even without an exporter, so that spans
//! have real trace ids: they travel in the NATS headers and are recorded in
//! manifests whether or not anything collects them.

mod propagation;

use std::sync::OnceLock;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanExporter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

pub use propagation::{HeaderExtractor, HeaderInjector, current_trace_id, extract, inject};

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// What `init` needs to know.
#[derive(Debug, Clone, Default)]
pub struct TelemetryOptions {
    /// The `service.name` of exported spans (`ferry`, `ferry-dumper`, …).
    pub service_name: String,
    /// OTLP/HTTP endpoint for traces; falls back to `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub otlp_endpoint: Option<String>,
    /// Log line format.
    pub log_format: LogFormat,
}

/// Errors setting up telemetry.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The OTLP exporter could not be built (bad endpoint).
    #[error("failed to build the OTLP trace exporter for {endpoint}: {source}")]
    Exporter {
        /// The endpoint that was configured.
        endpoint: String,
        /// What the exporter said.
        source: opentelemetry_otlp::ExporterBuildError,
    },
    /// `init` was called twice in one process.
    #[error("telemetry is already initialised in this process")]
    AlreadyInitialised,
}

/// Flushes and shuts down the tracer provider when dropped.
#[must_use = "dropping the guard flushes and stops trace export"]
pub struct TelemetryGuard {
    provider: SdkTracerProvider,
}

impl TelemetryGuard {
    /// Exports every finished span now (tests read the exporter right after).
    pub fn flush(&self) {
        let _ = self.provider.force_flush();
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        let _ = self.provider.force_flush();
        let _ = self.provider.shutdown();
    }
}

static INITIALISED: OnceLock<()> = OnceLock::new();

/// Sets up logging and tracing for this process, exporting over OTLP/HTTP when an
/// endpoint is configured.
pub fn init(options: &TelemetryOptions) -> Result<TelemetryGuard, TelemetryError> {
    let endpoint = options
        .otlp_endpoint
        .clone()
        .or_else(|| std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok())
        .filter(|e| !e.is_empty());
    let builder = SdkTracerProvider::builder().with_resource(resource(options));
    let builder = match endpoint {
        Some(endpoint) => {
            use opentelemetry_otlp::WithExportConfig;
            let traces_url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_endpoint(traces_url)
                .build()
                .map_err(|source| TelemetryError::Exporter { endpoint, source })?;
            builder.with_batch_exporter(exporter)
        }
        None => builder,
    };
    install(options, builder.build())
}

/// Sets up logging and tracing with a given span exporter, exported synchronously
/// (tests pass an in-memory exporter and read the spans back).
pub fn init_with_exporter<E: SpanExporter + 'static>(
    options: &TelemetryOptions,
    exporter: E,
) -> Result<TelemetryGuard, TelemetryError> {
    let provider = SdkTracerProvider::builder()
        .with_resource(resource(options))
        .with_simple_exporter(exporter)
        .build();
    install(options, provider)
}

fn resource(options: &TelemetryOptions) -> Resource {
    Resource::builder()
        .with_service_name(options.service_name.clone())
        .build()
}

fn install(
    options: &TelemetryOptions,
    provider: SdkTracerProvider,
) -> Result<TelemetryGuard, TelemetryError> {
    if INITIALISED.set(()).is_err() {
        return Err(TelemetryError::AlreadyInitialised);
    }
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    opentelemetry::global::set_tracer_provider(provider.clone());
    let otel_layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("ferry"));
    let filter = EnvFilter::try_from_env("FERRY_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt_layer = match options.log_format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .boxed(),
    };
    // The filter applies to logs only: spans for tracing are kept at every level the
    // code creates them, so a quiet log level does not break a trace.
    tracing_subscriber::registry()
        .with(fmt_layer.with_filter(filter))
        .with(otel_layer)
        .try_init()
        .map_err(|_| TelemetryError::AlreadyInitialised)?;
    Ok(TelemetryGuard { provider })
}
