//! Retention over a real store and a real NATS (for the leases): many backups made
//! with a controlled clock, shared objects, uploads racing a run, and runs killed
//! midway. Each scenario runs on every store kind the test services provide.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use ferry_storage::layout::manifest_key;

use support::{Env, StoreKind, Wrapped};

const POLICY: &str = "{ keep_last = 3, keep_daily = 4, keep_weekly = 2 }";

fn start() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 1, 0, 0, 0).unwrap()
}

/// Thirty backups, one every 8 hours (10 days), made like the uploader makes them.
async fn thirty_backups(env: &Env, source: &str) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..30 {
        let at = start() + chrono::Duration::hours(8 * i);
        ids.push(env.backup(source, at, i as usize).await);
    }
    ids
}

async fn run_all_kinds<F, Fut>(scenario: F)
where
    F: Fn(StoreKind) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for kind in StoreKind::all() {
        scenario(kind).await;
    }
}

#[tokio::test]
async fn exactly_the_planned_backups_remain_with_all_their_objects() {
    run_all_kinds(|kind| async move {
        let env = Env::start(kind, POLICY).await;
        let source = "orders";
        let ids = thirty_backups(&env, source).await;
        let now = start() + chrono::Duration::hours(8 * 30);

        let retention = env.retention(env.store.clone()).await;
        let expected = env.plan(source, now).await;
        assert!(!expected.delete.is_empty() && !expected.keep.is_empty());
        env.age_objects().await;
        let run = retention
            .run_source(&env.source(source), "job-1", now, false)
            .await
            .expect("retention run");
        assert_eq!(
            run.plan, expected,
            "{kind:?}: the worker applies the plan it previews"
        );

        let remaining = env.backup_ids(source).await;
        let mut planned: Vec<String> = expected.keep.iter().map(|d| d.id.clone()).collect();
        planned.sort();
        assert_eq!(
            remaining, planned,
            "{kind:?}: exactly the kept backups remain"
        );
        assert_eq!(remaining.len() + expected.delete.len(), ids.len());
        env.assert_restorable(source).await;

        // Objects shared between deleted and kept backups survive; objects only
        // deleted backups used are collected.
        let gc = run.gc.expect("a run that deleted backups collects");
        assert!(gc.skipped.is_none());
        let pairs_gone = support::pairs_fully_deleted(&expected);
        assert_eq!(
            gc.objects_deleted as usize,
            expected.delete.len() + pairs_gone,
            "{kind:?}: each deleted backup's own object and the pairs both of whose backups went"
        );
        // The object every backup shares, the surviving pairs', the kept backups' own.
        let objects = env.object_count().await;
        assert_eq!(objects, 1 + (15 - pairs_gone) + expected.keep.len());
    })
    .await;
}

#[tokio::test]
async fn objects_uploaded_during_a_run_are_not_collected() {
    run_all_kinds(|kind| async move {
        let env = Env::start(kind, POLICY).await;
        let source = "orders";
        thirty_backups(&env, source).await;
        // Garbage from an old crashed run: old enough to collect.
        let garbage = env.put_object(b"left over by a crash").await;
        env.age_objects().await;
        // An upload in flight whose manifest is not written yet…
        let before = env.put_object(b"uploaded just before the run").await;
        // …and one that lands while the run deletes.
        let during_key = Arc::new(std::sync::Mutex::new(None::<String>));
        let inner = env.store.clone();
        let slot = during_key.clone();
        let store = Wrapped::around(env.store.clone(), move |op, _key| {
            let (inner, slot) = (inner.clone(), slot.clone());
            async move {
                if op == "delete" && slot.lock().unwrap().is_none() {
                    let key = support::put_object(inner.as_ref(), b"uploaded during the run").await;
                    *slot.lock().unwrap() = Some(key);
                }
            }
        });
        let retention = env.retention(store).await;
        let now = start() + chrono::Duration::hours(8 * 30);
        let run = retention
            .run_source(&env.source(source), "job-2", now, true)
            .await
            .expect("retention run");
        assert!(run.gc.unwrap().objects_deleted > 0);
        let during = during_key
            .lock()
            .unwrap()
            .clone()
            .expect("the racing upload happened");
        assert!(
            env.store.head(&before).await.unwrap().is_some(),
            "{kind:?}: {before} survives"
        );
        assert!(
            env.store.head(&during).await.unwrap().is_some(),
            "{kind:?}: {during} survives"
        );
        assert!(
            env.store.head(&garbage).await.unwrap().is_none(),
            "{kind:?}: old garbage is collected"
        );
        env.assert_restorable(source).await;
    })
    .await;
}

