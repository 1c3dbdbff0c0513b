//! Ferry as operators run it: every worker its own OS process (the real
//! `ferry-scheduler`, `ferry-dumper`, `ferry-uploader`, `ferry-retention` and
//! `ferry-notifier` binaries), one configuration file, a real NATS and PostgreSQL,
//! the fs store, and an OTLP receiver collecting every process's spans.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use ferry_proto::Message;
use ferry_proto::subjects::{self, EventKind};
use ferry_scheduler::ManualReply;
use ferry_testkit::{HttpReceiver, NatsServer, PgCluster, Source, TestConfig, TestDatabase};

use crate::otlp::OtlpReceiver;

/// The worker binaries, with how each exports traces and writes logs: both OTLP
/// protocols and both log formats are exercised in every run.
pub const WORKERS: [(&str, &str, &str); 5] = [
    ("ferry-scheduler", "grpc", "text"),
    ("ferry-dumper", "http", "json"),
    ("ferry-uploader", "grpc", "json"),
    ("ferry-retention", "http", "text"),
    ("ferry-notifier", "grpc", "text"),
];

/// One running worker process.
pub struct Worker {
    /// The binary's name, also its `service.name`.
    pub name: &'static str,
    /// Where its `/healthz`, `/readyz` and `/metrics` are.
    pub http: String,
    /// Its stderr (the log lines).
    pub log: PathBuf,
    child: tokio::process::Child,
}

impl Worker {
    /// Its log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

/// The path of a workspace binary, built next to the test executables by `cargo
/// build --bins` (which `scripts/test` runs before the tests: a test build alone
/// builds only the binaries of packages that have integration tests of their own).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable is in target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: build the workers with `cargo build --bins` (scripts/test does)",
        path.display()
    );
    // `cargo nextest run -p ferry-e2e` alone does not rebuild other packages'
    // binaries: refuse to test an old build rather than pass or fail on stale code.
    let built = std::fs::metadata(&path).and_then(|m| m.modified()).unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    // What a worker binary is built from: its own service and the shared crates
    // (a service never depends on another service).
    let service = name.strip_prefix("ferry-").unwrap_or(name);
    let sources = [
        format!("services/{service}/src"),
        "crates/runtime/src".into(),
        "crates/telemetry/src".into(),
        "crates/storage/src".into(),
        "crates/mongo/src".into(),
        "proto/src".into(),
    ];
    for dir in sources {
        if let Some(newer) = newer_source(&root.join(dir), built) {
            panic!(
                "{} is older than {}: rebuild the workers with `cargo build --bins`",
                path.display(),
                newer.display()
            );
        }
    }
    path
}

/// A Rust source under `dir` modified after `than`, skipping tests (which are not
/// part of the binaries).
fn newer_source(dir: &Path, than: std::time::SystemTime) -> Option<PathBuf> {
    for entry in std::fs::read_dir(dir).ok()? {
        let path = entry.ok()?.path();
        if path.is_dir() {
            if path
                .file_name()
                .is_some_and(|n| n == "tests" || n == "target")
            {
                continue;
            }
            if let Some(newer) = newer_source(&path, than) {
                return Some(newer);
            }
        } else if path.extension().is_some_and(|e| e == "rs")
            && std::fs::metadata(&path).and_then(|m| m.modified()).ok()? > than
        {
            return Some(path);
        }
    }
    None
}

/// Every worker as its own process, and what they talk to.
pub struct Stack {
    /// The test's nats-server.
    pub nats: NatsServer,
    /// A client for the test.
    pub client: async_nats::Client,
    /// The database the `good` and `bad` sources point at.
    pub db: TestDatabase,
    /// Receives every worker's spans.
    pub otlp: OtlpReceiver,
    /// Receives the notifier's webhooks.
    pub webhook: HttpReceiver,
    /// The workers, in [`WORKERS`] order.
    pub workers: Vec<Worker>,
    /// Configuration, spool, store, secrets and logs.
    pub dir: tempfile::TempDir,
    http: reqwest::Client,
}

