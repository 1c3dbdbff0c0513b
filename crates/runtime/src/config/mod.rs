//! Configuration: defaults, then the TOML file, then `FERRY_<SECTION>__<KEY>`
//! environment variables; validated once at start-up, before any connection is
//! opened, so a bad value stops the process with a message naming the key.
//!
//! The runtime owns what every process shares (nats, http, telemetry, sources,
//! storage, spool, retry, leases); each service owns its own section and hands it to
//! start-up validation through [`Section`] (see [`section`]).
//!
//! The configuration holds no secrets: a source or channel names the environment
//! variable or file its secret comes from, and the secret is read only where used.

mod leases;
mod pitr;
mod retention;
pub mod section;
mod storage;
mod validate;

use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::{Deserialize, Serialize};

pub use leases::LeasesConfig;
pub use pitr::PitrConfig;
pub use retention::RetentionPolicy;
pub use section::{SERVICE_SECTIONS, Section, SectionSpec};
pub use storage::{
    ByteSize, RequestChecksumConfig, SpoolConfig, SpoolKind, StorageConfig, StorageKind,
};
pub use validate::{ConfigError, ConfigProblem};

/// The configuration every Ferry process shares (every worker reads the same file).
/// A service's own section is read with [`Config::section`].
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// How to reach NATS.
    #[serde(default)]
    pub nats: NatsConfig,
    /// Where the dumper leaves files for the uploader.
    #[serde(default)]
    pub spool: SpoolConfig,
    /// Where backups are stored.
    #[serde(default)]
    pub storage: StorageConfig,
    /// The databases to back up.
    #[serde(default)]
    pub sources: Vec<SourceConfig>,
    /// Logs and traces.
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    /// Health and metrics endpoint.
    #[serde(default)]
    pub http: HttpConfig,
    /// How failed work is retried.
    #[serde(default)]
    pub retry: RetryConfig,
    /// The per-source leases.
    #[serde(default)]
    pub leases: LeasesConfig,
    /// Client-side encryption: the recipients new objects are encrypted to, the
    /// writers' name key, and (on restore hosts) the identity.
    #[serde(default)]
    pub encryption: ferry_storage::encryption::EncryptionConfig,

    // The services' sections ([`SERVICE_SECTIONS`]): accepted here by name, so a file
    // with every section serves every binary, and parsed by their services.
    #[serde(rename = "scheduler", default, skip_serializing)]
    _scheduler: ServiceOwned,
    #[serde(rename = "dumper", default, skip_serializing)]
    _dumper: ServiceOwned,
    #[serde(rename = "uploader", default, skip_serializing)]
    _uploader: ServiceOwned,
    #[serde(rename = "retention", default, skip_serializing)]
    _retention: ServiceOwned,
    #[serde(rename = "notifier", default, skip_serializing)]
    _notifier: ServiceOwned,
    #[serde(rename = "notify", default, skip_serializing)]
    _notify: ServiceOwned,
    #[serde(rename = "capture", default, skip_serializing)]
    _capture: ServiceOwned,
    /// Where the services' sections are parsed from, and those parsed so far.
    #[serde(skip)]
    sections: section::Sections,
}

/// A top-level section a service owns: the shared configuration skips its contents.
#[derive(Debug, Clone, Default)]
struct ServiceOwned;

impl<'de> Deserialize<'de> for ServiceOwned {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        serde::de::IgnoredAny::deserialize(d)?;
        Ok(ServiceOwned)
    }
}

