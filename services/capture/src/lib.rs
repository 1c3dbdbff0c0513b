//! The capture worker: continuous change capture of MongoDB sources between base
//! backups, for restores to any instant.
//!
//! Capture is long-running work, not a job: there is no message to ack, only a
//! change stream to follow for as long as the process lives. Its shape:
//!
//! - the **supervisor** ([`run`]) looks every `capture.poll` for sources with
//!   `pitr.enabled` and tries to take each one's lease (`capture.<source>` in
//!   `ferry-locks`, renewed every third of `leases.ttl`); the replica that gets it
//!   captures that source, the others keep looking, so when it dies (even by
//!   SIGKILL) another takes over once the lease expires;
//! - a **source capture** ([`source`]) resumes from the end of the last committed
//!   segment (or gap), checks the server still holds that point, follows the
//!   change stream and cuts segments ([`segment`]) at `segment_span` or
//!   `segment_max`; a lost resume point becomes a gap record and event, a base
//!   backup is requested, and capture resumes from now ([`gap`]);
//! - shutdown lets each source commit what it has captured, then releases its
//!   lease, so the next replica resumes exactly there.
//!
//! A segment exists only when its record exists (written last, after its object);
//! a replica that dies mid-segment loses nothing but the work of re-reading it.

mod archive;
pub mod config;
mod errors;
mod gap;
mod metrics;
mod segment;
mod source;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use chrono::Utc;
use ferry_proto::subjects;
use ferry_runtime::Runtime;
use ferry_runtime::config::{EngineKind, SectionSpec, SourceConfig};
use ferry_runtime::lease::{self, Holder};
use ferry_runtime::process::{ReadinessNeeds, ServiceSpec};
use ferry_storage::ObjectStore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use errors::CaptureError;
pub use metrics::CaptureMetrics;
pub use source::SourceCapture;

/// What the capture worker declares to the process that runs it: its `[capture]`
/// section; its readiness needs the store (segments are written there).
pub const SERVICE: ServiceSpec = ServiceSpec {
    name: "ferry-capture",
    sections: &[SectionSpec::of::<config::CaptureConfig>()],
    readiness: ReadinessNeeds { store: true },
};

/// The lease a source's capturing replica holds.
pub fn lease_key(source: &str) -> String {
    format!("capture.{source}")
}

/// After a source's capture failed, how long before this replica tries it again
/// (doubling up to [`MAX_BACKOFF`]), so a server that refuses keeps logging, but
/// not in a tight loop.
const FIRST_BACKOFF: Duration = Duration::from_secs(2);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Whether `source` is captured.
pub fn captures(source: &SourceConfig) -> bool {
    source.engine == EngineKind::Mongodb && source.pitr.enabled
}

/// Runs the capture supervisor until `shutdown`: every source with capture on is
/// captured by exactly one replica.
pub async fn run(rt: Runtime, shutdown: CancellationToken) -> anyhow::Result<()> {
    let config = rt.config.section::<config::CaptureConfig>()?;
    let store = ferry_runtime::store::open(&rt.config.storage)?;
    if rt.config.sources.iter().any(captures) {
        ferry_runtime::store::check_plaintext_writer(
            &rt.config,
            store.as_ref(),
            "MongoDB change capture",
        )
        .await?;
    }
    let locks = rt
        .jetstream
        .get_key_value(subjects::LOCKS_BUCKET)
        .await
        .map_err(|e| anyhow::anyhow!("opening the lease bucket {}: {e}", subjects::LOCKS_BUCKET))?;
    // Created when a source is first captured: a fleet without capture has none.
    let work_dir = config.work_dir(&rt.config);
    segment::remove_stale(&work_dir);
    let metrics = CaptureMetrics::register(&rt.metrics);
    let supervisor = Supervisor {
        rt,
        store,
        locks,
        work_dir,
        metrics,
        node: format!("{}/{}", ferry_runtime::host_name(), std::process::id()),
    };
    let watcher = tokio::spawn({
        let (rt, metrics, shutdown) = (
            supervisor.rt.clone(),
            supervisor.metrics.clone(),
            shutdown.clone(),
        );
        async move {
            if let Err(e) = archive::watch(rt, metrics, shutdown).await {
                tracing::error!(error = %format!("{e:#}"), "following the WAL archiving reports failed; the wal_* metrics are not updated");
            }
        }
    });
    let result = supervisor.run(config.poll, shutdown).await;
    watcher.abort();
    result
}

