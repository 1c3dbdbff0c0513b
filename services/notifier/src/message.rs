//! What a notification says, independent of the channel that carries it: a title, a
//! one-line summary, labelled fields and a trace link; plus the documented JSON body
//! of the generic webhook. Channels only lay this out.

use crate::config::Severity;
use ferry_proto::v1::{BackupFailed, BackupUploaded, Engine, RetentionApplied, Stage};
use ferry_proto::{from_timestamp, reason};
use ferry_runtime::registry::Registry;
use serde_json::{Value, json};

use crate::streak::Streak;

/// Which message this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotificationKind {
    /// The first failure of a streak.
    Failed,
    /// A reminder while a source keeps failing, with the count.
    StillFailing,
    /// A source succeeded again after failing.
    Recovered,
    /// A backup was stored.
    Succeeded,
    /// Retention ran.
    Retention,
    /// The scheduled summary.
    Digest,
}

impl NotificationKind {
    /// The `event` field of the webhook body.
    pub fn name(self) -> &'static str {
        match self {
            NotificationKind::Failed => "failed",
            NotificationKind::StillFailing => "still_failing",
            NotificationKind::Recovered => "recovered",
            NotificationKind::Succeeded => "succeeded",
            NotificationKind::Retention => "retention",
            NotificationKind::Digest => "digest",
        }
    }
}

/// One message, ready for any channel.
#[derive(Debug, Clone)]
pub struct Notification {
    /// Which message.
    pub kind: NotificationKind,
    /// How much it matters.
    pub severity: Severity,
    /// The source it is about (empty for digests).
    pub source: String,
    /// A short title.
    pub title: String,
    /// One paragraph for a human.
    pub text: String,
    /// Labelled details, in display order.
    pub fields: Vec<(&'static str, String)>,
    /// A link to the job's trace, when a template is configured.
    pub link: Option<String>,
    /// The generic webhook's JSON body.
    pub body: Value,
}

/// Reasons that mean the request was refused before any backup was attempted.
const OPERATOR_ERRORS: [&str; 5] = [
    reason::MALFORMED_REQUEST,
    reason::PAYLOAD_TOO_LARGE,
    reason::UNKNOWN_SOURCE,
    reason::INVALID_SOURCE_NAME,
    reason::MALFORMED_MESSAGE,
];

/// The severity of a failure.
pub fn failure_severity(failed: &BackupFailed) -> Severity {
    if OPERATOR_ERRORS.contains(&failed.reason.as_str()) {
        Severity::Warning
    } else {
        Severity::Error
    }
}

/// What the notification can say about the source beyond the event.
pub struct Context<'a> {
    /// The sources (engine and databases of a failed source).
    pub sources: &'a Registry,
    /// The `[notifier] trace_url` template.
    pub trace_url: Option<&'a str>,
    /// The job's trace id.
    pub trace_id: Option<String>,
}

impl Context<'_> {
    fn link(&self) -> Option<String> {
        Some(
            self.trace_url?
                .replace("{trace_id}", self.trace_id.as_deref()?),
        )
    }

    fn engine_and_databases(&self, source: &str) -> (String, String) {
        match self.sources.get(source) {
            Some(s) => {
                let dbs = if s.databases.is_empty() {
                    url::Url::parse(&s.url)
                        .ok()
                        .map(|u| u.path().trim_start_matches('/').to_string())
                        .filter(|p| !p.is_empty())
                        .unwrap_or_else(|| "(default)".into())
                } else {
                    s.databases.join(", ")
                };
                (format!("{:?}", s.engine).to_lowercase(), dbs)
            }
            None => ("unknown".into(), "unknown".into()),
        }
    }
}

fn time(t: &Option<prost_types::Timestamp>) -> Option<String> {
    t.as_ref().and_then(from_timestamp).map(|t| t.to_rfc3339())
}

fn stage_name(stage: i32) -> &'static str {
    Stage::try_from(stage).unwrap_or(Stage::Unspecified).name()
}

