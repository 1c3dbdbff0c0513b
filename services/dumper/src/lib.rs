//! The dumper: takes `JobRequested` from the shared durable consumer, dumps the
//! source's databases into its local spool directory, hands each finished file to
//! the configured spool (the same directory, or the NATS bucket) and publishes
//! `DumpCompleted`.
//!
//! Idempotent on `job_id`: a finished dump is recorded, last, in the job's record
//! in NATS ([`ferry_runtime::jobstate`]), so a redelivered job re-announces the same
//! dump instead of dumping again (or does nothing once the backup is committed); an
//! unfinished one is discarded and redone.

pub mod config;
pub mod mongo;
pub mod output;
pub mod postgres;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use config::{CompressionKind, DumperConfig};
use ferry_proto::subjects::{self, EventKind};
use ferry_proto::v1::{
    DumpCompleted, DumpFile, Engine, JobRequested, PostgresDetails, PostgresMode, SpoolLocation,
    Stage,
};
use ferry_proto::{Message, reason};
use ferry_runtime::config::{EngineKind, OverlapPolicy, SectionSpec, SourceConfig};
use ferry_runtime::jobstate::{JobRecord, JobState};
use ferry_runtime::lease;
use ferry_runtime::process::{ReadinessNeeds, ServiceSpec};
use ferry_runtime::secrets::{SecretSource, read_secret};
use ferry_runtime::{
    ConsumerSpec, Deliver, Handler, HandlerError, JobContext, Outgoing, Runtime, msg_id,
};
use ferry_storage::spool::{DirSpool, Spool};
use output::{Compression, JobOutput};
use secrecy::SecretString;
use tokio_util::sync::CancellationToken;

pub use postgres::PgTools;

/// What the dumper declares to the process that runs it: its `[dumper]` section;
/// its readiness needs NATS only (it never touches the store).
pub const SERVICE: ServiceSpec = ServiceSpec {
    name: "ferry-dumper",
    sections: &[SectionSpec::of::<DumperConfig>()],
    readiness: ReadinessNeeds { store: false },
};

/// The dumper's handler.
pub struct Dumper {
    rt: Runtime,
    /// `[dumper]`.
    config: Arc<DumperConfig>,
    /// `spool.path`: where files are written, compressed and hashed, whatever the
    /// spool kind.
    local: DirSpool,
    /// Where the uploader reads the files from (`spool.kind`).
    spool: Arc<dyn Spool>,
    node: String,
    pg: PgTools,
    jobs: JobState,
    locks: kv::Store,
    /// Which queue this handler serves.
    lane: Lane,
}

/// The dumper's two queues: normal jobs, and an express lane for high-priority
/// jobs that a backlog of normal ones cannot hold up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// `ferry.v1.jobs.dump`, with `dumper.concurrency` jobs at once.
    Normal,
    /// `ferry.v1.jobs.dump.high`, one job at a time on top of the normal ones.
    High,
}

impl Dumper {
    /// A dumper writing into the configured spool.
    pub async fn new(rt: Runtime, lane: Lane) -> anyhow::Result<Self> {
        let local = DirSpool::new(&rt.config.spool.path).map_err(|e| {
            anyhow::anyhow!(
                "failed to create the spool directory {} (spool.path): {e}",
                rt.config.spool.path.display()
            )
        })?;
        let spool = ferry_runtime::store::open_spool(
            &rt.config.spool,
            &rt.jetstream,
            rt.config.nats.replicas,
        )
        .await?;
        let node = spool_node(&rt);
        let config = rt.config.section::<DumperConfig>()?;
        let pg = PgTools::new(config.pg_bin_dir.clone(), config.pg_jobs);
        let jobs = JobState::open(&rt.jetstream).await?;
        let locks = rt
            .jetstream
            .get_key_value(subjects::LOCKS_BUCKET)
            .await
            .map_err(|e| anyhow::anyhow!("opening the {} bucket: {e}", subjects::LOCKS_BUCKET))?;
        Ok(Dumper {
            rt,
            config,
            local,
            spool,
            node,
            pg,
            jobs,
            locks,
            lane,
        })
    }
}

/// The name of this node in spool locations: configured, or the host name.
pub fn spool_node(rt: &Runtime) -> String {
    rt.config
        .spool
        .node
        .clone()
        .unwrap_or_else(ferry_runtime::host_name)
}

/// Runs the dumper until `shutdown`.
pub async fn run(rt: Runtime, shutdown: CancellationToken) -> anyhow::Result<()> {
    let normal = Arc::new(Dumper::new(rt.clone(), Lane::Normal).await?);
    let high = Arc::new(Dumper::new(rt.clone(), Lane::High).await?);
    // One group: a lane that fails or panics stops the other, and the process.
    let mut tasks = ferry_runtime::Tasks::new(&shutdown);
    let (rt_normal, group) = (rt.clone(), tasks.shutdown());
    let concurrency = normal.config.concurrency;
    tasks.spawn("dumper", async move {
        Ok(rt_normal.run_handler(normal, concurrency, group).await?)
    });
    let group = tasks.shutdown();
    tasks.spawn("dumper express lane", async move {
        Ok(rt.run_handler(high, 1, group).await?)
    });
    Ok(tasks.join().await?)
}

