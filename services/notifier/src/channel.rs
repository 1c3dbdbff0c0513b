//! One channel: its rules, its delivery, and the handler its consumer runs.

use std::time::Duration;

use async_nats::jetstream::kv;
use ferry_proto::JobMessage;
use ferry_proto::subjects::{self, EventKind};
use ferry_proto::v1::Stage;
use std::sync::Arc;

use crate::config::{NotifierConfig, NotifyChannels, NotifyConfig, NotifyOn, Severity};
use ferry_runtime::{ConsumerSpec, Deliver, Handler, HandlerError, JobContext, Outgoing, Runtime};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::errors::{self, NotifyError, StateError};
use crate::event::Event;
use crate::message::{self, Context, Notification};
use crate::send::Delivery;
use crate::streak::{self, Streaks};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeliveryLabels {
    channel: String,
    outcome: &'static str,
}

/// Notifications by channel and outcome (sent, collapsed, failed). Channel names
/// come from the configuration, so the label is bounded.
#[derive(Clone, Default)]
pub struct DeliveryMetrics(Family<DeliveryLabels, Counter>);

impl DeliveryMetrics {
    fn count(&self, channel: &str, outcome: &'static str) {
        self.0
            .get_or_create(&DeliveryLabels {
                channel: channel.to_string(),
                outcome,
            })
            .inc();
    }
}

/// A configured channel, ready to deliver.
pub struct Channel {
    /// Its name (`<kind>-<index>` unless configured).
    pub name: String,
    /// Its configuration.
    pub config: NotifyConfig,
    /// `[notifier]`, shared by every channel.
    pub(crate) notifier: Arc<NotifierConfig>,
    pub(crate) rt: Runtime,
    delivery: Delivery,
    http: reqwest::Client,
    sent: kv::Store,
    streaks: Streaks,
    metrics: DeliveryMetrics,
}

/// Opens every configured channel; an unusable one is a start-up error naming it.
pub async fn open_all(rt: &Runtime) -> anyhow::Result<Vec<Channel>> {
    let js = &rt.jetstream;
    let sent = js
        .get_key_value(subjects::NOTIFIED_BUCKET)
        .await
        .map_err(|e| anyhow::anyhow!("opening the {} bucket: {e}", subjects::NOTIFIED_BUCKET))?;
    let state = js
        .get_key_value(subjects::NOTIFY_STATE_BUCKET)
        .await
        .map_err(|e| {
            anyhow::anyhow!("opening the {} bucket: {e}", subjects::NOTIFY_STATE_BUCKET)
        })?;
    let notifier = rt.config.section::<NotifierConfig>()?;
    let channels = rt.config.section::<NotifyChannels>()?;
    let timeout = notifier.http_timeout;
    let http = reqwest::Client::builder()
        .timeout(timeout)
        .user_agent(concat!("ferry-notifier/", env!("CARGO_PKG_VERSION")))
        .build()?;
    let metrics = DeliveryMetrics::default();
    if !channels.0.is_empty() {
        let family = metrics.0.clone();
        rt.metrics.register(|r| {
            r.register(
                "notifications",
                "Notifications by channel and outcome (sent, collapsed, failed)",
                family,
            )
        });
    }
    channels
        .0
        .iter()
        .enumerate()
        .map(|(index, config)| {
            let name = config.name_or_default(index);
            Ok(Channel {
                delivery: Delivery::open(config, index, timeout)?,
                streaks: Streaks::new(state.clone(), &name),
                name,
                config: config.clone(),
                notifier: notifier.clone(),
                rt: rt.clone(),
                http: http.clone(),
                sent: sent.clone(),
                metrics: metrics.clone(),
            })
        })
        .collect()
}

