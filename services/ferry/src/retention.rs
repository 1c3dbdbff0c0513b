//! `ferry retention plan|apply` and `ferry keep`: the retention worker's planner
//! and runs, from the command line. `plan` is the dry run of exactly what `apply`
//! and the worker do.

use std::process::ExitCode;

use chrono::{DateTime, Utc};
use clap::Subcommand;
use ferry_retention::{Plan, Retention};
use ferry_runtime::config::SourceConfig;
use ferry_runtime::{Config, Runtime};
use ferry_storage::Catalog;

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

/// Finds a source in the file, or in the live registry over NATS.
async fn find_source(
    config: &Config,
    name: &str,
) -> anyhow::Result<(SourceConfig, Option<Runtime>)> {
    if let Some(s) = config.source(name) {
        return Ok((s.clone(), None));
    }
    let rt = Runtime::connect(config.clone(), "ferry-cli").await?;
    let source = rt.sources.get(name).ok_or_else(|| {
        anyhow::anyhow!("source {name:?} is neither in the configuration nor in the registry; `ferry sources list` shows them")
    })?;
    Ok((source, Some(rt)))
}

/// Runs `ferry retention …`.
pub async fn run(config: Config, command: RetentionCommand) -> anyhow::Result<ExitCode> {
    match command {
        RetentionCommand::Plan { source, at, json } => {
            let (source, _) = find_source(&config, &source).await?;
            let store = ferry_runtime::store::open(&config.storage)?;
            let tz = ferry_runtime::schedule::parse_timezone(&source.timezone)
                .unwrap_or(chrono_tz::Tz::UTC);
            let backups =
                ferry_retention::backups_of(&Catalog::new(store.as_ref()), &source.name).await?;
            let policy = config.retention.policy_for(&source);
            let plan = ferry_retention::plan(&backups, policy, tz, at.unwrap_or_else(Utc::now));
            if json {
                println!("{}", serde_json::to_string_pretty(&plan_json(&plan))?);
            } else {
                print!("{}", plan_table(&source.name, &plan));
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
                let events: Vec<_> = events.iter().map(event_json).collect();
                println!("{}", serde_json::to_string_pretty(&events)?);
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

/// Runs `ferry keep`: marks a backup so that no policy deletes it, or unmarks it.
pub async fn keep(
    config: Config,
    source: &str,
    backup: &str,
    remove: bool,
) -> anyhow::Result<ExitCode> {
    let store = ferry_runtime::store::open(&config.storage)?;
    let backup_id = if backup == "latest" {
        Catalog::new(store.as_ref())
            .latest(source)
            .await?
            .ok_or_else(|| {
                anyhow::anyhow!("source {source} has no backups in {}", store.describe())
            })?
            .id
    } else {
        backup.to_string()
    };
    // Under the source's retention lease, so that a run planned before the mark
    // existed cannot delete the backup right after it was marked.
    let rt = Runtime::connect(config.clone(), "ferry-cli").await?;
    let retention = Retention::new(rt, store.clone()).await?;
    retention
        .with_source_lease(source, "ferry-keep", || async {
            Catalog::new(store.as_ref())
                .set_keep_mark(source, &backup_id, !remove)
                .await
        })
        .await??;
    if remove {
        println!(
            "backup {backup_id} of {source} is no longer kept by mark; its policy applies again"
        );
    } else {
        println!(
            "backup {backup_id} of {source} is kept: no retention policy will delete it (`ferry keep --remove` to undo)"
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn plan_json(plan: &Plan) -> serde_json::Value {
    let rows = |ds: &[ferry_retention::Decision]| -> Vec<serde_json::Value> {
        ds.iter()
            .map(|d| serde_json::json!({"backup_id": d.id, "rule": d.rule}))
            .collect()
    };
    serde_json::json!({"keep": rows(&plan.keep), "delete": rows(&plan.delete)})
}

fn event_json(e: &ferry_proto::v1::RetentionApplied) -> serde_json::Value {
    serde_json::json!({
        "source": e.source,
        "kept": e.kept.iter().map(|k| serde_json::json!({"backup_id": k.backup_id, "rule": k.rule})).collect::<Vec<_>>(),
        "deleted": e.deleted.iter().map(|k| serde_json::json!({"backup_id": k.backup_id, "rule": k.rule})).collect::<Vec<_>>(),
        "objects_deleted": e.objects_deleted,
        "bytes_freed": e.bytes_freed,
    })
}

/// The plan as a table, newest first, kept and deleted interleaved by time.
pub fn plan_table(source: &str, plan: &Plan) -> String {
    let mut rows: Vec<(&str, &str, &str)> = plan
        .keep
        .iter()
        .map(|d| (d.id.as_str(), "keep", d.rule))
        .chain(
            plan.delete
                .iter()
                .map(|d| (d.id.as_str(), "DELETE", d.rule)),
        )
        .collect();
    rows.sort_by(|a, b| b.0.cmp(a.0));
    let mut out = format!("{:<32} {:<7} {}\n", "BACKUP", "ACTION", "RULE");
    for (id, action, rule) in rows {
        out.push_str(&format!("{id:<32} {action:<7} {rule}\n"));
    }
    out.push_str(&format!(
        "{source}: {} kept, {} to delete\n",
        plan.keep.len(),
        plan.delete.len()
    ));
    out
}
