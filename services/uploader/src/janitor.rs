//! The spool janitor: when a job fails for good at any stage (a final
//! `BackupFailed`), its spool files and file claims are removed and its record
//! becomes a failure tombstone, so a permanently
//! failed upload does not leave its dump behind until the spool fills.
//!
//! It runs in the uploader process because the uploader sees the spool the dumper
//! wrote (it has to, to upload). With a directory spool only a process on the
//! dumper's node sees the files: a janitor on another node hands the event back
//! (`nak`) for a replica on the right node, a bounded number of times, then gives
//! up with a warning. Removal is idempotent (a job with no files is no error), so a
//! redelivered or repeated failure costs one lookup.

use std::sync::Arc;
use std::time::Duration;

use ferry_proto::subjects::{self, EventKind};
use ferry_proto::v1::{BackupFailed, Stage};
use ferry_proto::{JobMessage, Message, reason};
use ferry_runtime::jobstate::{JobRecord, JobState};
use ferry_runtime::{ConsumerSpec, Deliver, Handler, HandlerError, JobContext, Outgoing};
use ferry_storage::spool::{Spool, valid_job_id};

/// Deliveries of one failure before the janitor gives up on it. The janitor never
/// fails a delivery for good: that would report a failure of its own, and failures
/// are what it consumes.
const ATTEMPTS: u32 = 5;

/// A job that failed for good, as the janitor's input. It names no source: the
/// runner keeps per-source "last success" and "last failure" times for what a
/// handler does, and cleaning up after a failure is neither a backup's success
/// nor its failure.
#[derive(Debug)]
pub struct FailedJob(pub BackupFailed);

impl JobMessage for FailedJob {
    fn job_id(&self) -> &str {
        &self.0.job_id
    }

    fn source(&self) -> &str {
        ""
    }
}

/// Removes the spool files and the record of jobs that failed for good.
pub struct Janitor {
    spool: Arc<dyn Spool>,
    state: JobState,
    node: String,
    ack_wait: Duration,
}

impl Janitor {
    /// A janitor of `spool` on node `node` (the name dumpers put in spool locations).
    pub fn new(spool: Arc<dyn Spool>, state: JobState, node: String, ack_wait: Duration) -> Self {
        Janitor {
            spool,
            state,
            node,
            ack_wait,
        }
    }

    /// Removes what `job_id` left, or says why it cannot from here.
    async fn clean(&self, job_id: &str) -> Result<(), String> {
        // Not a job id Ferry spools under (a manual request refused before any
        // dump): nothing of it can be in the spool or the bucket.
        if !valid_job_id(job_id) {
            return Ok(());
        }
        let record = self.state.get(job_id).await.map_err(|e| e.to_string())?;
        match &record {
            // Committed: its files are gone already and its record must stay, so
            // that a late redelivery is not dumped again.
            Some(JobRecord::Committed { .. }) => return Ok(()),
            Some(JobRecord::Dumped(done)) if self.spool.node_local() => {
                if let Some(location) = &done.spool
                    && !location.node.is_empty()
                    && location.node != self.node
                {
                    return Err(format!(
                        "the job's files are in the spool of node {}, not this node's ({})",
                        location.node, self.node
                    ));
                }
            }
            _ => {}
        }
        self.spool.remove_job(job_id).await.map_err(|e| {
            format!(
                "failed to remove the job's files from spool {}: {e}",
                self.spool.describe()
            )
        })?;
        self.state.failed(job_id).await.map_err(|e| e.to_string())?;
        Ok(())
    }
}

impl Handler for Janitor {
    type Input = FailedJob;
    const STAGE: Stage = Stage::Uploader;

    fn consumer(&self) -> ConsumerSpec {
        ConsumerSpec {
            stream: subjects::EVENTS_STREAM,
            durable: "ferry-uploader-janitor".into(),
            filters: vec![EventKind::Failed.filter()],
            // A spool cleaned by an earlier version needs no replay of old
            // failures; every failure after the first start is seen.
            deliver: Deliver::New,
            ack_wait: self.ack_wait,
            max_deliver: i64::from(ATTEMPTS) + 1,
        }
    }

    fn decode(
        &self,
        _subject: &str,
        payload: &[u8],
    ) -> Result<Option<FailedJob>, prost::DecodeError> {
        let failed = BackupFailed::decode(payload)?;
        // Only a job's end concerns the spool; a malformed message has no job.
        Ok((failed.r#final && !failed.job_id.is_empty()).then_some(FailedJob(failed)))
    }

    async fn handle(
        &self,
        FailedJob(failed): FailedJob,
        ctx: JobContext,
    ) -> Result<Vec<Outgoing>, HandlerError> {
        match self.clean(&failed.job_id).await {
            Ok(()) => {
                tracing::info!(job_id = %failed.job_id, "removed the spool files of a failed job");
                Ok(Vec::new())
            }
            Err(error) if ctx.attempt < ATTEMPTS => Err(HandlerError::retryable(
                reason::SPOOL_ERROR,
                format!(
                    "cannot clean up after failed job {}: {error}",
                    failed.job_id
                ),
            )),
            Err(error) => {
                tracing::warn!(job_id = %failed.job_id, %error, attempts = ctx.attempt, "gave up removing the spool files of a failed job; remove them by hand");
                Ok(Vec::new())
            }
        }
    }
}
