//! Fetching a backup out of the store: every file checked against its SHA-256 and
//! decompressed on the way, streaming, into the standard tool's layout (a pg_dump
//! directory archive per database). `ferry restore --to-dir` stops there;
//! [`postgres`] goes on and runs pg_restore.

pub mod postgres;

use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use ferry_storage::layout::manifest_key;
use ferry_storage::{Manifest, ManifestFile, ObjectStore, get_bytes};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, ReadBuf};

/// Resolves `latest` or an id to a manifest.
pub async fn find_backup(
    store: &dyn ObjectStore,
    source: &str,
    backup: &str,
) -> anyhow::Result<Manifest> {
    if backup == "latest" {
        return crate::list::backups(store, Some(source))
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| {
                anyhow::anyhow!("source {source} has no backups in {}", store.describe())
            });
    }
    let key = manifest_key(source, backup);
    let bytes = get_bytes(store, &key).await.map_err(|e| {
        anyhow::anyhow!("backup {backup} of {source} not found ({e}); `ferry list --source {source}` shows the backups")
    })?;
    Manifest::from_json(&bytes).map_err(|e| anyhow::anyhow!("{key}: {e}"))
}

/// Reports bytes fetched (compressed, as stored) and files finished.
pub trait Progress: Send + Sync {
    /// `n` more bytes were read from the store.
    fn bytes(&self, n: u64);
    /// One more file is complete.
    fn file_done(&self);
}

/// No progress reporting.
pub struct Quiet;

impl Progress for Quiet {
    fn bytes(&self, _: u64) {}
    fn file_done(&self) {}
}

/// Writes every file of `manifest` under `dir`, decompressed, verifying sizes and
/// SHA-256 sums; returns the bytes fetched. A mismatch stops with an error naming
/// the file and object; nothing is trusted that was not checked.
pub async fn fetch_to_dir(
    store: &dyn ObjectStore,
    manifest: &Manifest,
    dir: &Path,
) -> anyhow::Result<u64> {
    fetch_files(store, manifest.files.iter(), dir, Arc::new(Quiet)).await
}

/// [`fetch_to_dir`] for some of the files, reporting progress.
pub async fn fetch_files<'a>(
    store: &dyn ObjectStore,
    files: impl IntoIterator<Item = &'a ManifestFile>,
    dir: &Path,
    progress: Arc<dyn Progress>,
) -> anyhow::Result<u64> {
    let mut total = 0;
    for file in files {
        total += fetch_file(store, file, dir, progress.clone()).await?;
        progress.file_done();
    }
    Ok(total)
}

/// The name a file has once decompressed (`db/toc.dat.zst` → `db/toc.dat`).
pub fn restored_name(file: &ManifestFile) -> &str {
    let suffix = match file.compression.as_str() {
        "zstd" => ".zst",
        "gzip" => ".gz",
        _ => "",
    };
    file.name.strip_suffix(suffix).unwrap_or(&file.name)
}

async fn fetch_file(
    store: &dyn ObjectStore,
    file: &ManifestFile,
    dir: &Path,
    progress: Arc<dyn Progress>,
) -> anyhow::Result<u64> {
    let relative = Path::new(restored_name(file));
    if file.name.is_empty()
        || relative
            .components()
            .any(|c| !matches!(c, Component::Normal(_)))
    {
        anyhow::bail!("manifest names a file outside the backup: {:?}", file.name);
    }
    let path = dir.join(relative);
    if let Some(parent) = path.parent() {
        tokio::fs::create_dir_all(parent).await?;
    }
    let body = store.get(&file.object).await?;
    let digest = Arc::new(Mutex::new((Sha256::new(), 0u64)));
    let reader = Hashing {
        inner: body,
        digest: digest.clone(),
        progress,
    };
    let compression = file.compression.clone();
    let out_path = path.clone();
    let decoded = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let input = tokio_util::io::SyncIoBridge::new(reader);
        let mut out = std::io::BufWriter::new(std::fs::File::create(&out_path)?);
        decompress(&compression, input, &mut out)?;
        out.flush()?;
        Ok(())
    })
    .await?;
    let (hasher, size) = {
        let guard = digest.lock().expect("digest lock");
        (guard.0.clone(), guard.1)
    };
    let sha = hex::encode(hasher.finalize());
    if sha != file.sha256 || size != file.size {
        let _ = tokio::fs::remove_file(&path).await;
        anyhow::bail!(
            "{} (object {}) is corrupt: expected {} bytes with SHA-256 {}, got {size} bytes with {sha}",
            file.name,
            file.object,
            file.size,
            file.sha256
        );
    }
    decoded.map_err(|e| anyhow::anyhow!("decompressing {}: {e:#}", file.name))?;
    Ok(size)
}

/// Streams `input` through the decoder named by `compression` into `out`.
fn decompress(compression: &str, input: impl Read, out: &mut impl Write) -> anyhow::Result<()> {
    match compression {
        "zstd" => {
            std::io::copy(&mut zstd::stream::read::Decoder::new(input)?, out)?;
        }
        "gzip" => {
            std::io::copy(&mut flate2::read::MultiGzDecoder::new(input), out)?;
        }
        "none" | "" => {
            let mut input = input;
            std::io::copy(&mut input, out)?;
        }
        other => anyhow::bail!("unknown compression {other:?}: upgrade Ferry"),
    }
    Ok(())
}

/// Hashes and counts what the store sends, before decompression: the checksum is
/// of the bytes as stored.
struct Hashing {
    inner: ferry_storage::Body,
    digest: Arc<Mutex<(Sha256, u64)>>,
    progress: Arc<dyn Progress>,
}

impl AsyncRead for Hashing {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &poll {
            let new = &buf.filled()[before..];
            let mut d = self.digest.lock().expect("digest lock");
            d.0.update(new);
            d.1 += new.len() as u64;
            self.progress.bytes(new.len() as u64);
        }
        poll
    }
}

/// A scratch directory for a fetched archive, removed when dropped.
pub fn scratch_dir(under: Option<&Path>) -> anyhow::Result<tempfile::TempDir> {
    let dir = match under {
        Some(dir) => tempfile::Builder::new()
            .prefix("ferry-restore-")
            .tempdir_in(dir)?,
        None => tempfile::Builder::new()
            .prefix("ferry-restore-")
            .tempdir()?,
    };
    Ok(dir)
}

/// Where a database's archive lands under a fetch directory.
pub fn database_dir(dir: &Path, db: &str) -> PathBuf {
    dir.join(db)
}
