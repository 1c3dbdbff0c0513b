//! Ferry storage: the object store behind one interface (a local directory now, S3
//! next), the self-describing bucket layout, the manifest format, and the directory
//! spool that hands dump files from dumper to uploader.
//!
//! Layout under the configured prefix:
//! - `objects/<sha256>`: content-addressed data files, stored once across backups;
//! - `backups/<source>/<backup-id>.json`: manifests, written last: a backup exists
//!   only when its manifest does.

mod fs;
pub mod layout;
pub mod manifest;
pub mod manifest_mongo;
pub mod postgres_manifest;
pub mod spool;

use std::fmt;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::io::AsyncRead;

pub use fs::FsStore;
pub use manifest::{Manifest, ManifestFile};
pub use manifest_mongo::MongoManifest;

/// A streaming body for `put`.
pub type Body = Box<dyn AsyncRead + Send + Unpin>;

/// What a store knows about an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// The key, relative to the store's prefix.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// Last modification time.
    pub modified: SystemTime,
}

/// Storage failures, classified so callers know whether to retry.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// No object at that key.
    #[error("object {key} not found")]
    NotFound {
        /// The key.
        key: String,
    },
    /// The key is not acceptable (absolute, `..`, empty).
    #[error("invalid object key {key:?}: {why}")]
    InvalidKey {
        /// The key.
        key: String,
        /// Why it was refused.
        why: &'static str,
    },
    /// The store failed; `retryable` says whether trying again may help.
    #[error("failed to {op} {key}: {message}")]
    Backend {
        /// The operation (`put`, `get`, …).
        op: &'static str,
        /// The key.
        key: String,
        /// What the store said.
        message: String,
        /// Whether another attempt may succeed.
        retryable: bool,
    },
}

impl StorageError {
    /// Whether another attempt may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            StorageError::Backend {
                retryable: true,
                ..
            }
        )
    }

    pub(crate) fn io(op: &'static str, key: &str, err: std::io::Error) -> Self {
        use std::io::ErrorKind::*;
        if err.kind() == NotFound {
            return StorageError::NotFound {
                key: key.to_string(),
            };
        }
        // A full disk or a permission problem will not fix itself on retry; other I/O
        // errors (interrupted, timed out) may.
        let retryable = !matches!(
            err.kind(),
            PermissionDenied | StorageFull | ReadOnlyFilesystem | InvalidInput
        );
        StorageError::Backend {
            op,
            key: key.to_string(),
            message: err.to_string(),
            retryable,
        }
    }
}

/// One object store. Every implementation passes the same conformance tests.
#[async_trait]
pub trait ObjectStore: Send + Sync + fmt::Debug {
    /// Stores `body` at `key`, replacing what was there; readers never see a partial
    /// object.
    async fn put(&self, key: &str, body: Body) -> Result<u64, StorageError>;
    /// Stores `bytes` at `key` only if nothing is there; `false` if something was.
    async fn put_if_absent(&self, key: &str, bytes: Bytes) -> Result<bool, StorageError>;
    /// Streams the object at `key`.
    async fn get(&self, key: &str) -> Result<Body, StorageError>;
    /// The object's metadata, or `None` when absent.
    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StorageError>;
    /// Every object whose key starts with `prefix`, sorted by key.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StorageError>;
    /// Deletes the object at `key`; deleting an absent key is not an error.
    async fn delete(&self, key: &str) -> Result<(), StorageError>;
    /// A short description for logs (`fs:/var/lib/ferry/store/ferry`).
    fn describe(&self) -> String;
}

/// Reads a whole (small) object, such as a manifest, into memory.
pub async fn get_bytes(store: &dyn ObjectStore, key: &str) -> Result<Vec<u8>, StorageError> {
    use tokio::io::AsyncReadExt;
    let mut body = store.get(key).await?;
    let mut out = Vec::new();
    body.read_to_end(&mut out)
        .await
        .map_err(|e| StorageError::io("read", key, e))?;
    Ok(out)
}

pub(crate) fn check_key(key: &str) -> Result<(), StorageError> {
    let why = if key.is_empty() {
        Some("empty")
    } else if key.starts_with('/') {
        Some("absolute")
    } else if key
        .split('/')
        .any(|part| part == ".." || part == "." || part.is_empty())
    {
        Some("contains an empty, `.` or `..` segment")
    } else {
        None
    };
    match why {
        Some(why) => Err(StorageError::InvalidKey {
            key: key.to_string(),
            why,
        }),
        None => Ok(()),
    }
}
