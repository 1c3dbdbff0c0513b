//! Object keys of the self-describing layout: the bucket alone is enough to list and
//! restore every backup.

/// Where content-addressed data files live.
pub const OBJECTS_PREFIX: &str = "objects/";
/// Where manifests live.
pub const BACKUPS_PREFIX: &str = "backups/";

/// The key of the data object with this SHA-256.
pub fn object_key(sha256: &str) -> String {
    format!("{OBJECTS_PREFIX}{sha256}")
}

/// The key of a backup's manifest.
pub fn manifest_key(source: &str, backup_id: &str) -> String {
    format!("{BACKUPS_PREFIX}{source}/{backup_id}.json")
}

/// The prefix of every manifest of one source.
pub fn source_prefix(source: &str) -> String {
    format!("{BACKUPS_PREFIX}{source}/")
}

/// The backup id in a manifest key of `source`, if it is one.
pub fn backup_id_of(source: &str, key: &str) -> Option<String> {
    key.strip_prefix(&source_prefix(source))?
        .strip_suffix(".json")
        .filter(|id| !id.contains('/'))
        .map(str::to_string)
}

/// The key of a backup's keep mark: while it exists, no retention policy deletes
/// the backup (`ferry keep`).
pub fn keep_mark_key(source: &str, backup_id: &str) -> String {
    format!("{BACKUPS_PREFIX}{source}/{backup_id}.keep")
}

/// The backup id in a keep-mark key of `source`, if it is one.
pub fn kept_backup_id_of(source: &str, key: &str) -> Option<String> {
    key.strip_prefix(&source_prefix(source))?
        .strip_suffix(".keep")
        .filter(|id| !id.contains('/'))
        .map(str::to_string)
}

/// The time a backup id starts with (`20261121T020000Z-2e3f4a5b`): when its job was
/// requested. Lets retention plan from a listing alone, without reading manifests.
pub fn backup_time_of(backup_id: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    let stamp = backup_id.get(..16)?;
    chrono::NaiveDateTime::parse_from_str(stamp, "%Y%m%dT%H%M%SZ")
        .ok()
        .map(|t| t.and_utc())
}
