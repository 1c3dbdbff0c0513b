//! The generic consume-handle-ack loop every JetStream-driven worker runs.
//!
//! The runner owns pulling, decoding, spans, progress acks, publishing follow-up
//! events, acking and failure reporting; a [`Handler`] does one unit of work.
//! Order matters: follow-up events are published (and stored by the stream) before
//! the input is acked, so a crash in between means a redelivery, never a lost step,
//! and handlers are idempotent on `job_id` so the redelivery is harmless.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, AckKind, consumer};
use ferry_proto::subjects::EventKind;
use ferry_proto::v1::{BackupFailed, Stage};
use ferry_proto::{JobMessage, reason};
use futures::StreamExt;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, Span};
use tracing_opentelemetry::OpenTelemetrySpanExt;

pub use crate::consumer::{ConsumerSpec, Deliver};
use crate::metrics::Metrics;
use crate::publisher::{Outgoing, PublishError, Publisher};

/// How a handler's failure is treated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandlerError {
    /// Worth another attempt (network, a busy server): nak with backoff.
    Retryable {
        /// A code from `ferry_proto::reason`.
        reason: &'static str,
        /// What failed and what to do.
        message: String,
        /// When the other side said when to come back (HTTP `Retry-After`).
        retry_after: Option<Duration>,
    },
    /// Will fail the same way again (bad credentials, unknown source): stop now.
    Permanent {
        /// A code from `ferry_proto::reason`.
        reason: &'static str,
        /// What failed and what to do.
        message: String,
    },
}

impl HandlerError {
    /// A retryable error.
    pub fn retryable(reason: &'static str, message: impl Into<String>) -> Self {
        HandlerError::Retryable {
            reason,
            message: message.into(),
            retry_after: None,
        }
    }

    /// A permanent error.
    pub fn permanent(reason: &'static str, message: impl Into<String>) -> Self {
        HandlerError::Permanent {
            reason,
            message: message.into(),
        }
    }

    /// Asks for the next attempt after `delay` instead of the usual backoff.
    pub fn retry_after(self, delay: Duration) -> Self {
        match self {
            HandlerError::Retryable {
                reason, message, ..
            } => HandlerError::Retryable {
                reason,
                message,
                retry_after: Some(delay),
            },
            permanent => permanent,
        }
    }

    /// The reason code.
    pub fn reason(&self) -> &'static str {
        match self {
            HandlerError::Retryable { reason, .. } | HandlerError::Permanent { reason, .. } => {
                reason
            }
        }
    }

    /// The human message.
    pub fn message(&self) -> &str {
        match self {
            HandlerError::Retryable { message, .. } | HandlerError::Permanent { message, .. } => {
                message
            }
        }
    }
}

impl std::fmt::Display for HandlerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.reason(), self.message())
    }
}

/// What a handler gets besides its input.
#[derive(Clone)]
pub struct JobContext {
    /// Delivery attempt, starting at 1.
    pub attempt: u32,
    /// Cancelled when the process shuts down past its grace period.
    pub cancel: CancellationToken,
    publisher: Publisher,
}

impl std::fmt::Debug for JobContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobContext")
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

impl JobContext {
    /// The context of work that no message started (retention's periodic sweep):
    /// attempt 1, cancelled by `cancel`.
    pub fn detached(publisher: Publisher, cancel: CancellationToken) -> Self {
        JobContext {
            attempt: 1,
            cancel,
            publisher,
        }
    }

    /// Publishes an event in the middle of the job (a dump file is ready, a sweep
    /// ran) and waits until the stream stored it. Like the follow-up events, it
    /// carries the job span's trace context and its `Nats-Msg-Id` (built by
    /// [`crate::msg_id`]); unlike them, it does not wait for the job's end, so
    /// subscribers can start on it at once.
    pub async fn emit(&self, out: &Outgoing) -> Result<(), PublishError> {
        self.publisher.publish(out).await
    }
}