impl Config {
    /// Loads `path` (when given) and the `FERRY_*` overrides, then validates the
    /// shared sections and the service sections in `sections`, reporting every
    /// problem at once.
    pub fn load(path: Option<&Path>, sections: &[SectionSpec]) -> Result<Config, ConfigError> {
        let mut figment = Figment::new();
        if let Some(path) = path {
            // figment treats a missing file as empty; an operator who names a file
            // means it, so say so instead of running on defaults.
            if !path.is_file() {
                return Err(ConfigError::single(
                    "--config",
                    path.display().to_string(),
                    "an existing, readable TOML file",
                ));
            }
            figment = figment.merge(Toml::file(path));
        }
        // Only `FERRY_SECTION__KEY` variables are configuration: other `FERRY_*`
        // variables (FERRY_CONFIG, FERRY_LOG, secret env vars) are not.
        figment = figment.merge(
            Env::prefixed("FERRY_")
                .filter(|key| key.as_str().contains("__"))
                .split("__"),
        );
        Self::from_figment(figment, sections)
    }

    /// Parses and validates a TOML document (no environment overrides), the shared
    /// sections only; a service section is checked when it is first read.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        Self::from_toml_with(text, &[])
    }

    /// Parses and validates a TOML document (no environment overrides), the shared
    /// sections and those in `sections`.
    pub fn from_toml_with(text: &str, sections: &[SectionSpec]) -> Result<Config, ConfigError> {
        Self::from_figment(Figment::new().merge(Toml::string(text)), sections)
    }

    fn from_figment(figment: Figment, sections: &[SectionSpec]) -> Result<Config, ConfigError> {
        let mut config: Config = figment.extract().map_err(ConfigError::from_figment)?;
        let mut problems = match config.validate() {
            Ok(()) => Vec::new(),
            Err(e) => e.problems,
        };
        problems.extend(config.leases.resolve_older_name(&figment));
        config.sections.figment = Some(figment);
        problems.extend(config.parse_sections(sections));
        // A value two checks read (the lease TTL's older name, read by the runtime
        // and by the dumper's section) is named once.
        let mut seen = std::collections::HashSet::new();
        problems.retain(|p| seen.insert((p.key.clone(), p.value.clone())));
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError { problems })
        }
    }

    /// The source named `name`.
    pub fn source(&self, name: &str) -> Option<&SourceConfig> {
        self.sources.iter().find(|s| s.name == name)
    }
}

/// `[nats]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsConfig {
    /// Server URL(s), comma-separated.
    pub url: String,
    /// NATS credentials file (JWT + nkey).
    pub creds_file: Option<PathBuf>,
    /// Environment variable holding a token.
    pub token_env: Option<String>,
    /// User name, for a server with `authorization { users = [...] }` (a read-only
    /// user for the operator's read-only commands, say).
    pub username: Option<String>,
    /// Environment variable holding that user's password.
    pub password_env: Option<String>,
    /// File holding that user's password (a Docker or Kubernetes secret).
    pub password_file: Option<PathBuf>,
    /// CA certificate for TLS.
    pub tls_ca_file: Option<PathBuf>,
    /// Stream replicas (3 on a three-node cluster).
    pub replicas: usize,
    /// How long the events stream keeps history.
    #[serde(with = "humantime_serde")]
    pub events_max_age: Duration,
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            url: "nats://127.0.0.1:4222".into(),
            creds_file: None,
            token_env: None,
            username: None,
            password_env: None,
            password_file: None,
            tls_ca_file: None,
            replicas: 1,
            events_max_age: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// The engine of a source.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// PostgreSQL, dumped with `pg_dump`.
    Postgres,
    /// MongoDB.
    Mongodb,
}

