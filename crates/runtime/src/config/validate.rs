//! Start-up validation: every problem names the key, the value and what is expected.

use std::collections::HashSet;
use std::fmt;

use super::{Config, StorageKind};
use crate::schedule;

/// One invalid configuration value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// The key, as a path (`sources[2].schedule`).
    pub key: String,
    /// The value found (never a secret: the configuration holds none); `None` when
    /// the problem is not about one value (an unknown key, a wrong type).
    pub value: Option<String>,
    /// What would be accepted.
    pub expected: String,
}

impl ConfigProblem {
    /// A problem with a value.
    pub fn new(
        key: impl Into<String>,
        value: impl Into<String>,
        expected: impl Into<String>,
    ) -> Self {
        ConfigProblem {
            key: key.into(),
            value: Some(value.into()),
            expected: expected.into(),
        }
    }
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            Some(value) => write!(
                f,
                "{}: invalid value {value:?}: expected {}",
                self.key, self.expected
            ),
            None => write!(f, "{}: {}", self.key, self.expected),
        }
    }
}

/// The configuration could not be loaded; lists every problem found.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    /// Every problem, in file order.
    pub problems: Vec<ConfigProblem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration")?;
        for p in &self.problems {
            write!(f, "\n  - {p}")?;
        }
        Ok(())
    }
}

impl ConfigError {
    /// An error with one problem.
    pub fn single(key: &str, value: impl Into<String>, expected: impl Into<String>) -> Self {
        ConfigError {
            problems: vec![ConfigProblem::new(key, value, expected)],
        }
    }

    pub(crate) fn from_figment(err: figment::Error) -> Self {
        let problems = err
            .into_iter()
            .map(|e| {
                let key = if e.path.is_empty() {
                    "(file)".to_string()
                } else {
                    e.path.join(".")
                };
                let origin = e
                    .metadata
                    .as_ref()
                    .map(|m| format!(" (from {})", m.name))
                    .unwrap_or_default();
                ConfigProblem {
                    key,
                    value: None,
                    expected: format!("{}{origin}", e.kind),
                }
            })
            .collect();
        ConfigError { problems }
    }
}

impl Config {
    /// Checks every value of the shared sections that parsing alone cannot (each
    /// service checks its own section: [`Section::validate`](super::Section::validate)).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        let mut bad = |key: String, value: &str, expected: &str| {
            problems.push(ConfigProblem::new(key, value, expected))
        };

        if !self.nats.url.split(',').all(|u| {
            let u = u.trim();
            u.starts_with("nats://") || u.starts_with("tls://") || u.starts_with("ws")
        }) {
            bad(
                "nats.url".into(),
                &self.nats.url,
                "nats://host:port (comma-separated for several)",
            );
        }
        let nats = &self.nats;
        let has_password = nats.password_env.is_some() || nats.password_file.is_some();
        if nats.password_env.is_some() && nats.password_file.is_some() {
            bad(
                "nats.password_file".into(),
                &nats
                    .password_file
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                "either nats.password_env or nats.password_file, not both",
            );
        }
        if has_password != nats.username.is_some() {
            bad(
                "nats.username".into(),
                nats.username.as_deref().unwrap_or(""),
                "a user name together with nats.password_env or nats.password_file",
            );
        }
        if !(1..=5).contains(&self.nats.replicas) {
            bad(
                "nats.replicas".into(),
                &self.nats.replicas.to_string(),
                "1 to 5 (3 on a three-node cluster)",
            );
        }
        if self.storage.kind == StorageKind::S3 {
            let s = &self.storage;
            if s.bucket.as_deref().unwrap_or("").is_empty() {
                bad(
                    "storage.bucket".into(),
                    "",
                    "the bucket name (create the bucket first)",
                );
            }
            let id = s.access_key_id_env.is_some() as u8 + s.access_key_id_file.is_some() as u8;
            let secret =
                s.secret_access_key_env.is_some() as u8 + s.secret_access_key_file.is_some() as u8;
            if id > 1 {
                bad(
                    "storage.access_key_id_env".into(),
                    s.access_key_id_env.as_deref().unwrap_or(""),
                    "either access_key_id_env or access_key_id_file, not both",
                );
            }
            if secret > 1 {
                bad(
                    "storage.secret_access_key_env".into(),
                    s.secret_access_key_env.as_deref().unwrap_or(""),
                    "either secret_access_key_env or secret_access_key_file, not both",
                );
            }
            if (id == 0) != (secret == 0) {
                let key = if id == 0 {
                    "storage.access_key_id_env"
                } else {
                    "storage.secret_access_key_env"
                };
                bad(
                    key.into(),
                    "",
                    "both the access key id and the secret key (by _env or _file), or neither to use the standard AWS credentials chain",
                );
            }
            if let Some(endpoint) = &s.endpoint
                && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
            {
                bad(
                    "storage.endpoint".into(),
                    endpoint,
                    "an http:// or https:// URL, e.g. https://s3.eu-central-003.backblazeb2.com",
                );
            }
            if s.max_attempts == 0 {
                bad("storage.max_attempts".into(), "0", "at least 1");
            }
        }
        if self.storage.prefix.contains("..") || self.storage.prefix.starts_with('/') {
            bad(
                "storage.prefix".into(),
                &self.storage.prefix,
                "a relative key prefix without `..`",
            );
        }
        if !self.http.listen.is_empty() && self.http.listen.parse::<std::net::SocketAddr>().is_err()
        {
            bad(
                "http.listen".into(),
                &self.http.listen,
                "host:port, e.g. 127.0.0.1:9464, or \"\" to disable",
            );
        }
        let mut names = HashSet::new();
        for (i, s) in self.sources.iter().enumerate() {
            if ferry_proto::subjects::is_valid_source_name(&s.name)
                && !names.insert(s.name.as_str())
            {
                problems.push(ConfigProblem::new(
                    format!("sources[{i}].name"),
                    s.name.as_str(),
                    "a name no other source has",
                ));
            }
            problems.extend(s.problems(&format!("sources[{i}]")));
        }

        // Recipients are public keys: a bad one is named with its value. Key files
        // are read where they are used (the name key only on writers).
        let encryption = &self.encryption;
        if encryption.enabled() {
            for (i, r) in encryption.recipients.iter().enumerate() {
                if let Err(e) = ferry_storage::encryption::parse_recipients([(
                    format!("encryption.recipients[{i}]"),
                    r.as_str(),
                )]) {
                    problems.push(ConfigProblem {
                        key: format!("encryption.recipients[{i}]"),
                        value: Some(r.clone()),
                        expected: format!("an age X25519 recipient (age1…): {e}"),
                    });
                }
            }
            if encryption.name_key_file.is_some() && encryption.name_key_env.is_some() {
                problems.push(ConfigProblem {
                    key: "encryption.name_key_env".into(),
                    value: encryption.name_key_env.clone(),
                    expected:
                        "either encryption.name_key_file or encryption.name_key_env, not both"
                            .into(),
                });
            }
        } else if encryption.name_key_file.is_some() || encryption.name_key_env.is_some() {
            problems.push(ConfigProblem {
                key: "encryption.recipients".into(),
                value: None,
                expected: "a name key is set but no recipient: set encryption.recipients (or recipients_file), or remove the name key".into(),
            });
        }

        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError { problems })
        }
    }
}

