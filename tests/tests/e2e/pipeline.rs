//! A backup end to end over real NATS and PostgreSQL: scheduled, dumped, uploaded,
//! committed by its manifest, kept by retention, notified, traced, and restored.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{Timelike, Utc};
use ferry_e2e::{SAMPLE_SQL, TestEnv};
use ferry_proto::subjects::EventKind;
use ferry_proto::v1::{BackupFailed, BackupUploaded, RetentionApplied};
use ferry_storage::layout::manifest_key;
use ferry_storage::{Manifest, get_bytes};
use ferry_testkit::Source;
use opentelemetry_sdk::trace::InMemorySpanExporter;
use sha2::{Digest, Sha256};

const STEP: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_backup_is_committed_restorable_notified_and_traced() {
    let exporter = InMemorySpanExporter::default();
    let telemetry = ferry_telemetry::init_with_exporter(
        &ferry_telemetry::TelemetryOptions {
            service_name: "ferry-e2e".into(),
            ..Default::default()
        },
        exporter.clone(),
    )
    .expect("telemetry");

    // A 6-field cron that fires once, a few seconds from now.
    let at = Utc::now() + chrono::Duration::seconds(4);
    let schedule = format!("{} {} {} * * *", at.second(), at.minute(), at.hour());
    let mut env = TestEnv::start(SAMPLE_SQL, |p, c| {
        c.source(
            Source::postgres("orders", &p.db_url)
                .password_file(&p.password_file)
                .schedule(&schedule)
                .keep_last(3),
        )
    })
    .await;

    let uploaded: BackupUploaded = env
        .event(EventKind::Uploaded, "orders", STEP, |_| true)
        .await;
    assert!(
        uploaded.files >= 3,
        "toc.dat plus one data file per table: {uploaded:?}"
    );
    assert_eq!(uploaded.bytes_reused, 0, "first backup reuses nothing");

    // The manifest exists and lists every file with a matching SHA-256.
    let store = env.store();
    let key = manifest_key("orders", &uploaded.backup_id);
    let manifest = Manifest::from_json(&get_bytes(store.as_ref(), &key).await.unwrap()).unwrap();
    assert_eq!(manifest.job_id, uploaded.job_id);
    assert_eq!(manifest.files.len() as u64, uploaded.files);
    assert!(
        manifest.server_version.starts_with("15"),
        "{}",
        manifest.server_version
    );
    for file in &manifest.files {
        let bytes = get_bytes(store.as_ref(), &file.object).await.unwrap();
        assert_eq!(bytes.len() as u64, file.size, "{}", file.name);
        assert_eq!(
            hex::encode(Sha256::digest(&bytes)),
            file.sha256,
            "{}",
            file.name
        );
    }
    assert!(
        manifest
            .files
            .iter()
            .any(|f| f.name == format!("{}/toc.dat.zst", env.db.name))
    );

    // Retention ran for this job and kept the backup.
    let retention: RetentionApplied = env
        .event(
            EventKind::Retention,
            "orders",
            STEP,
            |r: &RetentionApplied| r.job_id == uploaded.job_id,
        )
        .await;
    assert_eq!(retention.kept.len(), 1);
    assert!(retention.deleted.is_empty());

    // The webhook heard about the success.
    let notified = ferry_testkit::wait_until("the success webhook", STEP, || async {
        env.webhook.requests().into_iter().find(|r| {
            r.json()["event"] == "succeeded" && r.json()["job_id"] == uploaded.job_id.as_str()
        })
    })
    .await;
    let body = notified.json();
    assert_eq!(body["source"], "orders");
    assert_eq!(body["backup_id"], uploaded.backup_id.as_str());

    // pg_restore of the fetched backup into a new database gives the same rows.
    let restored_dir = env.dir.path().join("restored");
    ferry::restore::fetch_to_dir(store.as_ref(), &manifest, &restored_dir)
        .await
        .unwrap();
    let target = env.pg.create_database("ferry_restored").await;
    let status = tokio::process::Command::new(env.pg.bin_dir.join("pg_restore"))
        .arg("--no-owner")
        .arg("--exit-on-error")
        .arg("--dbname")
        .arg(env.pg.url(&target.name))
        .arg(restored_dir.join(&env.db.name))
        .status()
        .await
        .unwrap();
    assert!(status.success(), "pg_restore failed");
    let source_sums = env.db.table_checksums().await;
    // Two tables, plus the sequences' and large objects' entries.
    assert_eq!(source_sums.len(), 4, "{source_sums:?}");
    assert!(
        source_sums
            .iter()
            .any(|(t, rows, _)| t == "sales.items" && *rows == 20000)
    );
    assert_eq!(target.table_checksums().await, source_sums);

    // Every stage's span of this job shares one trace id.
    let spans_of_job = || {
        telemetry.flush();
        exporter
            .get_finished_spans()
            .unwrap()
            .into_iter()
            .filter(|s| {
                s.attributes.iter().any(|kv| {
                    kv.key.as_str() == "ferry.job_id"
                        && kv.value.as_str() == uploaded.job_id.as_str()
                })
            })
            .collect::<Vec<_>>()
    };
    let expected: BTreeSet<&str> =
        ["scheduler", "dumper", "uploader", "retention", "notifier"].into();
    let spans = ferry_testkit::wait_until("spans of every stage", STEP, || async {
        let spans = spans_of_job();
        let stages: BTreeSet<String> = spans
            .iter()
            .flat_map(|s| {
                s.attributes
                    .iter()
                    .filter(|kv| kv.key.as_str() == "ferry.stage")
                    .map(|kv| kv.value.to_string())
            })
            .collect();
        expected
            .iter()
            .all(|s| stages.contains(*s))
            .then_some(spans)
    })
    .await;
    let trace_ids: BTreeSet<String> = spans
        .iter()
        .map(|s| s.span_context.trace_id().to_string())
        .collect();
    assert_eq!(trace_ids.len(), 1, "one job, one trace: {trace_ids:?}");
    assert_eq!(
        manifest.trace_id.as_deref(),
        trace_ids.first().map(String::as_str)
    );
    let root = spans
        .iter()
        .find(|s| s.name == "job orders")
        .expect("the scheduler's root span");
    assert_eq!(
        root.parent_span_id,
        opentelemetry::trace::SpanId::INVALID,
        "the scheduler's span is the root"
    );

    env.stop().await.expect("every worker stops cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_fails_with_a_clear_reason_and_is_notified() {
    let env = TestEnv::start("CREATE TABLE t (id int);", |p, c| {
        c.postgres_source("badpw", &p.db_url, &p.wrong_password_file)
    })
    .await;
    let outcome = ferry::backup::now(&env.client, "badpw", Some(STEP))
        .await
        .unwrap();
    let ferry::backup::Outcome::Failed(failed) = outcome else {
        panic!("expected a failure, got {outcome:?}")
    };
    assert_eq!(failed.reason, ferry_proto::reason::AUTH_FAILED);
    assert_eq!(failed.stage, ferry_proto::v1::Stage::Dumper as i32);
    assert!(failed.message.contains("password"), "{}", failed.message);
    assert!(
        !failed.message.contains("definitely-not-the-password"),
        "secrets never travel"
    );

    let hook = ferry_testkit::wait_until("the failure webhook", STEP, || async {
        env.webhook
            .requests()
            .into_iter()
            .find(|r| r.json()["event"] == "failed")
    })
    .await
    .json();
    assert_eq!(hook["reason"], "auth_failed");
    assert_eq!(hook["stage"], "dumper");
    assert_eq!(hook["source"], "badpw");
    assert!(env.ferry_is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_job_from_a_raw_nats_client_produces_a_backup() {
    let env = TestEnv::start(
        "CREATE TABLE t (id int); INSERT INTO t VALUES (1), (2);",
        |p, c| c.postgres_source("manual", &p.db_url, &p.password_file),
    )
    .await;
    // A raw client, no Ferry code: what `nats pub ferry.v1.jobs.request '{"source":"manual"}'` does.
    let raw = async_nats::connect(env.nats.url()).await.unwrap();
    raw.publish("ferry.v1.jobs.request", r#"{"source":"manual"}"#.into())
        .await
        .unwrap();
    raw.flush().await.unwrap();
    let uploaded: BackupUploaded = env
        .event(EventKind::Uploaded, "manual", STEP, |_| true)
        .await;
    assert!(!uploaded.backup_id.is_empty());

    // Request-reply (`nats request`) answers with the job id, and that job succeeds too.
    let reply = raw
        .request(
            "ferry.v1.jobs.request",
            r#"{"source":"manual","reason":"before upgrade"}"#.into(),
        )
        .await
        .unwrap();
    let reply: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(reply["ok"], true, "{reply}");
    let job_id = reply["job_id"].as_str().unwrap().to_string();
    let second: BackupUploaded = env
        .event(EventKind::Uploaded, "manual", STEP, |u: &BackupUploaded| {
            u.job_id == job_id
        })
        .await;
    assert_eq!(second.backup_id, reply["backup_id"].as_str().unwrap());
    assert_ne!(second.backup_id, uploaded.backup_id);
    // A high-priority job takes the express lane and is stored too.
    let urgent = raw
        .request(
            "ferry.v1.jobs.request",
            r#"{"source":"manual","priority":"high"}"#.into(),
        )
        .await
        .unwrap();
    let urgent: serde_json::Value = serde_json::from_slice(&urgent.payload).unwrap();
    let urgent_job = urgent["job_id"].as_str().unwrap().to_string();
    env.event(EventKind::Uploaded, "manual", STEP, |u: &BackupUploaded| {
        u.job_id == urgent_job
    })
    .await;
    // Unchanged data: the second backup's table data is content the first one stored.
    assert!(second.bytes_reused > 0, "{second:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_requests_are_reported_and_leave_every_worker_running() {
    let env = TestEnv::start("CREATE TABLE t (id int);", |p, c| {
        c.postgres_source("good", &p.db_url, &p.password_file)
    })
    .await;
    let raw = async_nats::connect(env.nats.url()).await.unwrap();
    let huge = format!(
        r#"{{"source":"good","reason":"{}"}}"#,
        "x".repeat(2 * 1024 * 1024)
    );
    let cases: [(&str, Vec<u8>, &str, &str); 5] = [
        (
            "malformed JSON",
            b"{\"source\": ".to_vec(),
            "_invalid",
            "malformed_request",
        ),
        (
            "unknown source",
            br#"{"source":"nosuch"}"#.to_vec(),
            "nosuch",
            "unknown_source",
        ),
        (
            "2 MB payload",
            huge.into_bytes(),
            "_invalid",
            "payload_too_large",
        ),
        (
            "bad source name",
            br#"{"source":"Bad.Name"}"#.to_vec(),
            "_invalid",
            "invalid_source_name",
        ),
        (
            "unknown priority",
            br#"{"source":"good","priority":"asap"}"#.to_vec(),
            "_invalid",
            "malformed_request",
        ),
    ];
    for (what, payload, subject_source, reason) in cases {
        let reply = raw
            .request("ferry.v1.jobs.request", payload.into())
            .await
            .unwrap();
        let reply: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
        assert_eq!(reply["ok"], false, "{what}: {reply}");
        assert_eq!(reply["reason"], reason, "{what}: {reply}");
        let job_id = reply["job_id"].as_str().unwrap().to_string();
        let failed: BackupFailed = env
            .event(
                EventKind::Failed,
                subject_source,
                STEP,
                |f: &BackupFailed| f.job_id == job_id,
            )
            .await;
        assert_eq!(failed.reason, reason, "{what}");
        assert!(!failed.message.is_empty(), "{what}: the event says why");
        assert_eq!(failed.stage, ferry_proto::v1::Stage::Scheduler as i32);
    }
    // Every worker is still running, and a valid job still becomes a backup.
    assert!(env.ferry_is_running());
    let outcome = ferry::backup::now(&env.client, "good", Some(STEP))
        .await
        .unwrap();
    assert!(
        matches!(outcome, ferry::backup::Outcome::Succeeded(_)),
        "{outcome:?}"
    );
}
