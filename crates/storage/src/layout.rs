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

/// The key of a backup's keep mark: while it exists, no retention policy deletes
/// the backup (`ferry keep`).
pub fn keep_mark_key(source: &str, backup_id: &str) -> String {
    format!("{BACKUPS_PREFIX}{source}/{backup_id}.keep")
}

/// What a key under `backups/` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// `backups/<source>/<id>.json`.
    Manifest,
    /// `backups/<source>/<id>.keep`.
    KeepMark,
}

/// The source, backup id and kind of a key under `backups/`, if it is a manifest
/// or a keep mark.
pub fn parse_backups_key(key: &str) -> Option<(String, String, KeyKind)> {
    let rest = key.strip_prefix(BACKUPS_PREFIX)?;
    let (source, file) = rest.split_once('/')?;
    if source.is_empty() || file.contains('/') {
        return None;
    }
    let (id, kind) = if let Some(id) = file.strip_suffix(".json") {
        (id, KeyKind::Manifest)
    } else if let Some(id) = file.strip_suffix(".keep") {
        (id, KeyKind::KeepMark)
    } else {
        return None;
    };
    (!id.is_empty()).then(|| (source.to_string(), id.to_string(), kind))
}

/// The time a backup id starts with (`20261121T020000Z-2e3f4a5b`): when its job was
/// requested. Lets retention plan from a listing alone, without reading manifests.
pub fn backup_time_of(backup_id: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    let stamp = backup_id.get(..16)?;
    chrono::NaiveDateTime::parse_from_str(stamp, "%Y%m%dT%H%M%SZ")
        .ok()
        .map(|t| t.and_utc())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backups_keys_parse() {
        assert_eq!(
            parse_backups_key("backups/orders/20261121T020000Z-2e3f4a5b.json"),
            Some((
                "orders".into(),
                "20261121T020000Z-2e3f4a5b".into(),
                KeyKind::Manifest
            ))
        );
        assert_eq!(
            parse_backups_key("backups/orders/x.keep"),
            Some(("orders".into(), "x".into(), KeyKind::KeepMark))
        );
        for odd in [
            "backups/orders/a/b.json",
            "backups/orders/.json",
            "backups//x.json",
            "backups/orders/x.txt",
            "objects/abc",
        ] {
            assert_eq!(parse_backups_key(odd), None, "{odd}");
        }
        assert_eq!(
            backup_time_of("20261121T020000Z-2e3f4a5b").map(|t| t.to_rfc3339()),
            Some("2026-11-21T02:00:00+00:00".into())
        );
        assert_eq!(backup_time_of("manual"), None);
    }
}
