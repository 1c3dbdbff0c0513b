//! The notifier: subscribes to the events and tells each configured channel what its
//! rules ask for. Each event is sent once per channel, even when redelivered: a
//! JetStream KV bucket remembers what was sent.

mod webhook;

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv;
use ferry_proto::subjects::{self, EventKind};
use ferry_proto::v1::{BackupFailed, BackupUploaded, RetentionApplied, Stage};
use ferry_proto::{JobMessage, Message};
use ferry_runtime::config::{NotifyConfig, NotifyOn};
use ferry_runtime::secrets::{SecretSource, read_secret};
use ferry_runtime::{ConsumerSpec, Handler, HandlerError, JobContext, Outgoing, Runtime};
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

pub use webhook::notification_body;

/// An event the notifier reacts to.
#[derive(Debug, Clone)]
pub enum Event {
    /// A stage failed a job.
    Failed(BackupFailed),
    /// A backup was stored.
    Uploaded(BackupUploaded),
    /// Retention ran.
    Retention(RetentionApplied),
}

impl Event {
    fn kind(&self) -> NotifyOn {
        match self {
            Event::Failed(_) => NotifyOn::Failed,
            Event::Uploaded(_) => NotifyOn::Succeeded,
            Event::Retention(_) => NotifyOn::Retention,
        }
    }

    fn encoded(&self) -> Vec<u8> {
        match self {
            Event::Failed(m) => m.encode_to_vec(),
            Event::Uploaded(m) => m.encode_to_vec(),
            Event::Retention(m) => m.encode_to_vec(),
        }
    }
}

impl JobMessage for Event {
    fn job_id(&self) -> &str {
        match self {
            Event::Failed(m) => &m.job_id,
            Event::Uploaded(m) => &m.job_id,
            Event::Retention(m) => &m.job_id,
        }
    }

    fn source(&self) -> &str {
        match self {
            Event::Failed(m) => &m.source,
            Event::Uploaded(m) => &m.source,
            Event::Retention(m) => &m.source,
        }
    }
}

/// A channel ready to send: its URL is resolved once at start-up.
struct Channel {
    index: usize,
    on: Vec<NotifyOn>,
    url: secrecy::SecretString,
}

/// The notifier's handler.
pub struct Notifier {
    channels: Vec<Channel>,
    http: reqwest::Client,
    sent: kv::Store,
}

impl Notifier {
    /// Resolves every channel's URL (a missing env var is a start-up error naming it).
    pub async fn new(rt: &Runtime) -> anyhow::Result<Self> {
        let mut channels = Vec::new();
        for (index, n) in rt.config.notify.iter().enumerate() {
            match n {
                NotifyConfig::Webhook { url, url_env, on } => {
                    let url = match (url, url_env) {
                        (Some(u), _) => secrecy::SecretString::from(u.clone()),
                        (None, Some(var)) => read_secret(SecretSource::Env(var))
                            .map_err(|e| anyhow::anyhow!("notify[{index}].url_env: {e}"))?,
                        (None, None) => anyhow::bail!("notify[{index}]: set url or url_env"),
                    };
                    channels.push(Channel {
                        index,
                        on: on.clone(),
                        url,
                    });
                }
            }
        }
        let sent = rt
            .jetstream
            .get_key_value(subjects::NOTIFIED_BUCKET)
            .await
            .map_err(|e| {
                anyhow::anyhow!("opening the {} bucket: {e}", subjects::NOTIFIED_BUCKET)
            })?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .user_agent(concat!("ferry-notifier/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Notifier {
            channels,
            http,
            sent,
        })
    }
}

/// Runs the notifier until `shutdown`.
pub async fn run(rt: Runtime, shutdown: CancellationToken) -> anyhow::Result<()> {
    let handler = Arc::new(Notifier::new(&rt).await?);
    rt.run_handler(handler, 4, shutdown).await?;
    Ok(())
}

impl Handler for Notifier {
    type Input = Event;
    const STAGE: Stage = Stage::Notifier;

    fn consumer(&self) -> ConsumerSpec {
        ConsumerSpec {
            stream: subjects::EVENTS_STREAM,
            durable: "ferry-notifier".into(),
            filter: subjects::EVENTS_ALL.into(),
            ack_wait: Duration::from_secs(60),
            max_deliver: 8,
        }
    }

    fn decode(&self, subject: &str, payload: &[u8]) -> Result<Option<Event>, prost::DecodeError> {
        Ok(match EventKind::of_subject(subject) {
            Some(EventKind::Failed) => {
                let failed = BackupFailed::decode(payload)?;
                // The notifier's own failures are logged, not notified: notifying
                // about a channel that cannot be reached would loop.
                (failed.stage != Stage::Notifier as i32).then_some(Event::Failed(failed))
            }
            Some(EventKind::Uploaded) => Some(Event::Uploaded(BackupUploaded::decode(payload)?)),
            Some(EventKind::Retention) => {
                Some(Event::Retention(RetentionApplied::decode(payload)?))
            }
            _ => None,
        })
    }

    async fn handle(&self, event: Event, _ctx: JobContext) -> Result<Vec<Outgoing>, HandlerError> {
        let trace_id = ferry_telemetry::current_trace_id();
        let body = notification_body(&event, trace_id.as_deref());
        let event_key = dedup_key(&event);
        let mut first_error = None;
        for channel in self
            .channels
            .iter()
            .filter(|c| c.on.contains(&event.kind()))
        {
            let key = format!("{event_key}.c{}", channel.index);
            if matches!(self.sent.get(&key).await, Ok(Some(_))) {
                continue;
            }
            match webhook::post(&self.http, channel.url.expose_secret(), &body).await {
                Ok(()) => {
                    if let Err(e) = self.sent.put(&key, "sent".into()).await {
                        tracing::warn!(channel = channel.index, error = %e, "notification sent but not recorded; a redelivery may repeat it");
                    }
                }
                Err(e) => {
                    // Keep going: one failing channel must not stop the others.
                    tracing::warn!(channel = channel.index, error = %e, "notification failed");
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            None => Ok(Vec::new()),
            Some(e) => Err(e),
        }
    }
}

/// A KV key for "this event": the job and kind, plus a digest of the event so two
/// different failures of one job are two notifications.
fn dedup_key(event: &Event) -> String {
    let digest = hex::encode(&Sha256::digest(event.encoded())[..8]);
    let job = event.job_id();
    let job = if job.is_empty() { "nojob" } else { job };
    let kind = match event.kind() {
        NotifyOn::Failed => "failed",
        NotifyOn::Succeeded => "succeeded",
        NotifyOn::Retention => "retention",
    };
    format!("{job}.{kind}.{digest}")
}
