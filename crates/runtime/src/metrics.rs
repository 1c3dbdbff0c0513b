//! Prometheus metrics shared by every worker of a process. Labels have bounded
//! values only (stage, outcome): never a source or job id.

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

/// The process's metrics and their registry.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Mutex<Registry>>,
    handled: Family<StageOutcome, Counter>,
    duration: Family<StageLabel, Histogram>,
    in_flight: Family<StageLabel, Gauge>,
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
        Metrics {
            registry: Arc::new(Mutex::new(registry)),
            handled,
            duration,
            in_flight,
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

/// Decrements the in-flight gauge when dropped.
pub struct InFlightGuard(Gauge);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
