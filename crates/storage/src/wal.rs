//! The PostgreSQL WAL archive, as the store holds it: what `ferry wal-push` writes
//! and `ferry wal-fetch`, `ferry pitr status`, `ferry verify` and restores read.
//!
//! Layout (under the store's prefix): `wal/<source>/<timeline>/<file>`, where
//! `<file>` is the name PostgreSQL gave it (a 24-hex-digit segment, a
//! `.partial` segment, a `<timeline>.history` file or a `.backup` history file)
//! and `<timeline>` its first 8 hex digits. Each object is the file compressed
//! with zstd (with the frame checksum on, so damage is found on read). An
//! object is written once, atomically, and never replaced: it is its own
//! record, so there is nothing to write last.
//!
//! A listing rebuilds the index ([`Archive`]): per timeline, the ranges of
//! segments held (memory grows with the number of holes, not of segments), and
//! every timeline's history.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::SystemTime;

use futures::TryStreamExt;
use serde::Serialize;

use crate::{ObjectStore, StorageError};

/// Where the WAL archive lives.
pub const WAL_PREFIX: &str = "wal/";

/// The default `wal_segment_size`.
pub const DEFAULT_SEGMENT_SIZE: u64 = 16 << 20;

/// A WAL position (`pg_lsn`), written `X/Y` in hex.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    /// The number of the segment holding this position.
    pub fn segment(self, segment_size: u64) -> u64 {
        self.0 / segment_size
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl FromStr for Lsn {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{s:?} is not an LSN: write it as PostgreSQL does, such as 0/3000148");
        let (hi, lo) = s.trim().split_once('/').ok_or_else(bad)?;
        let hi = u32::from_str_radix(hi, 16).map_err(|_| bad())?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| bad())?;
        Ok(Lsn(((hi as u64) << 32) | lo as u64))
    }
}

impl Serialize for Lsn {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// What a file of the archive is, by its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalFileKind {
    /// A complete segment: `000000010000000000000003`.
    Segment,
    /// The last, partial segment of a timeline a promotion left:
    /// `000000010000000000000003.partial`.
    Partial,
    /// A timeline's history: `00000002.history`.
    History,
    /// A base backup's history file: `000000010000000000000002.00000028.backup`.
    Backup,
}

/// A file name PostgreSQL archives or asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalFileName {
    /// The name, as PostgreSQL wrote it.
    pub name: String,
    /// Its timeline.
    pub timeline: u32,
    /// What it is.
    pub kind: WalFileKind,
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

impl WalFileName {
    /// Parses a name, refusing anything that is not a WAL archive file (a path,
    /// a typo): the name becomes part of an object key.
    pub fn parse(name: &str) -> Result<WalFileName, String> {
        let kind = if is_hex(name, 24) {
            WalFileKind::Segment
        } else if name.len() == 32 && is_hex(&name[..24], 24) && &name[24..] == ".partial" {
            WalFileKind::Partial
        } else if name.len() == 16 && is_hex(&name[..8], 8) && &name[8..] == ".history" {
            WalFileKind::History
        } else if name.len() == 40
            && is_hex(&name[..24], 24)
            && &name[24..25] == "."
            && is_hex(&name[25..33], 8)
            && &name[33..] == ".backup"
        {
            WalFileKind::Backup
        } else {
            return Err(format!(
                "{name:?} is not a WAL file name (a segment such as 000000010000000000000003, a .partial or .backup file, or a timeline's 00000002.history)"
            ));
        };
        let timeline = u32::from_str_radix(&name[..8], 16).map_err(|e| e.to_string())?;
        Ok(WalFileName {
            name: name.to_string(),
            timeline,
            kind,
        })
    }

    /// The segment number of a segment (or partial, or backup file) name, for
    /// segments of `segment_size` bytes.
    pub fn segment_number(&self, segment_size: u64) -> Option<u64> {
        if self.kind == WalFileKind::History {
            return None;
        }
        let log = u64::from_str_radix(&self.name[8..16], 16).ok()?;
        let seg = u64::from_str_radix(&self.name[16..24], 16).ok()?;
        Some(log * segments_per_log(segment_size) + seg)
    }
}

fn segments_per_log(segment_size: u64) -> u64 {
    0x1_0000_0000 / segment_size
}

/// The file name of segment `number` on `timeline`.
pub fn segment_name(timeline: u32, number: u64, segment_size: u64) -> String {
    let per = segments_per_log(segment_size);
    format!("{timeline:08X}{:08X}{:08X}", number / per, number % per)
}

/// The name of a timeline's history file.
pub fn history_name(timeline: u32) -> String {
    format!("{timeline:08X}.history")
}

