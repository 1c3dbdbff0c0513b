//! Replaying `oplog.bson` (oplog-entry-shaped documents `{ts, op, ns, o, o2}`) in
//! order. Every operation is idempotent, so replaying over data read at any time
//! after the dump's start lands on its end instant.

use std::io::Read;

use anyhow::Context;
use ferry_storage::pitr::ClusterTime;
use mongodb::Client;
use mongodb::bson::{Document, RawDocumentBuf, doc};

use super::MongoRestoreOptions;
use super::load::next_document;

/// Which entries a replay applies: those after `after` up to and including
/// `through` (unbounded where `None`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Range {
    /// Entries at or before this are already in the data (a base backup's
    /// consistent point).
    pub after: Option<ClusterTime>,
    /// The instant being restored to.
    pub through: Option<ClusterTime>,
}

/// Applies every entry in `range`, in order; returns how many were applied.
pub async fn apply(
    client: &Client,
    reader: Box<dyn Read + Send>,
    range: Range,
    opts: &MongoRestoreOptions,
) -> anyhow::Result<u64> {
    // Entries are read one at a time on a blocking thread; the channel's bound
    // keeps memory at a few entries.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<RawDocumentBuf>(256);
    let reading = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let mut reader = reader;
        while let Some(entry) = next_document(&mut reader, "oplog.bson")? {
            if tx.blocking_send(entry).is_err() {
                break;
            }
        }
        Ok(())
    });
    let mut applied = 0;
    while let Some(raw) = rx.recv().await {
        let entry: Document = raw
            .to_document()
            .context("oplog.bson holds an invalid entry")?;
        let ts = entry
            .get_timestamp("ts")
            .context("an oplog entry without ts")?;
        let at = ClusterTime::new(ts.time, ts.increment);
        if range.through.is_some_and(|through| at > through) {
            break;
        }
        if range.after.is_some_and(|after| at <= after) {
            continue;
        }
        if apply_one(client, &raw, &entry, opts)
            .await
            .with_context(|| format!("replaying the change at {ts}: {entry}"))?
        {
            applied += 1;
        }
    }
    drop(rx);
    reading.await??;
    Ok(applied)
}

/// Applies one entry; false when it is outside what is being restored.
async fn apply_one(
    client: &Client,
    raw: &RawDocumentBuf,
    entry: &Document,
    opts: &MongoRestoreOptions,
) -> anyhow::Result<bool> {
    let op = entry.get_str("op").unwrap_or_default();
    let ns = entry.get_str("ns").unwrap_or_default();
    let Some((db, coll)) = ns.split_once('.') else {
        return Ok(false);
    };
    let target = |db: &str| {
        opts.rename_db
            .get(db)
            .cloned()
            .unwrap_or_else(|| db.to_string())
    };
    let wanted = |db: &str, coll: &str| {
        opts.collection
            .as_ref()
            .is_none_or(|only| *only == format!("{db}.{coll}"))
    };
    let database = client.database(&target(db));
    match op {
        "i" | "u" | "d" => {
            if !wanted(db, coll) {
                return Ok(false);
            }
            let collection = database.collection::<RawDocumentBuf>(coll);
            let o = raw
                .get_document("o")
                .context("an oplog entry without o")?
                .to_raw_document_buf();
            match op {
                "d" => {
                    collection.delete_one(o.to_document()?).await?;
                }
                _ => {
                    let key = entry
                        .get_document("o2")
                        .context("an insert or update without o2")?
                        .clone();
                    let modifier = o
                        .iter()
                        .next()
                        .transpose()?
                        .is_some_and(|(k, _)| k.starts_with('$'));
                    if modifier {
                        database
                            .collection::<Document>(coll)
                            .update_one(key, o.to_document()?)
                            .await?;
                    } else {
                        // An insert or a replacement: upserted, so replaying it
                        // over data that already has the document is harmless.
                        collection.replace_one(key, o).upsert(true).await?;
                    }
                }
            }
        }
        "c" => {
            let o = entry
                .get_document("o")
                .context("a command entry without o")?;
            if let Ok(name) = o.get_str("drop") {
                if !wanted(db, name) {
                    return Ok(false);
                }
                database.collection::<Document>(name).drop().await?;
            } else if o.contains_key("dropDatabase") {
                if opts.collection.is_some() {
                    return Ok(false);
                }
                database.drop().await?;
            } else if let (Ok(from), Ok(to)) = (o.get_str("renameCollection"), o.get_str("to")) {
                let (from_db, from_coll) = from.split_once('.').unwrap_or((db, from));
                let (to_db, to_coll) = to.split_once('.').unwrap_or((db, to));
                if !wanted(from_db, from_coll) {
                    return Ok(false);
                }
                client
                    .database("admin")
                    .run_command(doc! {
                        "renameCollection": format!("{}.{from_coll}", target(from_db)),
                        "to": format!("{}.{to_coll}", target(to_db)),
                        "dropTarget": true,
                    })
                    .await?;
            } else {
                return Ok(false);
            }
        }
        _ => return Ok(false),
    }
    Ok(true)
}
