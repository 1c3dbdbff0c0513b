//! `/readyz`'s checks on a real NATS and a real store directory.

use ferry_proto::subjects;
use ferry_runtime::http::Readiness;
use ferry_runtime::{Config, Runtime};
use ferry_testkit::{NatsServer, TestConfig};

#[tokio::test]
async fn readiness_names_every_missing_dependency() {
    let nats = NatsServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let config = TestConfig::new()
        .nats(nats.url())
        .fs_store(&store_dir)
        .to_toml();
    let config = Config::from_toml(&config).unwrap();
    let rt = Runtime::with_client(config, nats.client().await)
        .await
        .unwrap();
    let readiness = Readiness {
        nats: rt.nats.clone(),
        jetstream: rt.jetstream.clone(),
        store: Some(ferry_runtime::store::open(&rt.config.storage).unwrap()),
    };
    assert_eq!(readiness.problems().await, Vec::<String>::new());

    // A stream removed by hand, and a store that no longer answers (its directory
    // replaced by a file): both are named.
    rt.jetstream
        .delete_stream(subjects::EVENTS_STREAM)
        .await
        .unwrap();
    std::fs::remove_dir_all(&store_dir).unwrap();
    std::fs::write(&store_dir, b"not a directory").unwrap();
    let problems = readiness.problems().await;
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(
        problems[0].contains(subjects::EVENTS_STREAM),
        "{problems:?}"
    );
    assert!(problems[1].starts_with("store "), "{problems:?}");

    // Without NATS, that is the reason given.
    let mut nats = nats;
    nats.stop();
    let problems = ferry_testkit::wait_until(
        "the client to notice NATS is gone",
        std::time::Duration::from_secs(20),
        || async {
            let p = readiness.problems().await;
            p.iter().any(|p| p.starts_with("NATS is")).then_some(p)
        },
    )
    .await;
    assert!(
        !problems.iter().any(|p| p.contains("stream")),
        "{problems:?}"
    );
}
