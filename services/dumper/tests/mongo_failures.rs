//! Every way a MongoDB dump fails, on real SecantusDB servers: each ends with the
//! reason code and an actionable message, or (a collection dropped mid-dump) with a
//! successful dump that records it.

use std::time::Duration;

use ferry_dumper::mongo::{MongoOptions, dump};
use ferry_dumper::output::{Compression, JobOutput};
use ferry_proto::reason;
use ferry_runtime::config::{Config, SourceConfig};
use ferry_testkit::{
    MongoServer, MongoStart, Source, TestConfig, free_port, unique_name, wait_until,
};
use mongodb::bson::{Document, doc};
use secrecy::SecretString;

fn source(url: &str, databases: &[&str]) -> SourceConfig {
    let toml = TestConfig::new()
        .source(Source::mongodb("cat", url, databases))
        .to_toml();
    Config::from_toml(&toml)
        .expect("a valid source")
        .sources
        .remove(0)
}

fn output(dir: &tempfile::TempDir) -> JobOutput {
    JobOutput::new(dir.path().join("job"), Compression::Zstd { level: 1 }, None)
}

fn options() -> MongoOptions {
    MongoOptions {
        parallel_collections: 2,
        connect_timeout: Duration::from_secs(2),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_is_reported_as_unreachable() {
    let url = format!("mongodb://127.0.0.1:{}/?directConnection=true", free_port());
    let dir = tempfile::tempdir().unwrap();
    let err = dump(
        &source(&url, &["shop"]),
        None,
        &[],
        &output(&dir),
        &options(),
    )
    .await
    .unwrap_err();
    assert_eq!(err.reason(), reason::UNREACHABLE, "{err}");
    assert!(err.to_string().contains("reachable"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_and_missing_privileges_are_named() {
    let server = MongoServer::start(MongoStart {
        users: vec![
            (
                "admin".into(),
                "admin-pw".into(),
                vec![doc! { "role": "root", "db": "admin" }],
            ),
            (
                "reader".into(),
                "reader-pw".into(),
                vec![doc! { "role": "read", "db": "allowed" }],
            ),
        ],
        ..Default::default()
    })
    .await;
    let admin = server.client_as("admin", "admin-pw").await;
    for db in ["allowed", "secret"] {
        admin
            .database(db)
            .collection::<Document>("items")
            .insert_one(doc! { "_id": 1 })
            .await
            .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();

    let wrong = SecretString::from("not-the-password");
    let err = dump(
        &source(&server.url_with_user("reader"), &["allowed"]),
        Some(&wrong),
        &[],
        &output(&dir),
        &options(),
    )
    .await
    .unwrap_err();
    assert_eq!(err.reason(), reason::AUTH_FAILED, "{err}");
    assert!(err.to_string().contains("password_file"), "{err}");

    let right = SecretString::from("reader-pw");
    let err = dump(
        &source(&server.url_with_user("reader"), &["secret"]),
        Some(&right),
        &[],
        &output(&dir),
        &options(),
    )
    .await
    .unwrap_err();
    assert_eq!(err.reason(), reason::PERMISSION_DENIED, "{err}");
    assert!(
        err.to_string().contains("secret"),
        "names the database: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_cursor_fails_the_dump_as_retryable_cursor_killed() {
    let server = MongoServer::start(MongoStart {
        test_commands: true,
        ..Default::default()
    })
    .await;
    let client = server.client().await;
    let db = unique_name("killed");
    client
        .database(&db)
        .collection::<Document>("items")
        .insert_many((0..1000).map(|i| doc! { "_id": i, "pad": "x".repeat(100) }))
        .await
        .unwrap();
    // The server kills the next cursor continued: CursorKilled, as after
    // killCursors or a failover.
    client
        .database("admin")
        .run_command(doc! {
            "configureFailPoint": "failCommand",
            "mode": { "times": 1 },
            "data": { "failCommands": ["getMore"], "errorCode": 237 },
        })
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let err = dump(
        &source(server.url(), &[&db]),
        None,
        &[],
        &output(&dir),
        &options(),
    )
    .await
    .unwrap_err();
    assert_eq!(err.reason(), reason::CURSOR_KILLED, "{err}");
    assert!(
        matches!(err, ferry_runtime::HandlerError::Retryable { .. }),
        "a killed cursor is worth a retry: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collection_dropped_during_the_dump_is_skipped_and_recorded() {
    let server = MongoServer::start(MongoStart {
        test_commands: true,
        ..Default::default()
    })
    .await;
    let client = server.client().await;
    let db_name = unique_name("dropped");
    let db = client.database(&db_name);
    db.collection::<Document>("a_kept")
        .insert_many((0..10).map(|i| doc! { "_id": i }))
        .await
        .unwrap();
    db.collection::<Document>("b_gone")
        .insert_many((0..10).map(|i| doc! { "_id": i }))
        .await
        .unwrap();
    // The find of b_gone (dumped second, one collection at a time) waits long
    // enough for the test to drop the collection under it.
    client
        .database("admin")
        .run_command(doc! {
            "configureFailPoint": "failCommand",
            "mode": { "skip": 1, "times": 1 },
            "data": { "failCommands": ["find"], "blockConnection": true, "blockTimeMS": 3000 },
        })
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = output(&dir);
    let src = source(server.url(), &[&db_name]);
    let opts = MongoOptions {
        parallel_collections: 1,
        ..options()
    };
    let dumping = tokio::spawn({
        let out = out.clone();
        async move { dump(&src, None, &[], &out, &opts).await }
    });
    let started = dir
        .path()
        .join("job")
        .join(&db_name)
        .join("b_gone.bson.zst");
    wait_until(
        "the dump of b_gone to start",
        Duration::from_secs(30),
        || async { started.exists().then_some(()) },
    )
    .await;
    db.collection::<Document>("b_gone").drop().await.unwrap();

    let result = dumping.await.unwrap().expect("the dump succeeds");
    let ns = format!("{db_name}.b_gone");
    assert_eq!(result.details.dropped, vec![ns.clone()]);
    assert!(
        result.details.warnings.iter().any(|w| w.contains(&ns)),
        "{:?}",
        result.details.warnings
    );
    let names: Vec<&str> = result.files.iter().map(|f| f.name.as_str()).collect();
    assert!(
        names.contains(&format!("{db_name}/a_kept.bson.zst").as_str()),
        "{names:?}"
    );
    assert!(!names.iter().any(|n| n.contains("b_gone")), "{names:?}");
    assert_eq!(result.details.collections.len(), 1);
    assert_eq!(result.details.collections[0].documents, 10);
}
