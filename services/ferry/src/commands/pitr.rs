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
    /// PostgreSQL: also read every archived WAL file and check it decompresses
    /// intact (zstd's checksum), listing the damaged ones.
    #[arg(long)]
    pub check: bool,
}

/// Runs `ferry pitr …`.
pub async fn run(config: &Config, command: PitrCommand) -> anyhow::Result<ExitCode> {
    match command {
        PitrCommand::Status(args) => {
            let store = ferry_runtime::store::open(&config.storage)?;
            let store = store.as_ref();
            let physical = match config.source(&args.source) {
                Some(s) => s.mode == ferry_runtime::config::PostgresMode::Physical,
                // A source only the registry knows: the store says what it is.
                None => !Catalog::new(store)
                    .base_backups(&args.source)
                    .await?
                    .is_empty(),
            };
            let mut status = status(store, &args.source, Utc::now()).await?;
            if physical {
                status.wal = Some(wal_status(store, &args.source, args.check).await?);
            }
            if args.json {
                output::json(&status)?;
            } else {
                print!("{}", output::pitr_table(&status));
            }
            // A broken chain is a failure a readiness check or a cron job sees.
            let broken = status
                .wal
                .as_ref()
                .is_some_and(|w| !w.missing.is_empty() || !w.damaged.is_empty());
            Ok(if broken {
                ExitCode::from(ferry_runtime::process::EXIT_FAILURE)
            } else {
                ExitCode::SUCCESS
            })
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
    /// PostgreSQL (`mode = "physical"`): the base backups and the WAL archive.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wal: Option<WalStatus>,
}

/// A physical PostgreSQL source's base backups and WAL archive.
#[derive(Debug, Clone, Serialize)]
pub struct WalStatus {
    /// Base backups, newest first.
    pub base_backups: Vec<BaseBackupStatus>,
    /// Each timeline's archived WAL.
    pub timelines: Vec<TimelineStatus>,
    /// Holes: segments missing between the oldest base backup's start and the
    /// newest archived segment of each timeline.
    pub missing: Vec<MissingRange>,
    /// With --check: archived files that do not decompress intact.
    pub damaged: Vec<String>,
}

/// One base backup.
#[derive(Debug, Clone, Serialize)]
pub struct BaseBackupStatus {
    /// Its id.
    pub backup_id: String,
    /// Its timeline.
    pub timeline: u32,
    /// Replay starts here.
    pub start_lsn: String,
    /// It is consistent once replay passes this.
    pub stop_lsn: String,
    /// The earliest instant it restores to.
    pub consistent_at: DateTime<Utc>,
}

/// One timeline of the archive.
#[derive(Debug, Clone, Serialize)]
pub struct TimelineStatus {
    /// The timeline.
    pub timeline: u32,
    /// Where it branched off its parent (`parent@LSN`), from its history file.
    pub branched_from: Option<String>,
    /// The oldest and newest segment archived.
    pub first_segment: Option<String>,
    /// The newest segment archived.
    pub last_segment: Option<String>,
    /// Segments archived.
    pub segments: u64,
    /// Bytes stored.
    pub bytes: u64,
    /// When the newest segment was stored.
    pub last_archived: Option<DateTime<Utc>>,
}

/// Consecutive missing segments.
#[derive(Debug, Clone, Serialize)]
pub struct MissingRange {
    /// The first missing segment.
    pub first: String,
    /// The last missing segment.
    pub last: String,
    /// How many.
    pub count: u64,
}

/// The base backups and WAL archive of a physical source; with `check`, every
/// archived file is read back.
pub async fn wal_status(
    store: &dyn ObjectStore,
    source: &str,
    check: bool,
) -> anyhow::Result<WalStatus> {
    use ferry_storage::wal::{Archive, Lsn, segment_name};
    let bases = Catalog::new(store).base_backups(source).await?;
    let physical: Vec<_> = bases
        .iter()
        .filter_map(|m| Some((m, m.postgres.as_ref()?.physical.as_ref()?)))
        .collect();
    let size = physical
        .first()
        .map(|(_, p)| p.wal_segment_size)
        .filter(|&s| s >= 1 << 20)
        .unwrap_or(ferry_storage::wal::DEFAULT_SEGMENT_SIZE);
    let archive = Archive::list(store, source, size, None).await?;
    let mut missing = Vec::new();
    let mut timelines = Vec::new();
    for (&tl, t) in &archive.timelines {
        let ranges: Vec<(u64, u64)> = t.segments.ranges().collect();
        // Holes count from the oldest base backup on this timeline (older WAL is
        // not needed) or the timeline's first segment.
        let oldest_start = physical
            .iter()
            .filter(|(_, p)| p.timeline == tl)
            .filter_map(|(_, p)| p.start_lsn.parse::<Lsn>().ok())
            .map(|l| l.segment(size))
            .min();
        let first_held = ranges.first().map(|r| r.0);
        let from = oldest_start.or(first_held).unwrap_or(0);
        let last = t.segments.last();
        if let Some(last) = last {
            let mut n = from;
            while let Some(hole) = t.segments.first_missing(n, last + 1) {
                let end = ranges
                    .iter()
                    .find(|r| r.0 > hole)
                    .map(|r| r.0)
                    .unwrap_or(last + 1);
                missing.push(MissingRange {
                    first: segment_name(tl, hole, size),
                    last: segment_name(tl, end - 1, size),
                    count: end - hole,
                });
                n = end;
            }
        }
        let history = archive.ancestors(tl);
        timelines.push(TimelineStatus {
            timeline: tl,
            branched_from: history.last().map(|h| format!("{}@{}", h.parent, h.switch)),
            first_segment: first_held.map(|n| segment_name(tl, n, size)),
            last_segment: last.map(|n| segment_name(tl, n, size)),
            segments: ranges.iter().map(|(a, b)| b - a).sum(),
            bytes: t.bytes,
            last_archived: t.last_stored.map(DateTime::<Utc>::from),
        });
    }
    let mut damaged = Vec::new();
    if check {
        use futures::TryStreamExt;
        let prefix = ferry_storage::wal::source_prefix(source);
        let mut pages = store.list(&prefix);
        while let Some(page) = pages.try_next().await? {
            for meta in page {
                match crate::wal::content_sha256(store, &meta.key).await {
                    Ok(_) => {}
                    Err(crate::wal::WalError::Damaged { key, why }) => {
                        damaged.push(format!("{key}: {why}"))
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    Ok(WalStatus {
        base_backups: physical
            .iter()
            .map(|(m, p)| BaseBackupStatus {
                backup_id: m.backup_id.clone(),
                timeline: p.timeline,
                start_lsn: p.start_lsn.clone(),
                stop_lsn: p.stop_lsn.clone(),
                consistent_at: p.consistent_at,
            })
            .collect(),
        timelines,
        missing,
        damaged,
    })
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
        wal: None,
    })
}
