//! Physical PostgreSQL backups and WAL archiving, restored to instants: a base
//! backup taken under a pgbench workload, more workload with each table's checksum
//! recorded at known instants, then restores (by `ferry restore --to-datadir
//! --start`, as the cluster's OS user) to several of those instants, one across a
//! segment switch and one by LSN, each compared table by table; one before the
//! base backup's end is refused. Then timelines: a restore promoted onto a new
//! timeline takes writes, and restores on the new and on the old timeline are
//! both exact.

use std::time::Duration;

use ferry_e2e::mongo::backup_now;
use ferry_e2e::physical::{Mark, Physical, SOURCE, mark, pgbench, state, switch_wal, text};
use ferry_proto::subjects::EventKind;
use ferry_proto::v1::RetentionApplied;
use ferry_storage::wal::{Lsn, segment_name};
use ferry_testkit::wait_until;

const STEP: Duration = Duration::from_secs(240);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn physical_restores_reach_each_instant_on_each_timeline() {
    // Retention keeps the newest base backup: it runs after each one.
    let phys = Physical::start_with(|s| s.keep_last(1), |_, c| c).await;
    let pg = phys.pg();
    let before_backup = chrono::Utc::now();

    // The base backup runs while pgbench writes.
    let load = {
        let pg = pg.clone();
        tokio::spawn(async move { pgbench(&pg, &["-n", "-T", "8", "-c", "2"]).await })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let base = backup_now(&phys.env, SOURCE, STEP).await;
    load.await.unwrap();
    let physical = base
        .postgres
        .as_ref()
        .and_then(|p| p.physical.clone())
        .expect("a physical base backup");
    assert_eq!(physical.timeline, 1);
    assert_eq!(
        base.files
            .iter()
            .map(|f| f.name.as_str())
            .collect::<Vec<_>>(),
        ["base.tar.zst"]
    );

    // Instants, with segment switches between some of them.
    let mut marks: Vec<Mark> = Vec::new();
    for i in 0..5 {
        pgbench(&pg, &["-n", "-t", "40", "-c", "2"]).await;
        marks.push(mark(&pg).await);
        if i == 1 || i == 3 {
            switch_wal(&pg).await;
        }
    }
    // A commit after the last instant, so recovery sees it passed, all archived.
    pgbench(&pg, &["-n", "-t", "5", "-c", "1"]).await;
    let (tl, last) = switch_wal(&pg).await;
    phys.wait_archived(tl, &last).await;

    // Before the base backup's end: refused, naming the earliest restorable time.
    let early = before_backup.to_rfc3339();
    let refused = phys
        .ferry(&[
            "restore",
            "--source",
            SOURCE,
            "--at",
            &early,
            "--to-datadir",
            &phys.root.path.join("never").display().to_string(),
        ])
        .await;
    assert!(!refused.status.success());
    assert!(
        text(&refused).contains("no base backup of phys is consistent by"),
        "{}",
        text(&refused)
    );
    assert!(!phys.root.path.join("never").exists());

    // To instants: the first, one across a segment switch, and one by LSN.
    let at = |m: &Mark| m.time.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let (first_dir, first) = phys
        .restore_started("r-first", &["--at", &at(&marks[0])])
        .await;
    assert_eq!(state(&first).await, marks[0].state, "restored to mark 0");
    // The first restore was promoted onto timeline 2, which archives into the
    // same source: from now on the default (the newest timeline) would follow it.
    let (dir, switched) = phys
        .restore_started("r-switch", &["--timeline", "1", "--at", &at(&marks[2])])
        .await;
    assert_eq!(state(&switched).await, marks[2].state, "restored to mark 2");
    phys.root.stop(&dir);
    let (dir, by_lsn) = phys
        .restore_started("r-lsn", &["--timeline", "1", "--at-lsn", &marks[3].lsn])
        .await;
    assert_eq!(
        state(&by_lsn).await,
        marks[3].state,
        "restored to mark 3's LSN"
    );
    phys.root.stop(&dir);

    // Write on timeline 2, then restore each timeline.
    pgbench(&first, &["-n", "-t", "40", "-c", "2"]).await;
    let on_two = mark(&first).await;
    pgbench(&first, &["-n", "-t", "5", "-c", "1"]).await;
    let (tl, seg) = switch_wal(&first).await;
    assert_eq!(tl, 2, "the promoted restore runs on a new timeline");
    phys.wait_archived(tl, &seg).await;
    phys.root.stop(&first_dir);
    assert_ne!(on_two.state, marks[4].state);

    let (dir, new_tl) = phys
        .restore_started("r-tl2", &["--timeline", "2", "--at", &at(&on_two)])
        .await;
    assert_eq!(state(&new_tl).await, on_two.state, "timeline 2");
    phys.root.stop(&dir);
    let (dir, old_tl) = phys
        .restore_started("r-tl1", &["--timeline", "1", "--at", &at(&marks[4])])
        .await;
    assert_eq!(
        state(&old_tl).await,
        marks[4].state,
        "timeline 1 after the fork"
    );
    phys.root.stop(&dir);

    // The chain as `ferry pitr status` sees it, and the backup as `verify` does.
    let status = phys
        .ferry(&["pitr", "status", "--source", SOURCE, "--json"])
        .await;
    assert!(status.status.success(), "{}", text(&status));
    let json: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let wal = &json["wal"];
    assert_eq!(wal["base_backups"][0]["backup_id"], base.backup_id.as_str());
    assert_eq!(wal["missing"].as_array().map(Vec::len), Some(0), "{json}");
    let timelines: Vec<u64> = wal["timelines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["timeline"].as_u64().unwrap())
        .collect();
    assert!(timelines.starts_with(&[1, 2]), "{timelines:?}");
    let verified = phys.ferry(&["verify", "--source", SOURCE]).await;
    assert!(verified.status.success(), "{}", text(&verified));

    // A second base backup: retention deletes the first, then the WAL before the
    // second's start on its timeline; what the second needs stays.
    let second = backup_now(&phys.env, SOURCE, STEP).await;
    let applied: RetentionApplied = phys
        .env
        .event(
            EventKind::Retention,
            SOURCE,
            STEP,
            |r: &RetentionApplied| r.deleted.iter().any(|d| d.backup_id == base.backup_id),
        )
        .await;
    assert_eq!(applied.kept.len(), 1);
    let kept = second.postgres.unwrap().physical.unwrap();
    let size = kept.wal_segment_size;
    let start: Lsn = kept.start_lsn.parse().unwrap();
    let store = phys.env.store();
    // The first base backup's first segment: archived (verify checked it), and
    // older than anything the second needs.
    let first_start: Lsn = physical.start_lsn.parse().unwrap();
    let before = segment_name(1, first_start.segment(size), size);
    assert!(first_start.segment(size) < start.segment(size));
    let first_needed = segment_name(1, start.segment(size), size);
    wait_until("WAL before the kept base backup expired", STEP, || async {
        store
            .head(&format!("wal/{SOURCE}/00000001/{before}"))
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    assert!(
        store
            .head(&format!("wal/{SOURCE}/00000001/{first_needed}"))
            .await
            .unwrap()
            .is_some(),
        "the kept backup's first segment stays"
    );
    let verified = phys.ferry(&["verify", "--source", SOURCE]).await;
    assert!(verified.status.success(), "{}", text(&verified));
    let refused = phys
        .ferry(&[
            "restore",
            "--source",
            SOURCE,
            "--timeline",
            "1",
            "--at",
            &at(&marks[4]),
            "--to-datadir",
            &phys.root.path.join("gone").display().to_string(),
        ])
        .await;
    assert!(
        text(&refused).contains("no base backup of phys is consistent by"),
        "{}",
        text(&refused)
    );
}