impl Stack {
    /// Starts NATS, a small database, the receivers, then every worker, and waits
    /// until each one says it is ready.
    pub async fn start() -> Stack {
        let nats = NatsServer::start().await;
        let pg = PgCluster::from_env();
        let db = pg.create_database("ferry_ops").await;
        db.connect()
            .await
            .batch_execute(
                "CREATE TABLE items (id int PRIMARY KEY, v text);
                 INSERT INTO items SELECT g, md5(g::text) FROM generate_series(1, 2000) g;",
            )
            .await
            .expect("fill the test database");
        let dir = tempfile::tempdir().expect("temp dir");
        let good = dir.path().join("pg-password");
        let bad = dir.path().join("pg-wrong-password");
        std::fs::write(&good, format!("{}\n", pg.password)).unwrap();
        std::fs::write(&bad, "definitely-not-the-password\n").unwrap();
        let otlp = OtlpReceiver::start().await;
        let webhook = HttpReceiver::start().await;
        let config = dir.path().join("ferry.toml");
        TestConfig::new()
            .nats(nats.url())
            .dir_spool(&dir.path().join("spool"))
            .fs_store(&dir.path().join("store"))
            .pg_bin_dir(&pg.bin_dir)
            .retry("200ms", "1s")
            .webhook(webhook.url("/hook"), &["failed", "succeeded"])
            .source(
                Source::postgres("good", &pg.url_without_password(&db.name))
                    .password_file(&good)
                    .keep_last(5),
            )
            .postgres_source("bad", &pg.url_without_password(&db.name), &bad)
            .write(&config);

        let mut workers = Vec::new();
        for (name, protocol, log_format) in WORKERS {
            let http = format!("127.0.0.1:{}", ferry_testkit::free_port());
            let endpoint = match protocol {
                "grpc" => otlp.grpc_endpoint(),
                _ => otlp.http_endpoint(),
            };
            let log = dir.path().join(format!("{name}.log"));
            let child = tokio::process::Command::new(binary(name))
                .arg("--config")
                .arg(&config)
                .env("FERRY_HTTP__LISTEN", &http)
                .env("FERRY_TELEMETRY__OTLP_ENDPOINT", &endpoint)
                .env("FERRY_TELEMETRY__OTLP_PROTOCOL", protocol)
                .env("FERRY_TELEMETRY__LOG_FORMAT", log_format)
                // Export finished spans within a fraction of a second.
                .env("OTEL_BSP_SCHEDULE_DELAY", "100")
                .env("FERRY_LOG", "info")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).expect("log file"))
                .kill_on_drop(true)
                .spawn()
                .unwrap_or_else(|e| panic!("start {name}: {e}"));
            workers.push(Worker {
                name,
                http: format!("http://{http}"),
                log,
                child,
            });
        }
        let stack = Stack {
            client: nats.client().await,
            nats,
            db,
            otlp,
            webhook,
            workers,
            dir,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .expect("http client"),
        };
        for worker in &stack.workers {
            stack.wait_ready(worker, true).await;
        }
        stack
    }

    /// GETs `path` of a worker: the status code and body, or None when it does not
    /// answer.
    pub async fn get(&self, worker: &Worker, path: &str) -> Option<(u16, String)> {
        let response = self
            .http
            .get(format!("{}{path}", worker.http))
            .send()
            .await
            .ok()?;
        let status = response.status().as_u16();
        Some((status, response.text().await.ok()?))
    }

    /// Waits until a worker's `/readyz` says ready (`true`) or not ready.
    pub async fn wait_ready(&self, worker: &Worker, ready: bool) -> String {
        let want = if ready { 200 } else { 503 };
        ferry_testkit::wait_until(
            &format!("{} /readyz to answer {want}", worker.name),
            Duration::from_secs(60),
            || async {
                let (status, body) = self.get(worker, "/readyz").await?;
                (status == want).then_some(body)
            },
        )
        .await
    }

    /// A worker's `/metrics`.
    pub async fn metrics(&self, worker: &Worker) -> String {
        let (status, body) = self.get(worker, "/metrics").await.expect("metrics answer");
        assert_eq!(status, 200, "{} /metrics: {body}", worker.name);
        body
    }

    /// The worker named `name`.
    pub fn worker(&self, name: &str) -> &Worker {
        self.workers
            .iter()
            .find(|w| w.name == name)
            .expect("a known worker")
    }

    /// Asks the scheduler for a manual backup of `source`; returns the job id.
    pub async fn backup(&self, source: &str) -> String {
        let body = serde_json::to_vec(&serde_json::json!({ "source": source })).unwrap();
        let reply = self
            .client
            .request(subjects::JOB_REQUEST, body.into())
            .await
            .expect("the scheduler answers");
        let reply: ManualReply = serde_json::from_slice(&reply.payload).expect("reply JSON");
        assert!(reply.ok, "job accepted: {reply:?}");
        reply.job_id
    }

    /// Waits for the event of `kind` about `source` whose job is `job_id`.
    pub async fn event<M: Message + Default + ferry_proto::JobMessage>(
        &self,
        kind: EventKind,
        source: &str,
        job_id: &str,
    ) -> M {
        crate::wait_for_event(
            &self.client,
            kind,
            source,
            Duration::from_secs(90),
            |m: &M| m.job_id() == job_id,
        )
        .await
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // A failed test shows what each process said: its log goes with the tempdir.
        if std::thread::panicking() {
            for worker in &self.workers {
                let log = worker.log_text();
                let lines: Vec<&str> = log.lines().collect();
                // A panic's message comes before its backtrace: show it, then the end.
                let panic = lines.iter().position(|l| l.contains("panicked at"));
                eprintln!("---- {}", worker.name);
                for line in panic
                    .map(|p| &lines[p..(p + 4).min(lines.len())])
                    .unwrap_or(&[])
                {
                    eprintln!("{line}");
                }
                for line in &lines[lines.len().saturating_sub(40)..] {
                    eprintln!("{line}");
                }
            }
        }
    }
}

/// The value of the sample `series` (name and labels exactly as exposed) in a
/// Prometheus text exposition.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(series)?.strip_prefix(' ')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}