/// One unit of work per message.
pub trait Handler: Send + Sync + 'static {
    /// The decoded input.
    type Input: JobMessage + Send + 'static;
    /// The stage reported in failures and spans.
    const STAGE: Stage;
    /// The consumer to read from.
    fn consumer(&self) -> ConsumerSpec;
    /// Decodes a message; `Ok(None)` means "not for this handler" (acked, skipped).
    fn decode(
        &self,
        subject: &str,
        payload: &[u8],
    ) -> Result<Option<Self::Input>, prost::DecodeError>;
    /// Does the work and returns the events to publish before the ack.
    fn handle(
        &self,
        input: Self::Input,
        ctx: JobContext,
    ) -> impl Future<Output = Result<Vec<Outgoing>, HandlerError>> + Send;
}

/// Settings of one runner.
#[derive(Debug, Clone)]
pub struct RunnerOptions {
    /// Messages handled at once; also the consumer's `max_ack_pending`, so the server
    /// never hands this worker more than it can hold.
    pub concurrency: usize,
    /// How long in-flight work may finish after shutdown is requested.
    pub grace: Duration,
    /// First retry delay; doubles per attempt up to `max_backoff`.
    pub base_backoff: Duration,
    /// Longest retry delay.
    pub max_backoff: Duration,
}

impl Default for RunnerOptions {
    fn default() -> Self {
        RunnerOptions {
            concurrency: 2,
            grace: Duration::from_secs(30),
            base_backoff: Duration::from_secs(2),
            max_backoff: Duration::from_secs(300),
        }
    }
}

/// Errors that stop a runner (not a handler's failures, which are reported).
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    /// The stream is not there (streams are declared at start-up).
    #[error("failed to open stream {stream} for consumer {durable}")]
    Stream {
        /// The stream.
        stream: &'static str,
        /// The durable name.
        durable: String,
        /// What the server said.
        #[source]
        source: async_nats::jetstream::context::GetStreamError,
    },
    /// The consumer could not be created or brought up to date.
    #[error(transparent)]
    Consumer(#[from] crate::consumer::ConsumerError),
    /// The first pull failed.
    #[error("failed to pull from consumer {durable} on {stream}")]
    Pull {
        /// The stream.
        stream: &'static str,
        /// The durable name.
        durable: String,
        /// What the server said.
        #[source]
        source: async_nats::jetstream::consumer::StreamError,
    },
    /// A handler panicked: the worker stops rather than go on without it.
    #[error("the {stage} handler panicked on consumer {durable}: {message}")]
    Panicked {
        /// The stage.
        stage: &'static str,
        /// The durable name.
        durable: String,
        /// The panic's message.
        message: String,
    },
}

/// The delay before the next attempt after `attempt` failed.
pub fn backoff(options: &RunnerOptions, attempt: u32) -> Duration {
    let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(20));
    options
        .base_backoff
        .saturating_mul(factor)
        .min(options.max_backoff)
}

