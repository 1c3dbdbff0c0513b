//! Physical base backups (`mode = "physical"`): `pg_basebackup` over the
//! replication protocol, in tar format, without WAL (the archive that
//! `ferry wal-push` fills provides it). The tar streams from pg_basebackup's
//! stdout through Ferry's compressor and hasher into the spool, so nothing is
//! staged uncompressed; with the tar on stdout pg_basebackup puts PostgreSQL's own
//! `backup_manifest` inside it, so it travels with the backup.
//!
//! Before anything runs, the server's settings are checked: a base backup whose
//! WAL is not being archived cannot be restored, so `wal_level = minimal`,
//! `archive_mode = off` and a user without `REPLICATION` each stop the job with
//! the setting to change.

use std::process::Stdio;

use ferry_proto::reason;
use ferry_proto::v1::{PostgresDatabase, PostgresDetails, PostgresPhysical};
use ferry_runtime::HandlerError;
use ferry_runtime::config::SourceConfig;
use secrecy::SecretString;

use super::errors::{classify_tool_error, spool_io};
use super::run::{missing, spawn};
use super::{PgDump, PgTools, connect, db_url, parse_url, query_error, query_one};
use crate::output::JobOutput;

/// The name of the data directory's archive in the backup.
pub const BASE_TAR: &str = "base.tar";

/// What the server says about itself before a base backup.
struct ServerFacts {
    version: String,
    major: u32,
    system_identifier: String,
    wal_segment_size: u64,
    databases: Vec<PostgresDatabase>,
}

impl PgTools {
    /// Takes a base backup of the source's cluster into `out` (`base.tar`, with
    /// its `backup_manifest` inside).
    pub async fn base_backup(
        &self,
        source: &SourceConfig,
        password: Option<&SecretString>,
        out: &JobOutput,
    ) -> Result<PgDump, HandlerError> {
        let base = parse_url(&source.url, &source.name)?;
        let db = base.get_dbname().unwrap_or("postgres").to_string();
        let client = connect(&base, password, &db, &source.name).await?;
        let facts = check_server(&client, source).await?;
        let tools = super::tools::find_tool(
            self.bin_dir.as_deref(),
            "pg_basebackup",
            facts.major,
            &facts.version,
        )
        .await?;
        tracing::info!(pg_basebackup = %tools.version, server = %facts.version, "chose pg_basebackup");

        let url = db_url(&source.url, &db, &source.name)?;
        let pg_basebackup = tools.tool("pg_basebackup");
        let mut cmd = tokio::process::Command::new(&pg_basebackup);
        cmd.arg("--pgdata=-")
            .arg("--format=tar")
            .arg("--wal-method=none")
            .arg("--checkpoint=fast")
            .arg("--verbose")
            .arg("--no-password")
            .arg("--label")
            .arg(format!("ferry {}", source.name))
            .arg("--dbname")
            .arg(&url)
            .stdout(Stdio::piped());
        let mut running = spawn(cmd, password).map_err(|e| missing(&pg_basebackup, e))?;
        let stdout = running.child.stdout.take().expect("stdout is piped");
        // Read on a blocking thread, like a shell pipeline's zstd: the stream is
        // the job's only work, so it gets the threads (compression on every core).
        let stdout = std::fs::File::from(stdout.into_owned_fd().map_err(|e| {
            HandlerError::retryable(reason::INTERNAL, format!("pg_basebackup's stdout: {e}"))
        })?);
        widen_pipe(&stdout);
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        let name = BASE_TAR;
        let clock = std::time::Instant::now();
        // The tar passes through a scanner on its way to the compressor: its
        // backup_label and backup_manifest say where the backup's WAL starts and
        // ends (pg_basebackup does not print them when the tar goes to stdout).
        // A failed write (a full spool) ends the copy and closes the pipe, so
        // pg_basebackup fails too, and the server ends the backup.
        let scan = std::sync::Arc::new(std::sync::Mutex::new(TarScan::default()));
        let copied = out
            .copy_from(name, stdout, workers, {
                let scan = scan.clone();
                move |chunk: &[u8]| scan.lock().expect("tar scan").feed(chunk)
            })
            .await;
        let status = running.child.wait().await.map_err(|e| {
            HandlerError::retryable(
                reason::DUMP_FAILED,
                format!("waiting for pg_basebackup: {e}"),
            )
        })?;
        running.group.disarm();
        let stderr = running.stderr.await.unwrap_or_default();
        if !status.success() {
            return Err(classify_basebackup_error(&source.name, &stderr));
        }
        copied.map_err(|e| spool_io(&format!("writing {name} into the spool"), &e))?;
        let streamed = clock.elapsed();
        let points = scan.lock().expect("tar scan").points();
        let points = points.ok_or_else(|| {
            HandlerError::retryable(
                reason::DUMP_FAILED,
                format!(
                    "{}: pg_basebackup succeeded but its tar held no backup_label and backup_manifest giving the WAL start and end ({stderr})",
                    source.name
                ),
            )
        })?;
        // The server's clock after the backup ended: every commit stamped later
        // is after the backup's end, so restores to this instant or later work.
        let micros: i64 = query_one(
            &client,
            "SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::int8",
            &source.name,
        )
        .await?
        .get(0);
        let now = chrono::DateTime::from_timestamp_micros(micros).unwrap_or_default();
        tracing::info!(
            start = %points.start,
            stop = %points.stop,
            timeline = points.timeline,
            duration_ms = streamed.as_millis() as u64,
            "base backup completed"
        );
        Ok(PgDump {
            databases: Vec::new(),
            details: PostgresDetails {
                server_version: facts.version,
                pg_dump_version: tools.version,
                databases: facts.databases,
                globals: false,
                physical: Some(PostgresPhysical {
                    start_lsn: points.start,
                    stop_lsn: points.stop,
                    timeline: points.timeline,
                    consistent_at: Some(ferry_proto::to_timestamp(now)),
                    system_identifier: facts.system_identifier,
                    wal_segment_size: facts.wal_segment_size,
                }),
            },
        })
    }
}

