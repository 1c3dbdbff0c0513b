//! MongoDB scenarios' helpers: awkward data to back up, a backup through the real
//! pipeline, and exact comparisons of two databases.

use std::collections::BTreeMap;
use std::time::Duration;

use ferry_storage::{Manifest, get_bytes};
use futures::TryStreamExt;
use mongodb::bson::spec::BinarySubtype;
use mongodb::bson::{
    Binary, Bson, DateTime, Decimal128, Document, JavaScriptCodeWithScope, RawDocumentBuf, Regex,
    Timestamp, doc, oid::ObjectId,
};
use mongodb::{Client, Database};

use crate::TestEnv;

/// Runs a backup of `source` now and returns its manifest.
pub async fn backup_now(env: &TestEnv, source: &str, wait: Duration) -> Manifest {
    let outcome = ferry::backup::now(&env.client, source, Some(wait))
        .await
        .expect("ask for a backup");
    let uploaded = match outcome {
        ferry::backup::Outcome::Succeeded(u) => u,
        other => panic!("the backup of {source} did not succeed: {other:?}"),
    };
    let store = env.store();
    let key = ferry_storage::layout::manifest_key(source, &uploaded.backup_id);
    Manifest::from_json(&get_bytes(store.as_ref(), &key).await.expect("manifest")).unwrap()
}

/// Every BSON type, edge values included, one document per case.
pub fn every_bson_type() -> Vec<RawDocumentBuf> {
    let uuid = Binary {
        subtype: BinarySubtype::Uuid,
        bytes: (0u8..16).collect(),
    };
    let mut docs: Vec<Document> = vec![
        doc! { "_id": "double", "v": 1.5f64, "nan": f64::NAN, "neg_zero": -0.0f64, "inf": f64::INFINITY, "ninf": f64::NEG_INFINITY, "tiny": f64::MIN_POSITIVE, "max": f64::MAX },
        doc! { "_id": "string", "v": "plain", "utf8": "日本語 — ñ ü ø 🚀 \u{0}?", "empty": "" },
        doc! { "_id": "document", "v": { "a": 1, "b": { "c": [] } } },
        doc! { "_id": "array", "v": [1, "two", 3.0, [4], { "five": 5 }, Bson::Null] },
        doc! { "_id": "binary", "generic": Binary { subtype: BinarySubtype::Generic, bytes: vec![0, 1, 2, 255] },
        "function": Binary { subtype: BinarySubtype::Function, bytes: vec![1] },
        "old": Binary { subtype: BinarySubtype::BinaryOld, bytes: vec![2, 0, 0, 0, 7, 8] },
        "uuid_old": Binary { subtype: BinarySubtype::UuidOld, bytes: vec![9; 16] },
        "uuid": uuid.clone(),
        "md5": Binary { subtype: BinarySubtype::Md5, bytes: vec![5; 16] },
        "encrypted": Binary { subtype: BinarySubtype::Encrypted, bytes: vec![6; 4] },
        "user": Binary { subtype: BinarySubtype::UserDefined(0x80), bytes: vec![7; 3] } },
        doc! { "_id": "undefined", "v": Bson::Undefined },
        doc! { "_id": "objectid", "v": ObjectId::parse_str("5f0c8e1b9d3e4a2b1c0d0e0f").unwrap() },
        doc! { "_id": "bool", "t": true, "f": false },
        doc! { "_id": "datetime", "epoch": DateTime::from_millis(0), "before_1970": DateTime::from_millis(-14_182_940_000), "far_past": DateTime::from_millis(-62_135_596_800_000), "future": DateTime::from_millis(253_402_300_799_999) },
        doc! { "_id": "null", "v": Bson::Null },
        doc! { "_id": "regex", "v": Regex { pattern: "^a.*[b]$".into(), options: "imsx".into() } },
        doc! { "_id": "javascript", "v": Bson::JavaScriptCode("function() { return 1; }".into()),
        "scoped": Bson::JavaScriptCodeWithScope(JavaScriptCodeWithScope { code: "x + y".into(), scope: doc! { "x": 1, "y": 2 } }) },
        doc! { "_id": "symbol", "v": Bson::Symbol("sym".into()) },
        doc! { "_id": "int32", "v": 0i32, "min": i32::MIN, "max": i32::MAX },
        doc! { "_id": "timestamp", "v": Timestamp { time: 1_700_000_000, increment: 7 }, "zero": Timestamp { time: 0, increment: 0 }, "max": Timestamp { time: u32::MAX, increment: u32::MAX } },
        doc! { "_id": "int64", "v": 0i64, "min": i64::MIN, "max": i64::MAX, "min1": i64::MIN + 1, "max1": i64::MAX - 1 },
        doc! { "_id": "decimal128", "v": "1234.5678".parse::<Decimal128>().unwrap(), "neg": "-0.000001".parse::<Decimal128>().unwrap(), "big": "9.999999999999999999999999999999999E+6144".parse::<Decimal128>().unwrap(), "nan": "NaN".parse::<Decimal128>().unwrap(), "inf": "-Infinity".parse::<Decimal128>().unwrap() },
        doc! { "_id": "minkey", "v": Bson::MinKey },
        doc! { "_id": "maxkey", "v": Bson::MaxKey },
        doc! { "_id": uuid, "note": "a UUID as _id" },
        doc! { "_id": 42i64, "note": "an Int64 _id" },
        doc! { "_id": "names", "a.b": 1, "nested": { "$dollar": 2, "dots.in.name": 3, "": "empty name" }, "ключ": "значение", "日本": "語" },
        doc! { "_id": "order", "z": 1, "a": 2, "m": 3 },
    ];
    docs.push(deep(90));
    let mut raw: Vec<RawDocumentBuf> = docs
        .iter()
        .map(|d| RawDocumentBuf::from_document(d).unwrap())
        .collect();
    raw.push(db_pointer_document());
    raw
}

