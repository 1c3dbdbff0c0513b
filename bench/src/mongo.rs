//! `ferry-bench mongo-dump`: Ferry's native MongoDB dump against the baseline a
//! user could script (pymongo raw batches into `zstd -1`), on the same data in the
//! same run: wall time, client CPU per GB, peak memory, as ratios; then Ferry's
//! restore throughput.
//!
//! Each side runs as a child process under `/usr/bin/time`, so CPU and peak RSS
//! are the client's alone (the baseline's includes its zstd processes).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Instant;

use anyhow::Context;
use ferry_dumper::mongo::{MongoOptions, dump};
use ferry_dumper::output::{Compression, JobOutput};
use ferry_runtime::config::Config;
use ferry_storage::layout::object_key;
use ferry_storage::{FsStore, Manifest, ManifestFile, ObjectStore};
use ferry_testkit::{Source, TestConfig};
use mongodb::Client;
use mongodb::bson::{DateTime, Document, RawDocumentBuf, doc, oid::ObjectId};

const BASELINE: &str = include_str!("mongo_baseline.py");

/// What one side used.
#[derive(Debug, Clone, Copy)]
struct Usage {
    wall: f64,
    cpu: f64,
    rss_mib: f64,
}

/// Runs the benchmark for each dataset size (GB).
pub async fn run(
    url: String,
    sizes: Vec<f64>,
    python: PathBuf,
    parallel: usize,
) -> anyhow::Result<()> {
    let client = Client::with_uri_str(&url).await?;
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "load average at start: {}; ferry dumps {parallel} collections at once",
        load.trim()
    );
    let mut rows = Vec::new();
    for gb in sizes {
        let db = format!("ferry_bench_{}", (gb * 100.0).round() as u64);
        let bytes = ensure_dataset(&client, &db, gb).await?;
        let work = tempfile::tempdir()?;
        let ferry_dir = work.path().join("ferry");
        let base_dir = work.path().join("baseline");
        std::fs::create_dir_all(&base_dir)?;
        let exe = std::env::current_exe()?;
        let ferry = timed(
            std::process::Command::new(&exe)
                .arg("mongo-dump-child")
                .arg("--url")
                .arg(&url)
                .arg("--db")
                .arg(&db)
                .arg("--out")
                .arg(&ferry_dir)
                .arg("--parallel")
                .arg(parallel.to_string()),
        )?;
        let script = work.path().join("baseline.py");
        std::fs::write(&script, BASELINE)?;
        let baseline = timed(
            std::process::Command::new(&python)
                .arg(&script)
                .arg(&url)
                .arg(&db)
                .arg(&base_dir),
        )?;
        let gbs = bytes as f64 / 1e9;
        println!(
            "\n{db}: {:.2} GB of BSON ({bytes} bytes)\n  ferry:    wall {:.1} s, CPU {:.1} s ({:.1} s/GB), peak RSS {:.1} MiB, spool {:.0} MB\n  baseline: wall {:.1} s, CPU {:.1} s ({:.1} s/GB), peak RSS {:.1} MiB, output {:.0} MB\n  ratios ferry/baseline: wall {:.2}x, CPU per GB {:.2}x, peak memory {:.2}x",
            gbs,
            ferry.wall,
            ferry.cpu,
            ferry.cpu / gbs,
            ferry.rss_mib,
            dir_size(&ferry_dir.join("job")) as f64 / 1e6,
            baseline.wall,
            baseline.cpu,
            baseline.cpu / gbs,
            baseline.rss_mib,
            dir_size(&base_dir) as f64 / 1e6,
            ferry.wall / baseline.wall,
            (ferry.cpu / gbs) / (baseline.cpu / gbs),
            ferry.rss_mib / baseline.rss_mib,
        );
        // Restore throughput once, on the smallest dataset: the server's insert
        // rate, not the size, decides it.
        if rows.is_empty() {
            let restore = restore_rate(&url, &db, &ferry_dir).await?;
            println!("  ferry restore: {restore:.0} documents/s");
        }
        rows.push((db, ferry, baseline));
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("\nload average at end: {}", load.trim());
    Ok(())
}

