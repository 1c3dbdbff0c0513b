//! The uploader against real NATS and real S3 servers (moto, Garage): the test
//! plays the dumper, writing spool files and publishing `DumpFileReady` and
//! `DumpCompleted` the way the dumper does.

use std::sync::Arc;
use std::time::Duration;

use ferry_proto::subjects::EventKind;
use ferry_proto::v1::{BackupUploaded, DumpCompleted, DumpFile, DumpFileReady, Engine};
use ferry_runtime::{Config, Outgoing, Runtime};
use ferry_storage::layout::{manifest_key, object_key};
use ferry_storage::{Manifest, ObjectStore, get_bytes};
use ferry_testkit::{FaultProxy, NatsServer, S3Server, TestConfig, unique_name, wait_until};
use rand::RngCore;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

const STEP: Duration = Duration::from_secs(60);

struct Env {
    _nats: NatsServer,
    rt: Runtime,
    dir: tempfile::TempDir,
    store: Arc<dyn ObjectStore>,
}

/// NATS, a spool and an S3 store (moto or Garage, maybe behind a proxy) under a
/// unique prefix; `spool_kind` is the `[spool] kind`.
async fn env(server: &S3Server, spool_kind: &str) -> Env {
    let nats = NatsServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let toml = TestConfig::new()
        .nats(nats.url())
        .dir_spool(&dir.path().join("spool"))
        .set("spool", "kind", spool_kind)
        .set("spool", "bucket", unique_name("spool").replace('_', "-"))
        .s3_store(server, &unique_name("uploader"), dir.path())
        .set("uploader", "part_size", "5MiB")
        .set("uploader", "parts_in_flight", 4)
        // Short, so the job of a killed uploader is redelivered within seconds.
        .set("uploader", "ack_wait", "3s")
        .retry("100ms", "1s")
        .to_toml();
    let config = Config::from_toml(&toml).unwrap_or_else(|e| panic!("{e}\n{toml}"));
    let rt = Runtime::with_client(config, nats.client().await)
        .await
        .expect("runtime");
    let store = ferry_runtime::store::open(&rt.config.storage).unwrap();
    Env {
        _nats: nats,
        rt,
        dir,
        store,
    }
}

/// A job's spool files (random bytes, so nothing is reused by accident) and its
/// events.
struct Job {
    completed: DumpCompleted,
}

impl Env {
    async fn write_job(&self, sizes: &[usize]) -> Job {
        let job_id = uuid_like();
        let spool = ferry_runtime::store::open_spool(&self.rt.config.spool, &self.rt.jetstream, 1)
            .await
            .unwrap();
        let mut files = Vec::new();
        for (i, size) in sizes.iter().enumerate() {
            let mut data = vec![0u8; *size];
            rand::rng().fill_bytes(&mut data);
            let name = format!("db/{i}.dat");
            let local = self.dir.path().join(format!("{job_id}-{i}"));
            std::fs::write(&local, &data).unwrap();
            spool.put_file(&job_id, &name, &local).await.unwrap();
            files.push(DumpFile {
                name,
                size: *size as u64,
                sha256: hex::encode(Sha256::digest(&data)),
                compression: "none".into(),
            });
        }
        let source = "orders".to_string();
        Job {
            completed: DumpCompleted {
                job_id: job_id.clone(),
                source,
                occurred_at: Some(ferry_proto::now()),
                backup_id: format!("20261122T000000Z-{}", &job_id[..8]),
                engine: Engine::Postgres as i32,
                server_version: "15".into(),
                tool_version: "test".into(),
                files,
                spool: None,
                started_at: Some(ferry_proto::now()),
                duration_ms: 1,
                databases: vec!["db".into()],
                deadline: None,
                ..Default::default()
            },
        }
    }

