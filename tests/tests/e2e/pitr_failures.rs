//! Point-in-time capture when things go wrong: the capturing replica killed with
//! SIGKILL mid-segment (another takes over, the chain has no missing and no
//! repeated change), and history lost for real while capture is down (a gap
//! record, a gap event, a notification, a new base backup, and restores refused
//! across the gap but exact on either side).

use std::time::Duration;

use chrono::Utc;
use ferry::restore::mongo::MongoRestoreOptions;
use ferry::restore::pitr::{self, PitrError, PitrPlan, Target};
use ferry_e2e::TestEnv;
use ferry_e2e::pitr::{
    STEP, Writer, assert_same_state, captured_through, consistent_point, restored_state, state_at,
};
use ferry_e2e::processes::binary;
use ferry_proto::subjects::EventKind;
use ferry_proto::v1::{BackupUploaded, CaptureGap};
use ferry_storage::pitr::ClusterTime;
use ferry_storage::{Catalog, ObjectStore};
use ferry_testkit::{MongoServer, MongoStart, Source, TestConfig, wait_until};
use mongodb::Client;

async fn restore_and_compare(
    store: &dyn ObjectStore,
    server: &MongoServer,
    client: &Client,
    plan: &PitrPlan,
    log: &[(ClusterTime, ferry_e2e::pitr::Change)],
    db: &str,
) {
    let options = MongoRestoreOptions {
        to: server.url().to_string(),
        rename_db: [("shop".to_string(), db.to_string())].into(),
        parallel_collections: 2,
        parallel_batches: 4,
        ..Default::default()
    };
    pitr::restore(store, plan, &options)
        .await
        .unwrap_or_else(|e| panic!("restore to {}: {e:#}", plan.target));
    let what = format!("at {} (base {})", plan.target, plan.base.backup_id);
    assert_same_state(
        &restored_state(client, db).await,
        &state_at(log, plan.target),
        &what,
    );
}

