//! The uploader: stores spool files as content-addressed objects (skipping content
//! already stored), writes the manifest last, removes the spool files and publishes
//! `BackupUploaded`.
//!
//! It starts on `DumpFileReady`, so files upload while the dumper is still dumping
//! the next ones; `DumpCompleted` waits for what is still in flight, uploads what no
//! `DumpFileReady` covered, and commits. Which files a job uploaded or reused is
//! kept in NATS ([`Jobs`]), so the two events may reach different replicas.
//! Idempotent on `job_id`: when the manifest already exists, the job is done and
//! the event is re-announced from it. A job that fails for good is cleaned up by
//! the [`janitor`].

pub mod config;
pub mod errors;
pub mod janitor;
mod jobs;
pub mod transfer;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ferry_proto::Message;
use ferry_proto::subjects::{self, EventKind};
use ferry_proto::v1::{BackupUploaded, DumpCompleted, DumpFileReady, Stage};
use ferry_runtime::config::SectionSpec;
use ferry_runtime::jobstate::JobState;
use ferry_runtime::process::{ReadinessNeeds, ServiceSpec};
use ferry_runtime::{ConsumerSpec, Deliver, Handler, HandlerError, JobContext, Outgoing, Runtime};
use ferry_storage::layout::manifest_key;
use ferry_storage::retry::RetryPolicy;
use ferry_storage::{Catalog, CatalogError, Compression, Manifest, ManifestFile, Stored};
use futures::{StreamExt, TryStreamExt};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use config::UploaderConfig;
pub use errors::{UploadError, classify};
pub use jobs::Jobs;
use transfer::{FileRef, Transfer};

/// What the uploader declares to the process that runs it: its `[uploader]`
/// section; its readiness needs the store, which it writes.
pub const SERVICE: ServiceSpec = ServiceSpec {
    name: "ferry-uploader",
    sections: &[SectionSpec::of::<UploaderConfig>()],
    readiness: ReadinessNeeds { store: true },
};

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
    let uploader = config.section::<UploaderConfig>()?;
    let store = ferry_runtime::store::open(&config.storage)?;
    // Before anything is written: bad keys stop the process, and a store that is
    // encrypted refuses a writer that is not (each error names the key to fix).
    let sealer = config.encryption.sealer()?.map(Arc::new);
    // A store that is unavailable at start-up is waited for (each attempt logged),
    // not a reason to stop: the check must pass before anything is written.
    let until_answered = RetryPolicy {
        attempts: u32::MAX,
        max: Duration::from_secs(1),
        ..RetryPolicy::default()
    };
    ferry_storage::encryption::check_store(store.as_ref(), sealer.as_deref(), &until_answered)
        .await?;
    let retry = RetryPolicy {
        attempts: uploader.retry_attempts,
        ..RetryPolicy::default()
    };
    let spool =
        ferry_runtime::store::open_spool(&config.spool, &rt.jetstream, config.nats.replicas)
            .await?;
    Ok(Transfer::new(
        store,
        spool,
        uploader.part_size.0,
        uploader.parts_in_flight,
        retry,
    )
    .with_sealer(sealer))
}

/// Runs the uploader until `shutdown`.
pub async fn run(rt: Runtime, shutdown: CancellationToken) -> anyhow::Result<()> {
    let transfer = transfer_from(&rt).await?;
    let state = JobState::open(&rt.jetstream).await?;
    let jobs = Jobs::new(state.clone());
    let config = rt.config.section::<UploaderConfig>()?;
    let ack_wait = config.ack_wait;
    let node = rt
        .config
        .spool
        .node
        .clone()
        .unwrap_or_else(ferry_runtime::host_name);
    let janitor = Arc::new(janitor::Janitor::new(
        transfer.spool.clone(),
        state,
        node,
        ack_wait,
    ));
    let commit = Arc::new(Uploader::new(transfer.clone(), jobs.clone(), ack_wait));
    let early = Arc::new(FileUploader::new(transfer, jobs, ack_wait));
    let concurrency = config.concurrency;
    // One group: a consumer that fails or panics stops the others, and the process.
    let mut tasks = ferry_runtime::Tasks::new(&shutdown);
    let (rt_commit, group) = (rt.clone(), tasks.shutdown());
    tasks.spawn("uploader", async move {
        Ok(rt_commit.run_handler(commit, concurrency, group).await?)
    });
    let (rt_early, group) = (rt.clone(), tasks.shutdown());
    tasks.spawn("uploader early files", async move {
        Ok(rt_early.run_handler(early, concurrency, group).await?)
    });
    let group = tasks.shutdown();
    // Removals are small and idempotent: one at a time is enough.
    tasks.spawn("uploader spool janitor", async move {
        Ok(rt.run_handler(janitor, 1, group).await?)
    });
    Ok(tasks.join().await?)
}

