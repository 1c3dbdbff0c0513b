//! The manifest: a backup's table of contents and its commit point. The engine
//! sections ([`postgres`], [`mongo`]) are built here from the dumper's event, so
//! the whole format, and how a dump becomes it, is in this one module.

pub mod mongo;
pub mod postgres;

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use mongo::MongoManifest;
pub use postgres::PostgresManifest;

/// The current manifest format.
pub const FORMAT_VERSION: u32 = 1;

/// The format of an encrypted manifest's envelope ([`Manifest::seal`]): what the
/// store shows of an encrypted backup. A Ferry that predates encryption refuses it
/// as newer than it understands instead of misreading it.
pub const SEALED_FORMAT_VERSION: u32 = 2;

/// One backup, as stored at `backups/<source>/<backup-id>.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Manifest format version.
    pub format: u32,
    /// The backup id: `<UTC time>-<short job id>`, sortable by time.
    pub backup_id: String,
    /// The source name.
    pub source: String,
    /// The engine (`postgres`, `mongodb` on disk).
    pub engine: Engine,
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
    pub postgres: Option<PostgresManifest>,
    /// What a MongoDB dump captured: its point in time and counts per collection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mongodb: Option<MongoManifest>,
    /// Read from an encrypted manifest without an identity: only what the envelope
    /// shows (ids, times, sizes, and the stored objects as `files` named
    /// `encrypted file N`); no databases, names or counts. Enough to list, verify
    /// the stored bytes, plan retention and collect garbage; never to restore.
    #[serde(skip)]
    pub locked: bool,
}

/// An encrypted object as stored: the ciphertext's size and SHA-256, what `ferry
/// verify` checks without any key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stored {
    /// Bytes in the store.
    pub size: u64,
    /// Lowercase hex SHA-256 of the bytes in the store.
    pub sha256: String,
}

/// One object of an encrypted backup, as its envelope shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredObject {
    /// The object key.
    pub object: String,
    /// Bytes in the store.
    pub size: u64,
    /// SHA-256 of the bytes in the store.
    pub sha256: String,
}

/// The envelope of an encrypted manifest: public facts, the stored objects, and the
/// whole manifest sealed to the recipients.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SealedManifest {
    format: u32,
    backup_id: String,
    source: String,
    engine: Engine,
    job_id: String,
    started_at: DateTime<Utc>,
    completed_at: DateTime<Utc>,
    bytes_total: u64,
    bytes_uploaded: u64,
    bytes_reused: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    trace_id: Option<String>,
    objects: Vec<StoredObject>,
    /// The full manifest (format 1 JSON) as an age file, base64 (standard, padded):
    /// `base64 -d | age -d -i key.txt` reads it without Ferry.
    sealed: String,
}

/// Why a stored manifest cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Not a manifest this Ferry can read.
    #[error("{0}")]
    Invalid(String),
    /// Encrypted, and the identity cannot open it.
    #[error(transparent)]
    Open(#[from] crate::encryption::OpenError),
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
    /// How the object is compressed (`none`, `gzip` or `zstd` on disk).
    pub compression: Compression,
    /// Whether the object was already stored by an earlier backup.
    pub reused: bool,
    /// When the object is encrypted: the stored ciphertext's size and SHA-256
    /// (`size` and `sha256` above are then those of the plaintext).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored: Option<Stored>,
}

impl ManifestFile {
    /// The size of the object as stored.
    pub fn stored_size(&self) -> u64 {
        self.stored.as_ref().map_or(self.size, |s| s.size)
    }

    /// The SHA-256 of the object as stored.
    pub fn stored_sha256(&self) -> &str {
        self.stored.as_ref().map_or(&self.sha256, |s| &s.sha256)
    }
}

/// The database engine a backup came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// PostgreSQL.
    Postgres,
    /// MongoDB.
    Mongodb,
}