#[tokio::test]
async fn a_backup_committed_during_collection_protects_the_old_objects_it_reuses() {
    run_all_kinds(|kind| async move {
        let env = Env::start(kind, POLICY).await;
        let garbage = vec![
            env.put_object(b"old garbage one").await,
            env.put_object(b"old garbage two").await,
        ];
        env.age_objects().await;
        // While the first old object is being deleted, a backup that reuses the
        // other one commits.
        let reused = Arc::new(std::sync::Mutex::new(None::<String>));
        let (inner, slot, candidates) = (env.store.clone(), reused.clone(), garbage.clone());
        let store = Wrapped::around(env.store.clone(), move |op, key| {
            let (inner, slot, candidates) = (inner.clone(), slot.clone(), candidates.clone());
            async move {
                if op != "delete" || slot.lock().unwrap().is_some() {
                    return;
                }
                let other = candidates.iter().find(|k| **k != key).unwrap().clone();
                support::Env::commit_reusing(
                    inner.as_ref(),
                    "orders",
                    "20260301T000000Z-reuser",
                    std::slice::from_ref(&other),
                )
                .await;
                *slot.lock().unwrap() = Some(other);
            }
        });
        // One candidate held at a time: the manifests are checked again before
        // each deletion.
        let outcome = ferry_retention::gc::collect_garbage(
            store.as_ref(),
            ferry_retention::GcOptions {
                grace: Duration::from_secs(1),
                now: std::time::SystemTime::now(),
                batch: 1,
                max_candidates: 1,
            },
        )
        .await
        .unwrap();
        let reused = reused
            .lock()
            .unwrap()
            .clone()
            .expect("the racing backup committed");
        assert!(
            env.store.head(&reused).await.unwrap().is_some(),
            "{kind:?}: the object the new backup reuses survives"
        );
        assert_eq!(outcome.objects_deleted, 1, "{kind:?}: {outcome:?}");
        assert_eq!(outcome.manifests_read, 1, "{kind:?}: {outcome:?}");
        env.assert_restorable("orders").await;
    })
    .await;
}

