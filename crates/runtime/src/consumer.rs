//! Durable consumers as their handlers declare them: the subjects they want and
//! where a new durable starts.
//!
//! A durable is created with the declared deliver policy, and that policy applies
//! only then: JetStream cannot change where an existing consumer stands, and a worker
//! that restarts must resume, not jump. What a newer release changes about an
//! existing durable (its filters, ack wait, deliveries, pending limit) is applied by
//! updating it in place, keeping its position, so an upgraded notifier channel stops
//! receiving the kinds it no longer asks for without losing or replaying anything.
//! `get_or_create_consumer` alone would keep the old configuration silently.

use std::time::Duration;

use async_nats::jetstream::consumer::{self, AckPolicy, PullConsumer};
use async_nats::jetstream::stream::Stream;

/// Where a durable consumer starts when it is first created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deliver {
    /// Every message the stream holds: work queues, whose messages are the work.
    All,
    /// Only messages published after the durable is created: a subscriber added to
    /// a running fleet (a notifier channel) must not replay days of history.
    New,
}

impl Deliver {
    fn policy(self) -> consumer::DeliverPolicy {
        match self {
            Deliver::All => consumer::DeliverPolicy::All,
            Deliver::New => consumer::DeliverPolicy::New,
        }
    }
}

/// The durable consumer a handler reads from.
#[derive(Debug, Clone)]
pub struct ConsumerSpec {
    /// The stream.
    pub stream: &'static str,
    /// Durable name, shared by every replica of the worker.
    pub durable: String,
    /// Subject filters (NATS 2.10 `filter_subjects`): the consumer receives only
    /// messages on these, so nothing it would skip is pulled and acked.
    pub filters: Vec<String>,
    /// Where the durable starts when it is created; ignored once it exists.
    pub deliver: Deliver,
    /// How long a delivery may go without an ack or progress before redelivery.
    pub ack_wait: Duration,
    /// Deliveries before the runner gives up on a message.
    pub max_deliver: i64,
}

/// The consumer could not be declared.
#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    /// Reading the existing durable or creating it failed.
    #[error("failed to create consumer {durable} on {stream}")]
    Create {
        /// The stream.
        stream: &'static str,
        /// The durable name.
        durable: String,
        /// What the server or the connection said.
        #[source]
        source: async_nats::jetstream::stream::ConsumerError,
    },
    /// The durable exists with another configuration and could not be updated.
    #[error(
        "consumer {durable} on {stream} exists with other settings ({changed}) and could not be updated; remove it (`nats consumer rm {stream} {durable}`) to recreate it"
    )]
    Update {
        /// The stream.
        stream: &'static str,
        /// The durable name.
        durable: String,
        /// Which settings differ.
        changed: String,
        /// What the server said.
        #[source]
        source: async_nats::jetstream::stream::ConsumerUpdateError,
    },
}

/// The filter fields of a consumer configuration: one filter goes in
/// `filter_subject` (what servers before 2.10 and existing durables use), several
/// in `filter_subjects`.
fn filter_fields(filters: &[String]) -> (String, Vec<String>) {
    match filters {
        [one] => (one.clone(), Vec::new()),
        many => (String::new(), many.to_vec()),
    }
}

/// The filters of an existing consumer, sorted for comparison.
fn filters_of(config: &consumer::Config) -> Vec<String> {
    let mut filters = if config.filter_subject.is_empty() {
        config.filter_subjects.clone()
    } else {
        vec![config.filter_subject.clone()]
    };
    filters.sort();
    filters
}

/// The settings that differ between the server's consumer and the wanted one.
fn changes(existing: &consumer::Config, wanted: &consumer::pull::Config) -> Vec<&'static str> {
    let mut wanted_filters = filters_of(&consumer::Config {
        filter_subject: wanted.filter_subject.clone(),
        filter_subjects: wanted.filter_subjects.clone(),
        ..Default::default()
    });
    wanted_filters.dedup();
    let mut changed = Vec::new();
    if filters_of(existing) != wanted_filters {
        changed.push("filters");
    }
    if existing.ack_wait != wanted.ack_wait {
        changed.push("ack_wait");
    }
    if existing.max_deliver != wanted.max_deliver {
        changed.push("max_deliver");
    }
    if existing.max_ack_pending != wanted.max_ack_pending {
        changed.push("max_ack_pending");
    }
    changed
}

/// Creates `spec`'s durable, or brings an existing one to `spec`'s settings while
/// keeping its position. `max_ack_pending` is the runner's concurrency.
pub async fn declare(
    stream: &Stream,
    spec: &ConsumerSpec,
    max_ack_pending: i64,
) -> Result<PullConsumer, ConsumerError> {
    let (filter_subject, filter_subjects) = filter_fields(&spec.filters);
    let mut wanted = consumer::pull::Config {
        durable_name: Some(spec.durable.clone()),
        filter_subject,
        filter_subjects,
        deliver_policy: spec.deliver.policy(),
        ack_policy: AckPolicy::Explicit,
        ack_wait: spec.ack_wait,
        max_deliver: spec.max_deliver,
        max_ack_pending,
        ..Default::default()
    };
    let create_err = |source| ConsumerError::Create {
        stream: spec.stream,
        durable: spec.durable.clone(),
        source,
    };
    // Creates with the deliver policy when absent; returns the server's as it is
    // otherwise. Replicas starting together both succeed: creating a durable with
    // an identical configuration is idempotent on the server.
    let mut found: PullConsumer = stream
        .get_or_create_consumer(&spec.durable, wanted.clone())
        .await
        .map_err(create_err)?;
    let existing = found.cached_info().config.clone();
    let changed = changes(&existing, &wanted);
    if changed.is_empty() {
        return Ok(found);
    }
    // Where it stands is not ours to change: keep its deliver policy and start.
    wanted.deliver_policy = existing.deliver_policy;
    tracing::info!(
        consumer = %spec.durable,
        stream = spec.stream,
        changed = changed.join(", "),
        "updating the consumer to this release's settings; its position is kept"
    );
    found = stream
        .update_consumer(wanted)
        .await
        .map_err(|source| ConsumerError::Update {
            stream: spec.stream,
            durable: spec.durable.clone(),
            changed: changed.join(", "),
            source,
        })?;
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_filter_uses_the_single_field_and_several_the_list() {
        assert_eq!(
            filter_fields(&["a.>".into()]),
            ("a.>".to_string(), Vec::new())
        );
        assert_eq!(
            filter_fields(&["a.*".into(), "b.*".into()]),
            (String::new(), vec!["a.*".to_string(), "b.*".to_string()])
        );
    }

    #[test]
    fn only_settings_that_differ_are_changes() {
        let wanted = consumer::pull::Config {
            filter_subjects: vec!["b.*".into(), "a.*".into()],
            ack_wait: Duration::from_secs(30),
            max_deliver: 5,
            max_ack_pending: 1,
            ..Default::default()
        };
        let same = consumer::Config {
            filter_subjects: vec!["a.*".into(), "b.*".into()],
            ack_wait: Duration::from_secs(30),
            max_deliver: 5,
            max_ack_pending: 1,
            deliver_policy: consumer::DeliverPolicy::All,
            ..Default::default()
        };
        assert!(
            changes(&same, &wanted).is_empty(),
            "order and deliver policy do not count"
        );
        let other_filter = consumer::Config {
            filter_subject: "x.>".into(),
            ..same
        };
        assert_eq!(changes(&other_filter, &wanted), ["filters"]);
    }
}
