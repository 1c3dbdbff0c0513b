//! `ferry verify`: re-reads every object of a backup from the store and checks its
//! size and SHA-256 against the manifest, reporting every problem, not the first.
//! It reads only the store and never connects to NATS.
//!
//! An encrypted backup's objects are checked as stored (the ciphertext's size and
//! SHA-256, which its envelope records), so this needs no key. `--deep` also reads
//! every file's content: decrypted with `--identity` when encrypted, checked against
//! the plaintext's size and SHA-256, and decompressed to its end.

use std::process::ExitCode;

use ferry_runtime::Config;
use ferry_runtime::process::EXIT_FAILURE;
use ferry_storage::{Manifest, ManifestFile, ObjectStore, StorageError};
use futures::StreamExt;
use sha2::{Digest, Sha256};

use crate::output;

/// `ferry verify`
#[derive(clap::Args)]
pub struct VerifyArgs {
    /// The source.
    #[arg(long)]
    pub source: String,
    /// The backup id, or `latest`.
    #[arg(long, default_value = "latest")]
    pub backup: String,
    /// JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Also read every file's content: decrypt it (an encrypted backup needs
    /// --identity), check the plaintext's SHA-256 and decompress it to the end.
    #[arg(long)]
    pub deep: bool,
    /// An age identity file for --deep on an encrypted backup (default:
    /// encryption.identity_file).
    #[arg(long)]
    pub identity: Option<std::path::PathBuf>,
}

