//! The `ferry` binary as an operator runs it: real processes, real NATS and
//! PostgreSQL, exit codes and messages.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use ferry_testkit::{NatsServer, PgCluster, Source, TestConfig};

mod read_only;

fn ferry(config: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ferry"))
        .arg("--config")
        .arg(config)
        .args(args)
        .env("FERRY_LOG", "warn")
        .output()
        .expect("run ferry")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn invalid_configuration_exits_2_naming_every_bad_key_before_connecting() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ferry.toml");
    // Nothing listens on port 1: a connection attempt would fail differently (exit 1).
    std::fs::write(
        &config,
        r#"
[nats]
url = "nats://127.0.0.1:1"

[[sources]]
name = "Orders!"
engine = "postgres"
url = "postgres://backup:hunter2@db1/orders"
schedule = "61 * * * *"
timezone = "Mars/Olympus"

[[notify]]
kind = "webhook"
url_env = "FERRY_TEST_UNSET_WEBHOOK_URL"
"#,
    )
    .unwrap();
    let out = ferry(&config, &["up"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    for key in [
        "sources[0].name",
        "sources[0].url",
        "sources[0].schedule",
        "sources[0].timezone",
        "notify[0].url_env",
    ] {
        assert!(stderr.contains(key), "{key} not named in:\n{stderr}");
    }
    assert!(
        stderr.contains("Mars/Olympus") && stderr.contains("IANA"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("hunter2"),
        "a password in a URL is never echoed:\n{stderr}"
    );
}

#[test]
fn unknown_keys_and_wrong_types_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ferry.toml");
    for (toml, expected) in [
        (
            "[storage]\nkind = \"fs\"\npaht = \"/tmp/x\"\n",
            ["storage", "paht"],
        ),
        (
            "[dumper]\nconcurrency = \"many\"\n",
            ["dumper.concurrency", "\"many\""],
        ),
        (
            "[[sources]]\nname = \"x\"\nengine = \"oracle\"\nurl = \"postgres://h/d\"\n",
            ["sources", "oracle"],
        ),
    ] {
        std::fs::write(&config, toml).unwrap();
        let out = ferry(&config, &["up"]);
        assert_eq!(out.status.code(), Some(2), "{toml}");
        let stderr = text(&out.stderr);
        for word in expected {
            assert!(stderr.contains(word), "{word} not in:\n{stderr}");
        }
    }
    let missing = ferry(&dir.path().join("nope.toml"), &["up"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(text(&missing.stderr).contains("nope.toml"));
}

#[test]
fn environment_overrides_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ferry.toml");
    std::fs::write(&config, "[nats]\nurl = \"nats://127.0.0.1:4222\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .arg("--config")
        .arg(&config)
        .arg("up")
        .env("FERRY_NATS__URL", "http://wrong-scheme")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("nats.url") && stderr.contains("http://wrong-scheme"),
        "{stderr}"
    );
}

/// Kills the child process when the test ends, pass or fail.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_now_waits_for_the_outcome_and_the_backup_can_be_listed_and_fetched() {
    let nats = NatsServer::start().await;
    let pg = PgCluster::from_env();
    let db = pg.create_database("ferry_cli").await;
    let http_port = ferry_testkit::free_port();
    db.connect()
        .await
        .batch_execute("CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 1000);")
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let password_file = dir.path().join("pw");
    std::fs::write(&password_file, &pg.password).unwrap();
    let config = dir.path().join("ferry.toml");
    TestConfig::new()
        .nats(nats.url())
        .dir_spool(&dir.path().join("spool"))
        .fs_store(&dir.path().join("store"))
        .http(format!("127.0.0.1:{http_port}"))
        .pg_bin_dir(&pg.bin_dir)
        .postgres_source("good", &pg.url_without_password(&db.name), &password_file)
        .postgres_source(
            "missingdb",
            &pg.url_without_password("no_such_database"),
            &password_file,
        )
        .write(&config);
    let _up = Running(
        Command::new(env!("CARGO_BIN_EXE_ferry"))
            .arg("--config")
            .arg(&config)
            .arg("up")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );

    let config_for = config.clone();
    let run = move |args: &'static [&'static str]| {
        let config = config_for.clone();
        tokio::task::spawn_blocking(move || ferry(&config, args))
    };
    let ok = run(&[
        "backup",
        "now",
        "--source",
        "good",
        "--wait",
        "--timeout",
        "90s",
    ])
    .await
    .unwrap();
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok.stderr));
    let backup_id = text(&ok.stdout).trim().to_string();
    assert!(
        backup_id.len() > 16 && backup_id.contains('T'),
        "stdout is the backup id: {backup_id:?}"
    );

    let failed = run(&[
        "backup",
        "now",
        "--source",
        "missingdb",
        "--wait",
        "--timeout",
        "90s",
    ])
    .await
    .unwrap();
    assert_eq!(failed.status.code(), Some(1));
    let stderr = text(&failed.stderr);
    assert!(
        stderr.contains("database_not_found") && stderr.contains("no_such_database"),
        "{stderr}"
    );

    let unknown = run(&["backup", "now", "--source", "nosuch", "--wait"])
        .await
        .unwrap();
    assert_eq!(unknown.status.code(), Some(1));
    assert!(text(&unknown.stderr).contains("unknown_source"));

    let status = run(&["status", "--json"]).await.unwrap();
    assert_eq!(status.status.code(), Some(0), "{}", text(&status.stderr));
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let of = |name: &str| {
        status
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["source"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(of("good")["last_success"]["backup_id"], backup_id.as_str());
    assert_eq!(
        of("missingdb")["last_failure"]["reason"],
        "database_not_found"
    );
    assert_eq!(of("missingdb")["last_failure"]["stage"], "dumper");
    assert!(of("good")["running"].is_null());

    let list = run(&["list", "--source", "good"]).await.unwrap();
    assert!(
        text(&list.stdout).contains(&backup_id),
        "{}",
        text(&list.stdout)
    );
    let json = run(&["list", "--json"]).await.unwrap();
    let manifests: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(
        manifests.as_array().unwrap().len(),
        1,
        "the failed job left no backup"
    );

    // The health and metrics endpoints of the running process.
    assert!(http_get(http_port, "/healthz").starts_with("HTTP/1.1 200"));
    assert!(http_get(http_port, "/readyz").starts_with("HTTP/1.1 200"));
    let metrics = http_get(http_port, "/metrics");
    // The uploader handled the job's DumpCompleted (and each file's DumpFileReady).
    let uploads: f64 = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix(r#"ferry_messages_handled_total{stage="uploader",outcome="succeeded"} "#)
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    assert!(uploads >= 1.0, "{metrics}");
    assert!(
        metrics.contains(r#"ferry_messages_handled_total{stage="dumper",outcome="failed"} 1"#),
        "{metrics}"
    );

    let restored = dir.path().join("restored");
    let fetch = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .arg("--config")
        .arg(&config)
        .args([
            "restore", "--source", "good", "--backup", "latest", "--to-dir",
        ])
        .arg(&restored)
        .output()
        .unwrap();
    assert_eq!(fetch.status.code(), Some(0), "{}", text(&fetch.stderr));
    assert!(restored.join(&db.name).join("toc.dat").is_file());
    // pg_restore reads it without Ferry: list its table of contents.
    let toc = Command::new(pg.bin_dir.join("pg_restore"))
        .arg("--list")
        .arg(restored.join(&db.name))
        .output()
        .unwrap();
    assert!(toc.status.success());
    assert!(
        text(&toc.stdout).contains("TABLE DATA public t"),
        "{}",
        text(&toc.stdout)
    );
}

/// A plain HTTP/1.1 GET: the response's status line, headers and body.
fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream =
        std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to ferry's http port");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sources_are_added_paused_and_removed_from_the_cli() {
    let nats = NatsServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ferry.toml");
    TestConfig::new()
        .nats(nats.url())
        .source(Source::postgres("filed", "postgres://backup@db1/filed").schedule("0 2 * * *"))
        .write(&config);
    let cli = |args: Vec<&'static str>| {
        let config = config.clone();
        tokio::task::spawn_blocking(move || ferry(&config, &args))
    };
    let added = cli(vec![
        "sources",
        "add",
        "--name",
        "live",
        "--engine",
        "postgres",
        "--url",
        "postgres://backup@db2/live",
        "--password-env",
        "LIVE_PG_PASSWORD",
        "--schedule",
        "30 2 * * *",
        "--timezone",
        "Europe/Berlin",
        "--keep-last",
        "3",
    ])
    .await
    .unwrap();
    assert_eq!(added.status.code(), Some(0), "{}", text(&added.stderr));

    let refused = cli(vec![
        "sources",
        "add",
        "--name",
        "filed",
        "--engine",
        "postgres",
        "--url",
        "postgres://x@y/z",
    ])
    .await
    .unwrap();
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        text(&refused.stderr).contains("configuration file"),
        "{}",
        text(&refused.stderr)
    );
    let invalid = cli(vec![
        "sources",
        "add",
        "--name",
        "broken",
        "--engine",
        "postgres",
        "--url",
        "postgres://x:secret@y/z",
        "--schedule",
        "every day",
    ])
    .await
    .unwrap();
    assert_eq!(invalid.status.code(), Some(1));
    let stderr = text(&invalid.stderr);
    assert!(
        stderr.contains("schedule") && stderr.contains("url"),
        "{stderr}"
    );
    assert!(!stderr.contains("secret"), "{stderr}");

    let paused = cli(vec!["sources", "pause", "live"]).await.unwrap();
    assert_eq!(paused.status.code(), Some(0), "{}", text(&paused.stderr));
    let list: serde_json::Value =
        serde_json::from_slice(&cli(vec!["sources", "list", "--json"]).await.unwrap().stdout)
            .unwrap();
    let rows = list.as_array().unwrap();
    assert_eq!(rows.len(), 2);
    let live = rows.iter().find(|r| r["source"]["name"] == "live").unwrap();
    assert_eq!(
        (live["origin"].as_str(), live["paused"].as_bool()),
        (Some("registry"), Some(true))
    );
    assert_eq!(live["source"]["retention"]["keep_last"], 3);
    assert_eq!(live["source"]["password_env"], "LIVE_PG_PASSWORD");

    let status: serde_json::Value =
        serde_json::from_slice(&cli(vec!["status", "--json"]).await.unwrap().stdout).unwrap();
    let of = |name: &str| {
        status
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["source"] == name)
            .unwrap()
            .clone()
    };
    assert!(
        of("live")["next_run"].is_null(),
        "paused sources have no next run"
    );
    assert!(
        of("filed")["next_run"]
            .as_str()
            .unwrap()
            .ends_with("02:00:00Z"),
        "{}",
        of("filed")
    );

    assert_eq!(
        cli(vec!["sources", "remove", "live"])
            .await
            .unwrap()
            .status
            .code(),
        Some(0)
    );
    let list: serde_json::Value =
        serde_json::from_slice(&cli(vec!["sources", "list", "--json"]).await.unwrap().stdout)
            .unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    let gone = cli(vec!["sources", "remove", "live"]).await.unwrap();
    assert_eq!(gone.status.code(), Some(1));
    assert!(text(&gone.stderr).contains("no source named live"));
}

