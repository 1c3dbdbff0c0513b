//! Loading one collection: create it with its options, insert its documents in
//! parallel unordered batches, build its indexes.

use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;
use ferry_storage::ObjectStore;
use futures::{StreamExt, TryStreamExt};
use mongodb::bson::{Bson, Document, RawDocumentBuf, doc};
use mongodb::{Client, Database};
use tokio::sync::mpsc;

use super::{Item, MongoRestoreOptions};
use crate::restore::{decompressed, fetch_verified};

/// Bytes of documents per insert batch: large enough to amortise a round trip,
/// small enough that `parallel_batches` of them stay a few tens of MiB.
const BATCH_BYTES: usize = 4 * 1024 * 1024;
/// Documents per insert batch at most.
const BATCH_DOCS: usize = 10_000;
/// The largest document a .bson file may hold (16 MiB plus the server's slack).
const MAX_DOCUMENT: usize = 16 * 1024 * 1024 + 16 * 1024;

/// The options `listCollections` reported, as `create` accepts them. A time-series
/// collection is listed with its `granularity` and the bucket span that granularity
/// implies; servers that insist a span comes with an equal `bucketRoundingSeconds`
/// and no granularity refuse them together, so a span that only restates the
/// granularity's default is left out (the collection is the same either way).
fn creatable(mut options: Document) -> Document {
    if let Ok(ts) = options.get_document_mut("timeseries") {
        let implied = match ts.get_str("granularity") {
            Ok("seconds") => Some(3_600),
            Ok("minutes") => Some(86_400),
            Ok("hours") => Some(2_592_000),
            _ => None,
        };
        let span = match ts.get("bucketMaxSpanSeconds") {
            Some(Bson::Int32(v)) => Some(i64::from(*v)),
            Some(Bson::Int64(v)) => Some(*v),
            _ => None,
        };
        if implied.is_some() && span == implied && !ts.contains_key("bucketRoundingSeconds") {
            ts.remove("bucketMaxSpanSeconds");
        }
    }
    options
}

/// Creates, loads and indexes one collection; returns the documents inserted.
#[allow(clippy::too_many_arguments)]
pub async fn collection(
    client: &Client,
    store: &dyn ObjectStore,
    item: &Item,
    meta: &Document,
    db_name: &str,
    staging: &Path,
    opts: &MongoRestoreOptions,
    counter: Arc<AtomicU64>,
) -> anyhow::Result<u64> {
    let db = client.database(db_name);
    prepare_target(&db, &item.name, opts.drop).await?;
    let options = meta.get_document("options").cloned().unwrap_or_default();
    let capped = options.get_bool("capped").unwrap_or(false);
    let mut create = doc! { "create": &item.name };
    create.extend(creatable(options));
    db.run_command(create)
        .await
        .with_context(|| format!("creating {db_name}.{} with its options", item.name))?;

    let mut inserted = 0;
    if let Some(file) = &item.data {
        let staged = tempfile::NamedTempFile::new_in(staging)?.into_temp_path();
        fetch_verified(store, file, &staged).await?;
        let reader = decompressed(&staged, file.compression)?;
        let (tx, rx) = mpsc::channel::<Vec<RawDocumentBuf>>(2);
        let name = file.name.clone();
        let reading = tokio::task::spawn_blocking(move || read_batches(reader, &name, tx));
        let coll = db.collection::<RawDocumentBuf>(&item.name);
        // A capped collection keeps insertion order: its batches go in order, one
        // at a time. Every other collection takes them in parallel.
        let in_flight = if capped {
            1
        } else {
            opts.parallel_batches.max(1)
        };
        let batches = tokio_stream_from(rx);
        inserted = batches
            .map(|batch| {
                let coll = coll.clone();
                let counter = counter.clone();
                async move {
                    let n = batch.len() as u64;
                    coll.insert_many(batch).ordered(capped).await?;
                    counter.fetch_add(n, Ordering::Relaxed);
                    Ok::<u64, mongodb::error::Error>(n)
                }
            })
            .buffer_unordered(in_flight)
            .try_fold(0u64, |sum, n| async move { Ok(sum + n) })
            .await
            .with_context(|| format!("inserting into {db_name}.{}", item.name))?;
        reading.await??;
    }

    let indexes: Vec<Bson> = meta
        .get_array("indexes")
        .map(|a| a.to_vec())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|i| match i {
            Bson::Document(mut d) if d.get_str("name") != Ok("_id_") => {
                d.remove("ns");
                Some(Bson::Document(d))
            }
            _ => None,
        })
        .collect();
    if !indexes.is_empty() {
        db.run_command(doc! { "createIndexes": &item.name, "indexes": indexes })
            .await
            .with_context(|| format!("building the indexes of {db_name}.{}", item.name))?;
    }
    Ok(inserted)
}

