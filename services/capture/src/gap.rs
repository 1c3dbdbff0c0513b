//! Gaps, never silent: when the resume point is no longer on the server, the
//! changes since it are lost. Capture writes a gap record naming both ends and the
//! cause, publishes `CaptureGap` (the notifier alerts on it), asks the scheduler
//! for a new base backup (restores after the gap need one), and resumes from now.

use chrono::Utc;
use ferry_proto::request::{ManualReply, ManualRequest, RequestPriority};
use ferry_proto::subjects::{self, EventKind};
use ferry_proto::v1::{CaptureGap, MongoClusterTime};
use ferry_runtime::{Outgoing, msg_id};
use ferry_storage::Catalog;
use ferry_storage::pitr::{GapRecord, RECORD_FORMAT, gap_key};
use mongodb::bson::Timestamp;

use crate::segment::cluster_time;
use crate::{CaptureError, SourceCapture};

impl SourceCapture {
    /// Records that the changes in `(start, end]` are lost because of `cause`
    /// (`reason` its code), publishes it, and requests a base backup.
    pub(crate) async fn record_gap(
        &self,
        start: Timestamp,
        end: Timestamp,
        reason: &str,
        cause: String,
    ) -> Result<(), CaptureError> {
        let source = self.source.name.as_str();
        let record = GapRecord {
            format: RECORD_FORMAT,
            source: source.to_string(),
            start: cluster_time(start),
            end: cluster_time(end),
            cause: cause.clone(),
            detected_at: Utc::now(),
        };
        let key = gap_key(source, record.start, record.end);
        tracing::error!(
            source = %source,
            from = %record.start,
            to = %record.end,
            cause = %cause,
            "changes were lost: no restore can cross this gap; requesting a new base backup"
        );
        Catalog::new(self.store.as_ref())
            .record_gap(&record)
            .await
            .map_err(|e| CaptureError::Store {
                source_name: source.to_string(),
                what: format!("writing the gap record {key}"),
                cause: Box::new(e),
            })?;
        self.metrics.record_gap(source, f64::from(end.time));
        let requested_job_id = self
            .request_base_backup(&key, "a gap in captured changes")
            .await;
        let event = CaptureGap {
            source: source.to_string(),
            occurred_at: Some(ferry_proto::now()),
            start: Some(to_proto(start)),
            end: Some(to_proto(end)),
            reason: reason.to_string(),
            message: format!(
                "changes of {source} from {} to {} were not captured: {cause}. No restore can reach an instant in this gap; restores after it need the base backup requested now",
                record.start, record.end
            ),
            record_key: key.clone(),
            requested_job_id: requested_job_id.unwrap_or_default(),
        };
        self.rt
            .publisher
            .publish(&Outgoing::event(
                EventKind::Gap,
                source,
                &event,
                msg_id::gap(&key),
            ))
            .await
            .map_err(|cause| CaptureError::Publish {
                source_name: source.to_string(),
                what: format!("the gap event of {key}"),
                cause: Box::new(cause),
            })?;
        Ok(())
    }

    /// Asks the scheduler for a base backup of the source, with a job id derived
    /// from `why_key` (so asking again for the same reason is the same job). A
    /// scheduler that does not answer is logged, not fatal: capture goes on, and
    /// the source's next scheduled backup serves.
    pub(crate) async fn request_base_backup(&self, why_key: &str, why: &str) -> Option<String> {
        let source = self.source.name.as_str();
        let job_id = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, why_key.as_bytes()).to_string();
        let request = ManualRequest {
            source: source.to_string(),
            job_id: Some(job_id.clone()),
            reason: Some(format!("capture: base backup after {why}")),
            priority: Some(RequestPriority::High),
            ..Default::default()
        };
        let body = match serde_json::to_vec(&request) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(source = %source, error = %e, "could not encode the base backup request");
                return None;
            }
        };
        match self
            .rt
            .nats
            .request(subjects::JOB_REQUEST, body.into())
            .await
        {
            Ok(reply) => match serde_json::from_slice::<ManualReply>(&reply.payload) {
                Ok(r) if r.ok => {
                    tracing::info!(source = %source, job_id = %job_id, why = %why, "requested a base backup");
                    Some(job_id)
                }
                Ok(r) => {
                    tracing::error!(source = %source, reason = ?r.reason, message = ?r.message, "the scheduler refused the base backup capture asked for");
                    None
                }
                Err(e) => {
                    tracing::error!(source = %source, error = %e, "the scheduler's reply to the base backup request is not understood");
                    None
                }
            },
            Err(e) => {
                tracing::error!(source = %source, error = %e, "could not request a base backup (is a scheduler running?); the next scheduled backup will serve");
                None
            }
        }
    }
}

/// A cluster time in the events' form.
pub fn to_proto(t: Timestamp) -> MongoClusterTime {
    MongoClusterTime {
        seconds: t.time,
        increment: t.increment,
    }
}
