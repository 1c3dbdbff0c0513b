//! `ferry-bench`: benchmarks that measure Ferry and a baseline in the same run and
//! print ratios. Results go in BENCHMARKS.md; tests never assert on time.
//!
//! `ferry-bench scheduler [--sources 10000]` needs `scripts/test-services up` (for
//! a nats-server 2.10+) and starts its own NATS.
//!
//! `ferry-bench upload [--server moto|garage] [--mib 256] [--pipeline-gb 0.5]` needs
//! `scripts/test-services up` and `eval "$(scripts/test-services env)"`; it builds
//! its PostgreSQL database once and starts its own NATS.
//!
//! `ferry-bench pg-dump [--big-gb 2] [--small-gb 0.5]` needs the test PostgreSQL
//! (`FERRY_TEST_PG_URL`), builds its databases once and compares Ferry's dumper
//! with `pg_dump | zstd` and `pg_dump -Fc`.
//!
//! `ferry-bench mongo-dump [--gb 0.25 --gb 1]` needs the MongoDB test server and the
//! test venv's Python (pymongo) for the baseline.
//!
//! `ferry-bench pitr [--ops 60000]` needs the MongoDB test server and the
//! `ferry-capture` binary built beside it (`cargo build --release -p ferry-bench -p
//! ferry-capture`).
//!
//! `ferry-bench retention [--backups 10000]` needs only a disk (about 5 GB for the
//! million small objects of the default size).

