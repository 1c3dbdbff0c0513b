//! Which objects each running job stored or reused. The truth is in NATS (the job
//! state bucket's `<job_id>.file.<sha256>` claims, see [`ferry_runtime::jobstate`]),
//! so that `DumpFileReady` and `DumpCompleted` of one job may reach different
//! uploader replicas and the manifest still says which files this job uploaded.
//! Each process also keeps a small in-memory slot per file, so its own two handlers
//! upload a file once and do not ask NATS twice.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_runtime::jobstate::{FileClaim, JobState};
use ferry_storage::Stored;

use crate::transfer::{FileRef, Transfer, UploadError};

/// Jobs idle this long (a dump that failed and never completed) are forgotten
/// locally; their claims in NATS expire with the bucket's `max_age`.
const FORGET_AFTER: Duration = Duration::from_secs(24 * 3600);

/// `None` until settled; then whether the object was reused, and (encrypted) what
/// this process stored.
type Slot = Arc<tokio::sync::Mutex<Option<Settled>>>;

/// A settled file: whether its object was reused, and, when this process uploaded
/// it encrypted, the ciphertext's size and SHA-256.
#[derive(Debug, Clone)]
pub struct Settled {
    /// Stored before this job.
    pub reused: bool,
    /// What this process stored, when encrypted; `None` when it did not upload it.
    pub stored: Option<Stored>,
}

struct Job {
    files: HashMap<String, Slot>,
    touched: Instant,
}

/// The per-job record of stored objects: the claims in NATS, cached per process.
/// The cache is bounded by the jobs in flight (one small slot per file) and idle
/// jobs are dropped.
#[derive(Clone)]
pub struct Jobs {
    local: Arc<Mutex<HashMap<String, Job>>>,
    state: JobState,
}

impl Jobs {
    /// Bookkeeping kept in `state`.
    pub fn new(state: JobState) -> Jobs {
        Jobs {
            local: Arc::default(),
            state,
        }
    }

    /// The job state bucket behind this bookkeeping.
    pub fn state(&self) -> &JobState {
        &self.state
    }

    fn slot(&self, job_id: &str, sha256: &str) -> Slot {
        let mut jobs = self.local.lock().expect("jobs lock");
        jobs.retain(|_, j| j.touched.elapsed() < FORGET_AFTER);
        let job = jobs.entry(job_id.to_string()).or_insert_with(|| Job {
            files: HashMap::new(),
            touched: Instant::now(),
        });
        job.touched = Instant::now();
        job.files.entry(sha256.to_string()).or_default().clone()
    }

    /// Forgets a finished job in this process (its claims are removed with the
    /// job's record).
    pub fn forget(&self, job_id: &str) {
        self.local.lock().expect("jobs lock").remove(job_id);
    }

    /// Makes sure the file's object is stored and says whether it was already
    /// there before this job (`true`: reused) or uploaded by this job, as the
    /// job's claim in NATS records it: the first replica to look decides, and
    /// every later look, on any replica, agrees.
    pub async fn ensure(
        &self,
        transfer: &Transfer,
        file: &FileRef<'_>,
    ) -> Result<Settled, UploadError> {
        let slot = self.slot(file.job_id, file.sha256);
        let mut settled = slot.lock().await;
        if let Some(done) = settled.as_ref() {
            return Ok(done.clone());
        }
        let object = transfer.object_for(file.sha256);
        let (claim, stored) = match self.state.file_claim(file.job_id, file.sha256).await? {
            Some(claim) => (claim, transfer.is_stored(&object, file.size).await?),
            None => {
                // Claimed before uploading: a replica that finds the object a
                // moment later (our upload) reads this claim, not "reused".
                let stored = transfer.is_stored(&object, file.size).await?;
                let proposed = if stored {
                    FileClaim::Reused
                } else {
                    FileClaim::Uploaded
                };
                let claim = self
                    .state
                    .claim_file(file.job_id, file.sha256, proposed)
                    .await?;
                // The janitor may have cleaned up after the job's failure since
                // the look above: then this claim must not outlive it.
                if self
                    .state
                    .drop_claim_if_failed(file.job_id, file.sha256)
                    .await?
                {
                    return Err(UploadError::JobFailed {
                        job_id: file.job_id.to_string(),
                    });
                }
                (claim, stored)
            }
        };
        let mut uploaded = None;
        if !stored {
            // Claimed by this job but not (yet) in the store: another replica may
            // be uploading it, or died doing so. The object is content-addressed,
            // so uploading it here too is safe (an encrypted one is never written
            // over, see `Transfer::upload`).
            uploaded = transfer.upload(file, &object).await?;
        }
        let done = Settled {
            reused: claim == FileClaim::Reused,
            stored: uploaded,
        };
        *settled = Some(done.clone());
        Ok(done)
    }
}
