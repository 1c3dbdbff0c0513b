//! The uploader: on `DumpCompleted`, stores every spool file as a content-addressed
//! object (skipping content already stored), writes the manifest last, removes the
//! spool files and publishes `BackupUploaded`.
//!
//! Idempotent on `job_id`: when the manifest already exists, the job is done and the
//! event is re-announced from it.

mod details;
mod hashing;

use std::sync::Arc;
use std::time::Duration;

use ferry_proto::subjects::{self, EventKind};
use ferry_proto::v1::{BackupUploaded, DumpCompleted, Engine, Stage};
use ferry_proto::{Message, reason};
use ferry_runtime::{ConsumerSpec, Handler, HandlerError, JobContext, Outgoing, Runtime};
use ferry_storage::layout::{manifest_key, object_key};
use ferry_storage::spool::DirSpool;
use ferry_storage::{Manifest, ManifestFile, ObjectStore, StorageError, get_bytes};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use hashing::HashingReader;

/// The uploader's handler.
pub struct Uploader {
    spool: DirSpool,
    store: Arc<dyn ObjectStore>,
}

impl Uploader {
    /// An uploader reading the spool and writing `store`.
    pub fn new(spool: DirSpool, store: Arc<dyn ObjectStore>) -> Self {
        Uploader { spool, store }
    }
}

/// Runs the uploader until `shutdown`.
pub async fn run(rt: Runtime, shutdown: CancellationToken) -> anyhow::Result<()> {
    let spool = DirSpool::new(&rt.config.spool.path).map_err(|e| {
        anyhow::anyhow!(
            "failed to open the spool {} (spool.path): {e}",
            rt.config.spool.path.display()
        )
    })?;
    let handler = Arc::new(Uploader::new(
        spool,
        ferry_runtime::store::open(&rt.config.storage)?,
    ));
    rt.run_handler(handler, rt.config.uploader.concurrency, shutdown)
        .await?;
    Ok(())
}

fn storage_error(err: StorageError) -> HandlerError {
    if err.is_retryable() {
        HandlerError::retryable(reason::STORAGE_ERROR, err.to_string())
    } else {
        HandlerError::permanent(reason::STORAGE_ERROR, err.to_string())
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
            ack_wait: Duration::from_secs(60),
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
        if self
            .store
            .head(&key)
            .await
            .map_err(storage_error)?
            .is_some()
        {
            tracing::info!(manifest = %key, "backup already committed by an earlier delivery");
            let manifest = self.read_manifest(&key).await?;
            self.clean_spool(&dump.job_id).await;
            return Ok(vec![uploaded_event(&dump, &manifest, &key)]);
        }

        let job_dir = self
            .spool
            .job_dir(&dump.job_id)
            .map_err(|e| HandlerError::permanent(reason::MALFORMED_MESSAGE, e.to_string()))?;
        if !tokio::fs::try_exists(&job_dir).await.unwrap_or(false) {
            let location = dump
                .spool
                .as_ref()
                .map(|s| format!("{} on node {}", s.path, s.node))
                .unwrap_or_default();
            return Err(HandlerError::permanent(
                reason::SPOOL_MISSING,
                format!(
                    "the dump files of job {} ({location}) are not in this uploader's spool {}: run the uploader where it can see the dumper's spool directory",
                    dump.job_id,
                    self.spool.root().display()
                ),
            ));
        }

        let mut files = Vec::with_capacity(dump.files.len());
        for file in &dump.files {
            let object = object_key(&file.sha256);
            let reused = match self.store.head(&object).await.map_err(storage_error)? {
                Some(meta) if meta.size == file.size => true,
                _ => {
                    self.upload(&job_dir.join(&file.name), &object, &file.sha256)
                        .instrument(tracing::info_span!("upload_object", file.name = %file.name, file.size = file.size))
                        .await?;
                    false
                }
            };
            files.push(ManifestFile {
                name: file.name.clone(),
                object,
                size: file.size,
                sha256: file.sha256.clone(),
                compression: file.compression.clone(),
                reused,
            });
        }

        let bytes_total: u64 = files.iter().map(|f| f.size).sum();
        let bytes_reused: u64 = files.iter().filter(|f| f.reused).map(|f| f.size).sum();
        let started_at = dump
            .started_at
            .as_ref()
            .and_then(ferry_proto::from_timestamp)
            .unwrap_or_else(chrono::Utc::now);
        let manifest = Manifest {
            format: ferry_storage::manifest::FORMAT_VERSION,
            backup_id: dump.backup_id.clone(),
            source: dump.source.clone(),
            engine: Engine::try_from(dump.engine)
                .unwrap_or(Engine::Unspecified)
                .name()
                .into(),
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
            mongodb: dump.mongodb.as_ref().map(details::mongo_manifest),
        };
        // The commit point: written last, and only if no earlier attempt wrote it.
        let created = self
            .store
            .put_if_absent(&key, manifest.to_json().into())
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
}

impl Uploader {
    /// Streams one spool file into the store, checking its SHA-256 on the way: a
    /// file changed or damaged since the dump is never stored under the wrong key.
    async fn upload(
        &self,
        path: &std::path::Path,
        object: &str,
        expected_sha256: &str,
    ) -> Result<(), HandlerError> {
        let file = tokio::fs::File::open(path).await.map_err(|e| {
            HandlerError::permanent(
                reason::SPOOL_MISSING,
                format!("cannot open spool file {}: {e}", path.display()),
            )
        })?;
        let (reader, digest) =
            HashingReader::new(tokio::io::BufReader::with_capacity(256 * 1024, file));
        self.store
            .put(object, Box::new(reader))
            .await
            .map_err(storage_error)?;
        let actual = digest.hex();
        if actual != expected_sha256 {
            let _ = self.store.delete(object).await;
            return Err(HandlerError::permanent(
                reason::CHECKSUM_MISMATCH,
                format!(
                    "spool file {} has SHA-256 {actual} but the dumper recorded {expected_sha256}: the spool was modified or is damaged; run the backup again",
                    path.display()
                ),
            ));
        }
        Ok(())
    }

    async fn read_manifest(&self, key: &str) -> Result<Manifest, HandlerError> {
        let bytes = get_bytes(self.store.as_ref(), key)
            .await
            .map_err(storage_error)?;
        Manifest::from_json(&bytes)
            .map_err(|e| HandlerError::permanent(reason::STORAGE_ERROR, format!("{key}: {e}")))
    }

    async fn clean_spool(&self, job_id: &str) {
        if let Ok(dir) = self.spool.job_dir(job_id) {
            let _ = tokio::fs::remove_dir_all(&dir).await;
            let _ = tokio::fs::remove_file(dir.with_extension("completed")).await;
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
