//! Moving one spool file into the store as a content-addressed object: one PUT for
//! small files, a multipart upload with several parts in flight for large ones.
//!
//! Memory is bounded for the whole process, not per file: every part buffer holds
//! permits of one semaphore sized `parts_in_flight`, so part buffers never exceed
//! `part_size × parts_in_flight` however many files upload at once.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use ferry_storage::retry::RetryPolicy;
use ferry_storage::spool::Spool;
use ferry_storage::{ObjectStore, PartReceipt, StorageError};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

pub use crate::errors::UploadError;

/// S3 allows at most this many parts per upload.
pub const MAX_PARTS: u64 = 10_000;

/// Upload settings and the shared buffer budget.
#[derive(Clone)]
pub struct Transfer {
    /// The object store.
    pub store: Arc<dyn ObjectStore>,
    /// Where the files wait.
    pub spool: Arc<dyn Spool>,
    /// Configured part size (also the largest single PUT).
    pub part_size: u64,
    /// Retries of every request.
    pub retry: RetryPolicy,
    buffers: Arc<Semaphore>,
    parts_in_flight: usize,
}

/// What one file needs from the spool.
#[derive(Debug, Clone)]
pub struct FileRef<'a> {
    /// The job.
    pub job_id: &'a str,
    /// Name in the spool.
    pub name: &'a str,
    /// Size the dumper recorded.
    pub size: u64,
    /// SHA-256 the dumper recorded.
    pub sha256: &'a str,
}

fn spool_error(file: &FileRef<'_>, spool: &dyn Spool, source: std::io::Error) -> UploadError {
    UploadError::SpoolRead {
        job_id: file.job_id.to_string(),
        name: file.name.to_string(),
        spool: spool.describe(),
        source,
    }
}

impl Transfer {
    /// A transfer with `parts_in_flight` part buffers of `part_size` bytes.
    pub fn new(
        store: Arc<dyn ObjectStore>,
        spool: Arc<dyn Spool>,
        part_size: u64,
        parts_in_flight: usize,
        retry: RetryPolicy,
    ) -> Transfer {
        Transfer {
            store,
            spool,
            part_size,
            retry,
            buffers: Arc::new(Semaphore::new(parts_in_flight.max(1))),
            parts_in_flight: parts_in_flight.max(1),
        }
    }

    /// The part size for a file of `size` bytes: the configured one, grown (to a
    /// whole MiB) when the file would otherwise need more than 10,000 parts.
    pub fn part_size_for(&self, size: u64) -> u64 {
        const MIB: u64 = 1 << 20;
        let needed = size.div_ceil(MAX_PARTS).div_ceil(MIB) * MIB;
        self.part_size.max(needed)
    }

    /// Permits for one buffer of `len` bytes (a grown part takes several), never
    /// more than exist.
    async fn buffer(&self, len: u64) -> OwnedSemaphorePermit {
        let n = len
            .div_ceil(self.part_size)
            .clamp(1, self.parts_in_flight as u64) as u32;
        self.buffers
            .clone()
            .acquire_many_owned(n)
            .await
            .expect("buffer semaphore is never closed")
    }

    /// Whether `object` is in the store with `size` bytes.
    pub async fn is_stored(&self, object: &str, size: u64) -> Result<bool, UploadError> {
        let found = self.retry.run("head", || self.store.head(object)).await?;
        Ok(found.is_some_and(|meta| meta.size == size))
    }

    /// Uploads the file to `object`, checking that what was read has the recorded
    /// size and SHA-256: a spool file changed since the dump is never stored under
    /// the wrong key.
    pub async fn upload(&self, file: &FileRef<'_>, object: &str) -> Result<(), UploadError> {
        let body = self
            .spool
            .open(file.job_id, file.name)
            .await
            .map_err(|e| spool_error(file, self.spool.as_ref(), e))?;
        if file.size <= self.part_size {
            self.upload_small(file, object, body).await
        } else {
            self.upload_multipart(file, object, body).await
        }
    }

    async fn upload_small(
        &self,
        file: &FileRef<'_>,
        object: &str,
        mut body: ferry_storage::Body,
    ) -> Result<(), UploadError> {
        let _permit = self.buffer(file.size).await;
        let mut buf = Vec::with_capacity(file.size as usize);
        (&mut body)
            .take(self.part_size + 1)
            .read_to_end(&mut buf)
            .await
            .map_err(|e| spool_error(file, self.spool.as_ref(), e))?;
        self.check(file, buf.len() as u64, &hex::encode(Sha256::digest(&buf)))?;
        let bytes = Bytes::from(buf);
        let md5 = ferry_storage::content_md5(&bytes);
        self.retry
            .run("put", || {
                self.store.put_bytes(object, bytes.clone(), Some(md5))
            })
            .await?;
        Ok(())
    }

