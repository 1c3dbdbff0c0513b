//! `ferry keys`: the encryption keys. `generate` writes a new identity file and
//! prints its recipient; `check` proves an identity can decrypt the newest backup
//! of every source (its manifest and the first chunk of every object), so an
//! operator learns that a key is wrong before the day it is needed. Both read only
//! the store and never connect to NATS.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use ferry_runtime::Config;
use ferry_runtime::process::EXIT_FAILURE;
use ferry_storage::encryption::{OpenedStore, Opener};
use ferry_storage::{Catalog, ObjectStore};
use tokio::io::AsyncReadExt;

/// `ferry keys …`
#[derive(clap::Subcommand)]
pub enum KeysCommand {
    /// Write a new age identity file (mode 0600) and print its recipient.
    Generate {
        /// The identity file to create (it must not exist).
        #[arg(long)]
        out: PathBuf,
    },
    /// Decrypt the newest backup of each source with an identity.
    Check {
        /// The age identity file (default: encryption.identity_file).
        #[arg(long)]
        identity: Option<PathBuf>,
        /// Only this source.
        #[arg(long)]
        source: Option<String>,
    },
}

/// Runs `ferry keys`.
pub async fn run(config: &Config, command: KeysCommand) -> anyhow::Result<ExitCode> {
    match command {
        KeysCommand::Generate { out } => generate(&out),
        KeysCommand::Check { identity, source } => check(config, identity, source).await,
    }
}

fn generate(out: &std::path::Path) -> anyhow::Result<ExitCode> {
    use std::os::unix::fs::OpenOptionsExt;
    let (text, recipient) = ferry_storage::encryption::generate_identity();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", out.display()))?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    println!("{recipient}");
    eprintln!(
        "wrote the identity to {} (keep it off the backup hosts, and keep a second copy); put the recipient above in [encryption] recipients",
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}

async fn check(
    config: &Config,
    identity: Option<PathBuf>,
    only: Option<String>,
) -> anyhow::Result<ExitCode> {
    let opener = config
        .encryption
        .opener(identity.as_deref())?
        .ok_or_else(|| {
            anyhow::anyhow!("no identity: pass --identity FILE or set encryption.identity_file")
        })?;
    let opener = Arc::new(opener);
    let store = ferry_runtime::store::open(&config.storage)?;
    let catalog = Catalog::new(store.as_ref());
    let mut sources: Vec<String> = catalog
        .backups(None)
        .await?
        .into_iter()
        .map(|e| e.source)
        .collect();
    sources.sort();
    sources.dedup();
    if let Some(one) = &only {
        sources.retain(|s| s == one);
    }
    if sources.is_empty() {
        anyhow::bail!("no backups to check in {}", store.describe());
    }
    let mut failed = 0;
    for source in &sources {
        match check_latest(store.clone(), source, opener.clone()).await {
            Ok(line) => println!("{source}: {line}"),
            Err(e) => {
                failed += 1;
                println!("{source}: FAILED: {e:#}");
            }
        }
    }
    if failed > 0 {
        eprintln!(
            "{failed} of {} sources cannot be decrypted with {}",
            sources.len(),
            opener.origin()
        );
        return Ok(ExitCode::from(EXIT_FAILURE));
    }
    Ok(ExitCode::SUCCESS)
}

/// Opens the newest backup of `source` and the first chunk of each of its objects.
async fn check_latest(
    store: Arc<dyn ObjectStore>,
    source: &str,
    opener: Arc<Opener>,
) -> anyhow::Result<String> {
    let manifest = Catalog::new(store.as_ref())
        .with_opener(Some(&opener))
        .resolve_open(source, "latest")
        .await?;
    let encrypted = manifest.files.iter().filter(|f| f.stored.is_some()).count();
    if encrypted == 0 {
        return Ok(format!(
            "newest backup {} is not encrypted (nothing to check)",
            manifest.backup_id
        ));
    }
    let view = OpenedStore::new(store, opener);
    for file in manifest.files.iter().filter(|f| f.stored.is_some()) {
        let mut body = view.get(&file.object).await?;
        // One age chunk (64 KiB) is authenticated on its own: reading it proves the
        // identity unwraps this object's key.
        let mut chunk = vec![0u8; 64 * 1024];
        body.read(&mut chunk)
            .await
            .map_err(|e| anyhow::anyhow!("{} ({}): {e}", file.name, file.object))?;
    }
    Ok(format!(
        "newest backup {} decrypts: manifest and {encrypted} objects",
        manifest.backup_id
    ))
}
