//! One collection: its documents' raw bytes into `<db>/<name>.bson`, then its
//! options and indexes into `<db>/<name>.metadata.json`.

use ferry_proto::v1::{DumpFile, MongoCollection};
use ferry_runtime::HandlerError;
use futures::TryStreamExt;
use mongodb::Database;
use mongodb::bson::{Bson, Document, RawDocumentBuf, doc, spec::BinarySubtype};
use tokio::io::AsyncWriteExt;

use super::errors;
use crate::output::JobOutput;

/// Bytes a cursor batch aims at (1 MiB): the batch is what a collection in flight holds in
/// memory, so this (times `mongo_parallel_collections`) bounds the dump's memory.
const BATCH_BYTES: f64 = 1024.0 * 1024.0;

/// A collection or view as `listCollections` describes it.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Its name.
    pub name: String,
    /// `collection`, `view` or `timeseries`.
    pub kind: String,
    /// Its creation options, as the server reports them.
    pub options: Document,
    /// Its UUID (hex), when the server reports one.
    pub uuid: Option<String>,
}

/// How a collection's dump ended.
#[derive(Debug)]
pub enum Outcome {
    /// Dumped: its manifest entry and its files.
    Dumped {
        /// Counts for the manifest.
        entry: MongoCollection,
        /// Its `.bson` (collections only) and `.metadata.json`.
        files: Vec<DumpFile>,
    },
    /// Dropped while it was being dumped (`db.name`).
    Dropped(String),
}

/// The name of a collection in file names: `/` and `%` escaped as mongodump does,
/// so every collection is one file directly under its database's directory.
pub fn file_stem(name: &str) -> String {
    name.replace('%', "%25").replace('/', "%2F")
}

