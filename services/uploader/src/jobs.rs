//! Which objects of each running job are stored, so that `DumpFileReady` and
//! `DumpCompleted` (handled by different tasks of this process) upload each file
//! once and the manifest knows which files this job uploaded and which it reused.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_runtime::HandlerError;
use ferry_storage::layout::object_key;

use crate::transfer::{FileRef, Transfer, storage_error};

/// Jobs idle this long (a dump that failed and never completed) are forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(24 * 3600);

/// `None` until stored; then whether the object was reused.
type Slot = Arc<tokio::sync::Mutex<Option<bool>>>;

struct Job {
    files: HashMap<String, Slot>,
    touched: Instant,
}

/// The per-job record of stored objects. Its size is bounded by the jobs in
/// flight (each entry is one small slot per file) and idle jobs are dropped.
#[derive(Default, Clone)]
pub struct Jobs(Arc<Mutex<HashMap<String, Job>>>);

impl Jobs {
    fn slot(&self, job_id: &str, sha256: &str) -> Slot {
        let mut jobs = self.0.lock().expect("jobs lock");
        jobs.retain(|_, j| j.touched.elapsed() < FORGET_AFTER);
        let job = jobs.entry(job_id.to_string()).or_insert_with(|| Job {
            files: HashMap::new(),
            touched: Instant::now(),
        });
        job.touched = Instant::now();
        job.files.entry(sha256.to_string()).or_default().clone()
    }

    /// Forgets a committed job.
    pub fn forget(&self, job_id: &str) {
        self.0.lock().expect("jobs lock").remove(job_id);
    }

    /// Makes sure the file's object is stored and says whether it was already
    /// there (`true`: reused) or uploaded by this job. Concurrent callers for the
    /// same file wait for the first one; after a failure the next caller retries.
    pub async fn ensure(
        &self,
        transfer: &Transfer,
        file: &FileRef<'_>,
    ) -> Result<bool, HandlerError> {
        let slot = self.slot(file.job_id, file.sha256);
        let mut state = slot.lock().await;
        if let Some(reused) = *state {
            return Ok(reused);
        }
        let object = object_key(file.sha256);
        let existing = transfer
            .retry
            .run("head", || transfer.store.head(&object))
            .await
            .map_err(storage_error)?;
        let reused = match existing {
            Some(meta) if meta.size == file.size => true,
            _ => {
                transfer.upload(file, &object).await?;
                false
            }
        };
        *state = Some(reused);
        Ok(reused)
    }
}
