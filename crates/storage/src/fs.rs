//! The local-directory object store: the embedded default, also what a NAS mount or a
//! mounted volume looks like.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::io::AsyncWriteExt;

use std::ops::Range;

use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::{Body, ObjectMeta, ObjectStore, PartReceipt, PendingUpload, StorageError, check_key};

/// Temporary files live here until renamed into place, so a crash mid-write never
/// leaves a partial object under its final key. `list` skips this directory.
const TMP_DIR: &str = ".tmp";

/// Objects as files under `root/<prefix>/`.
#[derive(Debug, Clone)]
pub struct FsStore {
    root: PathBuf,
}

impl FsStore {
    /// A store rooted at `path/prefix`, created if missing.
    pub fn new(path: &Path, prefix: &str) -> std::io::Result<Self> {
        let root = if prefix.is_empty() {
            path.to_path_buf()
        } else {
            path.join(prefix)
        };
        std::fs::create_dir_all(root.join(TMP_DIR))?;
        Ok(FsStore { root })
    }

    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    /// Moves a complete temporary file to `key`.
    pub(crate) async fn commit_temp(&self, tmp: &Path, key: &str) -> Result<(), StorageError> {
        let path = self.path(key)?;
        ensure_parent(&path, key).await?;
        if let Err(e) = tokio::fs::rename(tmp, &path).await {
            let _ = tokio::fs::remove_file(tmp).await;
            return Err(StorageError::io("put", key, e));
        }
        Ok(())
    }

    pub(crate) fn path(&self, key: &str) -> Result<PathBuf, StorageError> {
        check_key(key)?;
        if key == TMP_DIR || key.starts_with(".tmp/") {
            return Err(StorageError::InvalidKey {
                key: key.into(),
                why: "reserved",
            });
        }
        Ok(self.root.join(key))
    }

    pub(crate) fn temp_path(&self) -> PathBuf {
        self.root
            .join(TMP_DIR)
            .join(uuid::Uuid::now_v7().to_string())
    }

    async fn write_temp(&self, key: &str, mut body: Body) -> Result<(PathBuf, u64), StorageError> {
        let tmp = self.temp_path();
        let result = async {
            let mut file = tokio::fs::File::create(&tmp).await?;
            let size = tokio::io::copy(&mut body, &mut file).await?;
            file.flush().await?;
            file.sync_all().await?;
            Ok::<_, std::io::Error>(size)
        }
        .await;
        match result {
            Ok(size) => Ok((tmp, size)),
            Err(e) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                Err(StorageError::io("put", key, e))
            }
        }
    }
}

async fn ensure_parent(path: &Path, key: &str) -> Result<(), StorageError> {
    if let Some(parent) = path.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(|e| StorageError::io("put", key, e))?;
    }
    Ok(())
}

#[async_trait]
impl ObjectStore for FsStore {
    async fn put(&self, key: &str, body: Body) -> Result<u64, StorageError> {
        self.path(key)?;
        let (tmp, size) = self.write_temp(key, body).await?;
        self.commit_temp(&tmp, key).await?;
        Ok(size)
    }

    async fn put_if_absent(&self, key: &str, bytes: Bytes) -> Result<bool, StorageError> {
        let path = self.path(key)?;
        let (tmp, _) = self
            .write_temp(key, Box::new(std::io::Cursor::new(bytes)))
            .await?;
        ensure_parent(&path, key).await?;
        // A hard link fails if the target exists: an atomic create-if-absent that
        // never exposes a partial file.
        let linked = tokio::fs::hard_link(&tmp, &path).await;
        let _ = tokio::fs::remove_file(&tmp).await;
        match linked {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(StorageError::io("put", key, e)),
        }
    }

