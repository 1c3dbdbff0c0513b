//! The retention tests' world: a real NATS for the leases, a real store, and
//! backups written the way the uploader writes them (objects first, manifest last).

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use ferry_retention::{Plan, Retention};
use ferry_runtime::config::SourceConfig;
use ferry_runtime::{Config, Runtime};
use ferry_storage::layout::{BACKUPS_PREFIX, OBJECTS_PREFIX, manifest_key, object_key};
use ferry_storage::{
    Body, Catalog, ListPages, Manifest, ObjectMeta, ObjectStore, StorageError, get_bytes,
};
use ferry_testkit::{NatsServer, S3Server, Source, TestConfig};
use futures::TryStreamExt;
use sha2::{Digest, Sha256};

/// The garbage-collection grace period of the tests.
const GRACE: Duration = Duration::from_secs(2);

/// The store kinds every scenario runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    /// A local directory.
    Fs,
    /// moto, the S3 emulator of the test services.
    Moto,
    /// Garage, a real S3-compatible object store, from the test services.
    Garage,
}

impl StoreKind {
    pub fn all() -> Vec<StoreKind> {
        vec![StoreKind::Fs, StoreKind::Moto, StoreKind::Garage]
    }
}

pub struct Env {
    _nats: NatsServer,
    rt: Runtime,
    pub store: Arc<dyn ObjectStore>,
    _dir: tempfile::TempDir,
}

impl Env {
    /// A NATS server, a store of `kind`, and a source `orders` with `policy`.
    pub async fn start(kind: StoreKind, policy: &str) -> Env {
        Self::start_with(kind, policy, "0s").await
    }

    /// `start`, with the worker's periodic sweep every `sweep_interval`.
    pub async fn start_with(kind: StoreKind, policy: &str, sweep_interval: &str) -> Env {
        let nats = NatsServer::start().await;
        let dir = tempfile::tempdir().unwrap();
        let config = TestConfig::new()
            .nats(nats.url())
            .dir_spool(&dir.path().join("spool"));
        let config = match kind {
            StoreKind::Fs => config.fs_store(&dir.path().join("store")),
            StoreKind::Moto => config.s3_store(
                &S3Server::moto().await,
                &ferry_testkit::unique_name("retention"),
                dir.path(),
            ),
            StoreKind::Garage => config.s3_store(
                &S3Server::garage().await,
                &ferry_testkit::unique_name("retention"),
                dir.path(),
            ),
        };
        // `policy` is an inline TOML table, as a user writes it after `retention =`.
        let policy = toml::from_str::<toml::Table>(&format!("policy = {policy}"))
            .unwrap_or_else(|e| panic!("retention policy {policy}: {e}"))
            .remove("policy")
            .unwrap();
        let toml = config
            // Short, so a killed run's leases expire quickly.
            .set("dumper", "lease_ttl", "3s")
            .set("retention", "gc_grace", format!("{}s", GRACE.as_secs()))
            .set("retention", "sweep_interval", sweep_interval)
            .source(
                Source::postgres("orders", "postgres://backup@127.0.0.1:1/orders")
                    .set("timeout", "1s")
                    .set("retention", policy),
            )
            // A MongoDB source with capture on: its point-in-time records expire
            // with its backups.
            .source(
                Source::mongodb("catalog", "mongodb://127.0.0.1:1/", &["shop"])
                    .set("timeout", "1s")
                    .pitr("10m")
                    .keep_last(2),
            )
            .to_toml();
        let config = Config::from_toml(&toml).unwrap_or_else(|e| panic!("{e}\n{toml}"));
        let client = nats.client().await;
        let rt = Runtime::with_client(config.clone(), client).await.unwrap();
        let store = ferry_runtime::store::open(&config.storage).unwrap();
        Env {
            _nats: nats,
            rt,
            store,
            _dir: dir,
        }
    }

