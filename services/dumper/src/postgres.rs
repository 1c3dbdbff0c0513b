//! PostgreSQL dumps with `pg_dump` in directory format.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use ferry_proto::reason;
use ferry_runtime::HandlerError;
use ferry_runtime::config::SourceConfig;
use secrecy::{ExposeSecret, SecretString};
use tokio::io::AsyncReadExt;
use tokio_postgres::error::SqlState;
use tracing::Instrument;

/// Only the end of pg_dump's stderr is kept: enough for the error, bounded in memory.
const STDERR_LIMIT: usize = 16 * 1024;

/// Where the PostgreSQL client tools are.
#[derive(Debug, Clone)]
pub struct PgTools {
    bin_dir: Option<PathBuf>,
}

impl PgTools {
    /// Tools in `bin_dir`, or on `PATH` when unset.
    pub fn new(bin_dir: Option<PathBuf>) -> Self {
        PgTools { bin_dir }
    }

    fn tool(&self, name: &str) -> PathBuf {
        match &self.bin_dir {
            Some(dir) => dir.join(name),
            None => PathBuf::from(name),
        }
    }

    /// Dumps every database of the job into `job_dir/<database>/`; returns the
    /// server version, the pg_dump version and the databases dumped.
    pub async fn dump(
        &self,
        source: &SourceConfig,
        password: Option<&SecretString>,
        requested: &[String],
        job_dir: &Path,
    ) -> Result<(String, String, Vec<String>), HandlerError> {
        let base = parse_url(&source.url, &source.name)?;
        let databases = if !requested.is_empty() {
            requested.to_vec()
        } else if !source.databases.is_empty() {
            source.databases.clone()
        } else {
            vec![base.get_dbname().unwrap_or("postgres").to_string()]
        };
        let server_version = server_version(&base, password, &databases[0], &source.name).await?;
        let tool_version = self.pg_dump_version().await?;
        for db in &databases {
            self.dump_database(source, password, db, &job_dir.join(db))
                .instrument(tracing::info_span!("pg_dump", db.name = %db))
                .await?;
        }
        Ok((server_version, tool_version, databases))
    }

    async fn pg_dump_version(&self) -> Result<String, HandlerError> {
        let out = tokio::process::Command::new(self.tool("pg_dump"))
            .arg("--version")
            .output()
            .await
            .map_err(|e| self.missing(e))?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    fn missing(&self, e: std::io::Error) -> HandlerError {
        HandlerError::permanent(
            reason::DUMP_TOOL_MISSING,
            format!(
                "cannot run {}: {e}; install the PostgreSQL client tools or set dumper.pg_bin_dir",
                self.tool("pg_dump").display()
            ),
        )
    }

    async fn dump_database(
        &self,
        source: &SourceConfig,
        password: Option<&SecretString>,
        db: &str,
        out_dir: &Path,
    ) -> Result<(), HandlerError> {
        let mut url = url::Url::parse(&source.url).map_err(|e| {
            HandlerError::permanent(
                reason::DUMP_FAILED,
                format!("source {}: invalid url: {e}", source.name),
            )
        })?;
        url.set_path(&format!("/{db}"));
        let mut cmd = tokio::process::Command::new(self.tool("pg_dump"));
        cmd.arg("--format=directory")
            .arg("--no-password")
            .arg("--file")
            .arg(out_dir)
            .arg("--dbname")
            .arg(url.as_str())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            // A timeout or shutdown drops the future: pg_dump must not outlive it.
            .kill_on_drop(true);
        if let Some(password) = password {
            // The environment, not the command line: argv is visible to every user.
            cmd.env("PGPASSWORD", password.expose_secret());
        }
        let mut child = cmd.spawn().map_err(|e| self.missing(e))?;
        let mut stderr = child.stderr.take().expect("stderr is piped");
        let read_stderr = async move {
            let mut kept = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                match stderr.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        kept.extend_from_slice(&buf[..n]);
                        if kept.len() > STDERR_LIMIT {
                            kept.drain(..kept.len() - STDERR_LIMIT);
                        }
                    }
                }
            }
            String::from_utf8_lossy(&kept).into_owned()
        };
        let (status, stderr) = tokio::join!(child.wait(), read_stderr);
        let status = status.map_err(|e| {
            HandlerError::retryable(reason::DUMP_FAILED, format!("waiting for pg_dump: {e}"))
        })?;
        if status.success() {
            return Ok(());
        }
        Err(classify_pg_dump_error(&source.name, db, stderr.trim()))
    }
}

