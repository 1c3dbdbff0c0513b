//! `ferry-bench pitr`: continuous capture under the highest write rate the test
//! server sustains on this machine, measured in one run:
//!
//! - the baseline: the workload alone (`writers` clients inserting documents and
//!   updating the ones they inserted), its operations per second;
//! - the same workload with the real `ferry-capture` binary capturing it (a child
//!   process, so its CPU and peak RSS are its own): the write rate it leaves, the
//!   capture's throughput (operations over the time until the segment holding the
//!   last one is committed), its CPU per million operations, the recovery point
//!   (now minus the newest committed segment's end, sampled every 250 ms while the
//!   workload runs) at p50 and p99, and its peak RSS after `ops` and after another
//!   `2 × ops` operations (flat, or it grows with what it captured);
//! - replay: every captured change restored through `ferry restore --at`'s code
//!   into an empty database, in operations per second, against the restore's bulk
//!   insert of as many documents (parallel unordered `insert_many`).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use ferry::restore::mongo::MongoRestoreOptions;
use ferry::restore::pitr::{self, Target};
use ferry_proto::Message;
use ferry_proto::subjects::EventKind;
use ferry_proto::v1::SegmentStored;
use ferry_storage::pitr::ClusterTime;
use ferry_storage::{Catalog, Manifest};
use ferry_testkit::{NatsServer, Source, TestConfig};
use futures::StreamExt;
use mongodb::Client;
use mongodb::bson::{Document, doc};

const SOURCE: &str = "bench";

/// What one run of the workload did.
struct Run {
    ops: usize,
    elapsed: Duration,
    /// The cluster time of the last operation.
    last: ClusterTime,
}

impl Run {
    fn rate(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }
}

/// `writers` clients, `ops` operations in all: each inserts a document, then
/// updates it (`$inc`, `$set`), so a replay's updates find their documents.
async fn workload(
    client: &Client,
    db: &str,
    phase: &str,
    ops: usize,
    writers: usize,
) -> anyhow::Result<Run> {
    let started = Instant::now();
    let per = ops / writers;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let coll = client.database(db).collection::<Document>("items");
        let client = client.clone();
        let phase = phase.to_string();
        tasks.push(tokio::spawn(async move {
            let mut session = client.start_session().await?;
            let mut last_id = String::new();
            for i in 0..per {
                if i % 3 == 0 {
                    last_id = format!("{phase}-{w}-{i}");
                    coll.insert_one(
                        doc! { "_id": &last_id, "v": i as i64, "pad": "x".repeat(100) },
                    )
                    .session(&mut session)
                    .await?;
                } else if i % 3 == 1 {
                    coll.update_one(doc! { "_id": &last_id }, doc! { "$inc": { "v": 1 } })
                        .session(&mut session)
                        .await?;
                } else {
                    coll.update_one(
                        doc! { "_id": &last_id },
                        doc! { "$set": { "s": format!("set {i}") } },
                    )
                    .session(&mut session)
                    .await?;
                }
            }
            let t = session.operation_time().expect("an operation time");
            Ok::<_, anyhow::Error>(ClusterTime::new(t.time, t.increment))
        }));
    }
    let mut last = ClusterTime::new(0, 0);
    for t in tasks {
        last = last.max(t.await??);
    }
    Ok(Run {
        ops: per * writers,
        elapsed: started.elapsed(),
        last,
    })
}

