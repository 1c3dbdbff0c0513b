//! Prometheus metrics shared by every worker of a process. Labels have bounded
//! values only: stages, outcomes, triggers, consumer names and source names (the
//! configured fleet), never a job or backup id.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_proto::v1::Stage;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageOutcome {
    stage: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabel {
    stage: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageSource {
    stage: &'static str,
    source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConsumerLabel {
    consumer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TriggerOutcome {
    trigger: &'static str,
    outcome: &'static str,
}

/// A point in time as a gauge: seconds since the Unix epoch.
type Timestamp = Gauge<f64, AtomicU64>;

/// Bytes a handler moved, counted by [`count_bytes`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteKind {
    /// Written into the spool by a dump (as stored: compressed).
    Dumped,
    /// Sent to the object store.
    Uploaded,
    /// Not sent because the store already held the same content.
    Reused,
    /// Freed in the object store by retention.
    Freed,
}

/// The process's metrics and their registry.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Mutex<Registry>>,
    handled: Family<StageOutcome, Counter>,
    duration: Family<StageLabel, Histogram>,
    in_flight: Family<StageLabel, Gauge>,
    redelivered: Family<StageLabel, Counter>,
    last_success: Family<StageSource, Timestamp>,
    last_failure: Family<StageSource, Timestamp>,
    pending: Family<ConsumerLabel, Gauge>,
    ack_pending: Family<ConsumerLabel, Gauge>,
    requested: Family<TriggerOutcome, Counter>,
    bytes: [Counter; 4],
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("ferry");
        let handled = Family::<StageOutcome, Counter>::default();
        registry.register(
            "messages_handled",
            "Messages handled by stage and outcome (succeeded, retried, failed, malformed)",
            handled.clone(),
        );
        let duration = Family::<StageLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.05, 2.0, 16))
        });
        registry.register(
            "handle_duration_seconds",
            "Time to handle one message, by stage",
            duration.clone(),
        );
        let in_flight = Family::<StageLabel, Gauge>::default();
        registry.register(
            "in_flight",
            "Messages being handled now, by stage",
            in_flight.clone(),
        );
        let redelivered = Family::<StageLabel, Counter>::default();
        registry.register(
            "redeliveries",
            "Deliveries that were a retry of an earlier attempt, by stage",
            redelivered.clone(),
        );
        let last_success = Family::<StageSource, Timestamp>::default();
        registry.register(
            "last_success_timestamp_seconds",
            "When a job of the source last succeeded at the stage (uploader: the backup was committed)",
            last_success.clone(),
        );
        let last_failure = Family::<StageSource, Timestamp>::default();
        registry.register(
            "last_failure_timestamp_seconds",
            "When a job of the source last failed for good at the stage",
            last_failure.clone(),
        );
        let pending = Family::<ConsumerLabel, Gauge>::default();
        registry.register(
            "consumer_pending_messages",
            "Messages stored for the consumer and not yet delivered (its lag)",
            pending.clone(),
        );
        let ack_pending = Family::<ConsumerLabel, Gauge>::default();
        registry.register(
            "consumer_ack_pending_messages",
            "Messages delivered to the consumer and not yet acknowledged",
            ack_pending.clone(),
        );
        let requested = Family::<TriggerOutcome, Counter>::default();
        registry.register(
            "jobs_requested",
            "Jobs the scheduler was asked for, by trigger (schedule, manual) and outcome (published, rejected, failed)",
            requested.clone(),
        );
        let bytes: [Counter; 4] = Default::default();
        for (kind, help) in [
            (ByteKind::Dumped, "Bytes dumped into the spool (as stored)"),
            (ByteKind::Uploaded, "Bytes uploaded to the object store"),
            (
                ByteKind::Reused,
                "Bytes not uploaded because the store already held the content",
            ),
            (
                ByteKind::Freed,
                "Bytes freed in the object store by retention",
            ),
        ] {
            registry.register_with_unit(
                kind.name(),
                help,
                prometheus_client::registry::Unit::Bytes,
                bytes[kind as usize].clone(),
            );
        }
        Metrics {
            registry: Arc::new(Mutex::new(registry)),
            handled,
            duration,
            in_flight,
            redelivered,
            last_success,
            last_failure,
            pending,
            ack_pending,
            requested,
            bytes,
        }
    }

    /// Records one handled message.
    pub fn record(&self, stage: Stage, outcome: &'static str, elapsed: Duration) {
        self.handled
            .get_or_create(&StageOutcome {
                stage: stage.name(),
                outcome,
            })
            .inc();
        self.duration
            .get_or_create(&StageLabel {
                stage: stage.name(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// Records that a job of `source` succeeded (`true`) or failed for good at
    /// `stage`, now.
    pub fn record_job_end(&self, stage: Stage, source: &str, succeeded: bool) {
        if source.is_empty() {
            return;
        }
        let family = if succeeded {
            &self.last_success
        } else {
            &self.last_failure
        };
        let now = chrono::Utc::now().timestamp_millis() as f64 / 1000.0;
        family
            .get_or_create(&StageSource {
                stage: stage.name(),
                source: source.to_string(),
            })
            .set(now);
    }

    /// Counts a delivery that is a retry.
    pub fn record_redelivery(&self, stage: Stage) {
        self.redelivered
            .get_or_create(&StageLabel {
                stage: stage.name(),
            })
            .inc();
    }

    /// Sets a consumer's lag from its server-side info.
    pub fn record_consumer(&self, consumer: &str, pending: u64, ack_pending: usize) {
        let label = ConsumerLabel {
            consumer: consumer.to_string(),
        };
        self.pending
            .get_or_create(&label)
            .set(i64::try_from(pending).unwrap_or(i64::MAX));
        self.ack_pending
            .get_or_create(&label)
            .set(i64::try_from(ack_pending).unwrap_or(i64::MAX));
    }

    /// Counts a job request the scheduler handled.
    pub fn record_request(&self, trigger: &'static str, outcome: &'static str) {
        self.requested
            .get_or_create(&TriggerOutcome { trigger, outcome })
            .inc();
    }

    /// Adds `n` bytes of `kind`.
    pub fn add_bytes(&self, kind: ByteKind, n: u64) {
        self.bytes[kind as usize].inc_by(n);
    }

    /// Counts a message as in flight until the guard is dropped.
    pub fn in_flight(&self, stage: Stage) -> InFlightGuard {
        let gauge = self
            .in_flight
            .get_or_create(&StageLabel {
                stage: stage.name(),
            })
            .clone();
        gauge.inc();
        InFlightGuard(gauge)
    }

    /// Lets a worker register its own metrics.
    pub fn register(&self, f: impl FnOnce(&mut Registry)) {
        f(&mut self.registry.lock().expect("metrics registry lock"));
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().expect("metrics registry lock");
        prometheus_client::encoding::text::encode(&mut out, &registry)
            .expect("writing to a String cannot fail");
        out
    }
}

impl ByteKind {
    /// The metric's name without prefix and unit.
    fn name(self) -> &'static str {
        match self {
            ByteKind::Dumped => "dumped",
            ByteKind::Uploaded => "uploaded",
            ByteKind::Reused => "reused",
            ByteKind::Freed => "freed",
        }
    }
}

tokio::task_local! {
    /// The metrics of the process whose runner is handling the job on this task.
    static CURRENT: Metrics;
}

/// Runs `fut` (a handler's work) with `metrics` as the current metrics, so
/// [`count_bytes`] needs no handle passed down to where bytes are known.
pub(crate) async fn scope<F: std::future::Future>(metrics: Metrics, fut: F) -> F::Output {
    CURRENT.scope(metrics, fut).await
}

/// Adds `n` bytes of `kind` to the metrics of the job being handled on this task, and
/// records them on the job's span (`ferry.bytes_dumped`, …). Outside a runner (a
/// handler called directly in a unit test) there is no process metrics registry to
/// count into, and nothing is counted.
pub fn count_bytes(kind: ByteKind, n: u64) {
    let _ = CURRENT.try_with(|m| m.add_bytes(kind, n));
    let field = match kind {
        ByteKind::Dumped => "ferry.bytes_dumped",
        ByteKind::Uploaded => "ferry.bytes_uploaded",
        ByteKind::Reused => "ferry.bytes_reused",
        ByteKind::Freed => "ferry.bytes_freed",
    };
    tracing::Span::current().record(field, n);
}

/// Counts a committed backup's bytes: `uploaded` sent, `reused` already stored.
pub fn count_upload(uploaded: u64, reused: u64) {
    count_bytes(ByteKind::Uploaded, uploaded);
    count_bytes(ByteKind::Reused, reused);
}

/// Decrements the in-flight gauge when dropped.
pub struct InFlightGuard(Gauge);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