/// Creates a view (after every collection, which it may read from).
pub async fn view(
    client: &Client,
    item: &Item,
    meta: &Document,
    db_name: &str,
    drop: bool,
) -> anyhow::Result<()> {
    let db = client.database(db_name);
    prepare_target(&db, &item.name, drop).await?;
    let mut create = doc! { "create": &item.name };
    create.extend(meta.get_document("options").cloned().unwrap_or_default());
    db.run_command(create).await?;
    Ok(())
}

/// An existing collection is replaced with `--drop`, and refused otherwise unless
/// it is empty (then it is recreated with the backup's options).
async fn prepare_target(db: &Database, name: &str, drop: bool) -> anyhow::Result<()> {
    if !exists(db, name).await? {
        return Ok(());
    }
    if !drop {
        refuse_documents(db, name).await?;
    }
    db.collection::<Document>(name).drop().await?;
    Ok(())
}

/// Refuses a target collection that exists and holds documents (without --drop).
/// The restore asks this of every collection before it writes anything, so a
/// refused restore leaves the target as it was.
pub async fn refuse_occupied(db: &Database, name: &str) -> anyhow::Result<()> {
    if exists(db, name).await? {
        refuse_documents(db, name).await?;
    }
    Ok(())
}

/// Refuses an existing target collection that holds documents.
async fn refuse_documents(db: &Database, name: &str) -> anyhow::Result<()> {
    if db
        .collection::<Document>(name)
        .estimated_document_count()
        .await?
        > 0
    {
        anyhow::bail!(
            "{}.{name} already exists in the target and holds documents: pass --drop to replace it, or restore under another name with --rename-db",
            db.name()
        );
    }
    Ok(())
}

async fn exists(db: &Database, name: &str) -> anyhow::Result<bool> {
    let existing = db
        .list_collection_names()
        .filter(doc! { "name": name })
        .await?;
    Ok(!existing.is_empty())
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Splits a .bson stream into batches of whole documents, sent as they fill; the
/// channel's bound keeps memory at a few batches whatever the file's size.
fn read_batches(
    mut reader: Box<dyn Read + Send>,
    name: &str,
    tx: mpsc::Sender<Vec<RawDocumentBuf>>,
) -> anyhow::Result<()> {
    let mut batch = Vec::new();
    let mut bytes = 0usize;
    while let Some(doc) = next_document(&mut reader, name)? {
        bytes += doc.as_bytes().len();
        batch.push(doc);
        if bytes >= BATCH_BYTES || batch.len() >= BATCH_DOCS {
            if tx.blocking_send(std::mem::take(&mut batch)).is_err() {
                return Ok(()); // the inserting side failed and reports why
            }
            bytes = 0;
        }
    }
    if !batch.is_empty() {
        let _ = tx.blocking_send(batch);
    }
    Ok(())
}

/// The next document of a concatenated-BSON stream, or None at its clean end.
pub fn next_document(reader: &mut dyn Read, name: &str) -> anyhow::Result<Option<RawDocumentBuf>> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = reader.read(&mut len[got..])?;
        if n == 0 {
            if got == 0 {
                return Ok(None);
            }
            anyhow::bail!("{name} ends inside a document's length: the file is truncated");
        }
        got += n;
    }
    let size = i32::from_le_bytes(len);
    if size < 5 || size as usize > MAX_DOCUMENT {
        anyhow::bail!("{name} holds a document of invalid size {size}: the file is not BSON");
    }
    let mut bytes = vec![0u8; size as usize];
    bytes[..4].copy_from_slice(&len);
    reader
        .read_exact(&mut bytes[4..])
        .with_context(|| format!("{name} ends inside a document: the file is truncated"))?;
    RawDocumentBuf::from_bytes(bytes)
        .map(Some)
        .with_context(|| format!("{name} holds an invalid document"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_span_that_restates_the_granularity_is_left_out_and_custom_ones_kept() {
        let listed = doc! { "timeseries": { "timeField": "t", "granularity": "seconds", "bucketMaxSpanSeconds": 3600 } };
        assert_eq!(
            creatable(listed),
            doc! { "timeseries": { "timeField": "t", "granularity": "seconds" } }
        );
        let custom = doc! { "timeseries": { "timeField": "t", "bucketMaxSpanSeconds": 600, "bucketRoundingSeconds": 600 } };
        assert_eq!(creatable(custom.clone()), custom);
        let plain = doc! { "capped": true, "size": 4096 };
        assert_eq!(creatable(plain.clone()), plain);
    }
}