struct Supervisor {
    rt: Runtime,
    store: Arc<dyn ObjectStore>,
    locks: kv::Store,
    work_dir: std::path::PathBuf,
    metrics: CaptureMetrics,
    /// This replica in lease holders: host and process.
    node: String,
}

/// A source this replica captures.
struct Running {
    stop: CancellationToken,
}

impl Supervisor {
    async fn run(self, poll: Duration, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut running: HashMap<String, Running> = HashMap::new();
        let mut tasks: JoinSet<(String, Result<(), CaptureError>)> = JoinSet::new();
        // Sources that failed here, and when to try them again.
        let mut backoff: HashMap<String, (Instant, Duration)> = HashMap::new();
        let mut changes = self.rt.sources.changes();
        loop {
            self.take_free_sources(&mut running, &mut tasks, &backoff)
                .await;
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(poll) => {}
                _ = changes.changed() => {}
                Some(done) = tasks.join_next() => {
                    let (name, result) = done.map_err(|e| anyhow::anyhow!(
                        "a source's capture task: {}", ferry_runtime::tasks::join_error_message(e)
                    ))?;
                    running.remove(&name);
                    match result {
                        Ok(()) => { backoff.remove(&name); }
                        Err(e) => {
                            let wait = backoff.get(&name).map_or(FIRST_BACKOFF, |(_, w)| (*w * 2).min(MAX_BACKOFF));
                            tracing::error!(
                                source = %name,
                                error = %ferry_runtime::error_chain(&e),
                                retry_in = ?wait,
                                "capture stopped; changes of this source are not being captured"
                            );
                            self.metrics.record_failure(&name);
                            backoff.insert(name, (Instant::now() + wait, wait));
                        }
                    }
                }
            }
            // Sources whose capture was turned off or removed stop.
            for (name, r) in &running {
                if !self.rt.sources.get(name).is_some_and(|s| captures(&s)) {
                    r.stop.cancel();
                }
            }
        }
        // Shutdown: each source commits what it has and releases its lease.
        for r in running.values() {
            r.stop.cancel();
        }
        while let Some(done) = tasks.join_next().await {
            if let Ok((name, Err(e))) = done {
                tracing::warn!(source = %name, error = %ferry_runtime::error_chain(&e), "capture ended with an error at shutdown");
            }
        }
        Ok(())
    }

    /// Tries the lease of every captured source this replica does not run.
    async fn take_free_sources(
        &self,
        running: &mut HashMap<String, Running>,
        tasks: &mut JoinSet<(String, Result<(), CaptureError>)>,
        backoff: &HashMap<String, (Instant, Duration)>,
    ) {
        let now = Instant::now();
        for registered in self.rt.sources.all() {
            let source = registered.config;
            if !captures(&source) || running.contains_key(&source.name) {
                continue;
            }
            if backoff.get(&source.name).is_some_and(|(at, _)| *at > now) {
                continue;
            }
            let holder = Holder {
                job_id: "capture".into(),
                node: self.node.clone(),
                since: Utc::now(),
            };
            let ttl = self.rt.config.leases.ttl;
            let lease = match lease::try_acquire(
                &self.locks,
                &lease_key(&source.name),
                &holder,
                ttl,
            )
            .await
            {
                Ok(Ok(lease)) => lease,
                // Another replica captures it.
                Ok(Err(_)) => continue,
                Err(e) => {
                    tracing::warn!(source = %source.name, error = %e, "could not take the capture lease; trying again");
                    continue;
                }
            };
            tracing::info!(source = %source.name, node = %self.node, "capturing changes");
            let stop = CancellationToken::new();
            let capture = SourceCapture {
                rt: self.rt.clone(),
                store: self.store.clone(),
                source: source.clone(),
                work_dir: self.work_dir.clone(),
                node: self.node.clone(),
                metrics: self.metrics.clone(),
            };
            let name = source.name.clone();
            let task_stop = stop.clone();
            tasks.spawn(async move {
                let result = capture.run(&lease, task_stop).await;
                lease.release().await;
                (name, result)
            });
            running.insert(source.name.clone(), Running { stop });
        }
    }
}