/// A failure: the first of a streak, or a reminder with the count.
pub fn failed(f: &BackupFailed, streak: &Streak, ctx: &Context<'_>) -> Notification {
    let kind = if streak.failures > 1 {
        NotificationKind::StillFailing
    } else {
        NotificationKind::Failed
    };
    let stage = stage_name(f.stage);
    let (engine, databases) = ctx.engine_and_databases(&f.source);
    let title = match kind {
        NotificationKind::StillFailing => format!(
            "Backups of {} still failing ({} failures)",
            f.source, streak.failures
        ),
        _ => format!("Backup of {} failed", f.source),
    };
    let mut text = format!("The {stage} stage failed with {}: {}", f.reason, f.message);
    if streak.failures > 1 {
        text.push_str(&format!(
            "\n{} failures since {}; further failures are collapsed until a backup succeeds.",
            streak.failures,
            streak.since.format("%Y-%m-%d %H:%M UTC")
        ));
    }
    let mut fields = vec![
        ("Source", f.source.clone()),
        ("Engine", engine.clone()),
        ("Databases", databases.clone()),
        ("Stage", stage.to_string()),
        ("Reason", f.reason.clone()),
        ("Attempt", f.attempt.to_string()),
        ("Job", f.job_id.clone()),
    ];
    if !f.backup_id.is_empty() {
        fields.push(("Backup", f.backup_id.clone()));
    }
    if streak.failures > 1 {
        fields.push((
            "Failures",
            format!("{} since {}", streak.failures, streak.since.to_rfc3339()),
        ));
    }
    if let Some(trace) = &ctx.trace_id {
        fields.push(("Trace", trace.clone()));
    }
    let link = ctx.link();
    let body = json!({
        "event": kind.name(),
        "severity": failure_severity(f).name(),
        "source": f.source,
        "engine": engine,
        "databases": databases,
        "job_id": f.job_id,
        "backup_id": f.backup_id,
        "stage": stage,
        "reason": f.reason,
        "message": f.message,
        "attempt": f.attempt,
        "failures": streak.failures,
        "failing_since": streak.since.to_rfc3339(),
        "occurred_at": time(&f.occurred_at),
        "trace_id": ctx.trace_id,
        "trace_url": link,
        "title": title,
        "text": text,
    });
    Notification {
        kind,
        severity: failure_severity(f),
        source: f.source.clone(),
        title,
        text,
        fields,
        link,
        body,
    }
}

/// A source succeeded again after `streak`.
pub fn recovered(u: &BackupUploaded, streak: &Streak, ctx: &Context<'_>) -> Notification {
    let title = format!("Backups of {} recovered", u.source);
    let text = format!(
        "Backup {} of {} was stored after {} failed {} since {} (last reason: {}).",
        u.backup_id,
        u.source,
        streak.failures,
        if streak.failures == 1 {
            "attempt"
        } else {
            "attempts"
        },
        streak.since.format("%Y-%m-%d %H:%M UTC"),
        streak.last_reason
    );
    let link = ctx.link();
    let mut fields = vec![
        ("Source", u.source.clone()),
        ("Backup", u.backup_id.clone()),
        ("Failures", streak.failures.to_string()),
        ("Failing since", streak.since.to_rfc3339()),
        ("Last reason", streak.last_reason.clone()),
    ];
    if let Some(trace) = &ctx.trace_id {
        fields.push(("Trace", trace.clone()));
    }
    let body = json!({
        "event": "recovered",
        "severity": "info",
        "source": u.source,
        "job_id": u.job_id,
        "backup_id": u.backup_id,
        "failures": streak.failures,
        "failing_since": streak.since.to_rfc3339(),
        "last_reason": streak.last_reason,
        "occurred_at": time(&u.occurred_at),
        "trace_id": ctx.trace_id,
        "trace_url": link,
        "title": title,
        "text": text,
    });
    Notification {
        kind: NotificationKind::Recovered,
        severity: Severity::Info,
        source: u.source.clone(),
        title,
        text,
        fields,
        link,
        body,
    }
}

