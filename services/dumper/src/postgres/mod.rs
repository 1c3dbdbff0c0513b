//! PostgreSQL dumps: `pg_dump` in directory format, tables in parallel, files
//! compressed by Ferry as pg_dump finishes them (see [`run`]); and physical base
//! backups with `pg_basebackup` (see [`physical`]).

mod errors;
mod physical;
mod run;
pub mod tools;

use std::path::{Path, PathBuf};

use ferry_proto::reason;
use ferry_proto::v1::{PostgresDatabase, PostgresDetails, PostgresTable};
use ferry_runtime::HandlerError;
use ferry_runtime::config::SourceConfig;
use secrecy::{ExposeSecret, SecretString};
use tracing::Instrument;

use crate::output::JobOutput;
use errors::classify_connect_error;
pub use errors::spool_io;
pub use physical::BASE_TAR;

/// The name of the staging directory inside a job's spool directory.
pub const STAGING_DIR: &str = ".pg-staging";

/// How the dumper runs the PostgreSQL client tools.
#[derive(Debug, Clone)]
pub struct PgTools {
    bin_dir: Option<PathBuf>,
    jobs: usize,
}

/// What a PostgreSQL dump produced besides its files.
#[derive(Debug, Clone)]
pub struct PgDump {
    /// The databases dumped, in order.
    pub databases: Vec<String>,
    /// Versions, sizes and row estimates for the manifest.
    pub details: PostgresDetails,
}

impl PgTools {
    /// Tools from `bin_dir` (or the standard paths), dumping `jobs` tables at once
    /// (default: this machine's cores).
    pub fn new(bin_dir: Option<PathBuf>, jobs: Option<usize>) -> Self {
        let jobs = jobs.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
        });
        PgTools { bin_dir, jobs }
    }

    /// Dumps every database of the job into `out` (`<database>/…`, plus
    /// `globals.sql` when the source asks for it), staging pg_dump's output under
    /// `staging`.
    pub async fn dump(
        &self,
        source: &SourceConfig,
        password: Option<&SecretString>,
        requested: &[String],
        out: &JobOutput,
        staging: &Path,
    ) -> Result<PgDump, HandlerError> {
        let base = parse_url(&source.url, &source.name)?;
        let wanted = if !requested.is_empty() {
            requested.to_vec()
        } else if !source.databases.is_empty() {
            source.databases.clone()
        } else {
            vec![base.get_dbname().unwrap_or("postgres").to_string()]
        };
        let every = wanted.iter().any(|d| d == "*");
        // The first connection checks credentials and reads the version; with "*" it
        // goes to the URL's database (or postgres) to list the others.
        let first = if every {
            base.get_dbname().unwrap_or("postgres").to_string()
        } else {
            wanted[0].clone()
        };
        let client = connect(&base, password, &first, &source.name).await?;
        let server_version: String = query_one(&client, "SHOW server_version", &source.name)
            .await?
            .get(0);
        let server_version = server_version
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string();
        let server_num: String = query_one(&client, "SHOW server_version_num", &source.name)
            .await?
            .get(0);
        let server_major = server_num.parse::<u32>().unwrap_or(0) / 10000;
        let databases = if every {
            client
                .query(
                    "SELECT datname FROM pg_database WHERE NOT datistemplate AND datallowconn ORDER BY datname",
                    &[],
                )
                .await
                .map_err(|e| query_error(&source.name, e))?
                .iter()
                .map(|r| r.get::<_, String>(0))
                .collect()
        } else {
            wanted
        };
        drop(client);
        let tools = tools::find(self.bin_dir.as_deref(), server_major, &server_version).await?;
        tracing::info!(pg_dump = %tools.version, bin_dir = %tools.bin_dir.display(), server = %server_version, "chose pg_dump");

        let mut details = PostgresDetails {
            server_version,
            pg_dump_version: tools.version.clone(),
            databases: Vec::new(),
            globals: source.globals,
            physical: None,
        };
        if source.globals {
            let url = db_url(&source.url, &first, &source.name)?;
            run::pg_dumpall_globals(&tools.tool("pg_dumpall"), &url, password, &source.name, out)
                .await?;
        }
        for (i, db) in databases.iter().enumerate() {
            let client = connect(&base, password, db, &source.name).await?;
            let stats = database_stats(&client, db, &source.name).await?;
            drop(client);
            let spec = run::DumpSpec {
                pg_dump: tools.tool("pg_dump"),
                url: db_url(&source.url, db, &source.name)?,
                password,
                jobs: self.jobs,
                filters: filters(source),
                staging: staging.join(i.to_string()),
                prefix: db.clone(),
                source: &source.name,
                db,
            };
            run::pg_dump(spec, out)
                .instrument(tracing::info_span!("pg_dump", db.name = %db))
                .await?;
            details.databases.push(stats);
        }
        let _ = tokio::fs::remove_dir(staging).await;
        Ok(PgDump { databases, details })
    }
}

