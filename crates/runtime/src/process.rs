//! Process start-up shared by every worker binary and `ferry up`: configuration,
//! telemetry, NATS, the health and metrics endpoint, signals, and exit codes.

use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;

use tokio_util::sync::CancellationToken;

use crate::Runtime;
use crate::config::{Config, LogFormatConfig, OtlpProtocolConfig, SectionSpec};

/// What a worker declares about itself to the process that runs it: a worker binary
/// runs one, `ferry up` runs them all and takes the union.
#[derive(Debug, Clone, Copy)]
pub struct ServiceSpec {
    /// The process's name as a NATS client and in telemetry: `ferry-dumper`.
    pub name: &'static str,
    /// The configuration sections it reads, validated at start-up.
    pub sections: &'static [SectionSpec],
    /// What its readiness depends on besides NATS.
    pub readiness: ReadinessNeeds,
}

/// What a service's `/readyz` depends on besides NATS and its streams (always
/// checked). A dependency a service never touches must not take it out of service:
/// the scheduler, dumper and notifier stay ready with the store unreachable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadinessNeeds {
    /// The object store (the uploader writes it, retention reads and deletes).
    pub store: bool,
}

impl ReadinessNeeds {
    /// What a process running all of `services` depends on.
    pub fn of(services: &[ServiceSpec]) -> ReadinessNeeds {
        ReadinessNeeds {
            store: services.iter().any(|s| s.readiness.store),
        }
    }
}

/// Every section `services` read (a section two of them read, once).
pub fn sections_of(services: &[ServiceSpec]) -> Vec<SectionSpec> {
    let mut sections: Vec<SectionSpec> = Vec::new();
    for spec in services.iter().flat_map(|s| s.sections) {
        if !sections.iter().any(|known| known.name() == spec.name()) {
            sections.push(*spec);
        }
    }
    sections
}

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

/// Loads and validates the configuration, the shared sections and those `services`
/// read, printing every problem on failure.
pub fn load_config(
    path: Option<&std::path::Path>,
    services: &[ServiceSpec],
) -> Result<Config, ExitCode> {
    Config::load(path, &sections_of(services)).map_err(|e| {
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

/// Connects to NATS as `name`, declares the streams, and serves the health endpoints
/// with the readiness checks `services` need.
pub async fn connect(
    config: Config,
    name: &str,
    services: &[ServiceSpec],
    shutdown: &CancellationToken,
) -> anyhow::Result<Runtime> {
    let rt = Runtime::connect(config, name).await?;
    if !rt.config.http.listen.is_empty() {
        let addr = rt.config.http.listen.parse()?;
        let store = if ReadinessNeeds::of(services).store {
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

/// Logs every panic (message and place) through tracing before the default hook
/// prints it, so a panic that ends the process is in the structured log too. The
/// task groups of [`crate::tasks`] then end the process non-zero.
pub fn log_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = crate::tasks::panic_message(info.payload());
        let place = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        tracing::error!(panic = %message, at = %place, "panicked");
        default(info);
    }));
}

/// The whole `main` of a worker binary: `spec` is what the worker declares, `run` its
/// `run(rt, shutdown)`.
pub async fn main<F, Fut>(spec: ServiceSpec, run: F) -> ExitCode
where
    F: FnOnce(Runtime, CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let service = spec.name;
    let config = match load_config(config_path_from_args().as_deref(), &[spec]) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let _telemetry = match init_telemetry(&config, service) {
        Ok(g) => g,
        Err(code) => return code,
    };
    log_panics();
    let shutdown = crate::shutdown::on_signals();
    let result = async {
        let rt = connect(config, service, &[spec], &shutdown).await?;
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
