//! `ferry list`: backups from the manifests, newest first.

use ferry_storage::layout::{BACKUPS_PREFIX, source_prefix};
use ferry_storage::{Manifest, ObjectStore, get_bytes};

/// Every backup (of one source, when given), newest first.
pub async fn backups(
    store: &dyn ObjectStore,
    source: Option<&str>,
) -> anyhow::Result<Vec<Manifest>> {
    let prefix = source
        .map(source_prefix)
        .unwrap_or_else(|| BACKUPS_PREFIX.to_string());
    let mut out = Vec::new();
    for meta in store.list(&prefix).await? {
        if !meta.key.ends_with(".json") {
            continue;
        }
        let bytes = get_bytes(store, &meta.key).await?;
        match Manifest::from_json(&bytes) {
            Ok(m) => out.push(m),
            Err(e) => eprintln!("warning: {}: {e}", meta.key),
        }
    }
    out.sort_by(|a, b| {
        b.completed_at
            .cmp(&a.completed_at)
            .then_with(|| b.backup_id.cmp(&a.backup_id))
    });
    Ok(out)
}

/// A human-readable table.
pub fn table(backups: &[Manifest]) -> String {
    let mut out = format!(
        "{:<16} {:<28} {:<20} {:>6} {:>12} {:>7} {:>9}\n",
        "SOURCE", "BACKUP", "COMPLETED (UTC)", "FILES", "SIZE", "REUSED", "DURATION"
    );
    for m in backups {
        let reused = if m.bytes_total == 0 {
            0.0
        } else {
            100.0 * m.bytes_reused as f64 / m.bytes_total as f64
        };
        let secs = (m.completed_at - m.started_at).num_milliseconds() as f64 / 1000.0;
        out.push_str(&format!(
            "{:<16} {:<28} {:<20} {:>6} {:>12} {:>6.0}% {:>8.1}s\n",
            m.source,
            m.backup_id,
            m.completed_at.format("%Y-%m-%d %H:%M:%S"),
            m.files.len(),
            ferry_runtime::human::bytes(m.bytes_total),
            reused,
            secs
        ));
    }
    out
}
