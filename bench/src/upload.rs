//! `ferry-bench upload`: the uploader against a real S3-compatible server.
//!
//! 1. Multipart throughput (default part size and parts in flight) against a
//!    baseline that sends the same file in one single-stream PUT.
//! 2. Overlap, with the real workers (scheduler, dumper, uploader) through a real
//!    NATS on a real PostgreSQL database: dump alone (no uploader running), then
//!    upload alone (the uploader started on the finished dump), then both together
//!    into a fresh store prefix. The factor is end-to-end / (dump + upload).
//! 3. Peak RSS of this process after the multipart run (the uploader's transfer
//!    alone) and after the pipeline (dumper, uploader and scheduler in one process,
//!    as `ferry up` runs them); the single-PUT baseline comes last because it
//!    holds the whole file in memory by design.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use ferry_storage::layout::object_key;
use ferry_storage::retry::RetryPolicy;
use ferry_storage::spool::{DirSpool, Spool};
use ferry_storage::{ObjectStore, RequestChecksum, S3Credentials, S3Options, S3Store};
use ferry_testkit::{S3Server, Source, TestConfig, unique_name};
use ferry_uploader::transfer::{FileRef, Transfer};
use rand::RngCore;
use sha2::{Digest, Sha256};

fn store(server: &S3Server, prefix: &str) -> Arc<dyn ObjectStore> {
    Arc::new(S3Store::new(S3Options {
        bucket: server.bucket.clone(),
        prefix: prefix.to_string(),
        endpoint: Some(server.endpoint.clone()),
        region: Some(server.region.clone()),
        force_path_style: true,
        credentials: S3Credentials::Static {
            access_key_id: server.access_key_id.clone(),
            secret_access_key: server.secret_access_key.clone(),
        },
        request_checksum: RequestChecksum::WhenRequired,
        max_attempts: 3,
        connect_timeout: std::time::Duration::from_secs(10),
    }))
}

struct Made {
    name: String,
    size: u64,
    sha256: String,
}

/// "Dumps" one file: generates `size` random bytes in 1 MiB chunks, hashes them and
/// writes them to the job's spool directory.
fn dump_file(dir: &std::path::Path, name: &str, size: usize) -> Made {
    use std::io::Write;
    let mut file = std::fs::File::create(dir.join(name)).expect("spool file");
    let mut hasher = Sha256::new();
    let mut chunk = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(chunk.len());
        rand::rng().fill_bytes(&mut chunk[..n]);
        hasher.update(&chunk[..n]);
        file.write_all(&chunk[..n]).expect("write");
        left -= n;
    }
    file.sync_all().expect("fsync");
    Made {
        name: name.to_string(),
        size: size as u64,
        sha256: hex::encode(hasher.finalize()),
    }
}

fn mib_s(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / (1 << 20) as f64 / secs
}

/// The uploader's settings under test (`[uploader] part_size, parts_in_flight`).
#[derive(Debug, Clone, Copy)]
pub struct Tuning {
    pub part_size: u64,
    pub parts_in_flight: usize,
}

