//! What can go wrong in the uploader, as one error type that keeps its causes, and
//! the one place ([`classify`]) that turns it into a reason code and decides
//! whether a retry can help.

use ferry_proto::reason;
use ferry_runtime::HandlerError;
use ferry_runtime::jobstate::JobStateError;
use ferry_storage::StorageError;

/// An upload or commit that failed.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// The job failed for good (its spool files are removed): nothing more is
    /// uploaded for it.
    #[error("job {job_id} has failed for good already; nothing more is uploaded for it")]
    JobFailed {
        /// The job.
        job_id: String,
    },
    /// A request to the object store failed (the error says which and on what).
    #[error(transparent)]
    Store(#[from] StorageError),
    /// A spool file could not be opened or read.
    #[error(
        "cannot read {name} of job {job_id} from the spool ({spool}): {source}; run the uploader where it can see the dumper's spool"
    )]
    SpoolRead {
        /// The job.
        job_id: String,
        /// The file.
        name: String,
        /// The spool, described.
        spool: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The job's files are not in this uploader's spool at all.
    #[error(
        "the dump files of job {job_id} ({location}) are not in this uploader's spool {spool}: run the uploader where it can see the dumper's spool"
    )]
    SpoolMissing {
        /// The job.
        job_id: String,
        /// Where the dumper said the files are.
        location: String,
        /// This uploader's spool, described.
        spool: String,
    },
    /// What was read differs from what the dumper recorded.
    /// Encrypting a file failed (the age writer; in practice only out of memory).
    #[error("encrypting {name} failed: {source}")]
    Encrypt {
        /// The file.
        name: String,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    #[error(
        "spool file {name} of job {job_id} has {size} bytes with SHA-256 {sha256}, but the dumper recorded {expected_size} bytes with {expected_sha256}: the spool was modified or is damaged; run the backup again"
    )]
    ChecksumMismatch {
        /// The job.
        job_id: String,
        /// The file.
        name: String,
        /// Bytes read.
        size: u64,
        /// SHA-256 of what was read.
        sha256: String,
        /// Bytes the dumper recorded.
        expected_size: u64,
        /// SHA-256 the dumper recorded.
        expected_sha256: String,
    },
    /// A part upload task panicked or was cancelled.
    #[error("a part upload task of {object} ended abnormally: {source}")]
    PartTask {
        /// The object.
        object: String,
        /// How it ended.
        #[source]
        source: tokio::task::JoinError,
    },
    /// An object the manifest would name is not in the store after its upload.
    #[error(
        "object {object} of {name} is missing from the store after its upload; the backup is not committed"
    )]
    MissingAfterUpload {
        /// The object.
        object: String,
        /// The file.
        name: String,
    },
    /// An existing manifest does not parse.
    #[error("{key}: {message}")]
    ManifestUnreadable {
        /// The manifest's key.
        key: String,
        /// What is wrong with it.
        message: String,
    },
    /// An event that breaks the contract between the dumper and the uploader.
    #[error("{0}")]
    Malformed(String),
    /// The manifest just written is not there when read back.
    #[error("manifest {key} vanished right after it was written; retrying")]
    ManifestVanished {
        /// The manifest's key.
        key: String,
    },
    /// The job's record or file claims in NATS could not be read or written.
    #[error(transparent)]
    JobState(#[from] JobStateError),
    /// The job ran past the deadline the scheduler set.
    #[error(
        "the backup of {source_name} ran past its deadline while uploading; raise the source's timeout or check the store's speed"
    )]
    Timeout {
        /// The source.
        source_name: String,
    },
}

/// The uploader stage's reason code for `err`, and whether retrying can help.
pub fn classify(err: &UploadError) -> HandlerError {
    let message = err.to_string();
    match err {
        UploadError::Store(e) if e.is_retryable() => {
            HandlerError::retryable(reason::STORAGE_ERROR, message)
        }
        UploadError::Store(_) | UploadError::ManifestUnreadable { .. } => {
            HandlerError::permanent(reason::STORAGE_ERROR, message)
        }
        UploadError::MissingAfterUpload { .. } | UploadError::ManifestVanished { .. } => {
            HandlerError::retryable(reason::STORAGE_ERROR, message)
        }
        UploadError::SpoolRead { .. }
        | UploadError::SpoolMissing { .. }
        | UploadError::JobFailed { .. } => HandlerError::permanent(reason::SPOOL_MISSING, message),
        UploadError::Malformed(_) => HandlerError::permanent(reason::MALFORMED_MESSAGE, message),
        UploadError::ChecksumMismatch { .. } => {
            HandlerError::permanent(reason::CHECKSUM_MISMATCH, message)
        }
        UploadError::PartTask { .. } | UploadError::JobState(_) | UploadError::Encrypt { .. } => {
            HandlerError::retryable(reason::INTERNAL, message)
        }
        UploadError::Timeout { .. } => HandlerError::permanent(reason::TIMEOUT, message),
    }
}

impl From<UploadError> for HandlerError {
    fn from(err: UploadError) -> HandlerError {
        classify(&err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_gets_its_reason_and_retry_policy() {
        let cases = [
            (
                UploadError::SpoolMissing {
                    job_id: "j".into(),
                    location: "x on y".into(),
                    spool: "dir:/s".into(),
                },
                reason::SPOOL_MISSING,
                false,
            ),
            (
                UploadError::MissingAfterUpload {
                    object: "objects/ab".into(),
                    name: "f".into(),
                },
                reason::STORAGE_ERROR,
                true,
            ),
            (
                UploadError::Timeout {
                    source_name: "orders".into(),
                },
                reason::TIMEOUT,
                false,
            ),
        ];
        for (err, code, retryable) in cases {
            let classified = classify(&err);
            assert_eq!(classified.reason(), code, "{err}");
            assert_eq!(
                matches!(classified, HandlerError::Retryable { .. }),
                retryable,
                "{err}"
            );
        }
    }
}
