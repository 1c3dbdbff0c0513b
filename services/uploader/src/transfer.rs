//! Moving one spool file into the store as a content-addressed object: one PUT for
//! small files, a multipart upload with several parts in flight for large ones.
//!
//! Memory is bounded for the whole process, not per file: every part buffer holds
//! permits of one semaphore sized `parts_in_flight`, so part buffers never exceed
//! `part_size × parts_in_flight` however many files upload at once.
//!
//! With encryption on, a file is encrypted here, as it is uploaded, to an age file
//! named by the keyed hash of its content ([`Sealer`]). Here rather than in the
//! dumper: content already stored is never encrypted (a second backup of an
//! unchanged database costs no encryption at all), the ciphertext's SHA-256 is taken
//! from the bytes on their way to the store, and every engine's files (logical
//! dumps, base backups, BSON) go through this one path. An encrypted multipart
//! upload holds one part of ciphertext more than a plain one while it fills.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use ferry_storage::encryption::Sealer;
use ferry_storage::layout::object_key;
use ferry_storage::retry::RetryPolicy;
use ferry_storage::spool::Spool;
use ferry_storage::{ObjectStore, PartReceipt, StorageError, Stored};
use sha2::{Digest, Sha256};
use std::io::Write as _;
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
    sealer: Option<Arc<Sealer>>,
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
            sealer: None,
        }
    }

    /// This transfer, encrypting every object it uploads with `sealer` when given.
    pub fn with_sealer(self, sealer: Option<Arc<Sealer>>) -> Transfer {
        Transfer { sealer, ..self }
    }

    /// The writers' keys, when encryption is on.
    pub fn sealer(&self) -> Option<&Sealer> {
        self.sealer.as_deref()
    }

    /// The object key of content with SHA-256 `sha256`: its digest, or with
    /// encryption on its keyed hash.
    pub fn object_for(&self, sha256: &str) -> String {
        match &self.sealer {
            Some(sealer) => sealer.object_key(sha256),
            None => object_key(sha256),
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

    /// Whether the content of a file of `size` bytes is in the store at `object`:
    /// with `size` bytes, or encrypted (an age file is always longer than its
    /// plaintext; how much depends on the recipients it was written for).
    pub async fn is_stored(&self, object: &str, size: u64) -> Result<bool, UploadError> {
        let found = self.retry.run("head", || self.store.head(object)).await?;
        Ok(found.is_some_and(|meta| match self.sealer {
            Some(_) => meta.size > size,
            None => meta.size == size,
        }))
    }

    /// Whether `object` is in the store with exactly `size` bytes as stored.
    pub async fn is_stored_as(&self, object: &str, size: u64) -> Result<bool, UploadError> {
        let found = self.retry.run("head", || self.store.head(object)).await?;
        Ok(found.is_some_and(|meta| meta.size == size))
    }

    /// The size and SHA-256 of `object` as stored, read back from the store: for
    /// encrypted content this job did not upload and no recent manifest describes.
    pub async fn stored_digest(&self, object: &str) -> Result<Stored, UploadError> {
        Ok(self
            .retry
            .run("read back", || {
                ferry_storage::stored_digest(self.store.as_ref(), object)
            })
            .await?)
    }

    /// Uploads the file to `object`, checking that what was read has the recorded
    /// size and SHA-256: a spool file changed since the dump is never stored under
    /// the wrong key. With encryption on, returns what was stored.
    pub async fn upload(
        &self,
        file: &FileRef<'_>,
        object: &str,
    ) -> Result<Option<Stored>, UploadError> {
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
    ) -> Result<Option<Stored>, UploadError> {
        let _permit = self.buffer(file.size).await;
        let mut buf = Vec::with_capacity(file.size as usize);
        (&mut body)
            .take(self.part_size + 1)
            .read_to_end(&mut buf)
            .await
            .map_err(|e| spool_error(file, self.spool.as_ref(), e))?;
        self.check(file, buf.len() as u64, &hex::encode(Sha256::digest(&buf)))?;
        if let Some(sealer) = &self.sealer {
            let sealed = sealer.seal(&buf);
            drop(buf);
            let stored = Stored {
                size: sealed.len() as u64,
                sha256: hex::encode(Sha256::digest(&sealed)),
            };
            let bytes = Bytes::from(sealed);
            // Never over an existing object: its ciphertext differs from this one
            // (age encrypts with a fresh key each time), and a manifest may already
            // name its digest.
            let created = self
                .retry
                .run("put", || self.store.put_if_absent(object, bytes.clone()))
                .await?;
            if !created {
                return Ok(Some(self.stored_digest(object).await?));
            }
            return Ok(Some(stored));
        }
        let bytes = Bytes::from(buf);
        let md5 = ferry_storage::content_md5(&bytes);
        self.retry
            .run("put", || {
                self.store.put_bytes(object, bytes.clone(), Some(md5))
            })
            .await?;
        Ok(None)
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
    ) -> Result<Option<Stored>, UploadError> {
        // Leftovers of an earlier, killed attempt at this object cost storage until
        // aborted; nobody will complete them.
        self.abort_pending(object).await;
        let upload_id = self
            .retry
            .run("create upload", || self.store.create_multipart(object))
            .await?;
        let result = match &self.sealer {
            Some(sealer) => {
                self.send_sealed_parts(file, object, &upload_id, body, sealer)
                    .await
            }
            None => self
                .send_parts(file, object, &upload_id, body)
                .await
                .map(|parts| (parts, None)),
        };
        match result {
            Ok((parts, stored)) => {
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
                Ok(stored)
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
            self.spawn_part(&mut tasks, object, upload_id, number, buf.freeze(), permit);
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

    /// Uploads part `number` in its own task, holding `permit` (its buffer) until
    /// sent.
    fn spawn_part(
        &self,
        tasks: &mut JoinSet<Result<PartReceipt, StorageError>>,
        object: &str,
        upload_id: &str,
        number: u32,
        bytes: Bytes,
        permit: OwnedSemaphorePermit,
    ) {
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
    }

    /// Encrypts while it reads and uploads the ciphertext in parts, several in
    /// flight; returns the parts and what was stored. The plaintext is checked
    /// against the recorded size and SHA-256 as in [`Self::send_parts`].
    async fn send_sealed_parts(
        &self,
        file: &FileRef<'_>,
        object: &str,
        upload_id: &str,
        mut body: ferry_storage::Body,
        sealer: &Sealer,
    ) -> Result<(Vec<PartReceipt>, Option<Stored>), UploadError> {
        // The ciphertext is a little longer than the plaintext (16 bytes per 64 KiB
        // and a header): size the parts for it.
        let part_size = self.part_size_for(file.size + file.size / 256 + 64 * 1024);
        let sink = CipherSink::default();
        let mut writer =
            Some(
                sealer
                    .writer(sink.clone())
                    .map_err(|source| UploadError::Encrypt {
                        name: file.name.to_string(),
                        source,
                    })?,
            );
        let (mut plain, mut cipher) = (Sha256::new(), Sha256::new());
        let (mut plain_size, mut cipher_size) = (0u64, 0u64);
        let mut tasks: JoinSet<Result<PartReceipt, StorageError>> = JoinSet::new();
        let mut receipts = Vec::new();
        let mut number = 0u32;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = body
                .read(&mut buf)
                .await
                .map_err(|e| spool_error(file, self.spool.as_ref(), e))?;
            let encrypted = match n {
                0 => writer.take().map(|w| w.finish().map(drop)),
                n => {
                    plain.update(&buf[..n]);
                    plain_size += n as u64;
                    writer.as_mut().map(|w| w.write_all(&buf[..n]))
                }
            };
            if let Some(Err(source)) = encrypted {
                return Err(UploadError::Encrypt {
                    name: file.name.to_string(),
                    source,
                });
            }
            let finished = writer.is_none();
            while let Some(bytes) = sink.take_part(part_size as usize, finished) {
                let permit = self.buffer(part_size).await;
                cipher.update(&bytes);
                cipher_size += bytes.len() as u64;
                number += 1;
                self.spawn_part(&mut tasks, object, upload_id, number, bytes, permit);
                while let Some(done) = tasks.try_join_next() {
                    receipts.push(joined(object, done)?);
                }
            }
            if finished {
                break;
            }
        }
        while let Some(done) = tasks.join_next().await {
            receipts.push(joined(object, done)?);
        }
        self.check(file, plain_size, &hex::encode(plain.finalize()))?;
        Ok((
            receipts,
            Some(Stored {
                size: cipher_size,
                sha256: hex::encode(cipher.finalize()),
            }),
        ))
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

/// Where the age writer puts ciphertext until a part is full.
#[derive(Clone, Default)]
struct CipherSink(Arc<std::sync::Mutex<BytesMut>>);

impl CipherSink {
    /// A part of `size` bytes when that much is waiting; the rest when `finished`
    /// (at least one part, even an empty file's).
    fn take_part(&self, size: usize, finished: bool) -> Option<Bytes> {
        let mut held = self.0.lock().expect("sink lock");
        if held.len() >= size {
            return Some(held.split_to(size).freeze());
        }
        (finished && !held.is_empty()).then(|| held.split().freeze())
    }
}

impl std::io::Write for CipherSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("sink lock").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
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