/// The prefix of a source's archive.
pub fn source_prefix(source: &str) -> String {
    format!("{WAL_PREFIX}{source}/")
}

/// The key of an archived file.
pub fn wal_key(source: &str, file: &WalFileName) -> String {
    format!("{WAL_PREFIX}{source}/{:08X}/{}", file.timeline, file.name)
}

/// One switch in a timeline's history: the parent timeline ended at `switch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct HistoryEntry {
    /// The parent timeline.
    pub parent: u32,
    /// Where it ended and the next one in the history began.
    pub switch: Lsn,
}

/// Parses a `.history` file: one `parent<TAB>switch LSN<TAB>reason` line per
/// ancestor, oldest first (comments and blank lines skipped).
pub fn parse_history(text: &str) -> Result<Vec<HistoryEntry>, String> {
    let mut entries = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split_whitespace();
        let (Some(parent), Some(switch)) = (fields.next(), fields.next()) else {
            return Err(format!("history line {line:?} has no switch point"));
        };
        entries.push(HistoryEntry {
            parent: parent
                .parse()
                .map_err(|_| format!("history line {line:?}: bad timeline"))?,
            switch: switch.parse()?,
        });
    }
    Ok(entries)
}

/// Sorted, merged ranges `[start, end)` of segment numbers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeSet(BTreeMap<u64, u64>);

impl RangeSet {
    /// Adds segment `n`, merging with its neighbours.
    pub fn insert(&mut self, n: u64) {
        let (mut start, mut end) = (n, n + 1);
        if let Some((&s, &e)) = self.0.range(..=n).next_back() {
            if e > n {
                return;
            }
            if e == n {
                start = s;
                self.0.remove(&s);
            }
        }
        if let Some(&e) = self.0.get(&end) {
            self.0.remove(&end);
            end = e;
        }
        self.0.insert(start, end);
    }

    /// Whether `n` is held.
    pub fn contains(&self, n: u64) -> bool {
        self.0.range(..=n).next_back().is_some_and(|(_, &e)| e > n)
    }

    /// The first segment of `[from, to)` that is not held.
    pub fn first_missing(&self, from: u64, to: u64) -> Option<u64> {
        let mut n = from;
        while n < to {
            match self.0.range(..=n).next_back() {
                Some((_, &e)) if e > n => n = e,
                _ => return Some(n),
            }
        }
        None
    }

    /// The ranges, `[start, end)`.
    pub fn ranges(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.0.iter().map(|(&s, &e)| (s, e))
    }

    /// The highest segment held.
    pub fn last(&self) -> Option<u64> {
        self.0.iter().next_back().map(|(_, &e)| e - 1)
    }
}

/// One timeline's part of the archive.
#[derive(Debug, Clone, Default)]
pub struct TimelineArchive {
    /// Complete segments held.
    pub segments: RangeSet,
    /// Partial segments held (the end of a timeline a promotion left).
    pub partials: Vec<u64>,
    /// Its history (ancestors and where each ended), when its history file is
    /// archived; timeline 1 has none.
    pub history: Option<Vec<HistoryEntry>>,
    /// The oldest segment stored at or after the instant asked for (see
    /// [`Archive::list`]): where the WAL of that instant is at the latest.
    pub first_stored_after: Option<u64>,
    /// When the newest segment was stored.
    pub last_stored: Option<SystemTime>,
    /// Bytes stored (compressed).
    pub bytes: u64,
}

/// A source's WAL archive, rebuilt from one listing.
#[derive(Debug, Clone, Default)]
pub struct Archive {
    /// The source.
    pub source: String,
    /// Segment size the numbers are computed with.
    pub segment_size: u64,
    /// Per timeline.
    pub timelines: BTreeMap<u32, TimelineArchive>,
    /// Keys that are under the archive but are no WAL file (reported, never used).
    pub strays: Vec<String>,
}

