//! `ferry-bench pg-physical`: physical PostgreSQL backups and WAL archiving on a
//! cluster of the bench's own (initdb, archiving through the built `ferry
//! wal-push` into an fs store), measured against what an operator would run by
//! hand, in the same run:
//!
//! - a base backup by Ferry's dumper code (child process under `/usr/bin/time`)
//!   against `pg_basebackup -D - -Ft -X none | zstd -1 -T0`, on the big database;
//!   Ferry's peak RSS on a small and the big one (memory must not grow with data);
//! - `ferry wal-push` latency per 16 MiB segment (the whole command PostgreSQL
//!   runs, process start included), p50 and p99 over real segments;
//! - whether archiving keeps up with pgbench at full speed: the archiver's backlog
//!   (`.ready` files) sampled through the run, and how long it takes to drain.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use ferry_dumper::PgTools;
use ferry_dumper::output::{Compression, JobOutput};
use ferry_runtime::Config;
use ferry_testkit::{OwnRoot, PgCluster, TestConfig};
use secrecy::SecretString;

use crate::pg_dump::{Measure, measure};

/// The archive's source name.
const SOURCE: &str = "bench";

pub async fn run(small_scale: u32, big_scale: u32, seconds: u64, level: i32) -> anyhow::Result<()> {
    let shared = PgCluster::from_env();
    let ferry = std::env::current_exe()?
        .parent()
        .context("bench binary directory")?
        .join("ferry");
    anyhow::ensure!(
        ferry.is_file(),
        "{} is missing: cargo build --release -p ferry -p ferry-bench",
        ferry.display()
    );
    let root = OwnRoot::new(&shared.bin_dir);
    let store = root.path.join("store");
    std::fs::create_dir_all(&store)?;
    let config = root.path.join("ferry.toml");
    TestConfig::new().fs_store(&store).write(&config);
    root.chown(&root.path);
    let archive = format!(
        "'{} --config {} wal-push --source {SOURCE} %p'",
        ferry.display(),
        config.display()
    );
    let cluster = root.init(
        "primary",
        &[
            ("wal_level", "replica".into()),
            ("archive_mode", "on".into()),
            ("archive_command", archive),
            ("max_wal_senders", "4".into()),
            ("shared_buffers", "256MB".into()),
            ("max_wal_size", "4GB".into()),
        ],
    );
    root.start(&cluster.data, None);
    let pg = cluster.pg();
    let password_file = root.path.join("pw");
    std::fs::write(&password_file, &pg.password)?;
    let admin = pg.connect("postgres").await;

    let mut sizes = Vec::new();
    for scale in [small_scale, big_scale] {
        let db = format!("bench_s{scale}");
        admin
            .batch_execute(&format!("CREATE DATABASE {db}"))
            .await?;
        eprintln!("pgbench -i -s {scale} {db}");
        pgbench(&pg, &db, &["-i", "-q", "-s", &scale.to_string()]).await?;
        sizes.push(cluster_size(&admin).await?);
    }
    let load_before = crate::pg_dump::load_average();
    let work = root.path.join("work");
    std::fs::create_dir_all(&work)?;
    // A CHECKPOINT before each run, so no run pays for flushing what the one
    // before (or pgbench -i) left dirty: each backup's own fast checkpoint is
    // then as cheap for Ferry as for the baseline. Two rounds, the baseline
    // first in one and Ferry first in the other; the best of each is reported.
    let mut ferry_runs = Vec::new();
    let mut baseline_runs = Vec::new();
    let out = work.join("baseline.tar.zst");
    for round in 0..2 {
        for ferry_first in [round == 1, round == 0] {
            admin.batch_execute("CHECKPOINT").await?;
            if ferry_first {
                ferry_runs.push(base_backup_child(&pg, &password_file, &work, level).await?);
            } else {
                baseline_runs.push(
                    measure(
                        "sh",
                        &[
                            "-c".into(),
                            format!(
                                "'{}' -D - -Ft -X none -c fast -w -d '{}' | zstd -1 -T0 -q -o '{}'",
                                pg.bin_dir.join("pg_basebackup").display(),
                                pg.url_without_password("postgres"),
                                out.display()
                            ),
                        ],
                        &pg,
                        &out,
                    )
                    .await?,
                );
            }
        }
    }
    let best = |runs: Vec<Measure>| {
        runs.into_iter()
            .min_by(|a, b| a.wall.total_cmp(&b.wall))
            .expect("two runs")
    };
    let ferry_big = best(ferry_runs);
    let baseline = best(baseline_runs);
    // Memory flatness: the same backup after the big database is dropped.
    admin
        .batch_execute(&format!("DROP DATABASE bench_s{big_scale}"))
        .await?;
    admin.batch_execute("CHECKPOINT").await?;
    let small_size = cluster_size(&admin).await?;
    let ferry_small = base_backup_child(&pg, &password_file, &work, level).await?;

    // wal-push latency, on real segments of this cluster.
    let db = format!("bench_s{small_scale}");
    pgbench(&pg, &db, &["-n", "-c", "2", "-j", "2", "-T", "20"]).await?;
    let segments = copy_segments(&cluster.data, &work.join("segments"), 30)?;
    let mut latencies = Vec::new();
    for seg in &segments {
        let started = Instant::now();
        let out = tokio::process::Command::new(&ferry)
            .arg("--config")
            .arg(&config)
            .args(["wal-push", "--source", "latency"])
            .arg(seg)
            .output()
            .await?;
        anyhow::ensure!(
            out.status.success(),
            "wal-push: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        latencies.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    latencies.sort_by(f64::total_cmp);

    // Archiving under pgbench at full speed.
    let status_dir = cluster.data.join("pg_wal/archive_status");
    let lsn_before = current_lsn(&admin).await?;
    let failed_before = archiver_failures(&admin).await?;
    let bench = {
        let pg = pg.clone();
        let db = db.clone();
        let secs = seconds.to_string();
        tokio::spawn(
            async move { pgbench(&pg, &db, &["-n", "-c", "4", "-j", "2", "-T", &secs]).await },
        )
    };
    let mut max_ready = 0usize;
    let mut samples = Vec::new();
    let started = Instant::now();
    while !bench.is_finished() {
        let ready = ready_count(&status_dir);
        max_ready = max_ready.max(ready);
        samples.push(ready);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    bench.await??;
    let run_secs = started.elapsed().as_secs_f64();
    let lsn_after = current_lsn(&admin).await?;
    let drained = Instant::now();
    let mut drain_secs = None;
    while drained.elapsed() < Duration::from_secs(300) {
        if ready_count(&status_dir) == 0 {
            drain_secs = Some(drained.elapsed().as_secs_f64());
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let failed = archiver_failures(&admin).await? - failed_before;
    let wal_mb = (lsn_after - lsn_before) as f64 / 1e6;
    let load_after = crate::pg_dump::load_average();

    println!("pg-physical benchmark ({} cores)", crate::pg_dump::cores());
    println!("machine load average before/after: {load_before} / {load_after}");
    println!(
        "cluster: {:.2} GB (pgbench scales {small_scale} and {big_scale}), {:.2} GB with the big one dropped",
        sizes[1] as f64 / 1e9,
        small_size as f64 / 1e9
    );
    println!(
        "{:<50} {:>8} {:>8} {:>9} {:>10}",
        "variant", "wall s", "cpu s", "peak MiB", "output MB"
    );
    for (name, m) in [
        ("ferry base backup (dumper), small cluster", &ferry_small),
        ("ferry base backup (dumper), big cluster", &ferry_big),
        ("pg_basebackup -Ft -X none | zstd -1 -T0, big", &baseline),
        // (best of two runs each, alternating which goes first)
    ] {
        println!(
            "{name:<50} {:>8.1} {:>8.1} {:>9.1} {:>10.1}",
            m.wall,
            m.cpu,
            m.rss_mib,
            m.bytes as f64 / 1e6
        );
    }
    println!(
        "wall ratio ferry / (pg_basebackup | zstd): {:.2} (target <= 1.0)",
        ferry_big.wall / baseline.wall
    );
    println!(
        "peak memory ferry big / small: {:.2} (flat: within 1.10)",
        ferry_big.rss_mib / ferry_small.rss_mib
    );
    println!(
        "wal-push per 16 MiB segment ({} segments, process start included): p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        latencies.len(),
        crate::quantile(&latencies, 0.5),
        crate::quantile(&latencies, 0.99),
        latencies.last().copied().unwrap_or(f64::NAN)
    );
    println!(
        "archiving under pgbench -c 4 -j 2 for {run_secs:.0} s: {wal_mb:.0} MB of WAL ({:.1} MB/s, {:.2} segments/s); archiver backlog max {max_ready} segments, mean {:.1}; drained {} after the run; {failed} failed attempts",
        wal_mb / run_secs,
        wal_mb / run_secs / 16.777,
        samples.iter().sum::<usize>() as f64 / samples.len().max(1) as f64,
        drain_secs.map_or("NOT within 300 s".to_string(), |s| format!("in {s:.1} s"))
    );
    println!(
        "keeps up: {}",
        if drain_secs.is_some() && failed == 0 && max_ready < 16 {
            "yes (the backlog stays bounded and drains)"
        } else {
            "NO"
        }
    );
    root.stop(&cluster.data);
    Ok(())
}

/// The child: one base backup with the dumper's code into `out` (no NATS).
pub async fn child(
    url: &str,
    password_file: &Path,
    pg_bin_dir: PathBuf,
    out: PathBuf,
    level: i32,
) -> anyhow::Result<()> {
    let toml = TestConfig::new()
        .source(
            ferry_testkit::Source::postgres("bench", url)
                .password_file(password_file)
                .set("mode", "physical"),
        )
        .to_toml();
    let config = Config::from_toml(&toml)?;
    let source = &config.sources[0];
    let password = SecretString::from(std::fs::read_to_string(password_file)?.trim().to_string());
    let tools = PgTools::new(Some(pg_bin_dir), None);
    let output = JobOutput::new(out, Compression::Zstd { level }, None);
    tools
        .base_backup(source, Some(&password), &output)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

async fn base_backup_child(
    pg: &PgCluster,
    password_file: &Path,
    work: &Path,
    level: i32,
) -> anyhow::Result<Measure> {
    let spool = work.join("spool");
    let exe = std::env::current_exe()?;
    let m = measure(
        exe.to_str().context("utf-8 path")?,
        &[
            "pg-physical-child".into(),
            "--url".into(),
            pg.url_without_password("postgres"),
            "--password-file".into(),
            password_file.display().to_string(),
            "--pg-bin-dir".into(),
            pg.bin_dir.display().to_string(),
            "--out".into(),
            spool.display().to_string(),
            "--level".into(),
            level.to_string(),
        ],
        pg,
        &spool,
    )
    .await?;
    Ok(m)
}

async fn pgbench(pg: &PgCluster, db: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = tokio::process::Command::new(pg.bin_dir.join("pgbench"))
        .args(args)
        .args([
            "-h",
            &pg.host,
            "-p",
            &pg.port.to_string(),
            "-U",
            &pg.user,
            db,
        ])
        .env("PGPASSWORD", &pg.password)
        .output()
        .await?;
    anyhow::ensure!(
        out.status.success(),
        "pgbench {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

async fn cluster_size(admin: &tokio_postgres::Client) -> anyhow::Result<u64> {
    let size: i64 = admin
        .query_one(
            "SELECT sum(pg_database_size(oid))::int8 FROM pg_database",
            &[],
        )
        .await?
        .get(0);
    Ok(size as u64)
}

async fn current_lsn(admin: &tokio_postgres::Client) -> anyhow::Result<i64> {
    Ok(admin
        .query_one(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::int8",
            &[],
        )
        .await?
        .get(0))
}

async fn archiver_failures(admin: &tokio_postgres::Client) -> anyhow::Result<i64> {
    Ok(admin
        .query_one("SELECT failed_count FROM pg_stat_archiver", &[])
        .await?
        .get(0))
}

fn ready_count(status_dir: &Path) -> usize {
    std::fs::read_dir(status_dir)
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".ready"))
                .count()
        })
        .unwrap_or(0)
}

/// Copies up to `n` complete segments out of `pg_wal` (they are real WAL).
fn copy_segments(data: &Path, to: &Path, n: usize) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(to)?;
    let mut names: Vec<String> = std::fs::read_dir(data.join("pg_wal"))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.len() == 24 && n.bytes().all(|b| b.is_ascii_hexdigit()))
        .collect();
    names.sort();
    let mut out = Vec::new();
    for name in names.into_iter().take(n) {
        let dest = to.join(&name);
        std::fs::copy(data.join("pg_wal").join(&name), &dest)?;
        out.push(dest);
    }
    anyhow::ensure!(!out.is_empty(), "no segment in pg_wal to push");
    Ok(out)
}
