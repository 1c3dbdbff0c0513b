//! What can go wrong with a job request, and the one place that turns it into a
//! reason code (`ferry_proto::reason`) for `BackupFailed` and the reply.

use ferry_proto::reason;
use ferry_runtime::publisher::PublishError;

/// Why a job request was not queued.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// Larger than `scheduler.max_request_bytes`.
    #[error(
        "job request of {size} bytes is larger than the {max} bytes accepted; send only the source and options"
    )]
    TooLarge {
        /// The request's size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// Not the JSON of a request.
    #[error(
        "job request is not valid JSON of the form {{\"source\":\"name\"}} (optional: reason, databases, job_id, priority \"normal\" or \"high\")"
    )]
    Malformed(#[source] serde_json::Error),
    /// A `job_id` that is not a UUID.
    #[error("job_id {0:?} is not a UUID")]
    JobId(String),
    /// A source name that cannot be one.
    #[error("source names are 1-64 characters of [a-z0-9_-], starting with a letter or digit")]
    SourceName,
    /// No such source in the file or the registry (also when it was removed while
    /// the request was being handled).
    #[error("unknown source {name:?}; configured sources: {known}")]
    UnknownSource {
        /// The name asked for.
        name: String,
        /// Some of the sources there are.
        known: String,
    },
    /// The job could not be published.
    #[error("the job could not be queued; try again")]
    Queue(#[source] PublishError),
}

/// The reason code of a request error: the only place the scheduler chooses one.
pub fn classify(error: &RequestError) -> &'static str {
    match error {
        RequestError::TooLarge { .. } => reason::PAYLOAD_TOO_LARGE,
        RequestError::Malformed(_) | RequestError::JobId(_) => reason::MALFORMED_REQUEST,
        RequestError::SourceName => reason::INVALID_SOURCE_NAME,
        RequestError::UnknownSource { .. } => reason::UNKNOWN_SOURCE,
        RequestError::Queue(_) => reason::INTERNAL,
    }
}

/// The error and its causes in one line, as events and replies carry it.
pub fn message(error: &RequestError) -> String {
    ferry_runtime::error_chain(error)
}
