//! A job's state between stages and replicas, in one NATS key-value bucket
//! ([`subjects::JOB_STATE_BUCKET`]), never in one process's memory:
//!
//! - `<job_id>`: the job's record ([`JobRecord`]). The dumper writes
//!   [`JobRecord::Dumped`] (its `DumpCompleted` summary) last, after every file is
//!   in the spool, so a redelivered `JobRequested` announces the same dump again
//!   instead of dumping again. When the manifest is committed the record shrinks to
//!   [`JobRecord::Committed`]: a `JobRequested` redelivered after that (a dumper
//!   that crashed between publishing and acking) must still not dump again, and
//!   the bucket's `max_age` removes it later. A job that fails for good keeps only
//!   [`JobRecord::Failed`], a tombstone that tells a late file upload of the job
//!   to drop its claim (see [`JobState::failed`]).
//! - `<job_id>.file.<sha256>`: the uploader's bookkeeping, which job stored each
//!   object ([`FileClaim`]). Created if absent, so two uploader replicas handling
//!   one job's `DumpFileReady` and `DumpCompleted` agree on whether this job
//!   uploaded the object or found it stored; removed when the job ends.
//!
//! Bounded: the bucket keeps one value per key (`history = 1`) and nothing older
//! than `nats.events_max_age`, whatever happens to the job.

use async_nats::jetstream::{self, kv};
use ferry_proto::Message;
use ferry_proto::subjects;
use ferry_proto::v1::DumpCompleted;
use ferry_storage::spool::{KeysError, keys_under};

/// Errors reading or writing job state.
#[derive(Debug, thiserror::Error)]
pub enum JobStateError {
    /// The bucket is missing (the process did not declare it) or unreachable.
    #[error("failed to open the job state bucket {bucket}: {source}")]
    Open {
        /// The bucket.
        bucket: &'static str,
        /// The server's answer.
        #[source]
        source: jetstream::context::KeyValueError,
    },
    /// A key could not be read.
    #[error("failed to read {key} from the job state bucket: {source}")]
    Read {
        /// The key.
        key: String,
        /// The server's answer.
        #[source]
        source: kv::EntryError,
    },
    /// A key could not be written.
    #[error("failed to write {key} to the job state bucket: {source}")]
    Write {
        /// The key.
        key: String,
        /// The server's answer.
        #[source]
        source: kv::PutError,
    },
    /// A key could not be created.
    #[error("failed to create {key} in the job state bucket: {source}")]
    Create {
        /// The key.
        key: String,
        /// The server's answer.
        #[source]
        source: kv::CreateError,
    },
    /// A key could not be removed.
    #[error("failed to remove {key} from the job state bucket: {source}")]
    Remove {
        /// The key.
        key: String,
        /// The server's answer.
        #[source]
        source: kv::PurgeError,
    },
    /// The job's keys could not be listed.
    #[error(transparent)]
    Keys(#[from] KeysError),
    /// A value that does not decode: written by something other than Ferry.
    #[error(
        "job state {key} holds a value this version of Ferry cannot read; delete the key to let the job start over"
    )]
    Damaged {
        /// The key.
        key: String,
    },
}

/// Where a job stands, as the stages need to know.
#[derive(Debug, Clone, PartialEq)]
pub enum JobRecord {
    /// The dump is complete and its files are in the spool (boxed: a dump
    /// summary is large, the other record is an id).
    Dumped(Box<DumpCompleted>),
    /// The manifest of this backup is committed and the spool files are gone.
    Committed {
        /// The committed backup.
        backup_id: String,
    },
    /// The job failed for good; its spool files and file claims are gone.
    Failed,
}

impl JobRecord {
    /// One tag byte, then the payload: a protobuf `DumpCompleted`, or the id.
    fn encode(&self) -> bytes::Bytes {
        let mut out = Vec::new();
        match self {
            JobRecord::Dumped(done) => {
                out.push(b'D');
                out.extend(done.encode_to_vec());
            }
            JobRecord::Committed { backup_id } => {
                out.push(b'C');
                out.extend(backup_id.as_bytes());
            }
            JobRecord::Failed => out.push(b'F'),
        }
        out.into()
    }

    fn decode(bytes: &[u8]) -> Option<JobRecord> {
        match bytes.split_first()? {
            (b'D', rest) => DumpCompleted::decode(rest)
                .ok()
                .map(|done| JobRecord::Dumped(Box::new(done))),
            (b'F', []) => Some(JobRecord::Failed),
            (b'C', rest) => Some(JobRecord::Committed {
                backup_id: String::from_utf8(rest.to_vec()).ok()?,
            }),
            _ => None,
        }
    }
}

/// Whether a job uploaded a file's object or found it already stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileClaim {
    /// The object was missing: this job uploads it.
    Uploaded,
    /// The object was stored before this job: reused.
    Reused,
}

impl FileClaim {
    fn as_bytes(self) -> &'static [u8] {
        match self {
            FileClaim::Uploaded => b"uploaded",
            FileClaim::Reused => b"reused",
        }
    }

    fn from_bytes(bytes: &[u8]) -> Option<FileClaim> {
        match bytes {
            b"uploaded" => Some(FileClaim::Uploaded),
            b"reused" => Some(FileClaim::Reused),
            _ => None,
        }
    }
}

/// The job state bucket.
#[derive(Clone)]
pub struct JobState {
    kv: kv::Store,
}

impl std::fmt::Debug for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "JobState({})", self.kv.name)
    }
}