    async fn publish_ready(&self, job: &Job) {
        for file in &job.completed.files {
            let ready = DumpFileReady {
                job_id: job.completed.job_id.clone(),
                source: job.completed.source.clone(),
                occurred_at: Some(ferry_proto::now()),
                backup_id: job.completed.backup_id.clone(),
                file: Some(file.clone()),
                spool: None,
            };
            self.rt
                .publisher
                .publish(&Outgoing::event(
                    EventKind::FileReady,
                    &ready.source,
                    &ready,
                    format!("{}/file/{}", ready.job_id, file.name),
                ))
                .await
                .unwrap();
        }
    }

    async fn publish_completed(&self, job: &Job) {
        self.rt
            .publisher
            .publish(&Outgoing::event(
                EventKind::Dumped,
                &job.completed.source,
                &job.completed,
                format!("{}/dumped", job.completed.job_id),
            ))
            .await
            .unwrap();
    }

    fn start_uploader(
        &self,
    ) -> (
        CancellationToken,
        tokio::task::JoinHandle<anyhow::Result<()>>,
    ) {
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(ferry_uploader::run(self.rt.clone(), shutdown.clone()));
        (shutdown, task)
    }

    async fn manifest(&self, job: &Job) -> Option<Manifest> {
        let key = manifest_key(&job.completed.source, &job.completed.backup_id);
        self.store.head(&key).await.unwrap()?;
        Some(Manifest::from_json(&get_bytes(self.store.as_ref(), &key).await.unwrap()).unwrap())
    }

    async fn uploaded(&self, job: &Job) -> BackupUploaded {
        let job_id = job.completed.job_id.clone();
        let js = &self.rt.jetstream;
        wait_until("BackupUploaded", STEP, || {
            let (js, job_id) = (js.clone(), job_id.clone());
            async move { last_uploaded(&js, &job_id).await }
        })
        .await
    }

    /// Every object of the manifest is there with its size and SHA-256.
    async fn assert_intact(&self, manifest: &Manifest) {
        for file in &manifest.files {
            let bytes = get_bytes(self.store.as_ref(), &file.object).await.unwrap();
            assert_eq!(bytes.len() as u64, file.size, "{}", file.name);
            assert_eq!(
                hex::encode(Sha256::digest(&bytes)),
                file.sha256,
                "{}",
                file.name
            );
        }
    }
}

async fn last_uploaded(
    js: &async_nats::jetstream::Context,
    job_id: &str,
) -> Option<BackupUploaded> {
    use ferry_proto::Message;
    let stream = js
        .get_stream(ferry_proto::subjects::EVENTS_STREAM)
        .await
        .ok()?;
    let msg = stream
        .get_last_raw_message_by_subject(&EventKind::Uploaded.subject("orders"))
        .await
        .ok()?;
    let event = BackupUploaded::decode(msg.payload.as_ref()).ok()?;
    (event.job_id == job_id).then_some(event)
}

