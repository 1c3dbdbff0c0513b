//! The state between stages lives in NATS, not in one process: two uploader
//! replicas that split one job's events still record what the job uploaded, and a
//! job that fails for good leaves neither spool files nor a record behind.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer};
use ferry::backup::Outcome;
use ferry_proto::Message;
use ferry_proto::subjects::{self, EventKind};
use ferry_proto::v1::{BackupUploaded, DumpCompleted, Stage};
use ferry_runtime::jobstate::{JobRecord, JobState};
use ferry_runtime::{Config, Runtime};
use ferry_storage::Manifest;
use ferry_storage::spool::keys_under;
use ferry_testkit::{NatsServer, PgCluster, S3Server, wait_until};
use futures::StreamExt;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const STEP: Duration = Duration::from_secs(120);

/// Twelve tables, as in the reported bug.
fn twelve_tables() -> String {
    (1..=12)
        .map(|i| {
            format!(
                "CREATE TABLE t{i} (id int PRIMARY KEY, v text);
                 INSERT INTO t{i} SELECT g, repeat(md5((g * {i})::text), 8) FROM generate_series(1, 2000) g;\n"
            )
        })
        .collect()
}

fn config(nats: &NatsServer, pg: &PgCluster, db: &str, dir: &Path, storage: &str) -> Config {
    let password_file = dir.join("pg-password");
    std::fs::write(&password_file, format!("{}\n", pg.password)).unwrap();
    let toml = format!(
        r#"
[nats]
url = "{nats}"

[spool]
path = "{spool}"

{storage}

[http]
listen = ""

[dumper]
pg_bin_dir = "{pg_bin}"

[[sources]]
name = "orders"
engine = "postgres"
url = "{db_url}"
password_file = "{pw}"
"#,
        nats = nats.url(),
        spool = dir.join("spool").display(),
        pg_bin = pg.bin_dir.display(),
        db_url = pg.url_without_password(db),
        pw = password_file.display(),
    );
    Config::from_toml(&toml).unwrap_or_else(|e| panic!("test config is valid: {e}\n{toml}"))
}

