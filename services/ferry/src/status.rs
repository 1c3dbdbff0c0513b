//! `ferry status`: per source, the last success, the last failure, the next
//! scheduled run and whether a backup is running now, from the catalog (the latest
//! backup, resolved as every command resolves it), the event stream, the registry
//! and the lease bucket (no other state exists).

use async_nats::jetstream;
use chrono::{DateTime, Utc};
use ferry_proto::Message;
use ferry_proto::subjects::{self, EventKind};
use ferry_proto::v1::{BackupFailed, BackupUploaded, Stage};
use ferry_runtime::Runtime;
use ferry_scheduler::cron::Schedule;
use ferry_storage::Catalog;
use serde::Serialize;

/// One source's status.
#[derive(Debug, Clone, Serialize)]
pub struct SourceStatus {
    /// The source.
    pub source: String,
    /// `file` or `registry`.
    pub origin: &'static str,
    /// Scheduled jobs paused.
    pub paused: bool,
    /// The last stored backup.
    pub last_success: Option<Success>,
    /// The last failed job.
    pub last_failure: Option<Failure>,
    /// The next scheduled instant.
    pub next_run: Option<DateTime<Utc>>,
    /// The job holding the source's lease, if one runs now.
    pub running: Option<serde_json::Value>,
}

/// A stored backup.
#[derive(Debug, Clone, Serialize)]
pub struct Success {
    /// The backup.
    pub backup_id: String,
    /// When it was stored.
    pub at: Option<DateTime<Utc>>,
    /// Its size.
    pub bytes_total: u64,
}

/// A failed job.
#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    /// The job.
    pub job_id: String,
    /// When it failed.
    pub at: Option<DateTime<Utc>>,
    /// The stage.
    pub stage: String,
    /// The reason code.
    pub reason: String,
    /// What happened.
    pub message: String,
}

/// The source's latest backup, as the catalog resolves `latest` for every command.
async fn latest_backup(catalog: &Catalog<'_>, source: &str) -> anyhow::Result<Option<Success>> {
    match catalog.resolve(source, "latest").await {
        Ok(m) => Ok(Some(Success {
            backup_id: m.backup_id,
            at: Some(m.completed_at),
            bytes_total: m.bytes_total,
        })),
        Err(ferry_storage::CatalogError::NoBackups { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The status of every source, by name.
pub async fn collect(rt: &Runtime) -> anyhow::Result<Vec<SourceStatus>> {
    let events = rt.jetstream.get_stream(subjects::EVENTS_STREAM).await?;
    let locks = rt.jetstream.get_key_value(subjects::LOCKS_BUCKET).await?;
    let now = Utc::now();
    let store = ferry_runtime::store::open(&rt.config.storage)?;
    let catalog = Catalog::new(store.as_ref());
    let mut out = Vec::new();
    for s in rt.sources.all() {
        let name = s.config.name.clone();
        let last_success = match latest_backup(&catalog, &name).await {
            Ok(latest) => latest,
            // The store is away: the event stream still knows the last success.
            Err(e) => {
                eprintln!(
                    "warning: cannot read the backups of {name} from {} ({e}); showing the last success event instead",
                    store.describe()
                );
                last::<BackupUploaded>(&events, EventKind::Uploaded, &name)
                    .await
                    .map(|u| Success {
                        at: u.occurred_at.as_ref().and_then(ferry_proto::from_timestamp),
                        backup_id: u.backup_id,
                        bytes_total: u.bytes_total,
                    })
            }
        };
        let last_failure = last::<BackupFailed>(&events, EventKind::Failed, &name)
            .await
            .map(|f| Failure {
                at: f.occurred_at.as_ref().and_then(ferry_proto::from_timestamp),
                job_id: f.job_id,
                stage: Stage::try_from(f.stage)
                    .unwrap_or(Stage::Unspecified)
                    .name()
                    .into(),
                reason: f.reason,
                message: f.message,
            });
        let next_run = if s.paused {
            None
        } else {
            Schedule::of(&s.config).and_then(|sch| sch.next_after(now))
        };
        let running = locks
            .get(&name)
            .await
            .ok()
            .flatten()
            .and_then(|v| serde_json::from_slice(&v).ok());
        out.push(SourceStatus {
            source: name,
            origin: match s.origin {
                ferry_runtime::registry::Origin::File => "file",
                ferry_runtime::registry::Origin::Registry => "registry",
            },
            paused: s.paused,
            last_success,
            last_failure,
            next_run,
            running,
        });
    }
    Ok(out)
}

async fn last<M: Message + Default>(
    events: &jetstream::stream::Stream,
    kind: EventKind,
    source: &str,
) -> Option<M> {
    let message = events
        .get_last_raw_message_by_subject(&kind.subject(source))
        .await
        .ok()?;
    M::decode(message.payload.as_ref()).ok()
}

/// A human-readable table.
pub fn table(statuses: &[SourceStatus]) -> String {
    let when = |t: Option<DateTime<Utc>>| {
        t.map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
            .unwrap_or_else(|| "-".into())
    };
    let mut out = format!(
        "{:<20} {:<9} {:<28} {:<20} {:<36} {:<20} {}\n",
        "SOURCE", "ORIGIN", "LAST SUCCESS", "AT (UTC)", "LAST FAILURE", "NEXT RUN (UTC)", "RUNNING"
    );
    for s in statuses {
        let success = s
            .last_success
            .as_ref()
            .map(|x| x.backup_id.clone())
            .unwrap_or_else(|| "-".into());
        let success_at = when(s.last_success.as_ref().and_then(|x| x.at));
        let failure = s
            .last_failure
            .as_ref()
            .map(|f| format!("{} {} ({})", when(f.at), f.reason, f.stage))
            .unwrap_or_else(|| "-".into());
        let next = if s.paused {
            "paused".to_string()
        } else {
            when(s.next_run)
        };
        let running = s
            .running
            .as_ref()
            .map(|r| {
                format!(
                    "job {} on {}",
                    r["job_id"].as_str().unwrap_or("?"),
                    r["node"].as_str().unwrap_or("?")
                )
            })
            .unwrap_or_else(|| "-".into());
        out.push_str(&format!(
            "{:<20} {:<9} {:<28} {:<20} {:<36} {:<20} {}\n",
            s.source, s.origin, success, success_at, failure, next, running
        ));
    }
    out
}
