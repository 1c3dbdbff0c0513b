//! `ferry keys`: the encryption keys. `generate` writes a new identity file and
//! prints its recipient; `check` proves an identity can decrypt the newest backup
//! of every source (its manifest and the first chunk of every object), so an
//! operator learns that a key is wrong before the day it is needed; `rewrap`
//! rewrites every encrypted backup's object headers and manifests for a new set of
//! recipients. None of them connects to NATS.
//!
//! Rewrap, and why it is safe to kill: it runs in two phases, each over every
//! manifest of every source, and records its progress in the store
//! ([`PROGRESS_KEY`], after each manifest). Phase one wraps every object and
//! manifest for the old and the new recipients together, phase two for the new
//! ones only; so at every moment every backup opens with the old identity (during
//! phase one) or with a new one (during phase two), and after a crash a second run
//! goes on where the first stopped. Only headers change: each object's payload is
//! copied as it is, and its new size and SHA-256 go into the manifests. Backups
//! must not be taken while it runs (pause the sources): a backup committed during
//! a rewrap may record a header that the rewrap then replaces.

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
    /// Rewrite every encrypted backup for new recipients: object headers and
    /// manifests, resumable after a crash (pause the sources first).
    Rewrap {
        /// An identity that opens the backups today.
        #[arg(long)]
        identity: PathBuf,
        /// The new recipients, one `age1…` per line: the only ones that can read
        /// the backups afterwards.
        #[arg(long)]
        recipients_file: PathBuf,
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
        KeysCommand::Rewrap {
            identity,
            recipients_file,
        } => rewrap(config, &identity, &recipients_file).await,
    }
}

/// Where a rewrap records its progress.
pub const PROGRESS_KEY: &str = "keys/rewrap.json";

/// A rewrap's progress: which phase, for which new recipients, which manifests of
/// the phase are done.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Progress {
    /// The new recipients, sorted: a second run must name the same ones.
    recipients: Vec<String>,
    /// 1: old and new recipients together; 2: new ones only.
    phase: u8,
    /// Manifests rewritten in this phase.
    done: Vec<String>,
}

async fn rewrap(
    config: &Config,
    identity: &std::path::Path,
    recipients_file: &std::path::Path,
) -> anyhow::Result<ExitCode> {
    use ferry_storage::encryption::{Sealer, recipients_file as read_recipients};
    let opener = Arc::new(Opener::from_file(identity)?);
    let new = read_recipients(recipients_file)?;
    anyhow::ensure!(
        !new.is_empty(),
        "{} holds no recipient: the backups would be readable by nobody",
        recipients_file.display()
    );
    let mut names: Vec<String> = new.iter().map(|r| r.to_string()).collect();
    names.sort();
    names.dedup();
    let store = ferry_runtime::store::open(&config.storage)?;
    let mut progress = match ferry_storage::get_bytes(store.as_ref(), PROGRESS_KEY).await {
        Ok(bytes) => {
            let p: Progress = serde_json::from_slice(&bytes)
                .map_err(|e| anyhow::anyhow!("{PROGRESS_KEY} is unreadable: {e}"))?;
            anyhow::ensure!(
                p.recipients == names,
                "an unfinished rewrap for other recipients is recorded in {PROGRESS_KEY}: finish it with the same --recipients-file first"
            );
            eprintln!(
                "resuming the rewrap: phase {}, {} manifests already done",
                p.phase,
                p.done.len()
            );
            p
        }
        Err(ferry_storage::StorageError::NotFound { .. }) => Progress {
            recipients: names.clone(),
            phase: 1,
            done: Vec::new(),
        },
        Err(e) => return Err(e.into()),
    };
    let resumed = !progress.done.is_empty();
    let mut both = opener.recipients();
    both.extend(new.iter().cloned());
    let mut totals = (0u64, 0u64);
    while progress.phase <= 2 {
        let targets = if progress.phase == 1 {
            both.clone()
        } else {
            new.clone()
        };
        let sealer = Sealer::for_records(targets.clone())?;
        let catalog = Catalog::new(store.as_ref()).with_opener(Some(&opener));
        // Objects are shared between backups: each is rewrapped once per phase.
        let mut rewrapped: std::collections::HashMap<String, ferry_storage::Stored> =
            Default::default();
        // After a crash, an object of a manifest not done yet may already carry
        // this phase's header (a done manifest shares it): its bytes then differ
        // from what the manifest records, and it is taken as it is.
        let check_first = resumed;
        for entry in catalog.backups(None).await? {
            let key = ferry_storage::layout::manifest_key(&entry.source, &entry.id);
            if progress.done.contains(&key) {
                continue;
            }
            let mut manifest = catalog.read(&entry.source, &entry.id).await?;
            if manifest.files.iter().all(|f| f.stored.is_none()) {
                progress.done.push(key);
                continue;
            }
            for file in manifest.files.iter_mut() {
                let Some(recorded) = file.stored.clone() else {
                    continue;
                };
                let stored = match rewrapped.get(&file.object) {
                    Some(s) => s.clone(),
                    None => {
                        let s = rewrap_object(
                            store.as_ref(),
                            &opener,
                            &file.object,
                            &recorded,
                            &targets,
                            check_first,
                        )
                        .await?;
                        totals.0 += 1;
                        totals.1 += s.size;
                        rewrapped.insert(file.object.clone(), s.clone());
                        s
                    }
                };
                file.stored = Some(stored);
            }
            store
                .put_bytes(&key, manifest.seal(&sealer).into(), None)
                .await?;
            progress.done.push(key);
            write_progress(store.as_ref(), &progress).await?;
            ferry_runtime::fault::point("keys.rewrap.manifest");
        }
        progress.phase += 1;
        progress.done.clear();
        if progress.phase <= 2 {
            write_progress(store.as_ref(), &progress).await?;
        }
    }
    store.delete(PROGRESS_KEY).await?;
    println!(
        "rewrapped {} objects ({} bytes copied) and every encrypted manifest for {} recipient(s); {} can no longer read them unless it is one of them",
        totals.0,
        totals.1,
        names.len(),
        opener.origin()
    );
    Ok(ExitCode::SUCCESS)
}