    /// The runtime the worker would run with.
    pub fn runtime(&self) -> Runtime {
        self.rt.clone()
    }

    pub fn source(&self, name: &str) -> SourceConfig {
        self.rt.sources.get(name).expect("configured source")
    }

    pub async fn retention(&self, store: Arc<dyn ObjectStore>) -> Retention {
        Retention::new(self.rt.clone(), store).await.unwrap()
    }

    /// What the planner says for `source` at `now` (the dry run).
    pub async fn plan(&self, source: &str, now: DateTime<Utc>) -> Plan {
        let backups = ferry_retention::backups_of(&Catalog::new(self.store.as_ref()), source)
            .await
            .unwrap();
        let config = &self.rt.config;
        let s = self.source(source);
        ferry_retention::plan(
            &backups,
            config
                .section::<ferry_retention::config::RetentionConfig>()
                .unwrap()
                .policy_for(&s),
            chrono_tz::Tz::UTC,
            now,
        )
    }

    /// Backup `i` at `at`: an object every backup shares, one shared by the pair
    /// `i / 2`, and one of its own.
    pub async fn backup(&self, source: &str, at: DateTime<Utc>, i: usize) -> String {
        let id = format!("{}-{:08x}", at.format("%Y%m%dT%H%M%SZ"), i);
        let contents = [
            b"shared by every backup".to_vec(),
            format!("shared by pair {}", i / 2).into_bytes(),
            format!("only in backup {i}").into_bytes(),
        ];
        let mut files = Vec::new();
        for (n, content) in contents.iter().enumerate() {
            let key = put_object(self.store.as_ref(), content).await;
            files.push(serde_json::json!({
                "name": format!("db/{n}.dat"),
                "object": key,
                "size": content.len(),
                "sha256": hex::encode(Sha256::digest(content)),
                "compression": "none",
                "reused": false,
            }));
        }
        let manifest = serde_json::json!({
            "format": 1, "backup_id": id, "source": source, "engine": "postgres",
            "job_id": format!("job-{i}"), "server_version": "15", "tool_version": "pg_dump 15",
            "started_at": at, "completed_at": at, "databases": ["db"], "files": files,
            "bytes_total": 0, "bytes_uploaded": 0, "bytes_reused": 0,
        });
        let m: Manifest = serde_json::from_value(manifest).expect("a valid manifest");
        assert!(
            self.store
                .put_if_absent(&manifest_key(source, &id), m.to_json().into())
                .await
                .unwrap()
        );
        id
    }

    /// A MongoDB backup `i` of `source` at `at` whose consistent point is the
    /// cluster time `point.1`.
    pub async fn mongo_backup(
        &self,
        source: &str,
        at: DateTime<Utc>,
        i: usize,
        point: u32,
    ) -> String {
        let id = format!("{}-{:08x}", at.format("%Y%m%dT%H%M%SZ"), i);
        let content = format!("collection data of backup {i}").into_bytes();
        let key = put_object(self.store.as_ref(), &content).await;
        let manifest = serde_json::json!({
            "format": 1, "backup_id": id, "source": source, "engine": "mongodb",
            "job_id": format!("job-{i}"), "server_version": "8.2", "tool_version": "ferry-dumper",
            "started_at": at, "completed_at": at, "databases": ["shop"],
            "files": [{
                "name": "shop/items.bson.zst", "object": key, "size": content.len(),
                "sha256": hex::encode(Sha256::digest(&content)), "compression": "zstd", "reused": false,
            }],
            "bytes_total": 0, "bytes_uploaded": 0, "bytes_reused": 0,
            "mongodb": {
                "start_time": { "seconds": point - 1, "increment": 1 },
                "end_time": { "seconds": point, "increment": 1 },
                "oplog_captured": true, "oplog_entries": 0,
                "feature_compatibility_version": "8.0", "collections": [],
            },
        });
        let m: Manifest = serde_json::from_value(manifest).expect("a valid manifest");
        assert!(
            self.store
                .put_if_absent(&manifest_key(source, &id), m.to_json().into())
                .await
                .unwrap()
        );
        id
    }

