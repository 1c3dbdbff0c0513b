//! PostgreSQL's WAL archive: `ferry wal-push` (PostgreSQL's `archive_command`)
//! and `ferry wal-fetch` (its `restore_command`). Both talk to the store directly:
//! PostgreSQL waits on these commands, so there is no queue in between. The
//! layout is [`ferry_storage::wal`]'s.
//!
//! A push never replaces what is stored: the object is created only if absent,
//! and when one is already there its content is compared, so a retry after a
//! crash succeeds and a different file under the same name (two clusters
//! archiving into one source, a restored cluster that was not promoted onto a
//! new timeline) fails loudly, leaving the stored one intact.

pub mod report;

use std::io::Read;
use std::path::Path;

use bytes::Bytes;
use ferry_storage::retry::RetryPolicy;
use ferry_storage::wal::{WalFileName, wal_key};
use ferry_storage::{ObjectStore, StorageError};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

/// zstd level of archived WAL: WAL compresses well even at low levels, and
/// PostgreSQL waits for each push.
const ZSTD_LEVEL: i32 = 3;

/// Store calls are retried briefly here (PostgreSQL retries a failed push too,
/// but only after a pause, while WAL keeps coming).
const RETRY: RetryPolicy = RetryPolicy {
    attempts: 4,
    base: std::time::Duration::from_millis(200),
    max: std::time::Duration::from_secs(2),
};

/// How a push ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pushed {
    /// Stored now: `bytes` of WAL as `stored` compressed bytes.
    Stored {
        /// The file's size.
        bytes: u64,
        /// The object's size.
        stored: u64,
    },
    /// The same content was already stored (a retried push).
    AlreadyStored,
}

