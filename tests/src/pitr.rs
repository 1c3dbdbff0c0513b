//! Point-in-time scenarios' helpers: a workload that makes every kind of change and
//! records each with its cluster time and the document it left, the state that
//! record gives at any instant, and exact comparisons with a restored database.

use std::collections::BTreeMap;
use std::time::Duration;

use ferry_storage::pitr::ClusterTime;
use ferry_storage::{Catalog, Manifest, ObjectStore};
use ferry_testkit::wait_until;
use futures::TryStreamExt;
use mongodb::bson::{Bson, RawDocumentBuf, Timestamp, doc};
use mongodb::{Client, ClientSession};
use rand::seq::IndexedRandom;

/// How long a scenario waits for a backup or for capture to catch up.
pub const STEP: Duration = Duration::from_secs(180);

/// What one operation did, as the test saw it right after.
#[derive(Debug, Clone)]
pub enum Change {
    /// The document `id` of `coll` became `doc` (`None`: deleted).
    Doc {
        coll: String,
        id: i64,
        doc: Option<RawDocumentBuf>,
    },
    /// `coll` was dropped.
    Drop(String),
    /// `from` was renamed `to`.
    Rename(String, String),
}

/// Each collection's documents by `_id`.
pub type State = BTreeMap<String, BTreeMap<i64, RawDocumentBuf>>;

/// The state after every change up to and including `at`.
pub fn state_at(log: &[(ClusterTime, Change)], at: ClusterTime) -> State {
    let mut state = State::new();
    for (_, change) in log.iter().take_while(|(t, _)| *t <= at) {
        match change {
            Change::Doc { coll, id, doc } => {
                let docs = state.entry(coll.clone()).or_default();
                match doc {
                    Some(d) => {
                        docs.insert(*id, d.clone());
                    }
                    None => {
                        docs.remove(id);
                    }
                }
            }
            Change::Drop(coll) => {
                state.remove(coll);
            }
            Change::Rename(from, to) => {
                let docs = state.remove(from).unwrap_or_default();
                state.insert(to.clone(), docs);
            }
        }
    }
    state.retain(|_, docs| !docs.is_empty());
    state
}

/// A driver timestamp as a record's cluster time.
pub fn ct(t: Timestamp) -> ClusterTime {
    ClusterTime::new(t.time, t.increment)
}

