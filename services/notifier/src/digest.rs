//! The digest: a scheduled summary per channel, built from the event stream (what
//! happened in the period) and the store (which backups exist).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::config::Severity;
use async_nats::jetstream::consumer::{DeliverPolicy, pull::OrderedConfig};
use chrono::{DateTime, Utc};
use ferry_proto::Message;
use ferry_proto::subjects::{self, EventKind};
use ferry_proto::v1::{BackupFailed, BackupUploaded, Stage};
use ferry_runtime::{HandlerError, Runtime};
use ferry_storage::Catalog;
use futures::StreamExt;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::channel::Channel;
use crate::errors;
use crate::message::{Notification, NotificationKind};

/// One source's period.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceDigest {
    /// The source.
    pub source: String,
    /// Backups stored in the period.
    pub succeeded: u32,
    /// Jobs failed in the period.
    pub failed: u32,
    /// Bytes of the backups stored in the period.
    pub bytes: u64,
    /// The oldest backup in the store.
    pub oldest: Option<String>,
    /// The newest backup in the store.
    pub newest: Option<String>,
}

/// A period's summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digest {
    /// Start of the period.
    pub start: DateTime<Utc>,
    /// End of the period.
    pub end: DateTime<Utc>,
    /// Per source, by name.
    pub sources: Vec<SourceDigest>,
    /// The slowest backups of the period: source, backup id, milliseconds.
    pub slowest: Vec<(String, String, u64)>,
}

/// Builds the digest of `[start, end)`.
pub async fn build_digest(
    rt: &Runtime,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> anyhow::Result<Digest> {
    let mut per_source: BTreeMap<String, SourceDigest> = rt
        .sources
        .all()
        .into_iter()
        .map(|s| {
            (
                s.config.name.clone(),
                SourceDigest {
                    source: s.config.name,
                    ..Default::default()
                },
            )
        })
        .collect();
    let mut slowest = Vec::new();

    let stream = rt.jetstream.get_stream(subjects::EVENTS_STREAM).await?;
    let start_time = time::OffsetDateTime::from_unix_timestamp(start.timestamp())?;
    let mut consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject: subjects::EVENTS_ALL.into(),
            deliver_policy: DeliverPolicy::ByStartTime { start_time },
            ..Default::default()
        })
        .await?;
    if consumer.info().await?.num_pending > 0 {
        let mut messages = consumer.messages().await?;
        while let Some(message) =
            tokio::time::timeout(Duration::from_secs(10), messages.next()).await?
        {
            let message = message?;
            let info = message.info().map_err(|e| anyhow::anyhow!("{e}"))?;
            let (published, pending) = (info.published.unix_timestamp(), info.pending);
            if published >= end.timestamp() {
                break;
            }
            match EventKind::of_subject(&message.subject) {
                Some(EventKind::Uploaded) => {
                    let u = BackupUploaded::decode(message.payload.as_ref())?;
                    let entry =
                        per_source
                            .entry(u.source.clone())
                            .or_insert_with(|| SourceDigest {
                                source: u.source.clone(),
                                ..Default::default()
                            });
                    entry.succeeded += 1;
                    entry.bytes += u.bytes_total;
                    slowest.push((u.source, u.backup_id, u.duration_ms));
                }
                Some(EventKind::Failed) => {
                    let f = BackupFailed::decode(message.payload.as_ref())?;
                    // Refused requests name no real source; notifier failures are
                    // about channels, not backups.
                    if f.stage != Stage::Notifier as i32
                        && subjects::is_valid_source_name(&f.source)
                        && rt.sources.get(&f.source).is_some()
                    {
                        per_source.entry(f.source.clone()).or_default().failed += 1;
                    }
                }
                _ => {}
            }
            if pending == 0 {
                break;
            }
        }
    }
    slowest.sort_by_key(|s| std::cmp::Reverse(s.2));
    slowest.truncate(3);

    let store = ferry_runtime::store::open(&rt.config.storage)?;
    let catalog = Catalog::new(store.as_ref());
    for digest in per_source.values_mut() {
        // Newest first, in the order every command resolves `latest` by.
        let backups = catalog.backups(Some(&digest.source)).await?;
        digest.newest = backups.first().map(|b| b.id.clone());
        digest.oldest = backups.last().map(|b| b.id.clone());
    }
    Ok(Digest {
        start,
        end,
        sources: per_source.into_values().collect(),
        slowest,
    })
}

