//! What the commands print: the human-readable tables and the `--json` documents, in
//! one place, so that every command formats times, sizes and JSON alike. Scripts and
//! tests read these: a column or key renamed here breaks them.

use chrono::{DateTime, Utc};
use ferry_retention::Plan;
use ferry_runtime::registry::{Origin, RegisteredSource};
use ferry_storage::Manifest;
use serde::Serialize;

use crate::commands::status::SourceStatus;

/// Prints `value` as pretty JSON (the `--json` of `list`, `status`, `sources list`
/// and `retention`).
pub fn json<T: Serialize + ?Sized>(value: &T) -> serde_json::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Prints `value` as JSON on one line (`verify --json`).
pub fn json_line(value: &serde_json::Value) {
    println!("{value}");
}

/// A time in the tables' form (UTC), or `-`.
fn when(t: Option<DateTime<Utc>>) -> String {
    t.map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| "-".into())
}

/// `file` or `registry`.
pub fn origin(origin: Origin) -> &'static str {
    match origin {
        Origin::File => "file",
        Origin::Registry => "registry",
    }
}

/// `ferry list`: the table's header line.
pub fn backups_header() -> String {
    format!(
        "{:<16} {:<28} {:<20} {:>6} {:>12} {:>7} {:>9}\n",
        "SOURCE", "BACKUP", "COMPLETED (UTC)", "FILES", "SIZE", "REUSED", "DURATION"
    )
}

/// `ferry list`: one backup's row.
pub fn backup_row(m: &Manifest) -> String {
    let reused = if m.bytes_total == 0 {
        0.0
    } else {
        100.0 * m.bytes_reused as f64 / m.bytes_total as f64
    };
    let secs = (m.completed_at - m.started_at).num_milliseconds() as f64 / 1000.0;
    format!(
        "{:<16} {:<28} {:<20} {:>6} {:>12} {:>6.0}% {:>8.1}s\n",
        m.source,
        m.backup_id,
        m.completed_at.format("%Y-%m-%d %H:%M:%S"),
        m.files.len(),
        ferry_runtime::human::bytes(m.bytes_total),
        reused,
        secs
    )
}

/// `ferry list`: the whole table (`ferry list` itself streams it row by row).
pub fn backups_table(backups: &[Manifest]) -> String {
    let mut out = backups_header();
    for m in backups {
        out.push_str(&backup_row(m));
    }
    out
}

/// `ferry status`: one row per source.
pub fn status_table(statuses: &[SourceStatus]) -> String {
    let mut out = format!(
        "{:<20} {:<9} {:<28} {:<20} {:<36} {:<20} {}\n",
        "SOURCE", "ORIGIN", "LAST SUCCESS", "AT (UTC)", "LAST FAILURE", "NEXT RUN (UTC)", "RUNNING"
    );
    for s in statuses {
        let success = s
            .last_success
            .as_ref()
            .map(|x| x.backup_id.clone())
            .unwrap_or_else(|| "-".into());
        let success_at = when(s.last_success.as_ref().and_then(|x| x.at));
        let failure = s
            .last_failure
            .as_ref()
            .map(|f| format!("{} {} ({})", when(f.at), f.reason, f.stage))
            .unwrap_or_else(|| "-".into());
        let next = if s.paused {
            "paused".to_string()
        } else {
            when(s.next_run)
        };
        let running = s
            .running
            .as_ref()
            .map(|r| {
                format!(
                    "job {} on {}",
                    r["job_id"].as_str().unwrap_or("?"),
                    r["node"].as_str().unwrap_or("?")
                )
            })
            .unwrap_or_else(|| "-".into());
        out.push_str(&format!(
            "{:<20} {:<9} {:<28} {:<20} {:<36} {:<20} {}\n",
            s.source, s.origin, success, success_at, failure, next, running
        ));
        if let Some(p) = &s.pitr {
            let window = match (&p.from, &p.to) {
                (Some(from), Some(to)) => format!(
                    "restorable from {} to {}",
                    when(Some(from.time)),
                    when(Some(to.time))
                ),
                _ => "nothing restorable yet".into(),
            };
            out.push_str(&format!(
                "  point in time: {window}, recovery point {}, {} gap{}\n",
                p.recovery_point_seconds
                    .map_or("-".to_string(), |v| format!("{v:.0}s")),
                p.gaps,
                if p.gaps == 1 { "" } else { "s" }
            ));
        }
        if let Some(w) = &s.wal {
            out.push_str(&format!(
                "  WAL archive: {} base backup{}, newest segment {} archived {}{}\n",
                w.base_backups,
                if w.base_backups == 1 { "" } else { "s" },
                w.last_segment.as_deref().unwrap_or("-"),
                when(w.last_archived),
                if w.missing > 0 {
                    format!(
                        ", {} MISSING segments (ferry pitr status names them)",
                        w.missing
                    )
                } else {
                    String::new()
                }
            ));
        }
    }
    out
}

