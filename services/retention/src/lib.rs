//! The retention worker: applies each source's policy and garbage-collects the
//! objects no backup needs any more.
//!
//! - **Triggered** by every `BackupUploaded` (that source only), and by a periodic
//!   sweep over every source (`retention.sweep_interval`).
//! - **One run per source at a time** across every replica and `ferry retention
//!   apply`: a run holds the lease `retention.<source>` in `ferry-locks`; garbage
//!   collection, which looks at every source's manifests, holds `retention-gc`.
//! - **Safe order**: expired manifests are deleted first, then unreferenced objects
//!   older than the grace period (see [`gc`]). A crash at any point leaves only
//!   unreferenced garbage, never a manifest without its objects.
//! - **Reports** `RetentionApplied` with the kept and deleted backups (each with
//!   its rule), the objects deleted and the bytes freed.

pub mod config;
pub mod gc;
pub mod plan;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_nats::jetstream::kv;
use chrono::{DateTime, Utc};
use ferry_proto::subjects::{self, EventKind};
use ferry_proto::v1::{BackupUploaded, ExpiredBackup, KeptBackup, RetentionApplied, Stage};
use ferry_proto::{Message, reason};
use ferry_runtime::config::{SectionSpec, SourceConfig};
use ferry_runtime::lease::{self, Holder, Lease};
use ferry_runtime::process::{ReadinessNeeds, ServiceSpec};
use ferry_runtime::{ConsumerSpec, Deliver, Handler, HandlerError, JobContext, Outgoing, Runtime};
use ferry_storage::{Catalog, ObjectStore, StorageError};
use tokio_util::sync::CancellationToken;

use config::RetentionConfig;
pub use gc::{GcOptions, GcOutcome};
pub use plan::{BackupInfo, Decision, Plan, backups_of, plan};

/// What the retention worker declares to the process that runs it: its
/// `[retention]` section; its readiness needs the store, which it reads and prunes.
pub const SERVICE: ServiceSpec = ServiceSpec {
    name: "ferry-retention",
    sections: &[SectionSpec::of::<RetentionConfig>()],
    readiness: ReadinessNeeds { store: true },
};

/// The lease key that serialises garbage collection across replicas.
pub const GC_LEASE: &str = "retention-gc";

/// The lease key of one source's retention runs.
pub fn source_lease(source: &str) -> String {
    format!("retention.{source}")
}

/// The retention worker.
pub struct Retention {
    rt: Runtime,
    /// `[retention]`.
    config: Arc<RetentionConfig>,
    store: Arc<dyn ObjectStore>,
    locks: kv::Store,
    node: String,
}

/// What one retention run of a source did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceRun {
    /// The plan that was applied.
    pub plan: Plan,
    /// The garbage collection that followed, if one ran.
    pub gc: Option<GcOutcome>,
}

/// A run could not happen or failed.
#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    /// Another run holds the lease.
    #[error("{what} is already running ({holder}); try again when it ends")]
    Busy {
        /// What is running.
        what: String,
        /// Who holds the lease.
        holder: String,
    },
    /// The store failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// NATS (the lease bucket) failed.
    #[error("retention lease")]
    Lease(#[source] anyhow::Error),
    /// The uploaded backup's source is not in this worker's configuration.
    #[error(
        "source {0:?} is not configured on this retention worker; its backups are left untouched"
    )]
    UnknownSource(String),
}

/// The runner's view of a retention error: the only place retention chooses a
/// reason code and whether to retry. The message keeps every cause.
pub fn classify(e: &RetentionError) -> HandlerError {
    let message = ferry_runtime::error_chain(e);
    match e {
        RetentionError::Busy { .. } => HandlerError::retryable(reason::ALREADY_RUNNING, message)
            .retry_after(Duration::from_secs(5)),
        RetentionError::Storage(s) if !s.is_retryable() => {
            HandlerError::permanent(reason::STORAGE_ERROR, message)
        }
        RetentionError::Storage(_) => HandlerError::retryable(reason::STORAGE_ERROR, message),
        RetentionError::Lease(_) => HandlerError::retryable(reason::INTERNAL, message),
        RetentionError::UnknownSource(_) => {
            HandlerError::permanent(reason::UNKNOWN_SOURCE, message)
        }
    }
}

impl From<RetentionError> for HandlerError {
    fn from(e: RetentionError) -> Self {
        classify(&e)
    }
}

