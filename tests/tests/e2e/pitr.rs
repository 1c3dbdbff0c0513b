//! Point-in-time restores of a MongoDB source: capture runs beside the pipeline
//! while a workload makes every kind of change, each recorded with its cluster
//! time and the document it left; restores to random instants across segments and
//! base backups must give exactly the state of that instant, byte for byte.

use std::time::Duration;

use chrono::Utc;
use ferry::restore::mongo::MongoRestoreOptions;
use ferry::restore::pitr::{self, PitrError, Target};
use ferry_e2e::TestEnv;
use ferry_e2e::mongo::backup_now;
use ferry_e2e::pitr::{
    Change, STEP, Writer, assert_same_state, captured_through, consistent_point, restored_state,
    state_at,
};
use ferry_proto::subjects::EventKind;
use ferry_proto::v1::BackupUploaded;
use ferry_storage::Catalog;
use ferry_storage::pitr::ClusterTime;
use ferry_testkit::{MongoServer, MongoStart, Source};
use rand::Rng;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restores_to_random_instants_give_the_state_of_that_instant() {
    // A server of its own, with mongod's no-op heartbeat, so the cluster time (and
    // the captured window) advances while the workload pauses.
    let server = MongoServer::start(MongoStart {
        noop_heartbeat_seconds: Some(1),
        ..Default::default()
    })
    .await;
    let client = server.client().await;
    let mut writer = Writer::new(&client).await;
    for _ in 0..50 {
        writer.step().await;
    }

    let env = TestEnv::start("", |_, c| {
        c.source(Source::mongodb("shop", server.url(), &["shop"]).pitr("2s"))
    })
    .await;
    let store = env.store();

    // Capture's start asks for a base backup; the workload runs all along.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let rename = writer.rename.clone();
    let work = tokio::spawn({
        let stop = stop.clone();
        async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                writer.step().await;
            }
            writer
        }
    });
    let first: BackupUploaded = env.event(EventKind::Uploaded, "shop", STEP, |_| true).await;
    let first = Catalog::new(store.as_ref())
        .read("shop", &first.backup_id)
        .await
        .unwrap();
    // A rename between the base backups, when none runs.
    tokio::time::sleep(Duration::from_secs(2)).await;
    rename.store(true, std::sync::atomic::Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let second = backup_now(&env, "shop", STEP).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let writer = work.await.unwrap();
    let log = writer.log;
    let (b1, b2) = (consistent_point(&first), consistent_point(&second));
    assert!(b1 < b2);
    let last = log.last().unwrap().0;
    assert!(
        log.iter()
            .any(|(t, c)| *t > b1 && *t < b2 && matches!(c, Change::Rename(..))),
        "a rename was made between the base backups"
    );
    assert!(
        log.iter()
            .any(|(t, c)| *t > b1 && matches!(c, Change::Drop(..))),
        "and a drop"
    );
    captured_through(store.as_ref(), "shop", last).await;

    let status = ferry::commands::pitr::status(store.as_ref(), "shop", Utc::now())
        .await
        .unwrap();
    assert_eq!(status.gaps.len(), 0, "{status:?}");
    assert_eq!(status.windows.len(), 1, "one unbroken chain: {status:?}");

    // Five operations after the first base backup: two before the second's
    // consistent point, three after; and one wall-clock second.
    let mut rng = rand::rng();
    let before: Vec<ClusterTime> = log
        .iter()
        .map(|(t, _)| *t)
        .filter(|t| *t > b1 && *t <= b2)
        .collect();
    let after: Vec<ClusterTime> = log.iter().map(|(t, _)| *t).filter(|t| *t > b2).collect();
    assert!(
        before.len() >= 10 && after.len() >= 10,
        "{} {}",
        before.len(),
        after.len()
    );
    // Spread: one in each third of the time after each base backup (a third of
    // either range spans more than one 2 s segment), so the targets fall in several
    // segments whatever the draw.
    let pick =
        |times: &[ClusterTime], part: usize, parts: usize, rng: &mut rand::rngs::ThreadRng| {
            let (from, to) = (times.len() * part / parts, times.len() * (part + 1) / parts);
            times[rng.random_range(from..to)]
        };
    let mut targets: Vec<Target> = vec![
        Target::Op(pick(&before, 0, 3, &mut rng)),
        Target::Op(pick(&before, 2, 3, &mut rng)),
        Target::Op(pick(&after, 0, 3, &mut rng)),
        Target::Op(pick(&after, 1, 3, &mut rng)),
        Target::Op(pick(&after, 2, 3, &mut rng)),
    ];
    // The instant right after the rename: replayed from the first base backup.
    let renamed_at = log
        .iter()
        .find(|(t, c)| *t > b1 && *t < b2 && matches!(c, Change::Rename(..)))
        .map(|(t, _)| *t)
        .unwrap();
    targets.push(Target::Op(renamed_at));
    let second_of = before[rng.random_range(0..before.len())];
    targets.push(Target::At(second_of.to_datetime()));

    let mut segments_used = std::collections::BTreeSet::new();
    let mut bases_used = std::collections::BTreeSet::new();
    for (i, target) in targets.iter().enumerate() {
        let plan = pitr::plan(store.as_ref(), "shop", *target, Utc::now())
            .await
            .unwrap_or_else(|e| panic!("plan {target}: {e}"));
        bases_used.insert(plan.base.backup_id.clone());
        // The segment holding the target itself.
        if let Some(s) = plan
            .segments
            .iter()
            .find(|s| s.start < plan.target && plan.target <= s.end)
        {
            segments_used.insert((s.start, s.end));
        }
        let db = format!("shop_at_{i}");
        let options = MongoRestoreOptions {
            to: server.url().to_string(),
            rename_db: [("shop".to_string(), db.clone())].into(),
            parallel_collections: 2,
            parallel_batches: 4,
            ..Default::default()
        };
        let report = pitr::restore(store.as_ref(), &plan, &options)
            .await
            .unwrap_or_else(|e| panic!("restore to {target}: {e:#}"));
        let expected = state_at(&log, plan.target);
        let restored = restored_state(&client, &db).await;
        let what = format!(
            "at {target} (base {}, {} segments, {} changes replayed)",
            plan.base.backup_id, report.segments, report.segment_changes
        );
        assert_same_state(&restored, &expected, &what);
    }
    assert_eq!(bases_used.len(), 2, "both base backups served");

    // --collection keeps working with --at: only that collection, as it was.
    let target = Target::Op(after[after.len() / 2]);
    let plan = pitr::plan(store.as_ref(), "shop", target, Utc::now())
        .await
        .unwrap();
    let options = MongoRestoreOptions {
        to: server.url().to_string(),
        rename_db: [("shop".to_string(), "orders_only".to_string())].into(),
        collection: Some("shop.orders".into()),
        parallel_collections: 2,
        parallel_batches: 4,
        ..Default::default()
    };
    pitr::restore(store.as_ref(), &plan, &options)
        .await
        .unwrap_or_else(|e| panic!("restore of shop.orders to {target}: {e:#}"));
    let mut expected = state_at(&log, plan.target);
    expected.retain(|coll, _| coll == "orders");
    assert_same_state(
        &restored_state(&client, "orders_only").await,
        &expected,
        &format!("shop.orders alone at {target}"),
    );
    assert!(
        segments_used.len() >= 3,
        "the targets fall in {} segments",
        segments_used.len()
    );

    // Refused, each with its reason: nothing to restore from.
    let refuse = |target: Target| {
        let store = store.clone();
        async move {
            pitr::plan(store.as_ref(), "shop", target, Utc::now())
                .await
                .expect_err("refused")
        }
    };
    let early = ClusterTime::new(b1.t - 3600, 0);
    assert!(matches!(
        refuse(Target::Op(early)).await,
        PitrError::BeforeFirstBase { .. }
    ));
    let future = Utc::now() + chrono::Duration::hours(1);
    assert!(matches!(
        refuse(Target::At(future)).await,
        PitrError::InFuture { .. }
    ));
    let err = pitr::plan(store.as_ref(), "nothing", Target::Op(last), Utc::now())
        .await
        .expect_err("no capture");
    assert!(matches!(err, PitrError::NoCapture(_)), "{err}");
}
