//! Manual jobs: JSON on `ferry.v1.jobs.request` from any NATS client. Every rejected
//! request gets a `BackupFailed` event with the reason, and a reply when the
//! publisher asked for one; nothing else is affected.

use async_nats::Subscriber;
use ferry_proto::reason;
use ferry_proto::subjects::{self, EventKind};
use ferry_proto::v1::{BackupFailed, Priority, Stage, Trigger};
use ferry_runtime::{Outgoing, Runtime};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::jobs::{self, JobRequest};

/// The JSON body of a manual job request.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManualRequest {
    /// The source to back up.
    pub source: String,
    /// A note for the record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Restrict to these databases.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub databases: Vec<String>,
    /// A job id chosen by the caller (a UUID), so a retried request is one job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    /// `"normal"` (default) or `"high"`: high jobs take the dumpers' express lane.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<RequestPriority>,
}

/// The priority of a manual job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RequestPriority {
    /// Queued with scheduled jobs.
    Normal,
    /// The express lane.
    High,
}

/// The JSON reply to a manual request.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ManualReply {
    /// Whether the job was accepted.
    pub ok: bool,
    /// The job id (also for rejected requests: it names the failure event).
    pub job_id: String,
    /// The backup id the job will produce.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_id: Option<String>,
    /// The reason code of a rejection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What was wrong.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

struct Rejection {
    /// The caller's job id when the request named a valid one.
    job_id: Option<String>,
    source: String,
    reason: &'static str,
    message: String,
}

/// Subscribes before anything else starts, so no request is missed.
pub async fn subscribe(rt: &Runtime) -> anyhow::Result<Subscriber> {
    // A queue group: each request is handled by exactly one scheduler replica.
    Ok(rt
        .nats
        .queue_subscribe(subjects::JOB_REQUEST, "ferry-scheduler".into())
        .await?)
}

/// Handles requests until `shutdown`.
pub async fn serve(
    rt: Runtime,
    mut requests: Subscriber,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    loop {
        let message = tokio::select! {
            _ = shutdown.cancelled() => break,
            message = requests.next() => match message {
                Some(m) => m,
                None => break,
            },
        };
        handle(&rt, message).await;
    }
    let _ = requests.unsubscribe().await;
    Ok(())
}

async fn handle(rt: &Runtime, message: async_nats::Message) {
    let span = tracing::info_span!(
        "job",
        otel.name = "job request",
        otel.kind = "producer",
        messaging.system = "nats",
        messaging.destination.name = subjects::JOB_REQUEST,
        ferry.stage = "scheduler",
        ferry.job_id = tracing::field::Empty,
        ferry.source = tracing::field::Empty,
        ferry.trigger = "manual",
    );
    // A caller that traces (ferry backup now) makes the job part of its trace.
    let _ = span.set_parent(ferry_telemetry::extract(message.headers.as_ref()));
    let reply = accept(rt, &message, &span).instrument(span.clone()).await;
    if let Some(reply_to) = message.reply {
        let body = serde_json::to_vec(&reply).expect("a reply always serialises");
        if let Err(e) = rt.nats.publish(reply_to, body.into()).await {
            tracing::warn!(error = %e, "failed to reply to a job request");
        }
    }
}