/// `[[sources]]`: one database server to back up.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Unique name, `[a-z0-9][a-z0-9_-]*`; used in subjects and keys.
    pub name: String,
    /// The engine.
    pub engine: EngineKind,
    /// Connection URL, without a password.
    pub url: String,
    /// Environment variable holding the password.
    pub password_env: Option<String>,
    /// File holding the password (a Docker or Kubernetes secret).
    pub password_file: Option<PathBuf>,
    /// Databases to back up; empty means the one in the URL (PostgreSQL) or every
    /// database but `admin`, `local` and `config` (MongoDB); `["*"]` (PostgreSQL)
    /// means every database on the server except templates.
    #[serde(default)]
    pub databases: Vec<String>,
    /// PostgreSQL: also dump roles and tablespaces (`pg_dumpall --globals-only`)
    /// into `globals.sql`.
    #[serde(default)]
    pub globals: bool,
    /// PostgreSQL: dump only these schemas (pg_dump `--schema` patterns).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include_schemas: Vec<String>,
    /// PostgreSQL: skip these schemas (pg_dump `--exclude-schema` patterns).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude_schemas: Vec<String>,
    /// PostgreSQL: dump only these tables, `schema.table` (pg_dump `--table`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include_tables: Vec<String>,
    /// PostgreSQL: skip these tables, `schema.table` (pg_dump `--exclude-table`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude_tables: Vec<String>,
    /// MongoDB: only these collections, as `db.collection` or `db.*`; empty means all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub collections: Vec<String>,
    /// MongoDB: leave out these collections (`db.collection` or `db.*`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude_collections: Vec<String>,
    /// Cron expression (5 fields, or 6 with seconds); unset means manual jobs only.
    pub schedule: Option<String>,
    /// IANA time zone of the schedule and of retention periods.
    #[serde(default = "default_timezone")]
    pub timezone: String,
    /// Deadline of a job.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Which backups to keep.
    #[serde(default)]
    pub retention: RetentionPolicy,
    /// A job for a source that is already being backed up: `skip` it (reported as
    /// `already_running`) or `queue` it until the running one ends.
    #[serde(default)]
    pub on_overlap: OverlapPolicy,
    /// MongoDB: continuous change capture for point-in-time restores
    /// (`pitr = { enabled = true, segment_span = "10m", segment_max = "64MiB" }`).
    #[serde(default, skip_serializing_if = "PitrConfig::is_off_by_default")]
    pub pitr: PitrConfig,
    /// PostgreSQL: `logical` (pg_dump per database, the default) or `physical`
    /// (pg_basebackup of the cluster on `schedule`, with the WAL archive that
    /// `archive_command = 'ferry wal-push %p'` fills: restores to any instant).
    /// Logical dumps of a physical source on their own schedule: a second source
    /// with the same `url`, its own name, `mode = "logical"` and its schedule.
    #[serde(default, skip_serializing_if = "PostgresMode::is_logical")]
    pub mode: PostgresMode,
}

/// How a PostgreSQL source is backed up.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PostgresMode {
    /// `pg_dump` of each database.
    #[default]
    Logical,
    /// `pg_basebackup` of the cluster, plus WAL archiving.
    Physical,
}

impl PostgresMode {
    /// The default, left out when a source is written back.
    pub fn is_logical(&self) -> bool {
        *self == PostgresMode::Logical
    }
}

/// What a job does when its source is already being backed up.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OverlapPolicy {
    /// End the job with `already_running`.
    #[default]
    Skip,
    /// Wait (up to the job's deadline) for the running job to end.
    Queue,
}

fn default_timezone() -> String {
    "UTC".into()
}

fn default_timeout() -> Duration {
    Duration::from_secs(2 * 3600)
}

/// `[telemetry]`
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// OTLP endpoint for traces (`http://collector:4317`); unset means logs only.
    pub otlp_endpoint: Option<String>,
    /// `grpc` or `http`; unset: `OTEL_EXPORTER_OTLP_PROTOCOL`, then `grpc`.
    pub otlp_protocol: Option<OtlpProtocolConfig>,
    /// `text` or `json` log lines.
    pub log_format: LogFormatConfig,
}

/// How traces are exported.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OtlpProtocolConfig {
    /// OTLP over gRPC (port 4317).
    Grpc,
    /// OTLP/HTTP with protobuf bodies (port 4318).
    Http,
}

/// Log line format.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormatConfig {
    /// Human-readable.
    #[default]
    Text,
    /// JSON lines.
    Json,
}

/// `[http]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address of `/healthz`, `/readyz` and `/metrics`; empty disables it.
    pub listen: String,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "127.0.0.1:9464".into(),
        }
    }
}

