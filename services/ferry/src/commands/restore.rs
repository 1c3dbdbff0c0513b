//! `ferry restore`: a backup into a PostgreSQL or MongoDB server (`--to`), or into a
//! directory in the standard tools' layout (`--to-dir`). The engines are the library
//! module [`crate::restore`]; this is the command around them. It reads only the
//! store and never connects to NATS.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use ferry_runtime::Config;
use ferry_runtime::secrets::{SecretSource, read_secret};
use secrecy::ExposeSecret;

use crate::restore::mongo::MongoRestoreOptions;
use crate::restore::pitr;
use crate::restore::postgres::PgRestore;

/// `ferry restore`
#[derive(clap::Args)]
pub struct RestoreArgs {
    /// The source.
    #[arg(long)]
    pub source: String,
    /// A backup id, or `latest`.
    #[arg(long, default_value = "latest", conflicts_with_all = ["at", "at_op", "at_lsn", "to_latest"])]
    pub backup: String,
    /// The source as it was at this instant (RFC 3339, `2026-12-01T10:30:00Z`).
    /// MongoDB with capture on: every change of that second included. PostgreSQL
    /// with `mode = "physical"` (with --to-datadir): every transaction committed
    /// by then. The base backup is chosen, and the changes replayed, for you.
    #[arg(long, conflicts_with_all = ["at_op", "at_lsn", "to_latest"])]
    pub at: Option<String>,
    /// PostgreSQL (physical, with --to-datadir): up to and including this WAL
    /// position (`0/3000148`).
    #[arg(long, requires = "to_datadir", conflicts_with_all = ["at_op", "to_latest"])]
    pub at_lsn: Option<String>,
    /// PostgreSQL (physical, with --to-datadir): replay the whole archive.
    #[arg(long = "latest", requires = "to_datadir", conflicts_with = "at_op")]
    pub to_latest: bool,
    /// PostgreSQL (physical): the timeline to follow (default: the newest that
    /// descends from the base backup's; name an older one to restore a history
    /// that a promoted restore branched away from).
    #[arg(long, requires = "to_datadir")]
    pub timeline: Option<u32>,
    /// PostgreSQL (physical): write a data directory here (new or empty) that
    /// recovers to the target when started: the base backup unpacked, its WAL
    /// fetched by `restore_command = 'ferry wal-fetch …'`.
    #[arg(long, conflicts_with_all = ["to", "to_dir"])]
    pub to_datadir: Option<PathBuf>,
    /// With --to-datadir: start PostgreSQL on it (as the current user, who must
    /// not be root), wait until recovery reaches the target and promotes, and
    /// report where it stopped.
    #[arg(long, requires = "to_datadir")]
    pub start: bool,
    /// With --start: the port PostgreSQL listens on (default: the data
    /// directory's configuration, which is the source server's).
    #[arg(long, requires = "start")]
    pub port: Option<u16>,
    /// MongoDB with capture on: the source as it was right after one operation,
    /// by its cluster time `SECONDS:INCREMENT` (as an oplog entry's `ts` shows it).
    #[arg(long)]
    pub at_op: Option<String>,
    /// Where to write it in the standard tool's layout: one pg_dump directory
    /// archive per database (for `pg_restore`), or mongodump's layout (for
    /// `mongorestore --dir`).
    #[arg(long, conflicts_with = "to")]
    pub to_dir: Option<PathBuf>,
    /// The server to restore into: `postgres://user@host/orders_copy` (password:
    /// PGPASSWORD or ~/.pgpass) or `mongodb://user@host:27017/`.
    #[arg(long, required_unless_present_any = ["to_dir", "to_datadir"])]
    pub to: Option<String>,
    /// A file holding the password of the user in --to.
    #[arg(long)]
    pub password_file: Option<PathBuf>,
    /// An age identity file (`AGE-SECRET-KEY-1…`) for an encrypted backup
    /// (default: encryption.identity_file).
    #[arg(long)]
    pub identity: Option<PathBuf>,
    /// Restore only this collection, `db.name` as named in the backup.
    #[arg(long)]
    pub collection: Option<String>,
    /// Restore database `old` as `new` (repeatable).
    #[arg(long, value_name = "OLD:NEW")]
    pub rename_db: Vec<String>,
    /// Drop existing collections before restoring them.
    #[arg(long)]
    pub drop: bool,
    /// Collections restored at once.
    #[arg(long, default_value_t = 4)]
    pub parallel: usize,
    /// Which database of the backup, when it holds several.
    #[arg(long, requires = "to")]
    pub database: Option<String>,
    /// Create the target database first.
    #[arg(long, requires = "to")]
    pub create: bool,
    /// Restore only this table, schema.name.
    #[arg(long, requires = "to")]
    pub table: Option<String>,
    /// Tables pg_restore loads in parallel (default: this machine's cores).
    #[arg(short = 'j', long, requires = "to")]
    pub jobs: Option<usize>,
    /// Where the verified, decompressed archive is staged (default: the
    /// system's temp directory).
    #[arg(long, requires = "to")]
    pub work_dir: Option<PathBuf>,
    /// The configuration file this command read, for the `restore_command` it
    /// writes (set by `main`, not an argument).
    #[arg(skip)]
    pub config_path: Option<PathBuf>,
}

