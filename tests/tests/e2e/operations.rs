//! Operations over real processes: each worker is its own OS process (the real
//! binaries), exporting spans over OTLP (gRPC and HTTP) to a receiver this test
//! runs, and serving `/metrics` and `/readyz`.

use std::collections::BTreeSet;
use std::time::Duration;

use ferry_e2e::otlp::{ReceivedSpan, render_tree, tree_problems};
use ferry_e2e::processes::{Stack, WORKERS, Worker, sample};
use ferry_proto::reason;
use ferry_proto::subjects::EventKind;
use ferry_proto::v1::{BackupFailed, BackupUploaded, RetentionApplied};

const SPAN_KIND_PRODUCER: i32 = 4;
const SPAN_KIND_CONSUMER: i32 = 5;

/// Waits until the trace of `job_id` has spans of every one of `services` and forms
/// one tree; returns the spans, or panics with what is missing and the tree so far.
async fn trace_of(stack: &Stack, job_id: &str, services: &[&str]) -> Vec<ReceivedSpan> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let root = stack
            .otlp
            .spans()
            .into_iter()
            .find(|s| s.service == "ferry-scheduler" && s.attr("ferry.job_id") == job_id);
        let spans = root
            .map(|r| stack.otlp.trace(&r.trace_id))
            .unwrap_or_default();
        let seen: BTreeSet<&str> = spans
            .iter()
            .filter(|s| s.attr("ferry.job_id") == job_id)
            .map(|s| s.service.as_str())
            .collect();
        let missing: Vec<&&str> = services.iter().filter(|s| !seen.contains(**s)).collect();
        let problems = tree_problems(&spans);
        if missing.is_empty() && problems.is_empty() {
            return spans;
        }
        if tokio::time::Instant::now() > deadline {
            panic!(
                "trace of job {job_id}: services missing {missing:?}, problems {problems:?}\n{}",
                render_tree(&spans)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Checks one job's trace: one trace id for everything about the job, one tree
/// rooted at the scheduler, messaging and Ferry attributes on every hop.
fn check_trace(
    stack: &Stack,
    spans: &[ReceivedSpan],
    job_id: &str,
    source: &str,
    services: &[&str],
) {
    let root = spans
        .iter()
        .find(|s| s.parent_span_id.is_empty())
        .expect("a root span");
    assert_eq!(
        root.service, "ferry-scheduler",
        "the scheduler's span is the root"
    );
    assert_eq!(root.attr("ferry.job_id"), job_id);
    // Every span anyone exported about this job is in this one trace.
    let trace_ids: BTreeSet<String> = stack
        .otlp
        .spans()
        .into_iter()
        .filter(|s| s.attr("ferry.job_id") == job_id)
        .map(|s| s.trace_id)
        .collect();
    assert_eq!(trace_ids.len(), 1, "one job, one trace: {trace_ids:?}");

    for service in services {
        let main = spans
            .iter()
            .find(|s| s.service == *service && s.attr("ferry.job_id") == job_id)
            .unwrap_or_else(|| panic!("{service} has a span of job {job_id}"));
        assert_eq!(main.attr("ferry.source"), source, "{service}: {main:?}");
        assert!(!main.attr("ferry.stage").is_empty(), "{service}: {main:?}");
    }
    // Every hop over NATS: a producer span on one side, a consumer span on the
    // other, both naming the system, the subject and the message id.
    let hops: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|s| s.kind == SPAN_KIND_PRODUCER || s.kind == SPAN_KIND_CONSUMER)
        .filter(|s| s.attributes.contains_key("messaging.operation.type"))
        .collect();
    assert!(hops.len() >= 2 * (services.len() - 1), "{hops:?}");
    for hop in hops {
        assert_eq!(hop.attr("messaging.system"), "nats", "{hop:?}");
        assert!(
            hop.attr("messaging.destination.name")
                .starts_with("ferry.v1."),
            "{hop:?}"
        );
        assert!(!hop.attr("messaging.message.id").is_empty(), "{hop:?}");
    }
    for consumer in spans.iter().filter(|s| s.kind == SPAN_KIND_CONSUMER) {
        let parent = spans
            .iter()
            .find(|p| p.span_id == consumer.parent_span_id)
            .expect("parent exported");
        assert_eq!(
            parent.kind, SPAN_KIND_PRODUCER,
            "a consumer span descends from the publish: {consumer:?}"
        );
        assert_eq!(
            parent.attr("messaging.message.id"),
            consumer.attr("messaging.message.id"),
            "{consumer:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_job_is_one_trace_across_the_five_worker_processes() {
    let stack = Stack::start().await;

    let good = stack.backup("good").await;
    let uploaded: BackupUploaded = stack.event(EventKind::Uploaded, "good", &good).await;
    let _: RetentionApplied = stack.event(EventKind::Retention, "good", &good).await;
    let bad = stack.backup("bad").await;
    let failed: BackupFailed = stack.event(EventKind::Failed, "bad", &bad).await;
    assert_eq!(failed.reason, reason::AUTH_FAILED, "{failed:?}");

    let all: Vec<&str> = WORKERS.iter().map(|(name, ..)| *name).collect();
    let spans = trace_of(&stack, &good, &all).await;
    println!(
        "trace of the good backup {} (job {good}):\n{}",
        uploaded.backup_id,
        render_tree(&spans)
    );
    check_trace(&stack, &spans, &good, "good", &all);
    let dumper = spans
        .iter()
        .find(|s| s.service == "ferry-dumper" && s.attr("ferry.job_id") == good)
        .unwrap();
    let dumped: u64 = dumper
        .attr("ferry.bytes_dumped")
        .parse()
        .expect("bytes on the span");
    assert_eq!(dumped, uploaded.bytes_total, "{dumper:?}");
    let protocols: BTreeSet<&str> = spans.iter().map(|s| s.protocol).collect();
    assert_eq!(
        protocols,
        BTreeSet::from(["grpc", "http"]),
        "both OTLP protocols carried the trace"
    );

    let failing = ["ferry-scheduler", "ferry-dumper", "ferry-notifier"];
    let failed_spans = trace_of(&stack, &bad, &failing).await;
    println!(
        "trace of the failing backup (job {bad}):\n{}",
        render_tree(&failed_spans)
    );
    check_trace(&stack, &failed_spans, &bad, "bad", &failing);
    // The uploader's only part in a failed job is its spool janitor, which
    // handles the final failure event; it uploads nothing.
    let failed_subject = EventKind::Failed.subject("bad");
    let uploads: Vec<&str> = failed_spans
        .iter()
        .filter(|s| s.service == "ferry-uploader")
        .filter(|s| {
            !s.attr("messaging.destination.name").is_empty()
                && s.attr("messaging.destination.name") != failed_subject
                || s.name == "upload_object"
                || s.name == "write_manifest"
        })
        .map(|s| s.name.as_str())
        .collect();
    assert!(
        uploads.is_empty(),
        "nothing was uploaded for the failed job: {uploads:?}"
    );

    // Log lines written inside a job's spans carry its trace and span ids, in both
    // log formats.
    let trace_id = &spans[0].trace_id;
    let dumper = stack.worker("ferry-dumper").log_text();
    assert!(
        dumper
            .lines()
            .any(|l| l.contains(&format!("\"trace_id\":\"{trace_id}\""))
                && l.contains("\"span_id\":\"")),
        "JSON logs carry trace_id and span_id:\n{dumper}"
    );
    let scheduler = stack.worker("ferry-scheduler").log_text();
    assert!(
        scheduler
            .lines()
            .any(|l| l.contains(&format!("trace_id={trace_id} span_id="))),
        "text logs carry trace_id and span_id:\n{scheduler}"
    );
}

/// Waits until `series` on `worker`'s `/metrics` satisfies `ok`; returns its value.
async fn wait_sample(
    stack: &Stack,
    worker: &Worker,
    series: &str,
    ok: impl Fn(f64) -> bool,
) -> f64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let text = stack.metrics(worker).await;
        if let Some(v) = sample(&text, series)
            && ok(v)
        {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("{} {series} never as expected:\n{text}", worker.name);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_with_backups_and_readiness_follows_nats() {
    let mut stack = Stack::start().await;
    let scheduler = stack.worker("ferry-scheduler");
    let dumper = stack.worker("ferry-dumper");
    let uploader = stack.worker("ferry-uploader");
    let retention = stack.worker("ferry-retention");
    let notifier = stack.worker("ferry-notifier");

    // Consumer lag is reported from the start.
    for (worker, consumer) in [
        (dumper, "ferry-dumper"),
        (uploader, "ferry-uploader"),
        (retention, "ferry-retention"),
        (notifier, "ferry-notifier-webhook-0"),
    ] {
        let series = format!(r#"ferry_consumer_pending_messages{{consumer="{consumer}"}}"#);
        wait_sample(&stack, worker, &series, |v| v == 0.0).await;
    }

    let good = stack.backup("good").await;
    let first: BackupUploaded = stack.event(EventKind::Uploaded, "good", &good).await;
    let _: RetentionApplied = stack.event(EventKind::Retention, "good", &good).await;
    let bad = stack.backup("bad").await;
    let _: BackupFailed = stack.event(EventKind::Failed, "bad", &bad).await;

    let handled = |stage: &str, outcome: &str| {
        format!(r#"ferry_messages_handled_total{{stage="{stage}",outcome="{outcome}"}}"#)
    };
    let last_success = |stage: &str, source: &str| {
        format!(r#"ferry_last_success_timestamp_seconds{{stage="{stage}",source="{source}"}}"#)
    };
    wait_sample(
        &stack,
        scheduler,
        r#"ferry_jobs_requested_total{trigger="manual",outcome="published"}"#,
        |v| v == 2.0,
    )
    .await;
    wait_sample(&stack, dumper, &handled("dumper", "succeeded"), |v| {
        v == 1.0
    })
    .await;
    wait_sample(&stack, dumper, &handled("dumper", "failed"), |v| v == 1.0).await;
    wait_sample(&stack, dumper, "ferry_dumped_bytes_total", |v| v > 0.0).await;
    wait_sample(&stack, dumper, &last_success("dumper", "good"), |v| v > 0.0).await;
    wait_sample(
        &stack,
        dumper,
        r#"ferry_last_failure_timestamp_seconds{stage="dumper",source="bad"}"#,
        |v| v > 0.0,
    )
    .await;
    wait_sample(
        &stack,
        dumper,
        r#"ferry_handle_duration_seconds_count{stage="dumper"}"#,
        |v| v == 2.0,
    )
    .await;
    // The uploader handles the job's DumpCompleted and each file's DumpFileReady.
    let files = first.files as f64;
    wait_sample(&stack, uploader, &handled("uploader", "succeeded"), |v| {
        v >= 1.0 + files
    })
    .await;
    let uploaded = wait_sample(&stack, uploader, "ferry_uploaded_bytes_total", |v| v > 0.0).await;
    assert_eq!(
        uploaded as u64, first.bytes_uploaded,
        "the counter is what the backup reported"
    );
    let t1 = wait_sample(&stack, uploader, &last_success("uploader", "good"), |v| {
        v > 0.0
    })
    .await;
    wait_sample(&stack, retention, &handled("retention", "succeeded"), |v| {
        v == 1.0
    })
    .await;
    wait_sample(&stack, retention, &last_success("retention", "good"), |v| {
        v > 0.0
    })
    .await;
    let sent = r#"ferry_notifications_total{channel="webhook-0",outcome="sent"}"#;
    wait_sample(&stack, notifier, sent, |v| v == 2.0).await;

    // A second backup of unchanged data: every object is already stored.
    let again = stack.backup("good").await;
    let second: BackupUploaded = stack.event(EventKind::Uploaded, "good", &again).await;
    assert!(second.bytes_reused > 0, "{second:?}");
    let files = files + second.files as f64;
    wait_sample(&stack, uploader, &handled("uploader", "succeeded"), |v| {
        v >= 2.0 + files
    })
    .await;
    let reused = wait_sample(&stack, uploader, "ferry_reused_bytes_total", |v| v > 0.0).await;
    assert_eq!(reused as u64, second.bytes_reused);
    wait_sample(&stack, uploader, &last_success("uploader", "good"), |v| {
        v > t1
    })
    .await;
    wait_sample(
        &stack,
        uploader,
        r#"ferry_in_flight{stage="uploader"}"#,
        |v| v == 0.0,
    )
    .await;
    wait_sample(&stack, notifier, sent, |v| v == 3.0).await;

    // Readiness follows NATS: unready while it is gone, ready once it is back.
    for worker in &stack.workers {
        assert_eq!(stack.get(worker, "/healthz").await.map(|r| r.0), Some(200));
    }
    stack.nats.stop();
    for worker in &stack.workers {
        let body = stack.wait_ready(worker, false).await;
        assert!(body.contains("NATS"), "{}: {body}", worker.name);
        assert_eq!(
            stack.get(worker, "/healthz").await.map(|r| r.0),
            Some(200),
            "{} stays alive without NATS",
            worker.name
        );
    }
    stack.nats.restart().await;
    for worker in &stack.workers {
        stack.wait_ready(worker, true).await;
    }
    for worker in &mut stack.workers {
        assert!(
            worker.is_running(),
            "{} survived the NATS outage",
            worker.name
        );
    }
    // And the pipeline works again.
    let after = stack.backup("good").await;
    let _: BackupUploaded = stack.event(EventKind::Uploaded, "good", &after).await;
}