/// `ferry sources list --json`: the source as configured, where it is defined,
/// whether it is paused.
pub fn sources_json(sources: &[RegisteredSource]) -> Vec<serde_json::Value> {
    sources
        .iter()
        .map(|s| {
            serde_json::json!({
                "source": s.config,
                "origin": origin(s.origin),
                "paused": s.paused,
            })
        })
        .collect()
}

/// `ferry sources list`: one row per source.
pub fn sources_table(sources: &[RegisteredSource]) -> String {
    let mut out = format!(
        "{:<20} {:<9} {:<9} {:<7} {:<20} TIMEZONE\n",
        "SOURCE", "ENGINE", "ORIGIN", "PAUSED", "SCHEDULE"
    );
    for s in sources {
        out.push_str(&format!(
            "{:<20} {:<9} {:<9} {:<7} {:<20} {}\n",
            s.config.name,
            format!("{:?}", s.config.engine).to_lowercase(),
            origin(s.origin),
            if s.paused { "yes" } else { "no" },
            s.config.schedule.as_deref().unwrap_or("manual"),
            s.config.timezone
        ));
    }
    out
}

/// `ferry retention plan --json`: what is kept and what is deleted, with the rule.
pub fn plan_json(plan: &Plan) -> serde_json::Value {
    let rows = |ds: &[ferry_retention::Decision]| -> Vec<serde_json::Value> {
        ds.iter()
            .map(|d| serde_json::json!({"backup_id": d.id, "rule": d.rule}))
            .collect()
    };
    serde_json::json!({"keep": rows(&plan.keep), "delete": rows(&plan.delete)})
}

/// `ferry retention plan`: newest first, kept and deleted interleaved by time.
pub fn plan_table(source: &str, plan: &Plan) -> String {
    let mut rows: Vec<(&str, &str, &str)> = plan
        .keep
        .iter()
        .map(|d| (d.id.as_str(), "keep", d.rule))
        .chain(
            plan.delete
                .iter()
                .map(|d| (d.id.as_str(), "DELETE", d.rule)),
        )
        .collect();
    rows.sort_by(|a, b| b.0.cmp(a.0));
    let mut out = format!("{:<32} {:<7} {}\n", "BACKUP", "ACTION", "RULE");
    for (id, action, rule) in rows {
        out.push_str(&format!("{id:<32} {action:<7} {rule}\n"));
    }
    out.push_str(&format!(
        "{source}: {} kept, {} to delete\n",
        plan.keep.len(),
        plan.delete.len()
    ));
    out
}

/// `ferry retention apply --json`: one `RetentionApplied` event per source.
pub fn applied_json(e: &ferry_proto::v1::RetentionApplied) -> serde_json::Value {
    serde_json::json!({
        "source": e.source,
        "kept": e.kept.iter().map(|k| serde_json::json!({"backup_id": k.backup_id, "rule": k.rule})).collect::<Vec<_>>(),
        "deleted": e.deleted.iter().map(|k| serde_json::json!({"backup_id": k.backup_id, "rule": k.rule})).collect::<Vec<_>>(),
        "objects_deleted": e.objects_deleted,
        "bytes_freed": e.bytes_freed,
    })
}

