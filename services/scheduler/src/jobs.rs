//! Building and publishing jobs: the same path for scheduled and manual jobs.

use chrono::{DateTime, Utc};
use ferry_proto::subjects::{self, EventKind};
use ferry_proto::v1::{JobRequested, PostgresMode, Priority, Trigger};
use ferry_runtime::config::SourceConfig;
use ferry_runtime::publisher::PublishError;
use ferry_runtime::{Outgoing, Publisher};

/// What a job is for, before it becomes a `JobRequested`.
#[derive(Debug, Clone)]
pub struct JobRequest {
    /// The job id.
    pub job_id: String,
    /// Why it exists.
    pub trigger: Trigger,
    /// The instant it stands for: the cron instant, or the request time.
    pub at: DateTime<Utc>,
    /// Operator's note for manual jobs.
    pub reason: String,
    /// Databases to restrict to.
    pub databases: Vec<String>,
    /// De-duplication id of the job message.
    pub msg_id: String,
    /// Which dumper lane takes it.
    pub priority: Priority,
    /// PostgreSQL: the kind of backup (unspecified: the source's `mode`).
    pub postgres_mode: PostgresMode,
}

/// The backup id of a job: UTC time then the job id's last 8 characters, so ids sort
/// by time and two jobs in one second still differ.
pub fn backup_id_for(at: DateTime<Utc>, job_id: &str) -> String {
    let tail: String = job_id
        .chars()
        .filter(|c| *c != '-')
        .rev()
        .take(8)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("{}-{tail}", at.format("%Y%m%dT%H%M%SZ"))
}

/// Builds the job message for `source`.
pub fn job_message(source: &SourceConfig, request: &JobRequest) -> JobRequested {
    let deadline = Utc::now()
        + chrono::Duration::from_std(source.timeout).unwrap_or(chrono::Duration::hours(2));
    JobRequested {
        job_id: request.job_id.clone(),
        source: source.name.clone(),
        occurred_at: Some(ferry_proto::now()),
        trigger: request.trigger as i32,
        scheduled_for: (request.trigger == Trigger::Schedule)
            .then(|| ferry_proto::to_timestamp(request.at)),
        reason: request.reason.clone(),
        databases: request.databases.clone(),
        deadline: Some(ferry_proto::to_timestamp(deadline)),
        backup_id: backup_id_for(request.at, &request.job_id),
        priority: request.priority as i32,
        postgres_mode: request.postgres_mode as i32,
    }
}

/// Publishes the job for the dumpers and the `requested` event for subscribers.
pub async fn publish(
    publisher: &Publisher,
    job: &JobRequested,
    msg_id: &str,
) -> Result<(), PublishError> {
    publisher
        .publish(&Outgoing {
            subject: match Priority::try_from(job.priority) {
                Ok(Priority::High) => subjects::JOB_DUMP_HIGH.into(),
                _ => subjects::JOB_DUMP.into(),
            },
            payload: prost::Message::encode_to_vec(job).into(),
            msg_id: msg_id.to_string(),
        })
        .await?;
    publisher
        .publish(&Outgoing::event(
            EventKind::Requested,
            &job.source,
            job,
            ferry_runtime::msg_id::requested(msg_id),
        ))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backup_ids_sort_by_time_and_differ_within_a_second() {
        let t: DateTime<Utc> = "2026-11-21T10:30:00Z".parse().unwrap();
        let a = backup_id_for(t, "0196f3a2-0000-7000-8000-00000000abcd");
        let b = backup_id_for(t, "0196f3a2-0000-7000-8000-00000000abce");
        assert_eq!(a, "20261121T103000Z-0000abcd");
        assert_ne!(a, b);
        assert!(backup_id_for(t + chrono::Duration::seconds(1), "x") > a);
    }
}