impl Retention {
    /// A retention worker on `store`, with its leases in `ferry-locks`.
    pub async fn new(rt: Runtime, store: Arc<dyn ObjectStore>) -> anyhow::Result<Self> {
        let locks = rt
            .jetstream
            .get_key_value(subjects::LOCKS_BUCKET)
            .await
            .map_err(|e| anyhow::anyhow!("opening the {} bucket: {e}", subjects::LOCKS_BUCKET))?;
        let node = ferry_runtime::host_name();
        let config = rt.config.section::<RetentionConfig>()?;
        Ok(Retention {
            rt,
            config,
            store,
            locks,
            node,
        })
    }

    /// The store this worker manages.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    async fn lease(&self, key: &str, job_id: &str) -> Result<Lease, RetentionError> {
        let holder = Holder {
            job_id: job_id.to_string(),
            node: self.node.clone(),
            since: Utc::now(),
        };
        let ttl = self.rt.config.leases.ttl;
        match lease::try_acquire(&self.locks, key, &holder, ttl).await {
            Ok(Ok(lease)) => Ok(lease),
            Ok(Err(other)) => Err(RetentionError::Busy {
                what: key.to_string(),
                holder: other
                    .map(|h| format!("job {} on {} since {}", h.job_id, h.node, h.since))
                    .unwrap_or_else(|| "another run".into()),
            }),
            Err(e) => Err(RetentionError::Lease(e)),
        }
    }

    /// Runs `work` while holding `source`'s retention lease, so no retention run of
    /// that source overlaps it.
    pub async fn with_source_lease<F, Fut, T>(
        &self,
        source: &str,
        job_id: &str,
        work: F,
    ) -> Result<T, RetentionError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = T>,
    {
        let lease = self.lease(&source_lease(source), job_id).await?;
        let result = work().await;
        lease.release().await;
        Ok(result)
    }

    /// Applies `source`'s policy as of `now` under its lease, then collects garbage
    /// if a backup was deleted (`collect = true` collects in any case). Collection
    /// always uses the wall clock: it compares with the store's modification times.
    pub async fn run_source(
        &self,
        source: &SourceConfig,
        job_id: &str,
        now: DateTime<Utc>,
        collect: bool,
    ) -> Result<SourceRun, RetentionError> {
        let lease = self.lease(&source_lease(&source.name), job_id).await?;
        let result = self.apply_policy(source, now).await;
        lease.release().await;
        let plan = result?;
        let gc = if collect || !plan.delete.is_empty() {
            self.collect(job_id, SystemTime::now()).await?
        } else {
            None
        };
        Ok(SourceRun { plan, gc })
    }

    async fn apply_policy(
        &self,
        source: &SourceConfig,
        now: DateTime<Utc>,
    ) -> Result<Plan, RetentionError> {
        let tz =
            ferry_runtime::schedule::parse_timezone(&source.timezone).unwrap_or(chrono_tz::Tz::UTC);
        let policy = self.config.policy_for(source);
        let catalog = Catalog::new(self.store.as_ref());
        let backups = backups_of(&catalog, &source.name).await?;
        let plan = plan(&backups, policy, tz, now);
        // Newest plan first, manifests only: their objects go with garbage
        // collection afterwards (see `gc`).
        for d in &plan.delete {
            catalog.delete(&source.name, &d.id).await?;
            tracing::info!(source = %source.name, backup_id = %d.id, rule = d.rule, "expired backup deleted");
        }
        self.expire_segments(&catalog, source, &plan).await?;
        Ok(plan)
    }

    /// Point-in-time records older than the consistent point of the oldest base
    /// backup a rule keeps: no restore can start before that backup, so the
    /// changes before it serve nothing. A keep mark keeps the marked backup
    /// itself (restorable to its own consistent point), not the changes after it:
    /// the window a marked backup opened goes with the rules' oldest backup.
    async fn expire_segments(
        &self,
        catalog: &Catalog<'_>,
        source: &SourceConfig,
        plan: &Plan,
    ) -> Result<(), RetentionError> {
        if source.mode == ferry_runtime::config::PostgresMode::Physical {
            return self.expire_wal(catalog, source, plan).await;
        }
        if source.engine != ferry_runtime::config::EngineKind::Mongodb {
            return Ok(());
        }
        let Some(oldest) = plan.keep.iter().rev().find(|d| d.rule != "keep_mark") else {
            return Ok(());
        };
        let manifest = match catalog.read(&source.name, &oldest.id).await {
            Ok(m) => m,
            // Deleted under us, or unreadable: keep every record this run.
            Err(e) => {
                tracing::warn!(source = %source.name, backup_id = %oldest.id, error = %e, "oldest kept backup unreadable; no point-in-time records expired");
                return Ok(());
            }
        };
        let Some(point) = manifest.mongodb.as_ref().map(|m| m.end_time) else {
            return Ok(());
        };
        let point = ferry_storage::pitr::ClusterTime::new(point.seconds, point.increment);
        let deleted = catalog.expire_pitr_records(&source.name, point).await?;
        if deleted > 0 {
            tracing::info!(source = %source.name, records = deleted, before = %point, "expired point-in-time records older than the oldest kept base backup");
        }
        Ok(())
    }

    /// WAL older than the start of the oldest kept base backup (a keep mark's
    /// included: a marked backup stays restorable), on its timeline and its
    /// ancestors: no kept backup's restore replays it. Runs after the expired
    /// manifests are deleted, so no listed backup ever lacks its WAL.
    async fn expire_wal(
        &self,
        catalog: &Catalog<'_>,
        source: &SourceConfig,
        plan: &Plan,
    ) -> Result<(), RetentionError> {
        let mut oldest: Option<ferry_storage::manifest::postgres::PhysicalManifest> = None;
        for kept in &plan.keep {
            let manifest = match catalog.read(&source.name, &kept.id).await {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(source = %source.name, backup_id = %kept.id, error = %e, "kept backup unreadable; no WAL expired");
                    return Ok(());
                }
            };
            let Some(p) = manifest.postgres.and_then(|p| p.physical) else {
                continue;
            };
            let start: Option<ferry_storage::wal::Lsn> = p.start_lsn.parse().ok();
            let older = match &oldest {
                None => true,
                Some(o) => start < o.start_lsn.parse().ok(),
            };
            if older {
                oldest = Some(p);
            }
        }
        let Some(oldest) = oldest else {
            return Ok(());
        };
        let Ok(start) = oldest.start_lsn.parse::<ferry_storage::wal::Lsn>() else {
            return Ok(());
        };
        let deleted = ferry_storage::wal::expire(
            catalog.store(),
            &source.name,
            oldest.timeline,
            start,
            oldest.wal_segment_size.max(1 << 20),
        )
        .await?;
        if deleted > 0 {
            tracing::info!(source = %source.name, files = deleted, before = %start, timeline = oldest.timeline, "expired WAL older than the oldest kept base backup");
        }
        Ok(())
    }

    /// Collects garbage under the collection lease; `None` when another replica is
    /// collecting (it, or the next run, frees what this one would have).
    pub async fn collect(
        &self,
        job_id: &str,
        now: SystemTime,
    ) -> Result<Option<GcOutcome>, RetentionError> {
        let lease = match self.lease(GC_LEASE, job_id).await {
            Ok(lease) => lease,
            Err(RetentionError::Busy { holder, .. }) => {
                tracing::info!(%holder, "garbage collection already running elsewhere; skipped");
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let options = GcOptions {
            grace: self.config.gc_grace,
            now,
            batch: self.config.delete_batch,
            max_candidates: gc::MAX_CANDIDATES,
        };
        let result = tokio::select! {
            r = gc::collect_garbage(self.store.as_ref(), options) => r,
            // Losing the lease means another replica may start collecting: stop.
            _ = lease.lost.cancelled() => Err(StorageError::Backend {
                op: "collect",
                key: GC_LEASE.into(),
                message: "lost the garbage-collection lease".into(),
                retryable: true,
            }),
        };
        lease.release().await;
        let outcome = result?;
        self.rt
            .metrics
            .add_bytes(ferry_runtime::metrics::ByteKind::Freed, outcome.bytes_freed);
        tracing::info!(
            objects_seen = outcome.objects_seen,
            manifests_read = outcome.manifests_read,
            objects_deleted = outcome.objects_deleted,
            bytes_freed = outcome.bytes_freed,
            skipped = outcome.skipped.as_deref().unwrap_or(""),
            "garbage collection done"
        );
        Ok(Some(outcome))
    }

    /// Applies every active source's policy once, then collects garbage once.
    /// Paused sources are left alone: an operator who paused a source is looking at
    /// it. Returns the events to publish (sources where something was deleted).
    pub async fn sweep(&self, now: DateTime<Utc>) -> Vec<RetentionApplied> {
        let job_id = format!("sweep-{}", now.format("%Y%m%dT%H%M%SZ"));
        let mut events = Vec::new();
        for registered in self.rt.sources.all() {
            if registered.paused {
                continue;
            }
            let source = &registered.config;
            match self.run_source(source, &job_id, now, false).await {
                Ok(run) if !run.plan.delete.is_empty() => {
                    events.push(applied_event(&job_id, &source.name, &run));
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(source = %source.name, error = %e, "retention sweep skipped the source")
                }
            }
        }
        if let Err(e) = self.collect(&job_id, SystemTime::now()).await {
            tracing::warn!(error = %e, "garbage collection in the sweep failed; the next run retries");
        }
        events
    }
}

/// The `RetentionApplied` event of one run.
pub fn applied_event(job_id: &str, source: &str, run: &SourceRun) -> RetentionApplied {
    let gc = run.gc.clone().unwrap_or_default();
    RetentionApplied {
        job_id: job_id.to_string(),
        source: source.to_string(),
        occurred_at: Some(ferry_proto::now()),
        kept: run
            .plan
            .keep
            .iter()
            .map(|d| KeptBackup {
                backup_id: d.id.clone(),
                rule: d.rule.into(),
            })
            .collect(),
        deleted: run
            .plan
            .delete
            .iter()
            .map(|d| ExpiredBackup {
                backup_id: d.id.clone(),
                rule: d.rule.into(),
            })
            .collect(),
        objects_deleted: gc.objects_deleted,
        bytes_freed: gc.bytes_freed,
    }
}

fn outgoing(event: &RetentionApplied) -> Outgoing {
    Outgoing::event(
        EventKind::Retention,
        &event.source,
        event,
        ferry_runtime::msg_id::retention(&event.job_id, &event.source),
    )
}

/// Runs the retention worker until `shutdown`: the trigger after each upload and
/// the periodic sweep.
pub async fn run(rt: Runtime, shutdown: CancellationToken) -> anyhow::Result<()> {
    let store = ferry_runtime::store::open(&rt.config.storage)?;
    let retention = Arc::new(Retention::new(rt.clone(), store).await?);
    // One group: a sweep that panics stops the worker (and the process) rather
    // than leave it triggered by uploads only.
    let mut tasks = ferry_runtime::Tasks::new(&shutdown);
    tasks.spawn(
        "retention sweep",
        sweep_loop(retention.clone(), tasks.shutdown()),
    );
    // Runs of different sources may go side by side; the leases keep each source
    // (and garbage collection) to one run at a time.
    let group = tasks.shutdown();
    tasks.spawn("retention", async move {
        Ok(rt.run_handler(retention, 4, group).await?)
    });
    Ok(tasks.join().await?)
}

async fn sweep_loop(retention: Arc<Retention>, shutdown: CancellationToken) -> anyhow::Result<()> {
    let every = retention.config.sweep_interval;
    if every.is_zero() {
        shutdown.cancelled().await;
        return Ok(());
    }
    // The sweep is a job no message started: its events go out through a context
    // of its own, with the same trace context and message ids as a handler's.
    let ctx = JobContext::detached(retention.rt.publisher.clone(), shutdown.clone());
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    // The first tick is immediate: a worker that starts catches up at once.
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = ticks.tick() => {}
        }
        let events = retention.sweep(Utc::now()).await;
        for event in &events {
            if let Err(e) = ctx.emit(&outgoing(event)).await {
                tracing::warn!(source = %event.source, error = %ferry_runtime::error_chain(&e), "could not publish RetentionApplied");
            }
        }
    }
}

impl Handler for Retention {
    type Input = BackupUploaded;
    const STAGE: Stage = Stage::Retention;

    fn consumer(&self) -> ConsumerSpec {
        ConsumerSpec {
            stream: subjects::EVENTS_STREAM,
            durable: "ferry-retention".into(),
            filters: vec![EventKind::Uploaded.filter()],
            deliver: Deliver::All,
            ack_wait: Duration::from_secs(120),
            max_deliver: 20,
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
        let source = self
            .rt
            .sources
            .get(&uploaded.source)
            .ok_or_else(|| classify(&RetentionError::UnknownSource(uploaded.source.clone())))?;
        let run = self
            .run_source(&source, &uploaded.job_id, Utc::now(), false)
            .await?;
        let event = applied_event(&uploaded.job_id, &uploaded.source, &run);
        tracing::info!(
            kept = event.kept.len(),
            deleted = event.deleted.len(),
            objects_deleted = event.objects_deleted,
            bytes_freed = event.bytes_freed,
            "retention applied"
        );
        Ok(vec![outgoing(&event)])
    }
}