impl super::SourceConfig {
    /// Every problem of this source, keys prefixed with `prefix` (`sources[2]`).
    /// Shared by the configuration file and `ferry sources add`.
    pub fn problems(&self, prefix: &str) -> Vec<ConfigProblem> {
        let mut problems = Vec::new();
        let mut bad = |key: String, value: &str, expected: &str| {
            problems.push(ConfigProblem::new(key, value, expected))
        };
        let s = self;
        let key = |field: &str| format!("{prefix}.{field}");
        if !ferry_proto::subjects::is_valid_source_name(&s.name) {
            bad(
                key("name"),
                &s.name,
                "1-64 characters of [a-z0-9_-], starting with a letter or digit",
            );
        }
        match url::Url::parse(&s.url) {
            Ok(u) if u.password().is_some() => bad(
                key("url"),
                "(a URL with a password, not shown)",
                "a URL without a password: put it in password_env or password_file",
            ),
            Ok(u)
                if !matches!(
                    u.scheme(),
                    "postgres" | "postgresql" | "mongodb" | "mongodb+srv"
                ) =>
            {
                bad(key("url"), &s.url, "a postgres:// or mongodb:// URL")
            }
            Ok(_) => {}
            Err(e) => bad(key("url"), &s.url, &format!("a valid URL ({e})")),
        }
        if let (Some(_), Some(file)) = (&s.password_env, &s.password_file) {
            bad(
                key("password_file"),
                &file.display().to_string(),
                "either password_env or password_file, not both",
            );
        }
        if let Some(expr) = &s.schedule
            && let Err(e) = schedule::parse_cron(expr)
        {
            bad(
                key("schedule"),
                expr,
                &format!(
                    "a cron expression with 5 fields, or 6 with seconds, or @hourly/@daily/@weekly/@monthly/@yearly ({e})"
                ),
            );
        }
        if schedule::parse_timezone(&s.timezone).is_err() {
            bad(
                key("timezone"),
                &s.timezone,
                "an IANA time zone name such as Europe/Berlin or UTC",
            );
        }
        if s.timeout.is_zero() {
            bad(key("timeout"), "0s", "a positive duration such as 2h");
        }
        if s.databases.len() > 1 && s.databases.iter().any(|d| d == "*") {
            bad(
                key("databases"),
                &s.databases.join(","),
                "either [\"*\"] (every database) or a list of names, not both",
            );
        }
        for (field, value, expected) in s.retention.problems() {
            bad(key(&format!("retention.{field}")), &value, expected);
        }
        if s.pitr.enabled && s.engine != super::EngineKind::Mongodb {
            bad(
                key("pitr.enabled"),
                "true",
                "capture only on a MongoDB source (PostgreSQL's point-in-time recovery comes from WAL archiving)",
            );
        }
        for (field, value, expected) in s.pitr.problems() {
            bad(key(&format!("pitr.{field}")), &value, expected);
        }
        if s.mode == super::PostgresMode::Physical && s.engine != super::EngineKind::Postgres {
            bad(
                key("mode"),
                "physical",
                "mode = \"physical\" only on a PostgreSQL source (MongoDB's point-in-time recovery is pitr = { enabled = true })",
            );
        }
        if s.mode == super::PostgresMode::Physical {
            for (field, set) in [
                ("databases", !s.databases.is_empty()),
                ("include_schemas", !s.include_schemas.is_empty()),
                ("exclude_schemas", !s.exclude_schemas.is_empty()),
                ("include_tables", !s.include_tables.is_empty()),
                ("exclude_tables", !s.exclude_tables.is_empty()),
                ("globals", s.globals),
            ] {
                if set {
                    bad(
                        key(field),
                        "(set)",
                        "unset with mode = \"physical\": a base backup holds the whole cluster (filter a second, logical source with the same url instead)",
                    );
                }
            }
        }
        problems
    }
}
