//! `ferry restore --to-datadir`: a physical PostgreSQL source restored to an
//! instant (`--at`), a WAL position (`--at-lsn`) or the end of its archive
//! (`--latest`).
//!
//! Everything is checked before anything is written: the target parses and is not
//! before the chosen base backup's end; the timeline to follow descends from the
//! base backup's; and the archive holds every segment from the base backup's start
//! to where the target lies, so a restore past a missing segment is refused naming
//! it. Then the base backup is streamed out of the store (its SHA-256 checked on
//! the way) and unpacked, and the recovery settings are written:
//! `restore_command` calls `ferry wal-fetch`, the target and its timeline are set
//! and `recovery.signal` is created. With `--start`, PostgreSQL is started and
//! watched until recovery reaches the target and promotes.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use ferry_storage::manifest::postgres::PhysicalManifest;
use ferry_storage::wal::{Archive, Lsn, segment_name};
use ferry_storage::{Catalog, Compression, Manifest, ObjectStore};
use sha2::{Digest, Sha256};

/// Where recovery should stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Every transaction committed at or before this instant.
    Time(DateTime<Utc>),
    /// Up to and including this WAL position.
    Lsn(Lsn),
    /// The end of the archive.
    Latest,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Time(t) => write!(f, "{}", t.to_rfc3339()),
            Target::Lsn(l) => write!(f, "LSN {l}"),
            Target::Latest => f.write_str("the end of the archive"),
        }
    }
}

/// A checked restore: the base backup, the timeline, and the archive's part.
#[derive(Debug)]
pub struct Plan {
    /// The source.
    pub source: String,
    /// The base backup restored.
    pub base: Manifest,
    /// Its place in the WAL.
    pub physical: PhysicalManifest,
    /// The timeline recovery follows.
    pub timeline: u32,
    /// The target.
    pub target: Target,
    /// Segments replayed at least (from the base backup's start to the target's
    /// segment, or to the archive's end), as file names.
    pub first_segment: String,
    /// The last segment known to be needed, when the target bounds it.
    pub last_segment: Option<String>,
}

/// Why a restore was refused.
#[derive(Debug, thiserror::Error)]
pub enum PhysicalError {
    /// No physical base backup at all.
    #[error(
        "source {0} has no physical base backup: set mode = \"physical\" on it and run `ferry backup now --source {0} --wait`"
    )]
    NoBase(String),
    /// Every base backup ends after the target.
    #[error(
        "no base backup of {source_name} is consistent by {target}: the earliest, {earliest}, is consistent from {from} (stop LSN {stop}); restore to that instant or later"
    )]
    TooEarly {
        /// The source.
        source_name: String,
        /// The target.
        target: Target,
        /// The earliest base backup.
        earliest: String,
        /// Its consistent time.
        from: String,
        /// Its stop LSN.
        stop: String,
    },
    /// The archive misses a segment the restore replays.
    #[error(
        "WAL segment {name} of {source_name} is missing from the archive (wal/{source_name}/{timeline:08X}/{name}): a restore to {target} would have to replay it. Restore to an earlier instant, or take a new base backup after it"
    )]
    MissingSegment {
        /// The source.
        source_name: String,
        /// The segment.
        name: String,
        /// Its timeline.
        timeline: u32,
        /// The target.
        target: Target,
    },
    /// The target lies after the newest archived WAL.
    #[error(
        "{target} is after the newest WAL archived for {source_name} (stored {newest}): PostgreSQL archives a segment once it is full or switched; wait, or run SELECT pg_switch_wal() on the server"
    )]
    AfterArchive {
        /// The source.
        source_name: String,
        /// The target.
        target: Target,
        /// When the newest segment was stored.
        newest: String,
    },
    /// The timeline cannot be followed from any base backup.
    #[error("{0}")]
    Timeline(String),
    /// The data directory is not empty.
    #[error(
        "--to-datadir {0} exists and is not empty: restore into a new or empty directory (a running cluster's data is never overwritten)"
    )]
    NotEmpty(PathBuf),
}

/// Parses `--at-lsn`.
pub fn parse_lsn(s: &str) -> Result<Lsn, String> {
    s.parse()
}