impl Handler for FileUploader {
    type Input = DumpFileReady;
    const STAGE: Stage = Stage::Uploader;

    fn consumer(&self) -> ConsumerSpec {
        ConsumerSpec {
            stream: subjects::EVENTS_STREAM,
            durable: "ferry-uploader-files".into(),
            filters: vec![EventKind::FileReady.filter()],
            deliver: Deliver::All,
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
            filters: vec![EventKind::Dumped.filter()],
            deliver: Deliver::All,
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
        let timeout = || UploadError::Timeout {
            source_name: dump.source.clone(),
        };
        let remaining = match dump.deadline.as_ref().and_then(ferry_proto::from_timestamp) {
            Some(deadline) => (deadline - chrono::Utc::now()).to_std().unwrap_or_default(),
            None => return Ok(self.store_backup(dump).await?),
        };
        if remaining.is_zero() {
            return Err(timeout().into());
        }
        let stored = tokio::time::timeout(remaining, self.store_backup(dump.clone()))
            .await
            .unwrap_or_else(|_| Err(timeout()));
        Ok(stored?)
    }
}

impl Uploader {
    /// Stores the files, then commits the manifest.
    async fn store_backup(&self, dump: DumpCompleted) -> Result<Vec<Outgoing>, UploadError> {
        let key = manifest_key(&dump.source, &dump.backup_id);
        let store = &self.transfer.store;
        let catalog = Catalog::new(store.as_ref());
        let existing = self
            .transfer
            .retry
            .run("head", || catalog.exists(&dump.source, &dump.backup_id))
            .await?;
        if existing {
            tracing::info!(manifest = %key, "backup already committed by an earlier delivery");
            let manifest = self.read_manifest(&key).await?;
            self.finish(&dump).await;
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
            return Err(UploadError::SpoolMissing {
                job_id: dump.job_id.clone(),
                location,
                spool: spool.describe(),
            });
        }

        // Files already uploaded on DumpFileReady are found in `jobs`; the rest go
        // now, a few at a time, in dump order in the manifest.
        let known = self.known_digests(&dump.source).await;
        let files: Vec<ManifestFile> = futures::stream::iter(dump.files.clone())
            .map(|file| self.store_file(dump.job_id.clone(), file, &known))
            .buffered(FILES_AT_ONCE)
            .try_collect()
            .await?;

        // Every object the manifest names must exist before it is written.
        for file in &files {
            if !self
                .transfer
                .is_stored_as(&file.object, file.stored_size())
                .await?
            {
                return Err(UploadError::MissingAfterUpload {
                    object: file.object.clone(),
                    name: file.name.clone(),
                });
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
            UploadError::Malformed(format!(
                "DumpCompleted of job {} names no known engine ({}); the dumper and uploader disagree on the contract: upgrade them together",
                dump.job_id, dump.engine
            ))
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
            locked: false,
        };
        // The commit point: written last, and only if no earlier attempt wrote it.
        let catalog = catalog.with_sealer(self.transfer.sealer());
        let created = self
            .transfer
            .retry
            .run("write manifest", || catalog.commit(&manifest))
            .instrument(tracing::info_span!("write_manifest", manifest = %key))
            .await?;
        let manifest = if created {
            manifest
        } else {
            self.read_manifest(&key).await?
        };
        if created {
            ferry_runtime::metrics::count_upload(manifest.bytes_uploaded, manifest.bytes_reused);
        }
        self.finish(&dump).await;
        tracing::info!(
            manifest = %key,
            bytes_total = manifest.bytes_total,
            bytes_uploaded = manifest.bytes_uploaded,
            bytes_reused = manifest.bytes_reused,
            "backup committed"
        );
        Ok(vec![uploaded_event(&dump, &manifest, &key)])
    }

    /// With encryption on: the stored size and SHA-256 of the objects the source's
    /// newest backup names, read from its envelope (no key needed). A reused
    /// object's digest comes from here, so an unchanged database's next backup
    /// reads nothing back. Empty when encryption is off or nothing is found.
    async fn known_digests(&self, source: &str) -> HashMap<String, Stored> {
        if self.transfer.sealer().is_none() {
            return HashMap::new();
        }
        let catalog = Catalog::new(self.transfer.store.as_ref());
        let latest = match catalog.latest(source).await {
            Ok(Some(entry)) => catalog.read(source, &entry.id).await,
            Ok(None) => return HashMap::new(),
            Err(e) => Err(e.into()),
        };
        match latest {
            Ok(m) => m
                .files
                .into_iter()
                .filter_map(|f| f.stored.map(|s| (f.object, s)))
                .collect(),
            Err(e) => {
                tracing::warn!(source, error = %e, "cannot read the newest backup's envelope; reused objects are read back to learn their digests");
                HashMap::new()
            }
        }
    }

    async fn store_file(
        &self,
        job_id: String,
        file: ferry_proto::v1::DumpFile,
        known: &HashMap<String, Stored>,
    ) -> Result<ManifestFile, UploadError> {
        let file_ref = FileRef {
            job_id: &job_id,
            name: &file.name,
            size: file.size,
            sha256: &file.sha256,
        };
        let settled = self
            .jobs
            .ensure(&self.transfer, &file_ref)
            .instrument(
                tracing::info_span!("upload_object", file.name = %file.name, file.size = file.size),
            )
            .await?;
        let compression = Compression::parse(&file.compression)
            .map_err(|e| UploadError::Malformed(format!("{}: {e}", file.name)))?;
        let object = self.transfer.object_for(&file.sha256);
        // Encrypted: the manifest records the ciphertext as stored, for `ferry
        // verify` without keys. This process uploaded it, or the newest backup
        // names it, or (another replica uploaded it, another source shares it) it
        // is read back once.
        let stored = match (self.transfer.sealer(), settled.stored) {
            (None, _) => None,
            (Some(_), Some(stored)) => Some(stored),
            (Some(_), None) => Some(match known.get(&object) {
                Some(stored) => stored.clone(),
                None => self.transfer.stored_digest(&object).await?,
            }),
        };
        Ok(ManifestFile {
            object,
            name: file.name,
            size: file.size,
            sha256: file.sha256,
            compression,
            reused: settled.reused,
            stored,
        })
    }

    async fn read_manifest(&self, key: &str) -> Result<Manifest, UploadError> {
        match Catalog::new(self.transfer.store.as_ref())
            .read_key(key)
            .await
        {
            Ok(Some(m)) => Ok(m),
            Ok(None) => Err(UploadError::ManifestVanished {
                key: key.to_string(),
            }),
            Err(CatalogError::Storage(e)) => Err(e.into()),
            Err(e) => Err(UploadError::ManifestUnreadable {
                key: key.to_string(),
                message: e.to_string(),
            }),
        }
    }

    /// Ends a committed job: its spool files go, then its record says committed
    /// (and its file claims go). Failures only cost spool space or a record until
    /// the bucket's max age: the manifest is what counts, so they are logged.
    async fn finish(&self, dump: &DumpCompleted) {
        let job_id = dump.job_id.as_str();
        self.jobs.forget(job_id);
        if let Err(e) = self.transfer.spool.remove_job(job_id).await {
            tracing::warn!(job_id, error = %e, "could not remove the job's spool files");
        }
        if let Err(e) = self.jobs.state().committed(job_id, &dump.backup_id).await {
            tracing::warn!(job_id, error = %e, "could not record the job as committed");
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
        // The dump's own list: a re-announced encrypted backup's envelope has none.
        databases: dump.databases.clone(),
    };
    Outgoing::event(
        EventKind::Uploaded,
        &dump.source,
        &event,
        ferry_runtime::msg_id::uploaded(&dump.job_id),
    )
}