    /// Commits a backup of `source` whose files are the existing `objects`, as an
    /// uploader that reused them does.
    pub async fn commit_reusing(
        store: &dyn ObjectStore,
        source: &str,
        id: &str,
        objects: &[String],
    ) {
        let mut files = Vec::new();
        for (n, object) in objects.iter().enumerate() {
            let content = get_bytes(store, object).await.unwrap();
            files.push(serde_json::json!({
                "name": format!("db/{n}.dat"),
                "object": object,
                "size": content.len(),
                "sha256": hex::encode(Sha256::digest(&content)),
                "compression": "none",
                "reused": true,
            }));
        }
        let at = Utc::now();
        let manifest = serde_json::json!({
            "format": 1, "backup_id": id, "source": source, "engine": "postgres",
            "job_id": format!("job-{id}"), "server_version": "15", "tool_version": "pg_dump 15",
            "started_at": at, "completed_at": at, "databases": ["db"], "files": files,
            "bytes_total": 0, "bytes_uploaded": 0, "bytes_reused": 0,
        });
        let m: Manifest = serde_json::from_value(manifest).expect("a valid manifest");
        assert!(Catalog::new(store).commit(&m).await.unwrap());
    }

    /// Waits out the grace period, so every object written so far is collectable.
    /// A real gap on purpose: the grace period is measured against the objects'
    /// modification times in the store, which only the passing of time moves.
    pub async fn age_objects(&self) {
        tokio::time::sleep(GRACE + Duration::from_millis(500)).await;
    }

    pub async fn put_object(&self, content: &[u8]) -> String {
        put_object(self.store.as_ref(), content).await
    }

    /// The backup ids of `source`, sorted.
    pub async fn backup_ids(&self, source: &str) -> Vec<String> {
        let mut ids: Vec<String> = Catalog::new(self.store.as_ref())
            .backups(Some(source))
            .await
            .unwrap()
            .into_iter()
            .map(|b| b.id)
            .collect();
        ids.sort();
        ids
    }

    /// Reads every object of every backup of `source` back and checks its size and
    /// SHA-256 against the manifest: what a restore does before anything else.
    pub async fn assert_restorable(&self, source: &str) {
        for id in self.backup_ids(source).await {
            let bytes = get_bytes(self.store.as_ref(), &manifest_key(source, &id))
                .await
                .unwrap();
            let m = Manifest::from_json(&bytes).unwrap();
            for f in &m.files {
                let data = get_bytes(self.store.as_ref(), &f.object)
                    .await
                    .unwrap_or_else(|e| panic!("backup {id} lost {}: {e}", f.object));
                assert_eq!(data.len() as u64, f.size, "{id}: {}", f.object);
                assert_eq!(
                    hex::encode(Sha256::digest(&data)),
                    f.sha256,
                    "{id}: {}",
                    f.object
                );
            }
        }
    }

    pub async fn object_count(&self) -> usize {
        self.listing(OBJECTS_PREFIX).await.len()
    }

    /// Objects that no manifest of any source references.
    pub async fn unreferenced_objects(&self) -> usize {
        let mut referenced = HashSet::new();
        for meta in self.listing(BACKUPS_PREFIX).await {
            if meta.key.ends_with(".json") {
                let m =
                    Manifest::from_json(&get_bytes(self.store.as_ref(), &meta.key).await.unwrap())
                        .unwrap();
                referenced.extend(m.files.into_iter().map(|f| f.object));
            }
        }
        self.listing(OBJECTS_PREFIX)
            .await
            .iter()
            .filter(|m| !referenced.contains(&m.key))
            .count()
    }

    /// Every object under `prefix`.
    pub async fn listing(&self, prefix: &str) -> Vec<ObjectMeta> {
        self.store.list(prefix).try_concat().await.unwrap()
    }
}

