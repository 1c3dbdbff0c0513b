//! The changes made while a dump runs, captured with a change stream opened at the
//! dump's start time and written to `oplog.bson` as oplog-entry-shaped documents
//! (`{ts, op, ns, o, o2}`), the form `mongodump --oplog` leaves:
//!
//! - insert: `op: "i"`, `o` the document as inserted;
//! - replace: `op: "u"`, `o` the new document, `o2` its `_id`;
//! - update: `op: "u"`, `o` `{$set, $unset}` built from the event's
//!   updateDescription (truncated arrays first, as `$push` with `$slice`), `o2` `_id`;
//! - delete: `op: "d"`, `o` its `_id`;
//! - drop, rename, dropDatabase: `op: "c"` on `<db>.$cmd` with the command.
//!
//! Replaying them in order over the collections' data (read at any time after the
//! start) is idempotent and lands on the end instant.

use std::collections::BTreeSet;
use std::time::Duration;
use tracing::Instrument;

use ferry_proto::reason;
use ferry_proto::v1::DumpFile;
use ferry_runtime::HandlerError;
use mongodb::Client;
use mongodb::bson::{RawDocument, RawDocumentBuf, Timestamp, doc, rawdoc};
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::errors;
use super::filter::CollectionFilter;
use crate::output::JobOutput;

/// The file name of the captured changes, as mongodump names it.
pub const OPLOG_FILE: &str = "oplog.bson";

/// How long one getMore waits for new events: short, so the end of the dump is
/// noticed quickly.
const AWAIT: Duration = Duration::from_millis(300);

/// What the capture wrote.
pub struct Captured {
    /// `oplog.bson`.
    pub file: DumpFile,
    /// Entries written.
    pub entries: u64,
    /// Events that cannot be replayed, by type.
    pub warnings: Vec<String>,
}

/// A change stream being written to `oplog.bson` while the dump runs.
pub struct Capture {
    end: watch::Sender<Option<Timestamp>>,
    /// Taken by `finish`; aborted on drop, so a failed dump leaves no stream open.
    task: Option<JoinHandle<Result<Captured, HandlerError>>>,
}

impl Drop for Capture {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

type Stream = mongodb::change_stream::ChangeStream<RawDocumentBuf>;

impl Capture {
    /// Opens the change stream at `start`. None when the server has no change
    /// streams (a standalone server): the dump then is not a single instant.
    pub async fn start(
        client: &Client,
        source: &str,
        start: Timestamp,
        databases: &[String],
        filter: &CollectionFilter,
        out: &JobOutput,
    ) -> Result<Option<Capture>, HandlerError> {
        // One database: a database-level stream, which a user with only `read` on
        // that database may open. Several: one cluster-wide stream, in order.
        let stream = match databases {
            [db] => {
                client
                    .database(db)
                    .watch()
                    .start_at_operation_time(start)
                    .max_await_time(AWAIT)
                    .await
            }
            _ => {
                client
                    .watch()
                    .pipeline([doc! { "$match": { "ns.db": { "$in": databases } } }])
                    .start_at_operation_time(start)
                    .max_await_time(AWAIT)
                    .await
            }
        };
        let stream = match stream {
            Ok(s) => s.with_type::<RawDocumentBuf>(),
            Err(e)
                if matches!(
                    errors::server_code(&e),
                    Some(
                        errors::code::CHANGE_STREAM_NOT_REPLICA_SET
                            | errors::code::CHANGE_STREAM_UNSUPPORTED
                    )
                ) =>
            {
                return Ok(None);
            }
            Err(e) => {
                return Err(errors::classify(
                    source,
                    &format!(
                        "opening the change stream that captures changes during the dump of {} (the backup user needs the changeStream and find privileges there)",
                        databases.join(", ")
                    ),
                    &e,
                ));
            }
        };
        let file = out
            .create(OPLOG_FILE)
            .await
            .map_err(|e| errors::spool(source, OPLOG_FILE, &e))?;
        let (end, end_rx) = watch::channel(None);
        // In the job's span, so the oplog file's DumpFileReady carries the job's trace.
        let task = tokio::spawn(
            run(stream, file, end_rx, filter.clone(), source.to_string()).in_current_span(),
        );
        Ok(Some(Capture {
            end,
            task: Some(task),
        }))
    }

