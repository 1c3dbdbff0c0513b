//! `ferry retention plan|apply`: the retention worker's planner and runs, from the
//! command line. `plan` is the dry run of exactly what `apply` and the worker do; it
//! only reads (NATS only to find a registry source, attached without declaring).

use std::process::ExitCode;

use chrono::{DateTime, Utc};
use clap::Subcommand;
use ferry_retention::Retention;
use ferry_runtime::config::SourceConfig;
use ferry_runtime::{Config, Runtime};
use ferry_storage::Catalog;

use crate::output;

/// `ferry retention …`
#[derive(Subcommand)]
pub enum RetentionCommand {
    /// Show what the policy keeps and deletes now, and why; changes nothing.
    Plan {
        /// The source.
        #[arg(long)]
        source: String,
        /// Plan as of this time (RFC 3339) instead of now.
        #[arg(long)]
        at: Option<DateTime<Utc>>,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Apply the policy now, then collect unreferenced objects.
    Apply {
        /// Only this source (default: every source).
        #[arg(long)]
        source: Option<String>,
        /// JSON (the RetentionApplied events) instead of a summary.
        #[arg(long)]
        json: bool,
    },
}

/// Finds a source in the file, or in the live registry over NATS (read-only).
async fn find_source(config: &Config, name: &str) -> anyhow::Result<SourceConfig> {
    if let Some(s) = config.source(name) {
        return Ok(s.clone());
    }
    let rt = Runtime::attach(config.clone(), "ferry-cli").await?;
    rt.sources.get(name).ok_or_else(|| {
        anyhow::anyhow!("source {name:?} is neither in the configuration nor in the registry; `ferry sources list` shows them")
    })
}

/// Runs `ferry retention …`.
pub async fn run(config: Config, command: RetentionCommand) -> anyhow::Result<ExitCode> {
    match command {
        RetentionCommand::Plan { source, at, json } => {
            let source = find_source(&config, &source).await?;
            let store = ferry_runtime::store::open(&config.storage)?;
            let tz = ferry_runtime::schedule::parse_timezone(&source.timezone)
                .unwrap_or(chrono_tz::Tz::UTC);
            let backups =
                ferry_retention::backups_of(&Catalog::new(store.as_ref()), &source.name).await?;
            let retention = config.section::<ferry_retention::config::RetentionConfig>()?;
            let policy = retention.policy_for(&source);
            let plan = ferry_retention::plan(&backups, policy, tz, at.unwrap_or_else(Utc::now));
            if json {
                output::json(&output::plan_json(&plan))?;
            } else {
                print!("{}", output::plan_table(&source.name, &plan));
            }
            Ok(ExitCode::SUCCESS)
        }
        RetentionCommand::Apply { source, json } => {
            let rt = Runtime::connect(config.clone(), "ferry-cli").await?;
            let store = ferry_runtime::store::open(&config.storage)?;
            let retention = Retention::new(rt.clone(), store).await?;
            let now = Utc::now();
            let job_id = format!("cli-{}", now.format("%Y%m%dT%H%M%SZ"));
            let sources: Vec<SourceConfig> = match &source {
                Some(name) => vec![rt.sources.get(name).ok_or_else(|| {
                    anyhow::anyhow!(
                        "source {name:?} is not configured; `ferry sources list` shows them"
                    )
                })?],
                None => rt.sources.all().into_iter().map(|s| s.config).collect(),
            };
            let mut events = Vec::new();
            for s in &sources {
                let run = retention.run_source(s, &job_id, now, false).await?;
                events.push(ferry_retention::applied_event(&job_id, &s.name, &run));
            }
            let gc = retention
                .collect(&job_id, std::time::SystemTime::now())
                .await?;
            if json {
                let events: Vec<_> = events.iter().map(output::applied_json).collect();
                output::json(&events)?;
            } else {
                for e in &events {
                    println!(
                        "{}: kept {}, deleted {}",
                        e.source,
                        e.kept.len(),
                        e.deleted.len()
                    );
                }
                match gc {
                    Some(gc) => match &gc.skipped {
                        Some(why) => println!("garbage collection skipped: {why}"),
                        None => println!(
                            "garbage collection: {} objects deleted, {} freed",
                            gc.objects_deleted,
                            ferry_runtime::human::bytes(gc.bytes_freed)
                        ),
                    },
                    None => {
                        println!("garbage collection is running elsewhere; it was left to that run")
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
