//! MongoDB dumps with the official driver, in mongodump's layout: for each
//! collection `<db>/<collection>.bson` (its documents' raw bytes, concatenated) and
//! `<db>/<collection>.metadata.json` (options, indexes, UUID in canonical Extended
//! JSON), plus `oplog.bson` with the changes made while the dump ran, so a restore
//! lands on one instant like `mongodump --oplog`.
//!
//! Documents are never decoded: each cursor batch's bytes go straight into the
//! compressing writer. Collections dump `dumper.mongo_parallel_collections` at a
//! time; memory is bounded by one cursor batch (about 1 MiB, at least 101 documents)
//! and one compression pipe per collection in flight.

mod changes;
mod collection;
pub mod errors;

use std::time::Duration;

use ferry_proto::reason;
use ferry_proto::v1::{DumpFile, MongoClusterTime, MongoDetails};
use ferry_runtime::HandlerError;
use ferry_runtime::config::SourceConfig;
use futures::{StreamExt, TryStreamExt};
use mongodb::bson::{Timestamp, doc};
use mongodb::{Client, Database};
use secrecy::{ExposeSecret, SecretString};

use crate::output::JobOutput;
pub use ferry_mongo::CollectionFilter;

/// Databases never dumped unless named explicitly: they hold the server's own state.
const SYSTEM_DATABASES: [&str; 3] = ["admin", "local", "config"];

/// How a MongoDB dump runs.
#[derive(Debug, Clone)]
pub struct MongoOptions {
    /// Collections dumped at once.
    pub parallel_collections: usize,
    /// How long to wait for the server before calling it unreachable. Also the
    /// driver's heartbeat timeout: a server busy serving the dump may answer its
    /// heartbeat late, and a timed-out heartbeat interrupts every operation.
    pub connect_timeout: Duration,
}

impl Default for MongoOptions {
    fn default() -> Self {
        MongoOptions {
            parallel_collections: 4,
            connect_timeout: Duration::from_secs(30),
        }
    }
}

/// What a finished MongoDB dump produced.
#[derive(Debug, Clone)]
pub struct MongoDump {
    /// The server's version.
    pub server_version: String,
    /// Ferry's dumper and the driver it used.
    pub tool_version: String,
    /// Databases dumped, each a top-level directory.
    pub databases: Vec<String>,
    /// Every file of the backup (files of collections dropped mid-dump left out).
    pub files: Vec<DumpFile>,
    /// Point in time and counts, for the manifest.
    pub details: MongoDetails,
}

