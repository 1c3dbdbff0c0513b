//! `[dumper]`: the dumper's settings, their defaults and their validation.

use std::path::PathBuf;
use std::time::Duration;

use ferry_runtime::Config;
use ferry_runtime::config::{ConfigProblem, Section};
use serde::{Deserialize, Serialize};

/// `[dumper]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DumperConfig {
    /// Jobs this process dumps at once.
    pub concurrency: usize,
    /// Directory holding `pg_dump`; searched before the standard install paths
    /// (/usr/lib/postgresql/*/bin, /usr/pgsql-*/bin, Homebrew) and PATH.
    pub pg_bin_dir: Option<PathBuf>,
    /// Tables `pg_dump` dumps in parallel (`-j`); default: this machine's cores.
    pub pg_jobs: Option<usize>,
    /// How dump files are compressed in the spool: `zstd` (default), `gzip` or `none`.
    pub compression: CompressionKind,
    /// The compression level; default 3 for zstd (1-22), 6 for gzip (0-9).
    pub compression_level: Option<i32>,
    /// The older name of `[leases] ttl`, still accepted so no file breaks; the
    /// runtime applies it (retention takes the same leases) when `leases.ttl` is unset.
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub lease_ttl: Option<Duration>,
    /// MongoDB: collections one job dumps at once.
    pub mongo_parallel_collections: usize,
    /// MongoDB: zstd level of the dump files (1-22).
    pub mongo_zstd_level: i32,
}

impl Default for DumperConfig {
    fn default() -> Self {
        DumperConfig {
            concurrency: 2,
            pg_bin_dir: None,
            pg_jobs: None,
            compression: CompressionKind::Zstd,
            compression_level: None,
            lease_ttl: None,
            mongo_parallel_collections: 4,
            mongo_zstd_level: 1,
        }
    }
}

/// `dumper.compression`.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CompressionKind {
    /// zstd: fast, and smaller than gzip.
    #[default]
    Zstd,
    /// gzip, for tools that read nothing else.
    Gzip,
    /// Files stored as the dump tool wrote them.
    None,
}

impl Section for DumperConfig {
    const NAME: &'static str = "dumper";

    fn validate(&self, _: &Config) -> Vec<ConfigProblem> {
        let mut problems = Vec::new();
        let mut bad = |key: &str, value: &str, expected: &str| {
            problems.push(ConfigProblem::new(format!("dumper.{key}"), value, expected))
        };
        if self.concurrency == 0 {
            bad("concurrency", "0", "at least 1");
        }
        if self.pg_jobs == Some(0) {
            bad("pg_jobs", "0", "at least 1");
        }
        if let Some(level) = self.compression_level {
            let (ok, range) = match self.compression {
                CompressionKind::Zstd => ((1..=22).contains(&level), "1 to 22 for zstd"),
                CompressionKind::Gzip => ((0..=9).contains(&level), "0 to 9 for gzip"),
                CompressionKind::None => (true, ""),
            };
            if !ok {
                bad("compression_level", &level.to_string(), range);
            }
        }
        if self.mongo_parallel_collections == 0 {
            bad("mongo_parallel_collections", "0", "at least 1");
        }
        if !(1..=22).contains(&self.mongo_zstd_level) {
            bad(
                "mongo_zstd_level",
                &self.mongo_zstd_level.to_string(),
                "a zstd level from 1 to 22",
            );
        }
        problems
    }
}

#[cfg(test)]
mod tests;