/// Runs `ferry restore`: to a directory, a PostgreSQL server or a MongoDB server.
pub async fn run(config: &Config, args: RestoreArgs) -> anyhow::Result<ExitCode> {
    if args.to_datadir.is_some() {
        return to_datadir(config, args).await;
    }
    if args.at.is_some() || args.at_op.is_some() {
        return to_instant(config, args).await;
    }
    let (source, backup) = (args.source.as_str(), args.backup.as_str());
    let opener = crate::restore::opener(config, args.identity.as_deref())?;
    if let Some(dir) = &args.to_dir {
        let store = ferry_runtime::store::open(&config.storage)?;
        let opened = crate::restore::open_backup(store, source, backup, opener).await?;
        let (store, manifest) = (opened.store.as_ref(), opened.manifest);
        let bytes = crate::restore::fetch_to_dir(store, &manifest, dir).await?;
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
        return Ok(ExitCode::SUCCESS);
    }
    let to = args.to.clone().unwrap_or_default();
    if to.starts_with("postgres://") || to.starts_with("postgresql://") {
        let dumper = config.section::<ferry_dumper::config::DumperConfig>()?;
        let opts = PgRestore {
            to,
            database: args.database,
            create: args.create,
            table: args.table,
            jobs: args.jobs,
            work_dir: args.work_dir,
            pg_bin_dir: dumper.pg_bin_dir.clone(),
        };
        let store = ferry_runtime::store::open(&config.storage)?;
        let opened = crate::restore::open_backup(store, source, backup, opener).await?;
        let (store, manifest) = (opened.store.as_ref(), opened.manifest);
        crate::restore::postgres::restore(store, &manifest, &opts).await?;
        eprintln!(
            "restored backup {} of {source} into {} (every SHA-256 checked)",
            manifest.backup_id,
            redact(&opts.to)
        );
        return Ok(ExitCode::SUCCESS);
    }
    let options = mongo_options(to, &args)?;
    let store = ferry_runtime::store::open(&config.storage)?;
    let opened = crate::restore::open_backup(store, source, backup, opener).await?;
    let (store, manifest) = (opened.store.as_ref(), opened.manifest);
    let report = crate::restore::mongo::restore(store, &manifest, &options).await?;
    eprintln!(
        "restored backup {} of {}: {} collections, {} documents, {} changes replayed (every SHA-256 checked)",
        manifest.backup_id, source, report.collections, report.documents, report.oplog_applied
    );
    Ok(ExitCode::SUCCESS)
}

