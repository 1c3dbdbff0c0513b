//! What a MongoDB backup's manifest records beyond the files: the point in time the
//! restore lands on, and counts per collection.

use serde::{Deserialize, Serialize};

/// A MongoDB cluster time (a BSON Timestamp).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ClusterTime {
    /// Seconds since the Unix epoch.
    pub seconds: u32,
    /// Order within the second.
    pub increment: u32,
}

/// The `mongodb` section of a manifest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MongoManifest {
    /// The server's operationTime when the dump started.
    pub start_time: ClusterTime,
    /// The instant a restore lands on once `oplog.bson` is replayed.
    pub end_time: ClusterTime,
    /// Whether the changes made during the dump are in `oplog.bson`.
    pub oplog_captured: bool,
    /// Entries in `oplog.bson`.
    pub oplog_entries: u64,
    /// The server's featureCompatibilityVersion.
    pub feature_compatibility_version: String,
    /// Every collection and view dumped.
    pub collections: Vec<MongoCollection>,
    /// `db.collection` of collections dropped while the dump ran (not in the backup).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dropped: Vec<String>,
    /// Things an operator should know about this dump.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// One collection or view in a MongoDB backup.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MongoCollection {
    /// Its database.
    pub database: String,
    /// Its name.
    pub name: String,
    /// `collection`, `view` or `timeseries`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Documents in its `.bson` file.
    pub documents: u64,
    /// Uncompressed bytes of its `.bson` file.
    pub bytes: u64,
}