/// A `ferry-capture` process.
fn spawn_capture(config: &std::path::Path, log: &std::path::Path) -> tokio::process::Child {
    tokio::process::Command::new(binary("ferry-capture"))
        .arg("--config")
        .arg(config)
        .env(
            "FERRY_HTTP__LISTEN",
            format!("127.0.0.1:{}", ferry_testkit::free_port()),
        )
        .env("FERRY_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .expect("start ferry-capture")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sigkilled_capture_replica_is_replaced_without_a_missing_or_repeated_change() {
    let server = MongoServer::start(MongoStart {
        noop_heartbeat_seconds: Some(1),
        ..Default::default()
    })
    .await;
    let client = server.client().await;
    let mut writer = Writer::new(&client).await;
    for _ in 0..30 {
        writer.step().await;
    }
    // The pipeline in this process, for base backups; capture as two processes of
    // their own on the same NATS and store (this process's capture worker has
    // nothing to do: its source has capture off).
    let env = TestEnv::start("", |_, c| {
        c.source(Source::mongodb("shop", server.url(), &["shop"]))
    })
    .await;
    let store = env.store();
    let capture_toml = TestConfig::new()
        .nats(env.nats.url())
        .dir_spool(&env.dir.path().join("capture-spool"))
        .fs_store(&env.dir.path().join("store"))
        .set("dumper", "lease_ttl", "3s")
        .set("capture", "poll", "200ms")
        .source(Source::mongodb("shop", server.url(), &["shop"]).pitr("2s"))
        .write(&env.dir.path().join("capture.toml"));
    let mut first = spawn_capture(&capture_toml, &env.dir.path().join("capture-1.log"));
    let first_pid = first.id().unwrap();
    // The first replica takes the lease (and asks for the base backup capture
    // starts with); only then the second, which waits.
    let base: BackupUploaded = env.event(EventKind::Uploaded, "shop", STEP, |_| true).await;
    let mut second = spawn_capture(&capture_toml, &env.dir.path().join("capture-2.log"));
    let second_pid = second.id().unwrap();

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let work = tokio::spawn({
        let stop = stop.clone();
        async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                writer.step().await;
            }
            writer
        }
    });
    // Two segments from the first replica, then SIGKILL one second into the next.
    let captured_by = |pid: u32| {
        let store = store.clone();
        async move {
            wait_until("a segment committed by the replica", STEP, || async {
                let catalog = Catalog::new(store.as_ref());
                let records = catalog.pitr_records("shop").await.ok()?;
                let mut n = 0;
                for r in records {
                    let s = catalog.read_segment(&r.key()).await.ok()??;
                    if s.captured_by.ends_with(&format!("/{pid}")) && s.operations > 0 {
                        n += 1;
                    }
                }
                (n >= 2).then_some(())
            })
            .await
        }
    };
    captured_by(first_pid).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    first.start_kill().unwrap();
    first.wait().await.unwrap();
    // The lease expires (3 s) and the second replica carries on.
    captured_by(second_pid).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let writer = work.await.unwrap();
    let log = writer.log;
    let last = log.last().unwrap().0;
    captured_through(store.as_ref(), "shop", last).await;

    let timeline = Catalog::new(store.as_ref()).timeline("shop").await.unwrap();
    assert!(timeline.gaps.is_empty(), "no gap: {:?}", timeline.gaps);
    assert_eq!(timeline.windows.len(), 1, "{:?}", timeline.windows);
    let window = &timeline.windows[0];
    // Every change of the window exactly once: as many oplog entries as the
    // workload made changes in it (each change here is one entry).
    let made = log
        .iter()
        .filter(|(t, _)| *t > window.from && *t <= window.to)
        .count() as u64;
    assert_eq!(window.operations, made, "no missing and no repeated change");

    // Restores across the takeover are exact.
    let base = Catalog::new(store.as_ref())
        .read("shop", &base.backup_id)
        .await
        .unwrap();
    let from = consistent_point(&base);
    let targets: Vec<ClusterTime> = log.iter().map(|(t, _)| *t).filter(|t| *t > from).collect();
    for (i, target) in [targets[targets.len() / 2], last].into_iter().enumerate() {
        let plan = pitr::plan(store.as_ref(), "shop", Target::Op(target), Utc::now())
            .await
            .unwrap();
        restore_and_compare(
            store.as_ref(),
            &server,
            &client,
            &plan,
            &log,
            &format!("after_kill_{i}"),
        )
        .await;
    }
    second.start_kill().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn history_lost_while_capture_is_down_is_a_gap_never_silent() {
    // A small oplog: history moves past capture's resume point while it is down.
    let server = MongoServer::start(MongoStart {
        noop_heartbeat_seconds: Some(1),
        oplog_max_entries: Some(300),
        ..Default::default()
    })
    .await;
    let client = server.client().await;
    let mut writer = Writer::new(&client).await;
    for _ in 0..30 {
        writer.step().await;
    }
    let mut env = TestEnv::start("", |_, c| {
        c.source(Source::mongodb("shop", server.url(), &["shop"]).pitr("2s"))
    })
    .await;
    let store = env.store();
    let first: BackupUploaded = env.event(EventKind::Uploaded, "shop", STEP, |_| true).await;
    let first = Catalog::new(store.as_ref())
        .read("shop", &first.backup_id)
        .await
        .unwrap();
    for _ in 0..100 {
        writer.step().await;
    }
    let before_gap = writer.log.last().unwrap().0;
    captured_through(store.as_ref(), "shop", before_gap).await;

    // Capture down; the oplog rolls over past where it stopped.
    env.stop().await.unwrap();
    let resume = Catalog::new(store.as_ref())
        .timeline("shop")
        .await
        .unwrap()
        .newest()
        .unwrap();
    let rolled = tokio::time::Instant::now() + STEP;
    loop {
        for _ in 0..100 {
            writer.step().await;
        }
        let floor = ferry_mongo::oplog_floor(&client).await.unwrap().unwrap();
        if ClusterTime::new(floor.time, floor.increment) > resume {
            break;
        }
        assert!(
            tokio::time::Instant::now() < rolled,
            "the oplog did not roll past the resume point {resume}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let in_gap = writer.log.last().unwrap().0;

    env.restart().await;
    let gap: CaptureGap = env.event(EventKind::Gap, "shop", STEP, |_| true).await;
    assert_eq!(gap.reason, "history_lost");
    let (start, end) = (gap.start.unwrap(), gap.end.unwrap());
    assert_eq!(ClusterTime::new(start.seconds, start.increment), resume);
    assert!(ClusterTime::new(end.seconds, end.increment) >= in_gap);
    let timeline = Catalog::new(store.as_ref()).timeline("shop").await.unwrap();
    assert!(
        timeline.gaps.iter().any(|g| g.recorded && g.from == resume),
        "the gap record: {:?}",
        timeline.gaps
    );
    // Told like a failure, and a new base backup taken.
    let hook = wait_until("the gap notification", STEP, || async {
        env.webhook
            .requests()
            .into_iter()
            .find(|r| r.json()["stage"] == "capture")
    })
    .await
    .json();
    assert_eq!(hook["reason"], "history_lost");
    assert_eq!(hook["source"], "shop");
    assert!(
        !gap.requested_job_id.is_empty(),
        "a base backup was requested"
    );
    let second: BackupUploaded = env
        .event(EventKind::Uploaded, "shop", STEP, |u: &BackupUploaded| {
            u.job_id == gap.requested_job_id
        })
        .await;
    let second = Catalog::new(store.as_ref())
        .read("shop", &second.backup_id)
        .await
        .unwrap();
    for _ in 0..60 {
        writer.step().await;
    }
    let last = writer.log.last().unwrap().0;
    captured_through(store.as_ref(), "shop", last).await;
    let log = writer.log;

    // Across the gap: refused, naming it.
    let err = pitr::plan(store.as_ref(), "shop", Target::Op(in_gap), Utc::now())
        .await
        .expect_err("a restore across the gap is refused");
    assert!(matches!(err, PitrError::InGap { .. }), "{err}");
    assert!(err.to_string().contains(&resume.to_string()), "{err}");
    // Either side: exact.
    let before = log
        .iter()
        .map(|(t, _)| *t)
        .filter(|t| *t > consistent_point(&first) && *t <= before_gap)
        .nth(40)
        .unwrap();
    let plan = pitr::plan(store.as_ref(), "shop", Target::Op(before), Utc::now())
        .await
        .unwrap();
    assert_eq!(plan.base.backup_id, first.backup_id);
    restore_and_compare(store.as_ref(), &server, &client, &plan, &log, "before_gap").await;
    let plan = pitr::plan(store.as_ref(), "shop", Target::Op(last), Utc::now())
        .await
        .unwrap();
    assert_eq!(plan.base.backup_id, second.backup_id);
    restore_and_compare(store.as_ref(), &server, &client, &plan, &log, "after_gap").await;

    // The same refusals from the CLI: a message naming the reason, a non-zero
    // exit, and nothing written to the target.
    let cli = TestConfig::new()
        .nats(env.nats.url())
        .fs_store(&env.dir.path().join("store"))
        .source(Source::mongodb("shop", server.url(), &["shop"]).pitr("2s"))
        .source(Source::mongodb("plain", server.url(), &["shop"]))
        .write(&env.dir.path().join("cli.toml"));
    let future = (Utc::now() + chrono::Duration::hours(2))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let early = ClusterTime::new(consistent_point(&first).t - 600, 1).to_string();
    let in_gap = in_gap.to_string();
    let cases: [(&str, &[&str], &str); 5] = [
        ("shop", &["--at", "10:30 yesterday"], "RFC 3339"),
        ("shop", &["--at", &future], "in the future"),
        ("shop", &["--at-op", &early], "before the first base backup"),
        ("shop", &["--at-op", &in_gap], "were not captured"),
        ("plain", &["--at-op", &in_gap], "has no captured changes"),
    ];
    for (i, (source, args, expected)) in cases.iter().enumerate() {
        let target = format!("refused_{i}");
        let out = tokio::process::Command::new(binary("ferry"))
            .arg("--config")
            .arg(&cli)
            .args(["restore", "--source", source, "--to", server.url()])
            .args(["--rename-db", &format!("shop:{target}")])
            .args(*args)
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} is refused: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        let names = client.list_database_names().await.unwrap();
        assert!(
            !names.contains(&target),
            "{args:?} wrote nothing: {names:?}"
        );
    }
}