#[tokio::test]
async fn a_run_killed_midway_leaves_every_backup_restorable_and_the_next_run_finishes() {
    run_all_kinds(|kind| async move {
        for kill_at_delete in [2usize, 12, 25] {
            let env = Env::start(kind, POLICY).await;
            let source = "orders";
            thirty_backups(&env, source).await;
            env.age_objects().await;
            let now = start() + chrono::Duration::hours(8 * 30);
            let expected = env.plan(source, now).await;

            // The kill: the n-th delete never returns and the run is dropped, as
            // when the process dies. Deletes 1..=n-1 happened.
            let deletes = Arc::new(AtomicUsize::new(0));
            let reached = Arc::new(tokio::sync::Notify::new());
            let (counter, signal) = (deletes.clone(), reached.clone());
            let store = Wrapped::around(env.store.clone(), move |op, _key| {
                let (counter, signal) = (counter.clone(), signal.clone());
                async move {
                    if op == "delete"
                        && counter.fetch_add(1, Ordering::SeqCst) + 1 == kill_at_delete
                    {
                        signal.notify_one();
                        std::future::pending::<()>().await;
                    }
                }
            });
            let retention = env.retention(store).await;
            let config = env.source(source);
            tokio::select! {
                run = retention.run_source(&config, "job-3", now, true) => {
                    panic!("{kind:?}: the run ended before delete {kill_at_delete}: {run:?}")
                }
                _ = reached.notified() => {}
            }
            drop(retention);
            env.assert_restorable(source).await;

            // The next run (after the dead run's leases expire) finishes the job.
            let retention = env.retention(env.store.clone()).await;
            let run = ferry_testkit::wait_until(
                "the dead run's leases expire",
                Duration::from_secs(20),
                || async {
                    retention
                        .run_source(&env.source(source), "job-4", now, true)
                        .await
                        .ok()
                        .filter(|run| run.gc.is_some())
                },
            )
            .await;
            let mut planned: Vec<String> = expected.keep.iter().map(|d| d.id.clone()).collect();
            planned.sort();
            assert_eq!(
                env.backup_ids(source).await,
                planned,
                "{kind:?}: kill at {kill_at_delete}"
            );
            env.assert_restorable(source).await;
            let gc = run.gc.expect("collected");
            assert!(gc.skipped.is_none());
            assert_eq!(
                env.unreferenced_objects().await,
                0,
                "{kind:?}: all garbage collected"
            );
        }
    })
    .await;
}

#[tokio::test]
async fn keep_marks_survive_and_the_last_backup_is_never_deleted() {
    run_all_kinds(|kind| async move {
        let env = Env::start(kind, "{ max_age = \"1day\" }").await;
        let source = "orders";
        let ids = thirty_backups(&env, source).await;
        let catalog = ferry_storage::Catalog::new(env.store.as_ref());
        catalog.set_keep_mark(source, &ids[3], true).await.unwrap();
        let missing = catalog
            .set_keep_mark(source, "20200101T000000Z-nothere", true)
            .await;
        assert!(missing.unwrap_err().to_string().contains("not found"));
        env.age_objects().await;
        // A year later every backup is past max_age: the mark and min_keep decide.
        let now = start() + chrono::Duration::days(365);
        let retention = env.retention(env.store.clone()).await;
        let run = retention
            .run_source(&env.source(source), "job-5", now, true)
            .await
            .unwrap();
        let kept: Vec<(&str, &str)> = run
            .plan
            .keep
            .iter()
            .map(|d| (d.id.as_str(), d.rule))
            .collect();
        assert_eq!(
            kept,
            [
                (ids[29].as_str(), "min_keep"),
                (ids[3].as_str(), "keep_mark")
            ]
        );
        let mut remaining = vec![ids[3].clone(), ids[29].clone()];
        remaining.sort();
        assert_eq!(env.backup_ids(source).await, remaining);
        env.assert_restorable(source).await;
        assert!(
            env.store
                .head(&manifest_key(source, &ids[3]))
                .await
                .unwrap()
                .is_some()
        );
        assert_eq!(env.unreferenced_objects().await, 0);
    })
    .await;
}

