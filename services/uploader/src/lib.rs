//! The uploader: stores spool files as content-addressed objects (skipping content
//! already stored), writes the manifest last, removes the spool files and publishes
//! `BackupUploaded`.
//!
//! It starts on `DumpFileReady`, so files upload while the dumper is still dumping
//! the next ones; `DumpCompleted` waits for what is still in flight, uploads what no
//! `DumpFileReady` covered, and commits. Idempotent on `job_id`: when the manifest
//! already exists, the job is done and the event is re-announced from it.

mod jobs;
pub mod transfer;

use std::sync::Arc;
use std::time::Duration;

use ferry_proto::subjects::{self, EventKind};
use ferry_proto::v1::{BackupUploaded, DumpCompleted, DumpFileReady, Stage};
use ferry_proto::{Message, reason};
use ferry_runtime::{ConsumerSpec, Handler, HandlerError, JobContext, Outgoing, Runtime};
use ferry_storage::layout::{manifest_key, object_key};
use ferry_storage::retry::RetryPolicy;
use ferry_storage::{Catalog, CatalogError, Compression, Manifest, ManifestFile};
use futures::{StreamExt, TryStreamExt};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use jobs::Jobs;
use transfer::{FileRef, Transfer, storage_error};

/// Files of one job uploaded at once when `DumpCompleted` finds several missing.
const FILES_AT_ONCE: usize = 4;

/// The uploader's `DumpCompleted` handler: the commit.
pub struct Uploader {
    transfer: Transfer,
    jobs: Jobs,
    ack_wait: Duration,
}

/// The uploader's `DumpFileReady` handler: the early start.
pub struct FileUploader {
    transfer: Transfer,
    jobs: Jobs,
    ack_wait: Duration,
}

impl Uploader {
    /// An uploader moving files with `transfer`, sharing `jobs` with its
    /// [`FileUploader`]; a job silent for `ack_wait` is redelivered.
    pub fn new(transfer: Transfer, jobs: Jobs, ack_wait: Duration) -> Self {
        Uploader {
            transfer,
            jobs,
            ack_wait,
        }
    }
}

impl FileUploader {
    /// A handler for `DumpFileReady`, sharing `jobs` with the [`Uploader`].
    pub fn new(transfer: Transfer, jobs: Jobs, ack_wait: Duration) -> Self {
        FileUploader {
            transfer,
            jobs,
            ack_wait,
        }
    }
}

/// The transfer `[uploader]`, `[storage]` and `[spool]` describe.
pub async fn transfer_from(rt: &Runtime) -> anyhow::Result<Transfer> {
    let config = &rt.config;
    let store = ferry_runtime::store::open(&config.storage)?;
    let spool =
        ferry_runtime::store::open_spool(&config.spool, &rt.jetstream, config.nats.replicas)
            .await?;
    Ok(Transfer::new(
        store,
        spool,
        config.uploader.part_size.0,
        config.uploader.parts_in_flight,
        RetryPolicy {
            attempts: config.uploader.retry_attempts,
            ..RetryPolicy::default()
        },
    ))
}

/// Runs the uploader until `shutdown`.
pub async fn run(rt: Runtime, shutdown: CancellationToken) -> anyhow::Result<()> {
    let transfer = transfer_from(&rt).await?;
    let jobs = Jobs::default();
    let ack_wait = rt.config.uploader.ack_wait;
    let commit = Arc::new(Uploader::new(transfer.clone(), jobs.clone(), ack_wait));
    let early = Arc::new(FileUploader::new(transfer, jobs, ack_wait));
    let concurrency = rt.config.uploader.concurrency;
    let (a, b) = tokio::join!(
        rt.run_handler(commit, concurrency, shutdown.clone()),
        rt.run_handler(early, concurrency, shutdown)
    );
    a?;
    b?;
    Ok(())
}

impl Handler for FileUploader {
    type Input = DumpFileReady;
    const STAGE: Stage = Stage::Uploader;

    fn consumer(&self) -> ConsumerSpec {
        ConsumerSpec {
            stream: subjects::EVENTS_STREAM,
            durable: "ferry-uploader-files".into(),
            filter: EventKind::FileReady.filter(),
            ack_wait: self.ack_wait,
            max_deliver: 3,
        }
    }

    fn decode(
        &self,
        _subject: &str,
        payload: &[u8],
    ) -> Result<Option<DumpFileReady>, prost::DecodeError> {
        DumpFileReady::decode(payload).map(Some)
    }

