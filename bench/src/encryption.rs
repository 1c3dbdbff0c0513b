//! `ferry-bench encryption`: what client-side encryption costs a backup, in one
//! run. Encryption happens in the uploader, as each file goes to the store (see
//! `ferry_uploader::transfer`), so a backup's CPU is the dump's plus the upload's:
//! the dump (PostgreSQL with the dumper's code, or MongoDB) runs once, then its
//! files are stored twice through the uploader's own `Transfer` into a fresh
//! local-directory store, once plain and once encrypted to an age recipient. Each
//! step is a child process under `/usr/bin/time` (CPU of the whole process).
//! Target: a backup with encryption uses under 10% more CPU than one without.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use ferry_storage::FsStore;
use ferry_storage::encryption::Sealer;
use ferry_storage::retry::RetryPolicy;
use ferry_storage::spool::DirSpool;
use ferry_testkit::PgCluster;
use ferry_uploader::transfer::{FileRef, Transfer};
use futures::{StreamExt, TryStreamExt};
use sha2::{Digest, Sha256};

use crate::pg_dump::{Measure, cores, load_average, measure};

/// Runs of each store step.
const RUNS: usize = 3;

/// The run with the median CPU time.
fn median(mut runs: Vec<Measure>) -> Measure {
    runs.sort_by(|a, b| a.cpu.total_cmp(&b.cpu));
    runs.swap_remove(runs.len() / 2)
}

/// The job id the dumped files sit under in the spool.
const JOB: &str = "bench-job";

/// One spool file, as the uploader is told about it.
#[derive(serde::Serialize, serde::Deserialize)]
struct SpoolFile {
    name: String,
    size: u64,
    sha256: String,
}

pub async fn run(engine: &str, gb: f64, mongo_url: &str) -> anyhow::Result<()> {
    let work =
        tempfile::tempdir_in(std::env::var_os("FERRY_BENCH_DIR").unwrap_or_else(|| "/tmp".into()))?;
    let spool = work.path().join("spool");
    let job_dir = spool.join(JOB);
    let exe = std::env::current_exe()?;
    let exe = exe.to_str().context("utf-8 path")?;
    let pg = PgCluster::from_env();
    let load_before = load_average();
    let (dataset, dump) = match engine {
        "postgres" => {
            let password_file = work.path().join("pw");
            std::fs::write(&password_file, &pg.password)?;
            let (db, size) = crate::pg_dump::ensure_database(&pg, gb).await?;
            let args = [
                "pg-dump-child".into(),
                "--url".into(),
                pg.url_without_password(&db),
                "--password-file".into(),
                password_file.display().to_string(),
                "--pg-bin-dir".into(),
                pg.bin_dir.display().to_string(),
                "--out".into(),
                job_dir.display().to_string(),
                "--level".into(),
                "1".into(),
            ];
            let dump = measure(exe, &args, &pg, &work.path().join("none")).await?;
            (
                format!("PostgreSQL {db} ({:.2} GB)", size as f64 / 1e9),
                dump,
            )
        }
        "mongodb" => {
            let db = crate::mongo::ensure_bench_dataset(mongo_url, gb).await?;
            let args = [
                "mongo-dump-child".into(),
                "--url".into(),
                mongo_url.to_string(),
                "--db".into(),
                db.clone(),
                "--out".into(),
                job_dir.display().to_string(),
                "--parallel".into(),
                "4".into(),
            ];
            let dump = measure(exe, &args, &pg, &work.path().join("none")).await?;
            (format!("MongoDB {db}"), dump)
        }
        other => anyhow::bail!("--engine {other:?}: postgres or mongodb"),
    };
    // The files as the dumper announced them (hashed here, outside any measure).
    let files = spool_files(&job_dir)?;
    let list = work.path().join("files.json");
    std::fs::write(&list, serde_json::to_vec(&files)?)?;
    let bytes: u64 = {
        let mut seen = std::collections::HashSet::new();
        files
            .iter()
            .filter(|f| seen.insert(f.sha256.clone()))
            .map(|f| f.size)
            .sum()
    };

    let store = |name: &str, seal: bool| {
        let mut args = vec![
            "store-child".to_string(),
            "--spool".into(),
            spool.display().to_string(),
            "--files".into(),
            list.display().to_string(),
            "--store".into(),
            work.path().join(name).display().to_string(),
        ];
        if seal {
            args.push("--seal".into());
        }
        args
    };
    // Alternating, three of each, medians: one store step is short next to the
    // machine's noise.
    let (mut plains, mut sealeds) = (Vec::new(), Vec::new());
    for _ in 0..RUNS {
        let out = work.path().join("plain");
        plains.push(measure(exe, &store("plain", false), &pg, &out).await?);
        let out = work.path().join("sealed");
        sealeds.push(measure(exe, &store("sealed", true), &pg, &out).await?);
    }
    let (plain, sealed) = (median(plains), median(sealeds));
    let load_after = load_average();

    println!("encryption benchmark ({} cores), {dataset}", cores());
    println!("machine load average before/after: {load_before} / {load_after}");
    println!(
        "dump output: {} files, {:.1} MB of distinct content (compressed)",
        files.len(),
        bytes as f64 / 1e6
    );
    println!(
        "{:<46} {:>9} {:>9} {:>10} {:>12}",
        "step", "wall s", "cpu s", "peak MiB", "stored MB"
    );
    let row = |name: &str, m: &Measure| {
        println!(
            "{name:<46} {:>9.2} {:>9.2} {:>10.1} {:>12.1}",
            m.wall,
            m.cpu,
            m.rss_mib,
            m.bytes as f64 / 1e6
        )
    };
    row("dump", &dump);
    row("store, plain (uploader's Transfer), median", &plain);
    row("store, encrypted (age, 1 recipient), median", &sealed);
    let without = dump.cpu + plain.cpu;
    let with = dump.cpu + sealed.cpu;
    println!(
        "backup CPU without / with encryption: {without:.2} s / {with:.2} s: ratio {:.3} (target < 1.10)",
        with / without
    );
    println!(
        "backup wall without / with encryption: {:.2} s / {:.2} s: ratio {:.3}",
        dump.wall + plain.wall,
        dump.wall + sealed.wall,
        (dump.wall + sealed.wall) / (dump.wall + plain.wall)
    );
    println!(
        "encryption alone: {:+.2} s of CPU for {:.1} MB stored ({RUNS} runs of each, medians)",
        sealed.cpu - plain.cpu,
        bytes as f64 / 1e6
    );
    Ok(())
}