/// `ferry restore --at` / `--at-op`: every check (the target parses, is not in the
/// future, has a base backup before it and an unbroken chain of captured changes
/// from it, every segment matches its record) passes before anything is written.
async fn to_instant(config: &Config, args: RestoreArgs) -> anyhow::Result<ExitCode> {
    let target = match (&args.at, &args.at_op) {
        (Some(at), _) => pitr::parse_at(at),
        (None, Some(op)) => pitr::parse_at_op(op),
        (None, None) => unreachable!("called with --at or --at-op"),
    }
    .map_err(anyhow::Error::msg)?;
    let source = args.source.as_str();
    if let Some(s) = config.source(source)
        && s.engine != ferry_runtime::config::EngineKind::Mongodb
    {
        return Err(pitr::PitrError::NotMongo(source.to_string()).into());
    }
    if let Some(to) = &args.to
        && !to.starts_with("mongodb://")
        && !to.starts_with("mongodb+srv://")
    {
        anyhow::bail!(
            "--to {}: --at restores into a MongoDB server (mongodb://…)",
            redact(to)
        );
    }
    let store = ferry_runtime::store::open(&config.storage)?;
    let store = store.as_ref();
    crate::restore::refuse_encrypted_pitr(store).await?;
    let plan = pitr::plan(store, source, target, chrono::Utc::now()).await?;
    let changes_after = |n: usize| if n == 1 { "segment" } else { "segments" };
    if let Some(dir) = &args.to_dir {
        let (bytes, changes) = pitr::fetch_to_dir(store, &plan, dir).await?;
        eprintln!(
            "restored {source} at {target} into {}: base backup {} (consistent at {}) and {changes} captured changes from {} {} ({bytes} bytes, every SHA-256 checked)",
            dir.display(),
            plan.base.backup_id,
            plan.from,
            plan.segments.len(),
            changes_after(plan.segments.len()),
        );
        eprintln!("  mongorestore --dir {} --oplogReplay", dir.display());
        return Ok(ExitCode::SUCCESS);
    }
    let options = mongo_options(args.to.clone().unwrap_or_default(), &args)?;
    let report = pitr::restore(store, &plan, &options).await?;
    eprintln!(
        "restored {source} at {target} (cluster time {}): base backup {} (consistent at {}), {} collections, {} documents, {} changes replayed from its oplog and {} from {} {} (every SHA-256 checked)",
        plan.target,
        plan.base.backup_id,
        plan.from,
        report.base.collections,
        report.base.documents,
        report.base.oplog_applied,
        report.segment_changes,
        report.segments,
        changes_after(report.segments),
    );
    Ok(ExitCode::SUCCESS)
}

