//! Why a source's capture stopped. Every one is logged with the source's name and
//! its causes, and the source is tried again after a backoff; what has been
//! committed stays, and the next run resumes after it.

use ferry_storage::{CatalogError, StorageError};

/// A source's capture stopped.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// The source's URL or password is unusable.
    #[error("source {source_name}: {message}")]
    Source {
        /// The source.
        source_name: String,
        /// What is wrong and what to do.
        message: String,
    },
    /// The server cannot serve change streams.
    #[error(
        "source {0}: the server cannot serve change streams (a standalone mongod?), so its changes cannot be captured; run it as a replica set (a one-node set will do) or turn pitr off for this source"
    )]
    NoChangeStreams(String),
    /// The server failed or refused.
    #[error("source {source_name}: {what}")]
    Server {
        /// The source.
        source_name: String,
        /// What capture was doing.
        what: String,
        /// The driver's error (boxed: it is large, and errors travel by value).
        #[source]
        cause: Box<mongodb::error::Error>,
    },
    /// The store failed.
    #[error("source {source_name}: {what}")]
    Store {
        /// The source.
        source_name: String,
        /// What capture was doing.
        what: String,
        /// The store's error.
        #[source]
        cause: Box<StorageError>,
    },
    /// A point-in-time record could not be read.
    #[error("source {source_name}: {what}")]
    Catalog {
        /// The source.
        source_name: String,
        /// What capture was doing.
        what: String,
        /// The catalog's error.
        #[source]
        cause: Box<CatalogError>,
    },
    /// The segment file in the work directory failed.
    #[error("source {source_name}: writing {path}")]
    WorkDir {
        /// The source.
        source_name: String,
        /// The file.
        path: String,
        /// The error.
        #[source]
        cause: std::io::Error,
    },
    /// The lease was lost (renewal failed): another replica may capture now, so
    /// this one stops without committing.
    #[error("source {0}: lost the capture lease; another replica takes over")]
    LeaseLost(String),
    /// Publishing an event failed.
    #[error("source {source_name}: publishing {what}")]
    Publish {
        /// The source.
        source_name: String,
        /// Which event.
        what: String,
        /// The error.
        #[source]
        cause: Box<ferry_runtime::publisher::PublishError>,
    },
}
