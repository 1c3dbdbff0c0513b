//! `ferry-bench retention`: planning and garbage collection for one source with
//! 10,000 backups and 1,000,000 objects in the local-directory store.
//!
//! Backup `i` references 100 objects: 80 of its own and 20 from a shared pool of
//! 200,000 (some of which no backup references: garbage from the start), so the
//! store holds 1,000,000 objects. The figures:
//! - plan: listing the source's manifests and planning a full GFS policy, against
//!   the 1 s target;
//! - collection after 10% of the backups expire: listing, reading every manifest,
//!   re-checking and deleting the unreferenced objects, as a ratio to a bare
//!   listing of `objects/` (the store's own listing speed), measured in the same run.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use chrono::{TimeZone, Utc};
use ferry_retention::{GcOptions, gc, plan};
use ferry_runtime::config::RetentionPolicy;
use ferry_storage::layout::{manifest_key, object_key};
use ferry_storage::{Catalog, FsStore, Manifest, ManifestFile, ObjectStore};
use futures::TryStreamExt;
use sha2::{Digest, Sha256};

const OWN: usize = 80;
const SHARED_PER_BACKUP: usize = 20;

/// Runs the benchmark in `dir` (a fresh temporary directory when unset).
pub async fn run(backups: usize, dir: Option<PathBuf>) -> anyhow::Result<()> {
    let tmp;
    let root = match dir {
        Some(d) => d,
        None => {
            tmp = tempfile::tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let pool = backups * 20;
    let objects = backups * OWN + pool;
    println!(
        "generating {backups} backups referencing {objects} objects in {}",
        root.display()
    );
    let clock = Instant::now();
    let source = "bench";
    let root2 = root.clone();
    tokio::task::spawn_blocking(move || generate(&root2, source, backups, pool)).await??;
    println!("  generated in {:.1}s", clock.elapsed().as_secs_f64());
    let store = FsStore::new(&root, "")?;

    // Plan.
    let policy: RetentionPolicy = toml::from_str(
        "keep_hourly = 48\nkeep_daily = 30\nkeep_weekly = 12\nkeep_monthly = 12\nkeep_yearly = 3",
    )?;
    let clock = Instant::now();
    let infos = ferry_retention::backups_of(&Catalog::new(&store), source).await?;
    let listed = clock.elapsed();
    let now = start() + chrono::Duration::hours(backups as i64);
    let clock = Instant::now();
    let planned = plan(&infos, &policy, chrono_tz::Europe::Berlin, now);
    let planning = clock.elapsed();
    println!(
        "\nplan ({} backups, full GFS policy in Europe/Berlin)",
        infos.len()
    );
    println!("  listing manifests   {:>9.3} s", listed.as_secs_f64());
    println!("  planning            {:>9.3} s", planning.as_secs_f64());
    println!(
        "  total               {:>9.3} s   (target < 1 s)   keep {}, delete {}",
        (listed + planning).as_secs_f64(),
        planned.keep.len(),
        planned.delete.len()
    );

    // Expire the oldest 10% of the backups, as a retention run would, then collect.
    let expire = backups / 10;
    for i in 0..expire {
        store.delete(&manifest_key(source, &backup_id(i))).await?;
    }
    let clock = Instant::now();
    // The baseline: the store's own listing, page by page, nothing kept.
    let bare = store
        .list(ferry_storage::layout::OBJECTS_PREFIX)
        .try_fold(0usize, |n, page| async move { Ok(n + page.len()) })
        .await?;
    let bare_listing = clock.elapsed();
    let clock = Instant::now();
    let outcome = gc::collect_garbage(
        &store,
        GcOptions {
            grace: Duration::from_secs(3600),
            // Every generated object is past the grace period.
            now: SystemTime::now() + Duration::from_secs(86_400),
            batch: 1000,
            max_candidates: gc::MAX_CANDIDATES,
        },
    )
    .await?;
    let collection = clock.elapsed();
    println!("\ngarbage collection after {expire} backups expired");
    println!(
        "  bare listing of objects/ ({bare} objects)  {:>8.2} s",
        bare_listing.as_secs_f64()
    );
    println!(
        "  collection: {} manifests read, {} objects deleted ({} freed)  {:>8.2} s",
        outcome.manifests_read,
        outcome.objects_deleted,
        ferry_runtime::human::bytes(outcome.bytes_freed),
        collection.as_secs_f64()
    );
    println!(
        "  ratio collection / bare listing: {:.2}x",
        collection.as_secs_f64() / bare_listing.as_secs_f64()
    );
    println!(
        "  peak RSS of the benchmark process: {:.1} MiB",
        crate::peak_rss_mib()
    );
    Ok(())
}

fn start() -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap()
}

fn backup_id(i: usize) -> String {
    let at = start() + chrono::Duration::hours(i as i64);
    format!("{}-{i:08x}", at.format("%Y%m%dT%H%M%SZ"))
}

fn object(n: usize) -> (String, Vec<u8>) {
    let content = format!("object {n}").into_bytes();
    (hex::encode(Sha256::digest(&content)), content)
}

/// Writes the objects and manifests straight into the store's directory layout
/// (the store's own `put` would fsync a million files and measure the disk).
fn generate(root: &Path, source: &str, backups: usize, pool: usize) -> anyhow::Result<()> {
    std::fs::create_dir_all(root.join("objects"))?;
    std::fs::create_dir_all(root.join("backups").join(source))?;
    let total = backups * OWN + pool;
    let workers = 4;
    std::thread::scope(|s| {
        for w in 0..workers {
            s.spawn(move || {
                for n in (w..total).step_by(workers) {
                    let (sha, content) = object(n);
                    std::fs::write(root.join(object_key(&sha)), content).expect("write object");
                }
            });
        }
    });
    for i in 0..backups {
        let own = (i * OWN..(i + 1) * OWN).map(|n| (n, false));
        let shared = (0..SHARED_PER_BACKUP)
            .map(|k| backups * OWN + (i * 7919 + k * 104_729) % pool)
            .map(|n| (n, true));
        let files: Vec<ManifestFile> = own
            .chain(shared)
            .enumerate()
            .map(|(f, (n, reused))| {
                let (sha, content) = object(n);
                ManifestFile {
                    name: format!("db/{f}.dat"),
                    object: object_key(&sha),
                    size: content.len() as u64,
                    sha256: sha,
                    compression: ferry_storage::Compression::None,
                    reused,
                    stored: None,
                }
            })
            .collect();
        let at = start() + chrono::Duration::hours(i as i64);
        let manifest = serde_json::json!({
            "format": 1, "backup_id": backup_id(i), "source": source, "engine": "postgres",
            "job_id": format!("job-{i}"), "server_version": "15", "tool_version": "pg_dump 15",
            "started_at": at, "completed_at": at, "databases": ["db"], "files": files,
            "bytes_total": 0, "bytes_uploaded": 0, "bytes_reused": 0,
        });
        let manifest: Manifest = serde_json::from_value(manifest)?;
        std::fs::write(
            root.join(manifest_key(source, &backup_id(i))),
            manifest.to_json(),
        )?;
    }
    Ok(())
}