/// Runs `handler` until `shutdown` is cancelled, then waits up to the grace period for
/// in-flight work; what is still running after that is dropped and redelivered.
pub async fn run<H: Handler>(
    handler: Arc<H>,
    js: jetstream::Context,
    publisher: Publisher,
    metrics: Metrics,
    options: RunnerOptions,
    shutdown: CancellationToken,
) -> Result<(), RunnerError> {
    let spec = handler.consumer();
    let stream = js
        .get_stream(spec.stream)
        .await
        .map_err(|source| RunnerError::Stream {
            stream: spec.stream,
            durable: spec.durable.clone(),
            source,
        })?;
    let consumer = crate::consumer::declare(&stream, &spec, options.concurrency as i64).await?;
    // Short-lived pull requests with heartbeats: a pull that went stale (a server
    // restart, a stall) is replaced within seconds rather than waited out.
    let pull = |consumer: consumer::PullConsumer| async move {
        consumer
            .stream()
            .max_messages_per_batch(options.concurrency.max(1))
            .heartbeat(Duration::from_secs(2))
            .expires(Duration::from_secs(5))
            .messages()
            .await
    };
    let mut messages = pull(consumer.clone())
        .await
        .map_err(|source| RunnerError::Pull {
            stream: spec.stream,
            durable: spec.durable.clone(),
            source,
        })?;
    let lag = tokio::spawn(watch_lag(
        consumer.clone(),
        metrics.clone(),
        shutdown.clone(),
    ));

    let permits = Arc::new(Semaphore::new(options.concurrency));
    let mut in_flight = JoinSet::new();
    let job_cancel = CancellationToken::new();
    tracing::info!(stage = H::STAGE.name(), consumer = %spec.durable, "worker started");
    // A handler that panicked: the runner stops pulling, lets the others finish
    // and returns the panic, which ends the process (see `crate::tasks`).
    let mut panicked = None;
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(done) = in_flight.join_next(), if !in_flight.is_empty() => {
                if let Some(message) = panic_of(done) { panicked = Some(message); break }
                continue;
            }
            permit = permits.clone().acquire_owned() => permit.expect("semaphore is never closed"),
        };
        let next = tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(done) = in_flight.join_next(), if !in_flight.is_empty() => {
                if let Some(message) = panic_of(done) { panicked = Some(message); break }
                // The permit goes back; the next turn takes one again.
                continue;
            }
            next = messages.next() => next,
        };
        match next {
            Some(Ok(message)) => {
                let task = Delivery {
                    handler: handler.clone(),
                    publisher: publisher.clone(),
                    metrics: metrics.clone(),
                    options: options.clone(),
                    spec: spec.clone(),
                    cancel: job_cancel.child_token(),
                };
                in_flight.spawn(async move {
                    task.process(message).await;
                    drop(permit);
                });
            }
            Some(Err(e)) => {
                // Missed heartbeats and transient server errors: start a fresh pull
                // after a moment, so a persistent error neither spins nor stalls.
                tracing::warn!(stage = H::STAGE.name(), error = %e, "error pulling messages; pulling anew");
                tokio::time::sleep(Duration::from_millis(500)).await;
                match pull(consumer.clone()).await {
                    Ok(fresh) => messages = fresh,
                    Err(e) => {
                        tracing::warn!(stage = H::STAGE.name(), error = %e, "cannot pull yet")
                    }
                }
            }
            None => {
                tracing::warn!(stage = H::STAGE.name(), "message stream ended");
                break;
            }
        }
    }

    let grace = options.grace;
    let drained = tokio::time::timeout(grace, async {
        while let Some(done) = in_flight.join_next().await {
            if let Some(message) = panic_of(done) {
                panicked.get_or_insert(message);
            }
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            stage = H::STAGE.name(),
            jobs = in_flight.len(),
            "grace period over: stopping in-flight work, it will be redelivered"
        );
        job_cancel.cancel();
        in_flight.abort_all();
        while in_flight.join_next().await.is_some() {}
    }
    lag.abort();
    if let Some(message) = panicked {
        tracing::error!(stage = H::STAGE.name(), consumer = %spec.durable, panic = %message, "a handler panicked; worker stopped");
        return Err(RunnerError::Panicked {
            stage: H::STAGE.name(),
            durable: spec.durable.clone(),
            message,
        });
    }
    tracing::info!(stage = H::STAGE.name(), "worker stopped");
    Ok(())
}

/// The panic message of a finished delivery task, if it panicked. Its message is
/// neither acked nor nakked: it is redelivered after the ack wait.
fn panic_of(done: Result<(), tokio::task::JoinError>) -> Option<String> {
    match done {
        Err(e) if e.is_panic() => Some(crate::tasks::join_error_message(e)),
        _ => None,
    }
}

/// How often a consumer's lag is read from the server: often enough for alerts and
/// graphs, rare enough to cost the server nothing next to the work itself.
const LAG_INTERVAL: Duration = Duration::from_secs(5);

/// Keeps `ferry_consumer_pending_messages` and `…_ack_pending_messages` current
/// from the consumer's server-side info until shutdown.
async fn watch_lag(
    consumer: consumer::PullConsumer,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    let name = consumer.cached_info().name.clone();
    let mut tick = tokio::time::interval(LAG_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        match tokio::time::timeout(LAG_INTERVAL, consumer.get_info()).await {
            Ok(Ok(info)) => metrics.record_consumer(&name, info.num_pending, info.num_ack_pending),
            // NATS is away: the last known lag stays, and /readyz says why.
            Ok(Err(e)) => {
                tracing::debug!(consumer = %name, error = %e, "cannot read consumer info")
            }
            Err(_) => tracing::debug!(consumer = %name, "consumer info timed out"),
        }
    }
}

