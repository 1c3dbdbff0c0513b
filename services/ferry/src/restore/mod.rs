//! Fetching a backup out of the store. `ferry restore --to-dir` leaves the standard
//! tool's layout (a pg_dump directory archive per database; mongodump's layout for
//! MongoDB), every file checked against its SHA-256 on the way; `ferry restore --to`
//! loads a backup into a server: PostgreSQL with pg_restore ([`postgres`]),
//! MongoDB ([`mongo`]).

pub mod mongo;
pub mod physical;
pub mod pitr;
pub mod postgres;

use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use ferry_storage::encryption::{OpenedStore, Opener};
use ferry_storage::{Compression, Manifest, ManifestFile, ObjectStore};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};

/// Resolves `latest` or an id to a manifest, through the catalog; an encrypted
/// backup is refused (it needs [`open_backup`] and an identity).
pub async fn find_backup(
    store: &dyn ObjectStore,
    source: &str,
    backup: &str,
) -> anyhow::Result<Manifest> {
    Ok(ferry_storage::Catalog::new(store)
        .resolve_open(source, backup)
        .await?)
}

/// A backup ready to be read: its whole manifest, and the store to read its
/// objects through (decrypting them, when the backup is encrypted).
pub struct OpenedBackup {
    /// The manifest, opened.
    pub manifest: Manifest,
    /// The store, or a decrypting view of it.
    pub store: Arc<dyn ObjectStore>,
}

/// Resolves `latest` or an id and opens it with `opener` when it is encrypted.
/// Without an identity, or with one that is not a recipient, an encrypted backup
/// is an error naming what to pass, before anything is fetched or written.
pub async fn open_backup(
    store: Arc<dyn ObjectStore>,
    source: &str,
    backup: &str,
    opener: Option<Arc<Opener>>,
) -> anyhow::Result<OpenedBackup> {
    let manifest = ferry_storage::Catalog::new(store.as_ref())
        .with_opener(opener.as_deref())
        .resolve_open(source, backup)
        .await?;
    let encrypted = manifest.files.iter().any(|f| f.stored.is_some());
    let store: Arc<dyn ObjectStore> = match opener {
        Some(opener) if encrypted => Arc::new(OpenedStore::new(store, opener)),
        _ => store,
    };
    Ok(OpenedBackup { manifest, store })
}

/// The identity of `--identity`, or of `encryption.identity_file`.
pub fn opener(
    config: &ferry_runtime::Config,
    identity: Option<&Path>,
) -> anyhow::Result<Option<Arc<Opener>>> {
    Ok(config.encryption.opener(identity)?.map(Arc::new))
}

/// Refuses a point-in-time restore from an encrypted store: captured segments and
/// WAL are not encrypted yet, so such a store holds none that could be trusted.
pub async fn refuse_encrypted_pitr(store: &dyn ObjectStore) -> anyhow::Result<()> {
    if ferry_storage::encryption::read_marker(store)
        .await?
        .is_some_and(|m| m.encrypted)
    {
        anyhow::bail!(
            "{} is encrypted: restoring to an instant (--at, --at-op, --to-datadir) from an encrypted store is not supported yet; restore a backup with --backup",
            store.describe()
        );
    }
    Ok(())
}

/// The path of a manifest file under `dir`, refusing names that would escape it.
pub fn local_path(dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let relative = Path::new(name);
    if name.is_empty()
        || relative
            .components()
            .any(|c| !matches!(c, Component::Normal(_)))
    {
        anyhow::bail!("manifest names a file outside the backup: {name:?}");
    }
    Ok(dir.join(relative))
}

/// Downloads one file of a backup to `dest` as stored (still compressed), checking
/// its size and SHA-256; a mismatch is an error naming the file and object.
pub async fn fetch_verified(
    store: &dyn ObjectStore,
    file: &ManifestFile,
    dest: &Path,
) -> anyhow::Result<u64> {
    if let Some(parent) = dest.parent() {
        tokio::fs::create_dir_all(parent).await?;
    }
    let mut body = store.get(&file.object).await?;
    let mut out = tokio::fs::File::create(dest).await?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let n = body.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n]).await?;
        size += n as u64;
    }
    out.flush().await?;
    let sha = hex::encode(hasher.finalize());
    if sha != file.sha256 || size != file.size {
        let _ = tokio::fs::remove_file(dest).await;
        anyhow::bail!(
            "{} (object {}) is corrupt: expected {} bytes with SHA-256 {}, got {size} bytes with {sha}",
            file.name,
            file.object,
            file.size,
            file.sha256
        );
    }
    Ok(size)
}

/// A reader of a fetched file's original bytes, by its `compression`.
pub fn decompressed(path: &Path, compression: Compression) -> anyhow::Result<Box<dyn Read + Send>> {
    let file = std::io::BufReader::with_capacity(256 * 1024, std::fs::File::open(path)?);
    Ok(match compression {
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(file)?),
        Compression::Gzip => Box::new(flate2::read::GzDecoder::new(file)),
        Compression::None => Box::new(file),
    })
}

