//! `ferry list`: backups from the manifests, newest first.

use ferry_storage::{Catalog, Manifest, ObjectStore};
use futures::StreamExt;

/// Every backup (of one source, when given), newest first in the catalog's order
/// (the time in the backup id): the same order `--backup latest` resolves by.
pub async fn backups(
    store: &dyn ObjectStore,
    source: Option<&str>,
) -> anyhow::Result<Vec<Manifest>> {
    let catalog = Catalog::new(store);
    let entries = catalog.backups(source).await?;
    let mut manifests = catalog.manifests(entries);
    let mut out = Vec::new();
    while let Some((entry, manifest)) = manifests.next().await {
        match manifest {
            Ok(m) => out.push(m),
            // Deleted by retention since the listing.
            Err(ferry_storage::CatalogError::NoSuchBackup { .. }) => {}
            Err(ferry_storage::CatalogError::Unreadable { key, why }) => {
                eprintln!("warning: {key}: {why}")
            }
            Err(e) => {
                return Err(anyhow::anyhow!(
                    "backup {} of {}: {e}",
                    entry.id,
                    entry.source
                ));
            }
        }
    }
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