/// Everything needed to process one delivery.
struct Delivery<H> {
    handler: Arc<H>,
    publisher: Publisher,
    metrics: Metrics,
    options: RunnerOptions,
    spec: ConsumerSpec,
    cancel: CancellationToken,
}

impl<H: Handler> Delivery<H> {
    async fn process(self, message: jetstream::Message) {
        let stage = H::STAGE;
        let attempt = message
            .info()
            .map(|i| i.delivered.max(1) as u32)
            .unwrap_or(1);
        let subject = message.subject.to_string();
        let message_id = message
            .headers
            .as_ref()
            .and_then(|h| h.get("Nats-Msg-Id"))
            .map(|v| v.as_str().to_string())
            .unwrap_or_default();
        let stream_sequence = message.info().map(|i| i.stream_sequence).unwrap_or(0);
        let span = tracing::info_span!(
            "handle",
            otel.name = format!("{} process", stage.name()),
            otel.kind = "consumer",
            messaging.system = "nats",
            messaging.operation.type = "process",
            messaging.operation.name = "process",
            messaging.destination.name = %subject,
            messaging.message.id = %message_id,
            messaging.consumer.group.name = %self.spec.durable,
            messaging.nats.stream_sequence = stream_sequence,
            ferry.stage = stage.name(),
            ferry.job_id = tracing::field::Empty,
            ferry.source = tracing::field::Empty,
            ferry.attempt = attempt,
            // Filled by `metrics::count_bytes` where the handler knows them.
            ferry.bytes_dumped = tracing::field::Empty,
            ferry.bytes_uploaded = tracing::field::Empty,
            ferry.bytes_reused = tracing::field::Empty,
            ferry.bytes_freed = tracing::field::Empty,
        );
        let _ = span.set_parent(ferry_telemetry::extract(message.headers.as_ref()));
        if attempt > 1 {
            self.metrics.record_redelivery(stage);
        }
        self.process_in_span(message, subject, attempt, span.clone())
            .instrument(span)
            .await
    }