impl Engine {
    /// The name on disk and in configuration.
    pub fn name(self) -> &'static str {
        match self {
            Engine::Postgres => "postgres",
            Engine::Mongodb => "mongodb",
        }
    }

    /// The engine of an event's `engine` field; `None` when unset or unknown.
    pub fn from_proto(engine: i32) -> Option<Engine> {
        match ferry_proto::v1::Engine::try_from(engine).ok()? {
            ferry_proto::v1::Engine::Postgres => Some(Engine::Postgres),
            ferry_proto::v1::Engine::Mongodb => Some(Engine::Mongodb),
            ferry_proto::v1::Engine::Unspecified => None,
        }
    }
}

impl fmt::Display for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How a backup file is compressed in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// Stored as the dump tool wrote it (early manifests wrote `""`).
    #[serde(alias = "")]
    None,
    /// gzip (pg_dump's own `.dat.gz` files).
    Gzip,
    /// zstd (Ferry's `.zst` files).
    Zstd,
}

impl Compression {
    /// The name on disk and in `DumpFile.compression`.
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        }
    }

    /// Parses a `DumpFile.compression` value.
    pub fn parse(name: &str) -> Result<Compression, UnknownCompression> {
        match name {
            "none" | "" => Ok(Compression::None),
            "gzip" => Ok(Compression::Gzip),
            "zstd" => Ok(Compression::Zstd),
            other => Err(UnknownCompression(other.to_string())),
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A compression name this build does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown compression {0:?}: this Ferry reads none, gzip and zstd; upgrade Ferry")]
pub struct UnknownCompression(pub String);

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
        debug_assert!(!self.locked, "a locked view is never written");
        serde_json::to_vec_pretty(self).expect("a manifest always serialises")
    }

    /// The manifest as an encrypted store holds it: an envelope showing only the
    /// source, ids, times, sizes and the stored objects, with the whole manifest
    /// sealed to the recipients inside.
    pub fn seal(&self, sealer: &crate::encryption::Sealer) -> Vec<u8> {
        use base64::Engine as _;
        let envelope = SealedManifest {
            format: SEALED_FORMAT_VERSION,
            backup_id: self.backup_id.clone(),
            source: self.source.clone(),
            engine: self.engine,
            job_id: self.job_id.clone(),
            started_at: self.started_at,
            completed_at: self.completed_at,
            bytes_total: self.bytes_total,
            bytes_uploaded: self.bytes_uploaded,
            bytes_reused: self.bytes_reused,
            trace_id: self.trace_id.clone(),
            objects: self
                .files
                .iter()
                .map(|f| StoredObject {
                    object: f.object.clone(),
                    size: f.stored_size(),
                    sha256: f.stored_sha256().to_string(),
                })
                .collect(),
            sealed: base64::engine::general_purpose::STANDARD.encode(sealer.seal(&self.to_json())),
        };
        serde_json::to_vec_pretty(&envelope).expect("an envelope always serialises")
    }

    /// Reads a manifest as stored, plain or encrypted. An encrypted one is opened
    /// with `opener` when given (and must be the backup its envelope names);
    /// without one it is read as a [`Manifest::locked`] view.
    pub fn from_stored(
        bytes: &[u8],
        opener: Option<&crate::encryption::Opener>,
        what: &str,
    ) -> Result<Manifest, ManifestError> {
        #[derive(Deserialize)]
        struct Probe {
            #[serde(default)]
            format: u32,
        }
        let probe: Probe = serde_json::from_slice(bytes)
            .map_err(|e| ManifestError::Invalid(format!("invalid manifest: {e}")))?;
        if probe.format != SEALED_FORMAT_VERSION {
            return Manifest::from_json(bytes).map_err(ManifestError::Invalid);
        }
        let envelope: SealedManifest = serde_json::from_slice(bytes)
            .map_err(|e| ManifestError::Invalid(format!("invalid encrypted manifest: {e}")))?;
        let Some(opener) = opener else {
            return Ok(envelope.locked_view());
        };
        use base64::Engine as _;
        let sealed = base64::engine::general_purpose::STANDARD
            .decode(envelope.sealed.as_bytes())
            .map_err(|e| ManifestError::Invalid(format!("invalid encrypted manifest: {e}")))?;
        let inner = opener.open(&sealed, what)?;
        let manifest = Manifest::from_json(&inner).map_err(ManifestError::Invalid)?;
        if manifest.backup_id != envelope.backup_id || manifest.source != envelope.source {
            return Err(ManifestError::Invalid(format!(
                "the sealed manifest is backup {} of {}, not the {} of {} its envelope names: it was moved or swapped",
                manifest.backup_id, manifest.source, envelope.backup_id, envelope.source
            )));
        }
        Ok(manifest)
    }
}

