//! MongoDB backups end to end on the real test server: awkward data dumped by the
//! dumper, stored by the uploader, restored under another database name, and
//! compared byte for byte, index for index, option for option.

use std::collections::BTreeMap;
use std::time::Duration;

use ferry::restore::mongo::{MongoRestoreOptions, restore};
use ferry_e2e::TestEnv;
use ferry_e2e::mongo::{
    backup_now, every_bson_type, near_limit_document, raw_documents, shape, shared_client,
};
use ferry_testkit::{Source, unique_name};
use mongodb::IndexModel;
use mongodb::bson::{Document, RawDocumentBuf, doc};
use mongodb::options::IndexOptions;

const STEP: Duration = Duration::from_secs(120);

async fn fill(db: &mongodb::Database) {
    let types = db.collection::<RawDocumentBuf>("types");
    types
        .insert_many(every_bson_type())
        .await
        .expect("insert every BSON type");
    db.collection::<RawDocumentBuf>("big")
        .insert_one(near_limit_document())
        .await
        .expect("insert a document near 16 MiB");

    db.run_command(doc! { "create": "capped", "capped": true, "size": 65536, "max": 50 })
        .await
        .unwrap();
    let capped = db.collection::<Document>("capped");
    for i in 0..80 {
        capped.insert_one(doc! { "_id": i, "n": i }).await.unwrap();
    }
    db.run_command(doc! {
        "create": "validated",
        "validator": { "$jsonSchema": { "bsonType": "object", "required": ["email"] } },
        "validationLevel": "strict",
        "validationAction": "error",
    })
    .await
    .unwrap();
    db.collection::<Document>("validated")
        .insert_many((0..20).map(|i| doc! { "_id": i, "email": format!("u{i}@example.com") }))
        .await
        .unwrap();
    db.run_command(doc! { "create": "french", "collation": { "locale": "fr", "strength": 2 } })
        .await
        .unwrap();
    db.run_command(
        doc! { "create": "clustered", "clusteredIndex": { "key": { "_id": 1 }, "unique": true } },
    )
    .await
    .unwrap();
    db.run_command(
        doc! { "create": "series", "timeseries": { "timeField": "t", "metaField": "m" } },
    )
    .await
    .unwrap();

    let sessions = db.collection::<Document>("sessions");
    sessions
        .insert_many((0..50).map(|i| {
            doc! { "_id": i, "seen": mongodb::bson::DateTime::now(), "email": (i % 3 == 0).then(|| format!("s{i}@x")), "loc": { "type": "Point", "coordinates": [i as f64 / 10.0, 1.0] } }
        }))
        .await
        .unwrap();
    let model = |keys: Document, options: IndexOptions| {
        IndexModel::builder().keys(keys).options(options).build()
    };
    sessions
        .create_indexes([
            model(
                doc! { "seen": 1 },
                IndexOptions::builder()
                    .expire_after(Duration::from_secs(3600))
                    .build(),
            ),
            model(
                doc! { "email": 1 },
                IndexOptions::builder()
                    .unique(true)
                    .partial_filter_expression(doc! { "email": { "$type": "string" } })
                    .name("email_unique_partial".to_string())
                    .build(),
            ),
            model(doc! { "loc": "2dsphere" }, IndexOptions::default()),
            model(
                doc! { "a": 1, "b": -1 },
                IndexOptions::builder().sparse(true).hidden(true).build(),
            ),
            model(doc! { "$**": 1 }, IndexOptions::default()),
        ])
        .await
        .unwrap();
    db.run_command(doc! { "create": "recent", "viewOn": "sessions", "pipeline": [{ "$match": { "_id": { "$lt": 10 } } }] })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn awkward_data_round_trips_byte_for_byte_with_indexes_and_options() {
    let (server, client) = shared_client().await;
    let source_db = unique_name("ferry_awk");
    let restored_db = format!("{source_db}_r");
    let db = client.database(&source_db);
    fill(&db).await;

    let env = TestEnv::start("", |_, c| {
        c.source(Source::mongodb("catalog", server.url(), &[&source_db]))
    })
    .await;
    let manifest = backup_now(&env, "catalog", STEP).await;
    assert_eq!(manifest.engine, ferry_storage::Engine::Mongodb);
    assert_eq!(manifest.databases, vec![source_db.clone()]);
    let details = manifest
        .mongodb
        .clone()
        .expect("mongodb details in the manifest");
    assert!(details.oplog_captured, "{details:?}");
    assert!(!details.feature_compatibility_version.is_empty());
    let counts: BTreeMap<&str, (u64, &str)> = details
        .collections
        .iter()
        .map(|c| (c.name.as_str(), (c.documents, c.kind.as_str())))
        .collect();
    assert_eq!(counts["types"].0, every_bson_type().len() as u64);
    assert_eq!(
        counts["capped"].0, 50,
        "the capped collection keeps its last 50"
    );
    assert_eq!(counts["recent"], (0, "view"));
    let names: Vec<&str> = manifest.files.iter().map(|f| f.name.as_str()).collect();
    for expected in [
        format!("{source_db}/types.bson.zst"),
        format!("{source_db}/types.metadata.json.zst"),
        format!("{source_db}/recent.metadata.json.zst"),
        "oplog.bson.zst".to_string(),
    ] {
        assert!(
            names.contains(&expected.as_str()),
            "{expected} in {names:?}"
        );
    }
    assert!(
        !names
            .iter()
            .any(|n| n.starts_with(&format!("{source_db}/recent.bson")))
    );

    let store = env.store();
    let options = MongoRestoreOptions {
        to: server.url().to_string(),
        rename_db: [(source_db.clone(), restored_db.clone())].into(),
        parallel_collections: 4,
        parallel_batches: 4,
        ..Default::default()
    };
    let report = restore(store.as_ref(), &manifest, &options)
        .await
        .expect("restore");
    assert_eq!(report.collections, counts.len());

    let target = client.database(&restored_db);
    for name in counts.keys().filter(|n| **n != "recent") {
        let (a, b) = (
            raw_documents(&db, name).await,
            raw_documents(&target, name).await,
        );
        assert_eq!(a.len(), b.len(), "{name}: document count");
        assert!(a == b, "{name}: documents differ byte for byte");
    }
    assert_eq!(shape(&target).await, shape(&db).await);
    // The view works in the restored database.
    assert_eq!(
        raw_documents(&target, "recent").await,
        raw_documents(&db, "recent").await
    );

    // Restoring again without --drop is refused; with --drop it replaces.
    let again = restore(store.as_ref(), &manifest, &options)
        .await
        .unwrap_err();
    assert!(format!("{again:#}").contains("--drop"), "{again:#}");
    let dropping = MongoRestoreOptions {
        drop: true,
        collection: Some(format!("{source_db}.types")),
        ..options.clone()
    };
    let report = restore(store.as_ref(), &manifest, &dropping).await.unwrap();
    assert_eq!(report.collections, 1);
    assert!(raw_documents(&target, "types").await == raw_documents(&db, "types").await);

    // --to-dir leaves mongodump's layout, decompressed.
    let dir = env.dir.path().join("dump");
    ferry::restore::fetch_to_dir(store.as_ref(), &manifest, &dir)
        .await
        .unwrap();
    let bson = std::fs::read(dir.join(&source_db).join("types.bson")).unwrap();
    let mut expected_bson = Vec::new();
    for d in raw_documents(&db, "types").await {
        expected_bson.extend(d);
    }
    assert_eq!(bson.len(), expected_bson.len());
    let meta: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.join(&source_db).join("sessions.metadata.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(meta["collectionName"], "sessions");
    assert_eq!(meta["type"], "collection");
    assert_eq!(meta["uuid"].as_str().map(str::len), Some(32));
    assert!(
        meta["indexes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["expireAfterSeconds"] == serde_json::json!({"$numberInt": "3600"})),
        "{meta}"
    );
    assert!(dir.join("oplog.bson").is_file());

    client.database(&source_db).drop().await.unwrap();
    client.database(&restored_db).drop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_small_documents_round_trip() {
    let (server, client) = shared_client().await;
    let source_db = unique_name("ferry_million");
    let restored_db = format!("{source_db}_r");
    let coll = client
        .database(&source_db)
        .collection::<RawDocumentBuf>("events");
    const N: i32 = 1_000_000;
    const BATCH: i32 = 100_000; // the server's maxWriteBatchSize
    for start in (0..N).step_by(BATCH as usize) {
        let batch: Vec<RawDocumentBuf> = (start..start + BATCH)
            .map(|i| RawDocumentBuf::from_document(&doc! { "_id": i, "k": i % 97 }).unwrap())
            .collect();
        coll.insert_many(batch).ordered(false).await.unwrap();
    }

    let env = TestEnv::start("", |_, c| {
        c.source(Source::mongodb("events", server.url(), &[&source_db]))
    })
    .await;
    let manifest = backup_now(&env, "events", Duration::from_secs(600)).await;
    let details = manifest.mongodb.clone().unwrap();
    assert_eq!(details.collections.len(), 1);
    assert_eq!(details.collections[0].documents, N as u64);

    let options = MongoRestoreOptions {
        to: server.url().to_string(),
        rename_db: [(source_db.clone(), restored_db.clone())].into(),
        parallel_collections: 1,
        parallel_batches: 4,
        ..Default::default()
    };
    let report = restore(env.store().as_ref(), &manifest, &options)
        .await
        .unwrap();
    assert_eq!(report.documents, N as u64);

    // Both collections streamed side by side in _id order, compared byte for byte.
    let source_coll = client
        .database(&source_db)
        .collection::<RawDocumentBuf>("events");
    let restored_coll = client
        .database(&restored_db)
        .collection::<RawDocumentBuf>("events");
    let mut a = source_coll
        .find(doc! {})
        .sort(doc! { "_id": 1 })
        .batch_size(20_000)
        .await
        .unwrap();
    let mut b = restored_coll
        .find(doc! {})
        .sort(doc! { "_id": 1 })
        .batch_size(20_000)
        .await
        .unwrap();
    let mut compared = 0;
    while a.advance().await.unwrap() {
        assert!(
            b.advance().await.unwrap(),
            "restored ends early at {compared}"
        );
        assert_eq!(
            a.current().as_bytes(),
            b.current().as_bytes(),
            "document {compared}"
        );
        compared += 1;
    }
    assert!(!b.advance().await.unwrap(), "restored has more documents");
    assert_eq!(compared, N);
    client.database(&source_db).drop().await.unwrap();
    client.database(&restored_db).drop().await.unwrap();
}