/// Every file under `dir` (recursively) with its size and SHA-256, names relative.
fn spool_files(dir: &Path) -> anyhow::Result<Vec<SpoolFile>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let name = path.strip_prefix(dir)?.to_string_lossy().into_owned();
            if name == "manifest.json" {
                continue;
            }
            let mut hasher = Sha256::new();
            let size = std::io::copy(&mut std::fs::File::open(&path)?, &mut hasher)?;
            out.push(SpoolFile {
                name,
                size,
                sha256: hex::encode(hasher.finalize()),
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// The child: stores every listed spool file through the uploader's `Transfer`,
/// four at once as the uploader does, encrypted when `seal`.
pub async fn store_child(
    spool: PathBuf,
    files: PathBuf,
    store: PathBuf,
    seal: bool,
) -> anyhow::Result<()> {
    let mut files: Vec<SpoolFile> = serde_json::from_slice(&std::fs::read(files)?)?;
    // Identical files are one object, stored once (the uploader reuses the second).
    let mut seen = std::collections::HashSet::new();
    files.retain(|f| seen.insert(f.sha256.clone()));
    let defaults = ferry_uploader::config::UploaderConfig::default();
    let sealer = seal.then(|| {
        let recipient = age::x25519::Identity::generate().to_public();
        Arc::new(Sealer::new(vec![recipient], [7u8; 32]).expect("one recipient"))
    });
    let transfer = Transfer::new(
        Arc::new(FsStore::new(&store, "")?),
        Arc::new(DirSpool::new(&spool)?),
        defaults.part_size.0,
        defaults.parts_in_flight,
        RetryPolicy::default(),
    )
    .with_sealer(sealer);
    futures::stream::iter(files.iter())
        .map(|f| {
            let transfer = &transfer;
            async move {
                let file = FileRef {
                    job_id: JOB,
                    name: &f.name,
                    size: f.size,
                    sha256: &f.sha256,
                };
                transfer
                    .upload(&file, &transfer.object_for(&f.sha256))
                    .await
            }
        })
        .buffer_unordered(4)
        .try_collect::<Vec<_>>()
        .await?;
    Ok(())
}