/// A stored backup.
pub fn succeeded(u: &BackupUploaded, ctx: &Context<'_>) -> Notification {
    let engine = Engine::try_from(u.engine)
        .unwrap_or(Engine::Unspecified)
        .name();
    let reused = if u.bytes_total == 0 {
        0.0
    } else {
        100.0 * u.bytes_reused as f64 / u.bytes_total as f64
    };
    let seconds = u.duration_ms as f64 / 1000.0;
    let title = format!("Backup of {} stored", u.source);
    let text = format!(
        "Backup {} of {}: {} files, {} ({reused:.0}% reused from earlier backups) in {seconds:.1} s.",
        u.backup_id,
        u.source,
        u.files,
        ferry_runtime::human::bytes(u.bytes_total)
    );
    let mut fields = vec![
        ("Source", u.source.clone()),
        ("Engine", engine.to_string()),
        ("Databases", u.databases.join(", ")),
        ("Backup", u.backup_id.clone()),
        ("Size", ferry_runtime::human::bytes(u.bytes_total)),
        (
            "Reused",
            format!(
                "{reused:.0}% ({})",
                ferry_runtime::human::bytes(u.bytes_reused)
            ),
        ),
        ("Duration", format!("{seconds:.1} s")),
        ("Files", u.files.to_string()),
    ];
    if let Some(trace) = &ctx.trace_id {
        fields.push(("Trace", trace.clone()));
    }
    let link = ctx.link();
    let body = json!({
        "event": "succeeded",
        "severity": "info",
        "source": u.source,
        "engine": engine,
        "databases": u.databases,
        "job_id": u.job_id,
        "backup_id": u.backup_id,
        "files": u.files,
        "bytes_total": u.bytes_total,
        "bytes_uploaded": u.bytes_uploaded,
        "bytes_reused": u.bytes_reused,
        "reused_share": if u.bytes_total == 0 { 0.0 } else { u.bytes_reused as f64 / u.bytes_total as f64 },
        "duration_ms": u.duration_ms,
        "manifest_key": u.manifest_key,
        "occurred_at": time(&u.occurred_at),
        "trace_id": ctx.trace_id,
        "trace_url": link,
        "title": title,
        "text": text,
    });
    Notification {
        kind: NotificationKind::Succeeded,
        severity: Severity::Info,
        source: u.source.clone(),
        title,
        text,
        fields,
        link,
        body,
    }
}

/// A retention run.
pub fn retention(r: &RetentionApplied, ctx: &Context<'_>) -> Notification {
    let title = format!("Retention applied to {}", r.source);
    let text = format!(
        "Kept {} backups, deleted {}, collected {} objects ({} freed).",
        r.kept.len(),
        r.deleted.len(),
        r.objects_deleted,
        ferry_runtime::human::bytes(r.bytes_freed)
    );
    let deleted: Vec<String> = r
        .deleted
        .iter()
        .map(|d| format!("{} ({})", d.backup_id, d.rule))
        .collect();
    let mut fields = vec![
        ("Source", r.source.clone()),
        ("Kept", r.kept.len().to_string()),
        (
            "Deleted",
            if deleted.is_empty() {
                "none".into()
            } else {
                deleted.join(", ")
            },
        ),
        ("Freed", ferry_runtime::human::bytes(r.bytes_freed)),
    ];
    if let Some(trace) = &ctx.trace_id {
        fields.push(("Trace", trace.clone()));
    }
    let link = ctx.link();
    let body = json!({
        "event": "retention",
        "severity": "info",
        "source": r.source,
        "job_id": r.job_id,
        "kept": r.kept.iter().map(|k| json!({"backup_id": k.backup_id, "rule": k.rule})).collect::<Vec<_>>(),
        "deleted": r.deleted.iter().map(|d| json!({"backup_id": d.backup_id, "rule": d.rule})).collect::<Vec<_>>(),
        "objects_deleted": r.objects_deleted,
        "bytes_freed": r.bytes_freed,
        "occurred_at": time(&r.occurred_at),
        "trace_id": ctx.trace_id,
        "trace_url": link,
        "title": title,
        "text": text,
    });
    Notification {
        kind: NotificationKind::Retention,
        severity: Severity::Info,
        source: r.source.clone(),
        title,
        text,
        fields,
        link,
        body,
    }
}
