//! `ferry sources list|add|remove|pause|resume`: the live sources registry in
//! JetStream KV. `list` only reads (attached to NATS without declaring anything);
//! the edits connect as a writer.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use ferry_runtime::config::SourceConfig;
use ferry_runtime::registry::RegistryError;
use ferry_runtime::{Config, Runtime};

use crate::output;

/// `ferry sources …`
#[derive(Subcommand)]
pub enum SourcesCommand {
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
pub struct SourceArgs {
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
    /// MongoDB: capture every change between backups, for restores to any
    /// instant (`pitr.enabled`); the server must serve change streams.
    #[arg(long)]
    pitr: bool,
    /// With --pitr: commit captured changes at least this often (`10m`).
    #[arg(long, requires = "pitr")]
    segment_span: Option<String>,
    /// With --pitr: or when they reach this size (`64MiB`).
    #[arg(long, requires = "pitr")]
    segment_max: Option<String>,
    /// PostgreSQL: `logical` (pg_dump, the default) or `physical` (base backups
    /// plus the WAL archive that `ferry wal-push` fills).
    #[arg(long)]
    mode: Option<String>,
}

/// Runs `ferry sources …`.
pub async fn run(config: Config, command: SourcesCommand) -> anyhow::Result<ExitCode> {
    match command {
        SourcesCommand::List { json } => {
            let rt = Runtime::attach(config, "ferry-cli").await?;
            let all = rt.sources.all();
            if json {
                output::json(&output::sources_json(&all))?;
            } else {
                print!("{}", output::sources_table(&all));
            }
        }
        SourcesCommand::Add(args) => {
            let rt = Runtime::connect(config, "ferry-cli").await?;
            let source = source_from_args(*args)?;
            check_capture(&source).await?;
            let added = rt.sources.add(&source).await;
            added.map_err(|e| explain_refusal(&rt, e))?;
            eprintln!(
                "source {} added to the registry; schedulers pick it up within seconds",
                source.name
            );
        }
        SourcesCommand::Remove { name } => {
            let rt = Runtime::connect(config, "ferry-cli").await?;
            let removed = rt.sources.remove(&name).await;
            removed.map_err(|e| explain_refusal(&rt, e))?;
            eprintln!("source {name} removed; its backups stay in the store");
        }
        SourcesCommand::Pause { name } => set_paused(config, &name, true).await?,
        SourcesCommand::Resume { name } => set_paused(config, &name, false).await?,
    }
    Ok(ExitCode::SUCCESS)
}

/// A source with capture on must be on a server that serves change streams:
/// refused now, naming the source, rather than by a capture worker later.
async fn check_capture(source: &SourceConfig) -> anyhow::Result<()> {
    if !(source.pitr.enabled && source.engine == ferry_runtime::config::EngineKind::Mongodb) {
        return Ok(());
    }
    match ferry_mongo::serves_change_streams(&source.url, std::time::Duration::from_secs(10)).await
    {
        Ok(true) => Ok(()),
        Ok(false) => anyhow::bail!(
            "source {}: the server cannot serve change streams (a standalone mongod?), so its changes cannot be captured; run it as a replica set (a one-node set will do) or add the source without --pitr",
            source.name
        ),
        Err(e) => anyhow::bail!(
            "source {}: could not ask the server whether it serves change streams, which --pitr needs: {e}",
            source.name
        ),
    }
}

async fn set_paused(config: Config, name: &str, paused: bool) -> anyhow::Result<()> {
    let rt = Runtime::connect(config, "ferry-cli").await?;
    let set = rt.sources.set_paused(name, paused).await;
    set.map_err(|e| explain_refusal(&rt, e))?;
    let done = if paused { "paused" } else { "resumed" };
    eprintln!("scheduled backups of {name} {done}");
    Ok(())
}

/// A registry edit that failed, with the server's refusal when it had one: NATS
/// answers a write the user may not make with nothing but a timeout.
fn explain_refusal(rt: &Runtime, error: RegistryError) -> anyhow::Error {
    match (&error, rt.refusals.last()) {
        (RegistryError::Nats(_), Some(refusal)) => anyhow::anyhow!(
            "{error}: NATS refused it ({refusal}); the NATS user {} may not write the sources registry: edit it as a user allowed to publish to $KV.ferry-sources.>",
            rt.config
                .nats
                .username
                .as_deref()
                .unwrap_or("of this configuration")
        ),
        _ => error.into(),
    }
}

/// Builds a source from flags through the same TOML path as the file, so the two
/// cannot disagree on defaults or parsing.
fn source_from_args(a: SourceArgs) -> anyhow::Result<SourceConfig> {
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
    if a.pitr {
        let mut pitr = toml::Table::new();
        pitr.insert("enabled".into(), true.into());
        if let Some(v) = a.segment_span {
            pitr.insert("segment_span".into(), v.into());
        }
        if let Some(v) = a.segment_max {
            pitr.insert("segment_max".into(), v.into());
        }
        table.insert("pitr".into(), pitr.into());
    }
    if let Some(mode) = a.mode {
        table.insert("mode".into(), mode.into());
    }
    let text = toml::to_string(&table)?;
    let source: SourceConfig =
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("invalid source: {}", e.message()))?;
    Ok(source)
}