/// The instant as a store time to compare object times with: cut to its second,
/// since S3 stores report modification times in whole seconds (a segment stored
/// at 10:30:05.9 shows 10:30:05).
fn to_system(t: DateTime<Utc>) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(t.timestamp().max(0) as u64)
}

/// Chooses the base backup and timeline for `target` and checks the archive.
pub async fn plan(
    store: &dyn ObjectStore,
    source: &str,
    target: Target,
    timeline: Option<u32>,
) -> anyhow::Result<Plan> {
    let bases = Catalog::new(store).base_backups(source).await?;
    let Some(oldest) = bases.last() else {
        return Err(PhysicalError::NoBase(source.to_string()).into());
    };
    let segment_size = physical_of(oldest).wal_segment_size.max(1 << 20);
    let after = match target {
        Target::Time(t) => Some(to_system(t)),
        _ => None,
    };
    let archive = Archive::list(store, source, segment_size, after).await?;
    let mut path_error = None;
    for base in &bases {
        let physical = physical_of(base).clone();
        let stop: Lsn = physical.stop_lsn.parse().map_err(anyhow::Error::msg)?;
        let start: Lsn = physical.start_lsn.parse().map_err(anyhow::Error::msg)?;
        let fits = match target {
            Target::Time(t) => physical.consistent_at <= t,
            Target::Lsn(l) => stop <= l,
            Target::Latest => true,
        };
        if !fits {
            continue;
        }
        let to = timeline.unwrap_or_else(|| archive.latest_timeline_from(physical.timeline));
        let path = match archive.path(physical.timeline, start, to) {
            Ok(p) => p,
            Err(why) => {
                path_error.get_or_insert(why);
                continue;
            }
        };
        // Where the target's WAL lies at the latest: its LSN's segment, or the
        // oldest segment stored after the instant (WAL is stored after it is
        // written); the base backup's own WAL is always needed.
        let stop_segment = stop.segment(segment_size);
        let until = match target {
            Target::Lsn(l) => Some(l.segment(segment_size)),
            Target::Time(_) => {
                let found = path.iter().find_map(|&(tl, first, end)| {
                    let n = archive.timelines.get(&tl)?.first_stored_after?;
                    (n >= first && end.is_none_or(|e| n < e)).then_some(n)
                });
                match found {
                    Some(n) => Some(n),
                    None => {
                        let newest = archive
                            .timelines
                            .get(&to)
                            .and_then(|t| t.last_stored)
                            .map(|t| DateTime::<Utc>::from(t).to_rfc3339())
                            .unwrap_or_else(|| "never".into());
                        return Err(PhysicalError::AfterArchive {
                            source_name: source.to_string(),
                            target,
                            newest,
                        }
                        .into());
                    }
                }
            }
            Target::Latest => None,
        }
        .map(|u| u.max(stop_segment));
        if let Some(name) = archive.first_missing(&path, until) {
            let tl = u32::from_str_radix(&name[..8], 16).unwrap_or_default();
            return Err(PhysicalError::MissingSegment {
                source_name: source.to_string(),
                name,
                timeline: tl,
                target,
            }
            .into());
        }
        let last_tl = path.last().map(|p| p.0).unwrap_or(to);
        return Ok(Plan {
            source: source.to_string(),
            base: base.clone(),
            timeline: to,
            target,
            first_segment: segment_name(
                physical.timeline,
                start.segment(segment_size),
                segment_size,
            ),
            last_segment: until.map(|u| segment_name(last_tl, u, segment_size)),
            physical,
        });
    }
    if let Some(why) = path_error {
        return Err(PhysicalError::Timeline(why).into());
    }
    let oldest_physical = physical_of(oldest);
    Err(PhysicalError::TooEarly {
        source_name: source.to_string(),
        target,
        earliest: oldest.backup_id.clone(),
        from: oldest_physical.consistent_at.to_rfc3339(),
        stop: oldest_physical.stop_lsn.clone(),
    }
    .into())
}

fn physical_of(m: &Manifest) -> &PhysicalManifest {
    m.postgres
        .as_ref()
        .and_then(|p| p.physical.as_ref())
        .expect("base_backups returns physical backups only")
}

/// How the recovered cluster reaches its WAL and where it stops.
pub struct RecoverySettings {
    /// The `ferry` binary `restore_command` runs.
    pub ferry: PathBuf,
    /// The configuration file it reads (the store), when there is one.
    pub config: Option<PathBuf>,
}

