//! What `ferry wal-push` tells the event stream: a failed push at once (a
//! `BackupFailed` of stage `archive`, reason `wal_archive_failed`, so the notifier
//! alerts like any failure), and the files archived in batches (`WalArchived`,
//! about once a minute, and at once when pushes succeed again after a failure), so
//! subscribers and the capture worker's metrics see archiving progress without an
//! event per 16 MiB.
//!
//! Each push is its own process, so the batch lives in a small state file kept in
//! `pg_wal/archive_status/` (PostgreSQL runs archive_command in the data
//! directory; base backups leave `pg_wal` out, so it is never copied into one).
//! Reporting is best-effort: NATS unreachable (or not configured) never fails a
//! push; the counts wait for the next report.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use ferry_proto::subjects::EventKind;
use ferry_proto::v1::{BackupFailed, Stage, WalArchived};
use ferry_proto::{Message, reason};
use ferry_runtime::Config;
use serde::{Deserialize, Serialize};

/// How often a batch is reported while archiving succeeds.
const REPORT_EVERY: chrono::TimeDelta = chrono::TimeDelta::seconds(60);
/// The longest a push waits for NATS before it gives up reporting.
const NATS_WAIT: Duration = Duration::from_secs(2);

/// The batch not yet reported.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Batch {
    /// When the previous report went out (`None`: never, report now).
    pub reported_at: Option<DateTime<Utc>>,
    /// Files archived since.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
    /// The newest one, and when.
    pub last_file: String,
    /// When it was archived.
    pub last_at: Option<DateTime<Utc>>,
    /// Failed pushes since.
    pub failures: u64,
}

impl Batch {
    /// Whether this batch goes out now: nothing reported yet, a minute passed, or
    /// pushes succeed again after failing.
    fn due(&self, now: DateTime<Utc>, recovered: bool) -> bool {
        recovered || self.reported_at.is_none_or(|at| now - at >= REPORT_EVERY)
    }
}

/// Where a push's state lives: next to PostgreSQL's own archive status files,
/// found from the pushed file's path (`pg_wal/<file>`).
pub fn state_path(pushed: &Path) -> Option<PathBuf> {
    let dir = pushed.parent()?.join("archive_status");
    dir.is_dir().then(|| dir.join("ferry-wal-push.json"))
}

fn load(path: Option<&Path>) -> Batch {
    path.and_then(|p| std::fs::read(p).ok())
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

fn save(path: Option<&Path>, batch: &Batch) {
    let Some(path) = path else { return };
    let tmp = path.with_extension("json.tmp");
    if std::fs::write(&tmp, serde_json::to_vec(batch).unwrap_or_default()).is_ok() {
        let _ = std::fs::rename(&tmp, path);
    }
}

/// Records a successful push of `file` (`bytes` long) and reports the batch when
/// it is due.
pub async fn archived(config: &Config, source: &str, pushed: &Path, file: &str, bytes: u64) {
    let path = state_path(pushed);
    let mut batch = load(path.as_deref());
    let now = Utc::now();
    let recovered = batch.failures > 0;
    batch.files += 1;
    batch.bytes += bytes;
    batch.last_file = file.to_string();
    batch.last_at = Some(now);
    if batch.due(now, recovered) {
        let event = WalArchived {
            source: source.to_string(),
            occurred_at: Some(ferry_proto::now()),
            files: batch.files,
            bytes: batch.bytes,
            last_file: batch.last_file.clone(),
            last_archived_at: Some(ferry_proto::to_timestamp(now)),
            failures: batch.failures,
        };
        let msg_id = format!("wal.{source}.{file}");
        if publish(
            config,
            EventKind::Wal,
            source,
            event.encode_to_vec(),
            &msg_id,
        )
        .await
        {
            batch = Batch {
                reported_at: Some(now),
                ..Default::default()
            };
        }
    }
    save(path.as_deref(), &batch);
}

/// Records a failed push of `file` and reports it at once (one event per file and
/// minute: PostgreSQL retries every few seconds).
pub async fn failed(config: &Config, source: &str, pushed: &Path, file: &str, message: &str) {
    let path = state_path(pushed);
    let mut batch = load(path.as_deref());
    batch.failures += 1;
    save(path.as_deref(), &batch);
    let event = BackupFailed {
        job_id: format!("wal-{source}-{file}"),
        source: source.to_string(),
        occurred_at: Some(ferry_proto::now()),
        stage: Stage::Archive as i32,
        reason: reason::WAL_ARCHIVE_FAILED.into(),
        message: message.to_string(),
        attempt: u32::try_from(batch.failures).unwrap_or(u32::MAX),
        r#final: true,
        backup_id: String::new(),
    };
    let minute = Utc::now().format("%Y%m%dT%H%M");
    let msg_id = format!("walfail.{source}.{file}.{minute}");
    publish(
        config,
        EventKind::Failed,
        source,
        event.encode_to_vec(),
        &msg_id,
    )
    .await;
}

/// Publishes one event to the events stream and waits for its ack; `false` when
/// NATS is unreachable or slow (the push itself is not affected).
async fn publish(
    config: &Config,
    kind: EventKind,
    source: &str,
    payload: Vec<u8>,
    msg_id: &str,
) -> bool {
    let attempt = async {
        let client = ferry_runtime::nats::connect(&config.nats, "ferry-wal-push").await?;
        let js = async_nats::jetstream::new(client);
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", msg_id);
        js.publish_with_headers(kind.subject(source), headers, payload.into())
            .await?
            .await?;
        Ok::<_, anyhow::Error>(())
    };
    match tokio::time::timeout(NATS_WAIT, attempt).await {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            eprintln!("ferry wal-push: not reported to NATS ({e:#}); archiving is not affected");
            false
        }
        Err(_) => {
            eprintln!(
                "ferry wal-push: NATS did not answer within {NATS_WAIT:?}; not reported, archiving is not affected"
            );
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_go_out_a_minute_apart_or_on_recovery() {
        let now = Utc::now();
        assert!(
            Batch::default().due(now, false),
            "the first report is at once"
        );
        let recent = Batch {
            reported_at: Some(now - chrono::TimeDelta::seconds(10)),
            ..Default::default()
        };
        assert!(!recent.due(now, false));
        assert!(
            recent.due(now, true),
            "success after failures is told at once"
        );
        let old = Batch {
            reported_at: Some(now - chrono::TimeDelta::seconds(61)),
            ..Default::default()
        };
        assert!(old.due(now, false));
    }
}