async fn write_progress(store: &dyn ObjectStore, progress: &Progress) -> anyhow::Result<()> {
    let json = serde_json::to_vec_pretty(progress)?;
    store.put_bytes(PROGRESS_KEY, json.into(), None).await?;
    Ok(())
}

/// Rewrites one object's header for `targets`, copying its payload as it is;
/// returns what is stored now. With `check_first`, an object whose bytes no longer
/// match `recorded` was rewrapped by an earlier, interrupted run in this phase and
/// is left as it is.
async fn rewrap_object(
    store: &dyn ObjectStore,
    opener: &Opener,
    object: &str,
    recorded: &ferry_storage::Stored,
    targets: &[ferry_storage::encryption::Recipient],
    check_first: bool,
) -> anyhow::Result<ferry_storage::Stored> {
    use sha2::{Digest, Sha256};
    if check_first {
        let current = ferry_storage::stored_digest(store, object).await?;
        if current != *recorded {
            return Ok(current);
        }
    }
    let mut body = store.get(object).await?;
    // The header is a few hundred bytes per recipient.
    let mut head = vec![0u8; 64 * 1024];
    let mut filled = 0;
    while filled < head.len() {
        let n = body.read(&mut head[filled..]).await?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    head.truncate(filled);
    let (header, old_len) = opener.rewrap(&head, targets, &format!("object {object}"))?;
    let mut first = header;
    first.extend_from_slice(&head[old_len..]);
    let hasher = Arc::new(std::sync::Mutex::new((Sha256::new(), 0u64)));
    let reader = Hashed {
        inner: tokio::io::AsyncReadExt::chain(std::io::Cursor::new(first), body),
        digest: hasher.clone(),
    };
    store.put(object, Box::new(reader)).await?;
    let (h, size) = std::mem::take(&mut *hasher.lock().expect("digest lock"));
    Ok(ferry_storage::Stored {
        size,
        sha256: hex::encode(h.finalize()),
    })
}

/// Hashes and counts what passes through it on the way to the store.
struct Hashed<R> {
    inner: R,
    digest: Arc<std::sync::Mutex<(sha2::Sha256, u64)>>,
}

impl<R: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Hashed<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use sha2::Digest;
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if let std::task::Poll::Ready(Ok(())) = &polled {
            let new = &buf.filled()[before..];
            let mut d = self.digest.lock().expect("digest lock");
            d.0.update(new);
            d.1 += new.len() as u64;
        }
        polled
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
