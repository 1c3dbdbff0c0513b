//! Garbage collection of content-addressed objects.
//!
//! Objects are shared between backups, so an object may go only when no manifest
//! of any source references it. The order of the steps is what makes it safe:
//!
//! 1. Read every manifest and every point-in-time segment record (through the
//!    catalog) into the referenced set, and note which records were read.
//! 2. Stream the object listing page by page; an object is a candidate when it is
//!    older than the grace period (an upload in flight has objects but no manifest
//!    yet, and its objects are young) and not referenced. Candidates are handed
//!    (as digests) to the deletion `max_candidates` at a time, and the listing goes
//!    on while the deletion works: steps 3 and 4 overlap the listing.
//! 3. Then list the records again and read the ones not read yet: a backup (or a
//!    segment) committed since step 1, reusing an old object, protects it. Every manifest
//!    committed before this check protects its objects, as in a collection that
//!    reads the manifests after listing every object.
//! 4. Re-check each remaining candidate just before deleting it: an uploader that
//!    stored the same content again since the listing made it young, and it stays.
//!    Delete in batches.
//!
//! A crash at any point leaves only unreferenced objects, which the next run
//! collects. An unreadable manifest stops the collection: without knowing what it
//! references, deleting anything could break a backup.
//!
//! Memory: the referenced set is held as 64-bit fingerprints of object keys (8
//! bytes per referenced object), the manifests read as fingerprints of their keys,
//! one page of the listing, and at most three hand-overs of `max_candidates`
//! candidates (about 40 bytes each); nothing grows with the number of objects in
//! the bucket. Two keys sharing a fingerprint can
//! only keep garbage (an unreferenced object taken for referenced), never delete a
//! referenced object; with a million objects the chance of even one is about 10⁻⁷.

use std::collections::HashSet;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use futures::{StreamExt, TryStreamExt};
use sha2::{Digest, Sha256};

use ferry_storage::layout::OBJECTS_PREFIX;
use ferry_storage::{Catalog, CatalogError, ObjectStore, StorageError};
use tokio::sync::mpsc;

/// Manifests read at once, and candidates re-checked at once.
const READ_CONCURRENCY: usize = 32;

/// How to collect.
#[derive(Debug, Clone, Copy)]
pub struct GcOptions {
    /// Objects younger than this are never collected.
    pub grace: Duration,
    /// The collection's "now" (the wall clock in production; tests move it).
    pub now: SystemTime,
    /// Objects deleted per batch.
    pub batch: usize,
    /// Candidates held before the manifests are checked again and the candidates
    /// deleted; bounds the collection's memory whatever the bucket holds.
    pub max_candidates: usize,
}

/// The usual bound on held candidates: 4 MB of digests, and one extra listing of
/// the manifests per 100,000 objects collected.
pub const MAX_CANDIDATES: usize = 100_000;

/// What a collection did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcOutcome {
    /// Objects listed.
    pub objects_seen: u64,
    /// Records read: manifests, and segment records of point-in-time capture.
    pub manifests_read: u64,
    /// Objects deleted.
    pub objects_deleted: u64,
    /// Bytes freed.
    pub bytes_freed: u64,
    /// Why nothing was collected, when the run stopped early.
    pub skipped: Option<String>,
}

/// The set of objects the manifests reference, and which manifests were read.
/// Shared by the listing (which only looks) and the deletion (which adds what new
/// manifests reference); the lock is never held across an await.
#[derive(Default)]
struct References {
    objects: HashSet<u64>,
    manifests: HashSet<u64>,
}

/// Why reading the manifests stopped the collection.
enum Stop {
    /// This manifest cannot be read: nothing may be deleted.
    Unreadable(String),
    /// The store failed.
    Storage(StorageError),
}

impl From<StorageError> for Stop {
    fn from(e: StorageError) -> Self {
        Stop::Storage(e)
    }
}

fn lock(refs: &Mutex<References>) -> MutexGuard<'_, References> {
    // Only inserted into: a panic elsewhere cannot leave the sets half-changed in a
    // way that matters (a missing entry keeps garbage, it never deletes).
    refs.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Reads every record not read yet (manifests and segment records), adding what it