/// Collections and views of `db` worth dumping.
pub async fn list(db: &Database, source: &str) -> Result<Vec<Spec>, HandlerError> {
    let what = format!("listing the collections of database {}", db.name());
    let specs: Vec<Document> = db
        .list_collections()
        .await
        .map_err(|e| errors::classify(source, &what, &e))?
        .with_type::<Document>()
        .try_collect()
        .await
        .map_err(|e| errors::classify(source, &what, &e))?;
    let mut out: Vec<Spec> = specs
        .into_iter()
        .filter_map(parse_spec)
        // The server's own collections: views are recreated from their own
        // metadata, profiles and time-series buckets are not user data.
        .filter(|s| !s.name.starts_with("system.") || s.name == "system.js")
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

fn parse_spec(d: Document) -> Option<Spec> {
    let name = d.get_str("name").ok()?.to_string();
    let kind = d.get_str("type").unwrap_or("collection").to_string();
    let options = d.get_document("options").cloned().unwrap_or_default();
    let uuid = d
        .get_document("info")
        .ok()
        .and_then(|i| i.get("uuid"))
        .and_then(|u| match u {
            Bson::Binary(b) if b.subtype == BinarySubtype::Uuid => Some(hex::encode(&b.bytes)),
            _ => None,
        });
    Some(Spec {
        name,
        kind,
        options,
        uuid,
    })
}

/// Whether the collection still exists as the same collection (same UUID).
async fn still_exists(db: &Database, spec: &Spec, source: &str) -> Result<bool, HandlerError> {
    let what = format!("checking {}.{}", db.name(), spec.name);
    let found: Vec<Document> = db
        .list_collections()
        .filter(doc! { "name": &spec.name })
        .await
        .map_err(|e| errors::classify(source, &what, &e))?
        .with_type::<Document>()
        .try_collect()
        .await
        .map_err(|e| errors::classify(source, &what, &e))?;
    Ok(found
        .into_iter()
        .filter_map(parse_spec)
        .any(|s| s.uuid == spec.uuid))
}

enum ReadError {
    Mongo(mongodb::error::Error),
    Spool(std::io::Error),
}

/// Dumps one collection or view.
pub async fn dump(
    db: &Database,
    source: &str,
    spec: Spec,
    out: &JobOutput,
) -> Result<Outcome, HandlerError> {
    let ns = format!("{}.{}", db.name(), spec.name);
    let stem = format!("{}/{}", db.name(), file_stem(&spec.name));
    let mut entry = MongoCollection {
        database: db.name().to_string(),
        name: spec.name.clone(),
        r#type: spec.kind.clone(),
        documents: 0,
        bytes: 0,
    };
    let mut files = Vec::new();
    if spec.kind != "view" {
        let data_name = format!("{stem}.bson");
        let file = out
            .create(&data_name)
            .await
            .map_err(|e| errors::spool(source, &data_name, &e))?;
        let mut writer = file;
        let read = read_documents(db, &spec.name, &mut writer, &mut entry).await;
        let dropped = match &read {
            Ok(()) => !still_exists(db, &spec, source).await?,
            Err(ReadError::Mongo(e)) => {
                !still_exists(db, &spec, source).await?
                    || (errors::server_code(e) == Some(errors::code::NAMESPACE_NOT_FOUND))
            }
            Err(ReadError::Spool(_)) => false,
        };
        if dropped {
            discard(writer, out, &data_name).await;
            return Ok(Outcome::Dropped(ns));
        }
        match read {
            Ok(()) => {}
            Err(ReadError::Mongo(e)) => {
                return Err(errors::classify(source, &format!("reading {ns}"), &e));
            }
            Err(ReadError::Spool(e)) => return Err(errors::spool(source, &data_name, &e)),
        }
        files.push(
            writer
                .finish()
                .await
                .map_err(|e| errors::spool(source, &data_name, &e))?,
        );
    }

    let indexes = if spec.kind == "view" {
        Vec::new()
    } else {
        match list_indexes(db, &spec.name).await {
            Ok(indexes) => indexes,
            Err(e) if errors::server_code(&e) == Some(errors::code::NAMESPACE_NOT_FOUND) => {
                return Ok(Outcome::Dropped(ns));
            }
            Err(e) => {
                return Err(errors::classify(
                    source,
                    &format!("listing the indexes of {ns}"),
                    &e,
                ));
            }
        }
    };
    let metadata = metadata_json(&spec, indexes);
    let meta_name = format!("{stem}.metadata.json");
    let mut file = out
        .create(&meta_name)
        .await
        .map_err(|e| errors::spool(source, &meta_name, &e))?;
    file.write_all(&metadata)
        .await
        .map_err(|e| errors::spool(source, &meta_name, &e))?;
    files.push(
        file.finish()
            .await
            .map_err(|e| errors::spool(source, &meta_name, &e))?,
    );
    tracing::info!(collection = %ns, documents = entry.documents, bytes = entry.bytes, "collection dumped");
    Ok(Outcome::Dumped { entry, files })
}

async fn read_documents(
    db: &Database,
    name: &str,
    writer: &mut crate::output::OutputFile,
    entry: &mut MongoCollection,
) -> Result<(), ReadError> {
    let collection = db.collection::<RawDocumentBuf>(name);
    let mut find = collection.find(doc! {});
    if let Some(size) = batch_size(db, name).await {
        find = find.batch_size(size);
    }
    let mut cursor = find.await.map_err(ReadError::Mongo)?;
    // `advance` + `current` borrow each document inside the batch the driver
    // holds: no copy, no decode.
    while cursor.advance().await.map_err(ReadError::Mongo)? {
        let bytes = cursor.current().as_bytes();
        writer.write_all(bytes).await.map_err(ReadError::Spool)?;
        entry.documents += 1;
        entry.bytes += bytes.len() as u64;
    }
    Ok(())
}

/// Documents per batch for about `BATCH_BYTES`, from the collection's average
/// document size; None (the server's default, up to 16 MiB) when unknown.
async fn batch_size(db: &Database, name: &str) -> Option<u32> {
    let stats = db.run_command(doc! { "collStats": name }).await.ok()?;
    let avg = match stats.get("avgObjSize")? {
        Bson::Double(v) => *v,
        Bson::Int32(v) => f64::from(*v),
        Bson::Int64(v) => *v as f64,
        _ => return None,
    };
    (avg > 0.0).then(|| (BATCH_BYTES / avg).clamp(101.0, 100_000.0) as u32)
}

async fn list_indexes(db: &Database, name: &str) -> mongodb::error::Result<Vec<Document>> {
    db.collection::<Document>(name)
        .list_indexes()
        .await?
        .with_type::<Document>()
        .try_collect()
        .await
}

/// Stops writing a file that must not be part of the backup and removes what was
/// written of it; it was never finished, so it was never announced.
async fn discard(mut writer: crate::output::OutputFile, out: &JobOutput, name: &str) {
    let _ = writer.shutdown().await;
    drop(writer);
    let path = out
        .job_dir()
        .join(format!("{name}{}", out.compression().suffix()));
    let _ = tokio::fs::remove_file(path).await;
}

/// mongodump's metadata document, in canonical Extended JSON:
/// `{"options":…,"indexes":[…],"uuid":"…","collectionName":…,"type":…}`.
pub fn metadata_json(spec: &Spec, indexes: Vec<Document>) -> Vec<u8> {
    let mut d = doc! {
        "options": spec.options.clone(),
        "indexes": indexes.into_iter().map(Bson::Document).collect::<Vec<_>>(),
    };
    if let Some(uuid) = &spec.uuid {
        d.insert("uuid", uuid.as_str());
    }
    d.insert("collectionName", spec.name.as_str());
    d.insert("type", spec.kind.as_str());
    serde_json::to_vec(&Bson::Document(d).into_canonical_extjson())
        .expect("extended JSON always serialises")
}