/// `[retry]`: retryable failures are retried after `base`, doubling per attempt up to
/// `max`, for as many deliveries as each worker allows.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// First retry delay.
    #[serde(with = "humantime_serde")]
    pub base: Duration,
    /// Longest retry delay.
    #[serde(with = "humantime_serde")]
    pub max: Duration,
    /// How long in-flight work may finish after a shutdown signal.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            base: Duration::from_secs(2),
            max: Duration::from_secs(300),
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_configuration_parses() {
        let config = Config::from_toml(
            r#"
[nats]
url = "nats://127.0.0.1:4222"

[spool]
kind = "dir"
path = "/var/lib/ferry/spool"

[storage]
kind = "fs"
path = "/var/lib/ferry/store"
prefix = "ferry"

[[sources]]
name = "orders"
engine = "postgres"
url = "postgres://backup@db1.internal:5432/orders"
password_env = "ORDERS_PG_PASSWORD"
schedule = "0 2 * * *"
timezone = "Europe/Berlin"
timeout = "2h"
retention = { keep_last = 7, keep_daily = 14, keep_weekly = 8, keep_monthly = 12 }

[[sources]]
name = "catalog"
engine = "mongodb"
url = "mongodb://db2.internal:27017"
databases = ["shop"]
schedule = "*/15 * * * *"

[[notify]]
kind = "webhook"
url = "https://hooks.example.com/ferry"
on = ["failed", "succeeded"]

[telemetry]
otlp_endpoint = "http://127.0.0.1:4317"
otlp_protocol = "grpc"

[http]
listen = "127.0.0.1:9464"
"#,
        )
        .unwrap();
        let orders = config.source("orders").unwrap();
        assert_eq!(orders.timeout, Duration::from_secs(7200));
        assert_eq!(orders.retention.keep_monthly, Some(12));
        assert_eq!(config.source("catalog").unwrap().timezone, "UTC");
        // The dumper's defaults are checked beside its section (services/dumper).
        assert_eq!(
            config.leases.ttl,
            Duration::from_secs(60),
            "defaults fill what the file leaves out"
        );
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let err = Config::from_toml(
            r#"
[http]
listen = "localhost"

[[sources]]
name = "a"
engine = "postgres"
url = "postgres://h/db"
schedule = "* * *"

[[sources]]
name = "a"
engine = "postgres"
url = "not a url"
timeout = "0s"
retention = { keep_last = 0 }
"#,
        )
        .unwrap_err();
        let keys: Vec<&str> = err.problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "http.listen",
                "sources[0].schedule",
                "sources[1].name",
                "sources[1].url",
                "sources[1].timeout",
                "sources[1].retention.keep_last"
            ]
        );
        let text = err.to_string();
        assert!(
            text.contains("sources[0].schedule: invalid value \"* * *\""),
            "{text}"
        );
    }

    #[test]
    fn capture_settings_parse_and_bad_ones_are_named() {
        let config = Config::from_toml(
            r#"
[[sources]]
name = "catalog"
engine = "mongodb"
url = "mongodb://db2.internal:27017"
pitr = { enabled = true, segment_span = "5m" }
"#,
        )
        .unwrap();
        let pitr = config.source("catalog").unwrap().pitr;
        assert!(pitr.enabled);
        assert_eq!(pitr.segment_span, Duration::from_secs(300));
        assert_eq!(pitr.segment_max, ByteSize(64 << 20), "the default size");

        let err = Config::from_toml(
            r#"
[[sources]]
name = "orders"
engine = "postgres"
url = "postgres://h/db"
pitr = { enabled = true }

[[sources]]
name = "catalog"
engine = "mongodb"
url = "mongodb://h"
pitr = { enabled = true, segment_span = "0s", segment_max = "10KiB" }
"#,
        )
        .unwrap_err();
        let keys: Vec<&str> = err.problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "sources[0].pitr.enabled",
                "sources[1].pitr.segment_span",
                "sources[1].pitr.segment_max"
            ]
        );
        assert!(err.to_string().contains("WAL archiving"), "{err}");
    }
}
