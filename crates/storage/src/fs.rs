//! The local-directory object store: the embedded default, also what a NAS mount or a
//! mounted volume looks like.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::io::AsyncWriteExt;

use std::ops::Range;

use tokio::io::{AsyncReadExt, AsyncSeekExt};

use futures::{StreamExt, TryStreamExt};

use crate::{
    Body, LIST_PAGE, ListPages, ObjectMeta, ObjectStore, PartReceipt, PendingUpload, StorageError,
    check_key,
};

/// Temporary files live here until renamed into place, so a crash mid-write never
/// leaves a partial object under its final key. `list` skips this directory.
const TMP_DIR: &str = ".tmp";

/// Files one blocking task of `delete_many` unlinks.
const UNLINK_CHUNK: usize = 64;
/// Blocking tasks of `delete_many` at once.
const UNLINK_TASKS: usize = 16;

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

    fn list<'a>(&'a self, prefix: &'a str) -> ListPages<'a> {
        // Walk only the directory the prefix points into, not the whole store, one
        // page per blocking task: std's directory reader is cheaper per entry than
        // a tokio call per entry, and the walk holds one directory handle per level.
        let (dir_part, _) = prefix.rsplit_once('/').unwrap_or(("", prefix));
        let walk = Walk {
            root: self.root.clone(),
            prefix: prefix.to_string(),
            stack: vec![self.root.join(dir_part)],
            current: None,
        };
        futures::stream::try_unfold(Some(walk), |walk| async move {
            let Some(mut walk) = walk else {
                return Ok(None);
            };
            let (walk, page) = tokio::task::spawn_blocking(move || {
                let page = walk.next_page();
                (walk, page)
            })
            .await
            .map_err(|e| StorageError::io("list", "", std::io::Error::other(e)))?;
            let page = page?;
            if page.is_empty() {
                return Ok(None);
            }
            // A short page means the walk is over; the next poll ends the stream.
            let more = page.len() == LIST_PAGE;
            Ok(Some((page, more.then_some(walk))))
        })
        .boxed()
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
        // Blocking tasks of `UNLINK_CHUNK` files each, `UNLINK_TASKS` at once: the
        // hop to the blocking pool costs more than a cached unlink, but an old
        // file's unlink waits on the disk (about 100 µs on ext4 for the inode and
        // block bitmaps), and the kernel overlaps those waits only for unlinks in
        // flight together (measured: 109 µs per file one at a time, 63 µs with 16).
        let paths = keys
            .iter()
            .map(|key| Ok((key.clone(), self.path(key)?)))
            .collect::<Result<Vec<(String, PathBuf)>, StorageError>>()?;
        let mut chunks = Vec::new();
        let mut paths = paths.into_iter().peekable();
        while paths.peek().is_some() {
            chunks.push(paths.by_ref().take(UNLINK_CHUNK).collect::<Vec<_>>());
        }
        futures::stream::iter(chunks)
            .map(|chunk| async move {
                tokio::task::spawn_blocking(move || {
                    for (key, path) in chunk {
                        match std::fs::remove_file(&path) {
                            Ok(()) => {}
                            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                            Err(e) => return Err(StorageError::io("delete", &key, e)),
                        }
                    }
                    Ok(())
                })
                .await
                .map_err(|e| StorageError::io("delete", "a batch", std::io::Error::other(e)))?
            })
            .buffer_unordered(UNLINK_TASKS)
            .try_collect::<()>()
            .await
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

/// A depth-first walk of the directories under a listing's prefix.
struct Walk {
    root: PathBuf,
    prefix: String,
    /// Directories still to read.
    stack: Vec<PathBuf>,
    /// The directory being read.
    current: Option<std::fs::ReadDir>,
}

impl Walk {
    /// Up to [`LIST_PAGE`] objects; fewer only at the end of the walk.
    fn next_page(&mut self) -> Result<Vec<ObjectMeta>, StorageError> {
        let prefix = self.prefix.clone();
        let err = |e: std::io::Error| StorageError::io("list", &prefix, e);
        let mut page = Vec::new();
        while page.len() < LIST_PAGE {
            let Some(entries) = self.current.as_mut() else {
                let Some(dir) = self.stack.pop() else { break };
                match std::fs::read_dir(&dir) {
                    Ok(entries) => self.current = Some(entries),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(err(e)),
                }
                continue;
            };
            let Some(entry) = entries.next() else {
                self.current = None;
                continue;
            };
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(err(e)),
            };
            let path = entry.path();
            let rel = path
                .strip_prefix(&self.root)
                .expect("walk stays under the root");
            let key = rel.to_string_lossy().replace('\\', "/");
            if key == TMP_DIR {
                continue;
            }
            let meta = match entry.metadata() {
                Ok(meta) => meta,
                // Deleted between reading the directory and looking at the entry
                // (retention runs while others list): not there any more.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(err(e)),
            };
            if meta.is_dir() {
                if key.starts_with(&self.prefix) || self.prefix.starts_with(&format!("{key}/")) {
                    self.stack.push(path);
                }
            } else if key.starts_with(&self.prefix) {
                page.push(ObjectMeta {
                    key,
                    size: meta.len(),
                    modified: meta.modified().map_err(err)?,
                });
            }
        }
        Ok(page)
    }
}
