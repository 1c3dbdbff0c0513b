//! `ferry keep`: marks a backup so that no retention policy deletes it, or removes
//! the mark. A writing command: it takes the source's retention lease in NATS.

use std::process::ExitCode;

use ferry_retention::Retention;
use ferry_runtime::{Config, Runtime};
use ferry_storage::Catalog;

/// `ferry keep`
#[derive(clap::Args)]
pub struct KeepArgs {
    /// The source.
    #[arg(long)]
    pub source: String,
    /// A backup id, or `latest`.
    #[arg(long)]
    pub backup: String,
    /// Remove the mark instead: the policy applies to the backup again.
    #[arg(long)]
    pub remove: bool,
}

/// Runs `ferry keep`.
pub async fn run(config: Config, args: KeepArgs) -> anyhow::Result<ExitCode> {
    let KeepArgs {
        source,
        backup,
        remove,
    } = args;
    let store = ferry_runtime::store::open(&config.storage)?;
    let backup_id = if backup == "latest" {
        Catalog::new(store.as_ref())
            .latest(&source)
            .await?
            .ok_or_else(|| {
                anyhow::anyhow!("source {source} has no backups in {}", store.describe())
            })?
            .id
    } else {
        backup
    };
    // Under the source's retention lease, so that a run planned before the mark
    // existed cannot delete the backup right after it was marked.
    let rt = Runtime::connect(config, "ferry-cli").await?;
    let retention = Retention::new(rt, store.clone()).await?;
    retention
        .with_source_lease(&source, "ferry-keep", || async {
            Catalog::new(store.as_ref())
                .set_keep_mark(&source, &backup_id, !remove)
                .await
        })
        .await??;
    if remove {
        println!(
            "backup {backup_id} of {source} is no longer kept by mark; its policy applies again"
        );
    } else {
        println!(
            "backup {backup_id} of {source} is kept: no retention policy will delete it (`ferry keep --remove` to undo)"
        );
    }
    Ok(ExitCode::SUCCESS)
}
