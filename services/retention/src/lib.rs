//! The retention worker: after each `BackupUploaded`, applies the source's policy
//! (deleting expired manifests first), then collects objects that no remaining
//! manifest references and that are older than the grace period, and publishes
//! `RetentionApplied`.
//!
//! Order makes a crash safe: a manifest is deleted before its objects, so a crash
//! leaves only unreferenced objects, which the next run collects; never a manifest
//! whose objects are gone.

pub mod plan;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ferry_proto::subjects::{self, EventKind};
use ferry_proto::v1::{BackupUploaded, ExpiredBackup, KeptBackup, RetentionApplied, Stage};
use ferry_proto::{Message, reason};
use ferry_runtime::config::SourceConfig;
use ferry_runtime::{ConsumerSpec, Handler, HandlerError, JobContext, Outgoing, Runtime};
use ferry_storage::layout::{
    BACKUPS_PREFIX, OBJECTS_PREFIX, backup_id_of, manifest_key, source_prefix,
};
use ferry_storage::{Manifest, ObjectStore, StorageError, get_bytes};
use tokio_util::sync::CancellationToken;

use plan::{BackupInfo, plan};

/// The retention worker's handler.
pub struct Retention {
    rt: Runtime,
    store: Arc<dyn ObjectStore>,
}

/// What one retention run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionOutcome {
    /// The plan that was applied.
    pub plan: plan::Plan,
    /// Objects collected.
    pub objects_deleted: u64,
    /// Bytes freed by collecting them.
    pub bytes_freed: u64,
}

impl Retention {
    /// A retention worker on `store`.
    pub fn new(rt: Runtime, store: Arc<dyn ObjectStore>) -> Self {
        Retention { rt, store }
    }

    /// Applies the policy of `source` and collects garbage.
    pub async fn apply(&self, source: &SourceConfig) -> Result<RetentionOutcome, StorageError> {
        let tz =
            ferry_runtime::schedule::parse_timezone(&source.timezone).unwrap_or(chrono_tz::Tz::UTC);
        let mut backups = Vec::new();
        for meta in self.store.list(&source_prefix(&source.name)).await? {
            let Some(id) = backup_id_of(&source.name, &meta.key) else {
                continue;
            };
            let manifest = Manifest::from_json(&get_bytes(self.store.as_ref(), &meta.key).await?);
            match manifest {
                Ok(m) => backups.push(BackupInfo {
                    id,
                    time: m.completed_at,
                }),
                // An unreadable manifest is never deleted by policy: an operator
                // must look at it. It still protects its objects below.
                Err(e) => {
                    tracing::warn!(manifest = %meta.key, error = %e, "skipping unreadable manifest")
                }
            }
        }
        let plan = plan(&backups, &source.retention, tz);
        for d in &plan.delete {
            self.store
                .delete(&manifest_key(&source.name, &d.id))
                .await?;
            tracing::info!(backup_id = %d.id, "expired backup deleted");
        }
        let (objects_deleted, bytes_freed) = self.collect_garbage().await?;
        ferry_runtime::metrics::count_bytes(ferry_runtime::metrics::ByteKind::Freed, bytes_freed);
        Ok(RetentionOutcome {
            plan,
            objects_deleted,
            bytes_freed,
        })
    }

    /// Deletes objects that no manifest of any source references and that are older
    /// than the grace period (an upload in flight has objects but no manifest yet).
    async fn collect_garbage(&self) -> Result<(u64, u64), StorageError> {
        let mut referenced = HashSet::new();
        for meta in self.store.list(BACKUPS_PREFIX).await? {
            if !meta.key.ends_with(".json") {
                continue;
            }
            match Manifest::from_json(&get_bytes(self.store.as_ref(), &meta.key).await?) {
                Ok(m) => referenced.extend(m.files.into_iter().map(|f| f.object)),
                Err(e) => {
                    // Without knowing what it references, collecting anything could
                    // break a backup: skip collection this time.
                    tracing::warn!(manifest = %meta.key, error = %e, "unreadable manifest: garbage collection skipped");
                    return Ok((0, 0));
                }
            }
        }
        let cutoff = SystemTime::now() - self.rt.config.retention.gc_grace;
        let (mut count, mut bytes) = (0, 0);
        for meta in self.store.list(OBJECTS_PREFIX).await? {
            if !referenced.contains(&meta.key) && meta.modified < cutoff {
                self.store.delete(&meta.key).await?;
                count += 1;
                bytes += meta.size;
            }
        }
        Ok((count, bytes))
    }
}

/// Runs the retention worker until `shutdown`.
pub async fn run(rt: Runtime, shutdown: CancellationToken) -> anyhow::Result<()> {
    let store = ferry_runtime::store::open(&rt.config.storage)?;
    let handler = Arc::new(Retention::new(rt.clone(), store));
    // One run at a time per process keeps two runs from collecting concurrently;
    // across replicas a per-source lease comes with the retention issue.
    rt.run_handler(handler, 1, shutdown).await?;
    Ok(())
}

impl Handler for Retention {
    type Input = BackupUploaded;
    const STAGE: Stage = Stage::Retention;

    fn consumer(&self) -> ConsumerSpec {
        ConsumerSpec {
            stream: subjects::EVENTS_STREAM,
            durable: "ferry-retention".into(),
            filter: EventKind::Uploaded.filter(),
            ack_wait: Duration::from_secs(120),
            max_deliver: 5,
        }
    }

    fn decode(
        &self,
        _subject: &str,
        payload: &[u8],
    ) -> Result<Option<BackupUploaded>, prost::DecodeError> {
        BackupUploaded::decode(payload).map(Some)
    }

    async fn handle(
        &self,
        uploaded: BackupUploaded,
        _ctx: JobContext,
    ) -> Result<Vec<Outgoing>, HandlerError> {
        let source = self.rt.sources.get(&uploaded.source).ok_or_else(|| {
            HandlerError::permanent(
                reason::UNKNOWN_SOURCE,
                format!("source {:?} is not configured on this retention worker; its backups are left untouched", uploaded.source),
            )
        })?;
        let outcome = self.apply(&source).await.map_err(|e| {
            if e.is_retryable() {
                HandlerError::retryable(reason::STORAGE_ERROR, e.to_string())
            } else {
                HandlerError::permanent(reason::STORAGE_ERROR, e.to_string())
            }
        })?;
        let event = RetentionApplied {
            job_id: uploaded.job_id.clone(),
            source: uploaded.source.clone(),
            occurred_at: Some(ferry_proto::now()),
            kept: outcome
                .plan
                .keep
                .iter()
                .map(|d| KeptBackup {
                    backup_id: d.id.clone(),
                    rule: d.rule.into(),
                })
                .collect(),
            deleted: outcome
                .plan
                .delete
                .iter()
                .map(|d| ExpiredBackup {
                    backup_id: d.id.clone(),
                    rule: d.rule.into(),
                })
                .collect(),
            objects_deleted: outcome.objects_deleted,
            bytes_freed: outcome.bytes_freed,
        };
        tracing::info!(
            kept = event.kept.len(),
            deleted = event.deleted.len(),
            objects_deleted = event.objects_deleted,
            bytes_freed = event.bytes_freed,
            "retention applied"
        );
        Ok(vec![Outgoing::event(
            EventKind::Retention,
            &uploaded.source,
            &event,
            format!("{}/retention", uploaded.job_id),
        )])
    }
}