/// One `ferry_uploader::run` on its own NATS connection, as a separate replica.
struct Replica {
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Replica {
    async fn start(nats: &NatsServer, config: &Config) -> Replica {
        let rt = Runtime::with_client(config.clone(), nats.client().await)
            .await
            .unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(ferry_uploader::run(rt, shutdown.clone()));
        Replica { shutdown, task }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
    }
}

/// Runs one backup with its events split between two replicas: replica A alone
/// handles every `DumpFileReady` while the test holds the job's `DumpCompleted`
/// (as a slow member of the uploaders' consumer would), then A stops and replica
/// B, which saw none of the files, gets the `DumpCompleted` and commits.
async fn split_backup(
    nats: &NatsServer,
    client: &async_nats::Client,
    config: &Config,
) -> BackupUploaded {
    let js = jetstream::new(client.clone());
    let events = js.get_stream(subjects::EVENTS_STREAM).await.unwrap();
    // The uploaders' commit consumer, created before any uploader (which then
    // uses it as it is): the test is its only member until it lets go.
    let commit: consumer::PullConsumer = events
        .get_or_create_consumer(
            "ferry-uploader",
            consumer::pull::Config {
                durable_name: Some("ferry-uploader".into()),
                filter_subject: EventKind::Dumped.filter(),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(600),
                max_deliver: 6,
                max_ack_pending: config
                    .section::<ferry_uploader::config::UploaderConfig>()
                    .unwrap()
                    .concurrency as i64,
                ..Default::default()
            },
        )
        .await
        .unwrap();

    let backup = {
        let client = client.clone();
        tokio::spawn(async move { ferry::backup::now(&client, "orders", Some(STEP)).await })
    };
    // One pull request for one message: nothing of the test's keeps pulling once
    // it has the job's DumpCompleted, so the redelivery goes to replica B.
    let held = commit
        .batch()
        .max_messages(1)
        .expires(STEP)
        .messages()
        .await
        .unwrap()
        .next()
        .await
        .expect("the dump completes")
        .unwrap();
    let dumped = DumpCompleted::decode(held.payload.as_ref()).unwrap();
    assert!(!dumped.files.is_empty());

    // Replica A: every DumpFileReady of the job, and nothing else.
    let a = Replica::start(nats, config).await;
    let handled_by_a = wait_until("replica A to handle every DumpFileReady", STEP, || {
        let events = events.clone();
        async move {
            let info = events
                .get_consumer::<consumer::pull::Config>("ferry-uploader-files")
                .await
                .ok()?
                .info()
                .await
                .ok()?
                .clone();
            (info.num_pending == 0
                && info.num_ack_pending == 0
                && info.delivered.stream_sequence > 0)
                .then_some(info.delivered.consumer_sequence)
        }
    })
    .await;
    assert!(handled_by_a > 0, "replica A handled no DumpFileReady");
    a.stop().await;

    // Replica B: the commit, with none of A's memory.
    let b = Replica::start(nats, config).await;
    held.ack_with(AckKind::Nak(None)).await.unwrap();
    let uploaded = match backup.await.unwrap().unwrap() {
        Outcome::Succeeded(up) => up,
        other => panic!("the backup did not succeed: {other:?}"),
    };
    assert_eq!(uploaded.job_id, dumped.job_id);
    b.stop().await;
    let info = events
        .get_consumer::<consumer::pull::Config>("ferry-uploader")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .clone();
    assert_eq!(info.num_ack_pending, 0, "replica B acked the commit");
    uploaded
}

async fn manifest(config: &Config, up: &BackupUploaded) -> Manifest {
    let store = ferry_runtime::store::open(&config.storage).unwrap();
    let bytes = ferry_storage::get_bytes(store.as_ref(), &up.manifest_key)
        .await
        .unwrap();
    Manifest::from_json(&bytes).unwrap()
}

/// Nothing of the job is left in NATS but its committed record.
async fn assert_job_ended(js: &jetstream::Context, job_id: &str) {
    let state = JobState::open(js).await.unwrap();
    let record = state.get(job_id).await.unwrap();
    assert!(
        matches!(record, Some(JobRecord::Committed { .. })),
        "{record:?}"
    );
    let kv = js.get_key_value(subjects::JOB_STATE_BUCKET).await.unwrap();
    let claims = keys_under(&kv, &format!("{job_id}.")).await.unwrap();
    assert_eq!(claims, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_uploader_replicas_sharing_a_jobs_events_record_what_it_uploaded() {
    let nats = NatsServer::start().await;
    let pg = PgCluster::from_env();
    let db = pg.create_database("ferry_replicas").await;
    db.connect()
        .await
        .batch_execute(&twelve_tables())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let storage = format!(
        "[storage]\nkind = \"fs\"\npath = \"{}\"\n",
        dir.path().join("store").display()
    );
    let config = config(&nats, &pg, &db.name, dir.path(), &storage);
    let client = nats.client().await;
    let js = jetstream::new(client.clone());

    // Scheduler and dumper; no uploader until the split.
    let rt = Runtime::with_client(config.clone(), nats.client().await)
        .await
        .unwrap();
    let shutdown = CancellationToken::new();
    let mut workers = tokio::task::JoinSet::new();
    workers.spawn(ferry_scheduler::run(rt.clone(), shutdown.clone()));
    workers.spawn(ferry_dumper::run(rt, shutdown.clone()));

    // A fresh store: the first backup uploads everything and reuses nothing.
    let first = split_backup(&nats, &client, &config).await;
    assert_eq!(first.bytes_reused, 0, "{first:?}");
    assert_eq!(first.bytes_uploaded, first.bytes_total);
    let first_manifest = manifest(&config, &first).await;
    assert!(
        first_manifest.files.len() >= 12,
        "{:?}",
        first_manifest.files
    );
    for file in &first_manifest.files {
        assert!(!file.reused, "{} recorded as reused", file.name);
    }
    assert_eq!(first_manifest.bytes_reused, 0);
    assert_job_ended(&js, &first.job_id).await;

    // Unchanged: every file stored by the first backup is reused (pg_dump's table
    // of contents carries the dump time, so it is new).
    let second = split_backup(&nats, &client, &config).await;
    let second_manifest = manifest(&config, &second).await;
    let stored: HashSet<&str> = first_manifest
        .files
        .iter()
        .map(|f| f.sha256.as_str())
        .collect();
    let mut reused = 0;
    for file in &second_manifest.files {
        assert_eq!(
            file.reused,
            stored.contains(file.sha256.as_str()),
            "{} reused: {}",
            file.name,
            file.reused
        );
        reused += usize::from(file.reused);
    }
    assert!(reused >= 12, "only {reused} files reused");
    assert_eq!(
        second.bytes_reused + second.bytes_uploaded,
        second.bytes_total
    );
    assert!(second.bytes_reused * 2 > second.bytes_total, "{second:?}");
    assert_job_ended(&js, &second.job_id).await;

    // The spool holds nothing of the job.
    let spool = dir.path().join("spool");
    assert!(!spool.join(&second.job_id).exists());

    shutdown.cancel();
    while let Some(done) = workers.join_next().await {
        done.unwrap().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanently_failed_upload_leaves_no_spool_file_and_no_file_claim() {
    let nats = NatsServer::start().await;
    let server = S3Server::moto().await;
    let pg = PgCluster::from_env();
    let db = pg.create_database("ferry_janitor").await;
    db.connect()
        .await
        .batch_execute(&twelve_tables())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (id, secret) = server.write_key_files(dir.path());
    // A bucket that does not exist: every write is refused, for good.
    let storage = format!(
        r#"
[storage]
kind = "s3"
bucket = "ferry-missing-{missing}"
endpoint = "{endpoint}"
region = "{region}"
force_path_style = true
access_key_id_file = "{id}"
secret_access_key_file = "{secret}"
"#,
        missing = uuid::Uuid::new_v4().simple(),
        endpoint = server.endpoint,
        region = server.region,
        id = id.display(),
        secret = secret.display(),
    );
    let config = config(&nats, &pg, &db.name, dir.path(), &storage);
    let client = nats.client().await;
    let rt = Runtime::with_client(config.clone(), nats.client().await)
        .await
        .unwrap();
    let shutdown = CancellationToken::new();
    let mut workers = tokio::task::JoinSet::new();
    workers.spawn(ferry_scheduler::run(rt.clone(), shutdown.clone()));
    workers.spawn(ferry_dumper::run(rt.clone(), shutdown.clone()));
    workers.spawn(ferry_uploader::run(rt, shutdown.clone()));

    let failed = match ferry::backup::now(&client, "orders", Some(STEP))
        .await
        .unwrap()
    {
        Outcome::Failed(f) => f,
        other => panic!("the backup did not fail: {other:?}"),
    };
    assert_eq!(failed.stage, Stage::Uploader as i32, "{failed:?}");
    assert!(failed.r#final);

    let job_dir = dir.path().join("spool").join(&failed.job_id);
    let js = jetstream::new(client.clone());
    let state = JobState::open(&js).await.unwrap();
    let kv = js.get_key_value(subjects::JOB_STATE_BUCKET).await.unwrap();
    wait_until("the janitor to remove the failed job", STEP, || async {
        let record = state.get(&failed.job_id).await.unwrap();
        let keys = keys_under(&kv, &format!("{}.", failed.job_id))
            .await
            .unwrap();
        // The record is the failure's tombstone; no file claim outlives it, also
        // one an early file upload made while the janitor cleaned up.
        (!job_dir.exists() && record == Some(JobRecord::Failed) && keys.is_empty()).then_some(())
    })
    .await;
    // Nothing else is left in the spool either.
    let left: Vec<_> = std::fs::read_dir(dir.path().join("spool"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert_eq!(left, Vec::<std::path::PathBuf>::new());

    shutdown.cancel();
    while let Some(done) = workers.join_next().await {
        done.unwrap().unwrap();
    }
}
