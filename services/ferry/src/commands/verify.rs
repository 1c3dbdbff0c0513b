//! `ferry verify`: re-reads every object of a backup from the store and checks its
//! size and SHA-256 against the manifest, reporting every problem, not the first.
//! It reads only the store and never connects to NATS.

use std::process::ExitCode;

use ferry_runtime::Config;
use ferry_runtime::process::EXIT_FAILURE;
use ferry_storage::{Manifest, ObjectStore, StorageError};
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

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
}

/// Runs `ferry verify`: exit 0 when the backup is intact, 1 listing every missing or
/// corrupt object.
pub async fn run(config: &Config, args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let VerifyArgs {
        source,
        backup,
        json,
    } = args;
    let store = ferry_runtime::store::open(&config.storage)?;
    let manifest = crate::restore::find_backup(store.as_ref(), &source, &backup).await?;
    let problems = verify(store.as_ref(), &manifest).await?;
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
                "backup {} of {source} is intact: {} objects, {} bytes, every size and SHA-256 checked",
                manifest.backup_id,
                manifest.files.len(),
                manifest.bytes_total
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