pub async fn run(server: &str, mib: usize, pipeline_gb: f64, tuning: Tuning) -> anyhow::Result<()> {
    let Tuning {
        part_size,
        parts_in_flight,
    } = tuning;
    let server = match server {
        "moto" => S3Server::moto().await,
        "garage" => S3Server::garage().await,
        other => anyhow::bail!("--server {other}: use moto or garage"),
    };
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "upload benchmark against {} ({}), {mib} MiB, load average at start: {}",
        server.name,
        server.endpoint,
        load.trim()
    );
    let tmp = tempfile::tempdir()?;
    let spool_dir = DirSpool::new(&tmp.path().join("spool"))?;
    let spool: Arc<dyn Spool> = Arc::new(spool_dir.clone());
    let bytes = mib << 20;

    // 1. Multipart vs single PUT, same file.
    let job = "bench-big";
    let job_dir = spool_dir.job_dir(job)?;
    std::fs::create_dir_all(&job_dir)?;
    let big = dump_file(&job_dir, "big.dat", bytes);
    let transfer = Transfer::new(
        store(&server, &unique_name("bench")),
        spool.clone(),
        part_size,
        parts_in_flight,
        RetryPolicy::default(),
    );
    let file = FileRef {
        job_id: job,
        name: &big.name,
        size: big.size,
        sha256: &big.sha256,
    };
    let t = Instant::now();
    transfer
        .upload(&file, &object_key(&big.sha256))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let multipart = t.elapsed().as_secs_f64();

    let rss = crate::peak_rss_mib();

    // 2. Overlap, with the real workers.
    let pipeline = real_pipeline(&server, pipeline_gb, tuning).await?;
    let rss_pipeline = crate::peak_rss_mib();

    // Baseline: the whole file in one PUT on one connection.
    let baseline_store = store(&server, &unique_name("bench"));
    let whole = Bytes::from(std::fs::read(job_dir.join("big.dat"))?);
    let t = Instant::now();
    baseline_store
        .put_bytes("objects/baseline", whole, None)
        .await?;
    let single = t.elapsed().as_secs_f64();

    let total = bytes as u64;
    println!(
        "multipart ({} MiB parts, {parts_in_flight} in flight): {multipart:.2}s = {:.1} MiB/s",
        part_size >> 20,
        mib_s(total, multipart)
    );
    println!(
        "single-stream PUT baseline:              {single:.2}s = {:.1} MiB/s",
        mib_s(total, single)
    );
    println!(
        "throughput ratio multipart / single PUT:  {:.2}x (target >= 2x)",
        single / multipart
    );
    let Pipeline {
        database,
        dump_secs,
        upload_secs,
        e2e_secs,
        uploaded,
    } = &pipeline;
    println!(
        "pipeline on {} ({:.2} GB on disk): {:.0} MB and {:.0} MB uploaded",
        database.0,
        database.1 as f64 / 1e9,
        uploaded.0 as f64 / 1e6,
        uploaded.1 as f64 / 1e6
    );
    println!(
        "dump alone {dump_secs:.2}s + upload alone {upload_secs:.2}s = {:.2}s; dump and upload together {e2e_secs:.2}s",
        dump_secs + upload_secs
    );
    println!(
        "overlap factor end-to-end / (dump + upload): {:.2} (target <= 0.8)",
        e2e_secs / (dump_secs + upload_secs)
    );
    println!(
        "peak RSS of this process: {rss:.0} MiB after the multipart run (the uploader's transfer), {rss_pipeline:.0} MiB after the pipeline (dumper, uploader and scheduler together) (target < 150 MiB)"
    );
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("load average at end: {}", load.trim());
    Ok(())
}

/// Times of the real pipeline on one PostgreSQL database: Ferry's workers through a
/// real NATS, a real pg_dump and the S3-compatible server.
pub struct Pipeline {
    /// The database dumped and its size on disk.
    pub database: (String, u64),
    /// Request to `DumpCompleted`, with no uploader running.
    pub dump_secs: f64,
    /// Uploader start to `BackupUploaded`, for that finished dump.
    pub upload_secs: f64,
    /// Request to `BackupUploaded`, dumper and uploader running together (a fresh
    /// store prefix, so nothing is reused).
    pub e2e_secs: f64,
    /// Bytes the uploaders stored in the two runs (each).
    pub uploaded: (u64, u64),
}

