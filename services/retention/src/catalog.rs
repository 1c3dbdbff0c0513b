//! What a source has in the store, read for planning: its backups (from manifest
//! keys, without reading manifests) and its keep marks; and the deletion of the
//! backups a plan expires.

use chrono::{DateTime, Utc};
use ferry_storage::layout::{
    backup_id_of, backup_time_of, keep_mark_key, kept_backup_id_of, manifest_key, source_prefix,
};
use ferry_storage::{Manifest, ObjectStore, StorageError, get_bytes};

use crate::plan::{BackupInfo, Plan};

/// Every backup of `source`, with its time and keep mark, from one listing.
///
/// A backup's time is the one its id starts with (when its job was requested), so
/// planning costs a listing, not a read per manifest; a manifest whose id carries
/// no time is read for its completion time.
pub async fn load_backups(
    store: &dyn ObjectStore,
    source: &str,
) -> Result<Vec<BackupInfo>, StorageError> {
    let listing = store.list(&source_prefix(source)).await?;
    let marked: std::collections::HashSet<String> = listing
        .iter()
        .filter_map(|m| kept_backup_id_of(source, &m.key))
        .collect();
    let mut backups = Vec::new();
    for meta in &listing {
        let Some(id) = backup_id_of(source, &meta.key) else {
            continue;
        };
        let time = match backup_time_of(&id) {
            Some(t) => t,
            None => match completed_at(store, &meta.key).await? {
                Some(t) => t,
                // An unreadable manifest is never deleted by policy: an operator
                // must look at it. It still protects its objects from collection.
                None => continue,
            },
        };
        backups.push(BackupInfo {
            keep_mark: marked.contains(&id),
            id,
            time,
        });
    }
    Ok(backups)
}

async fn completed_at(
    store: &dyn ObjectStore,
    key: &str,
) -> Result<Option<DateTime<Utc>>, StorageError> {
    let bytes = match get_bytes(store, key).await {
        Ok(b) => b,
        // Deleted since the listing: nothing to plan.
        Err(StorageError::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(e),
    };
    match Manifest::from_json(&bytes) {
        Ok(m) => Ok(Some(m.completed_at)),
        Err(e) => {
            tracing::warn!(manifest = %key, error = %e, "unreadable manifest left out of retention; it is kept");
            Ok(None)
        }
    }
}

/// Deletes the manifests of the backups `plan` expires, newest plan first. Only
/// manifests: their objects are collected afterwards by garbage collection, so a
/// crash here leaves unreferenced objects, never a manifest without its objects.
pub async fn delete_expired(
    store: &dyn ObjectStore,
    source: &str,
    plan: &Plan,
) -> Result<(), StorageError> {
    for d in &plan.delete {
        store.delete(&manifest_key(source, &d.id)).await?;
        tracing::info!(source, backup_id = %d.id, rule = d.rule, "expired backup deleted");
    }
    Ok(())
}

/// Why a keep mark could not be set.
#[derive(Debug, thiserror::Error)]
pub enum KeepError {
    /// The backup does not exist.
    #[error(
        "backup {backup_id} of {source_name} not found; `ferry list --source {source_name}` shows the backups"
    )]
    NoSuchBackup {
        /// The source.
        source_name: String,
        /// The backup id asked for.
        backup_id: String,
    },
    /// The store failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Marks a backup so that no policy deletes it (`keep = true`), or removes the mark.
pub async fn set_keep_mark(
    store: &dyn ObjectStore,
    source: &str,
    backup_id: &str,
    keep: bool,
) -> Result<(), KeepError> {
    let mark = keep_mark_key(source, backup_id);
    if !keep {
        store.delete(&mark).await?;
        return Ok(());
    }
    if store
        .head(&manifest_key(source, backup_id))
        .await?
        .is_none()
    {
        return Err(KeepError::NoSuchBackup {
            source_name: source.to_string(),
            backup_id: backup_id.to_string(),
        });
    }
    let note = serde_json::json!({ "kept_at": Utc::now().to_rfc3339() });
    store
        .put_if_absent(&mark, serde_json::to_vec(&note).unwrap_or_default().into())
        .await?;
    Ok(())
}
