//! End-to-end scenarios over real services: a real nats-server per test, the real
//! PostgreSQL test cluster, a real HTTP receiver, and Ferry's own `run_all`, the
//! function behind `ferry up`.

pub mod mongo;
pub mod otlp;
pub mod physical;
pub mod pitr;
pub mod processes;

use std::path::PathBuf;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use ferry_proto::Message;
use ferry_proto::subjects::{self, EventKind};
use ferry_runtime::{Config, Runtime};
use ferry_testkit::{HttpReceiver, NatsServer, PgCluster, TestConfig, TestDatabase};
use futures::StreamExt;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Paths and URLs a test's configuration can refer to.
pub struct Paths {
    /// URL of the test database (no password).
    pub db_url: String,
    /// A file holding the right password.
    pub password_file: PathBuf,
    /// A file holding a wrong password.
    pub wrong_password_file: PathBuf,
    /// The test's temporary directory (spool, store, secrets), for files a
    /// configuration names, such as S3 key files.
    pub dir: PathBuf,
}

/// One running Ferry (every worker, as `ferry up` runs them) and its services.
pub struct TestEnv {
    /// The test's own nats-server.
    pub nats: NatsServer,
    /// A plain client for the test.
    pub client: async_nats::Client,
    /// The PostgreSQL test cluster.
    pub pg: PgCluster,
    /// The database the sources back up.
    pub db: TestDatabase,
    /// Receives the webhook notifications.
    pub webhook: HttpReceiver,
    /// The configuration Ferry runs with.
    pub config: Config,
    /// Spool, store and secrets live here.
    pub dir: tempfile::TempDir,
    shutdown: CancellationToken,
    ferry: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestEnv {
    /// Starts NATS, creates a database filled by `fill_sql`, and runs Ferry with the
    /// configuration `configure` makes of the default one: the test's NATS, a spool
    /// and an fs store in the temporary directory, the test cluster's PostgreSQL
    /// tools, a 3 s lease, and a webhook for failures and successes. `configure` adds
    /// the sources and may replace any of that (`.s3_store(..)`, `.pg_bin_dir(..)`).
    pub async fn start(
        fill_sql: &str,
        configure: impl FnOnce(&Paths, TestConfig) -> TestConfig,
    ) -> TestEnv {
        let nats = NatsServer::start().await;
        let pg = PgCluster::from_env();
        let db = pg.create_database("ferry_e2e").await;
        if !fill_sql.is_empty() {
            db.connect()
                .await
                .batch_execute(fill_sql)
                .await
                .expect("fill the test database");
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let paths = Paths {
            db_url: pg.url_without_password(&db.name),
            password_file: dir.path().join("pg-password"),
            wrong_password_file: dir.path().join("pg-wrong-password"),
            dir: dir.path().to_path_buf(),
        };
        std::fs::write(&paths.password_file, format!("{}\n", pg.password)).unwrap();
        std::fs::write(&paths.wrong_password_file, "definitely-not-the-password\n").unwrap();
        let webhook = HttpReceiver::start().await;
        let defaults = TestConfig::new()
            .nats(nats.url())
            .dir_spool(&dir.path().join("spool"))
            .fs_store(&dir.path().join("store"))
            .pg_bin_dir(&pg.bin_dir)
            // Short, so a test can watch an abandoned lease expire.
            .set("dumper", "lease_ttl", "3s")
            .webhook(webhook.url("/hook"), &["failed", "succeeded"]);
        let toml = configure(&paths, defaults).to_toml();
        let config = Config::from_toml(&toml)
            .unwrap_or_else(|e| panic!("test config is valid: {e}\n{toml}"));
        let client = nats.client().await;
        let rt = Runtime::with_client(config.clone(), client.clone())
            .await
            .expect("declare streams");
        let shutdown = CancellationToken::new();
        let ferry = tokio::spawn(ferry::run_all(rt, shutdown.clone()));
        TestEnv {
            nats,
            client,
            pg,
            db,
            webhook,
            config,
            dir,
            shutdown,
            ferry: Some(ferry),
        }
    }

    /// The store the workers write, opened the way `ferry list` opens it.
    pub fn store(&self) -> std::sync::Arc<dyn ferry_storage::ObjectStore> {
        ferry_runtime::store::open(&self.config.storage).expect("open store")
    }

    /// Waits for an event of `kind` about `source` that satisfies `pred`. Events are
    /// replayed from the start of the stream, so an event published before the call
    /// is found too.
    pub async fn event<M: Message + Default>(
        &self,
        kind: EventKind,
        source: &str,
        timeout: Duration,
        pred: impl Fn(&M) -> bool,
    ) -> M {
        wait_for_event(&self.client, kind, source, timeout, pred).await
    }

    /// Whether Ferry is still running (no worker stopped).
    pub fn ferry_is_running(&self) -> bool {
        self.ferry.as_ref().is_some_and(|h| !h.is_finished())
    }

    /// Starts every worker again after [`TestEnv::stop`], on the same NATS, store
    /// and configuration: a fleet coming back after downtime.
    pub async fn restart(&mut self) {
        assert!(self.ferry.is_none(), "stop before restarting");
        let rt = Runtime::with_client(self.config.clone(), self.client.clone())
            .await
            .expect("declare streams");
        self.shutdown = CancellationToken::new();
        self.ferry = Some(tokio::spawn(ferry::run_all(rt, self.shutdown.clone())));
    }

    /// Stops every worker and returns how `run_all` ended.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        match self.ferry.take() {
            Some(handle) => handle.await.expect("ferry task"),
            None => Ok(()),
        }
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A database built to exercise more than the happy path: two schemas, an enum, a
/// quoted non-ASCII table name, bytea, arrays, jsonb, numeric, timestamptz, NULLs
/// and empty strings, and enough rows for several pg_dump data files.
pub const SAMPLE_SQL: &str = r#"
CREATE SCHEMA sales;
CREATE TYPE sales.mood AS ENUM ('sad', 'ok', 'happy');
CREATE TABLE sales.items (
    id bigserial PRIMARY KEY,
    name text NOT NULL,
    price numeric(12, 2),
    payload bytea,
    tags text[],
    doc jsonb,
    created timestamptz,
    mood sales.mood
);
INSERT INTO sales.items (name, price, payload, tags, doc, created, mood)
SELECT 'item ' || g, g * 1.25, decode(md5(g::text), 'hex'), ARRAY['a' || g, 'b'],
       jsonb_build_object('n', g, 'even', g % 2 = 0),
       '2026-01-01 00:00:00+00'::timestamptz + g * interval '1 minute',
       (ARRAY['sad', 'ok', 'happy'])[1 + g % 3]::sales.mood
FROM generate_series(1, 20000) g;
CREATE TABLE public."Odd Näme" (k text PRIMARY KEY, v text);
INSERT INTO public."Odd Näme" VALUES ('', NULL), ('empty', ''), ('ü', 'ß→∑');
CREATE INDEX items_created ON sales.items (created);
CREATE VIEW sales.expensive AS SELECT id, name FROM sales.items WHERE price > 1000;
"#;

/// Waits for an event of `kind` about `source` that satisfies `pred`, replaying the
/// events stream from its start so an event published before the call is found too.
/// Shared by the in-process [`TestEnv`] and the multi-process [`processes::Stack`].
pub async fn wait_for_event<M: Message + Default>(
    client: &async_nats::Client,
    kind: EventKind,
    source: &str,
    timeout: Duration,
    pred: impl Fn(&M) -> bool,
) -> M {
    let js = jetstream::new(client.clone());
    let stream = js
        .get_stream(subjects::EVENTS_STREAM)
        .await
        .expect("events stream");
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: kind.subject(source),
            deliver_policy: consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .expect("ordered consumer");
    let mut messages = consumer.messages().await.expect("messages");
    let found = tokio::time::timeout(timeout, async {
        while let Some(message) = messages.next().await {
            let message = message.expect("event");
            let decoded = M::decode(message.payload.as_ref()).expect("event decodes");
            if pred(&decoded) {
                return decoded;
            }
        }
        panic!("event stream ended")
    })
    .await;
    found.unwrap_or_else(|_| panic!("no {} event for {source} within {timeout:?}", kind.token()))
}