impl SealedManifest {
    fn locked_view(self) -> Manifest {
        Manifest {
            format: self.format,
            backup_id: self.backup_id,
            source: self.source,
            engine: self.engine,
            job_id: self.job_id,
            server_version: String::new(),
            tool_version: String::new(),
            started_at: self.started_at,
            completed_at: self.completed_at,
            databases: Vec::new(),
            files: self
                .objects
                .into_iter()
                .enumerate()
                .map(|(i, o)| ManifestFile {
                    name: format!("encrypted file {}", i + 1),
                    object: o.object,
                    size: o.size,
                    sha256: o.sha256.clone(),
                    compression: Compression::None,
                    reused: false,
                    stored: Some(Stored {
                        size: o.size,
                        sha256: o.sha256,
                    }),
                })
                .collect(),
            bytes_total: self.bytes_total,
            bytes_uploaded: self.bytes_uploaded,
            bytes_reused: self.bytes_reused,
            trace_id: self.trace_id,
            postgres: None,
            mongodb: None,
            locked: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A manifest as the first wave wrote it: engine and compression as strings,
    /// including the empty compression name of early files.
    const OLD: &str = r#"{
  "format": 1, "backup_id": "20261121T020000Z-2e3f4a5b", "source": "orders",
  "engine": "mongodb", "job_id": "j", "server_version": "8.2", "tool_version": "ferry",
  "started_at": "2026-11-21T02:00:00Z", "completed_at": "2026-11-21T02:01:00Z",
  "databases": ["shop"],
  "files": [
    {"name": "shop/a.bson.zst", "object": "objects/aa", "size": 1, "sha256": "aa",
     "compression": "zstd", "reused": false},
    {"name": "shop/b.metadata.json", "object": "objects/bb", "size": 1, "sha256": "bb",
     "compression": "", "reused": true},
    {"name": "shop/c.dat.gz", "object": "objects/cc", "size": 1, "sha256": "cc",
     "compression": "gzip", "reused": true}
  ],
  "bytes_total": 3, "bytes_uploaded": 1, "bytes_reused": 2
}"#;

    #[test]
    fn old_manifests_read_and_the_same_strings_are_written() {
        let m = Manifest::from_json(OLD.as_bytes()).unwrap();
        assert_eq!(m.engine, Engine::Mongodb);
        let kinds: Vec<Compression> = m.files.iter().map(|f| f.compression).collect();
        assert_eq!(
            kinds,
            [Compression::Zstd, Compression::None, Compression::Gzip]
        );
        let written: serde_json::Value = serde_json::from_slice(&m.to_json()).unwrap();
        assert_eq!(written["engine"], "mongodb");
        let names: Vec<&str> = written["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["compression"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["zstd", "none", "gzip"]);
        assert_eq!(Manifest::from_json(&m.to_json()).unwrap(), m);
    }

    #[test]
    fn unknown_engines_and_compressions_are_refused_by_name() {
        let err =
            Manifest::from_json(OLD.replace("\"mongodb\"", "\"oracle\"").as_bytes()).unwrap_err();
        assert!(err.contains("oracle"), "{err}");
        let err =
            Manifest::from_json(OLD.replace("\"gzip\"", "\"brotli\"").as_bytes()).unwrap_err();
        assert!(err.contains("brotli"), "{err}");
        assert_eq!(
            Compression::parse("lz4").unwrap_err().to_string(),
            "unknown compression \"lz4\": this Ferry reads none, gzip and zstd; upgrade Ferry"
        );
        assert_eq!(Compression::parse("zstd"), Ok(Compression::Zstd));
    }
}