impl Archive {
    /// Lists `wal/<source>/` and reads every history file. `after`, when given,
    /// records per timeline the oldest segment stored at or after it (the store's
    /// time of the object), which bounds where the WAL of that instant lies.
    pub async fn list(
        store: &dyn ObjectStore,
        source: &str,
        segment_size: u64,
        after: Option<SystemTime>,
    ) -> Result<Archive, StorageError> {
        let mut archive = Archive {
            source: source.to_string(),
            segment_size,
            ..Default::default()
        };
        let prefix = source_prefix(source);
        let mut pages = store.list(&prefix);
        let mut histories = Vec::new();
        while let Some(page) = pages.try_next().await? {
            for meta in page {
                let file = meta.key.rsplit('/').next().unwrap_or_default();
                let Ok(name) = WalFileName::parse(file) else {
                    archive.strays.push(meta.key.clone());
                    continue;
                };
                let tl = archive.timelines.entry(name.timeline).or_default();
                match name.kind {
                    WalFileKind::Segment => {
                        let n = name.segment_number(segment_size).unwrap_or_default();
                        tl.segments.insert(n);
                        tl.bytes += meta.size;
                        if tl.last_stored.is_none_or(|t| t < meta.modified) {
                            tl.last_stored = Some(meta.modified);
                        }
                        if after.is_some_and(|a| meta.modified >= a)
                            && tl.first_stored_after.is_none_or(|f| f > n)
                        {
                            tl.first_stored_after = Some(n);
                        }
                    }
                    WalFileKind::Partial => {
                        tl.partials
                            .push(name.segment_number(segment_size).unwrap_or_default());
                        tl.bytes += meta.size;
                    }
                    WalFileKind::History => histories.push((name.timeline, meta.key.clone())),
                    WalFileKind::Backup => tl.bytes += meta.size,
                }
            }
        }
        for (timeline, key) in histories {
            let bytes = read_compressed(store, &key).await?;
            let text = String::from_utf8_lossy(&bytes);
            let history = parse_history(&text).map_err(|why| StorageError::Backend {
                op: "read",
                key: key.clone(),
                message: why,
                retryable: false,
            })?;
            archive.timelines.entry(timeline).or_default().history = Some(history);
        }
        Ok(archive)
    }

    /// The newest timeline (the one `recovery_target_timeline = 'latest'` picks
    /// among those descending from `from`).
    pub fn latest_timeline_from(&self, from: u32) -> u32 {
        self.timelines
            .keys()
            .copied()
            .filter(|&tl| tl == from || self.ancestors(tl).iter().any(|h| h.parent == from))
            .max()
            .unwrap_or(from)
    }

    /// The ancestors of `timeline` and where each ended, oldest first (empty for
    /// timeline 1 or when its history is not archived).
    pub fn ancestors(&self, timeline: u32) -> Vec<HistoryEntry> {
        self.timelines
            .get(&timeline)
            .and_then(|t| t.history.clone())
            .unwrap_or_default()
    }

    /// The segments a restore replays, per timeline, to go from `start` on
    /// `from` (a base backup's start) to `target` on timeline `to`, as
    /// `(timeline, first, end)` with `end` exclusive; `None` for `end` means up
    /// to whatever the timeline holds. `Err` names why the path does not exist.
    pub fn path(
        &self,
        from: u32,
        start: Lsn,
        to: u32,
    ) -> Result<Vec<(u32, u64, Option<u64>)>, String> {
        let size = self.segment_size;
        if from == to {
            return Ok(vec![(to, start.segment(size), None)]);
        }
        let history = self.ancestors(to);
        if history.is_empty() {
            return Err(format!(
                "timeline {to} has no archived history file ({}): it cannot be reached from timeline {from}",
                history_name(to)
            ));
        }
        let Some(pos) = history.iter().position(|h| h.parent == from) else {
            return Err(format!(
                "timeline {to} does not descend from timeline {from}, the base backup's"
            ));
        };
        let mut path = Vec::new();
        let mut first = start.segment(size);
        for (i, h) in history.iter().enumerate().skip(pos) {
            if i == pos && h.switch < start {
                return Err(format!(
                    "timeline {to} left timeline {from} at {}, before the base backup started at {start}",
                    h.switch
                ));
            }
            // The segment holding the switch is read from the next timeline.
            let end = h.switch.segment(size);
            path.push((h.parent, first, Some(end)));
            first = end;
        }
        path.push((to, first, None));
        Ok(path)
    }

    /// The first segment a replay along `path` would miss before `until` (a
    /// segment number; `None`: up to the last segment held on the last
    /// timeline), as its file name.
    pub fn first_missing(
        &self,
        path: &[(u32, u64, Option<u64>)],
        until: Option<u64>,
    ) -> Option<String> {
        let size = self.segment_size;
        let empty = TimelineArchive::default();
        for &(tl, first, end) in path {
            let archive = self.timelines.get(&tl).unwrap_or(&empty);
            let end = match (end, until) {
                (Some(e), Some(u)) => e.min(u + 1),
                (Some(e), None) => e,
                (None, Some(u)) => u + 1,
                (None, None) => archive.segments.last().map_or(first + 1, |l| l + 1),
            };
            if let Some(n) = archive.segments.first_missing(first, end) {
                return Some(segment_name(tl, n, size));
            }
            if until.is_some_and(|u| u < end) {
                break;
            }
        }
        None
    }
}