#[tokio::test]
async fn the_periodic_sweep_applies_the_policy_and_reports_it() {
    // A policy that expires everything but the newest backup, a backup time far
    // in the past, and the real worker with a one-second sweep.
    let env = Env::start_with(StoreKind::Fs, "{ keep_last = 1 }", "1s").await;
    let source = "orders";
    let ids = thirty_backups(&env, source).await;
    let rt = env.runtime();
    let events = rt
        .jetstream
        .get_stream(ferry_proto::subjects::EVENTS_STREAM)
        .await
        .unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let worker = tokio::spawn(ferry_retention::run(rt.clone(), shutdown.clone()));
    let remaining = ferry_testkit::wait_until(
        "the sweep expires 29 backups",
        Duration::from_secs(30),
        || async {
            let ids = env.backup_ids(source).await;
            (ids.len() == 1).then_some(ids)
        },
    )
    .await;
    assert_eq!(remaining, [ids[29].clone()]);
    let subject = ferry_proto::subjects::EventKind::Retention.subject(source);
    let message = ferry_testkit::wait_until(
        "RetentionApplied from the sweep",
        Duration::from_secs(10),
        || async { events.get_last_raw_message_by_subject(&subject).await.ok() },
    )
    .await;
    let applied =
        <ferry_proto::v1::RetentionApplied as prost::Message>::decode(message.payload.as_ref())
            .unwrap();
    assert!(applied.job_id.starts_with("sweep-"), "{}", applied.job_id);
    assert_eq!(applied.deleted.len(), 29);
    assert_eq!(applied.kept.len(), 1);
    assert_eq!(applied.kept[0].rule, "keep_last");
    shutdown.cancel();
    worker.await.unwrap().unwrap();
    env.assert_restorable(source).await;
}

/// A segment record written like capture writes it (object first, record last).
fn segment_record(object: &str, start: u32, end: u32) -> ferry_storage::pitr::SegmentRecord {
    use ferry_storage::pitr::{ClusterTime, RECORD_FORMAT, SegmentRecord};
    SegmentRecord {
        format: RECORD_FORMAT,
        source: "orders".into(),
        start: ClusterTime::new(start, 1),
        end: ClusterTime::new(end, 1),
        operations: 3,
        object: object.into(),
        sha256: object.trim_start_matches("objects/").into(),
        size: 16,
        raw_size: 16,
        compression: ferry_storage::Compression::Zstd,
        prev: None,
        resume_token: None,
        committed_at: Utc::now(),
        captured_by: "test".into(),
    }
}

#[tokio::test]
async fn objects_of_point_in_time_segments_are_never_collected() {
    run_all_kinds(|kind| async move {
        let env = Env::start(kind, POLICY).await;
        let catalog = ferry_storage::Catalog::new(env.store.as_ref());
        let captured = env.put_object(b"captured changes").await;
        let garbage = env.put_object(b"referenced by nothing").await;
        assert!(
            catalog
                .commit_segment(&segment_record(&captured, 100, 200))
                .await
                .unwrap()
        );
        env.age_objects().await;
        let options = ferry_retention::GcOptions {
            grace: Duration::from_secs(1),
            now: std::time::SystemTime::now(),
            batch: 10,
            max_candidates: 10,
        };
        let outcome = ferry_retention::gc::collect_garbage(env.store.as_ref(), options)
            .await
            .unwrap();
        assert!(
            env.store.head(&captured).await.unwrap().is_some(),
            "{kind:?}: the segment's object survives"
        );
        assert!(
            env.store.head(&garbage).await.unwrap().is_none(),
            "{kind:?}"
        );
        assert_eq!(
            (outcome.manifests_read, outcome.objects_deleted),
            (1, 1),
            "{kind:?}: {outcome:?}"
        );
        let timeline = catalog.timeline("orders").await.unwrap();
        assert_eq!(timeline.windows.len(), 1, "{kind:?}: {timeline:?}");
        assert_eq!(timeline.windows[0].operations, 3);

        // An unreadable segment record stops the collection: what it references
        // is unknown.
        let other = env.put_object(b"more garbage").await;
        env.age_objects().await;
        let broken = ferry_storage::pitr::segment_key(
            "orders",
            ferry_storage::pitr::ClusterTime::new(200, 1),
            ferry_storage::pitr::ClusterTime::new(300, 1),
        );
        env.store
            .put_bytes(&broken, bytes::Bytes::from_static(b"{ not json"), None)
            .await
            .unwrap();
        let options = ferry_retention::GcOptions {
            now: std::time::SystemTime::now(),
            ..options
        };
        let outcome = ferry_retention::gc::collect_garbage(env.store.as_ref(), options)
            .await
            .unwrap();
        let why = outcome.skipped.clone().expect("collection skipped");
        assert!(why.contains(&broken), "{kind:?}: {why}");
        assert!(env.store.head(&other).await.unwrap().is_some(), "{kind:?}");
        assert!(
            catalog.timeline("orders").await.is_err(),
            "{kind:?}: the timeline names the unreadable record"
        );
    })
    .await;
}

