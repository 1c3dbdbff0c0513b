//! `ferry verify`: re-reads every object of a backup from the store and checks its
//! size and SHA-256 against the manifest, reporting every problem, not the first.

use ferry_storage::{Manifest, ObjectStore, StorageError};
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

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

/// Checks every file of `manifest`; an empty list means the backup is intact.
/// Store errors other than "not found" abort the check (the store, not the backup,
/// is the problem then).
pub async fn verify(
    store: &dyn ObjectStore,
    manifest: &Manifest,
) -> Result<Vec<Problem>, StorageError> {
    let results: Vec<Result<Option<Problem>, StorageError>> =
        futures::stream::iter(manifest.files.iter())
            .map(|file| async move {
                let problem = |problem: String| {
                    Some(Problem {
                        file: file.name.clone(),
                        object: file.object.clone(),
                        problem,
                    })
                };
                let mut body = match store.get(&file.object).await {
                    Ok(body) => body,
                    Err(StorageError::NotFound { .. }) => {
                        return Ok(problem("missing".into()));
                    }
                    Err(e) => return Err(e),
                };
                let mut hasher = Sha256::new();
                let mut size = 0u64;
                let mut buf = vec![0u8; 256 * 1024];
                loop {
                    let n = body
                        .read(&mut buf)
                        .await
                        .map_err(|e| StorageError::Backend {
                            op: "read",
                            key: file.object.clone(),
                            message: e.to_string(),
                            retryable: true,
                        })?;
                    if n == 0 {
                        break;
                    }
                    hasher.update(&buf[..n]);
                    size += n as u64;
                }
                let sha = hex::encode(hasher.finalize());
                if size != file.size || sha != file.sha256 {
                    return Ok(problem(format!(
                        "corrupt: {size} bytes with SHA-256 {sha}, expected {} bytes with {}",
                        file.size, file.sha256
                    )));
                }
                Ok(None)
            })
            .buffered(AT_ONCE)
            .collect()
            .await;
    let mut problems = Vec::new();
    for r in results {
        if let Some(p) = r? {
            problems.push(p);
        }
    }
    Ok(problems)
}