/// references; returns how many were read.
async fn read_new(refs: &Mutex<References>, catalog: Catalog<'_>) -> Result<u64, Stop> {
    let mut read = 0;
    let mut pages = std::pin::pin!(catalog.reference_keys());
    while let Some(page) = pages.try_next().await? {
        let new: Vec<String> = {
            let refs = lock(refs);
            page.into_iter()
                .filter(|k| !refs.manifests.contains(&fingerprint(k)))
                .collect()
        };
        // Owned values in the stream: borrowed ones make the future not `Send`
        // for every lifetime, which a spawned worker needs.
        let mut manifests = futures::stream::iter(new)
            .map(|key| async move {
                let referenced = catalog.objects_referenced_by(&key).await;
                (key, referenced)
            })
            .buffer_unordered(READ_CONCURRENCY);
        while let Some((key, referenced)) = manifests.next().await {
            match referenced {
                Ok(Some(objects)) => {
                    let mut refs = lock(refs);
                    refs.objects
                        .extend(objects.iter().map(|object| fingerprint(object)));
                    refs.manifests.insert(fingerprint(&key));
                    read += 1;
                }
                // Deleted by a retention run since the listing: it references
                // nothing.
                Ok(None) => {}
                Err(CatalogError::Storage(e)) => return Err(Stop::Storage(e)),
                Err(e) => {
                    tracing::warn!(manifest = %key, error = %e, "garbage collection skipped");
                    return Err(Stop::Unreadable(format!(
                        "{e}; fix or remove it so garbage collection can run"
                    )));
                }
            }
        }
    }
    Ok(read)
}

/// Collects the objects no manifest references.
pub async fn collect_garbage(
    store: &dyn ObjectStore,
    options: GcOptions,
) -> Result<GcOutcome, StorageError> {
    let catalog = Catalog::new(store);
    let mut outcome = GcOutcome::default();
    let cutoff = options
        .now
        .checked_sub(options.grace)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let batch_size = options.batch.max(1);

    // 1. Every manifest of every source: objects are shared across sources.
    let refs = Mutex::new(References::default());
    match read_new(&refs, catalog).await {
        Ok(n) => outcome.manifests_read += n,
        Err(Stop::Storage(e)) => return Err(e),
        Err(Stop::Unreadable(why)) => {
            outcome.skipped = Some(why);
            return Ok(outcome);
        }
    }

    // 2. The listing, in its own future: old, unreferenced objects, handed over
    // `max_candidates` at a time. It goes on listing while the deletion below
    // works on the previous hand-over, so a collection takes about as long as
    // its listing; at most three hand-overs are held (one being deleted, one
    // waiting, one filling).
    let hold = options.max_candidates.max(1);
    let (handover, mut held) = mpsc::channel::<Vec<(ObjectKey, u64)>>(1);
    let listing = async {
        let mut seen = 0u64;
        let mut candidates: Vec<(ObjectKey, u64)> = Vec::new();
        let mut pages = catalog.objects();
        while let Some(page) = pages.try_next().await? {
            {
                let refs = lock(&refs);
                for meta in page {
                    seen += 1;
                    if meta.modified < cutoff && !refs.objects.contains(&fingerprint(&meta.key)) {
                        candidates.push((ObjectKey::of(&meta.key), meta.size));
                    }
                }
            }
            // `max_candidates` per hand-over, also when one page brings more: the
            // manifests are checked again before each.
            while candidates.len() >= hold {
                let full: Vec<(ObjectKey, u64)> = candidates.drain(..hold).collect();
                if handover.send(full).await.is_err() {
                    // The deletion stopped (an unreadable manifest): so does the
                    // listing.
                    return Ok(seen);
                }
            }
        }
        if !candidates.is_empty() {
            let _ = handover.send(candidates).await;
        }
        drop(handover);
        Ok::<u64, StorageError>(seen)
    };

    // 3-4. Each hand-over: manifests committed since the last check protect what
    // they reference; the rest is re-checked and deleted in batches.
    let deletion = async {
        let (mut read, mut deleted, mut freed) = (0u64, 0u64, 0u64);
        while let Some(candidates) = held.recv().await {
            match read_new(&refs, catalog).await {
                Ok(n) => read += n,
                Err(Stop::Storage(e)) => return Err(e),
                Err(Stop::Unreadable(why)) => {
                    // Nothing more may be deleted: the listing's next hand-over
                    // fails, and it stops.
                    held.close();
                    return Ok((read, deleted, freed, Some(why)));
                }
            }
            let garbage: Vec<(ObjectKey, u64)> = {
                let refs = lock(&refs);
                candidates
                    .into_iter()
                    .filter(|(k, _)| !refs.objects.contains(&k.fingerprint()))
                    .collect()
            };
            for batch in garbage.chunks(batch_size) {
                let (n, bytes) = delete_batch(store, batch.to_vec(), cutoff).await?;
                deleted += n;
                freed += bytes;
            }
        }
        Ok((read, deleted, freed, None))
    };

    let (seen, (read, deleted, freed, skipped)) = tokio::try_join!(listing, deletion)?;
    outcome.objects_seen = seen;
    outcome.manifests_read += read;
    outcome.objects_deleted = deleted;
    outcome.bytes_freed = freed;
    outcome.skipped = skipped;
    Ok(outcome)
}

