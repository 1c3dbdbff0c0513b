//! Ferry telemetry: one `init()` per process, returning a guard that flushes traces
//! on drop; W3C trace context carried in NATS headers so one job is one trace across
//! every worker.
//!
//! A tracer provider is always installed, even without an exporter, so that spans
//! have real trace ids: they travel in the NATS headers and are recorded in
//! manifests whether or not anything collects them.

mod logs;
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

/// How spans travel to the collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// OTLP over gRPC (the collector's port 4317).
    Grpc,
    /// OTLP/HTTP with protobuf bodies (port 4318, path `/v1/traces`).
    Http,
}

impl OtlpProtocol {
    /// The protocol named by `OTEL_EXPORTER_OTLP_PROTOCOL` (`grpc`, `http/protobuf`),
    /// when set to one Ferry speaks.
    pub fn from_env() -> Option<OtlpProtocol> {
        match std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL").ok()?.as_str() {
            "grpc" => Some(OtlpProtocol::Grpc),
            "http/protobuf" | "http" => Some(OtlpProtocol::Http),
            _ => None,
        }
    }
}

/// What `init` needs to know.
#[derive(Debug, Clone, Default)]
pub struct TelemetryOptions {
    /// The `service.name` of exported spans (`ferry`, `ferry-dumper`, …).
    pub service_name: String,
    /// OTLP endpoint for traces (`http://collector:4317`); falls back to
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub otlp_endpoint: Option<String>,
    /// gRPC or HTTP; unset: `OTEL_EXPORTER_OTLP_PROTOCOL`, then gRPC (the port
    /// 4317 of the documented configuration).
    pub otlp_protocol: Option<OtlpProtocol>,
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

/// Sets up logging and tracing for this process, exporting over OTLP (gRPC or HTTP)
/// when an endpoint is configured. Must run inside a Tokio runtime: the gRPC client
/// lives on it.
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
            let protocol = options
                .otlp_protocol
                .or_else(OtlpProtocol::from_env)
                .unwrap_or(OtlpProtocol::Grpc);
            let exporter = match protocol {
                OtlpProtocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
                    .with_tonic()
                    .with_endpoint(endpoint.clone())
                    .build(),
                OtlpProtocol::Http => opentelemetry_otlp::SpanExporter::builder()
                    .with_http()
                    .with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
                    .build(),
            }
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
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ))
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
    let dispatch = logs::DispatchCell::default();
    let fmt_layer = match options.log_format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .event_format(logs::WithTraceIds::text(dispatch.clone()))
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .event_format(logs::WithTraceIds::json(dispatch.clone()))
            // The JSON event format reads span fields as JSON: record them so.
            .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
            .with_writer(std::io::stderr)
            .boxed(),
    };
    // The log filter applies to logs only: Ferry's spans are traced at every level
    // the code creates them, so a quiet log level does not break a trace. The
    // exporter's own transport (HTTP/2, gRPC) is never traced: its spans would be
    // exported by the same transport, which would trace that export, and so on.
    let trace_filter = EnvFilter::new(
        "info,ferry=trace,h2=off,hyper=off,hyper_util=off,tonic=off,tower=off,\
         reqwest=off,opentelemetry=off,opentelemetry_sdk=off,opentelemetry_otlp=off",
    );
    tracing_subscriber::registry()
        .with(otel_layer.with_filter(trace_filter))
        .with(fmt_layer.with_filter(filter))
        .try_init()
        .map_err(|_| TelemetryError::AlreadyInitialised)?;
    dispatch.capture();
    Ok(TelemetryGuard { provider })
}