impl Handler for Dumper {
    type Input = JobRequested;
    const STAGE: Stage = Stage::Dumper;

    fn consumer(&self) -> ConsumerSpec {
        ConsumerSpec {
            stream: subjects::JOBS_STREAM,
            durable: match self.lane {
                Lane::Normal => "ferry-dumper".into(),
                Lane::High => "ferry-dumper-high".into(),
            },
            filters: vec![match self.lane {
                Lane::Normal => subjects::JOB_DUMP.into(),
                Lane::High => subjects::JOB_DUMP_HIGH.into(),
            }],
            deliver: Deliver::All,
            ack_wait: Duration::from_secs(60),
            max_deliver: 4,
        }
    }

    fn decode(
        &self,
        _subject: &str,
        payload: &[u8],
    ) -> Result<Option<JobRequested>, prost::DecodeError> {
        JobRequested::decode(payload).map(Some)
    }

    async fn handle(
        &self,
        job: JobRequested,
        ctx: JobContext,
    ) -> Result<Vec<Outgoing>, HandlerError> {
        let source = self.rt.sources.get(&job.source).ok_or_else(|| {
            HandlerError::permanent(
                reason::UNKNOWN_SOURCE,
                format!(
                    "source {:?} is not configured on this dumper: add it to [[sources]]",
                    job.source
                ),
            )
        })?;
        let source = &source;
        let job_dir = self
            .local
            .job_dir(&job.job_id)
            .map_err(|e| HandlerError::permanent(reason::MALFORMED_MESSAGE, e.to_string()))?;
        let record = self
            .jobs
            .get(&job.job_id)
            .await
            .map_err(|e| HandlerError::retryable(reason::INTERNAL, e.to_string()))?;
        match record {
            Some(JobRecord::Dumped(done)) => {
                tracing::info!(
                    "dump already completed by an earlier delivery; announcing it again"
                );
                return Ok(vec![completed_event(&done)]);
            }
            // The uploader has already committed the backup and removed the files:
            // dumping again would only waste the database's time.
            Some(JobRecord::Committed { .. }) => {
                tracing::info!(
                    "job already dumped and uploaded by an earlier delivery; nothing to do"
                );
                return Ok(Vec::new());
            }
            // Failed for good, its files removed: a late redelivery must not
            // start it again (the failure was reported once, for the job).
            Some(JobRecord::Failed) => {
                tracing::info!("job already failed for good; nothing to do");
                return Ok(Vec::new());
            }
            None => {}
        }

        let remaining = time_left(&job, source);
        if remaining.is_zero() {
            return Err(timeout_error(source));
        }

        let lease = self.acquire_lease(source, &job, remaining, &ctx).await?;
        // Waiting for the lease (on_overlap = "queue") used part of the time.
        let remaining = time_left(&job, source);
        let result = self
            .dump_job(source, &job, &job_dir, remaining, &ctx, &lease.lost)
            .await;
        lease.release().await;
        result
    }
}

impl Dumper {
    /// Takes the source's lease, or applies the source's overlap policy.
    async fn acquire_lease(
        &self,
        source: &SourceConfig,
        job: &JobRequested,
        remaining: Duration,
        ctx: &JobContext,
    ) -> Result<lease::Lease, HandlerError> {
        let holder = lease::Holder {
            job_id: job.job_id.clone(),
            node: self.node.clone(),
            since: chrono::Utc::now(),
        };
        let give_up = Instant::now() + remaining;
        let ttl = self.rt.config.leases.ttl;
        loop {
            let attempt = lease::try_acquire(&self.locks, &source.name, &holder, ttl)
                .await
                .map_err(|e| HandlerError::retryable(reason::INTERNAL, e.to_string()))?;
            let other = match attempt {
                Ok(lease) => return Ok(lease),
                Err(other) => other,
            };
            let running = other
                .map(|h| {
                    format!(
                        "job {} on {} since {}",
                        h.job_id,
                        h.node,
                        h.since.format("%Y-%m-%d %H:%M:%S UTC")
                    )
                })
                .unwrap_or_else(|| "another job".into());
            if source.on_overlap == OverlapPolicy::Skip {
                return Err(HandlerError::permanent(
                    reason::ALREADY_RUNNING,
                    format!(
                        "a backup of {} is already running ({running}); this job was skipped (set on_overlap = \"queue\" to wait instead)",
                        source.name
                    ),
                ));
            }
            if Instant::now() >= give_up {
                return Err(timeout_error(source));
            }
            tracing::info!(source = %source.name, %running, "source busy; queued until its lease is free");
            tokio::select! {
                _ = ctx.cancel.cancelled() => return Err(HandlerError::retryable(reason::ALREADY_RUNNING, "the dumper is shutting down while the job was queued")),
                _ = tokio::time::sleep((ttl / 10).clamp(Duration::from_millis(200), Duration::from_secs(5))) => {}
            }
        }
    }