/// Deletes the WAL of `source` that no restore from a base backup starting at
/// `start` on `timeline` (or from any later one) can need: segments (and partial
/// and backup files) before `start`'s segment, on `timeline` and its ancestors.
/// History files stay (they are tiny, and later timelines' restores read them);
/// other timelines are left alone. Returns how many files were deleted.
pub async fn expire(
    store: &dyn ObjectStore,
    source: &str,
    timeline: u32,
    start: Lsn,
    segment_size: u64,
) -> Result<usize, StorageError> {
    let archive = Archive::list(store, source, segment_size, None).await?;
    let mut timelines: Vec<u32> = archive
        .ancestors(timeline)
        .iter()
        .map(|h| h.parent)
        .collect();
    timelines.push(timeline);
    let before = start.segment(segment_size);
    let mut deleted = 0;
    let prefix = source_prefix(source);
    let mut pages = store.list(&prefix);
    while let Some(page) = pages.try_next().await? {
        let doomed: Vec<String> = page
            .into_iter()
            .filter(|meta| {
                let file = meta.key.rsplit('/').next().unwrap_or_default();
                WalFileName::parse(file).is_ok_and(|name| {
                    timelines.contains(&name.timeline)
                        && name
                            .segment_number(segment_size)
                            .is_some_and(|n| n < before)
                })
            })
            .map(|meta| meta.key)
            .collect();
        if !doomed.is_empty() {
            store.delete_many(&doomed).await?;
            deleted += doomed.len();
        }
    }
    Ok(deleted)
}

/// Reads a whole (small) compressed archive object, decompressed: history files.
async fn read_compressed(store: &dyn ObjectStore, key: &str) -> Result<Vec<u8>, StorageError> {
    let bytes = crate::get_bytes(store, key).await?;
    zstd_decode(&bytes).map_err(|e| StorageError::Backend {
        op: "read",
        key: key.to_string(),
        message: format!("not a zstd object: {e}"),
        retryable: false,
    })
}

/// Decodes one small zstd object in memory (history files are a few lines).
fn zstd_decode(bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    zstd::stream::decode_all(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_refuse_paths() {
        let s = WalFileName::parse("000000020000000100000003").unwrap();
        assert_eq!((s.timeline, s.kind), (2, WalFileKind::Segment));
        assert_eq!(s.segment_number(DEFAULT_SEGMENT_SIZE), Some(256 + 3));
        assert_eq!(segment_name(2, 259, DEFAULT_SEGMENT_SIZE), s.name);
        assert_eq!(
            WalFileName::parse("00000002.history").unwrap().kind,
            WalFileKind::History
        );
        assert_eq!(
            WalFileName::parse("000000010000000000000002.00000028.backup")
                .unwrap()
                .kind,
            WalFileKind::Backup
        );
        assert_eq!(
            WalFileName::parse("000000010000000000000002.partial")
                .unwrap()
                .kind,
            WalFileKind::Partial
        );
        for bad in [
            "../etc/passwd",
            "00000001",
            "pg_wal/000000010000000000000002",
            "",
        ] {
            assert!(WalFileName::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn lsns_round_trip() {
        let l: Lsn = "1/3000148".parse().unwrap();
        assert_eq!(l.0, 0x1_0300_0148);
        assert_eq!(l.to_string(), "1/3000148");
        assert_eq!(l.segment(DEFAULT_SEGMENT_SIZE), 256 + 3);
        assert!("nope".parse::<Lsn>().is_err());
    }

    #[test]
    fn ranges_merge_and_find_holes() {
        let mut r = RangeSet::default();
        for n in [5, 3, 4, 9, 7, 8] {
            r.insert(n);
        }
        assert_eq!(r.ranges().collect::<Vec<_>>(), vec![(3, 6), (7, 10)]);
        assert_eq!(r.first_missing(3, 10), Some(6));
        assert_eq!(r.first_missing(7, 10), None);
        assert!(r.contains(9) && !r.contains(6));
        r.insert(6);
        assert_eq!(r.ranges().collect::<Vec<_>>(), vec![(3, 10)]);
        assert_eq!(r.last(), Some(9));
    }

    #[test]
    fn a_path_follows_the_history_across_switches() {
        let mut archive = Archive {
            segment_size: DEFAULT_SEGMENT_SIZE,
            ..Default::default()
        };
        archive.timelines.insert(
            2,
            TimelineArchive {
                history: Some(
                    parse_history("1\t0/50000A0\tno recovery target specified\n").unwrap(),
                ),
                ..Default::default()
            },
        );
        let path = archive.path(1, "0/2000028".parse().unwrap(), 2).unwrap();
        assert_eq!(path, vec![(1, 2, Some(5)), (2, 5, None)]);
        let path = archive.path(1, "0/2000028".parse().unwrap(), 1).unwrap();
        assert_eq!(path, vec![(1, 2, None)]);
        assert!(archive.path(2, Lsn(0), 3).is_err());
    }
}
