//! `ferry restore --at` / `--at-op`: a MongoDB source as it was at an instant.
//!
//! The plan: the newest base backup whose consistent point is at or before the
//! target; then, from the timeline of committed segments, the window that holds
//! every change after that point up to the target, refused with the reason when
//! there is none (before the first base backup, in the future, inside a gap,
//! beyond what is captured). The restore: the base backup with the existing code
//! (its `oplog.bson` replayed to its consistent point), then each segment in order,
//! its object checked against its record's size and SHA-256, replayed from the
//! consistent point up to and including the target. Every check runs before
//! anything is written to the target.

use std::io::Write;
use std::path::Path;

use chrono::{DateTime, Utc};
use ferry_storage::pitr::{ClusterTime, Gap, RecordKind, SegmentRecord};
use ferry_storage::{Catalog, Compression, Engine, Manifest, ManifestFile, ObjectStore};

use super::mongo::replay::{self, Range};
use super::mongo::{MongoRestoreOptions, MongoRestoreReport};
use super::{decompressed, fetch_verified};

/// The instant to restore to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// A wall-clock instant: every change of that second and before.
    At(DateTime<Utc>),
    /// One exact operation's cluster time: it and every change before it.
    Op(ClusterTime),
}

impl Target {
    /// The cluster time the restore goes up to, inclusive.
    pub fn cluster_time(self) -> Result<ClusterTime, PitrError> {
        match self {
            Target::At(at) => ClusterTime::end_of_second(at).ok_or(PitrError::OutOfRange(at)),
            Target::Op(op) => Ok(op),
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::At(at) => write!(
                f,
                "{}",
                at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ),
            Target::Op(op) => write!(f, "operation {op}"),
        }
    }
}

/// Parses `--at` (RFC 3339: `2026-12-01T10:30:00Z`).
pub fn parse_at(text: &str) -> Result<Target, String> {
    DateTime::parse_from_rfc3339(text.trim())
        .map(|t| Target::At(t.with_timezone(&Utc)))
        .map_err(|e| {
            format!("--at {text:?}: {e}; expected an RFC 3339 instant such as 2026-12-01T10:30:00Z")
        })
}

/// Parses `--at-op` (`SECONDS:INCREMENT`).
pub fn parse_at_op(text: &str) -> Result<Target, String> {
    text.parse::<ClusterTime>()
        .map(Target::Op)
        .map_err(|e| format!("--at-op: {e}"))
}

