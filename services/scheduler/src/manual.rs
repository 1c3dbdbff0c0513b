//! Manual jobs: JSON on `ferry.v1.jobs.request` from any NATS client. Every rejected
//! request gets a `BackupFailed` event with the reason, and a reply when the
//! publisher asked for one; nothing else is affected.

use async_nats::Subscriber;
use ferry_proto::subjects::{self, EventKind};
use ferry_proto::v1::{BackupFailed, Priority, Stage, Trigger};
use ferry_runtime::config::SourceConfig;
use ferry_runtime::{Outgoing, Runtime, msg_id};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::errors::{self, RequestError};
use crate::jobs::{self, JobRequest};

pub use ferry_proto::request::{ManualReply, ManualRequest, RequestPriority};

struct Rejection {
    /// The caller's job id when the request named a valid one.
    job_id: Option<String>,
    source: String,
    error: RequestError,
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
    let max = rt
        .config
        .section::<crate::config::SchedulerConfig>()?
        .max_request_bytes;
    loop {
        let message = tokio::select! {
            _ = shutdown.cancelled() => break,
            message = requests.next() => match message {
                Some(m) => m,
                None => break,
            },
        };
        handle(&rt, message, max).await;
    }
    let _ = requests.unsubscribe().await;
    Ok(())
}

/// Answers one request; `max` is `scheduler.max_request_bytes`.
async fn handle(rt: &Runtime, message: async_nats::Message, max: usize) {
    ferry_runtime::fault::point("scheduler.manual-request");
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
    let reply = accept(rt, &message, &span, max)
        .instrument(span.clone())
        .await;
    if let Some(reply_to) = message.reply {
        let body = serde_json::to_vec(&reply).expect("a reply always serialises");
        if let Err(e) = rt.nats.publish(reply_to, body.into()).await {
            tracing::warn!(error = %e, "failed to reply to a job request");
        }
    }
}

async fn accept(
    rt: &Runtime,
    message: &async_nats::Message,
    span: &tracing::Span,
    max: usize,
) -> ManualReply {
    let parsed = if message.payload.len() > max {
        Err(Rejection {
            job_id: None,
            source: String::new(),
            error: RequestError::TooLarge {
                size: message.payload.len(),
                max,
            },
        })
    } else {
        parse(rt, &message.payload)
    };
    // The source is looked up once, by `parse`: a source removed from the registry
    // at any moment before is an unknown source, never a missing one after.
    let (request, source) = match parsed {
        Ok(parsed) => parsed,
        Err(rejection) => return reject(rt, rejection, span).await,
    };
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
        msg_id: msg_id::manual(&job_id),
        priority: match request.priority {
            Some(RequestPriority::High) => Priority::High,
            _ => Priority::Normal,
        },
        postgres_mode: match request.mode {
            Some(ferry_proto::request::RequestMode::Logical) => {
                ferry_proto::v1::PostgresMode::Logical
            }
            Some(ferry_proto::request::RequestMode::Physical) => {
                ferry_proto::v1::PostgresMode::Physical
            }
            None => ferry_proto::v1::PostgresMode::Unspecified,
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
            let error = RequestError::Queue(e);
            let message = errors::message(&error);
            tracing::error!(error = %message, "failed to publish manual job");
            rt.metrics.record_request("manual", "failed");
            ManualReply {
                ok: false,
                job_id,
                backup_id: None,
                reason: Some(errors::classify(&error).into()),
                message: Some(message),
            }
        }
    }
}

fn parse(rt: &Runtime, payload: &[u8]) -> Result<(ManualRequest, SourceConfig), Rejection> {
    let request: ManualRequest = serde_json::from_slice(payload).map_err(|e| Rejection {
        job_id: None,
        source: String::new(),
        error: RequestError::Malformed(e),
    })?;
    if let Some(id) = &request.job_id
        && uuid::Uuid::parse_str(id).is_err()
    {
        return Err(Rejection {
            job_id: None,
            source: request.source.chars().take(64).collect(),
            error: RequestError::JobId(id.clone()),
        });
    }
    if !subjects::is_valid_source_name(&request.source) {
        return Err(Rejection {
            job_id: request.job_id.clone(),
            // Bounded: the name is echoed in the event, and it may be huge.
            source: request.source.chars().take(64).collect(),
            error: RequestError::SourceName,
        });
    }
    let Some(source) = rt.sources.get(&request.source) else {
        let known: Vec<String> = rt
            .sources
            .all()
            .into_iter()
            .map(|s| s.config.name)
            .take(20)
            .collect();
        return Err(Rejection {
            job_id: request.job_id.clone(),
            error: RequestError::UnknownSource {
                name: request.source.clone(),
                known: known.join(", "),
            },
            source: request.source,
        });
    };
    Ok((request, source))
}

async fn reject(rt: &Runtime, rejection: Rejection, span: &tracing::Span) -> ManualReply {
    let job_id = rejection
        .job_id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    span.record("ferry.job_id", job_id.as_str());
    span.record("ferry.source", subjects::source_token(&rejection.source));
    let (reason, message) = (
        errors::classify(&rejection.error),
        errors::message(&rejection.error),
    );
    tracing::warn!(reason, error = %message, "job request rejected");
    rt.metrics.record_request("manual", "rejected");
    let failed = BackupFailed {
        job_id: job_id.clone(),
        source: rejection.source.clone(),
        occurred_at: Some(ferry_proto::now()),
        stage: Stage::Scheduler as i32,
        reason: reason.into(),
        message: message.clone(),
        attempt: 1,
        r#final: true,
        backup_id: String::new(),
    };
    let out = Outgoing::event(
        EventKind::Failed,
        &rejection.source,
        &failed,
        msg_id::failed(&job_id, Stage::Scheduler),
    );
    if let Err(e) = rt.publisher.publish(&out).await {
        tracing::error!(error = %ferry_runtime::error_chain(&e), "failed to publish the rejection event");
    }
    ManualReply {
        ok: false,
        job_id,
        backup_id: None,
        reason: Some(reason.into()),
        message: Some(message),
    }
}
