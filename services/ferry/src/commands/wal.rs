//! `ferry wal-push` and `ferry wal-fetch`: PostgreSQL's `archive_command` and
//! `restore_command` (see [`crate::wal`]). They read the store only, never NATS, so
//! PostgreSQL's archiving does not depend on NATS being up; the configuration
//! they need is `[storage]` (and the source's name on the command line).
//!
//! Exit codes follow what PostgreSQL expects: wal-push exits non-zero on any
//! failure, so PostgreSQL keeps the file and retries; wal-fetch exits 1 when the
//! archive does not hold the file (the normal end of the archive), and 126 when it
//! cannot tell (the store unreachable, an object damaged), which PostgreSQL treats
//! as fatal: a recovery must stop rather than end early and promote at the wrong
//! point.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use ferry_runtime::Config;

use crate::wal::{self, Pushed};

/// wal-fetch: the archive does not hold the file.
const NOT_FOUND: u8 = 1;
/// wal-fetch: a failure PostgreSQL must not take for the end of the archive.
pub const FATAL: u8 = 126;

/// `ferry wal-push`
#[derive(clap::Args)]
pub struct WalPushArgs {
    /// The source whose archive receives the file (its `[[sources]]` name;
    /// default: the configuration's only source with `mode = "physical"`).
    #[arg(long)]
    pub source: Option<String>,
    /// The file, as PostgreSQL's `%p` names it (`pg_wal/000000010000000000000003`).
    pub path: PathBuf,
}

/// `ferry wal-fetch`
#[derive(clap::Args)]
pub struct WalFetchArgs {
    /// The source whose archive holds the file (default: as for wal-push).
    #[arg(long)]
    pub source: Option<String>,
    /// The file PostgreSQL asks for (`%f`).
    pub name: String,
    /// Where to write it (`%p`).
    pub dest: PathBuf,
}

/// The source named by `--source`, or the configuration's only physical one.
fn source_of(config: &Config, named: Option<String>) -> anyhow::Result<String> {
    let source = match named {
        Some(s) => s,
        None => {
            let physical: Vec<&str> = config
                .sources
                .iter()
                .filter(|s| s.mode == ferry_runtime::config::PostgresMode::Physical)
                .map(|s| s.name.as_str())
                .collect();
            match physical.as_slice() {
                [one] => one.to_string(),
                [] => anyhow::bail!(
                    "no --source given and the configuration has no source with mode = \"physical\": name the source, as in archive_command = 'ferry --config FILE wal-push --source NAME %p'"
                ),
                many => anyhow::bail!(
                    "no --source given and the configuration has several physical sources ({}): name the one this server archives into with --source",
                    many.join(", ")
                ),
            }
        }
    };
    if !ferry_proto::subjects::is_valid_source_name(&source) {
        anyhow::bail!(
            "--source {source:?}: a source name is [a-z0-9][a-z0-9_-]*, as in [[sources]]"
        );
    }
    Ok(source)
}

/// Runs `ferry wal-push`.
pub async fn push(config: &Config, args: WalPushArgs) -> anyhow::Result<ExitCode> {
    let source = source_of(config, args.source)?;
    let store = ferry_runtime::store::open(&config.storage)?;
    let started = Instant::now();
    let file = args
        .path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if let Err(e) =
        ferry_runtime::store::check_plaintext_writer(config, store.as_ref(), "ferry wal-push").await
    {
        let message = format!(
            "archiving {} for {source} refused (PostgreSQL keeps the file and retries): {e:#}",
            args.path.display(),
        );
        wal::report::failed(config, &source, &args.path, &file, &message).await;
        return Err(anyhow::anyhow!(message));
    }
    match wal::push(store.as_ref(), &source, &args.path).await {
        Ok(Pushed::Stored { bytes, stored }) => {
            eprintln!(
                "ferry wal-push: archived {} for {source} ({bytes} bytes as {stored}, {} ms)",
                args.path.display(),
                started.elapsed().as_millis()
            );
            wal::report::archived(config, &source, &args.path, &file, bytes).await;
            Ok(ExitCode::SUCCESS)
        }
        Ok(Pushed::AlreadyStored) => {
            eprintln!(
                "ferry wal-push: {} was already archived for {source} with the same content",
                args.path.display(),
            );
            wal::report::archived(config, &source, &args.path, &file, 0).await;
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            let message = format!(
                "archiving {} for {source} failed (PostgreSQL keeps the file and retries): {e}",
                args.path.display(),
            );
            wal::report::failed(config, &source, &args.path, &file, &message).await;
            Err(anyhow::anyhow!(message))
        }
    }
}

/// Runs `ferry wal-fetch`.
pub async fn fetch(config: &Config, args: WalFetchArgs) -> anyhow::Result<ExitCode> {
    let source = match source_of(config, args.source) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ferry wal-fetch: {e:#}");
            return Ok(ExitCode::from(FATAL));
        }
    };
    let store = match ferry_runtime::store::open(&config.storage) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ferry wal-fetch: opening the store: {e:#}");
            return Ok(ExitCode::from(FATAL));
        }
    };
    match wal::fetch(store.as_ref(), &source, &args.name, &args.dest).await {
        Ok(true) => Ok(ExitCode::SUCCESS),
        Ok(false) => {
            eprintln!(
                "ferry wal-fetch: {} is not in the archive of {}",
                args.name, source
            );
            Ok(ExitCode::from(NOT_FOUND))
        }
        Err(e) => {
            eprintln!(
                "ferry wal-fetch: fetching {} for {} failed: {e}",
                args.name, source
            );
            Ok(ExitCode::from(FATAL))
        }
    }
}
