//! `ferry-bench pg-dump`: Ferry's PostgreSQL dump (dumper only, into a spool
//! directory) against what an operator would run by hand, on the same database in
//! the same run: `pg_dump -Fc -Z0 | zstd -1 -T0 > file` and `pg_dump -Fc` with its
//! default compression. Each variant runs as a child process under
//! `/usr/bin/time`, which reports wall time, the CPU time of the whole process
//! tree (pg_dump's workers and zstd included) and the peak RSS of its largest
//! process. Ferry's dumper is measured on a 0.5 GB and a 2 GB database to show
//! that its memory does not grow with the data.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::Context;
use ferry_dumper::PgTools;
use ferry_dumper::output::{Compression, JobOutput};
use ferry_runtime::Config;
use ferry_testkit::{PgCluster, TestConfig};
use secrecy::SecretString;

/// Rows per generated table: about 280 MB on disk each.
const ROWS_PER_TABLE: i64 = 2_000_000;

/// One measured run.
pub(crate) struct Measure {
    pub(crate) wall: f64,
    pub(crate) cpu: f64,
    pub(crate) rss_mib: f64,
    pub(crate) bytes: u64,
}

pub async fn run(big_gb: f64, small_gb: f64, level: i32) -> anyhow::Result<()> {
    let pg = PgCluster::from_env();
    let work =
        tempfile::tempdir_in(std::env::var_os("FERRY_BENCH_DIR").unwrap_or_else(|| "/tmp".into()))?;
    let password_file = work.path().join("pw");
    std::fs::write(&password_file, &pg.password)?;
    let small = ensure_database(&pg, small_gb).await?;
    let big = ensure_database(&pg, big_gb).await?;
    let pg_dump = pg.bin_dir.join("pg_dump");

    let load_before = load_average();
    let ferry_small = ferry(&pg, &small.0, &password_file, work.path(), level).await?;
    let ferry_big = ferry(&pg, &big.0, &password_file, work.path(), level).await?;
    let out = work.path().join("zstd.dump.zst");
    let piped = measure(
        "sh",
        &[
            "-c".into(),
            format!(
                "'{}' -Fc -Z0 --dbname '{}' | zstd -1 -T0 -q -o '{}'",
                pg_dump.display(),
                pg.url_without_password(&big.0),
                out.display()
            ),
        ],
        &pg,
        &out,
    )
    .await?;
    let out = work.path().join("default.dump");
    let fc = measure(
        pg_dump.to_str().unwrap_or("pg_dump"),
        &[
            "-Fc".into(),
            "--dbname".into(),
            pg.url_without_password(&big.0),
            "-f".into(),
            out.display().to_string(),
        ],
        &pg,
        &out,
    )
    .await?;
    let load_after = load_average();

    println!(
        "pg-dump benchmark (zstd level {level} for Ferry, {} cores)",
        cores()
    );
    println!("machine load average before/after: {load_before} / {load_after}");
    println!(
        "databases: small {} ({:.2} GB), big {} ({:.2} GB)",
        small.0,
        small.1 as f64 / 1e9,
        big.0,
        big.1 as f64 / 1e9
    );
    println!(
        "{:<44} {:>9} {:>9} {:>10} {:>12}",
        "variant", "wall s", "cpu s", "peak MiB", "output MB"
    );
    for (name, m) in [
        ("ferry dumper, small db", &ferry_small),
        ("ferry dumper, big db", &ferry_big),
        ("pg_dump -Fc -Z0 | zstd -1 -T0, big db", &piped),
        ("pg_dump -Fc (default gzip), big db", &fc),
    ] {
        println!(
            "{name:<44} {:>9.1} {:>9.1} {:>10.1} {:>12.1}",
            m.wall,
            m.cpu,
            m.rss_mib,
            m.bytes as f64 / 1e6
        );
    }
    println!(
        "wall ratio ferry / (pg_dump | zstd): {:.2} (target <= 1.0)",
        ferry_big.wall / piped.wall
    );
    println!(
        "wall ratio ferry / pg_dump -Fc: {:.2} (target <= 0.35)",
        ferry_big.wall / fc.wall
    );
    println!(
        "cpu ratio ferry / (pg_dump | zstd): {:.2}; ferry / pg_dump -Fc: {:.2}",
        ferry_big.cpu / piped.cpu,
        ferry_big.cpu / fc.cpu
    );
    println!(
        "peak memory ferry big / small: {:.2} (target within 1.10); big db {:.1} MiB (target < 100)",
        ferry_big.rss_mib / ferry_small.rss_mib,
        ferry_big.rss_mib
    );
    Ok(())
}