/// Maps pg_dump's stderr to a reason code and an actionable message.
fn classify_pg_dump_error(source: &str, db: &str, stderr: &str) -> HandlerError {
    let lower = stderr.to_lowercase();
    let detail = format!("pg_dump of {source}/{db} failed: {stderr}");
    if lower.contains("password authentication failed") || lower.contains("no password supplied") {
        HandlerError::permanent(
            reason::AUTH_FAILED,
            format!("{detail}; check the source's password_env or password_file"),
        )
    } else if lower.contains("permission denied") {
        HandlerError::permanent(
            reason::PERMISSION_DENIED,
            format!("{detail}; grant the backup role SELECT on it (or pg_read_all_data)"),
        )
    } else if lower.contains("database") && lower.contains("does not exist") {
        HandlerError::permanent(
            reason::DATABASE_NOT_FOUND,
            format!("{detail}; check the database name"),
        )
    } else if lower.contains("no space left") {
        HandlerError::retryable(
            reason::SPOOL_ERROR,
            format!("{detail}; free space in the spool"),
        )
    } else if lower.contains("could not connect")
        || lower.contains("connection refused")
        || lower.contains("could not translate host")
    {
        HandlerError::retryable(
            reason::UNREACHABLE,
            format!("{detail}; check that the server is up and reachable from the dumper"),
        )
    } else {
        HandlerError::retryable(reason::DUMP_FAILED, detail)
    }
}

/// Connects once before dumping: it gives the server version for the manifest and
/// turns bad credentials or a missing database into a precise error early.
async fn server_version(
    base: &tokio_postgres::Config,
    password: Option<&SecretString>,
    db: &str,
    source: &str,
) -> Result<String, HandlerError> {
    let mut config = base.clone();
    config.dbname(db);
    config.connect_timeout(std::time::Duration::from_secs(10));
    if let Some(password) = password {
        config.password(password.expose_secret());
    }
    let (client, connection) = config
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|e| classify_connect_error(source, db, &e))?;
    let connection = tokio::spawn(connection);
    let row = client
        .query_one("SHOW server_version", &[])
        .await
        .map_err(|e| {
            HandlerError::retryable(
                reason::DUMP_FAILED,
                format!("{source}: reading the server version: {e}"),
            )
        })?;
    drop(client);
    let _ = connection.await;
    let version: String = row.get(0);
    Ok(version
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string())
}

fn classify_connect_error(source: &str, db: &str, e: &tokio_postgres::Error) -> HandlerError {
    match e.code() {
        Some(code)
            if *code == SqlState::INVALID_PASSWORD
                || *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION =>
        {
            HandlerError::permanent(
                reason::AUTH_FAILED,
                format!(
                    "{source}: the server refused the credentials for database {db} ({e}); check the user in the source url and its password_env or password_file"
                ),
            )
        }
        Some(code) if *code == SqlState::UNDEFINED_DATABASE => HandlerError::permanent(
            reason::DATABASE_NOT_FOUND,
            format!(
                "{source}: database {db} does not exist on the server; check the source's url or databases"
            ),
        ),
        Some(code) if *code == SqlState::INSUFFICIENT_PRIVILEGE => HandlerError::permanent(
            reason::PERMISSION_DENIED,
            format!(
                "{source}: not allowed to connect to {db} ({e}); grant CONNECT to the backup role"
            ),
        ),
        _ => HandlerError::retryable(
            reason::UNREACHABLE,
            format!(
                "{source}: cannot reach the server for database {db} ({e}); check that it is up and reachable from the dumper"
            ),
        ),
    }
}

fn parse_url(url: &str, source: &str) -> Result<tokio_postgres::Config, HandlerError> {
    url.parse().map_err(|e| {
        HandlerError::permanent(
            reason::DUMP_FAILED,
            format!("source {source}: invalid postgres url: {e}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pg_dump_errors_map_to_reasons() {
        let cases = [
            (
                "pg_dump: error: connection to server at \"127.0.0.1\", port 5432 failed: FATAL:  password authentication failed for user \"x\"",
                reason::AUTH_FAILED,
            ),
            (
                "pg_dump: error: query failed: ERROR:  permission denied for table secrets",
                reason::PERMISSION_DENIED,
            ),
            (
                "pg_dump: error: connection to server failed: FATAL:  database \"nope\" does not exist",
                reason::DATABASE_NOT_FOUND,
            ),
            (
                "pg_dump: error: could not write to file: No space left on device",
                reason::SPOOL_ERROR,
            ),
            (
                "pg_dump: error: connection to server at \"10.0.0.1\", port 5432 failed: Connection refused",
                reason::UNREACHABLE,
            ),
            ("pg_dump: error: something else", reason::DUMP_FAILED),
        ];
        for (stderr, expected) in cases {
            assert_eq!(
                classify_pg_dump_error("s", "d", stderr).reason(),
                expected,
                "{stderr}"
            );
        }
    }
}
