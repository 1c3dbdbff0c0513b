//! The runtime every Ferry worker shares: configuration, the NATS connection and
//! stream declarations, the [`Publisher`], the generic [`runner`], graceful shutdown,
//! and the health and metrics endpoints.

pub mod config;
pub mod consumer;
pub mod fault;
pub mod http;
pub mod human;
pub mod jobstate;
pub mod lease;
pub mod metrics;
pub mod msg_id;
pub mod nats;
pub mod process;
pub mod publisher;
pub mod registry;
pub mod runner;
pub mod schedule;
pub mod secrets;
pub mod shutdown;
pub mod store;
pub mod tasks;

pub use config::Config;
pub use metrics::Metrics;
pub use publisher::{Outgoing, Publisher};
pub use runner::{ConsumerSpec, Deliver, Handler, HandlerError, JobContext, RunnerOptions};
pub use tasks::Tasks;

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
    /// What the server refused on this connection, to explain a request that
    /// timed out (empty for a connection made elsewhere, see [`Runtime::with_client`]).
    pub refusals: nats::Refusals,
}

impl Runtime {
    /// Connects to NATS and declares the streams and buckets.
    pub async fn connect(config: Config, client_name: &str) -> Result<Runtime, nats::NatsError> {
        let (client, refusals) = nats::connect_recording(&config.nats, client_name).await?;
        let mut rt = Self::with_client(config, client).await?;
        rt.refusals = refusals;
        Ok(rt)
    }

    /// Connects to NATS for a command that only reads (`ferry status`, `ferry
    /// sources list`, ...): declares no stream or bucket and opens the sources
    /// registry read-only, so it works with a NATS user that may only read, and a
    /// look at a fleet never creates anything in it. Whatever does not exist yet
    /// reads as empty.
    pub async fn attach(config: Config, client_name: &str) -> Result<Runtime, nats::NatsError> {
        let (client, refusals) = nats::connect_recording(&config.nats, client_name).await?;
        let jetstream = async_nats::jetstream::new(client.clone());
        let sources = registry::Registry::open_read_only(&jetstream, &config.sources)
            .await
            .map_err(|e| nats::NatsError::Registry(e.to_string()))?;
        Ok(Runtime::assemble(
            config, client, jetstream, sources, refusals,
        ))
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
        nats::declare(&jetstream, &config.nats, config.leases.ttl).await?;
        let sources = registry::Registry::open(&jetstream, &config.sources)
            .await
            .map_err(|e| nats::NatsError::Registry(e.to_string()))?;
        Ok(Runtime::assemble(
            config,
            client,
            jetstream,
            sources,
            nats::Refusals::default(),
        ))
    }

    /// The runtime of an open connection, however it was opened.
    fn assemble(
        config: Config,
        client: async_nats::Client,
        jetstream: async_nats::jetstream::Context,
        sources: registry::Registry,
        refusals: nats::Refusals,
    ) -> Runtime {
        Runtime {
            sources,
            config: std::sync::Arc::new(config),
            nats: client,
            publisher: Publisher::new(jetstream.clone()),
            jetstream,
            metrics: Metrics::new(),
            refusals,
        }
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

/// An error and its causes in one line, `: `-separated: what logs, events and
/// replies carry, so the cause a `#[source]` keeps is never lost on the way out.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}
