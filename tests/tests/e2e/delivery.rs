//! Delivery guarantees: a poison message is reported and dropped, and a job
//! delivered twice produces one backup.

use std::time::Duration;

use async_nats::jetstream;
use ferry_e2e::TestEnv;
use ferry_proto::Message;
use ferry_proto::subjects::{self, EventKind};
use ferry_proto::v1::{BackupFailed, BackupUploaded, JobRequested};
use ferry_testkit::TestConfig;

const STEP: Duration = Duration::from_secs(90);

fn one_source(p: &ferry_e2e::Paths, c: TestConfig) -> TestConfig {
    c.postgres_source("once", &p.db_url, &p.password_file)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_job_is_reported_and_dropped_and_work_goes_on() {
    let env = TestEnv::start("CREATE TABLE t (id int);", one_source).await;
    let js = jetstream::new(env.client.clone());
    js.publish(subjects::JOB_DUMP, vec![0xff, 0xff, 0xff, 0x01].into())
        .await
        .unwrap()
        .await
        .unwrap();
    let failed: BackupFailed = env
        .event(EventKind::Failed, "_invalid", STEP, |f: &BackupFailed| {
            f.reason == ferry_proto::reason::MALFORMED_MESSAGE
        })
        .await;
    assert_eq!(failed.stage, ferry_proto::v1::Stage::Dumper as i32);
    assert!(
        failed.message.contains(subjects::JOB_DUMP),
        "{}",
        failed.message
    );
    let outcome = ferry::backup::now(&env.client, "once", Some(STEP))
        .await
        .unwrap();
    assert!(
        matches!(outcome, ferry::backup::Outcome::Succeeded(_)),
        "{outcome:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_delivered_twice_makes_one_backup() {
    let env = TestEnv::start(
        "CREATE TABLE t (id int); INSERT INTO t VALUES (42);",
        one_source,
    )
    .await;
    let first: BackupUploaded = match ferry::backup::now(&env.client, "once", Some(STEP))
        .await
        .unwrap()
    {
        ferry::backup::Outcome::Succeeded(up) => up,
        other => panic!("{other:?}"),
    };
    // The job as the dumpers received it, published again under another message id:
    // what JetStream does when a dumper's ack is lost after it finished.
    let job: JobRequested = env
        .event(EventKind::Requested, "once", STEP, |j: &JobRequested| {
            j.job_id == first.job_id
        })
        .await;
    let js = jetstream::new(env.client.clone());
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", "redelivery-of-the-same-job");
    js.publish_with_headers(subjects::JOB_DUMP, headers, job.encode_to_vec().into())
        .await
        .unwrap()
        .await
        .unwrap();

    // Wait until the dumpers have consumed it (work-queue stream drained).
    ferry_testkit::wait_until("the jobs stream to drain", STEP, || async {
        let mut stream = js.get_stream(subjects::JOBS_STREAM).await.ok()?;
        let messages = stream.info().await.ok()?.state.messages;
        let mut consumer = stream
            .get_consumer::<jetstream::consumer::pull::Config>("ferry-dumper")
            .await
            .ok()?;
        let c = consumer.info().await.ok()?;
        (messages == 0 && c.num_ack_pending == 0).then_some(())
    })
    .await;

    let manifests = ferry_storage::Catalog::new(env.store().as_ref())
        .backups(Some("once"))
        .await
        .unwrap();
    assert_eq!(manifests.len(), 1, "{manifests:?}");
    let spool = env.dir.path().join("spool");
    let left: Vec<_> = std::fs::read_dir(&spool).unwrap().collect();
    assert!(left.is_empty(), "the spool is clean: {left:?}");
    let dumped_count = count_subject(&js, &EventKind::Dumped.subject("once")).await;
    assert_eq!(dumped_count, 1, "one dump announced");
}

async fn count_subject(js: &jetstream::Context, subject: &str) -> u64 {
    let stream = js.get_stream(subjects::EVENTS_STREAM).await.unwrap();
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            filter_subject: subject.to_string(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut consumer = consumer;
    consumer.info().await.unwrap().num_pending
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_is_retried_with_backoff_then_fails_for_good() {
    let closed_port = ferry_testkit::free_port();
    let env = TestEnv::start("", |p, c| {
        c.retry("100ms", "400ms").postgres_source(
            "down",
            &format!("postgres://postgres@127.0.0.1:{closed_port}/x"),
            &p.password_file,
        )
    })
    .await;
    let outcome = ferry::backup::now(&env.client, "down", Some(STEP))
        .await
        .unwrap();
    let ferry::backup::Outcome::Failed(failed) = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(failed.reason, ferry_proto::reason::UNREACHABLE);
    assert_eq!(
        failed.attempt, 4,
        "the dumper tries four times before giving up"
    );
    assert!(
        failed.message.contains("gave up after 4 attempts"),
        "{}",
        failed.message
    );
    assert!(
        failed.message.contains(&closed_port.to_string()) || failed.message.contains("reach"),
        "{}",
        failed.message
    );
    // Exactly one failure event for the job, not one per attempt.
    let js = jetstream::new(env.client.clone());
    assert_eq!(
        count_subject(&js, &EventKind::Failed.subject("down")).await,
        1
    );
}