    async fn process_in_span(
        self,
        message: jetstream::Message,
        subject: String,
        attempt: u32,
        span: Span,
    ) {
        let stage = H::STAGE;
        let input = match self.handler.decode(&subject, &message.payload) {
            Ok(Some(input)) => input,
            Ok(None) => {
                ack(&message, AckKind::Ack).await;
                return;
            }
            Err(e) => {
                // A poison message: it will never decode, so do not retry it.
                tracing::error!(error = %e, "undecodable message terminated");
                let failed = BackupFailed {
                    job_id: String::new(),
                    source: String::new(),
                    occurred_at: Some(ferry_proto::now()),
                    stage: stage as i32,
                    reason: reason::MALFORMED_MESSAGE.into(),
                    message: format!(
                        "message on {subject} is not a valid protobuf message ({e}); it was dropped"
                    ),
                    attempt,
                    r#final: true,
                    backup_id: String::new(),
                };
                let msg_id = crate::msg_id::malformed(
                    stage,
                    message.info().map(|i| i.stream_sequence).unwrap_or(0),
                );
                let _ = self
                    .publisher
                    .publish(&Outgoing::event(EventKind::Failed, "", &failed, msg_id))
                    .await;
                self.metrics.record(stage, "malformed", Duration::ZERO);
                ack(&message, AckKind::Term).await;
                return;
            }
        };
        let job_id = input.job_id().to_string();
        let source = input.source().to_string();
        let backup_id = input.backup_id().to_string();
        span.record("ferry.job_id", job_id.as_str());
        span.record("ferry.source", source.as_str());

        // Progress acks keep a long dump from being redelivered to another replica.
        // Aborted on drop too: a delivery cancelled mid-way (shutdown past grace, a
        // killed worker task) must stop acking, or its message is never redelivered.
        let progress = tokio_util::task::AbortOnDropHandle::new({
            let message = message.clone();
            let every = (self.spec.ack_wait / 3).max(Duration::from_millis(200));
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    let _ = message.ack_with(AckKind::Progress).await;
                }
            })
        });
        let _in_flight = self.metrics.in_flight(stage);
        let started = Instant::now();
        let ctx = JobContext {
            attempt,
            cancel: self.cancel.clone(),
            publisher: self.publisher.clone(),
        };
        let result =
            crate::metrics::scope(self.metrics.clone(), self.handler.handle(input, ctx)).await;
        progress.abort();
        let elapsed = started.elapsed();

        match result {
            Ok(outgoing) => match self.publisher.publish_all(&outgoing).await {
                Ok(()) => {
                    self.metrics.record(stage, "succeeded", elapsed);
                    self.metrics.record_job_end(stage, &source, true);
                    ack(&message, AckKind::Ack).await;
                }
                Err(e) => {
                    tracing::warn!(error = %crate::error_chain(&e), "follow-up events not published; will retry");
                    self.metrics.record(stage, "retried", elapsed);
                    ack(
                        &message,
                        AckKind::Nak(Some(backoff(&self.options, attempt))),
                    )
                    .await;
                }
            },
            Err(err) => {
                let exhausted = attempt as i64 >= self.spec.max_deliver;
                let is_final = matches!(err, HandlerError::Permanent { .. }) || exhausted;
                if !is_final {
                    let delay = match &err {
                        HandlerError::Retryable {
                            retry_after: Some(delay),
                            ..
                        } => (*delay).min(self.options.max_backoff),
                        _ => backoff(&self.options, attempt),
                    };
                    tracing::warn!(reason = err.reason(), error = err.message(), attempt, retry_in = ?delay, "job failed; will retry");
                    self.metrics.record(stage, "retried", elapsed);
                    ack(&message, AckKind::Nak(Some(delay))).await;
                    return;
                }
                tracing::error!(
                    reason = err.reason(),
                    error = err.message(),
                    attempt,
                    "job failed"
                );
                let message_text = if exhausted && matches!(err, HandlerError::Retryable { .. }) {
                    format!("{} (gave up after {attempt} attempts)", err.message())
                } else {
                    err.message().to_string()
                };
                let failed = BackupFailed {
                    job_id: job_id.clone(),
                    source: source.clone(),
                    occurred_at: Some(ferry_proto::now()),
                    stage: stage as i32,
                    reason: err.reason().into(),
                    message: message_text,
                    attempt,
                    r#final: true,
                    backup_id,
                };
                let msg_id = crate::msg_id::failed(&job_id, stage);
                match self
                    .publisher
                    .publish(&Outgoing::event(
                        EventKind::Failed,
                        &source,
                        &failed,
                        msg_id,
                    ))
                    .await
                {
                    Ok(()) => {
                        self.metrics.record(stage, "failed", elapsed);
                        self.metrics.record_job_end(stage, &source, false);
                        ack(&message, AckKind::Term).await;
                    }
                    Err(e) => {
                        // The failure must be reported: retry the whole delivery rather
                        // than terminate silently.
                        tracing::warn!(error = %crate::error_chain(&e), "failure event not published; will retry");
                        ack(
                            &message,
                            AckKind::Nak(Some(backoff(&self.options, attempt))),
                        )
                        .await;
                    }
                }
            }
        }
    }
}

async fn ack(message: &jetstream::Message, kind: AckKind) {
    if let Err(e) = message.ack_with(kind).await {
        // The server will redeliver after ack_wait; idempotent handlers make that safe.
        tracing::warn!(error = %e, "failed to acknowledge message");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let options = RunnerOptions {
            base_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(10),
            ..Default::default()
        };
        let delays: Vec<u64> = (1..=6).map(|a| backoff(&options, a).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 10, 10]);
        assert_eq!(backoff(&options, u32::MAX), Duration::from_secs(10));
    }
}