/// Why a restore to an instant is refused.
#[derive(Debug, thiserror::Error)]
pub enum PitrError {
    /// The source does not capture changes.
    #[error(
        "source {0} has no captured changes: point-in-time restores need `pitr = {{ enabled = true }}` on the source and a running capture worker; restore a backup with --backup instead"
    )]
    NoCapture(String),
    /// The source is not MongoDB.
    #[error(
        "source {0} is not a MongoDB source: --at restores MongoDB sources (PostgreSQL's point-in-time recovery comes from WAL archiving)"
    )]
    NotMongo(String),
    /// The target is later than now.
    #[error("{target} is in the future (now is {now}); pick an instant that has happened")]
    InFuture {
        /// The target.
        target: Target,
        /// Now.
        now: String,
    },
    /// The target is before every base backup.
    #[error(
        "{target} is before the first base backup of {source_name}{oldest}; no restore can reach it"
    )]
    BeforeFirstBase {
        /// The target.
        target: Target,
        /// The source.
        source_name: String,
        /// The oldest base backup, described.
        oldest: String,
    },
    /// The target lies in or beyond a gap.
    #[error(
        "{target} cannot be reached from base backup {base}: the changes from {} to {} were not captured ({}); pick an instant before {} or after a base backup taken after the gap",
        gap.from, gap.to, gap.cause, gap.from
    )]
    InGap {
        /// The target.
        target: Target,
        /// The base backup it would start from.
        base: String,
        /// The gap.
        gap: Gap,
    },
    /// No window holds the changes from the base backup to the target.
    #[error("{target} cannot be reached from base backup {base} (consistent at {from}): {why}")]
    NotCovered {
        /// The target.
        target: Target,
        /// The base backup.
        base: String,
        /// Its consistent point.
        from: ClusterTime,
        /// What the timeline holds instead.
        why: String,
    },
    /// `--at` beyond what a cluster time can say.
    #[error("--at {0} is outside the range of cluster times (1970 to 2106)")]
    OutOfRange(DateTime<Utc>),
    /// The store or a record failed.
    #[error(transparent)]
    Catalog(#[from] ferry_storage::CatalogError),
    /// The store failed.
    #[error(transparent)]
    Storage(#[from] ferry_storage::StorageError),
}

/// What a restore to an instant uses.
#[derive(Debug, Clone)]
pub struct PitrPlan {
    /// The base backup.
    pub base: Manifest,
    /// Its consistent point: changes after it are replayed.
    pub from: ClusterTime,
    /// The instant restored to, inclusive.
    pub target: ClusterTime,
    /// The segments holding the changes in `(from, target]`, in order.
    pub segments: Vec<SegmentRecord>,
}

fn consistent_point(manifest: &Manifest) -> Option<ClusterTime> {
    manifest
        .mongodb
        .as_ref()
        .map(|m| ClusterTime::new(m.end_time.seconds, m.end_time.increment))
}

/// Plans the restore of `source` to `target`, refusing with the reason when it
/// cannot be done.
pub async fn plan(
    store: &dyn ObjectStore,
    source: &str,
    target: Target,
    now: DateTime<Utc>,
) -> Result<PitrPlan, PitrError> {
    let catalog = Catalog::new(store);
    let at = target.cluster_time()?;
    let now_ct = ClusterTime::end_of_second(now).ok_or(PitrError::OutOfRange(now))?;
    if at.t > now_ct.t {
        return Err(PitrError::InFuture {
            target,
            now: now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        });
    }
    let records = catalog.pitr_records(source).await?;
    if records.is_empty() {
        return Err(PitrError::NoCapture(source.to_string()));
    }

    // The newest base backup at or before the target (newest first).
    let mut base = None;
    let mut oldest: Option<(String, Option<ClusterTime>)> = None;
    for entry in catalog.backups(Some(source)).await? {
        let manifest = catalog.read(source, &entry.id).await?;
        if manifest.engine != Engine::Mongodb {
            return Err(PitrError::NotMongo(source.to_string()));
        }
        let point = consistent_point(&manifest);
        oldest = Some((manifest.backup_id.clone(), point));
        if point.is_some_and(|p| p <= at) {
            base = Some(manifest);
            break;
        }
    }
    let Some(base) = base else {
        return Err(PitrError::BeforeFirstBase {
            target,
            source_name: source.to_string(),
            oldest: match oldest {
                Some((id, Some(p))) => format!(" ({id}, consistent at {p}, {})", p.to_datetime()),
                Some((id, None)) => format!(" ({id})"),
                None => " (it has none)".into(),
            },
        });
    };
    let from = consistent_point(&base).expect("chosen for its consistent point");

    let timeline = catalog.timeline(source).await?;
    if at > from {
        if let Some(gap) = timeline.gap_between(from, at) {
            return Err(PitrError::InGap {
                target,
                base: base.backup_id.clone(),
                gap: gap.clone(),
            });
        }
        if timeline.window_covering(from, at).is_none() {
            let why = match timeline
                .windows
                .iter()
                .find(|w| w.from <= from && from <= w.to)
            {
                Some(w) => format!(
                    "changes are captured up to {} ({}), not yet up to the target; pick an earlier instant or wait for the next segment",
                    w.to,
                    w.to.to_datetime()
                ),
                None => match timeline.windows.iter().find(|w| w.from > from) {
                    Some(w) => format!(
                        "capture of this chain began at {} ({}), after the base backup's consistent point; restore an instant after a base backup taken since",
                        w.from,
                        w.from.to_datetime()
                    ),
                    None => "no captured changes follow the base backup".into(),
                },
            };
            return Err(PitrError::NotCovered {
                target,
                base: base.backup_id.clone(),
                from,
                why,
            });
        }
    }

    let mut segments = Vec::new();
    for r in records
        .iter()
        .filter(|r| r.kind == RecordKind::Segment && r.end > from && r.start < at)
    {
        if let Some(s) = catalog.read_segment(&r.key()).await? {
            segments.push(s);
        }
    }
    segments.sort_by_key(|s| s.start);
    Ok(PitrPlan {
        base,
        from,
        target: at,
        segments,
    })
}

/// A segment's object as a file the restore code fetches and checks.
fn segment_file(s: &SegmentRecord) -> ManifestFile {
    ManifestFile {
        name: format!("segment {}-{}", s.start, s.end),
        object: s.object.clone(),
        size: s.size,
        sha256: s.sha256.clone(),
        compression: s.compression,
        reused: false,
        stored: None,
    }
}

/// What a restore to an instant did.
#[derive(Debug, Clone, Default)]
pub struct PitrReport {
    /// The base backup's restore.
    pub base: MongoRestoreReport,
    /// Changes replayed from the segments.
    pub segment_changes: u64,
    /// Segments read.
    pub segments: usize,
}

/// Fetches and checks every segment of `plan` into `staging` before anything is
/// written to the target, so a corrupt or missing segment stops the restore first.
async fn fetch_segments(
    store: &dyn ObjectStore,
    plan: &PitrPlan,
    staging: &Path,
) -> anyhow::Result<Vec<(std::path::PathBuf, Compression)>> {
    let mut files = Vec::new();
    for (i, s) in plan.segments.iter().enumerate() {
        let path = staging.join(format!("segment-{i:06}"));
        fetch_verified(store, &segment_file(s), &path).await?;
        files.push((path, s.compression));
    }
    Ok(files)
}

/// Restores `plan` into the server `opts.to`.
pub async fn restore(
    store: &dyn ObjectStore,
    plan: &PitrPlan,
    opts: &MongoRestoreOptions,
) -> anyhow::Result<PitrReport> {
    let staging = tempfile::tempdir()?;
    let segments = fetch_segments(store, plan, staging.path()).await?;
    let base = super::mongo::restore(store, &plan.base, opts).await?;
    let client = super::mongo::connect(opts).await?;
    let range = Range {
        after: Some(plan.from),
        through: Some(plan.target),
    };
    let mut segment_changes = 0;
    for (path, compression) in &segments {
        let reader = decompressed(path, *compression)?;
        segment_changes += replay::apply(&client, reader, range, opts).await?;
    }
    Ok(PitrReport {
        base,
        segment_changes,
        segments: segments.len(),
    })
}

/// Writes `plan` as mongodump's layout under `dir`: the base backup's files, and
/// an `oplog.bson` holding its changes up to its consistent point followed by the
/// segments' changes up to the target, so `mongorestore --oplogReplay` restores
/// the same state without Ferry. Returns the bytes written and the changes in the
/// segments' part of `oplog.bson`.
pub async fn fetch_to_dir(
    store: &dyn ObjectStore,
    plan: &PitrPlan,
    dir: &Path,
) -> anyhow::Result<(u64, u64)> {
    let staging = tempfile::tempdir()?;
    let segments = fetch_segments(store, plan, staging.path()).await?;
    let mut bytes = super::fetch_to_dir(store, &plan.base, dir).await?;
    let range = Range {
        after: Some(plan.from),
        through: Some(plan.target),
    };
    let oplog = dir.join("oplog.bson");
    let appended = tokio::task::spawn_blocking(move || -> anyhow::Result<(u64, u64)> {
        let mut out = std::io::BufWriter::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&oplog)?,
        );
        let (mut written, mut changes) = (0u64, 0u64);
        for (path, compression) in &segments {
            let mut reader = decompressed(path, *compression)?;
            while let Some(entry) = super::mongo::next_entry(&mut reader)? {
                let ts = entry
                    .get_timestamp("ts")
                    .map_err(|e| anyhow::anyhow!("a segment entry without ts: {e}"))?;
                let at = ClusterTime::new(ts.time, ts.increment);
                if range.through.is_some_and(|t| at > t) {
                    break;
                }
                if range.after.is_some_and(|a| at <= a) {
                    continue;
                }
                out.write_all(entry.as_bytes())?;
                written += entry.as_bytes().len() as u64;
                changes += 1;
            }
        }
        out.flush()?;
        Ok((written, changes))
    })
    .await??;
    bytes += appended.0;
    Ok((bytes, appended.1))
}
