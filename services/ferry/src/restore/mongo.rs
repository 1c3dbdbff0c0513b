//! `ferry restore --to mongodb://…`: recreates each collection with its options,
//! loads its documents in parallel unordered batches (byte for byte as dumped),
//! builds its indexes, then replays `oplog.bson` so the target lands on the
//! backup's end instant.

mod load;
pub(crate) mod replay;

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use ferry_storage::pitr::ClusterTime;
use ferry_storage::{Manifest, ManifestFile, ObjectStore};
use futures::{StreamExt, TryStreamExt};
use mongodb::Client;
use mongodb::bson::{Bson, Document, doc};

use super::{decompressed, fetch_verified};

/// What to restore and where.
#[derive(Debug, Clone, Default)]
pub struct MongoRestoreOptions {
    /// The target server.
    pub to: String,
    /// Password for the user named in `to`, when not in the URL.
    pub password: Option<String>,
    /// Only this collection (`db.name`, as named in the backup).
    pub collection: Option<String>,
    /// Databases restored under another name (`old` → `new`).
    pub rename_db: BTreeMap<String, String>,
    /// Drop existing collections first (otherwise a non-empty one is an error).
    pub drop: bool,
    /// Collections loaded at once.
    pub parallel_collections: usize,
    /// Batches in flight per collection.
    pub parallel_batches: usize,
    /// Show a progress line on stderr when it is a terminal.
    pub progress: bool,
}

/// What a restore did.
#[derive(Debug, Clone, Default)]
pub struct MongoRestoreReport {
    /// Collections and views created.
    pub collections: usize,
    /// Documents inserted.
    pub documents: u64,
    /// Oplog entries replayed.
    pub oplog_applied: u64,
    /// Wall time of the load (documents), for throughput.
    pub load_time: Duration,
}

/// One collection of a backup.
#[derive(Debug, Clone)]
struct Item {
    db: String,
    name: String,
    metadata: ManifestFile,
    data: Option<ManifestFile>,
}

/// Whether `name` is a file of a collection the dump recorded as dropped.
pub fn belongs_to_dropped(name: &str, dropped: &[String]) -> bool {
    dropped.iter().any(|ns| {
        let Some((db, coll)) = ns.split_once('.') else {
            return false;
        };
        let stem = format!("{db}/{}.", ferry_stem(coll));
        name.starts_with(&stem)
            && (name[stem.len()..].starts_with("bson")
                || name[stem.len()..].starts_with("metadata.json"))
    })
}

/// A collection name as the dumper writes it in file names.
fn ferry_stem(name: &str) -> String {
    name.replace('%', "%25").replace('/', "%2F")
}

fn items(manifest: &Manifest) -> Vec<Item> {
    let strip = |n: &str| n.strip_suffix(".zst").unwrap_or(n).to_string();
    let mut data: BTreeMap<String, ManifestFile> = BTreeMap::new();
    let mut metas = Vec::new();
    for f in &manifest.files {
        let plain = strip(&f.name);
        if let Some(stem) = plain.strip_suffix(".metadata.json") {
            metas.push((stem.to_string(), f.clone()));
        } else if let Some(stem) = plain.strip_suffix(".bson")
            && stem.contains('/')
        {
            data.insert(stem.to_string(), f.clone());
        }
    }
    let dropped = manifest
        .mongodb
        .as_ref()
        .map(|m| m.dropped.clone())
        .unwrap_or_default();
    metas
        .into_iter()
        .filter(|(_, f)| !belongs_to_dropped(&f.name, &dropped))
        .filter_map(|(stem, metadata)| {
            let (db, file_name) = stem.split_once('/')?;
            let name = file_name.replace("%2F", "/").replace("%25", "%");
            Some(Item {
                db: db.to_string(),
                name,
                data: data.get(&stem).cloned(),
                metadata,
            })
        })
        .collect()
}

/// The next entry of an oplog-entry file (`oplog.bson`, a segment), `None` at its end.
pub(crate) fn next_entry(
    reader: &mut dyn std::io::Read,
) -> anyhow::Result<Option<mongodb::bson::RawDocumentBuf>> {
    load::next_document(reader, "oplog")
}