/// Runs `ferry verify`: exit 0 when the backup is intact, 1 listing every missing or
/// corrupt object.
pub async fn run(config: &Config, args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let VerifyArgs {
        source,
        backup,
        json,
        deep,
        identity,
    } = args;
    let store = ferry_runtime::store::open(&config.storage)?;
    let opener = crate::restore::opener(config, identity.as_deref())?;
    // Without --deep no key is needed: an encrypted manifest's envelope names every
    // object with its stored size and SHA-256.
    let manifest = ferry_storage::Catalog::new(store.as_ref())
        .with_opener(opener.as_deref())
        .resolve(&source, &backup)
        .await?;
    let mut problems = verify(store.as_ref(), &manifest).await?;
    if problems.is_empty() && deep {
        let opened =
            crate::restore::open_backup(store.clone(), &source, &manifest.backup_id, opener)
                .await?;
        problems = verify_content(opened.store.as_ref(), &opened.manifest).await?;
    }
    if problems.is_empty()
        && let Some(physical) = manifest.postgres.as_ref().and_then(|p| p.physical.as_ref())
    {
        let bin_dir = config
            .section::<ferry_dumper::config::DumperConfig>()?
            .pg_bin_dir
            .clone();
        problems = verify_physical(store.as_ref(), &manifest, physical, bin_dir.as_deref()).await?;
    }
    if json {
        output::json_line(&serde_json::json!({
            "source": source,
            "backup_id": manifest.backup_id,
            "files": manifest.files.len(),
            "ok": problems.is_empty(),
            "problems": problems,
        }));
    }
    if problems.is_empty() {
        if !json {
            println!(
                "backup {} of {source} is intact: {} objects, {} bytes, every size and SHA-256 checked{}",
                manifest.backup_id,
                manifest.files.len(),
                manifest.bytes_total,
                if deep {
                    ", every file decrypted and decompressed"
                } else {
                    ""
                }
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    if !json {
        for p in &problems {
            println!("{}: {} ({})", p.object, p.problem, p.file);
        }
    }
    eprintln!(
        "backup {} of {source} is damaged: {} of {} objects missing or corrupt; restore from another backup and check the store",
        manifest.backup_id,
        problems.len(),
        manifest.files.len()
    );
    Ok(ExitCode::from(EXIT_FAILURE))
}

/// A physical base backup needs its WAL, from its start to its end, to become
/// consistent: each of those segments must be archived and decompress intact;
/// and the archive after it must have no hole (a restore from it stops there).
/// Then, where `pg_verifybackup` is installed, the backup is unpacked into a
/// scratch directory with that WAL, and PostgreSQL's own `backup_manifest` check
/// runs on it (every file's checksum, and the WAL parsed from start to end).
pub async fn verify_physical(
    store: &dyn ObjectStore,
    manifest: &Manifest,
    physical: &ferry_storage::manifest::postgres::PhysicalManifest,
    pg_bin_dir: Option<&std::path::Path>,
) -> anyhow::Result<Vec<Problem>> {
    use ferry_storage::wal::{Lsn, WalFileName, segment_name, wal_key};
    let size = physical.wal_segment_size.max(1 << 20);
    let start: Lsn = physical.start_lsn.parse().map_err(anyhow::Error::msg)?;
    let stop: Lsn = physical.stop_lsn.parse().map_err(anyhow::Error::msg)?;
    let names: Vec<String> = (start.segment(size)..=stop.segment(size))
        .map(|n| segment_name(physical.timeline, n, size))
        .collect();
    let mut problems = Vec::new();
    for name in &names {
        let file = WalFileName::parse(name).map_err(anyhow::Error::msg)?;
        let key = wal_key(&manifest.source, &file);
        let problem = match crate::wal::content_sha256(store, &key).await {
            Ok(_) => continue,
            Err(crate::wal::WalError::Storage(StorageError::NotFound { .. })) => {
                "missing from the WAL archive: the backup cannot become consistent".to_string()
            }
            Err(crate::wal::WalError::Damaged { why, .. }) => format!("corrupt: {why}"),
            Err(e) => return Err(e.into()),
        };
        problems.push(Problem {
            file: format!("WAL {name}"),
            object: key,
            problem,
        });
    }
    if !problems.is_empty() {
        return Ok(problems);
    }
    // The chain after it: a hole stops every restore from this backup there.
    let archive = ferry_storage::wal::Archive::list(store, &manifest.source, size, None).await?;
    let to = archive.latest_timeline_from(physical.timeline);
    if let Ok(path) = archive.path(physical.timeline, start, to)
        && let Some(name) = archive.first_missing(&path, None)
    {
        let file = WalFileName::parse(&name).map_err(anyhow::Error::msg)?;
        problems.push(Problem {
            file: format!("WAL {name}"),
            object: wal_key(&manifest.source, &file),
            problem: format!(
                "missing from the WAL archive: restores from this backup cannot pass it (timeline {to})"
            ),
        });
        return Ok(problems);
    }
    let Some(tool) =
        crate::restore::physical::pg_tool(pg_bin_dir, "pg_verifybackup", &manifest.server_version)
    else {
        eprintln!(
            "pg_verifybackup of PostgreSQL {} not found: the backup's own backup_manifest was not checked",
            manifest.server_version
        );
        return Ok(problems);
    };
    let scratch = crate::restore::scratch_dir(None)?;
    let data = scratch.path().join("data");
    let wal = scratch.path().join("wal");
    std::fs::create_dir_all(&wal)?;
    crate::restore::physical::unpack_base(store, manifest, &data).await?;
    for name in &names {
        crate::wal::fetch(store, &manifest.source, name, &wal.join(name)).await?;
    }
    let out = tokio::process::Command::new(&tool)
        .arg("--wal-directory")
        .arg(&wal)
        .arg(&data)
        .stdin(std::process::Stdio::null())
        .output()
        .await?;
    if !out.status.success() {
        problems.push(Problem {
            file: "backup_manifest".into(),
            object: format!("{} in base.tar", tool.display()),
            problem: format!(
                "pg_verifybackup failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(problems)
}

/// Objects read at once.
const AT_ONCE: usize = 4;

/// What is wrong with one file of a backup.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    /// The file's name in the backup.
    pub file: String,
    /// Its object key.
    pub object: String,
    /// `missing` or `corrupt`, with details.
    pub problem: String,
}

/// Runs `check` on every file of `manifest`, a few at once; a file's problem is
/// what `check` says is wrong with it. Store errors other than "not found" abort
/// the check (the store, not the backup, is the problem then).
async fn each_file<'a, F, Fut>(
    manifest: &'a Manifest,
    check: F,
) -> Result<Vec<Problem>, StorageError>
where
    F: Fn(&'a ManifestFile) -> Fut,
    Fut: std::future::Future<Output = Result<Option<String>, StorageError>>,
{
    let results: Vec<(&ManifestFile, Result<Option<String>, StorageError>)> =
        futures::stream::iter(manifest.files.iter())
            .map(|file| {
                let checked = check(file);
                async move { (file, checked.await) }
            })
            .buffered(AT_ONCE)
            .collect()
            .await;
    let mut problems = Vec::new();
    for (file, result) in results {
        if let Some(problem) = result? {
            problems.push(Problem {
                file: file.name.clone(),
                object: file.object.clone(),
                problem,
            });
        }
    }
    Ok(problems)
}

/// Checks every object of `manifest` as stored (size and SHA-256; for an encrypted
/// backup those of the ciphertext, so no key is needed); an empty list means the
/// backup is intact.
pub async fn verify(
    store: &dyn ObjectStore,
    manifest: &Manifest,
) -> Result<Vec<Problem>, StorageError> {
    each_file(manifest, |file| async move {
        let (size, sha) = match ferry_storage::stored_digest(store, &file.object).await {
            Ok(stored) => (stored.size, stored.sha256),
            Err(StorageError::NotFound { .. }) => return Ok(Some("missing".into())),
            Err(e) => return Err(e),
        };
        if size != file.stored_size() || sha != file.stored_sha256() {
            return Ok(Some(format!(
                "corrupt: {size} bytes with SHA-256 {sha}, expected {} bytes with {}",
                file.stored_size(),
                file.stored_sha256()
            )));
        }
        Ok(None)
    })
    .await
}

/// `--deep`: reads every file's content through `store` (a decrypting view for an
/// encrypted backup), checks the plaintext's size and SHA-256 and decompresses it
/// to the end. A file that cannot be decrypted, does not match, or does not
/// decompress is a problem naming it.
pub async fn verify_content(
    store: &dyn ObjectStore,
    manifest: &Manifest,
) -> Result<Vec<Problem>, StorageError> {
    each_file(manifest, |file| async move {
        let body = match store.get(&file.object).await {
            Ok(body) => body,
            Err(StorageError::NotFound { .. }) => return Ok(Some("missing".into())),
            Err(e @ StorageError::Backend { op: "decrypt", .. }) => {
                return Ok(Some(format!("cannot be decrypted: {e}")));
            }
            Err(e) => return Err(e),
        };
        let compression = file.compression;
        let (decoded, size, sha) = tokio::task::spawn_blocking(move || {
            let mut reader = Digesting {
                inner: tokio_util::io::SyncIoBridge::new(body),
                hasher: Sha256::new(),
                size: 0,
            };
            let decoded = match compression {
                ferry_storage::Compression::Zstd => zstd::stream::read::Decoder::new(&mut reader)
                    .and_then(|mut d| std::io::copy(&mut d, &mut std::io::sink())),
                ferry_storage::Compression::Gzip => std::io::copy(
                    &mut flate2::read::GzDecoder::new(&mut reader),
                    &mut std::io::sink(),
                ),
                ferry_storage::Compression::None => {
                    std::io::copy(&mut reader, &mut std::io::sink())
                }
            };
            // Whatever the decoder left unread still counts for the digest.
            let rest = std::io::copy(&mut reader, &mut std::io::sink());
            (
                decoded.and(rest),
                reader.size,
                hex::encode(reader.hasher.finalize()),
            )
        })
        .await
        .map_err(|e| StorageError::Backend {
            op: "read",
            key: file.object.clone(),
            message: e.to_string(),
            retryable: false,
        })?;
        if size != file.size || sha != file.sha256 {
            return Ok(Some(format!(
                "content corrupt: {size} bytes with SHA-256 {sha}, expected {} bytes with {}{}",
                file.size,
                file.sha256,
                decoded.err().map(|e| format!(" ({e})")).unwrap_or_default()
            )));
        }
        if let Err(e) = decoded {
            return Ok(Some(format!("does not decompress as {compression}: {e}")));
        }
        Ok(None)
    })
    .await
}

/// A reader that hashes and counts what passes through it.
struct Digesting<R> {
    inner: R,
    hasher: Sha256,
    size: u64,
}

impl<R: std::io::Read> std::io::Read for Digesting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
}
