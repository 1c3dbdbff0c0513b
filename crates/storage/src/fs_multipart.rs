//! Multipart uploads for the local-directory store, with S3's semantics: parts are
//! files under `.tmp/uploads/<upload-id>/`, invisible to readers until `complete`
//! concatenates them into a temporary file and renames it to the key.

use std::path::PathBuf;

use bytes::Bytes;
use tokio::io::AsyncWriteExt;

use crate::{FsStore, PartReceipt, PendingUpload, StorageError};

const UPLOADS: &str = ".tmp/uploads";
/// The file in an upload's directory naming the key it creates.
const KEY_FILE: &str = "key";

fn upload_dir(store: &FsStore, upload_id: &str, key: &str) -> Result<PathBuf, StorageError> {
    if upload_id.is_empty() || !upload_id.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
        return Err(StorageError::Backend {
            op: "upload a part of",
            key: key.to_string(),
            message: format!("unknown upload id {upload_id:?}"),
            retryable: false,
        });
    }
    Ok(store.root().join(UPLOADS).join(upload_id))
}

fn no_such_upload(key: &str, upload_id: &str) -> StorageError {
    StorageError::Backend {
        op: "upload a part of",
        key: key.to_string(),
        message: format!("no upload {upload_id} (NoSuchUpload): it was aborted or completed"),
        retryable: false,
    }
}

pub(crate) async fn create(store: &FsStore, key: &str) -> Result<String, StorageError> {
    store.path(key)?;
    let id = uuid::Uuid::now_v7().to_string();
    let dir = upload_dir(store, &id, key)?;
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(|e| StorageError::io("start upload of", key, e))?;
    tokio::fs::write(dir.join(KEY_FILE), key)
        .await
        .map_err(|e| StorageError::io("start upload of", key, e))?;
    Ok(id)
}

pub(crate) async fn upload_part(
    store: &FsStore,
    key: &str,
    upload_id: &str,
    number: u32,
    bytes: Bytes,
) -> Result<PartReceipt, StorageError> {
    let dir = upload_dir(store, upload_id, key)?;
    if !tokio::fs::try_exists(dir.join(KEY_FILE))
        .await
        .unwrap_or(false)
    {
        return Err(no_such_upload(key, upload_id));
    }
    if !(1..=10_000).contains(&number) {
        return Err(StorageError::Backend {
            op: "upload a part of",
            key: key.to_string(),
            message: format!("part number {number} is outside 1..=10000"),
            retryable: false,
        });
    }
    let etag = hex::encode(crate::content_md5(&bytes));
    // Written beside, then renamed: a retried part replaces the old one whole.
    let tmp = dir.join(format!("{number:05}.partial"));
    tokio::fs::write(&tmp, &bytes)
        .await
        .map_err(|e| StorageError::io("upload a part of", key, e))?;
    tokio::fs::rename(&tmp, dir.join(format!("{number:05}")))
        .await
        .map_err(|e| StorageError::io("upload a part of", key, e))?;
    Ok(PartReceipt { number, etag })
}

pub(crate) async fn complete(
    store: &FsStore,
    key: &str,
    upload_id: &str,
    parts: &[PartReceipt],
) -> Result<(), StorageError> {
    let dir = upload_dir(store, upload_id, key)?;
    if !tokio::fs::try_exists(dir.join(KEY_FILE))
        .await
        .unwrap_or(false)
    {
        return Err(no_such_upload(key, upload_id));
    }
    let mut sorted = parts.to_vec();
    sorted.sort_by_key(|p| p.number);
    let tmp = store.temp_path();
    let result = async {
        let mut out = tokio::fs::File::create(&tmp).await?;
        for part in &sorted {
            let mut file = tokio::fs::File::open(dir.join(format!("{:05}", part.number))).await?;
            tokio::io::copy(&mut file, &mut out).await?;
        }
        out.flush().await?;
        out.sync_all().await?;
        Ok::<_, std::io::Error>(())
    }
    .await;
    if let Err(e) = result {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(StorageError::io("complete upload of", key, e));
    }
    store.commit_temp(&tmp, key).await?;
    let _ = tokio::fs::remove_dir_all(&dir).await;
    Ok(())
}

pub(crate) async fn abort(store: &FsStore, key: &str, upload_id: &str) -> Result<(), StorageError> {
    let dir = upload_dir(store, upload_id, key)?;
    match tokio::fs::remove_dir_all(&dir).await {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(StorageError::io("abort upload of", key, e))
        }
        _ => Ok(()),
    }
}

pub(crate) async fn list(
    store: &FsStore,
    prefix: &str,
) -> Result<Vec<PendingUpload>, StorageError> {
    let mut out = Vec::new();
    let mut entries = match tokio::fs::read_dir(store.root().join(UPLOADS)).await {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(StorageError::io("list uploads under", prefix, e)),
    };
    while let Some(entry) = entries
        .next_entry()
        .await
        .map_err(|e| StorageError::io("list uploads under", prefix, e))?
    {
        // An upload directory without its key file is one being created or removed.
        let Ok(key) = tokio::fs::read_to_string(entry.path().join(KEY_FILE)).await else {
            continue;
        };
        if key.starts_with(prefix) {
            out.push(PendingUpload {
                key,
                upload_id: entry.file_name().to_string_lossy().into_owned(),
                initiated: entry.metadata().await.ok().and_then(|m| m.modified().ok()),
            });
        }
    }
    out.sort_by(|a, b| (&a.key, &a.upload_id).cmp(&(&b.key, &b.upload_id)));
    Ok(out)
}