/// A database of about `gb` GB (made once, reused by later runs).
pub(crate) async fn ensure_database(pg: &PgCluster, gb: f64) -> anyhow::Result<(String, u64)> {
    let tables = ((gb * 1e9) / 280e6).round().max(1.0) as i64;
    let name = format!("ferry_bench_{tables}x{}", ROWS_PER_TABLE / 1000);
    let admin = pg.connect("postgres").await;
    let exists = admin
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await?
        .is_some();
    if !exists {
        eprintln!("building {name}: {tables} tables of {ROWS_PER_TABLE} rows");
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await?;
        let db = pg.connect(&name).await;
        for t in 0..tables {
            db.batch_execute(&format!(
                "CREATE TABLE t{t} AS SELECT g AS id, md5(g::text) AS h, (g::bigint * 7919) % 100000 AS n, \
                 timestamptz '2026-01-01' - g * interval '1 s' AS at, \
                 repeat(md5((g % 5000)::text), 2) AS pad \
                 FROM generate_series(1, {ROWS_PER_TABLE}) g; ALTER TABLE t{t} ADD PRIMARY KEY (id)"
            ))
            .await
            .with_context(|| format!("filling {name}.t{t}"))?;
        }
        db.batch_execute("ANALYZE").await?;
    }
    let db = pg.connect(&name).await;
    let size: i64 = db
        .query_one("SELECT pg_database_size(current_database())", &[])
        .await?
        .get(0);
    Ok((name, size as u64))
}

/// Ferry's dumper in a child process (`ferry-bench pg-dump-child`).
async fn ferry(
    pg: &PgCluster,
    db: &str,
    password_file: &Path,
    work: &Path,
    level: i32,
) -> anyhow::Result<Measure> {
    let spool = work.join(format!("spool-{db}"));
    let exe = std::env::current_exe()?;
    let m = measure(
        exe.to_str().context("utf-8 path")?,
        &[
            "pg-dump-child".into(),
            "--url".into(),
            pg.url_without_password(db),
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
    let _ = std::fs::remove_dir_all(&spool);
    Ok(m)
}

/// Runs one variant under /usr/bin/time; `output` is measured, then removed.
pub(crate) async fn measure(
    program: &str,
    args: &[String],
    pg: &PgCluster,
    output: &Path,
) -> anyhow::Result<Measure> {
    let report = tempfile::NamedTempFile::new()?;
    let status = tokio::process::Command::new("/usr/bin/time")
        .arg("-f")
        .arg("%e %U %S %M")
        .arg("-o")
        .arg(report.path())
        .arg(program)
        .args(args)
        .env("PGPASSWORD", &pg.password)
        .stdin(Stdio::null())
        .status()
        .await
        .context("running /usr/bin/time (apt-get install time)")?;
    anyhow::ensure!(status.success(), "{program} failed: {status}");
    let text = std::fs::read_to_string(report.path())?;
    let nums: Vec<f64> = text
        .lines()
        .last()
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    anyhow::ensure!(nums.len() == 4, "unexpected /usr/bin/time output: {text}");
    let bytes = size_of(output);
    if output.is_dir() {
        let _ = std::fs::remove_dir_all(output);
    } else {
        let _ = std::fs::remove_file(output);
    }
    Ok(Measure {
        wall: nums[0],
        cpu: nums[1] + nums[2],
        rss_mib: nums[3] / 1024.0,
        bytes,
    })
}

fn size_of(path: &Path) -> u64 {
    if path.is_dir() {
        std::fs::read_dir(path)
            .map(|d| d.flatten().map(|e| size_of(&e.path())).sum())
            .unwrap_or(0)
    } else {
        std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
    }
}

pub(crate) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

pub(crate) fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// The child: dumps one database with Ferry's dumper code into `out`, exactly as
/// a job does, minus NATS (no announcements).
pub async fn child(
    url: &str,
    password_file: &Path,
    pg_bin_dir: PathBuf,
    out: PathBuf,
    level: i32,
) -> anyhow::Result<()> {
    let config = Config::from_toml(
        &TestConfig::new()
            .postgres_source("bench", url, password_file)
            .to_toml(),
    )?;
    let source = &config.sources[0];
    let password = SecretString::from(std::fs::read_to_string(password_file)?.trim().to_string());
    let tools = PgTools::new(Some(pg_bin_dir), None);
    let output = JobOutput::new(out.clone(), Compression::Zstd { level }, None);
    tools
        .dump(
            source,
            Some(&password),
            &[],
            &output,
            &out.join(".pg-staging"),
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}