fn deep(levels: usize) -> Document {
    let mut d = doc! { "leaf": "bottom" };
    for i in 0..levels {
        d = doc! { format!("l{i}"): d };
    }
    doc! { "_id": "deep", "v": d }
}

/// `{_id: "dbpointer", v: DBPointer("ns.coll", oid)}`, built by hand: the driver
/// has no constructor for this deprecated type.
fn db_pointer_document() -> RawDocumentBuf {
    let mut body = Vec::new();
    body.push(0x02);
    body.extend_from_slice(b"_id\0");
    let id = b"dbpointer\0";
    body.extend_from_slice(&(id.len() as i32).to_le_bytes());
    body.extend_from_slice(id);
    body.push(0x0C);
    body.extend_from_slice(b"v\0");
    let ns = b"db.coll\0";
    body.extend_from_slice(&(ns.len() as i32).to_le_bytes());
    body.extend_from_slice(ns);
    body.extend_from_slice(&[0xAB; 12]);
    let mut bytes = ((body.len() + 5) as i32).to_le_bytes().to_vec();
    bytes.extend_from_slice(&body);
    bytes.push(0);
    RawDocumentBuf::from_bytes(bytes).unwrap()
}

/// A document a little under the 16 MiB limit.
pub fn near_limit_document() -> RawDocumentBuf {
    let size = 16 * 1024 * 1024 - 1024;
    RawDocumentBuf::from_document(&doc! {
        "_id": "big",
        "payload": Binary { subtype: BinarySubtype::Generic, bytes: (0..size).map(|i| (i % 251) as u8).collect() },
    })
    .unwrap()
}

/// Every document of a collection as raw bytes, ordered by `_id`.
pub async fn raw_documents(db: &Database, name: &str) -> Vec<Vec<u8>> {
    db.collection::<RawDocumentBuf>(name)
        .find(doc! {})
        .sort(doc! { "_id": 1 })
        .await
        .unwrap()
        .map_ok(|d| d.into_bytes())
        .try_collect()
        .await
        .unwrap()
}

/// Collections (name → type and options) and their indexes (by name, `ns` left
/// out), for comparing a restored database with its source; `system.*` (but
/// `system.js`) left out.
pub async fn shape(
    db: &Database,
) -> BTreeMap<String, (String, Document, BTreeMap<String, Document>)> {
    let specs: Vec<Document> = db
        .list_collections()
        .await
        .unwrap()
        .with_type::<Document>()
        .try_collect()
        .await
        .unwrap();
    let mut out = BTreeMap::new();
    for spec in specs {
        let name = spec.get_str("name").unwrap().to_string();
        // The server's own bookkeeping (system.views holds the view definitions,
        // which are compared as the views themselves); Ferry skips it as well.
        if name.starts_with("system.") && name != "system.js" {
            continue;
        }
        let kind = spec.get_str("type").unwrap_or("collection").to_string();
        let options = spec.get_document("options").cloned().unwrap_or_default();
        let mut indexes = BTreeMap::new();
        if kind != "view" {
            let list: Vec<Document> = db
                .collection::<Document>(&name)
                .list_indexes()
                .await
                .unwrap()
                .with_type::<Document>()
                .try_collect()
                .await
                .unwrap();
            for mut index in list {
                index.remove("ns");
                indexes.insert(index.get_str("name").unwrap().to_string(), index);
            }
        }
        out.insert(name, (kind, options, indexes));
    }
    out
}

/// A client of the shared test server.
pub async fn shared_client() -> (ferry_testkit::MongoServer, Client) {
    let server = ferry_testkit::MongoServer::shared();
    let client = server.client().await;
    (server, client)
}