#[tokio::test]
async fn point_in_time_records_expire_with_the_oldest_base_backup_a_rule_keeps() {
    use ferry_storage::pitr::{ClusterTime, GapRecord, RECORD_FORMAT, RecordKind};
    let env = Env::start(StoreKind::Fs, POLICY).await;
    let source = "catalog";
    let catalog = ferry_storage::Catalog::new(env.store.as_ref());
    // Four base backups, an hour apart, consistent at 1000, 2000, 3000, 4000.
    let mut ids = Vec::new();
    for i in 0..4 {
        let at = start() + chrono::Duration::hours(i as i64);
        ids.push(env.mongo_backup(source, at, i, 1000 * (i as u32 + 1)).await);
    }
    // The oldest is marked: kept, but it keeps no changes (see the README).
    catalog.set_keep_mark(source, &ids[0], true).await.unwrap();
    let gap = GapRecord {
        format: RECORD_FORMAT,
        source: source.into(),
        start: ClusterTime::new(400, 1),
        end: ClusterTime::new(500, 1),
        cause: "test".into(),
        detected_at: Utc::now(),
    };
    assert!(catalog.record_gap(&gap).await.unwrap());
    // One chain, each segment linked to the one before.
    let mut prev: Option<ferry_storage::pitr::Link> = None;
    for (from, to) in [
        (500, 1000),
        (1000, 1500),
        (1500, 2500),
        (2500, 3500),
        (3500, 4500),
    ] {
        let object = env
            .put_object(format!("changes {from}-{to}").as_bytes())
            .await;
        let mut record = segment_record(&object, from, to);
        record.source = source.into();
        record.prev = prev.take();
        assert!(catalog.commit_segment(&record).await.unwrap());
        prev = Some(ferry_storage::pitr::Link {
            end: record.end,
            sha256: record.sha256.clone(),
        });
    }

    let retention = env.retention(env.store.clone()).await;
    let now = start() + chrono::Duration::hours(5);
    let run = retention
        .run_source(&env.source(source), "job-pitr", now, false)
        .await
        .unwrap();
    // keep_last = 2 keeps the backups consistent at 3000 and 4000; the mark keeps
    // the first.
    assert_eq!(run.plan.delete.len(), 1, "{:?}", run.plan);
    let left: Vec<(RecordKind, u32, u32)> = catalog
        .pitr_records(source)
        .await
        .unwrap()
        .iter()
        .map(|r| (r.kind, r.start.t, r.end.t))
        .collect();
    assert_eq!(
        left,
        [
            (RecordKind::Segment, 2500, 3500),
            (RecordKind::Segment, 3500, 4500)
        ],
        "only what a restore from the backup consistent at 3000 needs"
    );
    // A restore from that backup still has its whole chain.
    let timeline = catalog.timeline(source).await.unwrap();
    assert!(
        timeline
            .window_covering(ClusterTime::new(3000, 1), ClusterTime::new(4500, 1))
            .is_some(),
        "{timeline:?}"
    );

    // Never the newest record, where capture resumes, even when every backup is
    // newer than it.
    let at = start() + chrono::Duration::hours(6);
    env.mongo_backup(source, at, 9, 9000).await;
    env.mongo_backup(source, at + chrono::Duration::minutes(1), 10, 9500)
        .await;
    retention
        .run_source(
            &env.source(source),
            "job-pitr-2",
            at + chrono::Duration::hours(1),
            false,
        )
        .await
        .unwrap();
    let left = catalog.pitr_records(source).await.unwrap();
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0].end.t, 4500);
}