/// Unpacks the plan's base backup into `datadir` (new or empty), checking its
/// SHA-256, and writes the recovery settings. Returns the bytes fetched.
pub async fn unpack(
    store: &dyn ObjectStore,
    plan: &Plan,
    datadir: &Path,
    settings: &RecoverySettings,
) -> anyhow::Result<u64> {
    let total = unpack_base(store, &plan.base, datadir).await?;
    if let Err(e) = write_recovery(plan, datadir, settings) {
        let _ = std::fs::remove_dir_all(datadir);
        return Err(e);
    }
    Ok(total)
}

/// Unpacks base backup `base` into `datadir` (new or empty), checking every
/// file's SHA-256 on the way; on any failure nothing is left behind.
pub async fn unpack_base(
    store: &dyn ObjectStore,
    base: &Manifest,
    datadir: &Path,
) -> anyhow::Result<u64> {
    if datadir.exists() && std::fs::read_dir(datadir)?.next().is_some() {
        return Err(PhysicalError::NotEmpty(datadir.to_path_buf()).into());
    }
    std::fs::create_dir_all(datadir)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(datadir, std::fs::Permissions::from_mode(0o700))?;
    }
    let result = async {
        let mut total = 0;
        for file in &base.files {
            let body = store.get(&file.object).await?;
            let digest = Arc::new(Mutex::new((Sha256::new(), 0u64)));
            let reader = super::Hashing::new(body, digest.clone(), Arc::new(super::Quiet));
            let compression = file.compression;
            let dir = datadir.to_path_buf();
            let tar_name = super::restored_name(file).to_string();
            let unpacked = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
                let input = tokio_util::io::SyncIoBridge::new(reader);
                let input: Box<dyn std::io::Read> = match compression {
                    Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(input)?),
                    Compression::Gzip => Box::new(flate2::read::GzDecoder::new(input)),
                    Compression::None => Box::new(input),
                };
                if !tar_name.ends_with(".tar") {
                    anyhow::bail!("{tar_name} is not a tar archive of a data directory");
                }
                let mut archive = tar::Archive::new(input);
                archive.set_preserve_permissions(true);
                archive.unpack(&dir)?;
                Ok(())
            })
            .await?;
            let size = super::check_digest(file, &digest)?;
            unpacked.map_err(|e| anyhow::anyhow!("unpacking {}: {e:#}", file.name))?;
            total += size;
        }
        Ok::<_, anyhow::Error>(total)
    }
    .await;
    if result.is_err() {
        // Nothing half-restored is left to be started by mistake.
        let _ = std::fs::remove_dir_all(datadir);
    }
    result
}