/// Reads the server's version and settings, refusing a server whose WAL is not
/// archived or a user who cannot replicate, with what to change.
async fn check_server(
    client: &tokio_postgres::Client,
    source: &SourceConfig,
) -> Result<ServerFacts, HandlerError> {
    let name = &source.name;
    let row = query_one(
        client,
        "SELECT current_setting('server_version'), current_setting('server_version_num')::int, \
                current_setting('wal_level'), current_setting('archive_mode'), \
                current_setting('archive_command'), \
                (SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size'), \
                (SELECT system_identifier::text FROM pg_control_system()), \
                (SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user), \
                current_user::text",
        name,
    )
    .await?;
    let version: String = row.get(0);
    let version = version
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    let major = row.get::<_, i32>(1) as u32 / 10000;
    let (wal_level, archive_mode, archive_command): (String, String, String) =
        (row.get(2), row.get(3), row.get(4));
    let segment_size: i64 = row.get(5);
    let system_identifier: String = row.get(6);
    let can_replicate: bool = row.get::<_, Option<bool>>(7).unwrap_or(false);
    let user: String = row.get(8);
    if wal_level == "minimal" {
        return Err(HandlerError::permanent(
            reason::ARCHIVING_NOT_CONFIGURED,
            format!(
                "{name}: wal_level = minimal, which cannot be archived or restored to an instant: set wal_level = replica in postgresql.conf and restart PostgreSQL"
            ),
        ));
    }
    if archive_mode == "off" {
        return Err(HandlerError::permanent(
            reason::ARCHIVING_NOT_CONFIGURED,
            format!(
                "{name}: archive_mode = off, so the WAL a base backup needs is never archived: set archive_mode = on and archive_command = 'ferry --config /etc/ferry/ferry.toml wal-push --source {name} %p' in postgresql.conf and restart PostgreSQL"
            ),
        ));
    }
    if !archive_command.contains("wal-push") {
        tracing::warn!(source = %name, %archive_command, "archive_command does not call ferry wal-push: restores need the WAL in Ferry's archive");
    }
    if !can_replicate {
        return Err(HandlerError::permanent(
            reason::PERMISSION_DENIED,
            format!(
                "{name}: user {user} lacks the REPLICATION privilege a base backup needs: run ALTER ROLE \"{user}\" REPLICATION (and allow it a replication line in pg_hba.conf)"
            ),
        ));
    }
    let databases = client
        .query(
            "SELECT datname::text, pg_database_size(oid) FROM pg_database \
             WHERE datallowconn AND NOT datistemplate ORDER BY 1",
            &[],
        )
        .await
        .map_err(|e| query_error(name, e))?
        .iter()
        .map(|r| PostgresDatabase {
            name: r.get(0),
            size_bytes: r.get::<_, i64>(1).max(0) as u64,
            tables: Vec::new(),
        })
        .collect();
    Ok(ServerFacts {
        version,
        major,
        system_identifier,
        wal_segment_size: segment_size.max(0) as u64,
        databases,
    })
}