async fn accept(rt: &Runtime, message: &async_nats::Message, span: &tracing::Span) -> ManualReply {
    let max = rt.config.scheduler.max_request_bytes;
    let parsed = if message.payload.len() > max {
        Err(Rejection {
            job_id: None,
            source: String::new(),
            reason: reason::PAYLOAD_TOO_LARGE,
            message: format!(
                "job request of {} bytes is larger than the {max} bytes accepted; send only the source and options",
                message.payload.len()
            ),
        })
    } else {
        parse(rt, &message.payload)
    };
    let request = match parsed {
        Ok(request) => request,
        Err(rejection) => return reject(rt, rejection, span).await,
    };
    let source = rt.sources.get(&request.source).expect("checked by parse");
    let job_id = request
        .job_id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    span.record("ferry.job_id", job_id.as_str());
    span.record("ferry.source", source.name.as_str());
    let job_request = JobRequest {
        job_id: job_id.clone(),
        trigger: Trigger::Manual,
        at: chrono::Utc::now(),
        reason: request.reason.clone().unwrap_or_default(),
        databases: request.databases.clone(),
        msg_id: job_id.clone(),
        priority: match request.priority {
            Some(RequestPriority::High) => Priority::High,
            _ => Priority::Normal,
        },
    };
    let job = jobs::job_message(&source, &job_request);
    match jobs::publish(&rt.publisher, &job, &job_request.msg_id).await {
        Ok(()) => {
            tracing::info!(backup_id = %job.backup_id, "manual job accepted");
            rt.metrics.record_request("manual", "published");
            ManualReply {
                ok: true,
                job_id,
                backup_id: Some(job.backup_id),
                reason: None,
                message: None,
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "failed to publish manual job");
            rt.metrics.record_request("manual", "failed");
            ManualReply {
                ok: false,
                job_id,
                backup_id: None,
                reason: Some(reason::INTERNAL.into()),
                message: Some(format!("the job could not be queued: {e}; try again")),
            }
        }
    }
}

fn parse(rt: &Runtime, payload: &[u8]) -> Result<ManualRequest, Rejection> {
    let request: ManualRequest = serde_json::from_slice(payload).map_err(|e| Rejection {
        job_id: None,
        source: String::new(),
        reason: reason::MALFORMED_REQUEST,
        message: format!(
            "job request is not valid JSON of the form {{\"source\":\"name\"}} (optional: reason, databases, job_id, priority \"normal\" or \"high\"): {e}"
        ),
    })?;
    if let Some(id) = &request.job_id
        && uuid::Uuid::parse_str(id).is_err()
    {
        return Err(Rejection {
            job_id: None,
            source: request.source.chars().take(64).collect(),
            reason: reason::MALFORMED_REQUEST,
            message: format!("job_id {id:?} is not a UUID"),
        });
    }
    if !subjects::is_valid_source_name(&request.source) {
        return Err(Rejection {
            job_id: request.job_id.clone(),
            // Bounded: the name is echoed in the event, and it may be huge.
            source: request.source.chars().take(64).collect(),
            reason: reason::INVALID_SOURCE_NAME,
            message:
                "source names are 1-64 characters of [a-z0-9_-], starting with a letter or digit"
                    .into(),
        });
    }
    if rt.sources.get(&request.source).is_none() {
        let known: Vec<String> = rt
            .sources
            .all()
            .into_iter()
            .map(|s| s.config.name)
            .take(20)
            .collect();
        return Err(Rejection {
            job_id: request.job_id.clone(),
            message: format!(
                "unknown source {:?}; configured sources: {}",
                request.source,
                known.join(", ")
            ),
            source: request.source,
            reason: reason::UNKNOWN_SOURCE,
        });
    }
    Ok(request)
}

async fn reject(rt: &Runtime, rejection: Rejection, span: &tracing::Span) -> ManualReply {
    let job_id = rejection
        .job_id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    span.record("ferry.job_id", job_id.as_str());
    span.record("ferry.source", subjects::source_token(&rejection.source));
    tracing::warn!(reason = rejection.reason, error = %rejection.message, "job request rejected");
    rt.metrics.record_request("manual", "rejected");
    let failed = BackupFailed {
        job_id: job_id.clone(),
        source: rejection.source.clone(),
        occurred_at: Some(ferry_proto::now()),
        stage: Stage::Scheduler as i32,
        reason: rejection.reason.into(),
        message: rejection.message.clone(),
        attempt: 1,
        r#final: true,
        backup_id: String::new(),
    };
    let out = Outgoing::event(
        EventKind::Failed,
        &rejection.source,
        &failed,
        format!("{job_id}/failed/scheduler"),
    );
    if let Err(e) = rt.publisher.publish(&out).await {
        tracing::error!(error = %e, "failed to publish the rejection event");
    }
    ManualReply {
        ok: false,
        job_id,
        backup_id: None,
        reason: Some(rejection.reason.into()),
        message: Some(rejection.message),
    }
}