/// A value in single quotes for postgresql.conf.
fn quoted(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// A path in a shell command line (restore_command runs through the shell).
fn shell_word(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', "'\\''"))
}

/// Appends the recovery settings to `postgresql.auto.conf` and creates
/// `recovery.signal`.
fn write_recovery(plan: &Plan, datadir: &Path, settings: &RecoverySettings) -> anyhow::Result<()> {
    let mut command = shell_word(&settings.ferry);
    if let Some(config) = &settings.config {
        command.push_str(&format!(" --config {}", shell_word(config)));
    }
    command.push_str(&format!(
        " wal-fetch --source {} %f %p",
        shell_word(Path::new(&plan.source))
    ));
    let mut lines = vec![
        String::new(),
        format!(
            "# ferry restore {}: base backup {}, to {}",
            Utc::now().to_rfc3339(),
            plan.base.backup_id,
            plan.target
        ),
        format!("restore_command = {}", quoted(&command)),
        format!("recovery_target_timeline = '{}'", plan.timeline),
    ];
    match plan.target {
        Target::Time(t) => {
            lines.push(format!(
                "recovery_target_time = '{}'",
                t.format("%Y-%m-%d %H:%M:%S%.6f+00")
            ));
            lines.push("recovery_target_inclusive = on".into());
            lines.push("recovery_target_action = 'promote'".into());
        }
        Target::Lsn(l) => {
            lines.push(format!("recovery_target_lsn = '{l}'"));
            lines.push("recovery_target_inclusive = on".into());
            lines.push("recovery_target_action = 'promote'".into());
        }
        // No target: recovery replays the whole archive, then promotes.
        Target::Latest => {}
    }
    let auto = datadir.join("postgresql.auto.conf");
    let mut text = std::fs::read_to_string(&auto).unwrap_or_default();
    text.push_str(&lines.join("\n"));
    text.push('\n');
    std::fs::write(&auto, text)?;
    std::fs::write(datadir.join("recovery.signal"), b"")?;
    Ok(())
}

/// What a started recovery reached.
#[derive(Debug, Clone, Default)]
pub struct Reached {
    /// The last WAL position replayed ("redo done at").
    pub lsn: Option<String>,
    /// The commit time of the last transaction replayed.
    pub last_transaction: Option<String>,
    /// The timeline it was promoted onto.
    pub new_timeline: Option<u32>,
}

/// Starts PostgreSQL on `datadir` (as the current user, who must own it) and waits
/// until recovery has promoted it, or has failed.
pub async fn start_and_wait(
    pg_ctl: &Path,
    datadir: &Path,
    port: Option<u16>,
) -> anyhow::Result<Reached> {
    let log = datadir.join("ferry-restore.log");
    let mut options = String::from("-c logging_collector=off -c lc_messages=C");
    if let Some(port) = port {
        options.push_str(&format!(" -p {port}"));
    }
    let status = tokio::process::Command::new(pg_ctl)
        .arg("start")
        .arg("--pgdata")
        .arg(datadir)
        .arg("--log")
        .arg(&log)
        .arg("--options")
        .arg(&options)
        .arg("--no-wait")
        .stdin(std::process::Stdio::null())
        .status()
        .await
        .map_err(|e| anyhow::anyhow!("running {}: {e}", pg_ctl.display()))?;
    if !status.success() {
        anyhow::bail!(
            "{} start failed ({status}): see {}",
            pg_ctl.display(),
            log.display()
        );
    }
    let mut reached = Reached::default();
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        for line in text.lines() {
            if let Some(rest) = line.split("redo done at ").nth(1) {
                reached.lsn = rest.split_whitespace().next().map(str::to_string);
            }
            if let Some(rest) = line
                .split("last completed transaction was at log time ")
                .nth(1)
            {
                reached.last_transaction = Some(rest.trim().to_string());
            }
            if let Some(rest) = line.split("selected new timeline ID: ").nth(1) {
                reached.new_timeline = rest.trim().parse().ok();
            }
        }
        let fatal: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("FATAL:") || l.contains("PANIC:"))
            .collect();
        let running = pid_alive(datadir);
        if !fatal.is_empty() && !running {
            anyhow::bail!(
                "recovery failed; PostgreSQL stopped:\n  {}\n(the whole log: {})",
                fatal.join("\n  "),
                log.display()
            );
        }
        if reached.new_timeline.is_some()
            && text
                .lines()
                .skip_while(|l| !l.contains("selected new timeline ID"))
                .any(|l| l.contains("database system is ready to accept connections"))
        {
            return Ok(reached);
        }
        if !running && text.contains("database system is shut down") {
            anyhow::bail!(
                "PostgreSQL stopped before recovery ended: see {}",
                log.display()
            );
        }
    }
}

/// Whether the postmaster of `datadir` is running (its pid file names a live
/// process).
fn pid_alive(datadir: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(datadir.join("postmaster.pid")) else {
        return false;
    };
    let Some(pid) = text
        .lines()
        .next()
        .and_then(|l| l.trim().parse::<i32>().ok())
    else {
        return false;
    };
    Path::new(&format!("/proc/{pid}")).exists()
}

/// A PostgreSQL program of the server's major version: in `bin_dir`
/// (`dumper.pg_bin_dir`) when set, else the standard install paths.
pub fn pg_tool(bin_dir: Option<&Path>, name: &str, server_version: &str) -> Option<PathBuf> {
    let major = server_version.split('.').next().unwrap_or_default();
    let mut candidates = Vec::new();
    if let Some(dir) = bin_dir {
        candidates.push(dir.join(name));
    }
    candidates.push(PathBuf::from(format!(
        "/usr/lib/postgresql/{major}/bin/{name}"
    )));
    candidates.push(PathBuf::from(format!("/usr/pgsql-{major}/bin/{name}")));
    candidates.into_iter().find(|p| p.is_file())
}
