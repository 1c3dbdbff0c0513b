//! `ferry`: the operator's CLI.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use ferry::backup::Outcome;
use ferry_proto::v1::Stage;
use ferry_runtime::process::{self, EXIT_FAILURE};
use ferry_scheduler::RequestPriority;

#[derive(Parser)]
#[command(
    name = "ferry",
    version,
    about = "Backups of PostgreSQL and MongoDB fleets over NATS"
)]
struct Cli {
    /// The configuration file (also FERRY_CONFIG).
    #[arg(long, global = true, env = "FERRY_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run every worker in this process.
    Up,
    /// Back up now.
    Backup {
        #[command(subcommand)]
        command: BackupCommand,
    },
    /// List backups, newest first.
    List {
        /// Only this source.
        #[arg(long)]
        source: Option<String>,
        /// JSON (the manifests) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Fetch a backup into a directory in the standard tools' layout.
    Restore {
        /// The source.
        #[arg(long)]
        source: String,
        /// A backup id, or `latest`.
        #[arg(long, default_value = "latest")]
        backup: String,
        /// Where to write it: one pg_dump directory archive per database, for
        /// `pg_restore`.
        #[arg(long)]
        to_dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum BackupCommand {
    /// Publish a job for a source now.
    Now {
        /// The source to back up.
        #[arg(long)]
        source: String,
        /// Wait for the outcome; exit 0 only when the backup is stored.
        #[arg(long)]
        wait: bool,
        /// Longest wait, e.g. 30m (default: the source's timeout plus 5 minutes).
        #[arg(long, value_parser = humantime::parse_duration)]
        timeout: Option<Duration>,
        /// Take the dumpers' express lane, ahead of queued scheduled jobs.
        #[arg(long)]
        urgent: bool,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match process::load_config(cli.config.as_deref()) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let result = match cli.command {
        Command::Up => {
            let _telemetry = match process::init_telemetry(&config, "ferry") {
                Ok(g) => g,
                Err(code) => return code,
            };
            let shutdown = ferry_runtime::shutdown::on_signals();
            async {
                let rt = process::connect(config, "ferry", &shutdown).await?;
                ferry::run_all(rt, shutdown).await
            }
            .await
            .map(|()| ExitCode::SUCCESS)
        }
        Command::Backup {
            command:
                BackupCommand::Now {
                    source,
                    wait,
                    timeout,
                    urgent,
                },
        } => backup_now(&config, &source, wait, timeout, urgent).await,
        Command::List { source, json } => list(&config, source.as_deref(), json).await,
        Command::Restore {
            source,
            backup,
            to_dir,
        } => restore_to_dir(&config, &source, &backup, &to_dir).await,
    };
    result.unwrap_or_else(|e| {
        eprintln!("ferry: {e:#}");
        ExitCode::from(EXIT_FAILURE)
    })
}

async fn backup_now(
    config: &ferry_runtime::Config,
    source: &str,
    wait: bool,
    timeout: Option<Duration>,
    urgent: bool,
) -> anyhow::Result<ExitCode> {
    let client = ferry_runtime::nats::connect(&config.nats, "ferry-cli").await?;
    let wait = wait.then(|| {
        timeout.unwrap_or_else(|| {
            config
                .source(source)
                .map(|s| s.timeout)
                .unwrap_or(Duration::from_secs(7200))
                + Duration::from_secs(300)
        })
    });
    let priority = if urgent {
        RequestPriority::High
    } else {
        RequestPriority::Normal
    };
    let outcome = ferry::backup::now_with(&client, source, priority, wait).await?;
    Ok(match outcome {
        Outcome::Queued { job_id, backup_id } => {
            println!("queued job {job_id}: backup {backup_id}");
            ExitCode::SUCCESS
        }
        Outcome::Succeeded(up) => {
            println!("{}", up.backup_id);
            eprintln!(
                "backed up {}: {} files, {} bytes ({} reused) in {:.1}s",
                up.source,
                up.files,
                up.bytes_total,
                up.bytes_reused,
                up.duration_ms as f64 / 1000.0
            );
            ExitCode::SUCCESS
        }
        Outcome::Failed(f) => {
            let stage = Stage::try_from(f.stage)
                .unwrap_or(Stage::Unspecified)
                .name();
            eprintln!(
                "backup of {source} failed at the {stage} stage ({}): {}",
                f.reason, f.message
            );
            ExitCode::from(EXIT_FAILURE)
        }
    })
}

async fn list(
    config: &ferry_runtime::Config,
    source: Option<&str>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let store = ferry_runtime::store::open(&config.storage)?;
    let backups = ferry::list::backups(store.as_ref(), source).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&backups)?);
    } else {
        print!("{}", ferry::list::table(&backups));
    }
    Ok(ExitCode::SUCCESS)
}

async fn restore_to_dir(
    config: &ferry_runtime::Config,
    source: &str,
    backup: &str,
    dir: &std::path::Path,
) -> anyhow::Result<ExitCode> {
    let store = ferry_runtime::store::open(&config.storage)?;
    let manifest = ferry::restore::find_backup(store.as_ref(), source, backup).await?;
    let bytes = ferry::restore::fetch_to_dir(store.as_ref(), &manifest, dir).await?;
    eprintln!(
        "restored backup {} of {} ({} files, {bytes} bytes, every SHA-256 checked) into {}",
        manifest.backup_id,
        source,
        manifest.files.len(),
        dir.display()
    );
    for db in &manifest.databases {
        eprintln!("  pg_restore --dbname <target> {}", dir.join(db).display());
    }
    Ok(ExitCode::SUCCESS)
}