/// The pipe from pg_basebackup, widened from 64 KiB to [`PIPE_BYTES`]: each read
/// can take a whole buffer and pg_basebackup blocks less often on a full pipe, so
/// the two processes switch less on a busy machine (a shell pipeline keeps the
/// default). Best effort: a pipe left at its size still works.
fn widen_pipe(pipe: &std::fs::File) {
    if let Err(e) = nix::fcntl::fcntl(pipe, nix::fcntl::FcntlArg::F_SETPIPE_SZ(PIPE_BYTES)) {
        tracing::debug!(error = %e, "pg_basebackup's pipe keeps its default size");
    }
}

/// The unprivileged maximum (`/proc/sys/fs/pipe-max-size`'s default).
const PIPE_BYTES: i32 = 1024 * 1024;

/// pg_basebackup's failures, with the cause named where it is known.
fn classify_basebackup_error(source: &str, stderr: &str) -> HandlerError {
    if stderr.contains("pg_hba.conf") && stderr.contains("replication") {
        return HandlerError::permanent(
            reason::PERMISSION_DENIED,
            format!(
                "{source}: the server refused the replication connection: add a `host replication <user> <client address> scram-sha-256` line to pg_hba.conf and reload ({stderr})"
            ),
        );
    }
    if stderr.contains("single tablespace")
        || stderr.contains("tablespace") && stderr.contains("stdout")
    {
        return HandlerError::permanent(
            reason::DUMP_FAILED,
            format!(
                "{source}: the cluster has tablespaces besides pg_default, which a streamed base backup cannot hold yet: use mode = \"logical\" for it ({stderr})"
            ),
        );
    }
    classify_tool_error("pg_basebackup", source, "(cluster)", stderr)
}

/// Where a base backup's WAL starts and ends.
#[derive(Debug, PartialEq, Eq)]
struct WalPoints {
    start: String,
    stop: String,
    timeline: u32,
}

/// The manifest's tail kept: its `WAL-Ranges` are at the end.
const MANIFEST_TAIL: usize = 64 * 1024;

/// A streaming reader of tar headers that keeps two members of a base backup:
/// `backup_label` (whole; it is a few lines) and the end of `backup_manifest`.
/// Memory stays bounded whatever the size of the archive.
#[derive(Default)]
struct TarScan {
    header: Vec<u8>,
    /// Bytes of the current member (and its padding) still to pass.
    remaining: u64,
    padding: u64,
    keep: Option<Member>,
    label: Vec<u8>,
    manifest_tail: Vec<u8>,
    done: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Member {
    Label,
    Manifest,
}

impl TarScan {
    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() && !self.done {
            if self.remaining > 0 {
                let n = (self.remaining as usize).min(bytes.len());
                match self.keep {
                    Some(Member::Label) if self.label.len() < 64 * 1024 => {
                        self.label.extend_from_slice(&bytes[..n])
                    }
                    Some(Member::Manifest) => {
                        self.manifest_tail.extend_from_slice(&bytes[..n]);
                        if self.manifest_tail.len() > MANIFEST_TAIL {
                            let cut = self.manifest_tail.len() - MANIFEST_TAIL;
                            self.manifest_tail.drain(..cut);
                        }
                    }
                    _ => {}
                }
                self.remaining -= n as u64;
                bytes = &bytes[n..];
                continue;
            }
            if self.padding > 0 {
                let n = (self.padding as usize).min(bytes.len());
                self.padding -= n as u64;
                bytes = &bytes[n..];
                continue;
            }
            let n = (512 - self.header.len()).min(bytes.len());
            self.header.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            if self.header.len() < 512 {
                continue;
            }
            let header = std::mem::take(&mut self.header);
            if header.iter().all(|&b| b == 0) {
                // The end-of-archive blocks.
                self.done = true;
                return;
            }
            let name_end = header[..100].iter().position(|&b| b == 0).unwrap_or(100);
            let name = &header[..name_end];
            let size = tar_size(&header[124..136]);
            self.keep = match name {
                b"backup_label" | b"./backup_label" => Some(Member::Label),
                b"backup_manifest" | b"./backup_manifest" => {
                    self.manifest_tail.clear();
                    Some(Member::Manifest)
                }
                _ => None,
            };
            self.remaining = size;
            self.padding = (512 - size % 512) % 512;
        }
    }