    /// Dumps under a held lease.
    async fn dump_job(
        &self,
        source: &SourceConfig,
        job: &JobRequested,
        job_dir: &std::path::Path,
        remaining: Duration,
        ctx: &JobContext,
        lease_lost: &CancellationToken,
    ) -> Result<Vec<Outgoing>, HandlerError> {
        if remaining.is_zero() {
            return Err(timeout_error(source));
        }
        let job = job.clone();
        let spool_err = |e: std::io::Error| {
            postgres::spool_io(&format!("spool {}", self.local.root().display()), &e)
        };
        // Files without a marker are what a crashed attempt left: start over.
        self.discard(&job.job_id, job_dir).await;
        tokio::fs::create_dir_all(job_dir)
            .await
            .map_err(spool_err)?;

        let started_at = chrono::Utc::now();
        let clock = Instant::now();
        let dump = async {
            tokio::select! {
                result = tokio::time::timeout(remaining, self.dump(source, &job, job_dir, ctx)) => {
                    result.unwrap_or_else(|_| Err(timeout_error(source)))
                }
                _ = ctx.cancel.cancelled() => Err(HandlerError::retryable(reason::DUMP_FAILED, "the dumper is shutting down; the job will be redelivered")),
                _ = lease_lost.cancelled() => Err(HandlerError::retryable(reason::DUMP_FAILED, "the source's lease was lost (NATS unreachable for longer than dumper.lease_ttl); the job will be retried")),
            }
        }
        .await;
        // Whatever happened, the uncompressed staging area is gone now.
        let _ = tokio::fs::remove_dir_all(job_dir.join(postgres::STAGING_DIR)).await;
        let EngineDump {
            server_version,
            tool_version,
            databases,
            files,
            mongodb,
            postgres,
        } = match dump {
            Ok(v) => v,
            Err(e) => {
                // No half-written dump stays behind: the spool is cleaned.
                self.discard(&job.job_id, job_dir).await;
                return Err(e);
            }
        };
        let done = DumpCompleted {
            job_id: job.job_id.clone(),
            source: job.source.clone(),
            occurred_at: Some(ferry_proto::now()),
            backup_id: job.backup_id.clone(),
            engine: match source.engine {
                EngineKind::Postgres => Engine::Postgres,
                EngineKind::Mongodb => Engine::Mongodb,
            } as i32,
            server_version,
            tool_version,
            files,
            spool: Some(SpoolLocation {
                node: self.node.clone(),
                path: job_dir.display().to_string(),
            }),
            started_at: Some(ferry_proto::to_timestamp(started_at)),
            duration_ms: clock.elapsed().as_millis() as u64,
            databases,
            deadline: job.deadline,
            postgres,
            mongodb,
        };
        ferry_runtime::metrics::count_bytes(
            ferry_runtime::metrics::ByteKind::Dumped,
            done.files.iter().map(|f| f.size).sum(),
        );
        // With the NATS spool every file has moved to the bucket; what is left here
        // is empty directories.
        prune_empty_dirs(job_dir);
        // Written last, after every file is in the spool: the record is what makes
        // the dump count as done.
        self.jobs.put_dumped(&done).await.map_err(|e| {
            HandlerError::retryable(
                reason::INTERNAL,
                format!("failed to record the completed dump: {e}"),
            )
        })?;
        let bytes: u64 = done.files.iter().map(|f| f.size).sum();
        tracing::info!(
            files = done.files.len(),
            bytes,
            duration_ms = done.duration_ms,
            "dump completed"
        );
        Ok(vec![completed_event(&done)])
    }
}

impl Dumper {
    /// Removes every file of the job, locally and from the spool the uploader reads.
    async fn discard(&self, job_id: &str, job_dir: &std::path::Path) {
        let _ = tokio::fs::remove_dir_all(job_dir).await;
        if let Err(e) = self.spool.remove_job(job_id).await {
            tracing::warn!(error = %e, spool = %self.spool.describe(), "could not remove the job's files from the spool");
        }
    }

