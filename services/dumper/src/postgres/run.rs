//! Running `pg_dump` (and `pg_dumpall`) as a process group whose files stream into
//! the job's output.
//!
//! pg_dump writes an uncompressed directory archive into a staging directory with
//! `-j` workers. Each file it closes (inotify's close-after-write) is compressed into
//! the spool, announced, and removed from staging at once, so the staging area holds
//! only the files pg_dump is still writing. Anything not seen closing (events are an
//! optimisation, not a guarantee) is picked up once pg_dump has exited; pg_dump
//! never reopens a file it closed, and `--no-sync` stops it from reopening files at
//! the end to fsync them (the spool copies are fsynced instead).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use tracing::Instrument;

use ferry_proto::reason;
use ferry_runtime::HandlerError;
use notify::Watcher;
use notify::event::{AccessKind, AccessMode, EventKind};
use secrecy::{ExposeSecret, SecretString};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::task::JoinSet;

use super::errors::{classify_tool_error, spool_io};
use crate::output::JobOutput;

/// Only the end of a tool's stderr is kept: enough for the error, bounded in memory.
const STDERR_LIMIT: usize = 16 * 1024;

/// Kills a whole process group when dropped (a timeout or a shutdown drops the dump
/// future): pg_dump's `-j` workers are its children and must not outlive it.
pub(super) struct GroupKill(Option<i32>);

impl GroupKill {
    pub(super) fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for GroupKill {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pgid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// A tool started in its own process group, with its stderr collected.
pub(super) struct Running {
    pub(super) child: tokio::process::Child,
    pub(super) group: GroupKill,
    pub(super) stderr: tokio::task::JoinHandle<String>,
}

pub(super) fn spawn(
    mut cmd: tokio::process::Command,
    password: Option<&SecretString>,
) -> std::io::Result<Running> {
    cmd.stdin(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(password) = password {
        // The environment, not the command line: argv is visible to every user.
        cmd.env("PGPASSWORD", password.expose_secret());
    }
    let mut child = cmd.spawn()?;
    let group = GroupKill(child.id().map(|id| id as i32));
    let stderr = child.stderr.take().expect("stderr is piped");
    Ok(Running {
        child,
        group,
        stderr: tokio::spawn(tail(stderr)),
    })
}

async fn tail(mut stderr: impl AsyncRead + Unpin) -> String {
    let mut kept = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stderr.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                kept.extend_from_slice(&buf[..n]);
                if kept.len() > STDERR_LIMIT {
                    kept.drain(..kept.len() - STDERR_LIMIT);
                }
            }
        }
    }
    String::from_utf8_lossy(&kept).trim().to_string()
}

/// What one pg_dump run needs.
pub struct DumpSpec<'a> {
    /// The pg_dump binary.
    pub pg_dump: PathBuf,
    /// Connection URL of the database (no password).
    pub url: String,
    /// The password, passed in the environment.
    pub password: Option<&'a SecretString>,
    /// `-j`.
    pub jobs: usize,
    /// Extra arguments (schema and table filters).
    pub filters: Vec<String>,
    /// An empty directory for pg_dump's uncompressed output.
    pub staging: PathBuf,
    /// Where the files go: `<prefix>/<file>` in the job's output.
    pub prefix: String,
    /// For messages: the source and database.
    pub source: &'a str,
    /// The database's name.
    pub db: &'a str,
}

