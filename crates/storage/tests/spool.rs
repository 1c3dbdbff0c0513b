//! Both spools, on a real nats-server for the NATS one: a job's removal takes
//! exactly its files, can be repeated, and finds them without listing the bucket.

use std::path::Path;

use async_nats::jetstream;
use ferry_storage::spool::{DirSpool, NatsSpool, Spool, index_bucket, keys_under};
use ferry_testkit::{NatsServer, unique_name};
use tokio::io::AsyncReadExt;

async fn put(spool: &dyn Spool, local: &Path, job_id: &str, name: &str) {
    let file = local.join(format!("{job_id}-{}", name.replace('/', "_")));
    std::fs::write(&file, format!("{job_id}:{name}")).unwrap();
    spool.put_file(job_id, name, &file).await.unwrap();
}

async fn read(spool: &dyn Spool, job_id: &str, name: &str) -> String {
    let mut body = spool.open(job_id, name).await.unwrap();
    let mut text = String::new();
    body.read_to_string(&mut text).await.unwrap();
    text
}

/// Two jobs in, one removed (twice): the other job's files are untouched.
async fn remove_job_takes_exactly_the_jobs_files(spool: &dyn Spool, local: &Path) {
    let names = ["toc.dat", "3001.dat.zst", "db/päth with space.bson"];
    for name in names {
        put(spool, local, "job-a", name).await;
        put(spool, local, "job-b", name).await;
    }
    assert_eq!(
        read(spool, "job-a", names[2]).await,
        format!("job-a:{}", names[2])
    );
    spool.remove_job("job-a").await.unwrap();
    spool.remove_job("job-a").await.unwrap();
    spool.remove_job("never-spooled").await.unwrap();
    for name in names {
        assert!(!spool.has_file("job-a", name).await.unwrap(), "{name}");
        assert!(spool.has_file("job-b", name).await.unwrap(), "{name}");
        assert_eq!(read(spool, "job-b", name).await, format!("job-b:{name}"));
    }
    assert!(spool.remove_job("../escape").await.is_err());
}

#[tokio::test]
async fn directory_spool_removes_one_job() {
    let dir = tempfile::tempdir().unwrap();
    let spool = DirSpool::new(&dir.path().join("spool")).unwrap();
    let local = dir.path().join("local");
    std::fs::create_dir_all(&local).unwrap();
    remove_job_takes_exactly_the_jobs_files(&spool, &local).await;
    assert!(spool.node_local());
}

#[tokio::test]
async fn nats_spool_removes_one_job_through_its_index() {
    let nats = NatsServer::start().await;
    let js = jetstream::new(nats.client().await);
    let bucket = unique_name("spool").replace('_', "-");
    let spool = NatsSpool::open(&js, &bucket, 1).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    remove_job_takes_exactly_the_jobs_files(&spool, dir.path()).await;
    assert!(!spool.node_local());

    // The index holds exactly the remaining job's three files.
    let index = js.get_key_value(index_bucket(&bucket)).await.unwrap();
    assert_eq!(keys_under(&index, "job-a.").await.unwrap().len(), 0);
    assert_eq!(keys_under(&index, "job-b.").await.unwrap().len(), 3);
    spool.remove_job("job-b").await.unwrap();
    assert_eq!(keys_under(&index, "job-b.").await.unwrap().len(), 0);
}