/// Dumps the databases of `source` (`requested` ones when the job names some) into
/// `out`.
pub async fn dump(
    source: &SourceConfig,
    password: Option<&SecretString>,
    requested: &[String],
    out: &JobOutput,
    options: &MongoOptions,
) -> Result<MongoDump, HandlerError> {
    let name = source.name.as_str();
    let client = connect(source, password, options).await?;
    let admin = client.database("admin");
    let build = admin
        .run_command(doc! { "buildInfo": 1 })
        .await
        .map_err(|e| errors::classify(name, "connecting", &e))?;
    let server_version = build.get_str("version").unwrap_or_default().to_string();
    let mut warnings = Vec::new();
    let fcv = match admin
        .run_command(doc! { "getParameter": 1, "featureCompatibilityVersion": 1 })
        .await
    {
        Ok(reply) => reply
            .get_document("featureCompatibilityVersion")
            .ok()
            .and_then(|d| d.get_str("version").ok())
            .unwrap_or_default()
            .to_string(),
        Err(e) => {
            warnings.push(format!("featureCompatibilityVersion unknown: {e}"));
            String::new()
        }
    };

    let filter = CollectionFilter::new(&source.collections, &source.exclude_collections)
        .map_err(|e| HandlerError::permanent(reason::DUMP_FAILED, format!("{name}: {e}")))?;
    let databases = databases(&client, source, requested).await?;

    // The change stream opens first, where the server's committed changes end, and
    // the start instant is read after it: every change from the start on is then
    // in the stream, and replaying them over data read later lands on the end
    // instant. (Opening at the start time instead asks the server to find that
    // time in its oplog; SecantusDB, under load, can place such a stream past a
    // write still being committed and never deliver it.) Changes between the
    // opening and the start are captured too; replaying them is harmless.
    let capture = changes::Capture::start(&client, name, &databases, &filter, out).await?;
    let start = operation_time(&admin, name).await?;
    if capture.is_none() {
        warnings.push(
            "no change stream (a standalone server?): changes made while the dump ran are not captured, so the backup is not a single point in time".into(),
        );
    }

    let mut jobs = Vec::new();
    for db in &databases {
        let specs = collection::list(&client.database(db), name).await?;
        for spec in specs {
            if filter.includes(db, &spec.name) {
                jobs.push((db.clone(), spec));
            }
        }
    }
    let results: Vec<collection::Outcome> = futures::stream::iter(jobs)
        .map(|(db, spec)| {
            let db = client.database(&db);
            async move { collection::dump(&db, name, spec, out).await }
        })
        .buffer_unordered(options.parallel_collections.max(1))
        .try_collect()
        .await?;

    let mut details = MongoDetails {
        start_time: start.map(cluster_time),
        feature_compatibility_version: fcv,
        ..Default::default()
    };
    let mut files = Vec::new();
    for outcome in results {
        match outcome {
            collection::Outcome::Dumped { entry, files: f } => {
                details.collections.push(entry);
                files.extend(f);
            }
            collection::Outcome::Dropped(ns) => {
                warnings.push(format!(
                    "collection {ns} was dropped while the dump ran; it is not in the backup"
                ));
                details.dropped.push(ns);
            }
        }
    }
    details
        .collections
        .sort_by(|a, b| (&a.database, &a.name).cmp(&(&b.database, &b.name)));

    if let Some(capture) = capture {
        let end = operation_time(&admin, name).await?.or(start).ok_or_else(|| {
            HandlerError::permanent(
                reason::DUMP_FAILED,
                format!("{name}: the server serves change streams but gives no cluster time (operationTime), so the dump's instant cannot be recorded"),
            )
        })?;
        let captured = capture.finish(end).await?;
        if let Some((from, to)) = captured.renamed.first() {
            // As `mongodump --oplog` refuses such a dump; this one is retried.
            return Err(HandlerError::retryable(
                reason::DUMP_FAILED,
                format!(
                    "{name}: collection {from} was renamed to {to} while the dump ran, so the dump would not be one instant (its documents are under the new name, which the dump did not list); the backup is tried again"
                ),
            ));
        }
        details.oplog_captured = true;
        details.oplog_entries = captured.entries;
        details.end_time = Some(cluster_time(end));
        warnings.extend(captured.warnings);
        files.push(captured.file);
    } else {
        details.end_time = details.start_time;
    }
    for w in &warnings {
        tracing::warn!(source = %name, warning = %w, "mongodb dump");
    }
    details.warnings = warnings;
    Ok(MongoDump {
        server_version,
        tool_version: format!(
            "ferry-dumper {} (mongodb driver 3)",
            env!("CARGO_PKG_VERSION")
        ),
        databases,
        files,
        details,
    })
}

fn cluster_time(t: Timestamp) -> MongoClusterTime {
    MongoClusterTime {
        seconds: t.time,
        increment: t.increment,
    }
}

async fn connect(
    source: &SourceConfig,
    password: Option<&SecretString>,
    options: &MongoOptions,
) -> Result<Client, HandlerError> {
    ferry_mongo::client(
        &source.url,
        password.map(|p| p.expose_secret()),
        "ferry-dumper",
        options.connect_timeout,
    )
    .await
    .map_err(|e| {
        HandlerError::permanent(reason::DUMP_FAILED, format!("source {}: {e}", source.name))
    })
}

/// The databases to dump: the job's, the source's, or every one but the system ones.
async fn databases(
    client: &Client,
    source: &SourceConfig,
    requested: &[String],
) -> Result<Vec<String>, HandlerError> {
    if !requested.is_empty() {
        return Ok(requested.to_vec());
    }
    if !source.databases.is_empty() {
        return Ok(source.databases.clone());
    }
    let mut names = client
        .list_database_names()
        .authorized_databases(true)
        .await
        .map_err(|e| {
            let mut err = errors::classify(&source.name, "listing databases", &e);
            if err.reason() == reason::PERMISSION_DENIED {
                err = HandlerError::permanent(
                    reason::PERMISSION_DENIED,
                    format!(
                        "{}: not allowed to list databases ({e}); name them in the source's `databases` or grant listDatabases",
                        source.name
                    ),
                );
            }
            err
        })?;
    names.retain(|n| !SYSTEM_DATABASES.contains(&n.as_str()));
    names.sort();
    Ok(names)
}

/// The server's `operationTime` now, or None on a server without cluster time (a
/// standalone mongod).
async fn operation_time(admin: &Database, source: &str) -> Result<Option<Timestamp>, HandlerError> {
    ferry_mongo::cluster_time_now(admin.client())
        .await
        .map_err(|e| errors::classify(source, "reading the cluster time", &e))
}