    async fn get(&self, key: &str) -> Result<Body, StorageError> {
        let path = self.path(key)?;
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| StorageError::io("get", key, e))?;
        Ok(Box::new(tokio::io::BufReader::with_capacity(
            256 * 1024,
            file,
        )))
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StorageError> {
        let path = self.path(key)?;
        match tokio::fs::metadata(&path).await {
            Ok(m) if m.is_file() => Ok(Some(ObjectMeta {
                key: key.to_string(),
                size: m.len(),
                modified: m.modified().map_err(|e| StorageError::io("head", key, e))?,
            })),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StorageError::io("head", key, e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StorageError> {
        // Walk only the directory the prefix points into, not the whole store.
        let (dir_part, _) = prefix.rsplit_once('/').unwrap_or(("", prefix));
        let start = self.root.join(dir_part);
        let mut out = Vec::new();
        let mut stack = vec![start];
        while let Some(dir) = stack.pop() {
            let mut entries = match tokio::fs::read_dir(&dir).await {
                Ok(entries) => entries,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(StorageError::io("list", prefix, e)),
            };
            while let Some(entry) = entries
                .next_entry()
                .await
                .map_err(|e| StorageError::io("list", prefix, e))?
            {
                let path = entry.path();
                let rel = path
                    .strip_prefix(&self.root)
                    .expect("walk stays under the root");
                let key = rel.to_string_lossy().replace('\\', "/");
                if key == TMP_DIR {
                    continue;
                }
                let meta = match entry.metadata().await {
                    Ok(meta) => meta,
                    // Deleted between reading the directory and looking at the
                    // entry (retention runs while others list): not there any more.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(StorageError::io("list", prefix, e)),
                };
                if meta.is_dir() {
                    if key.starts_with(prefix) || prefix.starts_with(&format!("{key}/")) {
                        stack.push(path);
                    }
                } else if key.starts_with(prefix) {
                    out.push(ObjectMeta {
                        key,
                        size: meta.len(),
                        modified: meta
                            .modified()
                            .map_err(|e| StorageError::io("list", prefix, e))?,
                    });
                }
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        let path = self.path(key)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StorageError::io("delete", key, e)),
        }
    }

    fn describe(&self) -> String {
        format!("fs:{}", self.root.display())
    }

    async fn put_bytes(
        &self,
        key: &str,
        bytes: Bytes,
        md5: Option<[u8; 16]>,
    ) -> Result<(), StorageError> {
        self.path(key)?;
        // The same check an S3 store makes on Content-MD5.
        if let Some(md5) = md5
            && md5 != crate::content_md5(&bytes)
        {
            return Err(StorageError::Backend {
                op: "put",
                key: key.to_string(),
                message: "the body does not match its Content-MD5 (BadDigest)".into(),
                retryable: false,
            });
        }
        self.put(key, Box::new(std::io::Cursor::new(bytes))).await?;
        Ok(())
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Body, StorageError> {
        let path = self.path(key)?;
        let mut file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| StorageError::io("get", key, e))?;
        file.seek(std::io::SeekFrom::Start(range.start))
            .await
            .map_err(|e| StorageError::io("get", key, e))?;
        let len = range.end.saturating_sub(range.start);
        Ok(Box::new(tokio::io::BufReader::new(file).take(len)))
    }

    async fn delete_many(&self, keys: &[String]) -> Result<(), StorageError> {
        for key in keys {
            self.delete(key).await?;
        }
        Ok(())
    }

    async fn create_multipart(&self, key: &str) -> Result<String, StorageError> {
        crate::fs_multipart::create(self, key).await
    }

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: u32,
        bytes: Bytes,
    ) -> Result<PartReceipt, StorageError> {
        crate::fs_multipart::upload_part(self, key, upload_id, number, bytes).await
    }

    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[PartReceipt],
    ) -> Result<(), StorageError> {
        crate::fs_multipart::complete(self, key, upload_id, parts).await
    }

    async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<(), StorageError> {
        crate::fs_multipart::abort(self, key, upload_id).await
    }

    async fn list_multipart(&self, prefix: &str) -> Result<Vec<PendingUpload>, StorageError> {
        crate::fs_multipart::list(self, prefix).await
    }
}
