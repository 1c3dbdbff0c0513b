//! The changes made while a dump runs, captured with a change stream opened just
//! before the dump's start time and written to `oplog.bson` in oplog-entry form (see
//! [`ferry_mongo::oplog`]), the form `mongodump --oplog` leaves. Replaying them in
//! order over the collections' data (read at any time after the start) is
//! idempotent and lands on the end instant.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use tracing::Instrument;

use ferry_proto::reason;
use ferry_proto::v1::DumpFile;
use ferry_runtime::HandlerError;
use mongodb::Client;
use mongodb::bson::{RawDocumentBuf, Timestamp, doc};
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use ferry_mongo::CollectionFilter;
use ferry_mongo::oplog::to_oplog;

use super::errors;
use crate::output::JobOutput;

/// The file name of the captured changes, as mongodump names it.
pub const OPLOG_FILE: &str = "oplog.bson";

/// How long one getMore waits for new events: short, so the end of the dump is
/// noticed quickly.
const AWAIT: Duration = Duration::from_millis(300);

/// Once the end is known, how long the stream must have been asked before an
/// empty reply is taken to mean every change up to the end was seen, unless the
/// stream's post-batch token proves it read past the end (mongod's does, see
/// [`ferry_mongo::token::watermark`]; SecantusDB's cannot). A server may make a
/// write visible to change streams a moment after giving it its cluster time, so
/// the first empty reply is not proof on its own.
const SETTLE: Duration = Duration::from_secs(1);

/// What the capture wrote.
pub struct Captured {
    /// `oplog.bson`.
    pub file: DumpFile,
    /// Entries written.
    pub entries: u64,
    /// Events that cannot be replayed, by type.
    pub warnings: Vec<String>,
    /// Collections of the dump renamed while it ran (`from`, `to`): the renamed
    /// collection's documents are in neither the dump (it was listed under its old
    /// name) nor the changes (they were written before the start), so such a dump
    /// is not one instant.
    pub renamed: Vec<(String, String)>,
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
    /// Opens the change stream where the server's committed changes end (no start
    /// position: see the caller). None when the server has no change streams (a
    /// standalone server): the dump then is not a single instant.
    pub async fn start(
        client: &Client,
        source: &str,
        databases: &[String],
        filter: &CollectionFilter,
        out: &JobOutput,
    ) -> Result<Option<Capture>, HandlerError> {
        // One database: a database-level stream, which a user with only `read` on
        // that database may open. Several: one cluster-wide stream, in order.
        let stream = match databases {
            [db] => client.database(db).watch().max_await_time(AWAIT).await,
            _ => {
                client
                    .watch()
                    .pipeline([doc! { "$match": { "ns.db": { "$in": databases } } }])
                    .max_await_time(AWAIT)
                    .await
            }
        };
        let stream = match stream {
            Ok(s) => s.with_type::<RawDocumentBuf>(),
            Err(e) if ferry_mongo::no_change_streams(&e) => {
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
    let mut renamed = Vec::new();
    // When the end became known.
    let mut end_known_at: Option<Instant> = None;
    loop {
        // Known before the getMore is sent: an empty reply to a getMore sent after
        // the end was known (and settled, see SETTLE) means every change up to the
        // end has been seen.
        let end_known = *end.borrow();
        let sent = Instant::now();
        if end_known.is_some() {
            end_known_at.get_or_insert(sent);
        }
        let event = stream.next_if_any().await.map_err(|e| {
            errors::classify(&source, "reading the change stream during the dump", &e)
        })?;
        let Some(event) = event else {
            if let (Some(end), Some(known_at)) = (end_known, end_known_at) {
                let token_past = stream
                    .resume_token()
                    .and_then(|t| ferry_mongo::token::watermark(&t))
                    .is_some_and(|t| t >= end);
                if token_past || sent.duration_since(known_at) >= SETTLE {
                    break;
                }
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
        if event.get_str("operationType") == Ok("rename")
            && let Some(rename) = renamed_collection(&event, &filter)
        {
            renamed.push(rename);
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
        renamed,
    })
}

/// `(from, to)` of a rename event of a collection the dump includes.
fn renamed_collection(
    event: &RawDocumentBuf,
    filter: &CollectionFilter,
) -> Option<(String, String)> {
    let ns = event.get_document("ns").ok()?;
    let (db, coll) = (ns.get_str("db").ok()?, ns.get_str("coll").ok()?);
    if !filter.includes(db, coll) {
        return None;
    }
    let to = event.get_document("to").ok()?;
    Some((
        format!("{db}.{coll}"),
        format!("{}.{}", to.get_str("db").ok()?, to.get_str("coll").ok()?),
    ))
}