    fn check(&self, file: &FileRef<'_>, size: u64, sha256: &str) -> Result<(), UploadError> {
        if size != file.size || sha256 != file.sha256 {
            return Err(UploadError::ChecksumMismatch {
                job_id: file.job_id.to_string(),
                name: file.name.to_string(),
                size,
                sha256: sha256.to_string(),
                expected_size: file.size,
                expected_sha256: file.sha256.to_string(),
            });
        }
        Ok(())
    }

    async fn upload_multipart(
        &self,
        file: &FileRef<'_>,
        object: &str,
        body: ferry_storage::Body,
    ) -> Result<(), UploadError> {
        // Leftovers of an earlier, killed attempt at this object cost storage until
        // aborted; nobody will complete them.
        self.abort_pending(object).await;
        let upload_id = self
            .retry
            .run("create upload", || self.store.create_multipart(object))
            .await?;
        let result = self.send_parts(file, object, &upload_id, body).await;
        match result {
            Ok(parts) => {
                let done = self
                    .retry
                    .run("complete upload", || {
                        self.store.complete_multipart(object, &upload_id, &parts)
                    })
                    .await;
                if let Err(err) = done {
                    let _ = self.store.abort_multipart(object, &upload_id).await;
                    return Err(err.into());
                }
                Ok(())
            }
            Err(err) => {
                if let Err(e) = self.store.abort_multipart(object, &upload_id).await {
                    tracing::warn!(object, error = %e, "could not abort the failed upload; it is aborted on the next attempt");
                }
                Err(err)
            }
        }
    }

    /// Reads parts in order and uploads them concurrently, each holding its buffer
    /// permits until sent.
    async fn send_parts(
        &self,
        file: &FileRef<'_>,
        object: &str,
        upload_id: &str,
        mut body: ferry_storage::Body,
    ) -> Result<Vec<PartReceipt>, UploadError> {
        let part_size = self.part_size_for(file.size);
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut tasks: JoinSet<Result<PartReceipt, StorageError>> = JoinSet::new();
        let mut receipts = Vec::new();
        let mut number = 0u32;
        loop {
            let permit = self.buffer(part_size).await;
            let mut buf = BytesMut::zeroed(part_size as usize);
            let mut filled = 0;
            while filled < buf.len() {
                let n = body
                    .read(&mut buf[filled..])
                    .await
                    .map_err(|e| spool_error(file, self.spool.as_ref(), e))?;
                if n == 0 {
                    break;
                }
                filled += n;
            }
            buf.truncate(filled);
            if filled == 0 && number > 0 {
                break;
            }
            hasher.update(&buf);
            size += filled as u64;
            number += 1;
            let bytes = buf.freeze();
            let (store, retry) = (self.store.clone(), self.retry);
            let (key, upload_id) = (object.to_string(), upload_id.to_string());
            tasks.spawn(async move {
                let receipt = retry
                    .run("upload part", || {
                        store.upload_part(&key, &upload_id, number, bytes.clone())
                    })
                    .await;
                drop(permit);
                receipt
            });
            // Collect finished parts as we go, so a failing part stops the read.
            while let Some(done) = tasks.try_join_next() {
                receipts.push(joined(object, done)?);
            }
            if (filled as u64) < part_size {
                break;
            }
        }
        while let Some(done) = tasks.join_next().await {
            receipts.push(joined(object, done)?);
        }
        self.check(file, size, &hex::encode(hasher.finalize()))?;
        Ok(receipts)
    }

    /// Aborts unfinished multipart uploads of exactly `object`.
    pub async fn abort_pending(&self, object: &str) {
        match self.store.list_multipart(object).await {
            Ok(pending) => {
                for p in pending.into_iter().filter(|p| p.key == object) {
                    tracing::info!(object, upload_id = %p.upload_id, "aborting an unfinished upload left by an earlier attempt");
                    let _ = self.store.abort_multipart(&p.key, &p.upload_id).await;
                }
            }
            Err(e) => tracing::warn!(object, error = %e, "cannot list unfinished uploads"),
        }
    }
}

fn joined(
    object: &str,
    done: Result<Result<PartReceipt, StorageError>, tokio::task::JoinError>,
) -> Result<PartReceipt, UploadError> {
    match done {
        Ok(Ok(receipt)) => Ok(receipt),
        Ok(Err(err)) => Err(err.into()),
        Err(source) => Err(UploadError::PartTask {
            object: object.to_string(),
            source,
        }),
    }
}
