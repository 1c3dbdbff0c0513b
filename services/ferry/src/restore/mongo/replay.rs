//! Replaying `oplog.bson` and captured segments (oplog-entry-shaped documents
//! `{ts, op, ns, o, o2}`) in order. Every operation is idempotent, so replaying over
//! data read at any time after the dump's start lands on its end instant.
//!
//! Consecutive writes to one collection go to the server as one ordered `update`
//! (inserts and replacements are upserts, so they join the updates) or `delete`
//! command of up to [`MAX_BATCH`] statements: the server applies them in order and
//! stops at the first error, exactly as one at a time would, for one round trip
//! instead of hundreds. A command entry (drop, rename) sends what is batched first.

use std::io::Read;

use anyhow::Context;
use ferry_storage::pitr::ClusterTime;
use mongodb::Client;
use mongodb::bson::{Document, RawArrayBuf, RawDocumentBuf, Timestamp, doc, rawdoc};

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

/// Statements per command; also bounded by [`MAX_BATCH_BYTES`].
pub const MAX_BATCH: usize = 1000;
/// Bytes of statements per command, well under the server's 16 MiB message limit.
const MAX_BATCH_BYTES: usize = 8 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Update,
    Delete,
}

/// Consecutive writes to one collection, not sent yet.
struct Batch {
    db: String,
    coll: String,
    kind: Kind,
    statements: RawArrayBuf,
    /// Each statement's entry, to name the one the server refuses.
    entries: Vec<(Timestamp, String)>,
    bytes: usize,
}

impl Batch {
    /// Sends the batch as one ordered command; returns how many it applied.
    async fn send(self, client: &Client) -> anyhow::Result<u64> {
        let n = self.entries.len() as u64;
        let (name, field) = match self.kind {
            Kind::Update => ("update", "updates"),
            Kind::Delete => ("delete", "deletes"),
        };
        let mut command = rawdoc! { name: self.coll.as_str() };
        command.append(field, self.statements);
        command.append("ordered", true);
        let reply = client
            .database(&self.db)
            .run_raw_command(command)
            .await
            .with_context(|| {
                format!(
                    "replaying {n} changes to {}.{} from {}",
                    self.db, self.coll, self.entries[0].0
                )
            })?;
        if let Ok(errors) = reply.get_array("writeErrors")
            && let Some(first) = errors.first()
        {
            let error = first.as_document();
            let index = error
                .as_ref()
                .and_then(|e| e.get_i32("index").ok())
                .unwrap_or(0) as usize;
            let (ts, entry) = self
                .entries
                .get(index)
                .or(self.entries.last())
                .cloned()
                .expect("a batch has entries");
            anyhow::bail!(
                "replaying the change at {ts}: {entry}: {}",
                error
                    .as_ref()
                    .and_then(|e| e.get_str("errmsg").ok())
                    .unwrap_or("refused")
            );
        }
        Ok(n)
    }
}

/// Applies every entry in `range`, in order; returns how many were applied.
pub async fn apply(
    client: &Client,
    reader: Box<dyn Read + Send>,
    range: Range,
    opts: &MongoRestoreOptions,
) -> anyhow::Result<u64> {
    // Entries are read one at a time on a blocking thread; the channel's bound
    // keeps memory at a few entries (and a batch at MAX_BATCH_BYTES).
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
    let mut batch: Option<Batch> = None;
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
        match statement(&raw, &entry, opts)
            .with_context(|| format!("replaying the change at {ts}: {entry}"))?
        {
            Some((db, coll, kind, stmt)) => {
                let fits = batch.as_ref().is_some_and(|b| {
                    b.db == db
                        && b.coll == coll
                        && b.kind == kind
                        && b.entries.len() < MAX_BATCH
                        && b.bytes + stmt.as_bytes().len() <= MAX_BATCH_BYTES
                });
                if !fits {
                    if let Some(full) = batch.take() {
                        applied += full.send(client).await?;
                    }
                    batch = Some(Batch {
                        db,
                        coll,
                        kind,
                        statements: RawArrayBuf::new(),
                        entries: Vec::new(),
                        bytes: 0,
                    });
                }
                let b = batch.as_mut().expect("a batch");
                b.bytes += stmt.as_bytes().len();
                b.statements.push(stmt);
                b.entries.push((ts, entry.to_string()));
            }
            None => {
                // A command, or outside what is restored: what is batched goes
                // first, so the order holds.
                if let Some(full) = batch.take() {
                    applied += full.send(client).await?;
                }
                if apply_command(client, &entry, opts)
                    .await
                    .with_context(|| format!("replaying the change at {ts}: {entry}"))?
                {
                    applied += 1;
                }
            }
        }
    }
    if let Some(full) = batch.take() {
        applied += full.send(client).await?;
    }
    drop(rx);
    reading.await??;
    Ok(applied)
}

/// The target database of `db`.
fn target(opts: &MongoRestoreOptions, db: &str) -> String {
    opts.rename_db
        .get(db)
        .cloned()
        .unwrap_or_else(|| db.to_string())
}

/// Whether `db.coll` is restored.
fn wanted(opts: &MongoRestoreOptions, db: &str, coll: &str) -> bool {
    opts.collection
        .as_ref()
        .is_none_or(|only| *only == format!("{db}.{coll}"))
}

/// A write entry as its statement (target database, collection, kind); `None`
/// for a command entry or one outside what is restored.
fn statement(
    raw: &RawDocumentBuf,
    entry: &Document,
    opts: &MongoRestoreOptions,
) -> anyhow::Result<Option<(String, String, Kind, RawDocumentBuf)>> {
    let op = entry.get_str("op").unwrap_or_default();
    if !matches!(op, "i" | "u" | "d") {
        return Ok(None);
    }
    let ns = entry.get_str("ns").unwrap_or_default();
    let Some((db, coll)) = ns.split_once('.') else {
        return Ok(None);
    };
    if !wanted(opts, db, coll) {
        return Ok(None);
    }
    let o = raw
        .get_document("o")
        .context("an oplog entry without o")?
        .to_raw_document_buf();
    let (db, coll) = (target(opts, db), coll.to_string());
    if op == "d" {
        return Ok(Some((
            db,
            coll,
            Kind::Delete,
            rawdoc! { "q": o, "limit": 1 },
        )));
    }
    let key = raw
        .get_document("o2")
        .context("an insert or update without o2")?
        .to_raw_document_buf();
    let modifier = o
        .iter()
        .next()
        .transpose()?
        .is_some_and(|(k, _)| k.starts_with('$'));
    let stmt = if modifier {
        rawdoc! { "q": key, "u": o }
    } else {
        // An insert or a replacement: upserted, so replaying it over data that
        // already has the document is harmless.
        rawdoc! { "q": key, "u": o, "upsert": true }
    };
    Ok(Some((db, coll, Kind::Update, stmt)))
}

/// Applies a command entry (drop, dropDatabase, rename); false when it is outside
/// what is being restored, or a no-op.
async fn apply_command(
    client: &Client,
    entry: &Document,
    opts: &MongoRestoreOptions,
) -> anyhow::Result<bool> {
    let op = entry.get_str("op").unwrap_or_default();
    let ns = entry.get_str("ns").unwrap_or_default();
    let Some((db, _)) = ns.split_once('.') else {
        return Ok(false);
    };
    let target = |db: &str| target(opts, db);
    let wanted = |db: &str, coll: &str| wanted(opts, db, coll);
    let database = client.database(&target(db));
    match op {
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
