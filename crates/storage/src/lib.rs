//! Ferry storage: the object store behind one interface (a local directory or any
//! S3-compatible service), the self-describing bucket layout, the manifest format,
//! and the spool (a directory or a JetStream object store) that hands dump files
//! from dumper to uploader.
//!
//! Layout under the configured prefix:
//! - `objects/<sha256>`: content-addressed data files, stored once across backups;
//! - `backups/<source>/<backup-id>.json`: manifests, written last: a backup exists
//!   only when its manifest does;
//! - `pitr/<source>/<start>-<end>.json` (and `.gap.json`): segments of captured
//!   changes and gaps between base backups (see [`pitr`]);
//! - `wal/<source>/<timeline>/<file>`: PostgreSQL's WAL archive, written by
//!   `ferry wal-push` (see [`wal`]).

pub mod catalog;
pub mod encryption;
mod fs;
mod fs_multipart;
pub mod layout;
pub mod manifest;
pub mod pitr;
pub mod retry;
mod s3;
mod s3_error;
pub mod spool;
pub mod wal;

use std::fmt;
use std::ops::Range;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use tokio::io::AsyncRead;

pub use catalog::{BackupEntry, Catalog, CatalogError};
pub use fs::FsStore;
pub use manifest::{
    Compression, Engine, Manifest, ManifestFile, MongoManifest, PostgresManifest, Stored,
};
pub use s3::{RequestChecksum, S3Credentials, S3Options, S3Store};

/// A streaming body for `put`.
pub type Body = Box<dyn AsyncRead + Send + Unpin>;

/// A listing: pages of objects, each at most [`LIST_PAGE`] long.
pub type ListPages<'a> = BoxStream<'a, Result<Vec<ObjectMeta>, StorageError>>;

/// Objects per listing page: S3's own maximum, so one page is one request there.
pub const LIST_PAGE: usize = 1000;

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

/// One uploaded part of a multipart upload, as `complete_multipart` needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartReceipt {
    /// Part number, from 1.
    pub number: u32,
    /// The store's tag for the part.
    pub etag: String,
}

/// A multipart upload that was started and neither completed nor aborted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingUpload {
    /// The key it would create.
    pub key: String,
    /// The store's id of the upload.
    pub upload_id: String,
    /// When it was started, when the store says.
    pub initiated: Option<SystemTime>,
}

/// The MD5 of `bytes` as S3's `Content-MD5` carries it: the store recomputes it on
/// arrival and refuses a body damaged on the way.
pub fn content_md5(bytes: &[u8]) -> [u8; 16] {
    use md5::Digest;
    md5::Md5::digest(bytes).into()
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
    /// Every object whose key starts with `prefix`, as a stream of pages of at most
    /// [`LIST_PAGE`] objects, so a listing costs one page of memory whatever the
    /// size of the bucket. S3 stores yield keys in key order; the directory store
    /// yields each directory in the order the file system returns it (sorting a
    /// million-entry directory would mean holding it), so callers that need an
    /// order sort what they keep.
    fn list<'a>(&'a self, prefix: &'a str) -> ListPages<'a>;
    /// Deletes the object at `key`; deleting an absent key is not an error.
    async fn delete(&self, key: &str) -> Result<(), StorageError>;
    /// A short description for logs (`fs:/var/lib/ferry/store/ferry`).
    fn describe(&self) -> String;

    /// Stores `bytes` at `key` in one request. The store checks the body against
    /// `md5` (computed from `bytes` when `None`) and refuses it on a mismatch with a
    /// permanent error, so bytes damaged in transit are never stored.
    async fn put_bytes(
        &self,
        key: &str,
        bytes: Bytes,
        md5: Option<[u8; 16]>,
    ) -> Result<(), StorageError>;
    /// Streams `range` (byte offsets, end exclusive) of the object at `key`; a range
    /// past the end is cut at the end.
    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Body, StorageError>;
    /// Deletes every key; absent keys are not an error.
    async fn delete_many(&self, keys: &[String]) -> Result<(), StorageError>;
    /// Starts a multipart upload of `key`; nothing is visible until it completes.
    async fn create_multipart(&self, key: &str) -> Result<String, StorageError>;
    /// Uploads part `number` (1..=10,000); every part but the last must be at least
    /// 5 MiB on S3. The body is checked with Content-MD5 like [`Self::put_bytes`].
    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: u32,
        bytes: Bytes,
    ) -> Result<PartReceipt, StorageError>;
    /// Makes the object visible from `parts`, in part-number order.
    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[PartReceipt],
    ) -> Result<(), StorageError>;
    /// Drops an unfinished upload and its parts; an unknown id is not an error.
    async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<(), StorageError>;
    /// Unfinished multipart uploads whose key starts with `prefix`.
    async fn list_multipart(&self, prefix: &str) -> Result<Vec<PendingUpload>, StorageError>;
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

/// The size and SHA-256 of the object at `key` as stored, read through (streaming).
pub async fn stored_digest(store: &dyn ObjectStore, key: &str) -> Result<Stored, StorageError> {
    use sha2::Digest;
    use tokio::io::AsyncReadExt;
    let mut body = store.get(key).await?;
    let mut hasher = sha2::Sha256::new();
    let mut size = 0u64;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = body
            .read(&mut buf)
            .await
            .map_err(|e| StorageError::Backend {
                op: "read",
                key: key.to_string(),
                message: e.to_string(),
                retryable: true,
            })?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok(Stored {
        size,
        sha256: hex::encode(hasher.finalize()),
    })
}

/// The size of the object at `key`, or `NotFound`.
pub async fn size_of(store: &dyn ObjectStore, key: &str) -> Result<u64, StorageError> {
    match store.head(key).await? {
        Some(meta) => Ok(meta.size),
        None => Err(StorageError::NotFound {
            key: key.to_string(),
        }),
    }
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
