//! `ferry-bench upload`: the uploader against a real S3-compatible server.
//!
//! 1. Multipart throughput (default part size and parts in flight) against a
//!    baseline that sends the same file in one single-stream PUT.
//! 2. Overlap: a simulated dump that produces files one after the other (each
//!    generated, SHA-256'd and written to the spool: real CPU and disk work), then
//!    uploaded, measured three ways: dump alone, upload alone, and dump with each
//!    file uploaded as soon as it is complete (what `DumpFileReady` gives the
//!    uploader). The factor is end-to-end / (dump + upload).
//! 3. Peak RSS of this process after the uploader's runs (before the baseline,
//!    which holds the whole file in memory by design).

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use ferry_storage::layout::object_key;
use ferry_storage::retry::RetryPolicy;
use ferry_storage::spool::{DirSpool, Spool};
use ferry_storage::{ObjectStore, RequestChecksum, S3Credentials, S3Options, S3Store};
use ferry_testkit::{S3Server, unique_name};
use ferry_uploader::Jobs;
use ferry_uploader::transfer::{FileRef, Transfer};
use rand::RngCore;
use sha2::{Digest, Sha256};

/// The uploader's defaults (`[uploader]`).
const PART_SIZE: u64 = 8 << 20;
const PARTS_IN_FLIGHT: usize = 8;

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

pub async fn run(server: &str, mib: usize, files: usize) -> anyhow::Result<()> {
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
        PART_SIZE,
        PARTS_IN_FLIGHT,
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

    // 2. Overlap.
    let per_file = bytes / files.max(1);
    let overlap_store = store(&server, &unique_name("bench"));
    let run_dump = |job: &str| -> anyhow::Result<Vec<Made>> {
        let dir = spool_dir.job_dir(job)?;
        std::fs::create_dir_all(&dir)?;
        Ok((0..files)
            .map(|i| dump_file(&dir, &format!("t{i}.dat"), per_file))
            .collect())
    };
    let t = Instant::now();
    let made = tokio::task::block_in_place(|| run_dump("bench-seq"))?;
    let dump_secs = t.elapsed().as_secs_f64();
    let transfer = Transfer::new(
        overlap_store.clone(),
        spool.clone(),
        PART_SIZE,
        PARTS_IN_FLIGHT,
        RetryPolicy::default(),
    );
    let jobs = Jobs::default();
    let t = Instant::now();
    upload_all(&transfer, &jobs, "bench-seq", &made).await?;
    let upload_secs = t.elapsed().as_secs_f64();

    // End to end: the "dumper" runs on a blocking thread and hands each finished
    // file over a channel; uploads start at once, as on DumpFileReady.
    let transfer = Transfer::new(
        store(&server, &unique_name("bench")),
        spool.clone(),
        PART_SIZE,
        PARTS_IN_FLIGHT,
        RetryPolicy::default(),
    );
    let jobs = Jobs::default();
    let t = Instant::now();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Made>(files.max(1));
    let dir = spool_dir.job_dir("bench-e2e")?;
    std::fs::create_dir_all(&dir)?;
    let dumper = tokio::task::spawn_blocking(move || {
        for i in 0..files {
            let made = dump_file(&dir, &format!("t{i}.dat"), per_file);
            if tx.blocking_send(made).is_err() {
                break;
            }
        }
    });
    let mut uploads = tokio::task::JoinSet::new();
    while let Some(made) = rx.recv().await {
        let (transfer, jobs) = (transfer.clone(), jobs.clone());
        uploads.spawn(async move { upload_all(&transfer, &jobs, "bench-e2e", &[made]).await });
    }
    dumper.await?;
    while let Some(r) = uploads.join_next().await {
        r??;
    }
    let e2e_secs = t.elapsed().as_secs_f64();
    let rss = crate::peak_rss_mib();

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
        "multipart ({} MiB parts, {PARTS_IN_FLIGHT} in flight): {multipart:.2}s = {:.1} MiB/s",
        PART_SIZE >> 20,
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
    println!(
        "dump alone {dump_secs:.2}s + upload alone {upload_secs:.2}s = {:.2}s; dump with overlapped upload {e2e_secs:.2}s",
        dump_secs + upload_secs
    );
    println!(
        "overlap factor end-to-end / (dump + upload): {:.2} (target <= 0.8)",
        e2e_secs / (dump_secs + upload_secs)
    );
    println!(
        "uploader peak RSS (whole process, before the baseline): {rss:.0} MiB (target < 150 MiB)"
    );
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("load average at end: {}", load.trim());
    Ok(())
}

async fn upload_all(
    transfer: &Transfer,
    jobs: &Jobs,
    job: &str,
    made: &[Made],
) -> anyhow::Result<()> {
    for m in made {
        let file = FileRef {
            job_id: job,
            name: &m.name,
            size: m.size,
            sha256: &m.sha256,
        };
        jobs.ensure(transfer, &file)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    Ok(())
}
