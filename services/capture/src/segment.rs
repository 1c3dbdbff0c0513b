//! One segment being captured: oplog entries appended, as raw BSON, to a file of
//! the work directory; then cut (split at a cluster time when a base backup's
//! consistent point falls inside it), compressed and hashed, stored as a
//! content-addressed object, and committed by its record, written last.
//!
//! Memory stays at a buffer and the compressor's window whatever the segment's
//! size: entries go to the file as they come, and the object is streamed from the
//! compressed file to the store.

use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use chrono::Utc;
use ferry_storage::layout::object_key;
use ferry_storage::pitr::{ClusterTime, Link, RECORD_FORMAT, SegmentRecord};
use ferry_storage::{Catalog, Compression, ObjectStore};
use mongodb::bson::{RawDocumentBuf, Timestamp};
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

/// The segment being written. Its files are this writer's alone (named by process
/// and sequence: a replica that lost its lease and a new owner never share one)
/// and are removed when the writer is dropped, committed or not.
pub struct SegmentWriter {
    source: String,
    dir: PathBuf,
    path: PathBuf,
    file: std::io::BufWriter<std::fs::File>,
    /// Entries written.
    pub operations: u64,
    /// Bytes of entries before compression.
    pub raw_size: u64,
    /// The cluster time of the newest entry.
    last: Option<Timestamp>,
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
        let file = std::fs::File::create(&path).map_err(|cause| CaptureError::WorkDir {
            source_name: source.to_string(),
            path: path.display().to_string(),
            cause,
        })?;
        Ok(SegmentWriter {
            source: source.to_string(),
            dir: dir.to_path_buf(),
            path,
            file: std::io::BufWriter::with_capacity(256 * 1024, file),
            operations: 0,
            raw_size: 0,
            last: None,
        })
    }

    fn io(&self, cause: std::io::Error) -> CaptureError {
        CaptureError::WorkDir {
            source_name: self.source.clone(),
            path: self.path.display().to_string(),
            cause,
        }
    }

    /// Appends one oplog entry of cluster time `ts`. Buffered: a syscall per
    /// 256 KiB, so writing on the async thread costs no more than a copy.
    pub fn append(&mut self, entry: &[u8], ts: Timestamp) -> Result<(), CaptureError> {
        if let Err(cause) = self.file.write_all(entry) {
            return Err(self.io(cause));
        }
        self.operations += 1;
        self.raw_size += entry.len() as u64;
        self.last = Some(ts);
        Ok(())
    }

    /// Splits the segment after `at`: this writer keeps the entries up to and
    /// including `at`, the returned one holds those after it (a base backup's
    /// consistent point becomes a segment boundary though capture had read past
    /// it). Reads the file once; entries are in cluster-time order.
    pub fn split_after(&mut self, at: Timestamp) -> Result<SegmentWriter, CaptureError> {
        let mut tail = SegmentWriter::create(&self.dir, &self.source)?;
        if self.last.is_none_or(|last| last <= at) {
            return Ok(tail);
        }
        self.file.flush().map_err(|e| self.io(e))?;
        let mut reader = BufReader::new(std::fs::File::open(&self.path).map_err(|e| self.io(e))?);
        let (mut offset, mut kept, mut kept_size) = (0u64, 0u64, 0u64);
        loop {
            let mut len = [0u8; 4];
            if let Err(e) = reader.read_exact(&mut len) {
                if e.kind() == std::io::ErrorKind::UnexpectedEof {
                    break;
                }
                return Err(self.io(e));
            }
            let n = u32::from_le_bytes(len) as usize;
            let mut bytes = len.to_vec();
            bytes.resize(n.max(4), 0);
            reader.read_exact(&mut bytes[4..]).map_err(|e| self.io(e))?;
            let entry = RawDocumentBuf::from_bytes(bytes).map_err(|e| {
                self.io(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    e.to_string(),
                ))
            })?;
            let ts = entry.get_timestamp("ts").map_err(|e| {
                self.io(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    e.to_string(),
                ))
            })?;
            if ts > at {
                tail.append(entry.as_bytes(), ts)?;
            } else {
                offset += entry.as_bytes().len() as u64;
                kept += 1;
                kept_size += entry.as_bytes().len() as u64;
                self.last = Some(ts);
            }
        }
        let truncated = {
            let file = self.file.get_mut();
            file.set_len(offset)
                .and_then(|()| file.seek(SeekFrom::Start(offset)).map(|_| ()))
        };
        truncated.map_err(|e| self.io(e))?;
        self.operations = kept;
        self.raw_size = kept_size;
        if kept == 0 {
            self.last = None;
        }
        Ok(tail)
    }

    /// Compresses the file and stores it as `objects/<sha256>` (unless the store
    /// has that content already: every empty segment is the same object).
    pub async fn seal(mut self, store: &dyn ObjectStore) -> Result<Sealed, CaptureError> {
        self.file.flush().map_err(|e| self.io(e))?;
        let (source, raw) = (self.source.clone(), self.path.clone());
        let compressed = raw.with_extension("zst");
        let io = |cause| CaptureError::WorkDir {
            source_name: source.clone(),
            path: compressed.display().to_string(),
            cause,
        };
        // Compression is CPU work: off the async threads.
        let (sha256, size) = {
            let (raw, compressed) = (raw.clone(), compressed.clone());
            tokio::task::spawn_blocking(move || -> std::io::Result<(String, u64)> {
                let mut input = BufReader::with_capacity(256 * 1024, std::fs::File::open(&raw)?);
                let hashing = Hashing {
                    file: std::io::BufWriter::with_capacity(
                        256 * 1024,
                        std::fs::File::create(&compressed)?,
                    ),
                    sha: Sha256::new(),
                    size: 0,
                };
                let mut encoder = zstd::stream::write::Encoder::new(hashing, LEVEL)?;
                std::io::copy(&mut input, &mut encoder)?;
                let mut hashing = encoder.finish()?;
                hashing.flush()?;
                Ok((hex::encode(hashing.sha.finalize()), hashing.size))
            })
            .await
            .map_err(|e| io(std::io::Error::other(e)))?
            .map_err(io)?
        };
        let result = async {
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
                let file = tokio::fs::File::open(&compressed).await.map_err(io)?;
                let written = store.put(&object, Box::new(file)).await.map_err(|cause| {
                    CaptureError::Store {
                        source_name: source.clone(),
                        what: format!("storing segment object {object}"),
                        cause: Box::new(cause),
                    }
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
                operations: self.operations,
                raw_size: self.raw_size,
            })
        }
        .await;
        let _ = std::fs::remove_file(&compressed);
        result
    }
}