impl Digest {
    /// The digest as a notification.
    pub fn notification(&self) -> Notification {
        let succeeded: u32 = self.sources.iter().map(|s| s.succeeded).sum();
        let failed: u32 = self.sources.iter().map(|s| s.failed).sum();
        let bytes: u64 = self.sources.iter().map(|s| s.bytes).sum();
        let rate = |ok: u32, bad: u32| {
            if ok + bad == 0 {
                "-".to_string()
            } else {
                format!("{:.0}%", 100.0 * ok as f64 / (ok + bad) as f64)
            }
        };
        let title = format!(
            "Ferry digest {} to {}",
            self.start.format("%Y-%m-%d %H:%M"),
            self.end.format("%Y-%m-%d %H:%M UTC")
        );
        let mut text = format!(
            "{succeeded} backups stored, {failed} failed (success rate {}), {} stored in the period.",
            rate(succeeded, failed),
            ferry_runtime::human::bytes(bytes)
        );
        let failing: Vec<&str> = self
            .sources
            .iter()
            .filter(|s| s.failed > 0)
            .map(|s| s.source.as_str())
            .collect();
        if !failing.is_empty() {
            text.push_str(&format!("\nSources with failures: {}.", failing.join(", ")));
        }
        let mut fields: Vec<(&'static str, String)> = Vec::new();
        for s in &self.sources {
            fields.push((
                "Source",
                format!(
                    "{}: {} ok, {} failed ({}), {}, oldest {}, newest {}",
                    s.source,
                    s.succeeded,
                    s.failed,
                    rate(s.succeeded, s.failed),
                    ferry_runtime::human::bytes(s.bytes),
                    s.oldest.as_deref().unwrap_or("none"),
                    s.newest.as_deref().unwrap_or("none")
                ),
            ));
        }
        for (source, backup, ms) in &self.slowest {
            fields.push((
                "Slowest",
                format!("{source} {backup}: {:.1} s", *ms as f64 / 1000.0),
            ));
        }
        let body = json!({
            "event": "digest",
            "severity": "info",
            "period_start": self.start.to_rfc3339(),
            "period_end": self.end.to_rfc3339(),
            "succeeded": succeeded,
            "failed": failed,
            "bytes_total": bytes,
            "sources": self.sources.iter().map(|s| json!({
                "source": s.source,
                "succeeded": s.succeeded,
                "failed": s.failed,
                "success_rate": if s.succeeded + s.failed == 0 { None } else { Some(s.succeeded as f64 / (s.succeeded + s.failed) as f64) },
                "bytes_total": s.bytes,
                "oldest_backup": s.oldest,
                "newest_backup": s.newest,
            })).collect::<Vec<_>>(),
            "slowest": self.slowest.iter().map(|(s, b, ms)| json!({"source": s, "backup_id": b, "duration_ms": ms})).collect::<Vec<_>>(),
            "title": title,
            "text": text,
        });
        Notification {
            kind: NotificationKind::Digest,
            severity: Severity::Info,
            source: String::new(),
            title,
            text,
            fields,
            link: None,
            body,
        }
    }
}

/// Sends the digest of `[start, end)` to `channel`, once across replicas (the first
/// replica to claim the period in KV sends it), retrying delivery with backoff.
pub async fn send_digest(
    channel: &Channel,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> anyhow::Result<bool> {
    let rt = &channel.rt;
    let claims = rt
        .jetstream
        .get_key_value(subjects::NOTIFIED_BUCKET)
        .await?;
    let key = format!("digest.{}.{}", channel.name, end.timestamp());
    if claims.create(&key, "claimed".into()).await.is_err() {
        return Ok(false);
    }
    let digest = build_digest(rt, start, end).await?;
    let notification = digest.notification();
    let max = channel.notifier.max_attempts.max(1);
    for attempt in 1..=max {
        match channel.deliver(&notification).await {
            Ok(()) => return Ok(true),
            Err(e) => match errors::classify(&e) {
                HandlerError::Retryable {
                    retry_after,
                    message,
                    ..
                } if attempt < max => {
                    let delay = retry_after
                        .unwrap_or(rt.config.retry.base * 2u32.pow(attempt.min(10) - 1))
                        .min(rt.config.retry.max);
                    tracing::warn!(channel = %channel.name, error = %message, retry_in = ?delay, "digest not delivered; will retry");
                    tokio::time::sleep(delay).await;
                }
                _ => return Err(anyhow::Error::new(e).context("digest not delivered")),
            },
        }
    }
    Ok(false)
}

/// Sends the channel's digest on its schedule until `shutdown`.
pub async fn run_schedule(
    channel: Arc<Channel>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let cron = ferry_runtime::schedule::parse_cron(&channel.config.digest_schedule)?;
    let tz = ferry_runtime::schedule::parse_timezone(&channel.config.digest_timezone)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    loop {
        let now = Utc::now().with_timezone(&tz);
        let Ok(next) = cron.find_next_occurrence(&now, false) else {
            break;
        };
        let Ok(after) = cron.find_next_occurrence(&next, false) else {
            break;
        };
        // The period a digest covers is the schedule's own interval.
        let period = after - next;
        let wait = (next.with_timezone(&Utc) - Utc::now())
            .to_std()
            .unwrap_or_default();
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(wait) => {}
        }
        let end = next.with_timezone(&Utc);
        if let Err(e) = send_digest(&channel, end - period, end).await {
            tracing::error!(channel = %channel.name, error = format!("{e:#}"), "digest failed");
        }
    }
    shutdown.cancelled().await;
    Ok(())
}
