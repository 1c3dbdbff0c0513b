//! The events the notifier reacts to, decoded from their subjects.

use ferry_proto::subjects::EventKind;
use ferry_proto::v1::{BackupFailed, BackupUploaded, CaptureGap, RetentionApplied, Stage};
use ferry_proto::{JobMessage, Message};

/// An event a channel may be told about.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A stage failed a job.
    Failed(BackupFailed),
    /// A backup was stored.
    Uploaded(BackupUploaded),
    /// Retention ran.
    Retention(RetentionApplied),
}

impl Event {
    /// Decodes the events the notifier uses; `Ok(None)` for the others.
    pub fn decode(subject: &str, payload: &[u8]) -> Result<Option<Event>, prost::DecodeError> {
        Ok(match EventKind::of_subject(subject) {
            Some(EventKind::Failed) => {
                let failed = BackupFailed::decode(payload)?;
                // The notifier's own failures are logged and counted, not notified:
                // alerting about a channel that cannot be reached would loop.
                (failed.stage != Stage::Notifier as i32).then_some(Event::Failed(failed))
            }
            Some(EventKind::Uploaded) => Some(Event::Uploaded(BackupUploaded::decode(payload)?)),
            Some(EventKind::Retention) => {
                Some(Event::Retention(RetentionApplied::decode(payload)?))
            }
            // A gap in captured changes is told as a failure of the capture stage:
            // alerted, collapsed and closed (by the base backup it requested
            // succeeding) like any failure of the source.
            Some(EventKind::Gap) => {
                Some(Event::Failed(gap_as_failure(CaptureGap::decode(payload)?)))
            }
            _ => None,
        })
    }

    /// A stable identity for "this event": the job, the kind and (for failures) the
    /// stage. A re-announced event (an idempotent stage publishing again after a
    /// redelivery, with a new timestamp) has the same identity, so it is not
    /// notified twice. Events without a job fall back to a digest of their content.
    pub fn identity(&self) -> String {
        use sha2::{Digest, Sha256};
        let kind = match self {
            Event::Failed(f) => format!(
                "failed-{}",
                Stage::try_from(f.stage)
                    .unwrap_or(Stage::Unspecified)
                    .name()
            ),
            Event::Uploaded(_) => "succeeded".into(),
            Event::Retention(_) => "retention".into(),
        };
        match self.job_id() {
            "" => {
                let bytes = match self {
                    Event::Failed(m) => m.encode_to_vec(),
                    Event::Uploaded(m) => m.encode_to_vec(),
                    Event::Retention(m) => m.encode_to_vec(),
                };
                format!("nojob-{}.{kind}", hex::encode(&Sha256::digest(bytes)[..8]))
            }
            job => format!("{job}.{kind}"),
        }
    }
}

/// A gap as the failure it is told as: its job is the gap record (so one gap is one
/// notification), its reason `history_lost`.
fn gap_as_failure(gap: CaptureGap) -> BackupFailed {
    BackupFailed {
        job_id: gap.record_key,
        source: gap.source,
        occurred_at: gap.occurred_at,
        stage: Stage::Capture as i32,
        reason: gap.reason,
        message: gap.message,
        attempt: 1,
        r#final: true,
        backup_id: String::new(),
    }
}

impl JobMessage for Event {
    fn job_id(&self) -> &str {
        match self {
            Event::Failed(m) => &m.job_id,
            Event::Uploaded(m) => &m.job_id,
            Event::Retention(m) => &m.job_id,
        }
    }

    fn source(&self) -> &str {
        match self {
            Event::Failed(m) => &m.source,
            Event::Uploaded(m) => &m.source,
            Event::Retention(m) => &m.source,
        }
    }
}
