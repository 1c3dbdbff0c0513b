//! PostgreSQL WAL archiving as the event stream tells it. `ferry wal-push` runs
//! inside PostgreSQL's archiver, a process per file with no metrics endpoint, and
//! reports to the event stream instead (`WalArchived` batches, `BackupFailed` of
//! stage `archive`); every capture replica follows those reports and exports them
//! as metrics per source, so an alert fires when archiving fails or falls behind
//! (`FerryWalArchivingFailing`, `FerryWalArchivingBehind`).

use ferry_proto::Message;
use ferry_proto::subjects::{self, EventKind};
use ferry_proto::v1::{BackupFailed, Stage, WalArchived};
use ferry_runtime::Runtime;
use ferry_runtime::config::PostgresMode;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::metrics::CaptureMetrics;

fn seconds(t: Option<&ferry_proto::Timestamp>) -> f64 {
    t.and_then(ferry_proto::from_timestamp)
        .map(|t| t.timestamp_millis() as f64 / 1000.0)
        .unwrap_or(0.0)
}

/// Follows the archiving reports until `shutdown`.
pub async fn watch(
    rt: Runtime,
    metrics: CaptureMetrics,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    // Subscribed first, so nothing published while the last reports are read
    // back is missed.
    let mut reports = rt.nats.subscribe(EventKind::Wal.filter()).await?;
    let mut failures = rt.nats.subscribe(EventKind::Failed.filter()).await?;
    // The newest report of each physical source, so a restarted replica knows
    // when archiving last succeeded.
    let events = rt.jetstream.get_stream(subjects::EVENTS_STREAM).await?;
    for source in rt.sources.all() {
        if source.config.mode != PostgresMode::Physical {
            continue;
        }
        let subject = EventKind::Wal.subject(&source.config.name);
        if let Ok(m) = events.get_last_raw_message_by_subject(&subject).await
            && let Ok(report) = WalArchived::decode(m.payload.as_ref())
        {
            metrics.record_wal_archived(
                &report.source,
                report.files,
                seconds(report.last_archived_at.as_ref()),
                false,
            );
        }
    }
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            Some(msg) = reports.next() => {
                if let Ok(report) = WalArchived::decode(msg.payload.as_ref()) {
                    metrics.record_wal_archived(
                        &report.source,
                        report.files,
                        seconds(report.last_archived_at.as_ref()),
                        true,
                    );
                }
            }
            Some(msg) = failures.next() => {
                if let Ok(failed) = BackupFailed::decode(msg.payload.as_ref())
                    && failed.stage == Stage::Archive as i32
                {
                    metrics.record_wal_failure(&failed.source);
                }
            }
            else => return Ok(()),
        }
    }
}