/// Why a push or fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// The file name is not a WAL file's.
    #[error("{0}")]
    BadName(String),
    /// Another file is stored under this name: never overwritten.
    #[error(
        "{key} already holds different content (SHA-256 {stored}) than {path} (SHA-256 {pushed}); it is never overwritten. Two clusters may be archiving into source {source_name}: give each its own source, and check that a restored cluster was promoted onto a new timeline before it archives"
    )]
    Conflict {
        /// The object.
        key: String,
        /// The file pushed.
        path: String,
        /// The source.
        source_name: String,
        /// SHA-256 of what is stored (of its content, decompressed).
        stored: String,
        /// SHA-256 of the file.
        pushed: String,
    },
    /// The stored object cannot be decompressed: damaged.
    #[error(
        "{key} is damaged ({why}): restore it from a copy, or take a new base backup so that restores no longer need it"
    )]
    Damaged {
        /// The object.
        key: String,
        /// What the decoder said.
        why: String,
    },
    /// Reading or writing a local file failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// The store failed (after retries).
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Stores the WAL file at `path` (as PostgreSQL's `%p` names it) in `source`'s
/// archive.
pub async fn push(store: &dyn ObjectStore, source: &str, path: &Path) -> Result<Pushed, WalError> {
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = WalFileName::parse(&file_name).map_err(WalError::BadName)?;
    let key = wal_key(source, &name);
    let content = tokio::fs::read(path).await.map_err(|e| WalError::Io {
        what: format!("reading {}", path.display()),
        source: e,
    })?;
    let bytes = content.len() as u64;
    let (pushed_sha, compressed) = tokio::task::spawn_blocking(move || -> std::io::Result<_> {
        let sha = hex::encode(Sha256::digest(&content));
        let mut encoder = zstd::stream::Encoder::new(Vec::new(), ZSTD_LEVEL)?;
        encoder.include_checksum(true)?;
        encoder.include_contentsize(true)?;
        encoder.set_pledged_src_size(Some(content.len() as u64))?;
        std::io::Write::write_all(&mut encoder, &content)?;
        Ok((sha, Bytes::from(encoder.finish()?)))
    })
    .await
    .expect("compression task")
    .map_err(|e| WalError::Io {
        what: format!("compressing {}", path.display()),
        source: e,
    })?;
    let stored = compressed.len() as u64;
    let created = RETRY
        .run("wal-push", || store.put_if_absent(&key, compressed.clone()))
        .await?;
    if created {
        return Ok(Pushed::Stored { bytes, stored });
    }
    let stored_sha = match content_sha256(store, &key).await {
        Ok(sha) => sha,
        Err(WalError::Damaged { why, .. }) => format!("unreadable: {why}"),
        Err(e) => return Err(e),
    };
    if stored_sha == pushed_sha {
        Ok(Pushed::AlreadyStored)
    } else {
        Err(WalError::Conflict {
            key,
            path: path.display().to_string(),
            source_name: source.to_string(),
            stored: stored_sha,
            pushed: pushed_sha,
        })
    }
}

/// The SHA-256 of an archived object's content (decompressed, streaming),
/// checking the zstd frame's own checksum on the way.
pub async fn content_sha256(store: &dyn ObjectStore, key: &str) -> Result<String, WalError> {
    let body = RETRY.run("wal read", || store.get(key)).await?;
    let key_owned = key.to_string();
    tokio::task::spawn_blocking(move || {
        let input = tokio_util::io::SyncIoBridge::new(body);
        let mut decoder =
            zstd::stream::read::Decoder::new(input).map_err(|e| damaged(&key_owned, e))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = decoder.read(&mut buf).map_err(|e| damaged(&key_owned, e))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        Ok(hex::encode(hasher.finalize()))
    })
    .await
    .expect("hashing task")
}

fn damaged(key: &str, e: std::io::Error) -> WalError {
    WalError::Damaged {
        key: key.to_string(),
        why: e.to_string(),
    }
}

/// Writes archived file `name` of `source` to `dest` (PostgreSQL's `%p`);
/// `Ok(false)` when the archive does not hold it. The file appears at `dest`
/// only once complete and checked.
pub async fn fetch(
    store: &dyn ObjectStore,
    source: &str,
    name: &str,
    dest: &Path,
) -> Result<bool, WalError> {
    let name = WalFileName::parse(name).map_err(WalError::BadName)?;
    let key = wal_key(source, &name);
    let body = match RETRY.run("wal-fetch", || store.get(&key)).await {
        Ok(body) => body,
        Err(StorageError::NotFound { .. }) => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    let partial = dest.with_file_name(format!(
        "{}.ferry-partial",
        dest.file_name().unwrap_or_default().to_string_lossy()
    ));
    let io = |what: &str, e: std::io::Error| WalError::Io {
        what: format!("{what} {}", partial.display()),
        source: e,
    };
    let mut out = tokio::fs::File::create(&partial)
        .await
        .map_err(|e| io("creating", e))?;
    let key_owned = key.clone();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    let decode = tokio::task::spawn_blocking(move || -> Result<(), WalError> {
        let input = tokio_util::io::SyncIoBridge::new(body);
        let mut decoder =
            zstd::stream::read::Decoder::new(input).map_err(|e| damaged(&key_owned, e))?;
        loop {
            let mut buf = vec![0u8; 1 << 20];
            let n = decoder.read(&mut buf).map_err(|e| damaged(&key_owned, e))?;
            if n == 0 {
                return Ok(());
            }
            buf.truncate(n);
            if tx.blocking_send(buf).is_err() {
                return Ok(());
            }
        }
    });
    let mut write_result = Ok(());
    while let Some(chunk) = rx.recv().await {
        if let Err(e) = out.write_all(&chunk).await {
            write_result = Err(io("writing", e));
            break;
        }
    }
    drop(rx);
    let decoded = decode.await.expect("decoding task");
    let finished = async {
        write_result?;
        decoded?;
        out.sync_all().await.map_err(|e| io("syncing", e))?;
        tokio::fs::rename(&partial, dest)
            .await
            .map_err(|e| io("renaming", e))
    }
    .await;
    if finished.is_err() {
        let _ = tokio::fs::remove_file(&partial).await;
    }
    finished.map(|()| true)
}
