//! Fetching a backup out of the store: `ferry restore --to-dir` leaves the standard
//! tool's layout (a pg_dump directory archive per database), every file checked
//! against its SHA-256 on the way.

use std::path::{Component, Path};

use ferry_storage::layout::manifest_key;
use ferry_storage::{Manifest, ObjectStore, get_bytes};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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

/// Writes every file of `manifest` under `dir`, verifying sizes and SHA-256 sums.
/// A mismatch stops with an error naming the file and object; nothing is trusted
/// that was not checked.
pub async fn fetch_to_dir(
    store: &dyn ObjectStore,
    manifest: &Manifest,
    dir: &Path,
) -> anyhow::Result<u64> {
    let mut total = 0;
    for file in &manifest.files {
        let relative = Path::new(&file.name);
        if relative
            .components()
            .any(|c| !matches!(c, Component::Normal(_)))
        {
            anyhow::bail!("manifest names a file outside the backup: {:?}", file.name);
        }
        let path = dir.join(relative);
        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent).await?;
        }
        let mut body = store.get(&file.object).await?;
        let mut out = tokio::fs::File::create(&path).await?;
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
            anyhow::bail!(
                "{} (object {}) is corrupt: expected {} bytes with SHA-256 {}, got {size} bytes with {sha}",
                file.name,
                file.object,
                file.size,
                file.sha256
            );
        }
        total += size;
    }
    Ok(total)
}
