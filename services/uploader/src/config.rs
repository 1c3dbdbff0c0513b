//! `[uploader]`: the uploader's settings, their defaults and their validation.

use std::time::Duration;

use ferry_runtime::Config;
use ferry_runtime::config::{ByteSize, ConfigProblem, Section};
use serde::{Deserialize, Serialize};

/// `[uploader]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct UploaderConfig {
    /// Jobs this process uploads at once.
    pub concurrency: usize,
    /// Size of a multipart part (files up to this size go in one PUT); grown for
    /// files so large that they would need more than 10,000 parts. At least 5 MiB.
    pub part_size: ByteSize,
    /// Parts in flight across the whole process: memory for part buffers is
    /// `part_size × parts_in_flight`.
    pub parts_in_flight: usize,
    /// Attempts per request (part, small object, manifest) before the job fails,
    /// with exponential backoff and jitter between them.
    pub retry_attempts: u32,
    /// How long a job may go without a progress ack before NATS hands it to
    /// another uploader (progress acks go every third of it): how soon the job of
    /// a killed uploader resumes.
    #[serde(with = "humantime_serde")]
    pub ack_wait: Duration,
}

impl Default for UploaderConfig {
    fn default() -> Self {
        UploaderConfig {
            concurrency: 4,
            part_size: ByteSize(8 * 1024 * 1024),
            parts_in_flight: 8,
            retry_attempts: 8,
            ack_wait: Duration::from_secs(60),
        }
    }
}

impl Section for UploaderConfig {
    const NAME: &'static str = "uploader";

    fn validate(&self, _: &Config) -> Vec<ConfigProblem> {
        let mut problems = Vec::new();
        let mut bad = |key: &str, value: &str, expected: &str| {
            problems.push(ConfigProblem::new(
                format!("uploader.{key}"),
                value,
                expected,
            ))
        };
        if self.concurrency == 0 {
            bad("concurrency", "0", "at least 1");
        }
        // S3 refuses parts under 5 MiB (all but the last); 5 GiB is its largest part.
        let part = self.part_size.0;
        if !(5 << 20..=5 << 30).contains(&part) {
            bad(
                "part_size",
                &part.to_string(),
                "between 5MiB and 5GiB, e.g. \"8MiB\"",
            );
        }
        if self.parts_in_flight == 0 {
            bad("parts_in_flight", "0", "at least 1");
        }
        if self.ack_wait < Duration::from_secs(1) {
            bad(
                "ack_wait",
                &format!("{:?}", self.ack_wait),
                "at least 1s, e.g. \"60s\"",
            );
        }
        if self.retry_attempts == 0 {
            bad("retry_attempts", "0", "at least 1");
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use ferry_runtime::config::{SectionSpec, StorageKind};

    use super::*;

    const SECTIONS: [SectionSpec; 1] = [SectionSpec::of::<UploaderConfig>()];

    #[test]
    fn the_documented_s3_configuration_parses() {
        // The shared sections' assertions are beside them, in the runtime.
        let config = Config::from_toml_with(
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

[uploader]
part_size = "16MiB"
parts_in_flight = 4
"#,
            &SECTIONS,
        )
        .unwrap();
        assert_eq!(config.storage.kind, StorageKind::S3);
        let uploader = config.section::<UploaderConfig>().unwrap();
        assert_eq!(uploader.part_size.0, 16 << 20);
        assert_eq!(uploader.parts_in_flight, 4);
        assert_eq!(
            uploader.concurrency, 4,
            "defaults fill what the file leaves out"
        );
    }

    #[test]
    fn s3_problems_name_their_keys() {
        let err = Config::from_toml_with(
            r#"
[storage]
kind = "s3"
access_key_id_env = "A"
access_key_id_file = "/run/secrets/a"

[uploader]
part_size = "1MiB"
parts_in_flight = 0
"#,
            &SECTIONS,
        )
        .unwrap_err();
        let keys: Vec<&str> = err.problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "storage.bucket",
                "storage.access_key_id_env",
                "storage.secret_access_key_env",
                "uploader.part_size",
                "uploader.parts_in_flight"
            ]
        );
    }

    #[test]
    fn every_uploader_problem_names_its_key() {
        let err = Config::from_toml_with(
            "[uploader]\nconcurrency = 0\nack_wait = \"0s\"\nretry_attempts = 0\n",
            &SECTIONS,
        )
        .unwrap_err();
        let keys: Vec<&str> = err.problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "uploader.concurrency",
                "uploader.ack_wait",
                "uploader.retry_attempts"
            ]
        );
    }
}