/// The overlap of the real dumper and uploader: dump alone, then upload alone,
/// then both together on a new store prefix.
pub async fn real_pipeline(server: &S3Server, gb: f64, tuning: Tuning) -> anyhow::Result<Pipeline> {
    use ferry_proto::subjects::EventKind;
    use ferry_proto::v1::{BackupFailed, BackupUploaded, DumpCompleted};
    use prost::Message;
    use tokio_util::sync::CancellationToken;

    let pg = ferry_testkit::PgCluster::from_env();
    let database = crate::pg_dump::ensure_database(&pg, gb).await?;
    let nats = ferry_testkit::NatsServer::start().await;
    let work =
        tempfile::tempdir_in(std::env::var_os("FERRY_BENCH_DIR").unwrap_or_else(|| "/tmp".into()))?;
    let password = work.path().join("pg-password");
    std::fs::write(&password, &pg.password)?;
    let config = |prefix: &str| -> anyhow::Result<ferry_runtime::Config> {
        let toml = TestConfig::new()
            .nats(nats.url())
            .dir_spool(&work.path().join("spool"))
            .s3_store(server, prefix, work.path())
            .set("storage", "request_checksum", "when_required")
            .set("uploader", "part_size", tuning.part_size as i64)
            .set("uploader", "parts_in_flight", tuning.parts_in_flight as i64)
            .pg_bin_dir(&pg.bin_dir)
            .set("dumper", "compression_level", 1)
            .source(
                Source::postgres("bench", &pg.url_without_password(&database.0))
                    .password_file(&password)
                    .set("timeout", "2h"),
            )
            .to_toml();
        Ok(ferry_runtime::Config::from_toml(&toml)?)
    };
    let client = nats.client().await;
    // Every event of the source, subscribed before the first request.
    let mut events = client
        .subscribe(format!("ferry.v1.events.*.{}", "bench"))
        .await?;
    let mut next_event = async move |kind: EventKind| -> anyhow::Result<Vec<u8>> {
        let failed = EventKind::Failed.subject("bench");
        let wanted = kind.subject("bench");
        loop {
            let message = tokio::time::timeout(
                std::time::Duration::from_secs(3600),
                futures::StreamExt::next(&mut events),
            )
            .await?
            .ok_or_else(|| anyhow::anyhow!("the events subscription ended"))?;
            if message.subject.as_str() == failed {
                let f = BackupFailed::decode(message.payload.as_ref())?;
                anyhow::bail!("the benchmark backup failed: {}: {}", f.reason, f.message);
            }
            if message.subject.as_str() == wanted {
                return Ok(message.payload.to_vec());
            }
        }
    };
    let request = async |client: &async_nats::Client| -> anyhow::Result<()> {
        match ferry::backup::now(client, "bench", None).await? {
            ferry::backup::Outcome::Queued { .. } => Ok(()),
            other => anyhow::bail!("the request was not queued: {other:?}"),
        }
    };

    // 1. Dump alone: scheduler and dumper, no uploader.
    let first =
        ferry_runtime::Runtime::with_client(config(&unique_name("bench"))?, client.clone()).await?;
    let stop_first = CancellationToken::new();
    let mut workers = tokio::task::JoinSet::new();
    workers.spawn(ferry_scheduler::run(first.clone(), stop_first.clone()));
    workers.spawn(ferry_dumper::run(first.clone(), stop_first.clone()));
    let t = Instant::now();
    request(&client).await?;
    let dumped = DumpCompleted::decode(next_event(EventKind::Dumped).await?.as_slice())?;
    let dump_secs = t.elapsed().as_secs_f64();

    // 2. Upload alone: the uploader takes the finished dump's files.
    let t = Instant::now();
    workers.spawn(ferry_uploader::run(first.clone(), stop_first.clone()));
    let up1 = BackupUploaded::decode(next_event(EventKind::Uploaded).await?.as_slice())?;
    let upload_secs = t.elapsed().as_secs_f64();
    anyhow::ensure!(
        up1.job_id == dumped.job_id,
        "an unexpected job was uploaded"
    );
    stop_first.cancel();
    while let Some(done) = workers.join_next().await {
        done??;
    }

    // 3. Both together, into a new prefix: every byte is uploaded again.
    let second =
        ferry_runtime::Runtime::with_client(config(&unique_name("bench"))?, client.clone()).await?;
    let stop = CancellationToken::new();
    workers.spawn(ferry_scheduler::run(second.clone(), stop.clone()));
    workers.spawn(ferry_dumper::run(second.clone(), stop.clone()));
    workers.spawn(ferry_uploader::run(second.clone(), stop.clone()));
    let t = Instant::now();
    request(&client).await?;
    let up2 = BackupUploaded::decode(next_event(EventKind::Uploaded).await?.as_slice())?;
    let e2e_secs = t.elapsed().as_secs_f64();
    stop.cancel();
    while let Some(done) = workers.join_next().await {
        done??;
    }
    Ok(Pipeline {
        database,
        dump_secs,
        upload_secs,
        e2e_secs,
        uploaded: (up1.bytes_uploaded, up2.bytes_uploaded),
    })
}
