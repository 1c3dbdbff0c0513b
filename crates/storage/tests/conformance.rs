//! The object store conformance suite: every store implementation passes it, run
//! here against the local-directory store and two real S3-compatible servers
//! (moto and Garage, started by `scripts/test-services up`).

mod suite;

use std::sync::Arc;

use bytes::Bytes;
use ferry_storage::{
    FsStore, ObjectStore, RequestChecksum, S3Credentials, S3Options, S3Store, StorageError,
};
use ferry_testkit::{FaultProxy, S3Server, unique_name};
use futures::TryStreamExt;

fn s3_store(server: &S3Server, prefix: &str, max_attempts: u32) -> S3Store {
    S3Store::new(s3_options(server, prefix, max_attempts))
}

fn s3_options(server: &S3Server, prefix: &str, max_attempts: u32) -> S3Options {
    S3Options {
        bucket: server.bucket.clone(),
        prefix: prefix.to_string(),
        endpoint: Some(server.endpoint.clone()),
        region: Some(server.region.clone()),
        force_path_style: true,
        credentials: S3Credentials::Static {
            access_key_id: server.access_key_id.clone(),
            secret_access_key: server.secret_access_key.clone(),
        },
        request_checksum: RequestChecksum::WhenRequired,
        max_attempts,
        connect_timeout: std::time::Duration::from_secs(5),
    }
}

#[tokio::test]
async fn local_directory_store_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let store = FsStore::new(dir.path(), "ferry").unwrap();
    suite::conformance(&store, true, false).await;
    // Temporary files never show up as objects, and none are left behind.
    assert!(
        store
            .list("")
            .try_concat()
            .await
            .unwrap()
            .iter()
            .all(|m| !m.key.starts_with(".tmp"))
    );
    let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("ferry/.tmp"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n != "uploads")
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert_eq!(
        std::fs::read_dir(dir.path().join("ferry/.tmp/uploads"))
            .unwrap()
            .count(),
        0
    );
}

#[tokio::test]
async fn moto_s3_store_conforms() {
    let server = S3Server::moto().await;
    let store = s3_store(&server, &unique_name("conformance"), 3);
    suite::conformance(&store, server.verifies_md5, true).await;
}

#[tokio::test]
async fn garage_s3_store_conforms() {
    let server = S3Server::garage().await;
    let store = s3_store(&server, &unique_name("conformance"), 3);
    suite::conformance(&store, server.verifies_md5, true).await;
}

#[tokio::test]
async fn flexible_sdk_checksums_work_where_supported() {
    // moto accepts the SDK's CRC32 checksums (AWS's default behaviour).
    let server = S3Server::moto().await;
    let store = S3Store::new(S3Options {
        request_checksum: RequestChecksum::WhenSupported,
        ..s3_options(&server, &unique_name("crc"), 3)
    });
    store
        .put_bytes("a", Bytes::from_static(b"checked twice"), None)
        .await
        .unwrap();
    assert_eq!(
        ferry_storage::get_bytes(&store, "a").await.unwrap(),
        b"checked twice"
    );
}

#[tokio::test]
async fn concurrent_conditional_creates_have_one_winner() {
    let dir = tempfile::tempdir().unwrap();
    let fs: Arc<dyn ObjectStore> = Arc::new(FsStore::new(dir.path(), "").unwrap());
    let moto = S3Server::moto().await;
    let s3: Arc<dyn ObjectStore> = Arc::new(s3_store(&moto, &unique_name("race"), 3));
    // Garage ignores If-None-Match: only stores that honour it promise one winner
    // (see README, "Conditional writes").
    for store in [fs, s3] {
        let attempts = (0..16).map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .put_if_absent("backups/x/m.json", Bytes::from(format!("writer {i}")))
                    .await
                    .unwrap()
            })
        });
        let wins = futures::future::join_all(attempts)
            .await
            .into_iter()
            .filter(|r| *r.as_ref().unwrap())
            .count();
        assert_eq!(wins, 1, "{}", store.describe());
    }
}

#[tokio::test]
async fn s3_errors_are_classified() {
    // Nothing listens: a connection error, worth retrying.
    let dead = S3Server {
        endpoint: format!("http://127.0.0.1:{}", ferry_testkit::free_port()),
        ..S3Server::moto().await
    };
    let err = s3_store(&dead, "", 1).head("k").await.unwrap_err();
    assert!(err.is_retryable(), "{err}");

    // A bucket that does not exist: permanent.
    let server = S3Server::garage().await;
    let missing = S3Server {
        bucket: "no-such-bucket-ferry".into(),
        ..server.clone()
    };
    let err = s3_store(&missing, "", 1)
        .put_bytes("k", Bytes::from_static(b"x"), None)
        .await
        .unwrap_err();
    assert!(!err.is_retryable(), "{err}");

    // Wrong credentials: permanent.
    let wrong = S3Server {
        secret_access_key: "0".repeat(64),
        ..server.clone()
    };
    let err = s3_store(&wrong, "", 1).head("k").await.unwrap_err();
    assert!(!err.is_retryable(), "{err}");

    // 503 SlowDown: retryable, and the SDK's own retries ride it out.
    let proxy = FaultProxy::start(&server.endpoint, 2).await;
    let via = server.via(&proxy);
    let err = s3_store(&via, "", 1).head("k").await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
    let store = s3_store(&via, &unique_name("slow"), 3);
    store
        .put_bytes("k", Bytes::from_static(b"x"), None)
        .await
        .unwrap();
    assert_eq!(proxy.failed(), 2);
    assert!(matches!(
        store.get("absent").await,
        Err(StorageError::NotFound { .. })
    ));
}
