//! Process start-up shared by every worker binary and `ferry up`: configuration,
//! telemetry, NATS, the health and metrics endpoint, signals, and exit codes.

use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;

use tokio_util::sync::CancellationToken;

use crate::Runtime;
use crate::config::{Config, LogFormatConfig, OtlpProtocolConfig};

/// Exit code for an invalid configuration (nothing was started).
pub const EXIT_CONFIG: u8 = 2;
/// Exit code for a failure after start-up.
pub const EXIT_FAILURE: u8 = 1;

/// The configuration file named by `--config FILE` or `FERRY_CONFIG`.
pub fn config_path_from_args() -> Option<PathBuf> {
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--config" {
            return args.next().map(PathBuf::from);
        }
        if let Some(path) = arg.strip_prefix("--config=") {
            return Some(PathBuf::from(path));
        }
    }
    std::env::var_os("FERRY_CONFIG").map(PathBuf::from)
}

/// Loads and validates the configuration, printing every problem on failure.
pub fn load_config(path: Option<&std::path::Path>) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        eprintln!("ferry: {e}");
        ExitCode::from(EXIT_CONFIG)
    })
}

/// Sets up telemetry for `service` from the configuration.
pub fn init_telemetry(
    config: &Config,
    service: &str,
) -> Result<ferry_telemetry::TelemetryGuard, ExitCode> {
    ferry_telemetry::init(&ferry_telemetry::TelemetryOptions {
        service_name: service.to_string(),
        otlp_endpoint: config.telemetry.otlp_endpoint.clone(),
        otlp_protocol: config.telemetry.otlp_protocol.map(|p| match p {
            OtlpProtocolConfig::Grpc => ferry_telemetry::OtlpProtocol::Grpc,
            OtlpProtocolConfig::Http => ferry_telemetry::OtlpProtocol::Http,
        }),
        log_format: match config.telemetry.log_format {
            LogFormatConfig::Text => ferry_telemetry::LogFormat::Text,
            LogFormatConfig::Json => ferry_telemetry::LogFormat::Json,
        },
    })
    .map_err(|e| {
        eprintln!("ferry: {e}");
        ExitCode::from(EXIT_FAILURE)
    })
}

/// Connects to NATS, declares the streams, and serves the health endpoints.
pub async fn connect(
    config: Config,
    service: &str,
    shutdown: &CancellationToken,
) -> anyhow::Result<Runtime> {
    let rt = Runtime::connect(config, service).await?;
    if !rt.config.http.listen.is_empty() {
        let addr = rt.config.http.listen.parse()?;
        let store = if uses_store(service) {
            Some(crate::store::open(&rt.config.storage)?)
        } else {
            None
        };
        let readiness = crate::http::Readiness {
            nats: rt.nats.clone(),
            jetstream: rt.jetstream.clone(),
            store,
        };
        crate::http::serve(addr, rt.metrics.clone(), readiness, shutdown.clone()).await?;
    }
    Ok(rt)
}

/// Whether the process named `service` reads or writes the object store, so its
/// readiness depends on reaching it. The scheduler, dumper and notifier never touch
/// the store: an unreachable bucket must not take them out of service.
pub fn uses_store(service: &str) -> bool {
    matches!(service, "ferry" | "ferry-uploader" | "ferry-retention")
}

/// The whole `main` of a worker binary: `run` is the worker's `run(rt, shutdown)`.
pub async fn main<F, Fut>(service: &str, run: F) -> ExitCode
where
    F: FnOnce(Runtime, CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let config = match load_config(config_path_from_args().as_deref()) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let _telemetry = match init_telemetry(&config, service) {
        Ok(g) => g,
        Err(code) => return code,
    };
    let shutdown = crate::shutdown::on_signals();
    let result = async {
        let rt = connect(config, service, &shutdown).await?;
        run(rt, shutdown.clone()).await
    }
    .await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "{service} stopped");
            eprintln!("{service}: {e:#}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}