/// Restores `manifest` into the server at `opts.to`.
pub async fn restore(
    store: &dyn ObjectStore,
    manifest: &Manifest,
    opts: &MongoRestoreOptions,
) -> anyhow::Result<MongoRestoreReport> {
    if manifest.engine != ferry_storage::Engine::Mongodb {
        anyhow::bail!(
            "backup {} is a {} backup, not MongoDB: use --to-dir and the engine's own tools",
            manifest.backup_id,
            manifest.engine
        );
    }
    let mut selected = items(manifest);
    if let Some(only) = &opts.collection {
        selected.retain(|i| format!("{}.{}", i.db, i.name) == *only);
        if selected.is_empty() {
            anyhow::bail!(
                "collection {only} is not in backup {} (`ferry list --json` shows its collections)",
                manifest.backup_id
            );
        }
    }
    let client = connect(opts).await?;
    let staging = tempfile::tempdir().context("creating a staging directory")?;
    let target_db = |db: &str| opts.rename_db.get(db).cloned().unwrap_or_else(|| db.into());

    // Metadata first, all of it: a bad file stops the restore before any write.
    let mut prepared = Vec::new();
    for item in selected {
        let path = staging.path().join(format!("meta-{}", prepared.len()));
        fetch_verified(store, &item.metadata, &path).await?;
        let meta = read_metadata(&path, &item.metadata)?;
        prepared.push((item, meta));
    }
    let (views, collections): (Vec<_>, Vec<_>) = prepared
        .into_iter()
        .partition(|(_, m)| m.get_str("type") == Ok("view"));

    // Without --drop, an occupied target is refused before anything is written:
    // collections restored in parallel would otherwise be half done when one of
    // them finds its target occupied.
    if !opts.drop {
        for (item, _) in collections.iter().chain(views.iter()) {
            load::refuse_occupied(&client.database(&target_db(&item.db)), &item.name).await?;
        }
    }

    let expected: u64 = manifest
        .mongodb
        .as_ref()
        .map(|m| m.collections.iter().map(|c| c.documents).sum())
        .unwrap_or(0);
    let progress = Progress::start(opts.progress && std::io::stderr().is_terminal(), expected);
    let started = Instant::now();
    let loaded: Vec<u64> = futures::stream::iter(collections.iter())
        .map(|(item, meta)| {
            let client = &client;
            let staging = staging.path();
            let db = target_db(&item.db);
            let counter = progress.counter.clone();
            async move {
                load::collection(client, store, item, meta, &db, staging, opts, counter)
                    .await
                    .with_context(|| format!("restoring {}.{}", item.db, item.name))
            }
        })
        .buffer_unordered(opts.parallel_collections.max(1))
        .try_collect()
        .await?;
    let load_time = started.elapsed();
    for (item, meta) in &views {
        load::view(&client, item, meta, &target_db(&item.db), opts.drop)
            .await
            .with_context(|| format!("restoring view {}.{}", item.db, item.name))?;
    }
    progress.stop();

    let oplog_applied = match manifest
        .files
        .iter()
        .find(|f| f.name == "oplog.bson" || f.name == "oplog.bson.zst")
    {
        Some(file) => {
            let path = staging.path().join("oplog.bson");
            fetch_verified(store, file, &path).await?;
            let reader = decompressed(&path, file.compression)?;
            let through = manifest
                .mongodb
                .as_ref()
                .map(|m| ClusterTime::new(m.end_time.seconds, m.end_time.increment));
            let range = replay::Range {
                after: None,
                through,
            };
            replay::apply(&client, reader, range, opts).await?
        }
        None => 0,
    };
    Ok(MongoRestoreReport {
        collections: collections.len() + views.len(),
        documents: loaded.iter().sum(),
        oplog_applied,
        load_time,
    })
}

pub(crate) async fn connect(opts: &MongoRestoreOptions) -> anyhow::Result<Client> {
    let mut options = mongodb::options::ClientOptions::parse(&opts.to)
        .await
        .with_context(|| "invalid --to url (expected mongodb://host:port/)".to_string())?;
    if let Some(password) = &opts.password {
        let credential = options.credential.as_mut().ok_or_else(|| {
            anyhow::anyhow!("a password was given but the --to url names no user")
        })?;
        credential.password = Some(password.clone());
    }
    options.app_name = Some("ferry-restore".into());
    let client = Client::with_options(options)?;
    client
        .database("admin")
        .run_command(doc! { "ping": 1 })
        .await
        .with_context(|| format!("cannot reach {}", redact(&opts.to)))?;
    Ok(client)
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_string(),
    }
}

fn read_metadata(path: &std::path::Path, file: &ManifestFile) -> anyhow::Result<Document> {
    let mut json = Vec::new();
    std::io::Read::read_to_end(&mut decompressed(path, file.compression)?, &mut json)?;
    let value: serde_json::Value =
        serde_json::from_slice(&json).with_context(|| format!("{} is not JSON", file.name))?;
    match Bson::try_from(value) {
        Ok(Bson::Document(d)) => Ok(d),
        Ok(_) => anyhow::bail!("{} is not a metadata document", file.name),
        Err(e) => anyhow::bail!("{} is not valid Extended JSON: {e}", file.name),
    }
}

/// A progress line on stderr (only when it is a terminal).
struct Progress {
    counter: Arc<AtomicU64>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Progress {
    fn start(show: bool, expected: u64) -> Progress {
        let counter = Arc::new(AtomicU64::new(0));
        let task = show.then(|| {
            let counter = counter.clone();
            tokio::spawn(async move {
                loop {
                    let done = counter.load(Ordering::Relaxed);
                    let pct = (done * 100).checked_div(expected).unwrap_or(0).min(100);
                    eprint!("\rrestoring: {done}/{expected} documents ({pct}%)");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            })
        });
        Progress { counter, task }
    }

    fn stop(self) {
        if let Some(task) = self.task {
            task.abort();
            eprintln!(
                "\rrestoring: {} documents loaded          ",
                self.counter.load(Ordering::Relaxed)
            );
        }
    }
}