/// The writer: one session, so each operation's cluster time is the session's
/// operation time right after it; each changed document is read back at once (no
/// other writer exists), which is its state at that time.
pub struct Writer {
    client: Client,
    session: ClientSession,
    /// Every change made, in order, with its cluster time.
    pub log: Vec<(ClusterTime, Change)>,
    live: Vec<i64>,
    next_id: i64,
    k: i64,
    /// Set by the test: the next step renames `staging`. A rename is made only on
    /// request, at a time the test knows no base backup runs: a dump during which
    /// one happens is refused and retried (the renamed documents would be in
    /// neither the dump nor its changes).
    pub rename: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Writer {
    /// A writer on `client`'s database `shop`.
    pub async fn new(client: &Client) -> Writer {
        Writer {
            session: client.start_session().await.unwrap(),
            client: client.clone(),
            log: Vec::new(),
            live: Vec::new(),
            next_id: 0,
            k: 0,
            rename: Default::default(),
        }
    }

    fn op_time(&self) -> ClusterTime {
        ct(self.session.operation_time().expect("an operation time"))
    }

    async fn read_back(&mut self, coll: &str, id: i64) -> Option<RawDocumentBuf> {
        self.client
            .database("shop")
            .collection::<RawDocumentBuf>(coll)
            .find_one(doc! { "_id": id })
            .session(&mut self.session)
            .await
            .unwrap()
    }

    /// Records the operation just made on `coll`'s document `id`.
    async fn record(&mut self, coll: &str, id: i64) {
        let at = self.op_time();
        let doc = self.read_back(coll, id).await;
        self.log.push((
            at,
            Change::Doc {
                coll: coll.into(),
                id,
                doc,
            },
        ));
    }

    /// One operation, chosen by turn: inserts, `$set`, `$inc`, `$unset`, `$push`,
    /// `$pop`, a pipeline truncation, replaces, deletes, side collections created,
    /// dropped and renamed.
    pub async fn step(&mut self) {
        self.k += 1;
        let k = self.k;
        let db = self.client.database("shop");
        let orders = db.collection::<mongodb::bson::Document>("orders");
        let existing = self.live.choose(&mut rand::rng()).copied();
        if self
            .rename
            .swap(false, std::sync::atomic::Ordering::Relaxed)
        {
            return self.rename_staging().await;
        }
        match (k % 12, existing) {
            (0 | 1, _) | (_, None) => {
                let id = self.next_id;
                self.next_id += 1;
                orders
                    .insert_one(doc! { "_id": id, "v": k, "arr": [k, k + 1, k + 2, k + 3], "sub": { "a": k, "b": "new" } })
                    .session(&mut self.session)
                    .await
                    .unwrap();
                self.live.push(id);
                self.record("orders", id).await;
            }
            (2, Some(id)) => {
                self.update(id, doc! { "$set": { "sub.b": format!("set {k}") } })
                    .await
            }
            (3, Some(id)) => self.update(id, doc! { "$inc": { "v": 7 } }).await,
            (4, Some(id)) => self.update(id, doc! { "$unset": { "sub.a": "" } }).await,
            (5, Some(id)) => {
                self.update(id, doc! { "$push": { "arr": format!("p{k}") } })
                    .await
            }
            (6, Some(id)) => self.update(id, doc! { "$pop": { "arr": 1 } }).await,
            (7, Some(id)) => {
                // An array truncated by a pipeline update: `truncatedArrays`.
                let r = orders
                    .update_one(
                        doc! { "_id": id, "arr": { "$type": "array" } },
                        vec![doc! { "$set": { "arr": { "$slice": ["$arr", 1] } } }],
                    )
                    .session(&mut self.session)
                    .await
                    .unwrap();
                if r.modified_count > 0 {
                    self.record("orders", id).await;
                }
            }
            (8, Some(id)) => {
                orders
                    .replace_one(
                        doc! { "_id": id },
                        doc! { "_id": id, "replaced": k, "z": Bson::Null, "arr": [k] },
                    )
                    .session(&mut self.session)
                    .await
                    .unwrap();
                self.record("orders", id).await;
            }
            (9, Some(id)) => {
                orders
                    .delete_one(doc! { "_id": id })
                    .session(&mut self.session)
                    .await
                    .unwrap();
                self.live.retain(|x| *x != id);
                self.record("orders", id).await;
            }
            (10, _) => {
                // Side collections, created by their first insert.
                let coll = ["tmp", "staging", "items"][(k / 12 % 3) as usize];
                let id = k;
                db.collection::<mongodb::bson::Document>(coll)
                    .insert_one(doc! { "_id": id, "in": coll })
                    .session(&mut self.session)
                    .await
                    .unwrap();
                self.record(coll, id).await;
            }
            _ => match k / 12 % 4 {
                // A collection dropped (and recreated by the next insert into it).
                0 => {
                    db.collection::<mongodb::bson::Document>("tmp")
                        .drop()
                        .session(&mut self.session)
                        .await
                        .unwrap();
                    let at = self.op_time();
                    self.log.push((at, Change::Drop("tmp".into())));
                }
                _ => {
                    let Some(id) = existing else { return };
                    self.update(id, doc! { "$set": { "late": k } }).await;
                }
            },
        }
    }

    /// Renames `staging` to `moved_<k>` (when it exists).
    async fn rename_staging(&mut self) {
        let k = self.k;
        let db = self.client.database("shop");
        let to = format!("moved_{k}");
        let exists = db
            .list_collection_names()
            .session(&mut self.session)
            .await
            .unwrap()
            .contains(&"staging".to_string());
        if exists {
            self.client
                .database("admin")
                .run_command(
                    doc! { "renameCollection": "shop.staging", "to": format!("shop.{to}") },
                )
                .session(&mut self.session)
                .await
                .unwrap();
            let at = self.op_time();
            self.log.push((at, Change::Rename("staging".into(), to)));
        }
    }

    async fn update(&mut self, id: i64, update: mongodb::bson::Document) {
        let r = self
            .client
            .database("shop")
            .collection::<mongodb::bson::Document>("orders")
            .update_one(doc! { "_id": id }, update)
            .session(&mut self.session)
            .await
            .unwrap();
        if r.modified_count > 0 {
            self.record("orders", id).await;
        }
    }
}

/// Every non-empty collection of `db`, as restored.
pub async fn restored_state(client: &Client, db: &str) -> State {
    let db = client.database(db);
    let mut state = State::new();
    for name in db.list_collection_names().await.unwrap() {
        let docs: Vec<RawDocumentBuf> = db
            .collection::<RawDocumentBuf>(&name)
            .find(doc! {})
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        let docs: BTreeMap<i64, RawDocumentBuf> = docs
            .into_iter()
            .map(|d| (d.get_i64("_id").unwrap(), d))
            .collect();
        if !docs.is_empty() {
            state.insert(name, docs);
        }
    }
    state
}

/// A MongoDB backup's consistent point.
pub fn consistent_point(m: &Manifest) -> ClusterTime {
    let d = m.mongodb.as_ref().unwrap();
    ClusterTime::new(d.end_time.seconds, d.end_time.increment)
}

/// Waits until the committed segments reach `at`.
pub async fn captured_through(store: &dyn ObjectStore, source: &str, at: ClusterTime) {
    wait_until("capture to commit the last change", STEP, || async {
        let timeline = Catalog::new(store).timeline(source).await.ok()?;
        timeline.newest().filter(|n| *n >= at).map(|_| ())
    })
    .await;
}

/// Asserts `restored` is `expected`, document by document, byte for byte.
pub fn assert_same_state(restored: &State, expected: &State, what: &str) {
    assert_eq!(
        restored.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "collections {what}"
    );
    for (coll, docs) in expected {
        let got = &restored[coll];
        assert_eq!(got.len(), docs.len(), "{coll} {what}");
        for (id, doc) in docs {
            assert_eq!(
                got.get(id).map(|d| d.as_bytes()),
                Some(doc.as_bytes()),
                "{coll} {id} {what}: restored {:?}, expected {:?}",
                got.get(id).map(|d| d.to_document()),
                doc.to_document()
            );
        }
    }
}