/// `ferry pitr status`: the windows, the gaps, the recovery point.
pub fn pitr_table(s: &crate::commands::pitr::PitrStatus) -> String {
    let mut out = format!("{}\n", s.source);
    if let Some(wal) = &s.wal {
        out.push_str(&wal_table(wal));
        return out;
    }
    if s.windows.is_empty() && s.gaps.is_empty() {
        out.push_str("  no changes captured (is pitr enabled and a capture worker running?)\n");
        return out;
    }
    out.push_str(&format!(
        "  {:<8} {:<22} {:<22} {:>9} {:>12}  {}\n",
        "", "FROM (UTC)", "TO (UTC)", "SEGMENTS", "OPERATIONS", "CLUSTER TIMES / CAUSE"
    ));
    let mut rows: Vec<(String, String)> = Vec::new();
    for w in &s.windows {
        rows.push((
            w.from.cluster_time.clone(),
            format!(
                "  {:<8} {:<22} {:<22} {:>9} {:>12}  {} to {}\n",
                "window",
                when(Some(w.from.time)),
                when(Some(w.to.time)),
                w.segments,
                w.operations,
                w.from.cluster_time,
                w.to.cluster_time
            ),
        ));
    }
    for g in &s.gaps {
        rows.push((
            g.from.cluster_time.clone(),
            format!(
                "  {:<8} {:<22} {:<22} {:>9} {:>12}  {}{}\n",
                "GAP",
                when(Some(g.from.time)),
                when(Some(g.to.time)),
                "-",
                "-",
                g.cause,
                if g.recorded {
                    ""
                } else {
                    " (found by checking the chain)"
                }
            ),
        ));
    }
    // In time order: cluster times as `t:i` sort by their numbers.
    rows.sort_by_key(|(k, _)| {
        k.parse::<ferry_storage::pitr::ClusterTime>()
            .unwrap_or(ferry_storage::pitr::ClusterTime::new(0, 0))
    });
    for (_, row) in rows {
        out.push_str(&row);
    }
    let secs = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}s"));
    out.push_str(&format!(
        "  recovery point {} behind now; capture lag {}{}\n",
        secs(s.recovery_point_seconds),
        secs(s.capture_lag_seconds),
        s.captured_by
            .as_ref()
            .map(|b| format!("; newest segment by {b}"))
            .unwrap_or_default()
    ));
    out
}

/// The physical PostgreSQL part of `ferry pitr status`.
fn wal_table(w: &crate::commands::pitr::WalStatus) -> String {
    let mut out = String::new();
    if w.base_backups.is_empty() {
        out.push_str("  no base backup yet (run `ferry backup now --source <name> --wait`)\n");
    }
    for b in &w.base_backups {
        out.push_str(&format!(
            "  base     {:<28} timeline {:<3} WAL {} to {}, restores to {} or later\n",
            b.backup_id,
            b.timeline,
            b.start_lsn,
            b.stop_lsn,
            when(Some(b.consistent_at))
        ));
    }
    if w.timelines.is_empty() {
        out.push_str("  no WAL archived (is archive_command = 'ferry wal-push …' set?)\n");
    }
    for t in &w.timelines {
        out.push_str(&format!(
            "  timeline {:<3} {} to {} ({} segments, {} bytes, last archived {}){}\n",
            t.timeline,
            t.first_segment.as_deref().unwrap_or("-"),
            t.last_segment.as_deref().unwrap_or("-"),
            t.segments,
            t.bytes,
            when(t.last_archived),
            t.branched_from
                .as_ref()
                .map(|b| format!(", branched from {b}"))
                .unwrap_or_default()
        ));
    }
    for m in &w.missing {
        out.push_str(&format!(
            "  MISSING  {} to {} ({} segments): no restore can pass them\n",
            m.first, m.last, m.count
        ));
    }
    for d in &w.damaged {
        out.push_str(&format!("  DAMAGED  {d}\n"));
    }
    out
}
