//! The WAL archive when things go wrong: a different file pushed under an
//! archived name fails and leaves the stored one intact; a push killed mid-upload
//! and retried succeeds; a missing segment is found by `ferry pitr status` and a
//! restore past it is refused naming it; a damaged one is found by `ferry verify`
//! and `ferry pitr status --check`; and a physical source on a server that does not
//! archive is refused with the setting to change.

use std::time::Duration;

use ferry_e2e::mongo::backup_now;
use ferry_e2e::physical::{Physical, SOURCE, pgbench, switch_wal, text};
use ferry_e2e::processes::binary;
use ferry_proto::reason;
use ferry_proto::subjects::EventKind;
use ferry_proto::v1::{BackupFailed, Stage, WalArchived};
use ferry_storage::get_bytes;
use ferry_storage::wal::{Lsn, segment_name};
use ferry_testkit::{S3Server, Source, TestConfig};

const STEP: Duration = Duration::from_secs(240);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broken_archive_is_found_and_never_overwritten() {
    let phys = Physical::start(|paths, c| {
        // The shared test cluster archives nothing.
        c.source(
            Source::postgres("nowal", &paths.db_url)
                .password_file(&paths.password_file)
                .set("mode", "physical"),
        )
    })
    .await;
    let pg = phys.pg();
    let store = phys.env.store();
    let base = backup_now(&phys.env, SOURCE, STEP).await;
    let physical = base.postgres.unwrap().physical.unwrap();
    for _ in 0..3 {
        pgbench(&pg, &["-n", "-t", "20", "-c", "1"]).await;
        switch_wal(&pg).await;
    }
    let (tl, last) = switch_wal(&pg).await;
    phys.wait_archived(tl, &last).await;
    let size = physical.wal_segment_size;
    let start: Lsn = physical.start_lsn.parse().unwrap();
    let stop: Lsn = physical.stop_lsn.parse().unwrap();
    let first = segment_name(1, start.segment(size), size);
    let first_key = format!("wal/{SOURCE}/00000001/{first}");
    let stored = get_bytes(store.as_ref(), &first_key).await.unwrap();

    // A different file under an archived name: refused, the stored one intact.
    let fake_dir = phys.root.path.join("fake");
    std::fs::create_dir_all(&fake_dir).unwrap();
    let fake = fake_dir.join(&first);
    std::fs::write(&fake, vec![7u8; size as usize]).unwrap();
    phys.root.chown(&fake_dir);
    let pushed = phys
        .ferry(&["wal-push", "--source", SOURCE, &fake.display().to_string()])
        .await;
    assert!(!pushed.status.success());
    assert!(
        text(&pushed).contains("already holds different content"),
        "{}",
        text(&pushed)
    );
    assert_eq!(get_bytes(store.as_ref(), &first_key).await.unwrap(), stored);
    // Told as a failure of the archive stage, for the notifier and the metrics;
    // and the archiver's successes are reported in batches.
    let failed: BackupFailed = phys
        .env
        .event(EventKind::Failed, SOURCE, STEP, |f: &BackupFailed| {
            f.stage == Stage::Archive as i32
        })
        .await;
    assert_eq!(failed.reason, reason::WAL_ARCHIVE_FAILED);
    assert!(failed.message.contains(&first), "{}", failed.message);
    let report: WalArchived = phys
        .env
        .event(EventKind::Wal, SOURCE, STEP, |r: &WalArchived| r.files > 0)
        .await;
    assert!(!report.last_file.is_empty());

    // The same content again (a retried push): accepted. wal-fetch gives it back,
    // and says "not found" (exit 1) past the archive's end.
    let got = fake_dir.join("got");
    let fetched = phys
        .ferry(&[
            "wal-fetch",
            "--source",
            SOURCE,
            &first,
            &got.display().to_string(),
        ])
        .await;
    assert!(fetched.status.success(), "{}", text(&fetched));
    let real = fake_dir.join("real");
    std::fs::create_dir_all(&real).unwrap();
    std::fs::rename(&got, real.join(&first)).unwrap();
    phys.root.chown(&fake_dir);
    let again = phys
        .ferry(&[
            "wal-push",
            "--source",
            SOURCE,
            &real.join(&first).display().to_string(),
        ])
        .await;
    assert!(again.status.success(), "{}", text(&again));
    assert!(
        text(&again).contains("already archived"),
        "{}",
        text(&again)
    );
    let beyond = phys
        .ferry(&[
            "wal-fetch",
            "--source",
            SOURCE,
            "0000000100000000000000FE",
            &fake_dir.join("x").display().to_string(),
        ])
        .await;
    assert_eq!(beyond.status.code(), Some(1), "{}", text(&beyond));

    // A push killed while its upload hangs, then retried: stored, intact.
    let stalled = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let stalled_url = format!("http://{}", stalled.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = stalled.accept().await {
            held.push(conn); // read nothing, answer nothing
        }
    });
    let stalled_config = phys.root.path.join("stalled.toml");
    let s3 = S3Server {
        endpoint: stalled_url,
        ..phys.s3.clone()
    };
    TestConfig::new()
        .s3_store(&s3, &phys.prefix, &phys.root.path)
        .write(&stalled_config);
    phys.root.chown(&phys.root.path);
    let crash_name = "000000630000000000000001";
    let crash_file = fake_dir.join(crash_name);
    let content: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    std::fs::write(&crash_file, &content).unwrap();
    phys.root.chown(&fake_dir);
    let mut hung = tokio::process::Command::new(binary("ferry"))
        .arg("--config")
        .arg(&stalled_config)
        .args(["wal-push", "--source", SOURCE])
        .arg(&crash_file)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        hung.try_wait().unwrap().is_none(),
        "the push is still uploading"
    );
    hung.kill().await.unwrap();
    let crash_key = format!("wal/{SOURCE}/00000063/{crash_name}");
    assert!(store.head(&crash_key).await.unwrap().is_none());
    let retried = phys
        .ferry(&[
            "wal-push",
            "--source",
            SOURCE,
            &crash_file.display().to_string(),
        ])
        .await;
    assert!(retried.status.success(), "{}", text(&retried));
    let back = fake_dir.join("back");
    let fetched = phys
        .ferry(&[
            "wal-fetch",
            "--source",
            SOURCE,
            crash_name,
            &back.display().to_string(),
        ])
        .await;
    assert!(fetched.status.success(), "{}", text(&fetched));
    assert!(
        std::fs::read(&back).unwrap() == content,
        "fetched what was pushed"
    );

    // A missing segment after the base backup: found by pitr status and verify,
    // and restores past it refused.
    let verified = phys.ferry(&["verify", "--source", SOURCE]).await;
    assert!(verified.status.success(), "{}", text(&verified));
    let gone = segment_name(1, stop.segment(size) + 2, size);
    store
        .delete(&format!("wal/{SOURCE}/00000001/{gone}"))
        .await
        .unwrap();
    let status = phys.ferry(&["pitr", "status", "--source", SOURCE]).await;
    assert!(!status.status.success(), "a broken chain fails the status");
    assert!(
        text(&status).contains(&format!("MISSING  {gone}")),
        "{}",
        text(&status)
    );
    let refused = phys
        .ferry(&[
            "restore",
            "--source",
            SOURCE,
            "--latest",
            "--to-datadir",
            &phys.root.path.join("never").display().to_string(),
        ])
        .await;
    assert!(!refused.status.success());
    assert!(
        text(&refused).contains(&format!("WAL segment {gone} of phys is missing")),
        "{}",
        text(&refused)
    );

    let verified = phys.ferry(&["verify", "--source", SOURCE]).await;
    assert!(!verified.status.success(), "{}", text(&verified));
    assert!(
        text(&verified).contains(&format!("WAL {gone}")),
        "{}",
        text(&verified)
    );

    // A damaged segment the base backup needs: found by verify and status --check.
    store
        .put_bytes(&first_key, bytes::Bytes::from(vec![0u8; 4096]), None)
        .await
        .unwrap();
    let verified = phys.ferry(&["verify", "--source", SOURCE]).await;
    assert!(!verified.status.success());
    assert!(
        text(&verified).contains(&first_key) && text(&verified).contains("corrupt"),
        "{}",
        text(&verified)
    );
    let checked = phys
        .ferry(&["pitr", "status", "--source", SOURCE, "--check"])
        .await;
    assert!(
        text(&checked).contains(&format!("DAMAGED  {first_key}")),
        "{}",
        text(&checked)
    );

    // A physical source whose server does not archive: the setting is named.
    let outcome = ferry::backup::now(&phys.env.client, "nowal", Some(STEP))
        .await
        .unwrap();
    match outcome {
        ferry::backup::Outcome::Failed(f) => {
            assert_eq!(f.reason, reason::ARCHIVING_NOT_CONFIGURED, "{}", f.message);
            assert!(f.message.contains("archive_mode = on"), "{}", f.message);
        }
        other => panic!("a server that does not archive was backed up: {other:?}"),
    }
}
