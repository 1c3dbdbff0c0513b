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

fn cluster_time(t: Option<&ferry_proto::v1::MongoClusterTime>) -> ClusterTime {
    t.map(|t| ClusterTime {
        seconds: t.seconds,
        increment: t.increment,
    })
    .unwrap_or_default()
}

impl From<&ferry_proto::v1::MongoDetails> for MongoManifest {
    fn from(d: &ferry_proto::v1::MongoDetails) -> Self {
        MongoManifest {
            start_time: cluster_time(d.start_time.as_ref()),
            end_time: cluster_time(d.end_time.as_ref()),
            oplog_captured: d.oplog_captured,
            oplog_entries: d.oplog_entries,
            feature_compatibility_version: d.feature_compatibility_version.clone(),
            collections: d
                .collections
                .iter()
                .map(|c| MongoCollection {
                    database: c.database.clone(),
                    name: c.name.clone(),
                    kind: c.r#type.clone(),
                    documents: c.documents,
                    bytes: c.bytes,
                })
                .collect(),
            dropped: d.dropped.clone(),
            warnings: d.warnings.clone(),
        }
    }
}
