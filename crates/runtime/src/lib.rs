//! The runtime every Ferry worker shares: configuration, the NATS connection and
//! stream declarations, the [`Publisher`], the generic [`runner`], graceful shutdown,
//! and the health and metrics endpoints.

pub mod config;
pub mod http;
pub mod human;
pub mod lease;
pub mod metrics;
pub mod nats;
pub mod process;
pub mod publisher;
pub mod registry;
pub mod runner;
pub mod schedule;
pub mod secrets;
pub mod shutdown;
pub mod store;

pub use config::Config;
pub use metrics::Metrics;
pub use publisher::{Outgoing, Publisher};
pub use runner::{ConsumerSpec, Handler, HandlerError, JobContext, RunnerOptions};

/// What every worker of a process shares: one NATS connection, one publisher, one
/// metrics registry, the configuration.
#[derive(Clone)]
pub struct Runtime {
    /// The validated configuration.
    pub config: std::sync::Arc<Config>,
    /// The core NATS client.
    pub nats: async_nats::Client,
    /// JetStream on that client.
    pub jetstream: async_nats::jetstream::Context,
    /// The publisher every event goes through.
    pub publisher: Publisher,
    /// This process's metrics.
    pub metrics: Metrics,
    /// Every source: the file's and the live registry's.
    pub sources: registry::Registry,
}

impl Runtime {
    /// Connects to NATS and declares the streams and buckets.
    pub async fn connect(config: Config, client_name: &str) -> Result<Runtime, nats::NatsError> {
        let client = nats::connect(&config.nats, client_name).await?;
        Self::with_client(config, client).await
    }

    /// Runs `handler` on its durable consumer until `shutdown`, `concurrency`
    /// messages at a time, with the configured retry policy.
    pub async fn run_handler<H: Handler>(
        &self,
        handler: std::sync::Arc<H>,
        concurrency: usize,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> Result<(), runner::RunnerError> {
        let retry = &self.config.retry;
        let options = RunnerOptions {
            concurrency,
            grace: retry.shutdown_grace,
            base_backoff: retry.base,
            max_backoff: retry.max,
        };
        runner::run(
            handler,
            self.jetstream.clone(),
            self.publisher.clone(),
            self.metrics.clone(),
            options,
            shutdown,
        )
        .await
    }

    /// Uses an existing connection and declares the streams and buckets.
    pub async fn with_client(
        config: Config,
        client: async_nats::Client,
    ) -> Result<Runtime, nats::NatsError> {
        let jetstream = async_nats::jetstream::new(client.clone());
        nats::declare(&jetstream, &config.nats, config.dumper.lease_ttl).await?;
        let sources = registry::Registry::open(&jetstream, &config.sources)
            .await
            .map_err(|e| nats::NatsError::Registry(e.to_string()))?;
        Ok(Runtime {
            sources,
            config: std::sync::Arc::new(config),
            nats: client,
            publisher: Publisher::new(jetstream.clone()),
            jetstream,
            metrics: Metrics::new(),
        })
    }
}

/// This machine's host name (a pod's name in Kubernetes), for leases and spool
/// locations; `localhost` when it cannot be read.
pub fn host_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}