/// 4. Re-checks and deletes one batch; returns the objects and bytes deleted.
async fn delete_batch(
    store: &dyn ObjectStore,
    batch: Vec<(ObjectKey, u64)>,
    cutoff: SystemTime,
) -> Result<(u64, u64), StorageError> {
    let still_old: Vec<(String, u64)> = futures::stream::iter(batch)
        .map(|(key, size)| async move {
            let key = key.to_key();
            let old = match store.head(&key).await? {
                Some(meta) => meta.modified < cutoff,
                None => false,
            };
            Ok::<_, StorageError>(old.then_some((key, size)))
        })
        .buffer_unordered(READ_CONCURRENCY)
        .try_filter_map(|x| async move { Ok(x) })
        .try_collect()
        .await?;
    if still_old.is_empty() {
        return Ok((0, 0));
    }
    let keys: Vec<String> = still_old.iter().map(|(k, _)| k.clone()).collect();
    // One request per batch on S3 (DeleteObjects takes up to 1,000 keys).
    store.delete_many(&keys).await?;
    Ok((
        still_old.len() as u64,
        still_old.iter().map(|(_, s)| s).sum::<u64>(),
    ))
}

/// The 64-bit fingerprint of an object or manifest key: the first 8 bytes of the
/// digest an `objects/<sha256>` key names, or of the SHA-256 of any other key.
fn fingerprint(key: &str) -> u64 {
    let digest: [u8; 32] = match key.strip_prefix(OBJECTS_PREFIX).and_then(parse_sha256) {
        Some(d) => d,
        None => Sha256::digest(key.as_bytes()).into(),
    };
    u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
}

/// An object key, compact when it is `objects/<sha256>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum ObjectKey {
    Digest([u8; 32]),
    Other(String),
}

impl ObjectKey {
    fn of(key: &str) -> ObjectKey {
        key.strip_prefix(OBJECTS_PREFIX)
            .and_then(parse_sha256)
            .map(ObjectKey::Digest)
            .unwrap_or_else(|| ObjectKey::Other(key.to_string()))
    }

    fn fingerprint(&self) -> u64 {
        match self {
            ObjectKey::Digest(d) => u64::from_be_bytes(d[..8].try_into().expect("8 bytes")),
            ObjectKey::Other(k) => fingerprint(k),
        }
    }

    fn to_key(&self) -> String {
        match self {
            ObjectKey::Digest(d) => {
                let mut s = String::with_capacity(OBJECTS_PREFIX.len() + 64);
                s.push_str(OBJECTS_PREFIX);
                for b in d {
                    s.push_str(&format!("{b:02x}"));
                }
                s
            }
            ObjectKey::Other(k) => k.clone(),
        }
    }
}

/// Lowercase hex only: an uppercase name is another object, kept as a string.
fn parse_sha256(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 || !hex.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_follow_the_digest_and_tell_keys_apart() {
        let sha = "ab".repeat(32);
        assert_eq!(
            fingerprint(&format!("objects/{sha}")),
            0xabab_abab_abab_abab
        );
        let keys = [
            "objects/AB",
            "objects/xyz",
            "backups/s/1.json",
            "backups/s/2.json",
        ];
        let prints: HashSet<u64> = keys.iter().map(|k| fingerprint(k)).collect();
        assert_eq!(prints.len(), keys.len());
        assert_eq!(fingerprint("objects/xyz"), fingerprint("objects/xyz"));
        for key in [format!("objects/{sha}"), "objects/AB".to_string()] {
            assert_eq!(ObjectKey::of(&key).fingerprint(), fingerprint(&key));
        }
    }

    #[test]
    fn object_keys_round_trip() {
        let sha = "ab".repeat(32);
        let key = format!("objects/{sha}");
        assert!(matches!(ObjectKey::of(&key), ObjectKey::Digest(_)));
        assert_eq!(ObjectKey::of(&key).to_key(), key);
        for odd in ["objects/AB", "objects/xyz", "elsewhere/thing"] {
            assert_eq!(ObjectKey::of(odd), ObjectKey::Other(odd.into()));
            assert_eq!(ObjectKey::of(odd).to_key(), odd);
        }
    }
}
