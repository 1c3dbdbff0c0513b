//! `ferry pitr status`: what a source's captured changes make restorable. Reads
//! only the store: the windows and gaps are what the committed records say, never
//! what a running capture believes.

use std::process::ExitCode;

use chrono::{DateTime, Utc};
use ferry_runtime::Config;
use ferry_storage::pitr::{ClusterTime, Timeline};
use ferry_storage::{Catalog, ObjectStore};
use serde::Serialize;

use crate::output;

/// `ferry pitr`
#[derive(clap::Subcommand)]
pub enum PitrCommand {
    /// Each restorable window and each gap of a source, how far the newest
    /// committed change is behind now (the recovery point) and how long capture
    /// took to commit it (its lag).
    Status(PitrStatusArgs),
}

/// `ferry pitr status`
#[derive(clap::Args)]
pub struct PitrStatusArgs {
    /// The source.
    #[arg(long)]
    pub source: String,
    /// JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Runs `ferry pitr …`.
pub async fn run(config: &Config, command: PitrCommand) -> anyhow::Result<ExitCode> {
    match command {
        PitrCommand::Status(args) => {
            let store = ferry_runtime::store::open(&config.storage)?;
            let status = status(store.as_ref(), &args.source, Utc::now()).await?;
            if args.json {
                output::json(&status)?;
            } else {
                print!("{}", output::pitr_table(&status));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// A cluster time and the wall-clock second it falls in.
#[derive(Debug, Clone, Serialize)]
pub struct Instant {
    /// `SECONDS:INCREMENT`, as `--at-op` takes it.
    pub cluster_time: String,
    /// The same second in RFC 3339, as `--at` takes it.
    pub time: DateTime<Utc>,
}

impl From<ClusterTime> for Instant {
    fn from(c: ClusterTime) -> Self {
        Instant {
            cluster_time: c.to_string(),
            time: c.to_datetime(),
        }
    }
}

/// One restorable window.
#[derive(Debug, Clone, Serialize)]
pub struct WindowStatus {
    /// Changes after this are held...
    pub from: Instant,
    /// ...up to and including this.
    pub to: Instant,
    /// Segments in the window.
    pub segments: u64,
    /// Changes in the window.
    pub operations: u64,
}

/// One gap.
#[derive(Debug, Clone, Serialize)]
pub struct GapStatus {
    /// The changes after this...
    pub from: Instant,
    /// ...up to this were not captured.
    pub to: Instant,
    /// Why.
    pub cause: String,
    /// Whether capture recorded it (false: found by checking the chain's links).
    pub recorded: bool,
}

/// `ferry pitr status` of one source.
#[derive(Debug, Clone, Serialize)]
pub struct PitrStatus {
    /// The source.
    pub source: String,
    /// Restorable windows, oldest first.
    pub windows: Vec<WindowStatus>,
    /// Gaps, oldest first.
    pub gaps: Vec<GapStatus>,
    /// How far the newest committed change is behind now, in seconds: what a lost
    /// server would cost now.
    pub recovery_point_seconds: Option<f64>,
    /// How long after its end the newest segment was committed, in seconds.
    pub capture_lag_seconds: Option<f64>,
    /// The replica that committed the newest segment.
    pub captured_by: Option<String>,
}

/// The status of `source` at `now`.
pub async fn status(
    store: &dyn ObjectStore,
    source: &str,
    now: DateTime<Utc>,
) -> anyhow::Result<PitrStatus> {
    let catalog = Catalog::new(store);
    let timeline: Timeline = catalog.timeline(source).await?;
    let newest = catalog.last_segment(source).await?;
    let seconds = |d: chrono::Duration| d.num_milliseconds() as f64 / 1000.0;
    Ok(PitrStatus {
        source: source.to_string(),
        windows: timeline
            .windows
            .iter()
            .map(|w| WindowStatus {
                from: w.from.into(),
                to: w.to.into(),
                segments: w.segments,
                operations: w.operations,
            })
            .collect(),
        gaps: timeline
            .gaps
            .iter()
            .map(|g| GapStatus {
                from: g.from.into(),
                to: g.to.into(),
                cause: g.cause.clone(),
                recorded: g.recorded,
            })
            .collect(),
        recovery_point_seconds: timeline
            .newest()
            .map(|t| seconds(now - t.to_datetime()).max(0.0)),
        capture_lag_seconds: newest
            .as_ref()
            .map(|s| seconds(s.committed_at - s.end.to_datetime()).max(0.0)),
        captured_by: newest.map(|s| s.captured_by),
    })
}
