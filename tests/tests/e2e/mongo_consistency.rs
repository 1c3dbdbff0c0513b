//! A MongoDB backup is one instant: writes made throughout the dump are captured
//! and replayed, so the restore equals the source at the recorded end time. And a
//! dump that outlives its source's timeout fails as `timeout`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ferry::restore::mongo::{MongoRestoreOptions, restore};
use ferry_e2e::TestEnv;
use ferry_e2e::mongo::backup_now;
use ferry_testkit::{MongoServer, MongoStart, Source};
use futures::TryStreamExt;
use mongodb::bson::{Document, RawDocumentBuf, Timestamp, doc};
use rand::Rng;

const STEP: Duration = Duration::from_secs(120);

/// One write and the cluster time the server gave it.
enum Op {
    Upsert(i64, Document),
    Set(i64, i64),
    Delete(i64),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_during_the_dump_restore_to_the_recorded_instant() {
    // A server of its own: the cluster time advances only with this test's writes.
    let server = MongoServer::start(MongoStart::default()).await;
    let client = server.client().await;
    let db = client.database("shop");
    db.collection::<Document>("live")
        .insert_many((0..2000i64).map(|i| doc! { "_id": i, "v": 0i64 }))
        .await
        .unwrap();
    // Bulk the dump has to read for a while, in parallel with `live`.
    let filler: Vec<RawDocumentBuf> = (0..60_000i64)
        .map(|i| RawDocumentBuf::from_document(&doc! { "_id": i, "pad": "p".repeat(200) }).unwrap())
        .collect();
    db.collection::<RawDocumentBuf>("bulk")
        .insert_many(filler)
        .await
        .unwrap();
    let initial: BTreeMap<i64, Document> = (0..2000i64)
        .map(|i| (i, doc! { "_id": i, "v": 0i64 }))
        .collect();

    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn({
        let client = client.clone();
        let stop = stop.clone();
        async move {
            let live = client.database("shop").collection::<Document>("live");
            let mut session = client.start_session().await.unwrap();
            let mut log: Vec<(Timestamp, Op)> = Vec::new();
            let mut k = 0i64;
            while !stop.load(Ordering::Relaxed) {
                k += 1;
                let id = rand::rng().random_range(0..2500i64);
                let op = match k % 4 {
                    0 => {
                        let d = doc! { "_id": id, "v": k, "w": format!("replaced {k}") };
                        live.replace_one(doc! { "_id": id }, d.clone())
                            .upsert(true)
                            .session(&mut session)
                            .await
                            .unwrap();
                        Op::Upsert(id, d)
                    }
                    1 | 2 => {
                        let r = live
                            .update_one(doc! { "_id": id }, doc! { "$set": { "v": k } })
                            .session(&mut session)
                            .await
                            .unwrap();
                        if r.modified_count == 0 {
                            continue; // no document, no change to capture
                        }
                        Op::Set(id, k)
                    }
                    _ => {
                        let r = live
                            .delete_one(doc! { "_id": id })
                            .session(&mut session)
                            .await
                            .unwrap();
                        if r.deleted_count == 0 {
                            continue;
                        }
                        Op::Delete(id)
                    }
                };
                log.push((session.operation_time().expect("an operationTime"), op));
            }
            log
        }
    });

    let env = TestEnv::start("", |_, c| {
        c.source(Source::mongodb("shop", server.url(), &["shop"]))
    })
    .await;
    let manifest = backup_now(&env, "shop", STEP).await;
    stop.store(true, Ordering::Relaxed);
    let log = writer.await.unwrap();
    // Each write's own cluster time, from the server's oplog. A reply's
    // operationTime is the cluster time when the server replied, which SecantusDB
    // may have moved past the write's own (an empty change-stream batch mints a
    // new one): a write made just before the dump's start could otherwise look
    // like one made during it.
    let entries: Vec<Document> = client
        .database("local")
        .collection::<Document>("oplog.rs")
        .find(doc! { "ns": "shop.live" })
        .sort(doc! { "$natural": 1 })
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert!(entries.len() >= log.len(), "one oplog entry per write");
    let writes = &entries[entries.len() - log.len()..];
    let log: Vec<(Timestamp, Op)> = log
        .into_iter()
        .zip(writes)
        .map(|((_, op), entry)| {
            let kind = entry.get_str("op").unwrap();
            let fits = match op {
                Op::Upsert(..) => kind == "u" || kind == "i",
                Op::Set(..) => kind == "u",
                Op::Delete(..) => kind == "d",
            };
            assert!(
                fits,
                "the oplog's writes are the log's, in order: {entry:?}"
            );
            (entry.get_timestamp("ts").unwrap(), op)
        })
        .collect();

    let details = manifest.mongodb.clone().unwrap();
    assert!(details.oplog_captured);
    let end = Timestamp {
        time: details.end_time.seconds,
        increment: details.end_time.increment,
    };
    let start = Timestamp {
        time: details.start_time.seconds,
        increment: details.start_time.increment,
    };
    // After the start (a write at exactly the start time may precede the stream)
    // and up to the end, inclusive.
    let during = log.iter().filter(|(t, _)| *t > start && *t <= end).count();
    assert!(
        during >= 10,
        "writes ran during the dump: {during} of {}",
        log.len()
    );
    assert!(
        details.oplog_entries >= during as u64,
        "every write between start and end is captured: {during} written, {details:?}"
    );
    assert!(log.iter().any(|(t, _)| *t > end), "and went on after it");

    // The source as it was at the end instant, from the write log.
    let mut expected = initial;
    for (_, op) in log.iter().filter(|(t, _)| *t <= end) {
        match op {
            Op::Upsert(id, d) => {
                expected.insert(*id, d.clone());
            }
            Op::Set(id, v) => {
                if let Some(d) = expected.get_mut(id) {
                    d.insert("v", *v);
                }
            }
            Op::Delete(id) => {
                expected.remove(id);
            }
        }
    }

    let options = MongoRestoreOptions {
        to: server.url().to_string(),
        rename_db: [("shop".to_string(), "shop_at_end".to_string())].into(),
        parallel_collections: 2,
        parallel_batches: 4,
        ..Default::default()
    };
    let report = restore(env.store().as_ref(), &manifest, &options)
        .await
        .unwrap();
    assert!(report.oplog_applied > 0);
    let restored: BTreeMap<i64, Document> = client
        .database("shop_at_end")
        .collection::<Document>("live")
        .find(doc! {})
        .await
        .unwrap()
        .map_ok(|d| (d.get_i64("_id").unwrap(), d))
        .try_collect()
        .await
        .unwrap();
    assert_eq!(restored.len(), expected.len());
    for (id, doc) in &expected {
        assert_eq!(restored.get(id), Some(doc), "document {id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dump_past_its_timeout_fails_as_timeout() {
    let server = MongoServer::start(MongoStart {
        test_commands: true,
        ..Default::default()
    })
    .await;
    let client = server.client().await;
    client
        .database("slow")
        .collection::<Document>("items")
        .insert_one(doc! { "_id": 1 })
        .await
        .unwrap();
    // The dump's read hangs far longer than the source allows.
    client
        .database("admin")
        .run_command(doc! {
            "configureFailPoint": "failCommand",
            "mode": { "times": 1 },
            "data": { "failCommands": ["find"], "blockConnection": true, "blockTimeMS": 30000 },
        })
        .await
        .unwrap();
    let env = TestEnv::start("", |_, c| {
        c.source(Source::mongodb("slow", server.url(), &["slow"]).set("timeout", "3s"))
    })
    .await;
    let outcome = ferry::backup::now(&env.client, "slow", Some(STEP))
        .await
        .unwrap();
    match outcome {
        ferry::backup::Outcome::Failed(f) => {
            assert_eq!(f.reason, ferry_proto::reason::TIMEOUT, "{f:?}");
            assert!(f.message.contains("sources.timeout"), "{f:?}");
        }
        other => panic!("expected a timeout: {other:?}"),
    }
}
