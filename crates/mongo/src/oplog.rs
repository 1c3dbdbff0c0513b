//! Changes in oplog-entry form (`{ts, op, ns, o, o2}`), the form `mongodump --oplog`
//! leaves and `mongorestore --oplogReplay` replays; the dump's `oplog.bson` and the
//! capture's segments both hold it, so one replay path serves both:
//!
//! - insert: `op: "i"`, `o` the document as inserted;
//! - replace: `op: "u"`, `o` the new document, `o2` its `_id`;
//! - update: `op: "u"`, `o` `{$set, $unset}` built from the event's
//!   updateDescription (truncated arrays first, as `$push` with `$slice`), `o2` `_id`;
//! - delete: `op: "d"`, `o` its `_id`;
//! - drop, rename, dropDatabase: `op: "c"` on `<db>.$cmd` with the command;
//! - anything else (an index built, a collection's options changed): `op: "n"`, a
//!   no-op that says what was not replayed.

use std::collections::BTreeSet;

use mongodb::bson::{RawDocument, RawDocumentBuf, Timestamp, rawdoc};

use crate::CollectionFilter;

/// The oplog entries of one change event (none for events outside the filter).
pub fn to_oplog(
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
    use mongodb::bson::doc;

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
