//! The catalog: the only code that knows what a store holds. Every command and
//! worker asks it which backups a source has, which one is `latest`, what a
//! manifest says, which backups carry keep marks, and which manifests exist at all
//! (for garbage collection); nobody else lists or parses the layout, so they can
//! never disagree.
//!
//! Order: a source's backups are ordered by the time their id starts with (when
//! the job was requested), newest first. That order needs almost no manifest
//! read, so it is the same for `ferry list`, `restore --backup latest`, `verify`,
//! `status`, retention and the digest, also when a later backup completes before
//! an earlier one. The id's time has whole seconds: backups requested in the same
//! second are ordered by their manifests' start times, then by id. A manifest
//! whose id carries no time is read once for its completion time.
//!
//! Point-in-time records (segments of captured changes and gaps, see [`crate::pitr`])
//! are listed, read, committed and checked into a [`Timeline`] here too.
//!
//! Memory: listings are streamed page by page; what is held is one source's
//! backup entries (bounded by its retention policy), never the bucket's objects.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use futures::{Stream, StreamExt, TryStreamExt};
use serde::Serialize;

use crate::encryption::{OpenError, Opener, Sealer};
use crate::layout::{
    self, BACKUPS_PREFIX, KeyKind, OBJECTS_PREFIX, keep_mark_key, manifest_key, source_prefix,
};
use crate::manifest::ManifestError;
use crate::pitr::{
    ClusterTime, GapRecord, PITR_PREFIX, RecordKey, RecordKind, SegmentRecord, Timeline,
    TimelineRecord, gap_key, parse_pitr_key, pitr_prefix, segment_key,
};
use crate::{ListPages, Manifest, ObjectStore, StorageError, get_bytes};

/// Manifests read at once when a listing reads them.
const READ_CONCURRENCY: usize = 16;

/// One backup, as the store's listing shows it (no manifest read).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackupEntry {
    /// The source.
    pub source: String,
    /// The backup id.
    pub id: String,
    /// The time the id starts with (when its job was requested), or the manifest's
    /// completion time for an id without one.
    pub time: DateTime<Utc>,
    /// Whether a keep mark protects it from every retention policy.
    pub kept: bool,
}

/// What the catalog could not answer.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The source has no backup at all.
    #[error("source {source_name} has no backups in {store}")]
    NoBackups {
        /// The source.
        source_name: String,
        /// The store, described.
        store: String,
    },
    /// No backup with that id.
    #[error(
        "backup {backup_id} of {source_name} not found; `ferry list --source {source_name}` shows the backups"
    )]
    NoSuchBackup {
        /// The source.
        source_name: String,
        /// The id asked for.
        backup_id: String,
    },
    /// The manifest (or point-in-time record) exists but cannot be read as one.
    #[error("{} {key} is unreadable: {why}", if key.starts_with(PITR_PREFIX) { "record" } else { "manifest" })]
    Unreadable {
        /// Its key.
        key: String,
        /// What is wrong with it.
        why: String,
    },
    /// The manifest is encrypted and the identity given cannot open it.
    #[error(transparent)]
    Encrypted(#[from] OpenError),
    /// The manifest is encrypted and no identity was given.
    #[error(
        "backup {backup_id} of {source_name} is encrypted: pass --identity FILE (or set encryption.identity_file) with an identity of one of its recipients"
    )]
    Locked {
        /// The source.
        source_name: String,
        /// The backup.
        backup_id: String,
    },
    /// The store failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// The catalog of one store, with the keys of an encrypted store when the caller
/// has them: a sealer to write encrypted manifests, an opener to read them.
#[derive(Clone, Copy)]
pub struct Catalog<'a> {
    store: &'a dyn ObjectStore,
    sealer: Option<&'a Sealer>,
    opener: Option<&'a Opener>,
}

impl<'a> Catalog<'a> {
    /// The catalog of `store`, without keys: encrypted manifests read as their
    /// [`Manifest::locked`] view, and manifests are written in plaintext.
    pub fn new(store: &'a dyn ObjectStore) -> Self {
        Catalog {
            store,
            sealer: None,
            opener: None,
        }
    }

    /// This catalog, writing manifests sealed by `sealer` (when encryption is on).
    pub fn with_sealer(self, sealer: Option<&'a Sealer>) -> Self {
        Catalog { sealer, ..self }
    }

