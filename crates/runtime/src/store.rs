//! Opening the configured object store.

use std::sync::Arc;

use ferry_storage::{FsStore, ObjectStore};

use crate::config::{StorageConfig, StorageKind};

/// Opens the store named by `[storage]`.
pub fn open(config: &StorageConfig) -> anyhow::Result<Arc<dyn ObjectStore>> {
    match config.kind {
        StorageKind::Fs => {
            let store = FsStore::new(&config.path, &config.prefix).map_err(|e| {
                anyhow::anyhow!(
                    "failed to open the store directory {} (storage.path): {e}",
                    config.path.display()
                )
            })?;
            Ok(Arc::new(store))
        }
        // Refused by validation until the S3 store exists.
        StorageKind::S3 => anyhow::bail!("storage.kind = \"s3\" is not available in this version"),
    }
}