    async fn dump(
        &self,
        source: &SourceConfig,
        job: &JobRequested,
        job_dir: &std::path::Path,
        ctx: &JobContext,
    ) -> Result<EngineDump, HandlerError> {
        let password = password_of(source)?;
        let announcer = output::Announcer::new(
            ctx.clone(),
            self.spool.clone(),
            job,
            SpoolLocation {
                node: self.node.clone(),
                path: job_dir.display().to_string(),
            },
        );
        match source.engine {
            EngineKind::Postgres => {
                let out = JobOutput::new(
                    job_dir.to_path_buf(),
                    compression_of(&self.config),
                    Some(announcer),
                );
                let dump = if physical(job, source) {
                    self.pg.base_backup(source, password.as_ref(), &out).await?
                } else {
                    let staging = job_dir.join(postgres::STAGING_DIR);
                    self.pg
                        .dump(source, password.as_ref(), &job.databases, &out, &staging)
                        .await?
                };
                Ok(EngineDump {
                    server_version: dump.details.server_version.clone(),
                    tool_version: dump.details.pg_dump_version.clone(),
                    databases: dump.databases,
                    files: out.files(),
                    mongodb: None,
                    postgres: Some(dump.details),
                })
            }
            EngineKind::Mongodb => {
                let config = &self.config;
                let out = output::JobOutput::new(
                    job_dir.to_path_buf(),
                    output::Compression::Zstd {
                        level: config.mongo_zstd_level,
                    },
                    Some(announcer),
                );
                let options = mongo::MongoOptions {
                    parallel_collections: config.mongo_parallel_collections,
                    ..Default::default()
                };
                let dump =
                    mongo::dump(source, password.as_ref(), &job.databases, &out, &options).await?;
                Ok(EngineDump {
                    server_version: dump.server_version,
                    tool_version: dump.tool_version,
                    databases: dump.databases,
                    files: dump.files,
                    mongodb: Some(dump.details),
                    postgres: None,
                })
            }
        }
    }
}

/// Whether a PostgreSQL job takes a physical base backup: the job says so, or
/// leaves it to the source's `mode`.
fn physical(job: &JobRequested, source: &SourceConfig) -> bool {
    match PostgresMode::try_from(job.postgres_mode).unwrap_or_default() {
        PostgresMode::Physical => true,
        PostgresMode::Logical => false,
        PostgresMode::Unspecified => source.mode == ferry_runtime::config::PostgresMode::Physical,
    }
}

/// Removes `dir` and the directories under it that hold no file.
fn prune_empty_dirs(dir: &std::path::Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                prune_empty_dirs(&entry.path());
            }
        }
    }
    // Fails, as it should, when files remain.
    let _ = std::fs::remove_dir(dir);
}

/// The configured compression of PostgreSQL dump files.
fn compression_of(config: &DumperConfig) -> Compression {
    match config.compression {
        CompressionKind::Zstd => Compression::Zstd {
            level: config.compression_level.unwrap_or(3),
        },
        CompressionKind::Gzip => Compression::Gzip {
            level: config.compression_level.unwrap_or(6).clamp(0, 9) as u32,
        },
        CompressionKind::None => Compression::None,
    }
}

/// What an engine's dump produced.
struct EngineDump {
    server_version: String,
    tool_version: String,
    databases: Vec<String>,
    /// The files, in the order they were finished.
    files: Vec<DumpFile>,
    mongodb: Option<ferry_proto::v1::MongoDetails>,
    postgres: Option<PostgresDetails>,
}

fn completed_event(done: &DumpCompleted) -> Outgoing {
    Outgoing::event(
        EventKind::Dumped,
        &done.source,
        done,
        msg_id::dumped(&done.job_id),
    )
}

/// Time until the job's deadline (the source's timeout when the job has none).
fn time_left(job: &JobRequested, source: &SourceConfig) -> Duration {
    job.deadline
        .as_ref()
        .and_then(ferry_proto::from_timestamp)
        .map(|d| (d - chrono::Utc::now()).to_std().unwrap_or(Duration::ZERO))
        .unwrap_or(source.timeout)
}

fn timeout_error(source: &SourceConfig) -> HandlerError {
    HandlerError::permanent(
        reason::TIMEOUT,
        format!(
            "the backup of {} ran past its timeout of {}; raise sources.timeout or investigate the database's load",
            source.name,
            humantime_duration(source.timeout)
        ),
    )
}

fn humantime_duration(d: Duration) -> String {
    let secs = d.as_secs();
    match secs {
        s if s % 3600 == 0 && s > 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 && s > 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

fn password_of(source: &SourceConfig) -> Result<Option<SecretString>, HandlerError> {
    let from = match (&source.password_env, &source.password_file) {
        (Some(var), _) => SecretSource::Env(var),
        (None, Some(path)) => SecretSource::File(path),
        (None, None) => return Ok(None),
    };
    read_secret(from).map(Some).map_err(|e| {
        HandlerError::permanent(
            reason::CREDENTIALS_MISSING,
            format!("password of source {}: {e}", source.name),
        )
    })
}
