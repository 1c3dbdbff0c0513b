//! `[spool]` and `[storage]`: where dump files wait, and where backups are kept.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The kind of spool.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SpoolKind {
    /// A directory shared by dumper and uploader (same host, pod or volume).
    #[default]
    Dir,
    /// A JetStream object store bucket: dumpers and uploaders on different machines.
    Nats,
}

/// `[spool]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolConfig {
    /// The spool kind.
    pub kind: SpoolKind,
    /// The spool directory (for `nats`, where the dumper writes files before
    /// handing them to the bucket).
    pub path: PathBuf,
    /// The name of this node in events (default: the host name).
    pub node: Option<String>,
    /// The JetStream object store bucket of the `nats` spool.
    pub bucket: String,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            kind: SpoolKind::Dir,
            path: PathBuf::from("/var/lib/ferry/spool"),
            node: None,
            bucket: "ferry-spool".into(),
        }
    }
}

/// The kind of object store.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StorageKind {
    /// A local directory (the embedded default).
    #[default]
    Fs,
    /// An S3-compatible object store.
    S3,
}

/// When the S3 SDK adds its own request checksums (`storage.request_checksum`).
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RequestChecksumConfig {
    /// On every request that supports them (AWS S3).
    WhenSupported,
    /// Only where the API requires one (B2, R2, MinIO, Garage and other compatible
    /// stores that reject the SDK's CRC32 trailers). Content-MD5 still protects
    /// every body Ferry sends.
    WhenRequired,
}

/// `[storage]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// The store kind.
    pub kind: StorageKind,
    /// Directory of the `fs` store.
    pub path: PathBuf,
    /// Bucket of the `s3` store.
    pub bucket: Option<String>,
    /// Key prefix under which Ferry keeps everything.
    pub prefix: String,
    /// S3 endpoint (B2, MinIO, Garage, R2); unset for AWS.
    pub endpoint: Option<String>,
    /// S3 region (default `us-east-1`).
    pub region: Option<String>,
    /// Path-style S3 addressing.
    pub force_path_style: bool,
    /// Environment variable holding the S3 access key id.
    pub access_key_id_env: Option<String>,
    /// Environment variable holding the S3 secret key.
    pub secret_access_key_env: Option<String>,
    /// File holding the S3 access key id (a Docker or Kubernetes secret).
    pub access_key_id_file: Option<PathBuf>,
    /// File holding the S3 secret key.
    pub secret_access_key_file: Option<PathBuf>,
    /// When the SDK adds flexible checksums; default: `when_supported` for AWS
    /// (no endpoint), `when_required` with a custom endpoint.
    pub request_checksum: Option<RequestChecksumConfig>,
    /// Attempts per S3 request inside the SDK (throttling, 5xx, connection errors).
    pub max_attempts: u32,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            kind: StorageKind::Fs,
            path: PathBuf::from("/var/lib/ferry/store"),
            bucket: None,
            prefix: "ferry".into(),
            endpoint: None,
            region: None,
            force_path_style: false,
            access_key_id_env: None,
            secret_access_key_env: None,
            access_key_id_file: None,
            secret_access_key_file: None,
            request_checksum: None,
            max_attempts: 3,
        }
    }
}

/// A size in bytes, written as a number or with a unit: `8388608`, `"8MiB"`,
/// `"16 MB"`, `"1GiB"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(into = "u64")]
pub struct ByteSize(pub u64);

impl From<ByteSize> for u64 {
    fn from(b: ByteSize) -> u64 {
        b.0
    }
}

impl ByteSize {
    /// Parses `"8MiB"`, `"16 MB"`, `"1024"`.
    pub fn parse(text: &str) -> Result<ByteSize, String> {
        let t = text.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("{text:?} is not a size like 8MiB"))?;
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" => 1000,
            "kib" => 1 << 10,
            "m" | "mb" => 1000 * 1000,
            "mib" => 1 << 20,
            "g" | "gb" => 1000 * 1000 * 1000,
            "gib" => 1 << 30,
            _ => {
                return Err(format!(
                    "{text:?} has an unknown unit (use B, KiB, MiB, GiB)"
                ));
            }
        };
        n.checked_mul(mult)
            .map(ByteSize)
            .ok_or_else(|| format!("{text:?} is too large"))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(n) => Ok(ByteSize(n)),
            Raw::Text(t) => ByteSize::parse(&t).map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Config;

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(ByteSize::parse("8MiB").unwrap().0, 8 << 20);
        assert_eq!(ByteSize::parse("16 MB").unwrap().0, 16_000_000);
        assert_eq!(ByteSize::parse("1024").unwrap().0, 1024);
        assert!(ByteSize::parse("lots").is_err());
        assert!(ByteSize::parse("3 parsecs").is_err());
    }

    #[test]
    fn the_documented_s3_configuration_parses() {
        let config = Config::from_toml(
            r#"
[spool]
kind = "nats"
bucket = "spool"

[storage]
kind = "s3"
bucket = "backups"
prefix = "ferry"
endpoint = "http://127.0.0.1:9000"
region = "us-east-1"
force_path_style = true
access_key_id_env = "FERRY_S3_ACCESS_KEY_ID"
secret_access_key_env = "FERRY_S3_SECRET_ACCESS_KEY"
request_checksum = "when_required"
"#,
        )
        .unwrap();
        assert_eq!(config.storage.kind, StorageKind::S3);
        assert_eq!(
            config.storage.request_checksum,
            Some(RequestChecksumConfig::WhenRequired)
        );
        assert_eq!(config.spool.kind, SpoolKind::Nats);
        // `[uploader] part_size` is checked beside its section (services/uploader).
    }

    // With `[uploader]` problems after these: services/uploader/src/config.rs.
    #[test]
    fn s3_problems_name_their_keys() {
        let err = Config::from_toml(
            r#"
[storage]
kind = "s3"
access_key_id_env = "A"
access_key_id_file = "/run/secrets/a"
"#,
        )
        .unwrap_err();
        let keys: Vec<&str> = err.problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "storage.bucket",
                "storage.access_key_id_env",
                "storage.secret_access_key_env",
            ]
        );
    }
}