    async fn handle(
        &self,
        ready: DumpFileReady,
        _ctx: JobContext,
    ) -> Result<Vec<Outgoing>, HandlerError> {
        let Some(file) = ready.file.as_ref() else {
            return Ok(vec![]);
        };
        // An early start only: whatever goes wrong here, `DumpCompleted` uploads the
        // file again and reports a failure there, once, for the whole job.
        match self
            .transfer
            .spool
            .has_file(&ready.job_id, &file.name)
            .await
        {
            Ok(true) => {}
            _ => return Ok(vec![]),
        }
        let file_ref = FileRef {
            job_id: &ready.job_id,
            name: &file.name,
            size: file.size,
            sha256: &file.sha256,
        };
        if let Err(err) = self
            .jobs
            .ensure(&self.transfer, &file_ref)
            .instrument(
                tracing::info_span!("upload_object", file.name = %file.name, file.size = file.size),
            )
            .await
        {
            tracing::warn!(file = %file.name, error = %err, "early upload failed; the commit retries it");
        }
        Ok(vec![])
    }
}

impl Handler for Uploader {
    type Input = DumpCompleted;
    const STAGE: Stage = Stage::Uploader;

    fn consumer(&self) -> ConsumerSpec {
        ConsumerSpec {
            stream: subjects::EVENTS_STREAM,
            durable: "ferry-uploader".into(),
            filter: EventKind::Dumped.filter(),
            ack_wait: self.ack_wait,
            max_deliver: 6,
        }
    }

    fn decode(
        &self,
        _subject: &str,
        payload: &[u8],
    ) -> Result<Option<DumpCompleted>, prost::DecodeError> {
        DumpCompleted::decode(payload).map(Some)
    }

    async fn handle(
        &self,
        dump: DumpCompleted,
        _ctx: JobContext,
    ) -> Result<Vec<Outgoing>, HandlerError> {
        // The job's deadline, set by the scheduler from the source's timeout, holds
        // here too: an upload past it stops and the job ends as `timeout`.
        let timeout = || {
            HandlerError::permanent(
                reason::TIMEOUT,
                format!(
                    "the backup of {} ran past its deadline while uploading; raise the source's timeout or check the store's speed",
                    dump.source
                ),
            )
        };
        let remaining = match dump.deadline.as_ref().and_then(ferry_proto::from_timestamp) {
            Some(deadline) => (deadline - chrono::Utc::now()).to_std().unwrap_or_default(),
            None => return self.store_backup(dump).await,
        };
        if remaining.is_zero() {
            return Err(timeout());
        }
        tokio::time::timeout(remaining, self.store_backup(dump.clone()))
            .await
            .unwrap_or_else(|_| Err(timeout()))
    }
}

impl Uploader {
    /// Stores the files, then commits the manifest.
    async fn store_backup(&self, dump: DumpCompleted) -> Result<Vec<Outgoing>, HandlerError> {
        let key = manifest_key(&dump.source, &dump.backup_id);
        let store = &self.transfer.store;
        let catalog = Catalog::new(store.as_ref());
        let existing = self
            .transfer
            .retry
            .run("head", || catalog.exists(&dump.source, &dump.backup_id))
            .await
            .map_err(storage_error)?;
        if existing {
            tracing::info!(manifest = %key, "backup already committed by an earlier delivery");
            let manifest = self.read_manifest(&key).await?;
            self.clean_spool(&dump.job_id).await;
            return Ok(vec![uploaded_event(&dump, &manifest, &key)]);
        }

        let spool = &self.transfer.spool;
        let visible = match dump.files.first() {
            Some(first) => spool
                .has_file(&dump.job_id, &first.name)
                .await
                .unwrap_or(false),
            None => true,
        };
        if !visible {
            let location = dump
                .spool
                .as_ref()
                .map(|s| format!("{} on node {}", s.path, s.node))
                .unwrap_or_default();
            return Err(HandlerError::permanent(
                reason::SPOOL_MISSING,
                format!(
                    "the dump files of job {} ({location}) are not in this uploader's spool {}: run the uploader where it can see the dumper's spool",
                    dump.job_id,
                    spool.describe()
                ),
            ));
        }

        // Files already uploaded on DumpFileReady are found in `jobs`; the rest go
        // now, a few at a time, in dump order in the manifest.
        let files: Vec<ManifestFile> = futures::stream::iter(dump.files.clone())
            .map(|file| self.store_file(dump.job_id.clone(), file))
            .buffered(FILES_AT_ONCE)
            .try_collect()
            .await?;

        // Every object the manifest names must exist before it is written.
        for file in &files {
            let found = self
                .transfer
                .retry
                .run("head", || store.head(&file.object))
                .await
                .map_err(storage_error)?;
            if found.map(|m| m.size) != Some(file.size) {
                return Err(HandlerError::retryable(
                    reason::STORAGE_ERROR,
                    format!(
                        "object {} of {} is missing from the store after its upload; the backup is not committed",
                        file.object, file.name
                    ),
                ));
            }
        }

        let bytes_total: u64 = files.iter().map(|f| f.size).sum();
        let bytes_reused: u64 = files.iter().filter(|f| f.reused).map(|f| f.size).sum();
        let started_at = dump
            .started_at
            .as_ref()
            .and_then(ferry_proto::from_timestamp)
            .unwrap_or_else(chrono::Utc::now);
        let engine = ferry_storage::Engine::from_proto(dump.engine).ok_or_else(|| {
            HandlerError::permanent(
                reason::MALFORMED_MESSAGE,
                format!(
                    "DumpCompleted of job {} names no known engine ({}); the dumper and uploader disagree on the contract: upgrade them together",
                    dump.job_id, dump.engine
                ),
            )
        })?;
        let manifest = Manifest {
            format: ferry_storage::manifest::FORMAT_VERSION,
            backup_id: dump.backup_id.clone(),
            source: dump.source.clone(),
            engine,
            job_id: dump.job_id.clone(),
            server_version: dump.server_version.clone(),
            tool_version: dump.tool_version.clone(),
            started_at,
            completed_at: chrono::Utc::now(),
            databases: dump.databases.clone(),
            files,
            bytes_total,
            bytes_uploaded: bytes_total - bytes_reused,
            bytes_reused,
            trace_id: ferry_telemetry::current_trace_id(),
            postgres: dump.postgres.as_ref().map(Into::into),
            mongodb: dump.mongodb.as_ref().map(Into::into),
        };
        // The commit point: written last, and only if no earlier attempt wrote it.
        let created = self
            .transfer
            .retry
            .run("write manifest", || catalog.commit(&manifest))
            .instrument(tracing::info_span!("write_manifest", manifest = %key))
            .await
            .map_err(storage_error)?;
        let manifest = if created {
            manifest
        } else {
            self.read_manifest(&key).await?
        };
        if created {
            ferry_runtime::metrics::count_upload(manifest.bytes_uploaded, manifest.bytes_reused);
        }
        self.clean_spool(&dump.job_id).await;
        tracing::info!(
            manifest = %key,
            bytes_total = manifest.bytes_total,
            bytes_uploaded = manifest.bytes_uploaded,
            bytes_reused = manifest.bytes_reused,
            "backup committed"
        );
        Ok(vec![uploaded_event(&dump, &manifest, &key)])
    }