/// pg_dump's `-n/-N/-t/-T` from the source's include/exclude lists.
fn filters(source: &SourceConfig) -> Vec<String> {
    let mut args = Vec::new();
    for (flag, values) in [
        ("--schema", &source.include_schemas),
        ("--exclude-schema", &source.exclude_schemas),
        ("--table", &source.include_tables),
        ("--exclude-table", &source.exclude_tables),
    ] {
        for v in values {
            args.push(format!("{flag}={v}"));
        }
    }
    args
}

/// The database's size and every table's row estimate, for the manifest.
async fn database_stats(
    client: &tokio_postgres::Client,
    db: &str,
    source: &str,
) -> Result<PostgresDatabase, HandlerError> {
    let size: i64 = query_one(
        client,
        "SELECT pg_database_size(current_database())",
        source,
    )
    .await?
    .get(0);
    let rows = client
        .query(
            "SELECT n.nspname::text, c.relname::text, greatest(c.reltuples, 0)::float8 \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r', 'p', 'm') \
               AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
               AND n.nspname NOT LIKE 'pg\\_toast%' \
             ORDER BY 1, 2",
            &[],
        )
        .await
        .map_err(|e| query_error(source, e))?;
    Ok(PostgresDatabase {
        name: db.to_string(),
        size_bytes: size.max(0) as u64,
        tables: rows
            .iter()
            .map(|r| PostgresTable {
                schema: r.get(0),
                name: r.get(1),
                rows_estimate: r.get::<_, f64>(2) as u64,
            })
            .collect(),
    })
}

/// Connects to `db`: a precise error (credentials, missing database, unreachable)
/// before pg_dump is even started.
async fn connect(
    base: &tokio_postgres::Config,
    password: Option<&SecretString>,
    db: &str,
    source: &str,
) -> Result<tokio_postgres::Client, HandlerError> {
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
    tokio::spawn(connection);
    Ok(client)
}

async fn query_one(
    client: &tokio_postgres::Client,
    sql: &str,
    source: &str,
) -> Result<tokio_postgres::Row, HandlerError> {
    client
        .query_one(sql, &[])
        .await
        .map_err(|e| query_error(source, e))
}

fn query_error(source: &str, e: tokio_postgres::Error) -> HandlerError {
    HandlerError::retryable(
        reason::DUMP_FAILED,
        format!("{source}: reading the catalog failed: {e}"),
    )
}

/// The source's URL pointing at `db` (percent-encoded, so any name works).
fn db_url(url: &str, db: &str, source: &str) -> Result<String, HandlerError> {
    let mut url = url::Url::parse(url).map_err(|e| {
        HandlerError::permanent(
            reason::DUMP_FAILED,
            format!("source {source}: invalid url: {e}"),
        )
    })?;
    url.path_segments_mut()
        .map_err(|_| {
            HandlerError::permanent(
                reason::DUMP_FAILED,
                format!("source {source}: the url cannot name a database"),
            )
        })?
        .clear()
        .push(db);
    Ok(url.to_string())
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
    fn database_names_are_encoded_into_the_url() {
        assert_eq!(
            db_url("postgres://u@h:5432/app?sslmode=disable", "a/b ü", "s").unwrap(),
            "postgres://u@h:5432/a%2Fb%20%C3%BC?sslmode=disable"
        );
    }
}
