//! Backups of a real PostgreSQL database into a real S3-compatible server (moto):
//! incremental by content, and checked end to end by `ferry verify`.

use std::time::Duration;

use bytes::Bytes;
use ferry::backup::Outcome;
use ferry_e2e::{SAMPLE_SQL, TestEnv};
use ferry_testkit::{S3Server, unique_name};

const STEP: Duration = Duration::from_secs(120);

async fn s3_env() -> TestEnv {
    let server = S3Server::moto().await;
    TestEnv::start(SAMPLE_SQL, |p, c| {
        c.s3_store(&server, &unique_name("e2e"), &p.dir)
            .postgres_source("orders", &p.db_url, &p.password_file)
    })
    .await
}

async fn backup(env: &TestEnv) -> ferry_proto::v1::BackupUploaded {
    match ferry::backup::now(&env.client, "orders", Some(STEP))
        .await
        .expect("backup now")
    {
        Outcome::Succeeded(up) => up,
        other => panic!("backup did not succeed: {other:?}"),
    }
}

#[tokio::test]
async fn second_backup_of_an_unchanged_database_uploads_almost_nothing() {
    let env = s3_env().await;
    let first = backup(&env).await;
    assert_eq!(first.bytes_reused, 0);
    assert!(first.bytes_uploaded > 0);
    let second = backup(&env).await;
    assert_ne!(first.backup_id, second.backup_id);
    // pg_dump's table of contents carries the dump time, so it changes; every table
    // file is identical and reused.
    assert!(
        second.bytes_uploaded * 20 < first.bytes_uploaded,
        "second backup uploaded {} of {} bytes (first uploaded {})",
        second.bytes_uploaded,
        second.bytes_total,
        first.bytes_uploaded
    );
    assert_eq!(
        second.bytes_uploaded + second.bytes_reused,
        second.bytes_total
    );

    // Both are listed, newest first, with their reused share.
    let store = env.store();
    let listed = ferry::list::backups(store.as_ref(), Some("orders"))
        .await
        .unwrap();
    let ids: Vec<&str> = listed.iter().map(|m| m.backup_id.as_str()).collect();
    assert_eq!(ids, [second.backup_id.as_str(), first.backup_id.as_str()]);
    assert!(listed[0].files.iter().any(|f| f.reused));
}

#[tokio::test]
async fn verify_passes_on_a_good_backup_and_names_damaged_and_missing_objects() {
    let env = s3_env().await;
    let up = backup(&env).await;
    let store = env.store();
    let manifest = ferry::restore::find_backup(store.as_ref(), "orders", "latest")
        .await
        .unwrap();
    assert_eq!(manifest.backup_id, up.backup_id);
    assert!(manifest.files.len() >= 3);
    let problems = ferry::verify::verify(store.as_ref(), &manifest)
        .await
        .unwrap();
    assert!(problems.is_empty(), "{problems:?}");

    // One byte changed in one object, another object deleted.
    let damaged = &manifest.files[0];
    let mut bytes = ferry_storage::get_bytes(store.as_ref(), &damaged.object)
        .await
        .unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    store
        .put_bytes(&damaged.object, Bytes::from(bytes), None)
        .await
        .unwrap();
    let deleted = &manifest.files[1];
    store.delete(&deleted.object).await.unwrap();

    let problems = ferry::verify::verify(store.as_ref(), &manifest)
        .await
        .unwrap();
    assert_eq!(problems.len(), 2, "{problems:?}");
    let corrupt = problems
        .iter()
        .find(|p| p.object == damaged.object)
        .unwrap();
    assert!(corrupt.problem.starts_with("corrupt"), "{corrupt:?}");
    let missing = problems
        .iter()
        .find(|p| p.object == deleted.object)
        .unwrap();
    assert_eq!(missing.problem, "missing");
}
