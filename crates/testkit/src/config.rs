//! A typed builder for the Ferry configuration a test runs with, so tests say what
//! they configure (`TestConfig::new().nats(url).fs_store(dir).source(..)`) instead
//! of writing TOML by hand. It renders the TOML file the real `run()` functions and
//! binaries read (`Config::from_toml`, `--config FILE`), so the keys it writes are
//! checked by the same parser users meet; tests whose subject is the TOML text
//! itself (parsing, the documented example, the shipped deploy files) keep theirs.
//!
//! The builder knows the keys as README.md documents them; anything it has no
//! method for goes through [`TestConfig::set`] or [`Source::set`].

use std::path::{Path, PathBuf};

use toml::{Table, Value};

use crate::S3Server;

/// A Ferry configuration under construction. Starts with the health endpoint off
/// (`[http] listen = ""`): tests run many workers on one machine.
#[derive(Debug, Clone)]
pub struct TestConfig {
    root: Table,
    sources: Vec<Table>,
    notify: Vec<Table>,
}

impl Default for TestConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl TestConfig {
    /// An empty configuration with the health endpoint off.
    pub fn new() -> Self {
        TestConfig {
            root: Table::new(),
            sources: Vec::new(),
            notify: Vec::new(),
        }
        .set("http", "listen", "")
    }

    /// Sets `key` of `[section]` to `value`, replacing an earlier value.
    pub fn set(mut self, section: &str, key: &str, value: impl Into<Value>) -> Self {
        let entry = self
            .root
            .entry(section)
            .or_insert_with(|| Value::Table(Table::new()));
        let Value::Table(table) = entry else {
            panic!("[{section}] is not a table in the test configuration");
        };
        table.insert(key.to_string(), value.into());
        self
    }

    /// `[nats] url`.
    pub fn nats(self, url: impl Into<String>) -> Self {
        self.set("nats", "url", url.into())
    }

    /// `[http] listen`: where `/healthz`, `/readyz` and `/metrics` are served.
    pub fn http(self, listen: impl Into<String>) -> Self {
        self.set("http", "listen", listen.into())
    }

    /// A local directory store (`[storage] kind = "fs"`), replacing any other store.
    pub fn fs_store(mut self, path: &Path) -> Self {
        self.root.remove("storage");
        self.set("storage", "kind", "fs")
            .set("storage", "path", path_value(path))
    }

    /// An S3 store on `server` under `prefix`, replacing any other store. The keys
    /// go into files in `key_dir` (`access_key_id_file`, `secret_access_key_file`):
    /// secrets never appear in the configuration itself.
    pub fn s3_store(mut self, server: &S3Server, prefix: &str, key_dir: &Path) -> Self {
        let (id, secret) = server.write_key_files(key_dir);
        self.root.remove("storage");
        self.set("storage", "kind", "s3")
            .set("storage", "bucket", server.bucket.as_str())
            .set("storage", "prefix", prefix)
            .set("storage", "endpoint", server.endpoint.as_str())
            .set("storage", "region", server.region.as_str())
            .set("storage", "force_path_style", true)
            .set("storage", "access_key_id_file", path_value(&id))
            .set("storage", "secret_access_key_file", path_value(&secret))
    }

    /// A spool in a local directory (`[spool] path`).
    pub fn dir_spool(self, path: &Path) -> Self {
        self.set("spool", "path", path_value(path))
    }

    /// The NATS spool (`[spool] kind = "nats"`), staging in `path`, named `node`.
    pub fn nats_spool(self, path: &Path, node: &str) -> Self {
        self.dir_spool(path)
            .set("spool", "kind", "nats")
            .set("spool", "node", node)
    }

    /// `[dumper] pg_bin_dir`: where the dumper finds `pg_dump` and friends.
    pub fn pg_bin_dir(self, dir: &Path) -> Self {
        self.set("dumper", "pg_bin_dir", path_value(dir))
    }

    /// `[retry] base` and `max` (durations such as `"200ms"`).
    pub fn retry(self, base: &str, max: &str) -> Self {
        self.set("retry", "base", base).set("retry", "max", max)
    }

    /// A `[[notify]]` webhook to `url` for the events in `on` (`"failed"`, …).
    pub fn webhook(mut self, url: impl Into<String>, on: &[&str]) -> Self {
        let mut channel = Table::new();
        channel.insert("kind".into(), "webhook".into());
        channel.insert("url".into(), Value::String(url.into()));
        channel.insert("on".into(), strings(on));
        self.notify.push(channel);
        self
    }

    /// A `[[notify]]` channel written out key by key, for kinds and options the
    /// builder has no method for.
    pub fn notify(mut self, channel: Table) -> Self {
        self.notify.push(channel);
        self
    }

    /// A `[[sources]]` entry.
    pub fn source(mut self, source: Source) -> Self {
        self.sources.push(source.0);
        self
    }

    /// A PostgreSQL `[[sources]]` entry reading its password from `password_file`.
    pub fn postgres_source(self, name: &str, url: &str, password_file: &Path) -> Self {
        self.source(Source::postgres(name, url).password_file(password_file))
    }