/// Runs the benchmark.
pub async fn run(
    url: Option<String>,
    ops: usize,
    writers: usize,
    span: String,
) -> anyhow::Result<()> {
    let own;
    let url = match url {
        Some(url) if url.contains('?') => url,
        Some(url) => format!("{}/?directConnection=true", url.trim_end_matches('/')),
        None => {
            own = ferry_testkit::MongoServer::start(ferry_testkit::MongoStart {
                noop_heartbeat_seconds: Some(10),
                ..Default::default()
            })
            .await;
            own.url().to_string()
        }
    };
    let client = Client::with_uri_str(&url).await?;
    let db = "ferry_bench_pitr";
    client.database(db).drop().await?;
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "load average at start: {}; {writers} writers, segment_span {span}",
        load.trim()
    );

    // 1. The workload alone.
    let baseline = workload(&client, db, "base", ops, writers).await?;
    println!(
        "\nbaseline: {} operations in {:.1} s: {:.0} ops/s (the highest rate this server sustains with {writers} writers)",
        baseline.ops,
        baseline.elapsed.as_secs_f64(),
        baseline.rate()
    );

    // 2. With capture.
    let nats = NatsServer::start().await;
    let dir = tempfile::tempdir()?;
    let dir = dir.keep();
    let store_dir = dir.join("store");
    let config = TestConfig::new()
        .nats(nats.url())
        .dir_spool(&dir.join("spool"))
        .fs_store(&store_dir)
        .set("capture", "poll", "200ms")
        .source(Source::mongodb(SOURCE, &url, &[db]).pitr(&span))
        .write(&dir.join("ferry.toml"));
    let exe = std::env::current_exe()?;
    let capture_bin = exe.with_file_name("ferry-capture");
    anyhow::ensure!(
        capture_bin.is_file(),
        "{} is missing: cargo build --release -p ferry-bench -p ferry-capture",
        capture_bin.display()
    );
    println!("capture's configuration, store and log: {}", dir.display());
    let nats_client = nats.client().await;
    let mut segments = nats_client
        .subscribe(EventKind::Segment.subject(SOURCE))
        .await?;
    let mut child = tokio::process::Command::new(&capture_bin)
        .arg("--config")
        .arg(&config)
        .env(
            "FERRY_HTTP__LISTEN",
            format!("127.0.0.1:{}", ferry_testkit::free_port()),
        )
        .env("FERRY_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.join("capture.log"))?)
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().expect("a running child");
    let newest: Arc<Mutex<Option<ClusterTime>>> = Arc::default();
    let operations = Arc::new(std::sync::atomic::AtomicU64::new(0));
    {
        let (newest, operations) = (newest.clone(), operations.clone());
        tokio::spawn(async move {
            while let Some(m) = segments.next().await {
                if let Ok(s) = SegmentStored::decode(m.payload.as_ref())
                    && let Some(end) = s.end
                {
                    *newest.lock().unwrap() = Some(ClusterTime::new(end.seconds, end.increment));
                    operations.fetch_add(s.operations, std::sync::atomic::Ordering::Relaxed);
                }
            }
        });
    }
    // Capture has started once a first change is committed.
    let probe = client.database(db).collection::<Document>("probe");
    let started = Instant::now();
    while newest.lock().unwrap().is_none() {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(120),
            "capture did not start; see {}",
            dir.join("capture.log").display()
        );
        probe
            .insert_one(doc! { "at": Utc::now().timestamp() })
            .await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // The store as the capture opens it (its prefix included).
    let parsed = ferry_runtime::Config::from_toml(&std::fs::read_to_string(&config)?)?;
    let store = ferry_runtime::store::open(&parsed.storage)?;
    let store = store.as_ref();
    let timeline = Catalog::new(store).timeline(SOURCE).await?;
    let chain_start = timeline.windows.first().map(|w| w.from).ok_or_else(|| {
        anyhow::anyhow!("capture committed a segment but the store shows no window: {timeline:?}")
    })?;

    let mut samples = Vec::new();
    let mut phases = Vec::new();
    for (phase, n) in [("one", ops), ("two", 2 * ops)] {
        let cpu0 = crate::cpu_seconds_of(&pid.to_string());
        let ops0 = operations.load(std::sync::atomic::Ordering::Relaxed);
        let running = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let sampler = {
            let (newest, running) = (newest.clone(), running.clone());
            tokio::spawn(async move {
                let mut out = Vec::new();
                while running.load(std::sync::atomic::Ordering::Relaxed) {
                    if let Some(end) = *newest.lock().unwrap() {
                        let behind =
                            (Utc::now() - end.to_datetime()).num_milliseconds() as f64 / 1000.0;
                        out.push(behind.max(0.0));
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                out
            })
        };
        let t0 = Instant::now();
        let run = workload(&client, db, phase, n, writers).await?;
        running.store(false, std::sync::atomic::Ordering::Relaxed);
        samples.extend(sampler.await?);
        while newest.lock().unwrap().is_none_or(|e| e < run.last) {
            anyhow::ensure!(
                t0.elapsed() < Duration::from_secs(1800),
                "capture did not catch up"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let caught_up = t0.elapsed();
        let captured = operations.load(std::sync::atomic::Ordering::Relaxed) - ops0;
        phases.push((
            phase,
            run.ops,
            run.rate(),
            captured as f64 / caught_up.as_secs_f64(),
            (crate::cpu_seconds_of(&pid.to_string()) - cpu0) / run.ops as f64 * 1e6,
            crate::peak_rss_mib_of(&pid.to_string()),
        ));
    }
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!("\nwith ferry-capture running:");
    for (phase, n, rate, throughput, cpu_per_m, rss) in &phases {
        println!(
            "  phase {phase}: {n} ops, workload {rate:.0} ops/s ({:.2}x the baseline), capture {throughput:.0} ops/s, CPU {cpu_per_m:.1} s per million ops, peak RSS {rss:.1} MiB",
            rate / baseline.rate()
        );
    }
    println!(
        "  recovery point while writing: p50 {:.1} s, p99 {:.1} s over {} samples (target: p99 within segment_span + 5 s)",
        crate::quantile(&samples, 0.5),
        crate::quantile(&samples, 0.99),
        samples.len()
    );
    let _ = child.start_kill();
    let _ = child.wait().await;

    // 3. Replay: every captured change into an empty database, from a base backup
    // of nothing consistent at the chain's start.
    let at = chain_start.to_datetime();
    let base: Manifest = serde_json::from_value(serde_json::json!({
        "format": 1, "backup_id": format!("{}-00000000", at.format("%Y%m%dT%H%M%SZ")), "source": SOURCE,
        "engine": "mongodb", "job_id": "bench", "server_version": "", "tool_version": "",
        "started_at": at, "completed_at": at, "databases": [db], "files": [],
        "bytes_total": 0, "bytes_uploaded": 0, "bytes_reused": 0,
        "mongodb": {
            "start_time": { "seconds": chain_start.t, "increment": chain_start.i },
            "end_time": { "seconds": chain_start.t, "increment": chain_start.i },
            "oplog_captured": true, "oplog_entries": 0,
            "feature_compatibility_version": "", "collections": [],
        },
    }))?;
    Catalog::new(store).commit(&base).await?;
    let newest = Catalog::new(store)
        .timeline(SOURCE)
        .await?
        .newest()
        .expect("captured");
    let plan = pitr::plan(store, SOURCE, Target::Op(newest), Utc::now()).await?;
    let replay_db = "ferry_bench_pitr_replay";
    client.database(replay_db).drop().await?;
    let options = MongoRestoreOptions {
        to: url.clone(),
        rename_db: [(db.to_string(), replay_db.to_string())].into(),
        parallel_collections: 4,
        parallel_batches: 4,
        ..Default::default()
    };
    let t0 = Instant::now();
    let report = pitr::restore(store, &plan, &options).await?;
    let replay = t0.elapsed();
    let replay_rate = report.segment_changes as f64 / replay.as_secs_f64();

    // The restore's insert path for as many documents.
    let inserts = client.database(replay_db).collection::<Document>("bulk");
    let docs = report.segment_changes as usize;
    let t0 = Instant::now();
    let batches: Vec<Vec<Document>> = (0..docs)
        .map(|i| doc! { "_id": i as i64, "v": i as i64, "pad": "x".repeat(100) })
        .collect::<Vec<_>>()
        .chunks(1000)
        .map(<[Document]>::to_vec)
        .collect();
    futures::stream::iter(batches)
        .map(|b| {
            let inserts = inserts.clone();
            async move { inserts.insert_many(b).ordered(false).await.map(|_| ()) }
        })
        .buffer_unordered(4)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<(), _>>()?;
    let insert_rate = docs as f64 / t0.elapsed().as_secs_f64();
    println!(
        "\nreplay: {} changes from {} segments in {:.1} s: {replay_rate:.0} ops/s; bulk insert of as many documents {insert_rate:.0} docs/s; replay / insert {:.2}x",
        report.segment_changes,
        report.segments,
        replay.as_secs_f64(),
        replay_rate / insert_rate
    );
    client.database(replay_db).drop().await?;
    client.database(db).drop().await?;
    Ok(())
}
