//! One segment being captured: oplog entries appended to a zstd stream in the
//! work directory, hashed as they are compressed, then stored as a
//! content-addressed object and committed by its record, written last.
//!
//! Memory stays at the compressor's window whatever the segment's size: entries go
//! to the file as they come, and the object is streamed from it to the store.

use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::Utc;
use ferry_storage::layout::object_key;
use ferry_storage::pitr::{ClusterTime, Link, RECORD_FORMAT, SegmentRecord};
use ferry_storage::{Catalog, Compression, ObjectStore};
use mongodb::bson::Timestamp;
use sha2::{Digest, Sha256};

use crate::CaptureError;

/// zstd level of segments: fast enough to keep up with a busy server on one core.
const LEVEL: i32 = 3;

/// A file writer that hashes and counts what goes through it (the compressed
/// bytes: the object's SHA-256 and size).
struct Hashing {
    file: std::io::BufWriter<std::fs::File>,
    sha: Sha256,
    size: u64,
}

impl Write for Hashing {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.sha.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// The segment being written. Its file is this writer's alone (named by process
/// and sequence: a replica that lost its lease and a new owner never share one)
/// and is removed when the writer is dropped, committed or not.
pub struct SegmentWriter {
    source: String,
    path: PathBuf,
    /// Taken by [`SegmentWriter::seal`].
    encoder: Option<zstd::stream::write::Encoder<'static, Hashing>>,
    /// Entries written.
    pub operations: u64,
    /// Bytes of entries before compression.
    pub raw_size: u64,
}

/// A segment's object, stored; its record not written yet.
pub struct Sealed {
    /// `objects/<sha256>`.
    pub object: String,
    /// SHA-256 of the object.
    pub sha256: String,
    /// Its size.
    pub size: u64,
    /// Entries in it.
    pub operations: u64,
    /// Their size before compression.
    pub raw_size: u64,
}

impl SegmentWriter {
    /// A new, empty segment file for `source` in `dir`.
    pub fn create(dir: &Path, source: &str) -> Result<SegmentWriter, CaptureError> {
        static SEQUENCE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = SEQUENCE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = dir.join(format!("{source}.{}.{n}.{SUFFIX}", std::process::id()));
        let io = |cause| CaptureError::WorkDir {
            source_name: source.to_string(),
            path: path.display().to_string(),
            cause,
        };
        let file = std::fs::File::create(&path).map_err(io)?;
        let hashing = Hashing {
            file: std::io::BufWriter::with_capacity(256 * 1024, file),
            sha: Sha256::new(),
            size: 0,
        };
        let encoder = zstd::stream::write::Encoder::new(hashing, LEVEL).map_err(io)?;
        Ok(SegmentWriter {
            source: source.to_string(),
            path,
            encoder: Some(encoder),
            operations: 0,
            raw_size: 0,
        })
    }

    /// Appends one oplog entry. The write is buffered (a syscall per 256 KiB of
    /// compressed output), so doing it on the async thread costs no more than the
    /// compression itself.
    pub fn append(&mut self, entry: &[u8]) -> Result<(), CaptureError> {
        let encoder = self.encoder.as_mut().expect("not sealed");
        if let Err(cause) = encoder.write_all(entry) {
            return Err(self.io(cause));
        }
        self.operations += 1;
        self.raw_size += entry.len() as u64;
        Ok(())
    }

    fn io(&self, cause: std::io::Error) -> CaptureError {
        CaptureError::WorkDir {
            source_name: self.source.clone(),
            path: self.path.display().to_string(),
            cause,
        }
    }

    /// Finishes the file and stores it as `objects/<sha256>` (unless the store has
    /// that content already: every empty segment is the same object).
    pub async fn seal(mut self, store: &dyn ObjectStore) -> Result<Sealed, CaptureError> {
        let (source, path) = (self.source.clone(), self.path.clone());
        let (operations, raw_size) = (self.operations, self.raw_size);
        let io = |cause| CaptureError::WorkDir {
            source_name: source.clone(),
            path: path.display().to_string(),
            cause,
        };
        let encoder = self.encoder.take().expect("sealed once");
        let mut hashing = encoder.finish().map_err(io)?;
        hashing.flush().map_err(io)?;
        let sha256 = hex::encode(hashing.sha.finalize());
        let size = hashing.size;
        drop(hashing.file);
        let object = object_key(&sha256);
        let stored = store
            .head(&object)
            .await
            .map_err(|cause| CaptureError::Store {
                source_name: source.clone(),
                what: format!("checking for segment object {object}"),
                cause: Box::new(cause),
            })?
            .is_some_and(|m| m.size == size);
        if !stored {
            let file = tokio::fs::File::open(&path).await.map_err(io)?;
            let written =
                store
                    .put(&object, Box::new(file))
                    .await
                    .map_err(|cause| CaptureError::Store {
                        source_name: source.clone(),
                        what: format!("storing segment object {object}"),
                        cause: Box::new(cause),
                    })?;
            if written != size {
                return Err(CaptureError::Source {
                    source_name: source.clone(),
                    message: format!(
                        "segment object {object}: {written} bytes stored of {size}; the segment is not committed and is captured again"
                    ),
                });
            }
        }
        Ok(Sealed {
            object,
            sha256,
            size,
            operations,
            raw_size,
        })
    }
}

impl Drop for SegmentWriter {
    fn drop(&mut self) {
        // Stored (or abandoned): the file has served.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The suffix of segment files in the work directory.
const SUFFIX: &str = "segment.zst";

/// Removes the segment files of processes that no longer run (a replica killed
/// mid-segment leaves its file): nothing in them was committed.
pub fn remove_stale(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let Some(stem) = name.strip_suffix(&format!(".{SUFFIX}")) else {
            continue;
        };
        // <source>.<pid>.<sequence>; source names have no dots.
        let pid = stem.split('.').nth(1).and_then(|p| p.parse::<u32>().ok());
        let alive = pid.is_some_and(|p| Path::new(&format!("/proc/{p}")).exists());
        if !alive {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// The cluster time in the record's form.
pub fn cluster_time(t: Timestamp) -> ClusterTime {
    ClusterTime::new(t.time, t.increment)
}

/// Writes the record that commits `sealed` as the changes in `(start, end]`.
/// Returns the record; an existing record of the same span is an error (two
/// replicas captured at once, which the lease exists to prevent).
#[allow(clippy::too_many_arguments)]
pub async fn commit(
    catalog: &Catalog<'_>,
    source: &str,
    start: Timestamp,
    end: Timestamp,
    sealed: Sealed,
    prev: Option<Link>,
    resume_token: Option<String>,
    captured_by: &str,
) -> Result<SegmentRecord, CaptureError> {
    let record = SegmentRecord {
        format: RECORD_FORMAT,
        source: source.to_string(),
        start: cluster_time(start),
        end: cluster_time(end),
        operations: sealed.operations,
        object: sealed.object,
        sha256: sealed.sha256,
        size: sealed.size,
        raw_size: sealed.raw_size,
        compression: Compression::Zstd,
        prev,
        resume_token,
        committed_at: Utc::now(),
        captured_by: captured_by.to_string(),
    };
    let written = catalog
        .commit_segment(&record)
        .await
        .map_err(|cause| CaptureError::Store {
            source_name: source.to_string(),
            what: format!("committing segment {}-{}", record.start, record.end),
            cause: Box::new(cause),
        })?;
    if !written {
        return Err(CaptureError::Source {
            source_name: source.to_string(),
            message: format!(
                "segment {}-{} was already committed by another replica; two replicas captured at once, stopping this one",
                record.start, record.end
            ),
        });
    }
    Ok(record)
}