fn uuid_like() -> String {
    let mut b = [0u8; 16];
    rand::rng().fill_bytes(&mut b);
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

#[tokio::test]
async fn files_upload_on_file_ready_before_the_dump_completes() {
    let env = env(&S3Server::garage().await, "dir").await;
    let (shutdown, task) = env.start_uploader();
    // One small file (one PUT) and one of 3.5 parts (multipart).
    let job = env.write_job(&[1000, 18 * 1024 * 1024]).await;
    env.publish_ready(&job).await;
    for file in &job.completed.files {
        let store = env.store.clone();
        let key = object_key(&file.sha256);
        wait_until("the object, uploaded on DumpFileReady", STEP, || {
            let (store, key) = (store.clone(), key.clone());
            async move { store.head(&key).await.unwrap() }
        })
        .await;
    }
    assert!(
        env.manifest(&job).await.is_none(),
        "no manifest before DumpCompleted"
    );

    env.publish_completed(&job).await;
    let uploaded = env.uploaded(&job).await;
    let manifest = env.manifest(&job).await.expect("manifest");
    assert!(
        manifest.files.iter().all(|f| !f.reused),
        "uploaded by this job"
    );
    assert_eq!(uploaded.bytes_uploaded, uploaded.bytes_total);
    env.assert_intact(&manifest).await;
    assert!(
        env.store
            .list_multipart("objects/")
            .await
            .unwrap()
            .is_empty(),
        "no unfinished uploads"
    );
    assert!(
        !env.dir
            .path()
            .join("spool")
            .join(&job.completed.job_id)
            .exists(),
        "spool cleaned"
    );
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn nats_spool_carries_files_between_machines() {
    let env = env(&S3Server::moto().await, "nats").await;
    let (shutdown, task) = env.start_uploader();
    let job = env.write_job(&[2000, 6 * 1024 * 1024]).await;
    env.publish_ready(&job).await;
    env.publish_completed(&job).await;
    env.uploaded(&job).await;
    let manifest = env.manifest(&job).await.expect("manifest");
    env.assert_intact(&manifest).await;
    let spool = ferry_runtime::store::open_spool(&env.rt.config.spool, &env.rt.jetstream, 1)
        .await
        .unwrap();
    for file in &job.completed.files {
        assert!(
            !spool
                .has_file(&job.completed.job_id, &file.name)
                .await
                .unwrap(),
            "spool cleaned of {}",
            file.name
        );
    }
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn killed_uploader_leaves_no_manifest_and_resumes_reusing_objects() {
    let env = env(&S3Server::garage().await, "dir").await;
    let job = env
        .write_job(&[3000, 12 * 1024 * 1024, 30 * 1024 * 1024])
        .await;
    env.publish_ready(&job).await;
    env.publish_completed(&job).await;
    let (_shutdown, task) = env.start_uploader();
    // Kill it as soon as the first object is stored, mid-way through the rest.
    let small = object_key(&job.completed.files[0].sha256);
    let store = env.store.clone();
    let first = wait_until("a first object", STEP, || {
        let (store, small) = (store.clone(), small.clone());
        async move { store.head(&small).await.unwrap() }
    })
    .await;
    task.abort();
    let _ = task.await;
    assert!(
        env.manifest(&job).await.is_none(),
        "no manifest after the kill"
    );
    // The store's modification times have whole seconds: once the clock is past
    // the first object's second, storing it again would show.
    wait_until("the clock past the first object's second", STEP, || async {
        (std::time::SystemTime::now() > first.modified + std::time::Duration::from_millis(1100))
            .then_some(())
    })
    .await;

    let (shutdown, task) = env.start_uploader();
    let uploaded = env.uploaded(&job).await;
    let manifest = env.manifest(&job).await.expect("manifest after restart");
    env.assert_intact(&manifest).await;
    // The resumed job finds the object its first attempt stored and does not
    // store it again; it is this job's upload, not reuse of another backup's
    // (a fresh store's first backup reuses nothing).
    let again = env.store.head(&small).await.unwrap().expect("first object");
    assert_eq!(
        again.modified, first.modified,
        "the object stored before the kill is not uploaded again"
    );
    assert!(
        !manifest.files[0].reused,
        "the job's own earlier upload is not counted as reuse"
    );
    assert_eq!(uploaded.bytes_reused, 0);
    assert_eq!(uploaded.bytes_uploaded, uploaded.bytes_total);
    assert!(
        env.store
            .list_multipart("objects/")
            .await
            .unwrap()
            .is_empty(),
        "unfinished uploads of the killed attempt are aborted"
    );
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_store_answering_503_for_a_while_still_ends_in_a_good_backup() {
    let server = S3Server::moto().await;
    let proxy = FaultProxy::start(&server.endpoint, 25).await;
    let env = env(&server.via(&proxy), "dir").await;
    let (shutdown, task) = env.start_uploader();
    let job = env.write_job(&[100, 11 * 1024 * 1024]).await;
    env.publish_ready(&job).await;
    env.publish_completed(&job).await;
    env.uploaded(&job).await;
    assert_eq!(proxy.failed(), 25, "the store did refuse requests");
    let manifest = env.manifest(&job).await.expect("manifest");
    env.assert_intact(&manifest).await;
    shutdown.cancel();
    task.await.unwrap().unwrap();
}