    async fn store_file(
        &self,
        job_id: String,
        file: ferry_proto::v1::DumpFile,
    ) -> Result<ManifestFile, HandlerError> {
        let file_ref = FileRef {
            job_id: &job_id,
            name: &file.name,
            size: file.size,
            sha256: &file.sha256,
        };
        let reused = self
            .jobs
            .ensure(&self.transfer, &file_ref)
            .instrument(
                tracing::info_span!("upload_object", file.name = %file.name, file.size = file.size),
            )
            .await?;
        let compression = Compression::parse(&file.compression).map_err(|e| {
            HandlerError::permanent(reason::MALFORMED_MESSAGE, format!("{}: {e}", file.name))
        })?;
        Ok(ManifestFile {
            object: object_key(&file.sha256),
            name: file.name,
            size: file.size,
            sha256: file.sha256,
            compression,
            reused,
        })
    }

    async fn read_manifest(&self, key: &str) -> Result<Manifest, HandlerError> {
        match Catalog::new(self.transfer.store.as_ref())
            .read_key(key)
            .await
        {
            Ok(Some(m)) => Ok(m),
            Ok(None) => Err(HandlerError::retryable(
                reason::STORAGE_ERROR,
                format!("manifest {key} vanished right after it was written; retrying"),
            )),
            Err(CatalogError::Storage(e)) => Err(storage_error(e)),
            Err(e) => Err(HandlerError::permanent(
                reason::STORAGE_ERROR,
                e.to_string(),
            )),
        }
    }

    async fn clean_spool(&self, job_id: &str) {
        self.jobs.forget(job_id);
        if let Err(e) = self.transfer.spool.remove_job(job_id).await {
            tracing::warn!(job_id, error = %e, "could not remove the job's spool files");
        }
    }
}

fn uploaded_event(dump: &DumpCompleted, manifest: &Manifest, key: &str) -> Outgoing {
    let duration = (manifest.completed_at - manifest.started_at)
        .num_milliseconds()
        .max(0) as u64;
    let event = BackupUploaded {
        job_id: dump.job_id.clone(),
        source: dump.source.clone(),
        occurred_at: Some(ferry_proto::now()),
        backup_id: manifest.backup_id.clone(),
        engine: dump.engine,
        manifest_key: key.to_string(),
        files: manifest.files.len() as u64,
        bytes_total: manifest.bytes_total,
        bytes_uploaded: manifest.bytes_uploaded,
        bytes_reused: manifest.bytes_reused,
        duration_ms: duration,
        databases: manifest.databases.clone(),
    };
    Outgoing::event(
        EventKind::Uploaded,
        &dump.source,
        &event,
        format!("{}/uploaded", dump.job_id),
    )
}