    /// The configuration as the TOML a user would write.
    pub fn to_toml(&self) -> String {
        let mut root = self.root.clone();
        if !self.sources.is_empty() {
            let sources = self.sources.iter().cloned().map(Value::Table).collect();
            root.insert("sources".into(), Value::Array(sources));
        }
        if !self.notify.is_empty() {
            let notify = self.notify.iter().cloned().map(Value::Table).collect();
            root.insert("notify".into(), Value::Array(notify));
        }
        toml::to_string(&root).expect("a TOML table always renders")
    }

    /// Writes the configuration to `path` (for `--config FILE`) and returns the path.
    pub fn write(&self, path: &Path) -> PathBuf {
        std::fs::write(path, self.to_toml())
            .unwrap_or_else(|e| panic!("write the test configuration {}: {e}", path.display()));
        path.to_path_buf()
    }
}

/// One `[[sources]]` entry.
#[derive(Debug, Clone)]
pub struct Source(Table);

impl Source {
    /// A PostgreSQL source at `url` (no password in it).
    pub fn postgres(name: &str, url: &str) -> Source {
        Source::new(name, "postgres", url)
    }

    /// A MongoDB source at `url` backing up `databases`.
    pub fn mongodb(name: &str, url: &str, databases: &[&str]) -> Source {
        Source::new(name, "mongodb", url).set("databases", strings(databases))
    }

    fn new(name: &str, engine: &str, url: &str) -> Source {
        Source(Table::new())
            .set("name", name)
            .set("engine", engine)
            .set("url", url)
    }

    /// Sets `key` of the entry to `value`, replacing an earlier value.
    pub fn set(mut self, key: &str, value: impl Into<Value>) -> Source {
        self.0.insert(key.to_string(), value.into());
        self
    }

    /// `pitr = { enabled = true, segment_span = span }`: continuous capture.
    pub fn pitr(self, span: &str) -> Source {
        let mut pitr = Table::new();
        pitr.insert("enabled".into(), true.into());
        pitr.insert("segment_span".into(), span.into());
        self.set("pitr", Value::Table(pitr))
    }

    /// `password_file`: the file the password is read from.
    pub fn password_file(self, path: &Path) -> Source {
        self.set("password_file", path_value(path))
    }

    /// `schedule`: a cron expression (seconds first when it has six fields).
    pub fn schedule(self, cron: &str) -> Source {
        self.set("schedule", cron)
    }

    /// `timezone` of the schedule.
    pub fn timezone(self, tz: &str) -> Source {
        self.set("timezone", tz)
    }

    /// `retention = { keep_last = n }`.
    pub fn keep_last(self, n: u32) -> Source {
        self.retention("keep_last", i64::from(n))
    }

    /// One key of the source's `retention` policy.
    pub fn retention(mut self, key: &str, value: impl Into<Value>) -> Source {
        let entry = self
            .0
            .entry("retention")
            .or_insert_with(|| Value::Table(Table::new()));
        if let Value::Table(policy) = entry {
            policy.insert(key.to_string(), value.into());
        }
        self
    }
}

/// A path as a TOML string (test paths are temporary directories, valid UTF-8).
fn path_value(path: &Path) -> Value {
    Value::String(path.display().to_string())
}

fn strings(items: &[&str]) -> Value {
    Value::Array(items.iter().map(|s| Value::from(*s)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_sections_sources_and_notify_channels_as_a_user_writes_them() {
        let toml = TestConfig::new()
            .nats("nats://127.0.0.1:4222")
            .fs_store(Path::new("/tmp/store"))
            .dir_spool(Path::new("/tmp/spool"))
            .retry("200ms", "1s")
            .webhook("http://127.0.0.1:9/hook", &["failed"])
            .source(
                Source::postgres("orders", "postgres://backup@db/orders")
                    .password_file(Path::new("/run/pw"))
                    .keep_last(3),
            )
            .source(Source::mongodb("docs", "mongodb://db", &["app", "audit"]))
            .to_toml();
        let parsed: Table = toml.parse().expect("valid TOML");
        assert_eq!(parsed["http"]["listen"].as_str(), Some(""));
        assert_eq!(
            parsed["nats"]["url"].as_str(),
            Some("nats://127.0.0.1:4222")
        );
        assert_eq!(parsed["storage"]["kind"].as_str(), Some("fs"));
        assert_eq!(parsed["storage"]["path"].as_str(), Some("/tmp/store"));
        assert_eq!(parsed["spool"]["path"].as_str(), Some("/tmp/spool"));
        assert_eq!(parsed["retry"]["base"].as_str(), Some("200ms"));
        let sources = parsed["sources"].as_array().unwrap();
        assert_eq!(sources.len(), 2);
        assert_eq!(sources[0]["name"].as_str(), Some("orders"));
        assert_eq!(sources[0]["password_file"].as_str(), Some("/run/pw"));
        assert_eq!(sources[0]["retention"]["keep_last"].as_integer(), Some(3));
        assert_eq!(sources[1]["engine"].as_str(), Some("mongodb"));
        assert_eq!(sources[1]["databases"].as_array().unwrap().len(), 2);
        let notify = parsed["notify"].as_array().unwrap();
        assert_eq!(notify[0]["kind"].as_str(), Some("webhook"));
    }

    #[test]
    fn a_store_replaces_the_previous_one_whole() {
        let toml = TestConfig::new()
            .set("storage", "bucket", "left-over")
            .fs_store(Path::new("/tmp/store"))
            .to_toml();
        let parsed: Table = toml.parse().unwrap();
        assert!(parsed["storage"].get("bucket").is_none(), "{toml}");
    }
}