    /// Stops at `end`: every change up to it is written, none after it.
    pub async fn finish(mut self, end: Timestamp) -> Result<Captured, HandlerError> {
        let _ = self.end.send(Some(end));
        let task = self.task.take().expect("finish runs once");
        task.await.map_err(|e| {
            HandlerError::retryable(reason::INTERNAL, format!("change capture task: {e}"))
        })?
    }
}

async fn run(
    mut stream: Stream,
    mut writer: crate::output::OutputFile,
    end: watch::Receiver<Option<Timestamp>>,
    filter: CollectionFilter,
    source: String,
) -> Result<Captured, HandlerError> {
    let mut entries = 0u64;
    let mut unreplayable = BTreeSet::new();
    loop {
        // Known before the getMore is sent: an empty reply to a getMore sent after
        // the end was known means every change up to the end has been seen.
        let end_known = *end.borrow();
        let event = stream.next_if_any().await.map_err(|e| {
            errors::classify(&source, "reading the change stream during the dump", &e)
        })?;
        let Some(event) = event else {
            if end_known.is_some() {
                break;
            }
            if !stream.is_alive() {
                // Invalidated (its database was dropped): nothing more will come.
                tokio::time::sleep(AWAIT).await;
            }
            continue;
        };
        let ts = event.get_timestamp("clusterTime").map_err(|e| {
            HandlerError::retryable(
                reason::DUMP_FAILED,
                format!("{source}: a change event without clusterTime: {e}"),
            )
        })?;
        if let Some(end) = *end.borrow()
            && ts > end
        {
            break;
        }
        for entry in to_oplog(&event, ts, &filter, &mut unreplayable) {
            writer
                .write_all(entry.as_bytes())
                .await
                .map_err(|e| errors::spool(&source, OPLOG_FILE, &e))?;
            entries += 1;
        }
    }
    let file = writer
        .finish()
        .await
        .map_err(|e| errors::spool(&source, OPLOG_FILE, &e))?;
    Ok(Captured {
        file,
        entries,
        warnings: unreplayable
            .into_iter()
            .map(|t| format!("a {t} event happened during the dump; it is recorded in oplog.bson as a no-op and not replayed"))
            .collect(),
    })
}

/// The oplog entries of one change event (none for events outside the filter).
fn to_oplog(
    event: &RawDocument,
    ts: Timestamp,
    filter: &CollectionFilter,
    unreplayable: &mut BTreeSet<String>,
) -> Vec<RawDocumentBuf> {
    let op_type = event.get_str("operationType").unwrap_or_default();
    let ns = event.get_document("ns").ok();
    let db = ns.and_then(|n| n.get_str("db").ok()).unwrap_or_default();
    let coll = ns.and_then(|n| n.get_str("coll").ok());
    if let Some(coll) = coll
        && !filter.includes(db, coll)
    {
        return Vec::new();
    }
    let full_ns = format!("{db}.{}", coll.unwrap_or("$cmd"));
    let key = || {
        event
            .get_document("documentKey")
            .map(|d| d.to_raw_document_buf())
            .unwrap_or_default()
    };
    let entry = |op: &str, ns: &str, o: RawDocumentBuf, o2: Option<RawDocumentBuf>| {
        let mut e = rawdoc! { "ts": ts, "op": op, "ns": ns, "o": o };
        if let Some(o2) = o2 {
            e.append("o2", o2);
        }
        e
    };
    match op_type {
        "insert" => match event.get_document("fullDocument") {
            Ok(doc) => vec![entry("i", &full_ns, doc.to_raw_document_buf(), Some(key()))],
            Err(_) => Vec::new(),
        },
        "replace" => match event.get_document("fullDocument") {
            Ok(doc) => vec![entry("u", &full_ns, doc.to_raw_document_buf(), Some(key()))],
            Err(_) => Vec::new(),
        },
        "delete" => vec![entry("d", &full_ns, key(), None)],
        "update" => update_entries(event)
            .into_iter()
            .map(|o| entry("u", &full_ns, o, Some(key())))
            .collect(),
        "drop" => vec![entry(
            "c",
            &format!("{db}.$cmd"),
            rawdoc! { "drop": coll.unwrap_or_default() },
            None,
        )],
        "dropDatabase" => vec![entry(
            "c",
            &format!("{db}.$cmd"),
            rawdoc! { "dropDatabase": 1 },
            None,
        )],
        "rename" => {
            let to = event.get_document("to").ok();
            let to_ns = format!(
                "{}.{}",
                to.and_then(|t| t.get_str("db").ok()).unwrap_or_default(),
                to.and_then(|t| t.get_str("coll").ok()).unwrap_or_default()
            );
            vec![entry(
                "c",
                &format!("{db}.$cmd"),
                rawdoc! { "renameCollection": full_ns.as_str(), "to": to_ns, "dropTarget": true },
                None,
            )]
        }
        // Ends only collection- or database-level streams; this one is cluster-wide.
        "invalidate" => Vec::new(),
        other => {
            unreplayable.insert(other.to_string());
            vec![entry(
                "n",
                &full_ns,
                rawdoc! { "msg": format!("ferry: {other} not replayed") },
                None,
            )]
        }
    }
}

/// An update event as update documents: truncations first (they shorten arrays
/// the $set may then write into), then `$set`/`$unset`.
fn update_entries(event: &RawDocument) -> Vec<RawDocumentBuf> {
    let Ok(desc) = event.get_document("updateDescription") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if let Ok(truncated) = desc.get_array("truncatedArrays") {
        let mut push = RawDocumentBuf::new();
        for t in truncated.into_iter().flatten() {
            if let Some(t) = t.as_document()
                && let (Ok(field), Ok(size)) = (t.get_str("field"), t.get_i32("newSize"))
            {
                push.append(field, rawdoc! { "$each": [], "$slice": size });
            }
        }
        if !push.is_empty() {
            out.push(rawdoc! { "$push": push });
        }
    }
    let mut update = RawDocumentBuf::new();
    if let Ok(set) = desc.get_document("updatedFields")
        && !set.is_empty()
    {
        update.append("$set", set.to_raw_document_buf());
    }
    if let Ok(removed) = desc.get_array("removedFields") {
        let mut unset = RawDocumentBuf::new();
        for f in removed.into_iter().flatten() {
            if let Some(f) = f.as_str() {
                unset.append(f, "");
            }
        }
        if !unset.is_empty() {
            update.append("$unset", unset);
        }
    }
    if !update.is_empty() {
        out.push(update);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(d: mongodb::bson::Document) -> RawDocumentBuf {
        RawDocumentBuf::from_document(&d).unwrap()
    }

    #[test]
    fn change_events_become_oplog_entries() {
        let ts = Timestamp {
            time: 10,
            increment: 2,
        };
        let all = CollectionFilter::default();
        let mut skipped = BTreeSet::new();
        let update = event(doc! {
            "operationType": "update",
            "clusterTime": ts,
            "ns": { "db": "shop", "coll": "items" },
            "documentKey": { "_id": 7 },
            "updateDescription": {
                "updatedFields": { "a.b": 1, "list.2": "x" },
                "removedFields": ["gone"],
                "truncatedArrays": [{ "field": "list", "newSize": 3 }],
            },
        });
        let entries = to_oplog(&update, ts, &all, &mut skipped);
        let docs: Vec<_> = entries.iter().map(|e| e.to_document().unwrap()).collect();
        assert_eq!(
            docs,
            vec![
                doc! { "ts": ts, "op": "u", "ns": "shop.items", "o": { "$push": { "list": { "$each": [], "$slice": 3 } } }, "o2": { "_id": 7 } },
                doc! { "ts": ts, "op": "u", "ns": "shop.items", "o": { "$set": { "a.b": 1, "list.2": "x" }, "$unset": { "gone": "" } }, "o2": { "_id": 7 } },
            ]
        );

        let insert = event(doc! {
            "operationType": "insert", "clusterTime": ts,
            "ns": { "db": "shop", "coll": "items" },
            "documentKey": { "_id": 1 }, "fullDocument": { "_id": 1, "z": 1, "a": 2 },
        });
        let e = to_oplog(&insert, ts, &all, &mut skipped).remove(0);
        assert_eq!(
            e.get_document("o").unwrap().as_bytes(),
            insert.get_document("fullDocument").unwrap().as_bytes(),
            "the inserted document's bytes as they were"
        );

        let drop = event(
            doc! { "operationType": "drop", "clusterTime": ts, "ns": { "db": "shop", "coll": "old" } },
        );
        assert_eq!(
            to_oplog(&drop, ts, &all, &mut skipped)[0]
                .to_document()
                .unwrap(),
            doc! { "ts": ts, "op": "c", "ns": "shop.$cmd", "o": { "drop": "old" } }
        );

        let only_orders = CollectionFilter::new(&["shop.orders".into()], &[]).unwrap();
        assert!(to_oplog(&insert, ts, &only_orders, &mut skipped).is_empty());

        let create = event(
            doc! { "operationType": "createIndexes", "clusterTime": ts, "ns": { "db": "shop", "coll": "items" } },
        );
        assert_eq!(
            to_oplog(&create, ts, &all, &mut skipped)[0]
                .get_str("op")
                .unwrap(),
            "n"
        );
        assert!(skipped.contains("createIndexes"));
    }
}