/// `ferry restore --to` as an operator runs it: a MongoDB backup (dumped by the
/// dumper's engine, stored in an fs store with its manifest) restored under another
/// database name; a second run without --drop is refused, with --drop it replaces.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_to_a_mongodb_server_with_rename_and_drop() {
    use ferry_storage::{Manifest, ManifestFile, layout};
    use mongodb::bson::{Document, doc};

    let server = ferry_testkit::MongoServer::shared();
    let client = server.client().await;
    let db_name = ferry_testkit::unique_name("ferry_cli");
    let copy = format!("{db_name}_copy");
    client
        .database(&db_name)
        .collection::<Document>("items")
        .insert_many((0..500).map(|i| doc! { "_id": i, "name": format!("item {i}") }))
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let source = ferry_runtime::config::Config::from_toml(
        &TestConfig::new()
            .source(Source::mongodb("cat", server.url(), &[&db_name]))
            .to_toml(),
    )
    .unwrap()
    .sources
    .remove(0);
    let out = ferry_dumper::output::JobOutput::new(
        dir.path().join("job"),
        ferry_dumper::output::Compression::Zstd { level: 1 },
        None,
    );
    let dump = ferry_dumper::mongo::dump(&source, None, &[], &out, &Default::default())
        .await
        .unwrap();
    let config = dir.path().join("ferry.toml");
    let toml = TestConfig::new()
        .fs_store(&dir.path().join("store"))
        .to_toml();
    std::fs::write(&config, &toml).unwrap();
    let store =
        ferry_runtime::store::open(&ferry_runtime::Config::from_toml(&toml).unwrap().storage)
            .unwrap();
    let mut files = Vec::new();
    for f in &dump.files {
        let object = layout::object_key(&f.sha256);
        let body = tokio::fs::File::open(dir.path().join("job").join(&f.name))
            .await
            .unwrap();
        store.put(&object, Box::new(body)).await.unwrap();
        files.push(ManifestFile {
            name: f.name.clone(),
            object,
            size: f.size,
            sha256: f.sha256.clone(),
            compression: ferry_storage::Compression::parse(&f.compression).unwrap(),
            reused: false,
            stored: None,
        });
    }
    let manifest = Manifest {
        format: ferry_storage::manifest::FORMAT_VERSION,
        backup_id: "20261122T000000Z-cli".into(),
        source: "cat".into(),
        engine: ferry_storage::Engine::Mongodb,
        job_id: "cli".into(),
        server_version: dump.server_version.clone(),
        tool_version: dump.tool_version.clone(),
        started_at: chrono::Utc::now(),
        completed_at: chrono::Utc::now(),
        databases: dump.databases.clone(),
        files,
        bytes_total: 0,
        bytes_uploaded: 0,
        bytes_reused: 0,
        trace_id: None,
        mongodb: None,
        locked: false,
        postgres: None,
    };
    store
        .put(
            &layout::manifest_key("cat", &manifest.backup_id),
            Box::new(std::io::Cursor::new(manifest.to_json())),
        )
        .await
        .unwrap();
    let rename = format!("{db_name}:{copy}");
    let restore = |extra: &[&str]| {
        let mut args = vec![
            "restore",
            "--source",
            "cat",
            "--backup",
            "latest",
            "--to",
            server.url(),
            "--rename-db",
            &rename,
        ];
        args.extend_from_slice(extra);
        ferry(&config, &args)
    };

    let first = restore(&[]);
    assert_eq!(first.status.code(), Some(0), "{}", text(&first.stderr));
    assert!(
        text(&first.stderr).contains("500 documents"),
        "{}",
        text(&first.stderr)
    );
    let count = || async {
        client
            .database(&copy)
            .collection::<Document>("items")
            .count_documents(doc! {})
            .await
            .unwrap()
    };
    assert_eq!(count().await, 500);

    let again = restore(&[]);
    assert_eq!(again.status.code(), Some(1));
    assert!(
        text(&again.stderr).contains("--drop"),
        "{}",
        text(&again.stderr)
    );
    let dropped = restore(&["--drop", "--collection", &format!("{db_name}.items")]);
    assert_eq!(dropped.status.code(), Some(0), "{}", text(&dropped.stderr));
    assert_eq!(count().await, 500);

    let bad = ferry(
        &config,
        &[
            "restore",
            "--source",
            "cat",
            "--to",
            server.url(),
            "--rename-db",
            "nocolon",
        ],
    );
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        text(&bad.stderr).contains("OLD:NEW"),
        "{}",
        text(&bad.stderr)
    );

    client.database(&db_name).drop().await.unwrap();
    client.database(&copy).drop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capturing_source_on_a_server_without_change_streams_is_refused_naming_it() {
    use ferry_testkit::{MongoServer, MongoStart};
    let standalone = MongoServer::start(MongoStart {
        standalone: true,
        ..Default::default()
    })
    .await;
    let replica = MongoServer::start(MongoStart::default()).await;
    let nats = NatsServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ferry.toml");
    TestConfig::new().nats(nats.url()).write(&config);
    let add = |name: &'static str, url: String| {
        let config = config.clone();
        tokio::task::spawn_blocking(move || {
            ferry(
                &config,
                &[
                    "sources",
                    "add",
                    "--name",
                    name,
                    "--engine",
                    "mongodb",
                    "--url",
                    &url,
                    "--pitr",
                    "--segment-span",
                    "5m",
                ],
            )
        })
    };
    let refused = add("catalog", standalone.url().to_string()).await.unwrap();
    let stderr = text(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("source catalog") && stderr.contains("change streams"),
        "{stderr}"
    );
    let listed = ferry(&config, &["sources", "list", "--json"]);
    assert!(
        !text(&listed.stdout).contains("catalog"),
        "nothing was added"
    );

    let added = add("catalog", replica.url().to_string()).await.unwrap();
    assert_eq!(added.status.code(), Some(0), "{}", text(&added.stderr));
    let listed = text(&ferry(&config, &["sources", "list", "--json"]).stdout);
    assert!(listed.contains("segment_span"), "{listed}");
}