/// The child side: Ferry's dump of `db` into `out`, then the manifest it implies
/// (files and details) as `out/manifest.json`, for the restore measurement.
pub async fn child(url: String, db: String, out: PathBuf, parallel: usize) -> anyhow::Result<()> {
    let source = Config::from_toml(
        &TestConfig::new()
            .source(Source::mongodb("bench", &url, &[&db]))
            .to_toml(),
    )?
    .sources
    .remove(0);
    let output = JobOutput::new(out.join("job"), Compression::Zstd { level: 1 }, None);
    let options = MongoOptions {
        parallel_collections: parallel.max(1),
        ..Default::default()
    };
    let result = dump(&source, None, &[], &output, &options)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    // Storing the files is the uploader's work, not the dump's: the parent does it,
    // outside this process's measured CPU and memory.
    let files: Vec<ManifestFile> = result
        .files
        .iter()
        .map(|f| ManifestFile {
            name: f.name.clone(),
            object: object_key(&f.sha256),
            size: f.size,
            sha256: f.sha256.clone(),
            compression: ferry_storage::Compression::parse(&f.compression).unwrap(),
            reused: false,
            stored: None,
        })
        .collect();
    let manifest = Manifest {
        format: ferry_storage::manifest::FORMAT_VERSION,
        backup_id: "bench".into(),
        source: "bench".into(),
        engine: ferry_storage::Engine::Mongodb,
        job_id: "bench".into(),
        server_version: result.server_version,
        tool_version: result.tool_version,
        started_at: chrono::Utc::now(),
        completed_at: chrono::Utc::now(),
        databases: result.databases,
        files,
        bytes_total: 0,
        bytes_uploaded: 0,
        bytes_reused: 0,
        trace_id: None,
        mongodb: None,
        postgres: None,
        locked: false,
    };
    std::fs::write(out.join("manifest.json"), manifest.to_json())?;
    Ok(())
}

async fn restore_rate(url: &str, db: &str, ferry_dir: &Path) -> anyhow::Result<f64> {
    let manifest = Manifest::from_json(&std::fs::read(ferry_dir.join("manifest.json"))?)
        .map_err(|e| anyhow::anyhow!(e))?;
    let store = FsStore::new(&ferry_dir.join("store"), "")?;
    for f in &manifest.files {
        let body = tokio::fs::File::open(ferry_dir.join("job").join(&f.name)).await?;
        store.put(&f.object, Box::new(body)).await?;
    }
    let restored = format!("{db}_restored");
    let options = ferry::restore::mongo::MongoRestoreOptions {
        to: url.to_string(),
        rename_db: [(db.to_string(), restored.clone())].into(),
        drop: true,
        parallel_collections: 4,
        parallel_batches: 4,
        ..Default::default()
    };
    let started = Instant::now();
    let report = ferry::restore::mongo::restore(&store, &manifest, &options).await?;
    let rate = report.documents as f64 / started.elapsed().as_secs_f64();
    Client::with_uri_str(url)
        .await?
        .database(&restored)
        .drop()
        .await?;
    Ok(rate)
}

/// Runs `cmd` under `/usr/bin/time`, returning its wall time, CPU and peak RSS.
fn timed(cmd: &mut std::process::Command) -> anyhow::Result<Usage> {
    let program = cmd.get_program().to_owned();
    let args: Vec<_> = cmd.get_args().map(|a| a.to_owned()).collect();
    let started = Instant::now();
    let out = std::process::Command::new("/usr/bin/time")
        .arg("-f")
        .arg("FERRY_TIME %U %S %M")
        .arg(&program)
        .args(&args)
        .stdout(Stdio::inherit())
        .stderr(Stdio::piped())
        .output()
        .context("running /usr/bin/time")?;
    let wall = started.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        anyhow::bail!("{program:?} failed: {stderr}");
    }
    let line = stderr
        .lines()
        .rev()
        .find(|l| l.starts_with("FERRY_TIME"))
        .context("no /usr/bin/time output")?;
    let f: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0.0))
        .collect();
    Ok(Usage {
        wall,
        cpu: f[0] + f[1],
        rss_mib: f[2] / 1024.0,
    })
}

fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                total += entry.metadata().map(|m| m.len()).unwrap_or(0);
            }
        }
    }
    total
}