/// Pairs (`i / 2`) both of whose backups the plan deletes: their shared object goes.
pub fn pairs_fully_deleted(plan: &Plan) -> usize {
    let kept: HashSet<usize> = plan.keep.iter().map(|d| index_of(&d.id) / 2).collect();
    let deleted: HashSet<usize> = plan.delete.iter().map(|d| index_of(&d.id) / 2).collect();
    deleted.difference(&kept).count()
}

fn index_of(id: &str) -> usize {
    usize::from_str_radix(id.rsplit('-').next().unwrap(), 16).unwrap()
}

/// Stores `content` content-addressed and returns its key.
pub async fn put_object(store: &dyn ObjectStore, content: &[u8]) -> String {
    let key = object_key(&hex::encode(Sha256::digest(content)));
    let body: Body = Box::new(std::io::Cursor::new(content.to_vec()));
    store.put(&key, body).await.unwrap();
    key
}

type Hook =
    Arc<dyn Fn(&'static str, String) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// The real store with a hook before each delete: the hook can act (upload
/// something, as a racing uploader would) or never return (a killed process).
pub struct Wrapped {
    inner: Arc<dyn ObjectStore>,
    hook: Hook,
}

impl std::fmt::Debug for Wrapped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Wrapped({})", self.inner.describe())
    }
}

impl Wrapped {
    pub fn around<F, Fut>(inner: Arc<dyn ObjectStore>, hook: F) -> Arc<dyn ObjectStore>
    where
        F: Fn(&'static str, String) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        Arc::new(Wrapped {
            inner,
            hook: Arc::new(move |op, key| Box::pin(hook(op, key))),
        })
    }
}

#[async_trait]
impl ObjectStore for Wrapped {
    async fn put(&self, key: &str, body: Body) -> Result<u64, StorageError> {
        self.inner.put(key, body).await
    }
    async fn put_if_absent(&self, key: &str, bytes: Bytes) -> Result<bool, StorageError> {
        self.inner.put_if_absent(key, bytes).await
    }
    async fn get(&self, key: &str) -> Result<Body, StorageError> {
        self.inner.get(key).await
    }
    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StorageError> {
        self.inner.head(key).await
    }
    fn list<'a>(&'a self, prefix: &'a str) -> ListPages<'a> {
        self.inner.list(prefix)
    }
    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        (self.hook)("delete", key.to_string()).await;
        self.inner.delete(key).await
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
    async fn put_bytes(
        &self,
        key: &str,
        bytes: Bytes,
        md5: Option<[u8; 16]>,
    ) -> Result<(), StorageError> {
        self.inner.put_bytes(key, bytes, md5).await
    }
    async fn get_range(
        &self,
        key: &str,
        range: std::ops::Range<u64>,
    ) -> Result<Body, StorageError> {
        self.inner.get_range(key, range).await
    }
    async fn delete_many(&self, keys: &[String]) -> Result<(), StorageError> {
        for key in keys {
            (self.hook)("delete", key.clone()).await;
        }
        self.inner.delete_many(keys).await
    }
    async fn create_multipart(&self, key: &str) -> Result<String, StorageError> {
        self.inner.create_multipart(key).await
    }
    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: u32,
        bytes: Bytes,
    ) -> Result<ferry_storage::PartReceipt, StorageError> {
        self.inner.upload_part(key, upload_id, number, bytes).await
    }
    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[ferry_storage::PartReceipt],
    ) -> Result<(), StorageError> {
        self.inner.complete_multipart(key, upload_id, parts).await
    }
    async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<(), StorageError> {
        self.inner.abort_multipart(key, upload_id).await
    }
    async fn list_multipart(
        &self,
        prefix: &str,
    ) -> Result<Vec<ferry_storage::PendingUpload>, StorageError> {
        self.inner.list_multipart(prefix).await
    }
}