impl Drop for SegmentWriter {
    fn drop(&mut self) {
        // Stored (or abandoned): the file has served.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The suffix of segment files in the work directory.
const SUFFIX: &str = "segment.bson";

/// Removes the segment files of processes that no longer run (a replica killed
/// mid-segment leaves its file): nothing in them was committed.
pub fn remove_stale(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        // A compressed copy being stored has `.zst` in place of `.bson`.
        let Some(stem) = name
            .strip_suffix(&format!(".{SUFFIX}"))
            .or_else(|| name.strip_suffix(".segment.zst"))
        else {
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

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::rawdoc;

    fn ts(i: u32) -> Timestamp {
        Timestamp {
            time: 100,
            increment: i,
        }
    }

    fn entries_of(store_dir: &Path, sealed: &Sealed) -> Vec<u32> {
        let bytes = std::fs::read(store_dir.join(&sealed.object)).unwrap();
        let mut raw = zstd::stream::read::Decoder::new(bytes.as_slice()).unwrap();
        let mut out = Vec::new();
        loop {
            let mut len = [0u8; 4];
            if raw.read_exact(&mut len).is_err() {
                break;
            }
            let mut doc = len.to_vec();
            doc.resize(u32::from_le_bytes(len) as usize, 0);
            raw.read_exact(&mut doc[4..]).unwrap();
            let doc = RawDocumentBuf::from_bytes(doc).unwrap();
            out.push(doc.get_timestamp("ts").unwrap().increment);
        }
        out
    }

    #[tokio::test]
    async fn a_segment_splits_at_a_base_backups_point_and_seals_what_it_holds() {
        let work = tempfile::tempdir().unwrap();
        let store_dir = tempfile::tempdir().unwrap();
        let store = ferry_storage::FsStore::new(store_dir.path(), "").unwrap();
        let mut head = SegmentWriter::create(work.path(), "shop").unwrap();
        for i in 1..=5 {
            let entry =
                rawdoc! { "ts": ts(i), "op": "i", "ns": "shop.a", "o": { "_id": i64::from(i) } };
            head.append(entry.as_bytes(), ts(i)).unwrap();
        }
        let size = head.raw_size;
        let mut tail = head.split_after(ts(3)).unwrap();
        assert_eq!((head.operations, tail.operations), (3, 2));
        assert_eq!(head.raw_size + tail.raw_size, size);
        // Both go on being written.
        let entry = rawdoc! { "ts": ts(6), "op": "i", "ns": "shop.a", "o": { "_id": 6 } };
        tail.append(entry.as_bytes(), ts(6)).unwrap();
        let nothing_after = head.split_after(ts(9)).unwrap();
        assert_eq!(nothing_after.operations, 0);

        let head = head.seal(&store).await.unwrap();
        let tail = tail.seal(&store).await.unwrap();
        assert_eq!(entries_of(store_dir.path(), &head), [1, 2, 3]);
        assert_eq!(entries_of(store_dir.path(), &tail), [4, 5, 6]);
        assert_eq!(head.operations, 3);
        drop(nothing_after);
        assert_eq!(
            std::fs::read_dir(work.path()).unwrap().count(),
            0,
            "sealed and dropped writers leave no file"
        );
    }
}