/// The dataset of `gb` GB on the server at `url` (generated once), by name.
pub(crate) async fn ensure_bench_dataset(url: &str, gb: f64) -> anyhow::Result<String> {
    let client = Client::with_uri_str(url).await?;
    let db = format!("ferry_bench_{}", (gb * 100.0).round() as u64);
    ensure_dataset(&client, &db, gb).await?;
    Ok(db)
}

/// Fills `db` with about `gb` GB of order-like documents in three collections,
/// unless it already holds them (a re-run reuses the data).
async fn ensure_dataset(client: &Client, db: &str, gb: f64) -> anyhow::Result<u64> {
    let database = client.database(db);
    let target = (gb * 1e9) as u64;
    let stats = database.run_command(doc! { "dbStats": 1 }).await?;
    let have = stats
        .get("dataSize")
        .and_then(|v| {
            v.as_f64()
                .or_else(|| v.as_i64().map(|i| i as f64))
                .or_else(|| v.as_i32().map(f64::from))
        })
        .unwrap_or(0.0) as u64;
    if have >= target * 95 / 100 {
        return Ok(have);
    }
    database.drop().await?;
    eprintln!("generating {gb} GB of documents in {db}...");
    let mut written = 0u64;
    let mut seq = 0u64;
    while written < target {
        for (coll, share) in [("orders", 6u64), ("customers", 3), ("events", 1)] {
            let batch: Vec<RawDocumentBuf> = (0..500 * share)
                .map(|_| {
                    seq += 1;
                    RawDocumentBuf::from_document(&document(coll, seq)).expect("a document")
                })
                .collect();
            written += batch.iter().map(|d| d.as_bytes().len() as u64).sum::<u64>();
            database
                .collection::<RawDocumentBuf>(coll)
                .insert_many(batch)
                .ordered(false)
                .await?;
        }
    }
    Ok(written)
}

/// Deterministic pseudo-random text and numbers: the same data on every run.
fn mix(seed: u64) -> u64 {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^= x >> 31;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^ (x >> 29)
}

const WORDS: [&str; 16] = [
    "ferry", "harbour", "cargo", "north", "amber", "delta", "quiet", "river", "signal", "stone",
    "violet", "window", "yellow", "zinc", "orbit", "linen",
];

fn words(seed: u64, n: usize) -> String {
    (0..n)
        .map(|i| WORDS[(mix(seed + i as u64) % 16) as usize])
        .collect::<Vec<_>>()
        .join(" ")
}

fn document(kind: &str, seq: u64) -> Document {
    let r = mix(seq);
    let when = DateTime::from_millis(1_600_000_000_000 + (r % 100_000_000_000) as i64);
    match kind {
        "orders" => doc! {
            "_id": ObjectId::new(),
            "number": seq as i64,
            "customer": { "id": (r % 100_000) as i64, "name": words(r, 2), "email": format!("c{}@example.com", r % 100_000) },
            "status": (["new", "paid", "shipped", "returned"][(r % 4) as usize]),
            "created": when,
            "items": (0..(2 + r % 5)).map(|i| doc! {
                "sku": format!("SKU-{:06}", mix(r + i) % 1_000_000),
                "name": words(r + i, 3),
                "qty": (1 + mix(r + i) % 9) as i32,
                "price": (mix(r + i) % 100_000) as f64 / 100.0,
            }).collect::<Vec<_>>(),
            "shipping": { "street": words(r + 7, 3), "city": words(r + 8, 1), "zip": format!("{:05}", r % 99_999), "country": "DE" },
            "notes": words(r + 9, 20),
            "total": (r % 1_000_000) as f64 / 100.0,
        },
        "customers" => doc! {
            "_id": (seq as i64),
            "name": words(r, 2),
            "email": format!("c{seq}@example.com"),
            "since": when,
            "tags": (0..(r % 6)).map(|i| WORDS[(mix(r + i) % 16) as usize]).collect::<Vec<_>>(),
            "address": { "street": words(r + 1, 3), "city": words(r + 2, 1), "zip": format!("{:05}", r % 99_999) },
            "bio": words(r + 3, 40),
            "score": (r % 1000) as i32,
        },
        _ => doc! {
            "_id": ObjectId::new(),
            "at": when,
            "kind": (["view", "click", "buy"][(r % 3) as usize]),
            "user": (r % 100_000) as i64,
            "path": format!("/p/{}", r % 10_000),
        },
    }
}