/// Runs pg_dump and streams its files into `out`.
pub async fn pg_dump(spec: DumpSpec<'_>, out: &JobOutput) -> Result<(), HandlerError> {
    let staging_err =
        |e: std::io::Error| spool_io(&format!("staging {}", spec.staging.display()), &e);
    tokio::fs::create_dir_all(&spec.staging)
        .await
        .map_err(staging_err)?;
    let (tx, mut closed) = tokio::sync::mpsc::unbounded_channel::<PathBuf>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event
            && event.kind == EventKind::Access(AccessKind::Close(AccessMode::Write))
        {
            for path in event.paths {
                let _ = tx.send(path);
            }
        }
    })
    .map_err(|e| {
        HandlerError::retryable(
            reason::INTERNAL,
            format!("watching the staging directory: {e}"),
        )
    })?;
    watcher
        .watch(&spec.staging, notify::RecursiveMode::NonRecursive)
        .map_err(|e| {
            HandlerError::retryable(
                reason::INTERNAL,
                format!("watching the staging directory: {e}"),
            )
        })?;

    let mut cmd = tokio::process::Command::new(&spec.pg_dump);
    cmd.arg("--format=directory")
        .arg("--compress=0")
        .arg(format!("--jobs={}", spec.jobs.max(1)))
        .arg("--no-sync")
        .arg("--no-password")
        .arg("--file")
        .arg(&spec.staging)
        .args(&spec.filters)
        .arg("--dbname")
        .arg(&spec.url)
        .stdout(Stdio::null());
    let mut running = spawn(cmd, spec.password).map_err(|e| missing(&spec.pg_dump, e))?;

    let limit = Arc::new(tokio::sync::Semaphore::new(spec.jobs.max(1)));
    let mut ingests: JoinSet<Result<(), HandlerError>> = JoinSet::new();
    let mut started = HashSet::new();
    let mut start = |path: PathBuf, ingests: &mut JoinSet<_>| {
        let Some(name) = path.file_name().map(|n| n.to_string_lossy().into_owned()) else {
            return;
        };
        if path.parent() != Some(spec.staging.as_path()) || !started.insert(name.clone()) {
            return;
        }
        let out = out.clone();
        let limit = limit.clone();
        let stored = format!("{}/{name}", spec.prefix);
        // In the job's span, so each file's DumpFileReady carries the job's trace.
        ingests.spawn(
            async move {
                let _permit = limit.acquire_owned().await.expect("never closed");
                out.ingest(&stored, &path)
                    .await
                    .map(|_| ())
                    .map_err(|e| spool_io(&format!("writing {stored} into the spool"), &e))
            }
            .in_current_span(),
        );
    };

    let status = loop {
        tokio::select! {
            Some(path) = closed.recv() => start(path, &mut ingests),
            Some(done) = ingests.join_next(), if !ingests.is_empty() => {
                // A failed ingest (a full disk) ends the dump now; dropping
                // `running` kills pg_dump's group.
                done.map_err(|e| HandlerError::retryable(reason::INTERNAL, e.to_string()))??;
            }
            status = running.child.wait() => break status,
        }
    };
    drop(watcher);
    let status = status.map_err(|e| {
        HandlerError::retryable(reason::DUMP_FAILED, format!("waiting for pg_dump: {e}"))
    })?;
    running.group.disarm();
    let stderr = running.stderr.await.unwrap_or_default();
    if !status.success() {
        return Err(classify_tool_error(
            "pg_dump",
            spec.source,
            spec.db,
            &stderr,
        ));
    }
    while let Some(done) = ingests.join_next().await {
        done.map_err(|e| HandlerError::retryable(reason::INTERNAL, e.to_string()))??;
    }
    // Files whose close event was missed (or that the platform does not report).
    for entry in std::fs::read_dir(&spec.staging).map_err(staging_err)? {
        let path = entry.map_err(staging_err)?.path();
        start(path, &mut ingests);
    }
    while let Some(done) = ingests.join_next().await {
        done.map_err(|e| HandlerError::retryable(reason::INTERNAL, e.to_string()))??;
    }
    tokio::fs::remove_dir(&spec.staging)
        .await
        .map_err(staging_err)?;
    Ok(())
}

/// Runs `pg_dumpall --globals-only` (roles, tablespaces) into `globals.sql`.
pub async fn pg_dumpall_globals(
    pg_dumpall: &Path,
    url: &str,
    password: Option<&SecretString>,
    source: &str,
    out: &JobOutput,
) -> Result<(), HandlerError> {
    let mut cmd = tokio::process::Command::new(pg_dumpall);
    cmd.arg("--globals-only")
        .arg("--no-password")
        .arg("--dbname")
        .arg(url)
        .stdout(Stdio::piped());
    let mut running = spawn(cmd, password).map_err(|e| missing(pg_dumpall, e))?;
    let mut stdout = running.child.stdout.take().expect("stdout is piped");
    let mut file = out
        .create("globals.sql")
        .await
        .map_err(|e| spool_io("creating globals.sql in the spool", &e))?;
    let copied = tokio::io::copy(&mut stdout, &mut file).await;
    let status = running.child.wait().await.map_err(|e| {
        HandlerError::retryable(reason::DUMP_FAILED, format!("waiting for pg_dumpall: {e}"))
    })?;
    running.group.disarm();
    let stderr = running.stderr.await.unwrap_or_default();
    if !status.success() {
        return Err(classify_tool_error(
            "pg_dumpall --globals-only",
            source,
            "(globals)",
            &stderr,
        ));
    }
    copied.map_err(|e| spool_io("writing globals.sql into the spool", &e))?;
    file.finish()
        .await
        .map_err(|e| spool_io("writing globals.sql into the spool", &e))?;
    Ok(())
}

pub(super) fn missing(tool: &Path, e: std::io::Error) -> HandlerError {
    HandlerError::permanent(
        reason::DUMP_TOOL_MISSING,
        format!(
            "cannot run {}: {e}; install the PostgreSQL client tools or set dumper.pg_bin_dir",
            tool.display()
        ),
    )
}