fn file_key(job_id: &str, sha256: &str) -> String {
    format!("{job_id}.file.{sha256}")
}

impl JobState {
    /// Opens the bucket [`crate::nats::declare`] created.
    pub async fn open(js: &jetstream::Context) -> Result<JobState, JobStateError> {
        let kv = js
            .get_key_value(subjects::JOB_STATE_BUCKET)
            .await
            .map_err(|source| JobStateError::Open {
                bucket: subjects::JOB_STATE_BUCKET,
                source,
            })?;
        Ok(JobState { kv })
    }

    /// The job's record, if it has one.
    pub async fn get(&self, job_id: &str) -> Result<Option<JobRecord>, JobStateError> {
        let Some(bytes) = self.read(job_id).await? else {
            return Ok(None);
        };
        JobRecord::decode(&bytes)
            .map(Some)
            .ok_or_else(|| JobStateError::Damaged {
                key: job_id.to_string(),
            })
    }

    /// Records that the dump `done` is complete (replacing an earlier record).
    pub async fn put_dumped(&self, done: &DumpCompleted) -> Result<(), JobStateError> {
        self.write(
            &done.job_id,
            JobRecord::Dumped(Box::new(done.clone())).encode(),
        )
        .await
    }

    /// Records that `backup_id` is committed and drops the job's file claims.
    pub async fn committed(&self, job_id: &str, backup_id: &str) -> Result<(), JobStateError> {
        self.remove_claims(job_id).await?;
        let record = JobRecord::Committed {
            backup_id: backup_id.to_string(),
        };
        self.write(job_id, record.encode()).await
    }

    /// Records that a job failed for good and drops its file claims; repeating it
    /// is harmless.
    ///
    /// The tombstone is written before the claims are listed, and an uploader
    /// checks for it after creating a claim ([`JobState::drop_claim_if_failed`]), so
    /// a file upload racing the clean-up cannot leave a claim behind: either its
    /// claim is created before the listing (and removed here), or its check comes
    /// after the tombstone (and it removes its own claim).
    pub async fn failed(&self, job_id: &str) -> Result<(), JobStateError> {
        self.write(job_id, JobRecord::Failed.encode()).await?;
        self.remove_claims(job_id).await
    }

    /// After creating a claim: if the job failed for good meanwhile, removes the
    /// claim again and returns `true` (the upload should stop).
    pub async fn drop_claim_if_failed(
        &self,
        job_id: &str,
        sha256: &str,
    ) -> Result<bool, JobStateError> {
        if self.get(job_id).await? != Some(JobRecord::Failed) {
            return Ok(false);
        }
        self.purge(&file_key(job_id, sha256)).await?;
        Ok(true)
    }

    /// The claim recorded for the job's object `sha256`, if any.
    pub async fn file_claim(
        &self,
        job_id: &str,
        sha256: &str,
    ) -> Result<Option<FileClaim>, JobStateError> {
        let key = file_key(job_id, sha256);
        match self.read(&key).await? {
            None => Ok(None),
            Some(bytes) => FileClaim::from_bytes(&bytes)
                .map(Some)
                .ok_or(JobStateError::Damaged { key }),
        }
    }

    /// Records `claim` for the job's object `sha256` unless a claim is recorded
    /// already, and returns the one that holds: the first writer wins, whichever
    /// replica it is.
    pub async fn claim_file(
        &self,
        job_id: &str,
        sha256: &str,
        claim: FileClaim,
    ) -> Result<FileClaim, JobStateError> {
        let key = file_key(job_id, sha256);
        match self
            .kv
            .create(key.as_str(), bytes::Bytes::from_static(claim.as_bytes()))
            .await
        {
            Ok(_) => Ok(claim),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                match self.file_claim(job_id, sha256).await? {
                    Some(held) => Ok(held),
                    // Removed in between (the job ended): nothing to agree with.
                    None => Ok(claim),
                }
            }
            Err(source) => Err(JobStateError::Create { key, source }),
        }
    }

    async fn remove_claims(&self, job_id: &str) -> Result<(), JobStateError> {
        for key in keys_under(&self.kv, &format!("{job_id}.file.")).await? {
            self.purge(&key).await?;
        }
        Ok(())
    }

    async fn read(&self, key: &str) -> Result<Option<bytes::Bytes>, JobStateError> {
        self.kv
            .get(key)
            .await
            .map_err(|source| JobStateError::Read {
                key: key.to_string(),
                source,
            })
    }

    async fn write(&self, key: &str, value: bytes::Bytes) -> Result<(), JobStateError> {
        self.kv
            .put(key, value)
            .await
            .map(|_| ())
            .map_err(|source| JobStateError::Write {
                key: key.to_string(),
                source,
            })
    }

    async fn purge(&self, key: &str) -> Result<(), JobStateError> {
        self.kv
            .purge(key)
            .await
            .map_err(|source| JobStateError::Remove {
                key: key.to_string(),
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let dumped = JobRecord::Dumped(Box::new(DumpCompleted {
            job_id: "j1".into(),
            backup_id: "b1".into(),
            ..Default::default()
        }));
        let committed = JobRecord::Committed {
            backup_id: "b1".into(),
        };
        for record in [dumped, committed, JobRecord::Failed] {
            assert_eq!(JobRecord::decode(&record.encode()), Some(record));
        }
        assert_eq!(JobRecord::decode(b""), None);
        assert_eq!(JobRecord::decode(b"Xjunk"), None);
    }
}
