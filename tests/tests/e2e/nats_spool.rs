//! The NATS spool end to end: a dumper and an uploader that share no disk (each has
//! its own `spool.path`) hand a real PostgreSQL dump over a JetStream object store
//! bucket into a real S3-compatible store, and the backup restores exactly.

use std::path::Path;
use std::time::Duration;

use ferry::backup::Outcome;
use ferry_e2e::SAMPLE_SQL;
use ferry_runtime::jobstate::{JobRecord, JobState};
use ferry_runtime::{Config, Runtime};
use ferry_storage::spool::{NatsSpool, Spool};
use ferry_testkit::{NatsServer, PgCluster, S3Server, TestConfig, unique_name};
use tokio_util::sync::CancellationToken;

const STEP: Duration = Duration::from_secs(120);

/// What both machines' configurations share; they differ only in the node name and
/// the spool directory.
struct Shared<'a> {
    nats: &'a NatsServer,
    server: &'a S3Server,
    pg: &'a PgCluster,
    db_name: &'a str,
    dir: &'a Path,
    prefix: &'a str,
    password_file: &'a Path,
}

/// One machine's configuration: everything shared but its own spool directory.
fn machine_config(shared: &Shared<'_>, machine: &str) -> Config {
    let Shared {
        nats,
        server,
        pg,
        db_name,
        dir,
        prefix,
        password_file,
    } = shared;
    let toml = TestConfig::new()
        .nats(nats.url())
        .nats_spool(&dir.join(machine).join("spool"), machine)
        .s3_store(server, prefix, dir)
        .pg_bin_dir(&pg.bin_dir)
        .postgres_source("orders", &pg.url_without_password(db_name), password_file)
        .to_toml();
    Config::from_toml(&toml).unwrap_or_else(|e| panic!("test config is valid: {e}\n{toml}"))
}

/// Every regular file under `dir`.
fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.file_type().unwrap().is_dir() {
                stack.push(entry.path());
            } else {
                out.push(entry.path().display().to_string());
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dumper_and_an_uploader_without_a_shared_disk_make_a_restorable_backup() {
    let nats = NatsServer::start().await;
    let server = S3Server::moto().await;
    let pg = PgCluster::from_env();
    let db = pg.create_database("ferry_nats_spool").await;
    db.connect().await.batch_execute(SAMPLE_SQL).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let password_file = dir.path().join("pg-password");
    std::fs::write(&password_file, format!("{}\n", pg.password)).unwrap();
    let prefix = unique_name("nats-spool");
    let shared = Shared {
        nats: &nats,
        server: &server,
        pg: &pg,
        db_name: &db.name,
        dir: dir.path(),
        prefix: &prefix,
        password_file: &password_file,
    };
    let (dumper_config, uploader_config) = (
        machine_config(&shared, "db-host"),
        machine_config(&shared, "upload-host"),
    );

    // The dumper on one machine; the scheduler and uploader on another.
    let client = nats.client().await;
    let shutdown = CancellationToken::new();
    let dumper_rt = Runtime::with_client(dumper_config.clone(), nats.client().await)
        .await
        .unwrap();
    let other_rt = Runtime::with_client(uploader_config.clone(), nats.client().await)
        .await
        .unwrap();
    let mut workers = tokio::task::JoinSet::new();
    workers.spawn(ferry_dumper::run(dumper_rt, shutdown.clone()));
    workers.spawn(ferry_uploader::run(other_rt.clone(), shutdown.clone()));
    workers.spawn(ferry_scheduler::run(other_rt.clone(), shutdown.clone()));

    let uploaded = match ferry::backup::now(&client, "orders", Some(STEP))
        .await
        .unwrap()
    {
        Outcome::Succeeded(up) => up,
        other => panic!("the backup did not succeed: {other:?}"),
    };
    assert!(uploaded.bytes_uploaded > 0);

    // Every object is in the store with the checksum the dumper recorded.
    let store = ferry_runtime::store::open(&uploader_config.storage).unwrap();
    let manifest = ferry::restore::find_backup(store.as_ref(), "orders", &uploaded.backup_id)
        .await
        .unwrap();
    assert!(manifest.files.len() >= 3, "{:?}", manifest.files);
    let problems = ferry::verify::verify(store.as_ref(), &manifest)
        .await
        .unwrap();
    assert!(problems.is_empty(), "{problems:?}");

    // Nothing crossed a disk: the uploader's spool directory never held a file, the
    // dumper's is empty again, and the bucket no longer holds the job's files once
    // the manifest is committed; the job's record says so.
    assert_eq!(
        files_under(&dir.path().join("upload-host")),
        Vec::<String>::new()
    );
    assert_eq!(
        files_under(&dir.path().join("db-host")),
        Vec::<String>::new()
    );
    let bucket = NatsSpool::open(&other_rt.jetstream, &uploader_config.spool.bucket, 1)
        .await
        .unwrap();
    let job_state = JobState::open(&other_rt.jetstream).await.unwrap();
    ferry_testkit::wait_until("the spool bucket to drop the job", STEP, || async {
        let record = job_state.get(&uploaded.job_id).await.unwrap();
        let mut left = !matches!(record, Some(JobRecord::Committed { .. }));
        for file in &manifest.files {
            left |= bucket.has_file(&uploaded.job_id, &file.name).await.unwrap();
        }
        (!left).then_some(())
    })
    .await;

    // And it restores to the same rows.
    let restored_dir = dir.path().join("restored");
    ferry::restore::fetch_to_dir(store.as_ref(), &manifest, &restored_dir)
        .await
        .unwrap();
    let target = pg.create_database("ferry_nats_restored").await;
    let status = tokio::process::Command::new(pg.bin_dir.join("pg_restore"))
        .arg("--no-owner")
        .arg("--exit-on-error")
        .arg("--dbname")
        .arg(pg.url(&target.name))
        .arg(restored_dir.join(&db.name))
        .status()
        .await
        .unwrap();
    assert!(status.success(), "pg_restore failed");
    assert_eq!(target.table_checksums().await, db.table_checksums().await);

    shutdown.cancel();
    while let Some(joined) = workers.join_next().await {
        joined.unwrap().unwrap();
    }
}