    /// The start (from backup_label) and end (from the manifest's WAL-Ranges).
    fn points(&self) -> Option<WalPoints> {
        let label = String::from_utf8_lossy(&self.label);
        let mut start = None;
        let mut timeline = None;
        for line in label.lines() {
            if let Some(rest) = line.strip_prefix("START WAL LOCATION: ") {
                start = rest.split_whitespace().next().map(str::to_string);
            } else if let Some(rest) = line.strip_prefix("START TIMELINE: ") {
                timeline = rest.trim().parse().ok();
            }
        }
        let tail = String::from_utf8_lossy(&self.manifest_tail);
        let ranges = tail.rsplit("\"WAL-Ranges\"").next()?;
        let stop = ranges
            .rsplit("\"End-LSN\"")
            .next()?
            .split('"')
            .nth(1)?
            .to_string();
        Some(WalPoints {
            start: start?,
            stop,
            timeline: timeline?,
        })
    }
}

/// A tar header's size field: octal digits, or base-256 when the high bit is set.
fn tar_size(field: &[u8]) -> u64 {
    if field[0] & 0x80 != 0 {
        return field[1..]
            .iter()
            .fold(u64::from(field[0] & 0x7f), |acc, &b| {
                (acc << 8) | u64::from(b)
            });
    }
    let text = String::from_utf8_lossy(field);
    u64::from_str_radix(text.trim_matches(|c: char| c == '\0' || c == ' '), 8).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, body: &[u8]) -> Vec<u8> {
        let mut header = vec![0u8; 512];
        header[..name.len()].copy_from_slice(name.as_bytes());
        let size = format!("{:011o}\0", body.len());
        header[124..136].copy_from_slice(size.as_bytes());
        header[156] = b'0';
        let mut out = header;
        out.extend_from_slice(body);
        out.resize(out.len().div_ceil(512) * 512, 0);
        out
    }

    #[test]
    fn wal_points_are_read_from_the_tar_stream_in_any_chunks() {
        let label = b"START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\nCHECKPOINT LOCATION: 0/2000060\nSTART TIMELINE: 1\n";
        let manifest = format!(
            "{{ \"PostgreSQL-Backup-Manifest-Version\": 1,\n\"Files\": [{}],\n\"WAL-Ranges\": [\n{{ \"Timeline\": 1, \"Start-LSN\": \"0/2000028\", \"End-LSN\": \"0/2000100\" }}\n],\n\"Manifest-Checksum\": \"ab\"}}\n",
            "{\"Path\": \"x\"},".repeat(5000)
        );
        let mut tar = member("PG_VERSION", b"15\n");
        tar.extend(member("backup_label", label));
        tar.extend(member("global/pg_control", &[1u8; 8192]));
        tar.extend(member("backup_manifest", manifest.as_bytes()));
        tar.extend(vec![0u8; 1024]);
        for chunk in [1, 7, 512, 4096, tar.len()] {
            let mut scan = TarScan::default();
            for piece in tar.chunks(chunk) {
                scan.feed(piece);
            }
            assert_eq!(
                scan.points(),
                Some(WalPoints {
                    start: "0/2000028".into(),
                    stop: "0/2000100".into(),
                    timeline: 1
                }),
                "chunks of {chunk}"
            );
            assert!(scan.manifest_tail.len() <= MANIFEST_TAIL);
        }
        assert_eq!(TarScan::default().points(), None);
    }
}