/// `ferry restore --to-datadir`: a physical PostgreSQL source at an instant, a WAL
/// position or the archive's end.
async fn to_datadir(config: &Config, args: RestoreArgs) -> anyhow::Result<ExitCode> {
    use crate::restore::physical::{self, Target};
    let source = args.source.as_str();
    let datadir = args.to_datadir.clone().expect("called with --to-datadir");
    if let Some(s) = config.source(source)
        && s.mode != ferry_runtime::config::PostgresMode::Physical
    {
        anyhow::bail!(
            "source {source} is not physical (mode = \"physical\"): --to-datadir restores a PostgreSQL base backup and its WAL; restore its dumps with --to or --to-dir"
        );
    }
    let target = match (&args.at, &args.at_lsn, args.to_latest) {
        (Some(at), _, _) => Target::Time(
            chrono::DateTime::parse_from_rfc3339(at)
                .map_err(|e| {
                    anyhow::anyhow!(
                        "--at {at:?}: an RFC 3339 instant such as 2026-12-01T10:30:00Z ({e})"
                    )
                })?
                .with_timezone(&chrono::Utc),
        ),
        (None, Some(lsn), _) => {
            Target::Lsn(physical::parse_lsn(lsn).map_err(|e| anyhow::anyhow!("--at-lsn: {e}"))?)
        }
        (None, None, true) => Target::Latest,
        (None, None, false) => {
            anyhow::bail!("--to-datadir needs a target: --at TIME, --at-lsn LSN or --latest")
        }
    };
    if let Target::Time(t) = target
        && t > chrono::Utc::now()
    {
        anyhow::bail!("--at {}: that is in the future", t.to_rfc3339());
    }
    if args.start && running_as_root() {
        anyhow::bail!(
            "--start: PostgreSQL does not run as root; run ferry restore as the database's OS user (runuser -u postgres -- ferry restore …), or leave out --start and start it yourself"
        );
    }
    let store = ferry_runtime::store::open(&config.storage)?;
    let store = store.as_ref();
    crate::restore::refuse_encrypted_pitr(store).await?;
    let plan = physical::plan(store, source, target, args.timeline).await?;
    let settings = physical::RecoverySettings {
        ferry: std::env::current_exe()?,
        config: args
            .config_path
            .as_deref()
            .map(std::path::absolute)
            .transpose()?,
    };
    let bytes = physical::unpack(store, &plan, &datadir, &settings).await?;
    eprintln!(
        "restored base backup {} of {source} (consistent from {}, {bytes} bytes, SHA-256 checked) into {}; recovery replays WAL from {}{} on timeline {} to {}",
        plan.base.backup_id,
        plan.physical.consistent_at.to_rfc3339(),
        datadir.display(),
        plan.first_segment,
        plan.last_segment
            .as_ref()
            .map(|l| format!(" through at least {l}"))
            .unwrap_or_default(),
        plan.timeline,
        plan.target,
    );
    if !args.start {
        eprintln!(
            "  start it (as its owner): pg_ctl --pgdata {} start; it recovers, then promotes",
            datadir.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let dumper = config.section::<ferry_dumper::config::DumperConfig>()?;
    let pg_ctl = physical::pg_tool(dumper.pg_bin_dir.as_deref(), "pg_ctl", &plan.base.server_version)
        .ok_or_else(|| anyhow::anyhow!("--start: no pg_ctl of PostgreSQL {} found: set dumper.pg_bin_dir, or start the data directory yourself", plan.base.server_version))?;
    let reached = physical::start_and_wait(&pg_ctl, &datadir, args.port).await?;
    eprintln!(
        "recovery of {source} reached LSN {} (last transaction committed at {}) and promoted onto timeline {}; PostgreSQL is running on {}",
        reached.lsn.as_deref().unwrap_or("?"),
        reached
            .last_transaction
            .as_deref()
            .unwrap_or("(none replayed)"),
        reached
            .new_timeline
            .map(|t| t.to_string())
            .unwrap_or_else(|| "?".into()),
        datadir.display(),
    );
    Ok(ExitCode::SUCCESS)
}

/// Whether this process runs as root (`/proc/self` belongs to the effective user).
fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// The MongoDB restore's options; the password is read through the runtime's
/// secret reader, like every other secret.
fn mongo_options(to: String, args: &RestoreArgs) -> anyhow::Result<MongoRestoreOptions> {
    let password = args
        .password_file
        .as_deref()
        .map(read_password)
        .transpose()?;
    let mut renames = BTreeMap::new();
    for pair in &args.rename_db {
        let (old, new) = pair
            .split_once(':')
            .filter(|(o, n)| !o.is_empty() && !n.is_empty())
            .ok_or_else(|| anyhow::anyhow!("--rename-db {pair:?}: expected OLD:NEW"))?;
        renames.insert(old.to_string(), new.to_string());
    }
    Ok(MongoRestoreOptions {
        to,
        password,
        collection: args.collection.clone(),
        rename_db: renames,
        drop: args.drop,
        parallel_collections: args.parallel.max(1),
        parallel_batches: 4,
        progress: true,
    })
}

fn read_password(path: &Path) -> anyhow::Result<String> {
    let secret = read_secret(SecretSource::File(path))
        .map_err(|e| anyhow::anyhow!("--password-file: {e}"))?;
    Ok(secret.expose_secret().to_owned())
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