    /// This catalog, opening encrypted manifests with `opener` when given.
    pub fn with_opener(self, opener: Option<&'a Opener>) -> Self {
        Catalog { opener, ..self }
    }

    /// The manifest of `which`, which must be readable in full (not a locked view
    /// of an encrypted backup): what a restore or a deep check needs.
    pub async fn resolve_open(&self, source: &str, which: &str) -> Result<Manifest, CatalogError> {
        let manifest = self.resolve(source, which).await?;
        if manifest.locked {
            return Err(CatalogError::Locked {
                source_name: manifest.source,
                backup_id: manifest.backup_id,
            });
        }
        Ok(manifest)
    }

    /// The store it reads.
    pub fn store(&self) -> &'a dyn ObjectStore {
        self.store
    }

    /// The physical base backups of a PostgreSQL source (`mode = "physical"`),
    /// newest first, with their manifests: what a restore to an instant starts
    /// from and what the WAL archive must serve.
    pub async fn base_backups(&self, source: &str) -> Result<Vec<Manifest>, CatalogError> {
        let mut bases = Vec::new();
        for entry in self.backups(Some(source)).await? {
            match self.read(source, &entry.id).await {
                Ok(m) if m.postgres.as_ref().is_some_and(|p| p.physical.is_some()) => bases.push(m),
                Ok(_) => {}
                // Deleted since the listing (retention): not a backup any more.
                Err(CatalogError::NoSuchBackup { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(bases)
    }

    /// Every backup of `source` (of every source when `None`), newest first.
    pub async fn backups(&self, source: Option<&str>) -> Result<Vec<BackupEntry>, StorageError> {
        let prefix = source
            .map(source_prefix)
            .unwrap_or_else(|| BACKUPS_PREFIX.to_string());
        let mut ids: Vec<(String, String)> = Vec::new();
        let mut kept: HashSet<(String, String)> = HashSet::new();
        let mut pages = self.store.list(&prefix);
        while let Some(page) = pages.try_next().await? {
            for meta in page {
                match layout::parse_backups_key(&meta.key) {
                    Some((src, id, KeyKind::Manifest)) => ids.push((src, id)),
                    Some((src, id, KeyKind::KeepMark)) => {
                        kept.insert((src, id));
                    }
                    None => {}
                }
            }
        }
        drop(pages);
        let mut entries = Vec::with_capacity(ids.len());
        for (src, id) in ids {
            let time = match layout::backup_time_of(&id) {
                Some(t) => t,
                None => match self.read(&src, &id).await {
                    Ok(m) => m.completed_at,
                    // Deleted since the listing: not a backup any more.
                    Err(CatalogError::NoSuchBackup { .. }) => continue,
                    // An unreadable manifest has no time to order it by; it is left
                    // out of listings and plans (so never deleted by policy) and
                    // still protects its objects from garbage collection.
                    Err(CatalogError::Unreadable { key, why }) => {
                        tracing::warn!(manifest = %key, error = %why, "unreadable manifest left out of the catalog's listing");
                        continue;
                    }
                    Err(e @ (CatalogError::Encrypted(_) | CatalogError::Locked { .. })) => {
                        tracing::warn!(source = %src, backup = %id, error = %e, "manifest left out of the catalog's listing");
                        continue;
                    }
                    Err(CatalogError::NoBackups { .. }) => continue,
                    Err(CatalogError::Storage(e)) => return Err(e),
                },
            };
            let kept = kept.contains(&(src.clone(), id.clone()));
            entries.push(BackupEntry {
                source: src,
                id,
                time,
                kept,
            });
        }
        entries.sort_by(|a, b| {
            b.time
                .cmp(&a.time)
                .then_with(|| a.source.cmp(&b.source))
                .then_with(|| b.id.cmp(&a.id))
        });
        self.order_within_a_second(&mut entries).await?;
        Ok(entries)
    }

    /// Ids name their time to the second, so two backups of one source requested
    /// in the same second tie; their manifests' start times order them. Ties are
    /// rare (manual jobs published back to back), so this reads a few manifests at
    /// most, and only those of tied backups.
    async fn order_within_a_second(&self, entries: &mut [BackupEntry]) -> Result<(), StorageError> {
        let mut start = 0;
        while start < entries.len() {
            let mut end = start + 1;
            while end < entries.len()
                && entries[end].time == entries[start].time
                && entries[end].source == entries[start].source
            {
                end += 1;
            }
            if end - start > 1 {
                let tied = &mut entries[start..end];
                let mut started = Vec::with_capacity(tied.len());
                for entry in tied.iter() {
                    let at = match self.read(&entry.source, &entry.id).await {
                        Ok(m) => Some(m.started_at),
                        // Unreadable or gone since the listing: its place among the
                        // tied is the id's; the caller reports it when it reads it.
                        Err(CatalogError::Storage(e)) => return Err(e),
                        Err(_) => None,
                    };
                    started.push((entry.id.clone(), at));
                }
                let started_of = |id: &str| {
                    started
                        .iter()
                        .find(|(i, _)| i == id)
                        .and_then(|(_, at)| *at)
                };
                tied.sort_by(|a, b| {
                    started_of(&b.id)
                        .cmp(&started_of(&a.id))
                        .then_with(|| b.id.cmp(&a.id))
                });
            }
            start = end;
        }
        Ok(())
    }

    /// The newest backup of `source`, if it has one.
    pub async fn latest(&self, source: &str) -> Result<Option<BackupEntry>, StorageError> {
        Ok(self.backups(Some(source)).await?.into_iter().next())
    }

    /// The manifest of `which`: a backup id, or `latest` (the newest by the
    /// catalog's order; if its manifest is unreadable that is an error naming it,
    /// not a silent step back to an older backup).
    pub async fn resolve(&self, source: &str, which: &str) -> Result<Manifest, CatalogError> {
        if which != "latest" {
            return self.read(source, which).await;
        }
        let latest = self
            .latest(source)
            .await?
            .ok_or_else(|| CatalogError::NoBackups {
                source_name: source.to_string(),
                store: self.store.describe(),
            })?;
        self.read(source, &latest.id).await
    }

    /// The manifest of one backup.
    pub async fn read(&self, source: &str, backup_id: &str) -> Result<Manifest, CatalogError> {
        match self.read_key(&manifest_key(source, backup_id)).await? {
            Some(m) => Ok(m),
            None => Err(CatalogError::NoSuchBackup {
                source_name: source.to_string(),
                backup_id: backup_id.to_string(),
            }),
        }
    }

    /// The manifest at `key`, `None` when it is not (or no longer) there.
    pub async fn read_key(&self, key: &str) -> Result<Option<Manifest>, CatalogError> {
        let bytes = match get_bytes(self.store, key).await {
            Ok(b) => b,
            Err(StorageError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        match Manifest::from_stored(&bytes, self.opener, &format!("manifest {key}")) {
            Ok(m) => Ok(Some(m)),
            Err(ManifestError::Open(e)) => Err(CatalogError::Encrypted(e)),
            Err(ManifestError::Invalid(why)) => Err(CatalogError::Unreadable {
                key: key.to_string(),
                why,
            }),
        }
    }

    /// Reads the manifests of `entries` in their order, a few at a time.
    pub fn manifests(
        &self,
        entries: Vec<BackupEntry>,
    ) -> impl Stream<Item = (BackupEntry, Result<Manifest, CatalogError>)> + 'a {
        let catalog = *self;
        futures::stream::iter(entries)
            .map(move |entry| async move {
                let manifest = catalog.read(&entry.source, &entry.id).await;
                (entry, manifest)
            })
            .buffered(READ_CONCURRENCY)
    }

    /// Whether the backup's manifest exists.
    pub async fn exists(&self, source: &str, backup_id: &str) -> Result<bool, StorageError> {
        Ok(self
            .store
            .head(&manifest_key(source, backup_id))
            .await?
            .is_some())
    }

    /// Writes `manifest`, the commit point of its backup, unless one is already
    /// there (an earlier delivery of the same job); `false` when it was.
    /// With a sealer, the manifest is written encrypted ([`Manifest::seal`]).
    pub async fn commit(&self, manifest: &Manifest) -> Result<bool, StorageError> {
        let bytes = match self.sealer {
            Some(sealer) => manifest.seal(sealer),
            None => manifest.to_json(),
        };
        self.store
            .put_if_absent(
                &manifest_key(&manifest.source, &manifest.backup_id),
                bytes.into(),
            )
            .await
    }

    /// Deletes a backup's manifest. Only the manifest: its objects go with garbage
    /// collection, so a crash here leaves unreferenced objects, never a manifest
    /// without its objects.
    pub async fn delete(&self, source: &str, backup_id: &str) -> Result<(), StorageError> {
        self.store.delete(&manifest_key(source, backup_id)).await
    }

    /// Sets (`keep = true`) or removes a backup's keep mark.
    pub async fn set_keep_mark(
        &self,
        source: &str,
        backup_id: &str,
        keep: bool,
    ) -> Result<(), CatalogError> {
        let mark = keep_mark_key(source, backup_id);
        if !keep {
            self.store.delete(&mark).await?;
            return Ok(());
        }
        if !self.exists(source, backup_id).await? {
            return Err(CatalogError::NoSuchBackup {
                source_name: source.to_string(),
                backup_id: backup_id.to_string(),
            });
        }
        let note = serde_json::json!({ "kept_at": Utc::now().to_rfc3339() });
        self.store
            .put_if_absent(&mark, serde_json::to_vec(&note).unwrap_or_default().into())
            .await?;
        Ok(())
    }

    /// The key of every manifest of every source, page by page (for garbage
    /// collection: objects are shared across sources).
    pub fn manifest_keys(&self) -> impl Stream<Item = Result<Vec<String>, StorageError>> + 'a {
        // Every `.json` under `backups/`, also one at an odd depth that no listing
        // shows: collection must see whatever might reference an object.
        self.store.list(BACKUPS_PREFIX).map_ok(|page| {
            page.into_iter()
                .map(|m| m.key)
                .filter(|k| k.ends_with(".json"))
                .collect()
        })
    }

    /// Every stored data object, page by page.
    pub fn objects(&self) -> ListPages<'a> {
        self.store.list(OBJECTS_PREFIX)
    }

    /// Every point-in-time record of `source` (segments and gaps), in time order,
    /// from the listing alone. What is held is the records' spans (about 50 bytes
    /// each), bounded by what retention keeps.
    pub async fn pitr_records(&self, source: &str) -> Result<Vec<RecordKey>, StorageError> {
        let prefix = pitr_prefix(source);
        let mut records = Vec::new();
        let mut pages = self.store.list(&prefix);
        while let Some(page) = pages.try_next().await? {
            records.extend(
                page.iter()
                    .filter_map(|meta| parse_pitr_key(&meta.key))
                    .filter(|r| r.source == source),
            );
        }
        // Not every store lists in key order (a local directory does not).
        records.sort_by_key(|r| (r.start, r.end, r.kind));
        Ok(records)
    }

    /// The segment record at `key`, `None` when it is not (or no longer) there.
    pub async fn read_segment(&self, key: &str) -> Result<Option<SegmentRecord>, CatalogError> {
        self.read_record(key).await
    }

    /// The gap record at `key`, `None` when it is not (or no longer) there.
    pub async fn read_gap(&self, key: &str) -> Result<Option<GapRecord>, CatalogError> {
        self.read_record(key).await
    }

    async fn read_record<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<T>, CatalogError> {
        let bytes = match get_bytes(self.store, key).await {
            Ok(b) => b,
            Err(StorageError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| CatalogError::Unreadable {
                key: key.to_string(),
                why: e.to_string(),
            })
    }

    /// Writes a segment record, the commit point of its segment (its object is
    /// stored before), unless one is already there; `false` when it was.
    pub async fn commit_segment(&self, record: &SegmentRecord) -> Result<bool, StorageError> {
        let key = segment_key(&record.source, record.start, record.end);
        let json = serde_json::to_vec_pretty(record).expect("a segment record serialises");
        self.store.put_if_absent(&key, json.into()).await
    }

    /// Writes a gap record unless one is already there; `false` when it was.
    pub async fn record_gap(&self, gap: &GapRecord) -> Result<bool, StorageError> {
        let key = gap_key(&gap.source, gap.start, gap.end);
        let json = serde_json::to_vec_pretty(gap).expect("a gap record serialises");
        self.store.put_if_absent(&key, json.into()).await
    }

    /// Deletes the point-in-time records of `source` that end at or before `before`
    /// (segments and gaps no kept base backup can use), never the newest record
    /// (capture resumes after it). Records only, oldest first: their objects go with
    /// garbage collection afterwards, as a deleted backup's do. Returns how many
    /// were deleted.
    pub async fn expire_pitr_records(
        &self,
        source: &str,
        before: ClusterTime,
    ) -> Result<u64, StorageError> {
        let records = self.pitr_records(source).await?;
        let newest = records.iter().map(|r| r.end).max();
        let mut deleted = 0;
        for record in records
            .iter()
            .filter(|r| r.end <= before && Some(r.end) != newest)
        {
            self.store.delete(&record.key()).await?;
            deleted += 1;
        }
        Ok(deleted)
    }

    /// The newest committed segment of `source`: where capture resumes.
    pub async fn last_segment(&self, source: &str) -> Result<Option<SegmentRecord>, CatalogError> {
        let records = self.pitr_records(source).await?;
        for record in records.iter().rev() {
            if record.kind == RecordKind::Segment
                && let Some(segment) = self.read_segment(&record.key()).await?
            {
                return Ok(Some(segment));
            }
        }
        Ok(None)
    }

    /// The restorable windows and the gaps of `source`, every record read (a few
    /// at a time) and checked link by link. An unreadable record is an error
    /// naming it: a window cannot be vouched for without it.
    pub async fn timeline(&self, source: &str) -> Result<Timeline, CatalogError> {
        let records = self.pitr_records(source).await?;
        let catalog = *self;
        let mut read = futures::stream::iter(records)
            .map(move |record| async move {
                let key = record.key();
                match record.kind {
                    RecordKind::Segment => catalog
                        .read_segment(&key)
                        .await
                        .map(|s| s.map(|s| TimelineRecord::Segment((&s).into()))),
                    RecordKind::Gap => catalog
                        .read_gap(&key)
                        .await
                        .map(|g| g.map(TimelineRecord::Gap)),
                }
            })
            .buffered(READ_CONCURRENCY);
        let mut summaries = Vec::new();
        while let Some(record) = read.next().await {
            // `None`: deleted by retention since the listing.
            if let Some(record) = record? {
                summaries.push(record);
            }
        }
        Ok(Timeline::build(summaries))
    }

    /// The key of every record that references objects (manifests and segment
    /// records of every source), page by page: garbage collection must see
    /// whatever might reference an object.
    pub fn reference_keys(&self) -> impl Stream<Item = Result<Vec<String>, StorageError>> + 'a {
        self.manifest_keys()
            .chain(self.store.list(PITR_PREFIX).map_ok(|page| {
                page.into_iter()
                    .map(|m| m.key)
                    .filter(|k| k.ends_with(".json") && !k.ends_with(".gap.json"))
                    .collect()
            }))
    }

    /// The objects the record at `key` (a manifest or a segment record)
    /// references; `None` when it is gone.
    pub async fn objects_referenced_by(
        &self,
        key: &str,
    ) -> Result<Option<Vec<String>>, CatalogError> {
        if key.starts_with(PITR_PREFIX) {
            return Ok(self.read_segment(key).await?.map(|s| vec![s.object]));
        }
        Ok(self
            .read_key(key)
            .await?
            .map(|m| m.files.into_iter().map(|f| f.object).collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FsStore;
    use crate::manifest::Engine;

    fn manifest(id: &str, started_at: &str) -> Manifest {
        let at: DateTime<Utc> = started_at.parse().unwrap();
        Manifest {
            format: crate::manifest::FORMAT_VERSION,
            backup_id: id.to_string(),
            source: "orders".to_string(),
            engine: Engine::Postgres,
            job_id: id.to_string(),
            server_version: "15".to_string(),
            tool_version: "test".to_string(),
            started_at: at,
            completed_at: at,
            databases: vec![],
            files: vec![],
            bytes_total: 0,
            bytes_uploaded: 0,
            bytes_reused: 0,
            trace_id: None,
            postgres: None,
            mongodb: None,
            locked: false,
        }
    }

    #[tokio::test]
    async fn backups_requested_in_the_same_second_are_ordered_by_their_start() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::new(dir.path(), "").unwrap();
        let catalog = Catalog::new(&store);
        // The random part of the ids sorts opposite to the order they were taken.
        let first = manifest("20261202T014947Z-ffffffff", "2026-12-02T01:49:47.100Z");
        let second = manifest("20261202T014947Z-00000000", "2026-12-02T01:49:47.900Z");
        let older = manifest("20261202T014900Z-99999999", "2026-12-02T01:49:00.500Z");
        for m in [&first, &second, &older] {
            assert!(catalog.commit(m).await.unwrap());
        }
        let ids: Vec<String> = catalog
            .backups(Some("orders"))
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.id)
            .collect();
        assert_eq!(
            ids,
            [&*second.backup_id, &*first.backup_id, &*older.backup_id]
        );
        assert_eq!(
            catalog.resolve("orders", "latest").await.unwrap().backup_id,
            second.backup_id
        );
    }
}
