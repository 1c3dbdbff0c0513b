//! Engine details carried from `DumpCompleted` into the manifest.

use ferry_proto::v1::{MongoClusterTime, MongoDetails};
use ferry_storage::MongoManifest;
use ferry_storage::manifest_mongo::{ClusterTime, MongoCollection};

fn time(t: Option<&MongoClusterTime>) -> ClusterTime {
    t.map(|t| ClusterTime {
        seconds: t.seconds,
        increment: t.increment,
    })
    .unwrap_or_default()
}

/// The manifest's `mongodb` section.
pub fn mongo_manifest(d: &MongoDetails) -> MongoManifest {
    MongoManifest {
        start_time: time(d.start_time.as_ref()),
        end_time: time(d.end_time.as_ref()),
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