/// The name a file has once decompressed: Ferry's `.zst` suffix removed. gzip files
/// keep theirs: those are pg_dump's own `.dat.gz`, which pg_restore reads as is.
pub fn restored_name(file: &ManifestFile) -> &str {
    match file.compression {
        Compression::Zstd => file.name.strip_suffix(".zst").unwrap_or(&file.name),
        Compression::Gzip | Compression::None => &file.name,
    }
}

/// Writes every file of `manifest` under `dir` in the standard tool's layout,
/// verifying sizes and SHA-256 sums; zstd files are decompressed. A mismatch stops
/// with an error naming the file and object: nothing is trusted that was not checked.
pub async fn fetch_to_dir(
    store: &dyn ObjectStore,
    manifest: &Manifest,
    dir: &Path,
) -> anyhow::Result<u64> {
    let dropped: Vec<String> = manifest
        .mongodb
        .as_ref()
        .map(|m| m.dropped.clone())
        .unwrap_or_default();
    let mut total = 0;
    for file in &manifest.files {
        if mongo::belongs_to_dropped(&file.name, &dropped) {
            continue;
        }
        let path = local_path(dir, restored_name(file))?;
        if file.compression != Compression::Zstd {
            total += fetch_verified(store, file, &path).await?;
            continue;
        }
        let staged = path.with_extension("ferry-part");
        total += fetch_verified(store, file, &staged).await?;
        let (from, to) = (staged.clone(), path.clone());
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            let mut input = decompressed(&from, Compression::Zstd)?;
            let mut out = std::io::BufWriter::new(std::fs::File::create(&to)?);
            std::io::copy(&mut input, &mut out)?;
            std::io::Write::flush(&mut out)?;
            std::fs::remove_file(&from)?;
            Ok(())
        })
        .await??;
    }
    Ok(total)
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

async fn fetch_file(
    store: &dyn ObjectStore,
    file: &ManifestFile,
    dir: &Path,
    progress: Arc<dyn Progress>,
) -> anyhow::Result<u64> {
    let path = local_path(dir, restored_name(file))?;
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
    let compression = file.compression;
    let out_path = path.clone();
    let decoded = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let input = tokio_util::io::SyncIoBridge::new(reader);
        let mut out = std::io::BufWriter::new(std::fs::File::create(&out_path)?);
        decompress(compression, input, &mut out)?;
        out.flush()?;
        Ok(())
    })
    .await?;
    let size = match check_digest(file, &digest) {
        Ok(size) => size,
        Err(e) => {
            let _ = tokio::fs::remove_file(&path).await;
            return Err(e);
        }
    };
    decoded.map_err(|e| anyhow::anyhow!("decompressing {}: {e:#}", file.name))?;
    Ok(size)
}

/// The size of what a [`Hashing`] reader read, or an error naming the file and
/// object when its size or SHA-256 differs from the manifest's.
pub(crate) fn check_digest(
    file: &ManifestFile,
    digest: &Mutex<(Sha256, u64)>,
) -> anyhow::Result<u64> {
    let (hasher, size) = {
        let guard = digest.lock().expect("digest lock");
        (guard.0.clone(), guard.1)
    };
    let sha = hex::encode(hasher.finalize());
    if sha != file.sha256 || size != file.size {
        anyhow::bail!(
            "{} (object {}) is corrupt: expected {} bytes with SHA-256 {}, got {size} bytes with {sha}",
            file.name,
            file.object,
            file.size,
            file.sha256
        );
    }
    Ok(size)
}

/// Streams `input` through the decoder named by `compression` into `out`; gzip
/// files stay compressed, as [`restored_name`] says (pg_restore reads `.gz`).
fn decompress(
    compression: Compression,
    input: impl Read,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    match compression {
        Compression::Zstd => {
            std::io::copy(&mut zstd::stream::read::Decoder::new(input)?, out)?;
        }
        Compression::Gzip | Compression::None => {
            let mut input = input;
            std::io::copy(&mut input, out)?;
        }
    }
    Ok(())
}

/// Hashes and counts what the store sends, before decompression: the checksum is
/// of the bytes as stored.
pub(crate) struct Hashing {
    inner: ferry_storage::Body,
    digest: Arc<Mutex<(Sha256, u64)>>,
    progress: Arc<dyn Progress>,
}

impl Hashing {
    /// Hashes what `inner` yields into `digest` (SHA-256 and size).
    pub(crate) fn new(
        inner: ferry_storage::Body,
        digest: Arc<Mutex<(Sha256, u64)>>,
        progress: Arc<dyn Progress>,
    ) -> Self {
        Hashing {
            inner,
            digest,
            progress,
        }
    }
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