mod encryption;
mod mongo;
mod pg_dump;
mod pg_physical;
mod pitr;
mod retention;
mod scheduler;
mod upload;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "ferry-bench", about = "Ferry's benchmarks")]
struct Cli {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Subcommand)]
enum Bench {
    /// The scheduler with a large fleet: registry load, fan-out, lateness, CPU, memory.
    Scheduler {
        /// Sources to register.
        #[arg(long, default_value_t = 10_000)]
        sources: usize,
    },
    /// The uploader: multipart vs one single-stream PUT, dump/upload overlap, memory.
    Upload {
        /// `moto` or `garage`.
        #[arg(long, default_value = "moto")]
        server: String,
        /// Size of the test file, in MiB.
        #[arg(long, default_value_t = 256)]
        mib: usize,
        /// Size of the PostgreSQL database of the dump/upload overlap run, in GB.
        #[arg(long, default_value_t = 0.5)]
        pipeline_gb: f64,
        /// `[uploader] part_size` in MiB (default: the uploader's).
        #[arg(long)]
        part_mib: Option<u64>,
        /// `[uploader] parts_in_flight` (default: the uploader's).
        #[arg(long)]
        parts_in_flight: Option<usize>,
    },
    /// Ferry's PostgreSQL dumper against `pg_dump | zstd` and `pg_dump -Fc`.
    PgDump {
        /// Size of the big database, in GB.
        #[arg(long, default_value_t = 2.0)]
        big_gb: f64,
        /// Size of the small database (memory flatness), in GB.
        #[arg(long, default_value_t = 0.5)]
        small_gb: f64,
        /// Ferry's zstd level (the baseline uses zstd -1).
        #[arg(long, default_value_t = 1)]
        level: i32,
    },
    /// Internal: one measured run of Ferry's dumper (spawned by `pg-dump`).
    #[command(hide = true)]
    PgDumpChild {
        #[arg(long)]
        url: String,
        #[arg(long)]
        password_file: std::path::PathBuf,
        #[arg(long)]
        pg_bin_dir: std::path::PathBuf,
        #[arg(long)]
        out: std::path::PathBuf,
        #[arg(long)]
        level: i32,
    },
    /// PostgreSQL physical: a base backup against `pg_basebackup | zstd`, memory at
    /// two sizes, `wal-push` latency, and archiving under pgbench at full speed.
    PgPhysical {
        /// pgbench scale of the small database (about 15 MB per unit).
        #[arg(long, default_value_t = 10)]
        small_scale: u32,
        /// pgbench scale of the big database.
        #[arg(long, default_value_t = 60)]
        big_scale: u32,
        /// Seconds of pgbench at full speed for the archiving run.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Ferry's zstd level (the baseline uses zstd -1).
        #[arg(long, default_value_t = 1)]
        level: i32,
    },
    /// Internal: one measured base backup by the dumper (spawned by `pg-physical`).
    #[command(hide = true)]
    PgPhysicalChild {
        #[arg(long)]
        url: String,
        #[arg(long)]
        password_file: std::path::PathBuf,
        #[arg(long)]
        pg_bin_dir: std::path::PathBuf,
        #[arg(long)]
        out: std::path::PathBuf,
        #[arg(long)]
        level: i32,
    },
    /// MongoDB dump: Ferry vs pymongo raw batches into `zstd -1`; restore rate.
    MongoDump {
        /// The server (default: the test server).
        #[arg(
            long,
            env = "FERRY_TEST_MONGO_URL",
            default_value = "mongodb://127.0.0.1:57017"
        )]
        url: String,
        /// Dataset sizes in GB (each its own database, generated once and reused).
        #[arg(long = "gb", default_values_t = [0.25, 1.0])]
        sizes: Vec<f64>,
        /// The Python with pymongo for the baseline.
        #[arg(long, default_value = "python3")]
        python: std::path::PathBuf,
        /// Collections Ferry dumps at once (`dumper.mongo_parallel_collections`).
        #[arg(long, default_value_t = 4)]
        parallel: usize,
    },
    /// (internal) Ferry's side of mongo-dump, run as a child process.
    #[command(hide = true)]
    MongoDumpChild {
        #[arg(long)]
        url: String,
        #[arg(long)]
        db: String,
        #[arg(long)]
        out: std::path::PathBuf,
        #[arg(long)]
        parallel: usize,
    },
    /// Continuous capture (the real ferry-capture binary) under the highest write
    /// rate the MongoDB test server sustains: throughput, CPU, recovery point,
    /// memory; then replay against bulk inserts.
    Pitr {
        /// The server (default: a SecantusDB server of its own, with mongod's
        /// 10 s no-op heartbeat, so earlier tests' data cannot slow it).
        #[arg(long)]
        url: Option<String>,
        /// Operations of the first phase (the second makes twice as many).
        #[arg(long, default_value_t = 60_000)]
        ops: usize,
        /// Concurrent writers.
        #[arg(long, default_value_t = 4)]
        writers: usize,
        /// The source's `segment_span`.
        #[arg(long, default_value = "10s")]
        span: String,
    },
    /// What client-side encryption costs a backup: a dump, then its files stored
    /// through the uploader plain and encrypted, CPU and wall of each.
    Encryption {
        /// `postgres` or `mongodb`.
        #[arg(long, default_value = "postgres")]
        engine: String,
        /// Size of the database, in GB (generated once, reused).
        #[arg(long, default_value_t = 1.0)]
        gb: f64,
        /// The MongoDB server, for `--engine mongodb`.
        #[arg(
            long,
            env = "FERRY_TEST_MONGO_URL",
            default_value = "mongodb://127.0.0.1:57017"
        )]
        mongo_url: String,
    },
    /// Internal: stores a dump's files through the uploader (spawned by `encryption`).
    #[command(hide = true)]
    StoreChild {
        #[arg(long)]
        spool: std::path::PathBuf,
        #[arg(long)]
        files: std::path::PathBuf,
        #[arg(long)]
        store: std::path::PathBuf,
        #[arg(long)]
        seal: bool,
    },
    /// Retention of one source with 10,000 backups and 1,000,000 objects (fs store).
    Retention {
        /// Backups of the source (each references 100 objects).
        #[arg(long, default_value_t = 10_000)]
        backups: usize,
        /// Where to generate the store (default: a temporary directory).
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Logs at warn unless FERRY_LOG says otherwise: the figures are the output.
    let _telemetry = ferry_telemetry::init(&ferry_telemetry::TelemetryOptions {
        service_name: "ferry-bench".into(),
        ..Default::default()
    })?;
    match Cli::parse().bench {
        Bench::Scheduler { sources } => scheduler::run(sources).await,
        Bench::Upload {
            server,
            mib,
            pipeline_gb,
            part_mib,
            parts_in_flight,
        } => {
            let defaults = ferry_uploader::config::UploaderConfig::default();
            let tuning = upload::Tuning {
                part_size: part_mib.map_or(defaults.part_size.0, |m| m << 20),
                parts_in_flight: parts_in_flight.unwrap_or(defaults.parts_in_flight),
            };
            upload::run(&server, mib, pipeline_gb, tuning).await
        }
        Bench::PgDump {
            big_gb,
            small_gb,
            level,
        } => pg_dump::run(big_gb, small_gb, level).await,
        Bench::PgDumpChild {
            url,
            password_file,
            pg_bin_dir,
            out,
            level,
        } => pg_dump::child(&url, &password_file, pg_bin_dir, out, level).await,
        Bench::PgPhysical {
            small_scale,
            big_scale,
            seconds,
            level,
        } => pg_physical::run(small_scale, big_scale, seconds, level).await,
        Bench::PgPhysicalChild {
            url,
            password_file,
            pg_bin_dir,
            out,
            level,
        } => pg_physical::child(&url, &password_file, pg_bin_dir, out, level).await,
        Bench::MongoDump {
            url,
            sizes,
            python,
            parallel,
        } => mongo::run(url, sizes, python, parallel).await,
        Bench::MongoDumpChild {
            url,
            db,
            out,
            parallel,
        } => mongo::child(url, db, out, parallel).await,
        Bench::Retention { backups, dir } => retention::run(backups, dir).await,
        Bench::Encryption {
            engine,
            gb,
            mongo_url,
        } => encryption::run(&engine, gb, &mongo_url).await,
        Bench::StoreChild {
            spool,
            files,
            store,
            seal,
        } => encryption::store_child(spool, files, store, seal).await,
        Bench::Pitr {
            url,
            ops,
            writers,
            span,
        } => pitr::run(url, ops, writers, span).await,
    }
}

/// CPU time (user + system) of this process so far, in seconds.
pub fn cpu_seconds() -> f64 {
    cpu_seconds_of("self")
}

/// CPU time (user + system) of process `pid` (or `self`) so far, in seconds.
pub fn cpu_seconds_of(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields 14 and 15 (utime, stime) in clock ticks, after the command in parentheses.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// Peak resident memory of this process, in MiB.
pub fn peak_rss_mib() -> f64 {
    peak_rss_mib_of("self")
}

/// Peak RSS of process `pid` (or `self`), in MiB.
pub fn peak_rss_mib_of(pid: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// The value at quantile `q` of sorted `values`.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i]
}
