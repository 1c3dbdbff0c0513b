//! `ferry status`: per source, the last success, the last failure, the next
//! scheduled run and whether a backup is running now, from the catalog (the latest
//! backup, resolved as every command resolves it), the event stream, the registry
//! and the lease bucket (no other state exists). A read-only command: it attaches
//! to NATS without declaring anything, so a user that may only read runs it.

use std::process::ExitCode;

use async_nats::jetstream;
use chrono::{DateTime, Utc};
use ferry_proto::Message;
use ferry_proto::subjects::{self, EventKind};
use ferry_proto::v1::{BackupFailed, BackupUploaded, Stage};
use ferry_runtime::nats::{existing_bucket, existing_stream};
use ferry_runtime::{Config, Runtime};
use ferry_scheduler::cron::Schedule;
use ferry_storage::Catalog;
use serde::Serialize;

use crate::output;

/// `ferry status`
#[derive(clap::Args)]
pub struct StatusArgs {
    /// JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Runs `ferry status`.
pub async fn run(config: Config, args: StatusArgs) -> anyhow::Result<ExitCode> {
    let rt = Runtime::attach(config, "ferry-cli").await?;
    let statuses = collect(&rt).await?;
    if args.json {
        output::json(&statuses)?;
    } else {
        print!("{}", output::status_table(&statuses));
    }
    Ok(ExitCode::SUCCESS)
}

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
    /// With capture on: the newest restorable window (`ferry pitr status` has
    /// every window and gap).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pitr: Option<PitrSummary>,
    /// PostgreSQL with `mode = "physical"`: the WAL archive.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wal: Option<WalSummary>,
}

/// A physical source's WAL archive, in short (`ferry pitr status` has it all).
#[derive(Debug, Clone, Serialize)]
pub struct WalSummary {
    /// Base backups in the store.
    pub base_backups: usize,
    /// The newest archived segment (of the newest timeline).
    pub last_segment: Option<String>,
    /// When it was stored.
    pub last_archived: Option<DateTime<Utc>>,
    /// Missing segments (each breaks restores past it).
    pub missing: u64,
}

/// A capturing source's point-in-time summary.
#[derive(Debug, Clone, Serialize)]
pub struct PitrSummary {
    /// The newest window: restorable from...
    pub from: Option<super::pitr::Instant>,
    /// ...to.
    pub to: Option<super::pitr::Instant>,
    /// How far the newest committed change is behind now, in seconds.
    pub recovery_point_seconds: Option<f64>,
    /// Gaps in the source's captured history.
    pub gaps: usize,
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

/// The status of every source, by name. Reads only: a stream or bucket that does
/// not exist yet (no worker ever started) reads as empty.
pub async fn collect(rt: &Runtime) -> anyhow::Result<Vec<SourceStatus>> {
    let events = existing_stream(&rt.jetstream, subjects::EVENTS_STREAM).await?;
    let locks = existing_bucket(&rt.jetstream, subjects::LOCKS_BUCKET).await?;
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
                last::<BackupUploaded>(events.as_ref(), EventKind::Uploaded, &name)
                    .await
                    .map(|u| Success {
                        at: u.occurred_at.as_ref().and_then(ferry_proto::from_timestamp),
                        backup_id: u.backup_id,
                        bytes_total: u.bytes_total,
                    })
            }
        };
        let last_failure = last::<BackupFailed>(events.as_ref(), EventKind::Failed, &name)
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
        let running = match &locks {
            Some(locks) => locks.get(&name).await.ok().flatten(),
            None => None,
        }
        .and_then(|v| serde_json::from_slice(&v).ok());
        let pitr = if ferry_capture::captures(&s.config) {
            match super::pitr::status(store.as_ref(), &name, now).await {
                Ok(p) => {
                    let newest = p.windows.last();
                    Some(PitrSummary {
                        from: newest.map(|w| w.from.clone()),
                        to: newest.map(|w| w.to.clone()),
                        recovery_point_seconds: p.recovery_point_seconds,
                        gaps: p.gaps.len(),
                    })
                }
                Err(e) => {
                    eprintln!("warning: cannot read the captured changes of {name}: {e:#}");
                    None
                }
            }
        } else {
            None
        };
        let wal = if s.config.mode == ferry_runtime::config::PostgresMode::Physical {
            match super::pitr::wal_status(store.as_ref(), &name, false).await {
                Ok(w) => {
                    let newest = w.timelines.last();
                    Some(WalSummary {
                        base_backups: w.base_backups.len(),
                        last_segment: newest.and_then(|t| t.last_segment.clone()),
                        last_archived: newest.and_then(|t| t.last_archived),
                        missing: w.missing.iter().map(|m| m.count).sum(),
                    })
                }
                Err(e) => {
                    eprintln!("warning: cannot read the WAL archive of {name}: {e:#}");
                    None
                }
            }
        } else {
            None
        };
        out.push(SourceStatus {
            source: name,
            origin: output::origin(s.origin),
            paused: s.paused,
            last_success,
            last_failure,
            next_run,
            running,
            pitr,
            wal,
        });
    }
    Ok(out)
}

async fn last<M: Message + Default>(
    events: Option<&jetstream::stream::Stream>,
    kind: EventKind,
    source: &str,
) -> Option<M> {
    let message = events?
        .get_last_raw_message_by_subject(&kind.subject(source))
        .await
        .ok()?;
    M::decode(message.payload.as_ref()).ok()
}
