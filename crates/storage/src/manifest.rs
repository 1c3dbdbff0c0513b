//! The manifest: a backup's table of contents and its commit point.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The current manifest format.
pub const FORMAT_VERSION: u32 = 1;

/// One backup, as stored at `backups/<source>/<backup-id>.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Manifest format version.
    pub format: u32,
    /// The backup id: `<UTC time>-<short job id>`, sortable by time.
    pub backup_id: String,
    /// The source name.
    pub source: String,
    /// The engine (`postgres`, `mongodb`).
    pub engine: String,
    /// The job that made it.
    pub job_id: String,
    /// The database server's version.
    pub server_version: String,
    /// The dump tool and its version.
    pub tool_version: String,
    /// When the dump started.
    pub started_at: DateTime<Utc>,
    /// When the manifest was written.
    pub completed_at: DateTime<Utc>,
    /// The databases in the backup.
    pub databases: Vec<String>,
    /// Every file, in dump order.
    pub files: Vec<ManifestFile>,
    /// Bytes the backup references.
    pub bytes_total: u64,
    /// Bytes this job uploaded.
    pub bytes_uploaded: u64,
    /// Bytes reused from earlier backups.
    pub bytes_reused: u64,
    /// The job's trace id, to find it in a tracing UI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// What a PostgreSQL dump recorded (versions, sizes, row estimates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres: Option<crate::postgres_manifest::PostgresManifest>,
    /// What a MongoDB dump captured: its point in time and counts per collection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mongodb: Option<crate::MongoManifest>,
}

/// One file of a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestFile {
    /// Path in the restored layout (`orders/toc.dat`).
    pub name: String,
    /// Object key holding its bytes.
    pub object: String,
    /// Size in bytes.
    pub size: u64,
    /// Lowercase hex SHA-256 of the bytes.
    pub sha256: String,
    /// `none`, `gzip` or `zstd`.
    pub compression: String,
    /// Whether the object was already stored by an earlier backup.
    pub reused: bool,
}

impl Manifest {
    /// Parses a manifest, refusing formats newer than this build understands.
    pub fn from_json(bytes: &[u8]) -> Result<Manifest, String> {
        let m: Manifest =
            serde_json::from_slice(bytes).map_err(|e| format!("invalid manifest: {e}"))?;
        if m.format > FORMAT_VERSION {
            return Err(format!(
                "manifest format {} is newer than this Ferry understands ({FORMAT_VERSION}): upgrade Ferry",
                m.format
            ));
        }
        Ok(m)
    }

    /// Serialises the manifest (pretty, so operators can read it).
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("a manifest always serialises")
    }
}