/// Whether `name` matches a pattern with `*` (any run) and `?` (one character).
pub fn matches(pattern: &str, name: &str) -> bool {
    fn go(p: &[char], n: &[char]) -> bool {
        match (p.first(), n.first()) {
            (None, None) => true,
            (Some('*'), _) => go(&p[1..], n) || (!n.is_empty() && go(p, &n[1..])),
            (Some('?'), Some(_)) => go(&p[1..], &n[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &n[1..]),
            _ => false,
        }
    }
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    go(&p, &n)
}

impl Channel {
    /// The kinds of event this channel's rules can use, so its consumer receives
    /// only those (never the per-file `DumpFileReady`, for one). Empty for a channel
    /// that only sends digests: it needs no consumer.
    pub fn kinds(&self) -> Vec<EventKind> {
        let on = &self.config.on;
        let info = self.config.min_severity <= Severity::Info;
        let mut kinds = Vec::new();
        if on.contains(&NotifyOn::Failed) {
            kinds.push(EventKind::Failed);
            // Lost captured changes are a failure of the source's backups.
            kinds.push(EventKind::Gap);
        }
        // A success closes an open failure alert, and may be told itself.
        if on.contains(&NotifyOn::Failed) || (on.contains(&NotifyOn::Succeeded) && info) {
            kinds.push(EventKind::Uploaded);
        }
        if on.contains(&NotifyOn::Retention) && info {
            kinds.push(EventKind::Retention);
        }
        kinds
    }

    fn wants_source(&self, source: &str) -> bool {
        self.config.sources.is_empty() || self.config.sources.iter().any(|p| matches(p, source))
    }

    /// Sends a notification unless this channel already sent it (redelivery).
    pub async fn deliver_once(&self, key: &str, n: &Notification) -> Result<(), NotifyError> {
        if matches!(self.sent.get(key).await, Ok(Some(_))) {
            return Ok(());
        }
        self.deliver(n).await?;
        if let Err(e) = self.sent.put(key, n.kind.name().into()).await {
            tracing::warn!(channel = %self.name, error = %e, "notification sent but not recorded; a redelivery may repeat it");
        }
        Ok(())
    }

    /// Sends a notification, counting the outcome.
    pub async fn deliver(&self, n: &Notification) -> Result<(), NotifyError> {
        let result = self.delivery.send(&self.http, n).await;
        match &result {
            Ok(()) => {
                self.metrics.count(&self.name, "sent");
                tracing::info!(channel = %self.name, kind = n.kind.name(), source = %n.source, "notification sent");
            }
            Err(e) => {
                self.metrics.count(&self.name, "failed");
                tracing::warn!(channel = %self.name, kind = n.kind.name(), error = %ferry_runtime::error_chain(e), "notification not delivered");
            }
        }
        result.map_err(|source| NotifyError::Delivery {
            channel: self.name.clone(),
            source,
        })
    }

    fn state_error(&self, source: StateError) -> NotifyError {
        NotifyError::State {
            channel: self.name.clone(),
            source,
        }
    }

    /// What this event means for this channel: the notifications to send, and the
    /// streak change to record once they are sent.
    async fn plan(
        &self,
        event: &Event,
        ctx: &Context<'_>,
    ) -> Result<(Vec<Notification>, StreakChange), StateError> {
        let on = &self.config.on;
        let mut out = Vec::new();
        let mut change = StreakChange::None;
        match event {
            Event::Failed(f) if on.contains(&NotifyOn::Failed) => {
                let severity = message::failure_severity(f);
                if severity < self.config.min_severity {
                    return Ok((out, change));
                }
                if severity < Severity::Error {
                    // A refused request is an operator's mistake, not a backup that
                    // failed: tell it as it is, outside the source's failure streak.
                    out.push(message::failed(f, &streak::single(&f.reason), ctx));
                    return Ok((out, change));
                }
                let current = self.streaks.get(&f.source).await?;
                let (next, send) = streak::after_failure(
                    current,
                    &f.reason,
                    chrono::Utc::now(),
                    self.config.repeat_every,
                );
                if send {
                    out.push(message::failed(f, &next, ctx));
                } else {
                    self.metrics.count(&self.name, "collapsed");
                    tracing::info!(channel = %self.name, source = %f.source, failures = next.failures, "failure collapsed into the open alert");
                }
                change = StreakChange::Put(next);
            }
            Event::Uploaded(u) => {
                if on.contains(&NotifyOn::Failed)
                    && let Some(streak) = self.streaks.get(&u.source).await?
                {
                    // Closes an alert this channel opened, whatever its min_severity.
                    out.push(message::recovered(u, &streak, ctx));
                    change = StreakChange::Clear;
                }
                if on.contains(&NotifyOn::Succeeded) && self.config.min_severity <= Severity::Info {
                    out.push(message::succeeded(u, ctx));
                }
            }
            Event::Retention(r)
                if on.contains(&NotifyOn::Retention)
                    && self.config.min_severity <= Severity::Info =>
            {
                out.push(message::retention(r, ctx));
            }
            _ => {}
        }
        Ok((out, change))
    }
}

enum StreakChange {
    None,
    Put(streak::Streak),
    Clear,
}

impl Handler for Channel {
    type Input = Event;
    const STAGE: Stage = Stage::Notifier;

    fn consumer(&self) -> ConsumerSpec {
        ConsumerSpec {
            stream: subjects::EVENTS_STREAM,
            durable: format!("ferry-notifier-{}", self.name),
            filters: self.kinds().into_iter().map(EventKind::filter).collect(),
            // A channel added to a running fleet starts with what happens next,
            // not with days of history; an existing durable keeps its position.
            deliver: Deliver::New,
            ack_wait: self.notifier.http_timeout * 2 + Duration::from_secs(30),
            max_deliver: self.notifier.max_attempts as i64,
        }
    }

    fn decode(&self, subject: &str, payload: &[u8]) -> Result<Option<Event>, prost::DecodeError> {
        Event::decode(subject, payload)
    }

    async fn handle(&self, event: Event, _ctx: JobContext) -> Result<Vec<Outgoing>, HandlerError> {
        self.notify(event).await.map_err(|e| errors::classify(&e))
    }
}

impl Channel {
    /// What [`Handler::handle`] does, with the notifier's own error.
    async fn notify(&self, event: Event) -> Result<Vec<Outgoing>, NotifyError> {
        if !self.wants_source(event.source()) {
            return Ok(Vec::new());
        }
        let identity = format!("{}.{}", event.identity(), self.name);
        let done_key = format!("{identity}.done");
        if matches!(self.sent.get(&done_key).await, Ok(Some(_))) {
            return Ok(Vec::new());
        }
        let ctx = Context {
            sources: &self.rt.sources,
            trace_url: self.notifier.trace_url.as_deref(),
            trace_id: ferry_telemetry::current_trace_id(),
        };
        let (notifications, change) = self
            .plan(&event, &ctx)
            .await
            .map_err(|e| self.state_error(e))?;
        for n in &notifications {
            self.deliver_once(&format!("{identity}.{}", n.kind.name()), n)
                .await?;
        }
        let source = event.source();
        match change {
            StreakChange::None => {}
            StreakChange::Put(streak) => self
                .streaks
                .put(source, &streak)
                .await
                .map_err(|e| self.state_error(e))?,
            StreakChange::Clear => self
                .streaks
                .clear(source)
                .await
                .map_err(|e| self.state_error(e))?,
        }
        if let Err(e) = self.sent.put(&done_key, "done".into()).await {
            tracing::warn!(channel = %self.name, error = %e, "event handled but not recorded");
        }
        Ok(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn source_patterns() {
        assert!(matches("orders", "orders"));
        assert!(!matches("orders", "orders-eu"));
        assert!(matches("orders-*", "orders-eu"));
        assert!(matches("*-eu", "orders-eu"));
        assert!(matches("db?", "db1"));
        assert!(!matches("db?", "db12"));
        assert!(matches("*", "anything"));
    }
}
