//! The generic JSON webhook: one POST per notification. The body is documented in the
//! README; receivers can rely on its field names.

use ferry_proto::v1::{Engine, Stage};
use ferry_proto::{from_timestamp, reason};
use ferry_runtime::HandlerError;
use serde_json::{Value, json};

use crate::Event;

/// The JSON body sent for an event.
pub fn notification_body(event: &Event, trace_id: Option<&str>) -> Value {
    let time = |t: &Option<prost_types::Timestamp>| {
        t.as_ref().and_then(from_timestamp).map(|t| t.to_rfc3339())
    };
    match event {
        Event::Failed(f) => json!({
            "event": "failed",
            "source": f.source,
            "job_id": f.job_id,
            "backup_id": f.backup_id,
            "stage": Stage::try_from(f.stage).unwrap_or(Stage::Unspecified).name(),
            "reason": f.reason,
            "message": f.message,
            "attempt": f.attempt,
            "occurred_at": time(&f.occurred_at),
            "trace_id": trace_id,
            "text": format!("Backup of {} failed at the {} stage ({}): {}", f.source, Stage::try_from(f.stage).unwrap_or(Stage::Unspecified).name(), f.reason, f.message),
        }),
        Event::Uploaded(u) => json!({
            "event": "succeeded",
            "source": u.source,
            "job_id": u.job_id,
            "backup_id": u.backup_id,
            "engine": Engine::try_from(u.engine).unwrap_or(Engine::Unspecified).name(),
            "databases": u.databases,
            "files": u.files,
            "bytes_total": u.bytes_total,
            "bytes_uploaded": u.bytes_uploaded,
            "bytes_reused": u.bytes_reused,
            "duration_ms": u.duration_ms,
            "manifest_key": u.manifest_key,
            "occurred_at": time(&u.occurred_at),
            "trace_id": trace_id,
            "text": format!("Backup {} of {} stored: {} files, {} bytes ({} reused) in {:.1} s", u.backup_id, u.source, u.files, u.bytes_total, u.bytes_reused, u.duration_ms as f64 / 1000.0),
        }),
        Event::Retention(r) => json!({
            "event": "retention",
            "source": r.source,
            "job_id": r.job_id,
            "kept": r.kept.iter().map(|k| json!({"backup_id": k.backup_id, "rule": k.rule})).collect::<Vec<_>>(),
            "deleted": r.deleted.iter().map(|d| json!({"backup_id": d.backup_id, "rule": d.rule})).collect::<Vec<_>>(),
            "objects_deleted": r.objects_deleted,
            "bytes_freed": r.bytes_freed,
            "occurred_at": time(&r.occurred_at),
            "trace_id": trace_id,
            "text": format!("Retention for {}: kept {}, deleted {}, freed {} bytes", r.source, r.kept.len(), r.deleted.len(), r.bytes_freed),
        }),
    }
}

/// POSTs `body`; 5xx, 429 and connection errors are retryable, other failures are not.
pub async fn post(http: &reqwest::Client, url: &str, body: &Value) -> Result<(), HandlerError> {
    let response = http.post(url).json(body).send().await.map_err(|e| {
        // reqwest's error text may include the URL, which can embed a token.
        HandlerError::retryable(
            reason::NOTIFICATION_FAILED,
            format!("webhook request failed: {}", e.without_url()),
        )
    })?;
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else if status.is_server_error() || status.as_u16() == 429 {
        Err(HandlerError::retryable(
            reason::NOTIFICATION_FAILED,
            format!("webhook answered {status}"),
        ))
    } else {
        Err(HandlerError::permanent(
            reason::NOTIFICATION_FAILED,
            format!("webhook answered {status}: check the channel's URL"),
        ))
    }
}
