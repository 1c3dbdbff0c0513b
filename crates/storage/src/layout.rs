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
