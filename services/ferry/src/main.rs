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

// Parsed once per run: the size of the largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
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
    /// Per source: last success, last failure, next run, running now.
    Status {
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// The live sources registry.
    Sources {
        #[command(subcommand)]
        command: SourcesCommand,
    },
    /// Re-read every object of a backup and check its size and SHA-256; exits
    /// non-zero listing every missing or corrupt object.
    Verify {
        /// The source.
        #[arg(long)]
        source: String,
        /// The backup id, or `latest`.
        #[arg(long, default_value = "latest")]
        backup: String,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Retention: preview (`plan`) or apply a source's policy now.
    Retention {
        #[command(subcommand)]
        command: ferry::retention::RetentionCommand,
    },
    /// Mark a backup so that no retention policy deletes it (or `--remove` the mark).
    Keep {
        /// The source.
        #[arg(long)]
        source: String,
        /// A backup id, or `latest`.
        #[arg(long)]
        backup: String,
        /// Remove the mark instead: the policy applies to the backup again.
        #[arg(long)]
        remove: bool,
    },
    /// Restore a backup into a PostgreSQL or MongoDB server (--to), or fetch it into a
    /// directory in the standard tools' layout (--to-dir).
    Restore {
        /// The source.
        #[arg(long)]
        source: String,
        /// A backup id, or `latest`.
        #[arg(long, default_value = "latest")]
        backup: String,
        /// Where to write it in the standard tool's layout: one pg_dump directory
        /// archive per database (for `pg_restore`), or mongodump's layout (for
        /// `mongorestore --dir`).
        #[arg(long, conflicts_with = "to")]
        to_dir: Option<PathBuf>,
        /// The server to restore into: `postgres://user@host/orders_copy` (password:
        /// PGPASSWORD or ~/.pgpass) or `mongodb://user@host:27017/`.
        #[arg(long, required_unless_present = "to_dir")]
        to: Option<String>,
        /// A file holding the password of the user in --to.
        #[arg(long)]
        password_file: Option<PathBuf>,
        /// Restore only this collection, `db.name` as named in the backup.
        #[arg(long)]
        collection: Option<String>,
        /// Restore database `old` as `new` (repeatable).
        #[arg(long, value_name = "OLD:NEW")]
        rename_db: Vec<String>,
        /// Drop existing collections before restoring them.
        #[arg(long)]
        drop: bool,
        /// Collections restored at once.
        #[arg(long, default_value_t = 4)]
        parallel: usize,
        /// Which database of the backup, when it holds several.
        #[arg(long, requires = "to")]
        database: Option<String>,
        /// Create the target database first.
        #[arg(long, requires = "to")]
        create: bool,
        /// Restore only this table, schema.name.
        #[arg(long, requires = "to")]
        table: Option<String>,
        /// Tables pg_restore loads in parallel (default: this machine's cores).
        #[arg(short = 'j', long, requires = "to")]
        jobs: Option<usize>,
        /// Where the verified, decompressed archive is staged (default: the
        /// system's temp directory).
        #[arg(long, requires = "to")]
        work_dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum SourcesCommand {
    /// Every source (file and registry).
    List {
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Add or replace a source in the registry (no restart needed).
    Add(Box<SourceArgs>),
    /// Remove a registry source (its backups stay).
    Remove {
        /// The source.
        name: String,
    },
    /// Stop a source's scheduled jobs (manual jobs still run).
    Pause {
        /// The source.
        name: String,
    },
    /// Resume a paused source's scheduled jobs.
    Resume {
        /// The source.
        name: String,
    },
}

/// A source, as flags; the same keys as `[[sources]]`.
#[derive(clap::Args)]
struct SourceArgs {
    /// Unique name, [a-z0-9_-].
    #[arg(long)]
    name: String,
    /// postgres or mongodb.
    #[arg(long)]
    engine: String,
    /// Connection URL, without a password.
    #[arg(long)]
    url: String,
    /// Environment variable holding the password (on the dumpers).
    #[arg(long)]
    password_env: Option<String>,
    /// File holding the password (on the dumpers).
    #[arg(long)]
    password_file: Option<PathBuf>,
    /// Databases to back up (comma-separated).
    #[arg(long, value_delimiter = ',')]
    databases: Vec<String>,
    /// Cron expression: 5 fields, 6 with seconds, or @daily-style.
    #[arg(long)]
    schedule: Option<String>,
    /// IANA time zone of the schedule.
    #[arg(long, default_value = "UTC")]
    timezone: String,
    /// Job deadline, e.g. 2h.
    #[arg(long, default_value = "2h")]
    timeout: String,
    /// skip or queue a job while one runs.
    #[arg(long, default_value = "skip")]
    on_overlap: String,
    /// Keep the newest N backups.
    #[arg(long)]
    keep_last: Option<u32>,
    /// Keep one backup per day for N days.
    #[arg(long)]
    keep_daily: Option<u32>,
    /// Keep one backup per week for N weeks.
    #[arg(long)]
    keep_weekly: Option<u32>,
    /// Keep one backup per month for N months.
    #[arg(long)]
    keep_monthly: Option<u32>,
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
        Command::Status { json } => status(config, json).await,
        Command::Verify {
            source,
            backup,
            json,
        } => verify(&config, &source, &backup, json).await,
        Command::Sources { command } => sources(config, command).await,
        Command::Retention { command } => ferry::retention::run(config, command).await,
        Command::Keep {
            source,
            backup,
            remove,
        } => ferry::retention::keep(config, &source, &backup, remove).await,
        Command::Restore {
            source,
            backup,
            to_dir: Some(to_dir),
            ..
        } => restore_to_dir(&config, &source, &backup, &to_dir).await,
        Command::Restore {
            source,
            backup,
            to: Some(to),
            database,
            create,
            table,
            jobs,
            work_dir,
            ..
        } if to.starts_with("postgres://") || to.starts_with("postgresql://") => {
            let opts = ferry::restore::postgres::PgRestore {
                to,
                database,
                create,
                table,
                jobs,
                work_dir,
                pg_bin_dir: config.dumper.pg_bin_dir.clone(),
            };
            restore_to_postgres(&config, &source, &backup, &opts).await
        }
        Command::Restore {
            source,
            backup,
            to,
            password_file,
            collection,
            rename_db,
            drop,
            parallel,
            ..
        } => {
            let options = mongo_restore_options(
                to.unwrap_or_default(),
                password_file,
                collection,
                rename_db,
                drop,
                parallel,
            );
            match options {
                Ok(options) => restore_to_server(&config, &source, &backup, options).await,
                Err(e) => Err(e),
            }
        }
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
    ferry::list::print(store.as_ref(), source, json, &mut std::io::stdout().lock()).await?;
    Ok(ExitCode::SUCCESS)
}

async fn verify(
    config: &ferry_runtime::Config,
    source: &str,
    backup: &str,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let store = ferry_runtime::store::open(&config.storage)?;
    let manifest = ferry::restore::find_backup(store.as_ref(), source, backup).await?;
    let problems = ferry::verify::verify(store.as_ref(), &manifest).await?;
    if json {
        println!(
            "{}",
            serde_json::json!({
                "source": source,
                "backup_id": manifest.backup_id,
                "files": manifest.files.len(),
                "ok": problems.is_empty(),
                "problems": problems,
            })
        );
    }
    if problems.is_empty() {
        if !json {
            println!(
                "backup {} of {source} is intact: {} objects, {} bytes, every size and SHA-256 checked",
                manifest.backup_id,
                manifest.files.len(),
                manifest.bytes_total
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    if !json {
        for p in &problems {
            println!("{}: {} ({})", p.object, p.problem, p.file);
        }
    }
    eprintln!(
        "backup {} of {source} is damaged: {} of {} objects missing or corrupt; restore from another backup and check the store",
        manifest.backup_id,
        problems.len(),
        manifest.files.len()
    );
    Ok(ExitCode::from(EXIT_FAILURE))
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
    if manifest.engine == ferry_storage::Engine::Mongodb {
        eprintln!("  mongorestore --dir {} --oplogReplay", dir.display());
    } else {
        for db in &manifest.databases {
            eprintln!("  pg_restore --dbname <target> {}", dir.join(db).display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn restore_to_postgres(
    config: &ferry_runtime::Config,
    source: &str,
    backup: &str,
    opts: &ferry::restore::postgres::PgRestore,
) -> anyhow::Result<ExitCode> {
    let store = ferry_runtime::store::open(&config.storage)?;
    let manifest = ferry::restore::find_backup(store.as_ref(), source, backup).await?;
    ferry::restore::postgres::restore(store.as_ref(), &manifest, opts).await?;
    eprintln!(
        "restored backup {} of {source} into {} (every SHA-256 checked)",
        manifest.backup_id,
        redact(&opts.to)
    );
    Ok(ExitCode::SUCCESS)
}

fn mongo_restore_options(
    to: String,
    password_file: Option<PathBuf>,
    collection: Option<String>,
    rename_db: Vec<String>,
    drop: bool,
    parallel: usize,
) -> anyhow::Result<ferry::restore::mongo::MongoRestoreOptions> {
    let password = password_file
        .map(|path| {
            std::fs::read_to_string(&path)
                .map(|s| s.trim_end_matches(['\n', '\r']).to_string())
                .map_err(|e| anyhow::anyhow!("--password-file {}: {e}", path.display()))
        })
        .transpose()?;
    let mut renames = std::collections::BTreeMap::new();
    for pair in rename_db {
        let (old, new) = pair
            .split_once(':')
            .filter(|(o, n)| !o.is_empty() && !n.is_empty())
            .ok_or_else(|| anyhow::anyhow!("--rename-db {pair:?}: expected OLD:NEW"))?;
        renames.insert(old.to_string(), new.to_string());
    }
    Ok(ferry::restore::mongo::MongoRestoreOptions {
        to,
        password,
        collection,
        rename_db: renames,
        drop,
        parallel_collections: parallel.max(1),
        parallel_batches: 4,
        progress: true,
    })
}

async fn restore_to_server(
    config: &ferry_runtime::Config,
    source: &str,
    backup: &str,
    options: ferry::restore::mongo::MongoRestoreOptions,
) -> anyhow::Result<ExitCode> {
    let store = ferry_runtime::store::open(&config.storage)?;
    let manifest = ferry::restore::find_backup(store.as_ref(), source, backup).await?;
    let report = ferry::restore::mongo::restore(store.as_ref(), &manifest, &options).await?;
    eprintln!(
        "restored backup {} of {}: {} collections, {} documents, {} changes replayed (every SHA-256 checked)",
        manifest.backup_id, source, report.collections, report.documents, report.oplog_applied
    );
    Ok(ExitCode::SUCCESS)
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_password(None);
            u.to_string()
        }
        Err(_) => "(the target)".into(),
    }
}

async fn status(config: ferry_runtime::Config, json: bool) -> anyhow::Result<ExitCode> {
    let rt = ferry_runtime::Runtime::connect(config, "ferry-cli").await?;
    let statuses = ferry::status::collect(&rt).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&statuses)?);
    } else {
        print!("{}", ferry::status::table(&statuses));
    }
    Ok(ExitCode::SUCCESS)
}

async fn sources(
    config: ferry_runtime::Config,
    command: SourcesCommand,
) -> anyhow::Result<ExitCode> {
    let rt = ferry_runtime::Runtime::connect(config, "ferry-cli").await?;
    let registry = &rt.sources;
    match command {
        SourcesCommand::List { json } => {
            let all = registry.all();
            if json {
                let rows: Vec<serde_json::Value> = all
                    .iter()
                    .map(|s| {
                        serde_json::json!({
                            "source": s.config,
                            "origin": if s.origin == ferry_runtime::registry::Origin::File { "file" } else { "registry" },
                            "paused": s.paused,
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                println!(
                    "{:<20} {:<9} {:<9} {:<7} {:<20} TIMEZONE",
                    "SOURCE", "ENGINE", "ORIGIN", "PAUSED", "SCHEDULE"
                );
                for s in all {
                    println!(
                        "{:<20} {:<9} {:<9} {:<7} {:<20} {}",
                        s.config.name,
                        format!("{:?}", s.config.engine).to_lowercase(),
                        if s.origin == ferry_runtime::registry::Origin::File {
                            "file"
                        } else {
                            "registry"
                        },
                        if s.paused { "yes" } else { "no" },
                        s.config.schedule.as_deref().unwrap_or("manual"),
                        s.config.timezone
                    );
                }
            }
        }
        SourcesCommand::Add(args) => {
            let source = source_from_args(*args)?;
            registry.add(&source).await?;
            eprintln!(
                "source {} added to the registry; schedulers pick it up within seconds",
                source.name
            );
        }
        SourcesCommand::Remove { name } => {
            registry.remove(&name).await?;
            eprintln!("source {name} removed; its backups stay in the store");
        }
        SourcesCommand::Pause { name } => {
            registry.set_paused(&name, true).await?;
            eprintln!("scheduled backups of {name} paused");
        }
        SourcesCommand::Resume { name } => {
            registry.set_paused(&name, false).await?;
            eprintln!("scheduled backups of {name} resumed");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Builds a source from flags through the same TOML path as the file, so the two
/// cannot disagree on defaults or parsing.
fn source_from_args(a: SourceArgs) -> anyhow::Result<ferry_runtime::config::SourceConfig> {
    let mut table = toml::Table::new();
    table.insert("name".into(), a.name.into());
    table.insert("engine".into(), a.engine.into());
    table.insert("url".into(), a.url.into());
    if let Some(v) = a.password_env {
        table.insert("password_env".into(), v.into());
    }
    if let Some(v) = a.password_file {
        table.insert("password_file".into(), v.display().to_string().into());
    }
    if !a.databases.is_empty() {
        table.insert("databases".into(), a.databases.into());
    }
    if let Some(v) = a.schedule {
        table.insert("schedule".into(), v.into());
    }
    table.insert("timezone".into(), a.timezone.into());
    table.insert("timeout".into(), a.timeout.into());
    table.insert("on_overlap".into(), a.on_overlap.into());
    let mut retention = toml::Table::new();
    for (key, value) in [
        ("keep_last", a.keep_last),
        ("keep_daily", a.keep_daily),
        ("keep_weekly", a.keep_weekly),
        ("keep_monthly", a.keep_monthly),
    ] {
        if let Some(v) = value {
            retention.insert(key.into(), i64::from(v).into());
        }
    }
    table.insert("retention".into(), retention.into());
    let text = toml::to_string(&table)?;
    let source: ferry_runtime::config::SourceConfig =
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("invalid source: {}", e.message()))?;
    Ok(source)
}
