//! Garbage collection of content-addressed objects.
//!
//! Objects are shared between backups, so an object may go only when no manifest
//! of any source references it. The order of the steps is what makes it safe:
//!
//! 1. List the objects first, and take as candidates only those older than the
//!    grace period: an upload in flight has objects but no manifest yet, and its
//!    objects are young.
//! 2. Then read every manifest. A manifest written after step 1 is seen here, so an
//!    object a new backup reuses is found referenced.
//! 3. Re-check each unreferenced candidate just before deleting it: an uploader
//!    that stored the same content again since step 1 made it young, and it stays.
//! 4. Delete in batches.
//!
//! A crash at any point leaves only unreferenced objects, which the next run
//! collects. An unreadable manifest stops the collection: without knowing what it
//! references, deleting anything could break a backup.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use futures::{StreamExt, TryStreamExt};

use ferry_storage::layout::{BACKUPS_PREFIX, OBJECTS_PREFIX};
use ferry_storage::{Manifest, ObjectStore, StorageError, get_bytes};

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
}

/// What a collection did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcOutcome {
    /// Objects listed.
    pub objects_seen: u64,
    /// Manifests read.
    pub manifests_read: u64,
    /// Objects deleted.
    pub objects_deleted: u64,
    /// Bytes freed.
    pub bytes_freed: u64,
    /// Why nothing was collected, when the run stopped early.
    pub skipped: Option<String>,
}

/// Collects the objects no manifest references.
pub async fn collect_garbage(
    store: &dyn ObjectStore,
    options: GcOptions,
) -> Result<GcOutcome, StorageError> {
    let mut outcome = GcOutcome::default();
    let cutoff = options
        .now
        .checked_sub(options.grace)
        .unwrap_or(SystemTime::UNIX_EPOCH);

    // 1. Old objects. Keys are kept as 32-byte digests where they are the usual
    // `objects/<sha256>`, so a million candidates cost 32 MB, not a million strings.
    let mut candidates: Vec<(ObjectKey, u64)> = Vec::new();
    for meta in store.list(OBJECTS_PREFIX).await? {
        outcome.objects_seen += 1;
        if meta.modified < cutoff {
            candidates.push((ObjectKey::of(&meta.key), meta.size));
        }
    }
    if candidates.is_empty() {
        return Ok(outcome);
    }

    // 2. Every manifest of every source: objects are shared across sources.
    let manifest_keys: Vec<String> = store
        .list(BACKUPS_PREFIX)
        .await?
        .into_iter()
        .map(|m| m.key)
        .filter(|k| k.ends_with(".json"))
        .collect();
    let mut referenced: HashSet<ObjectKey> = HashSet::new();
    let mut manifests = futures::stream::iter(manifest_keys)
        .map(|key| async move {
            match get_bytes(store, &key).await {
                Ok(bytes) => Ok((key, Some(bytes))),
                // Deleted by a retention run since the listing: it references nothing.
                Err(StorageError::NotFound { .. }) => Ok((key, None)),
                Err(e) => Err(e),
            }
        })
        .buffer_unordered(READ_CONCURRENCY);
    while let Some((key, bytes)) = manifests.try_next().await? {
        let Some(bytes) = bytes else { continue };
        outcome.manifests_read += 1;
        match Manifest::from_json(&bytes) {
            Ok(m) => referenced.extend(m.files.iter().map(|f| ObjectKey::of(&f.object))),
            Err(e) => {
                let why = format!(
                    "manifest {key} is unreadable ({e}); fix or remove it so garbage collection can run"
                );
                tracing::warn!(manifest = %key, error = %e, "garbage collection skipped");
                outcome.skipped = Some(why);
                return Ok(outcome);
            }
        }
    }
    drop(manifests);

    // 3 and 4. Unreferenced candidates, re-checked, deleted in batches.
    let garbage: Vec<(ObjectKey, u64)> = candidates
        .into_iter()
        .filter(|(k, _)| !referenced.contains(k))
        .collect();
    drop(referenced);
    // Owned values in the streams: borrowed ones make the future not `Send` for
    // every lifetime, which a spawned worker needs.
    let mut garbage = garbage.into_iter().peekable();
    while garbage.peek().is_some() {
        let batch: Vec<(ObjectKey, u64)> = garbage.by_ref().take(options.batch.max(1)).collect();
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
        let keys: Vec<String> = still_old.iter().map(|(k, _)| k.clone()).collect();
        // One request per batch on S3 (DeleteObjects takes up to 1,000 keys).
        store.delete_many(&keys).await?;
        outcome.objects_deleted += still_old.len() as u64;
        outcome.bytes_freed += still_old.iter().map(|(_, s)| s).sum::<u64>();
    }
    Ok(outcome)
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
