//! `ferry restore --to postgres://…`: fetch one database's archive (verified,
//! decompressed) into a scratch directory and run `pg_restore` on it.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ferry_storage::{Manifest, ObjectStore};

use super::{Progress, Quiet, fetch_files, restored_name, scratch_dir};

/// What to restore where.
#[derive(Debug, Clone)]
pub struct PgRestore {
    /// The target database URL (a password in it is moved to the environment).
    pub to: String,
    /// Which database of the backup; required when it holds several.
    pub database: Option<String>,
    /// Create the target database first.
    pub create: bool,
    /// Only this table, `schema.name`.
    pub table: Option<String>,
    /// pg_restore `-j`; default: this machine's cores.
    pub jobs: Option<usize>,
    /// Where the scratch copy goes (default: the system's temp directory).
    pub work_dir: Option<PathBuf>,
    /// Directory of pg_restore (`dumper.pg_bin_dir`); default: the standard paths.
    pub pg_bin_dir: Option<PathBuf>,
}

/// Restores `manifest` into a PostgreSQL database.
pub async fn restore(
    store: &dyn ObjectStore,
    manifest: &Manifest,
    opts: &PgRestore,
) -> anyhow::Result<()> {
    if manifest.engine != ferry_storage::Engine::Postgres {
        anyhow::bail!(
            "backup {} is a {} backup: --to postgres:// restores PostgreSQL backups only",
            manifest.backup_id,
            manifest.engine
        );
    }
    let db = match (&opts.database, manifest.databases.as_slice()) {
        (Some(db), dbs) if dbs.contains(db) => db.clone(),
        (Some(db), dbs) => anyhow::bail!(
            "backup {} has no database {db:?}; it holds {}",
            manifest.backup_id,
            dbs.join(", ")
        ),
        (None, [one]) => one.clone(),
        (None, dbs) => anyhow::bail!(
            "backup {} holds several databases ({}): choose one with --database",
            manifest.backup_id,
            dbs.join(", ")
        ),
    };
    let mut target = url::Url::parse(&opts.to)
        .map_err(|e| anyhow::anyhow!("--to {:?} is not a postgres:// URL: {e}", opts.to))?;
    if !matches!(target.scheme(), "postgres" | "postgresql") {
        anyhow::bail!("--to must be a postgres:// URL");
    }
    let password = target.password().map(percent_decode);
    let _ = target.set_password(None);
    let target_db = target.path().trim_start_matches('/').to_string();
    if target_db.is_empty() {
        anyhow::bail!(
            "--to must name the database to restore into, e.g. postgres://host/orders_copy"
        );
    }

    // The archive's pg_dump decides the oldest pg_restore that can read it.
    let min_major = manifest
        .postgres
        .as_ref()
        .and_then(|p| ferry_dumper::postgres::tools::major_of(&p.pg_dump_version))
        .or_else(|| ferry_dumper::postgres::tools::major_of(&manifest.tool_version))
        .unwrap_or(0);
    let tools = ferry_dumper::postgres::tools::find(
        opts.pg_bin_dir.as_deref(),
        min_major,
        &manifest.tool_version,
    )
    .await
    .map_err(|e| anyhow::anyhow!("finding pg_restore: {}", e.message()))?;

    let scratch = scratch_dir(opts.work_dir.as_deref())?;
    let prefix = format!("{db}/");
    let files: Vec<_> = manifest
        .files
        .iter()
        .filter(|f| f.name.starts_with(&prefix))
        .collect();
    if !files.iter().any(|f| {
        restored_name(f)
            .strip_suffix(".gz")
            .unwrap_or(restored_name(f))
            == format!("{db}/toc.dat")
    }) {
        anyhow::bail!(
            "backup {} lacks {db}/toc.dat: it is not a pg_dump archive",
            manifest.backup_id
        );
    }
    let bytes: u64 = files.iter().map(|f| f.size).sum();
    let progress: Arc<dyn Progress> = if std::io::stderr().is_terminal() {
        Arc::new(Bar::new(bytes, files.len() as u64))
    } else {
        Arc::new(Quiet)
    };
    fetch_files(store, files.iter().copied(), scratch.path(), progress).await?;

    if opts.create {
        create_database(&target, password.as_deref(), &target_db).await?;
    }
    let archive = scratch.path().join(&db);
    run_pg_restore(
        &tools.tool("pg_restore"),
        &target,
        password.as_deref(),
        &archive,
        opts,
    )
    .await
}

async fn run_pg_restore(
    pg_restore: &Path,
    target: &url::Url,
    password: Option<&str>,
    archive: &Path,
    opts: &PgRestore,
) -> anyhow::Result<()> {
    let jobs = opts.jobs.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
    });
    let mut cmd = tokio::process::Command::new(pg_restore);
    cmd.arg("--exit-on-error")
        .arg("--no-password")
        .arg(format!("--jobs={}", jobs.max(1)))
        .arg("--dbname")
        .arg(target.as_str())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    if let Some(table) = &opts.table {
        let (schema, name) = table.split_once('.').ok_or_else(|| {
            anyhow::anyhow!("--table {table:?}: expected schema.name, e.g. public.items")
        })?;
        cmd.arg("--schema").arg(schema).arg("--table").arg(name);
    }
    if let Some(password) = password {
        // The environment, not the command line: argv is visible to every user.
        cmd.env("PGPASSWORD", password);
    }
    cmd.arg(archive);
    let status = cmd
        .status()
        .await
        .map_err(|e| anyhow::anyhow!("cannot run {}: {e}", pg_restore.display()))?;
    if !status.success() {
        anyhow::bail!(
            "pg_restore into {} failed ({status}); its messages are above",
            target
        );
    }
    Ok(())
}

/// `CREATE DATABASE` on the target's server, connected through its `postgres`
/// database.
async fn create_database(
    target: &url::Url,
    password: Option<&str>,
    name: &str,
) -> anyhow::Result<()> {
    let mut admin = target.clone();
    admin.set_path("/postgres");
    let mut config: tokio_postgres::Config = admin.as_str().parse()?;
    if let Some(password) = password {
        config.password(password);
    }
    let (client, connection) = config
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|e| anyhow::anyhow!("connecting to {admin} to create {name}: {e}"))?;
    tokio::spawn(connection);
    let quoted = format!("\"{}\"", name.replace('"', "\"\""));
    client
        .batch_execute(&format!("CREATE DATABASE {quoted}"))
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "CREATE DATABASE {quoted}: {e}; drop --create to restore into an existing database"
            )
        })?;
    Ok(())
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("p={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// A terminal progress bar: bytes, files, rate and ETA.
struct Bar {
    bar: indicatif::ProgressBar,
    files: u64,
    done: std::sync::atomic::AtomicU64,
}

impl Bar {
    fn new(bytes: u64, files: u64) -> Self {
        let bar = indicatif::ProgressBar::new(bytes);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:30} {bytes}/{total_bytes} {msg} {bytes_per_sec} ETA {eta}",
            )
            .expect("a valid template"),
        );
        bar.set_message(format!("0/{files} files"));
        Bar {
            bar,
            files,
            done: Default::default(),
        }
    }
}

impl Progress for Bar {
    fn bytes(&self, n: u64) {
        self.bar.inc(n);
    }
    fn file_done(&self) {
        let done = self.done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        self.bar.set_message(format!("{done}/{} files", self.files));
        if done == self.files {
            self.bar.finish_and_clear();
        }
    }
}
