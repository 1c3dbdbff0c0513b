//! Point-in-time records: the segments of captured changes between base backups,
//! and the gaps where changes were lost, as the store holds them.
//!
//! Layout (under the store's prefix), named so that a listing alone rebuilds the
//! index:
//! - `pitr/<source>/<start>-<end>.json`: a segment record, written last, after its
//!   object (`objects/<sha256>`, the compressed changes in oplog-entry form). The
//!   segment holds every change with a cluster time in `(start, end]`.
//! - `pitr/<source>/<start>-<end>.gap.json`: a gap record: the changes in
//!   `(start, end]` were not captured, and why.
//!
//! `<start>` and `<end>` are cluster times written `SECONDS.INCREMENT` with ten
//! digits each, so the lexical order of keys is the order of time.
//!
//! Each segment links to the one before it (its end and its object's SHA-256), so
//! a chain is checked link by link; the first segment after a gap (or the first
//! ever) links to nothing. [`Timeline::build`] turns the records into restorable
//! windows and gaps; a broken link that no gap record explains is reported as a
//! gap too: never silent.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Where point-in-time records live.
pub const PITR_PREFIX: &str = "pitr/";

/// The format version of segment and gap records.
pub const RECORD_FORMAT: u32 = 1;

/// A MongoDB cluster time (a BSON timestamp): seconds since the epoch and an
/// increment that orders operations within a second.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ClusterTime {
    /// Seconds since the Unix epoch.
    pub t: u32,
    /// Increment within the second.
    pub i: u32,
}

impl ClusterTime {
    /// The cluster time `t.i`.
    pub fn new(t: u32, i: u32) -> Self {
        ClusterTime { t, i }
    }

    /// The last cluster time within the wall-clock instant `at` (the whole second
    /// it falls in: cluster times have no finer resolution), so that `--at T`
    /// includes every operation of the second `T` names.
    pub fn end_of_second(at: DateTime<Utc>) -> Option<Self> {
        u32::try_from(at.timestamp())
            .ok()
            .map(|t| ClusterTime::new(t, u32::MAX))
    }

    /// The wall-clock second of this cluster time.
    pub fn to_datetime(self) -> DateTime<Utc> {
        DateTime::from_timestamp(i64::from(self.t), 0).unwrap_or_default()
    }

    /// The key form, `SECONDS.INCREMENT` with ten digits each.
    pub fn key_form(self) -> String {
        format!("{:010}.{:010}", self.t, self.i)
    }

    fn parse_key_form(s: &str) -> Option<Self> {
        let (t, i) = s.split_once('.')?;
        if t.len() != 10 || i.len() != 10 {
            return None;
        }
        Some(ClusterTime::new(t.parse().ok()?, i.parse().ok()?))
    }
}

impl fmt::Display for ClusterTime {
    /// `SECONDS:INCREMENT`, the form `--at-op` takes and mongo shells print.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.t, self.i)
    }
}

impl FromStr for ClusterTime {
    type Err = String;

    /// Parses `SECONDS:INCREMENT` (`1764585000:3`).
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!("{s:?} is not a cluster time: expected SECONDS:INCREMENT, as in 1764585000:3")
        };
        let (t, i) = s.trim().split_once(':').ok_or_else(bad)?;
        Ok(ClusterTime::new(
            t.parse().map_err(|_| bad())?,
            i.parse().map_err(|_| bad())?,
        ))
    }
}

/// The previous segment a segment continues: its end and its object's SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    /// The previous segment's end (this segment's start).
    pub end: ClusterTime,
    /// The previous segment's object SHA-256.
    pub sha256: String,
}

/// `pitr/<source>/<start>-<end>.json`: one committed segment of captured changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentRecord {
    /// [`RECORD_FORMAT`].
    pub format: u32,
    /// The source.
    pub source: String,
    /// Changes after this cluster time...
    pub start: ClusterTime,
    /// ...up to and including this one.
    pub end: ClusterTime,
    /// Operations in the segment.
    pub operations: u64,
    /// The object holding them: `objects/<sha256>`.
    pub object: String,
    /// SHA-256 of the stored object.
    pub sha256: String,
    /// Size of the stored object, in bytes.
    pub size: u64,
    /// Size of the changes before compression, in bytes.
    pub raw_size: u64,
    /// The object's compression.
    pub compression: crate::Compression,
    /// The segment this one continues; `None` for the first of a chain.
    pub prev: Option<Link>,
    /// The change stream's resume token at `end`, where the server gives one
    /// (the hex of its BSON document), so capture resumes exactly there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_token: Option<String>,
    /// When the record was written.
    pub committed_at: DateTime<Utc>,
    /// Which capture replica wrote it.
    pub captured_by: String,
}

/// `pitr/<source>/<start>-<end>.gap.json`: changes that were not captured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GapRecord {
    /// [`RECORD_FORMAT`].
    pub format: u32,
    /// The source.
    pub source: String,
    /// The last captured cluster time (the end of the chain before the gap).
    pub start: ClusterTime,
    /// Where capture resumed: changes after `start` up to this are lost.
    pub end: ClusterTime,
    /// Why, in words (`the oplog no longer holds 1764585000:3: it starts at ...`).
    pub cause: String,
    /// When capture found it.
    pub detected_at: DateTime<Utc>,
}

/// What a key under `pitr/` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RecordKind {
    /// A segment record.
    Segment,
    /// A gap record.
    Gap,
}

/// The prefix of one source's point-in-time records.
pub fn pitr_prefix(source: &str) -> String {
    format!("{PITR_PREFIX}{source}/")
}

/// The key of a segment record.
pub fn segment_key(source: &str, start: ClusterTime, end: ClusterTime) -> String {
    format!(
        "{PITR_PREFIX}{source}/{}-{}.json",
        start.key_form(),
        end.key_form()
    )
}

/// The key of a gap record.
pub fn gap_key(source: &str, start: ClusterTime, end: ClusterTime) -> String {
    format!(
        "{PITR_PREFIX}{source}/{}-{}.gap.json",
        start.key_form(),
        end.key_form()
    )
}

/// One record as a listing shows it: source, kind and span, no record read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordKey {
    /// The source.
    pub source: String,
    /// Segment or gap.
    pub kind: RecordKind,
    /// Start of its span (exclusive).
    pub start: ClusterTime,
    /// End of its span (inclusive).
    pub end: ClusterTime,
}

impl RecordKey {
    /// The key this names.
    pub fn key(&self) -> String {
        match self.kind {
            RecordKind::Segment => segment_key(&self.source, self.start, self.end),
            RecordKind::Gap => gap_key(&self.source, self.start, self.end),
        }
    }
}

/// The record a key under `pitr/` names, if it names one.
pub fn parse_pitr_key(key: &str) -> Option<RecordKey> {
    let rest = key.strip_prefix(PITR_PREFIX)?;
    let (source, file) = rest.split_once('/')?;
    if source.is_empty() || file.contains('/') {
        return None;
    }
    let (span, kind) = if let Some(span) = file.strip_suffix(".gap.json") {
        (span, RecordKind::Gap)
    } else if let Some(span) = file.strip_suffix(".json") {
        (span, RecordKind::Segment)
    } else {
        return None;
    };
    let (start, end) = span.split_once('-')?;
    let (start, end) = (
        ClusterTime::parse_key_form(start)?,
        ClusterTime::parse_key_form(end)?,
    );
    (start < end).then(|| RecordKey {
        source: source.to_string(),
        kind,
        start,
        end,
    })
}

/// A span of cluster times to which the source can be restored from captured
/// changes: every change in `(from, to]` is in a chain of linked segments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Window {
    /// Changes after this...
    pub from: ClusterTime,
    /// ...up to and including this are captured.
    pub to: ClusterTime,
    /// Segments in the window.
    pub segments: u64,
    /// Operations in the window.
    pub operations: u64,
}

/// Changes that are not captured, with the reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Gap {
    /// After this...
    pub from: ClusterTime,
    /// ...up to and including this, changes are missing.
    pub to: ClusterTime,
    /// Why: the gap record's cause, or what is wrong with the chain.
    pub cause: String,
    /// Whether a gap record says so (`false`: the chain itself is broken, which
    /// capture never leaves behind on purpose).
    pub recorded: bool,
}

/// A source's captured history: restorable windows and gaps, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Timeline {
    /// The windows, oldest first.
    pub windows: Vec<Window>,
    /// The gaps, oldest first.
    pub gaps: Vec<Gap>,
}

/// What the timeline needs of a segment record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentSummary {
    /// Start (exclusive).
    pub start: ClusterTime,
    /// End (inclusive).
    pub end: ClusterTime,
    /// Operations.
    pub operations: u64,
    /// Object SHA-256.
    pub sha256: String,
    /// The link to the previous segment.
    pub prev: Option<Link>,
}

impl From<&SegmentRecord> for SegmentSummary {
    fn from(r: &SegmentRecord) -> Self {
        SegmentSummary {
            start: r.start,
            end: r.end,
            operations: r.operations,
            sha256: r.sha256.clone(),
            prev: r.prev.clone(),
        }
    }
}

/// One record in time order, as [`Timeline::build`] takes them.
#[derive(Debug, Clone)]
pub enum TimelineRecord {
    /// A segment.
    Segment(SegmentSummary),
    /// A gap record.
    Gap(GapRecord),
}

impl TimelineRecord {
    fn span(&self) -> (ClusterTime, ClusterTime) {
        match self {
            TimelineRecord::Segment(s) => (s.start, s.end),
            TimelineRecord::Gap(g) => (g.start, g.end),
        }
    }
}

impl Timeline {
    /// The windows and gaps of `records` (in any order). A segment continues the
    /// window before it only when it starts where that one ends and links to its
    /// last segment's object; anything else ends the window, and the break is a
    /// gap: the recorded one when a gap record covers it, else one naming what is
    /// wrong.
    pub fn build(mut records: Vec<TimelineRecord>) -> Timeline {
        records.sort_by(|a, b| {
            let (sa, ea) = a.span();
            let (sb, eb) = b.span();
            sa.cmp(&sb).then(ea.cmp(&eb)).then_with(|| {
                // A gap before a segment with the same span, so the gap explains
                // the break the segment would otherwise be.
                match (a, b) {
                    (TimelineRecord::Gap(_), TimelineRecord::Segment(_)) => Ordering::Less,
                    (TimelineRecord::Segment(_), TimelineRecord::Gap(_)) => Ordering::Greater,
                    _ => Ordering::Equal,
                }
            })
        });
        let mut timeline = Timeline::default();
        // The open window and its last segment's object.
        let mut open: Option<(Window, String)> = None;
        // The end of the last gap record seen, so the segment after it may start a
        // new chain there.
        let mut gap_end: Option<ClusterTime> = None;
        for record in records {
            match record {
                TimelineRecord::Gap(g) => {
                    if let Some((window, _)) = open.take() {
                        timeline.windows.push(window);
                    }
                    gap_end = Some(g.end);
                    timeline.gaps.push(Gap {
                        from: g.start,
                        to: g.end,
                        cause: g.cause,
                        recorded: true,
                    });
                }
                TimelineRecord::Segment(s) => {
                    if let Some((window, last_sha)) = open.as_mut() {
                        let linked = s.start == window.to
                            && s.prev
                                .as_ref()
                                .is_some_and(|l| l.end == window.to && l.sha256 == *last_sha);
                        if linked {
                            window.to = s.end;
                            window.segments += 1;
                            window.operations += s.operations;
                            *last_sha = s.sha256;
                            continue;
                        }
                        let (window, last_sha) = open.take().expect("open");
                        let cause = if s.start < window.to {
                            format!(
                                "segment {}-{} overlaps the chain, which reaches {}",
                                s.start, s.end, window.to
                            )
                        } else if s.start > window.to {
                            format!(
                                "no segment holds the changes after {} up to {}",
                                window.to, s.start
                            )
                        } else {
                            format!(
                                "segment {}-{} does not link to the segment before it (object {})",
                                s.start, s.end, last_sha
                            )
                        };
                        timeline.gaps.push(Gap {
                            from: window.to.min(s.start),
                            to: s.start.max(window.to),
                            cause,
                            recorded: false,
                        });
                        timeline.windows.push(window);
                    } else if let Some(end) = gap_end
                        && s.start > end
                    {
                        timeline.gaps.push(Gap {
                            from: end,
                            to: s.start,
                            cause: format!(
                                "no segment holds the changes after {end} up to {}",
                                s.start
                            ),
                            recorded: false,
                        });
                    }
                    gap_end = None;
                    open = Some((
                        Window {
                            from: s.start,
                            to: s.end,
                            segments: 1,
                            operations: s.operations,
                        },
                        s.sha256,
                    ));
                }
            }
        }
        if let Some((window, _)) = open {
            timeline.windows.push(window);
        }
        timeline
    }

    /// The window holding every change after `from` up to `target`: the one whose
    /// own `from` is at or before `from` and whose `to` is at or after `target`.
    pub fn window_covering(&self, from: ClusterTime, target: ClusterTime) -> Option<&Window> {
        self.windows
            .iter()
            .find(|w| w.from <= from && target <= w.to)
    }

    /// The first gap between `from` and `target`, if any.
    pub fn gap_between(&self, from: ClusterTime, target: ClusterTime) -> Option<&Gap> {
        self.gaps.iter().find(|g| g.from < target && from < g.to)
    }

    /// The newest captured cluster time.
    pub fn newest(&self) -> Option<ClusterTime> {
        self.windows.iter().map(|w| w.to).max()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ct(t: u32) -> ClusterTime {
        ClusterTime::new(t, 1)
    }

    fn seg(start: u32, end: u32, prev: Option<(u32, &str)>, sha: &str) -> TimelineRecord {
        TimelineRecord::Segment(SegmentSummary {
            start: ct(start),
            end: ct(end),
            operations: 10,
            sha256: sha.into(),
            prev: prev.map(|(e, s)| Link {
                end: ct(e),
                sha256: s.into(),
            }),
        })
    }

    fn gap(start: u32, end: u32) -> TimelineRecord {
        TimelineRecord::Gap(GapRecord {
            format: RECORD_FORMAT,
            source: "s".into(),
            start: ct(start),
            end: ct(end),
            cause: "oplog rolled over".into(),
            detected_at: Utc::now(),
        })
    }

    #[test]
    fn keys_round_trip_and_sort_by_time() {
        let (a, b) = (ClusterTime::new(9, 4_000_000_000), ClusterTime::new(10, 0));
        let key = segment_key("orders", a, b);
        assert_eq!(
            key,
            "pitr/orders/0000000009.4000000000-0000000010.0000000000.json"
        );
        let parsed = parse_pitr_key(&key).unwrap();
        assert_eq!(
            (parsed.kind, parsed.start, parsed.end),
            (RecordKind::Segment, a, b)
        );
        assert_eq!(parsed.key(), key);
        let gap = gap_key("orders", a, b);
        assert_eq!(parse_pitr_key(&gap).unwrap().kind, RecordKind::Gap);
        assert!(segment_key("o", ct(9), ct(10)) < segment_key("o", ct(10), ct(11)));
        for odd in [
            "pitr/orders/x.json",
            "pitr/orders/0000000010.0000000000-0000000009.0000000000.json",
            "pitr/orders/sub/0000000009.0000000000-0000000010.0000000000.json",
            "backups/orders/1.json",
        ] {
            assert_eq!(parse_pitr_key(odd), None, "{odd}");
        }
    }

    #[test]
    fn cluster_times_parse_as_seconds_colon_increment() {
        assert_eq!(
            "1764585000:3".parse(),
            Ok(ClusterTime::new(1_764_585_000, 3))
        );
        let err = "1764585000".parse::<ClusterTime>().unwrap_err();
        assert!(err.contains("SECONDS:INCREMENT"), "{err}");
        assert!("a:b".parse::<ClusterTime>().is_err());
        assert_eq!(ClusterTime::new(5, 7).to_string(), "5:7");
    }

    #[test]
    fn linked_segments_make_one_window() {
        let t = Timeline::build(vec![
            seg(20, 30, Some((20, "a")), "b"),
            seg(10, 20, None, "a"),
            seg(30, 40, Some((30, "b")), "c"),
        ]);
        assert_eq!(
            t.windows,
            [Window {
                from: ct(10),
                to: ct(40),
                segments: 3,
                operations: 30
            }]
        );
        assert!(t.gaps.is_empty());
        assert!(t.window_covering(ct(15), ct(40)).is_some());
        assert!(t.window_covering(ct(5), ct(20)).is_none());
        assert_eq!(t.newest(), Some(ct(40)));
    }

    #[test]
    fn a_recorded_gap_splits_the_windows() {
        let t = Timeline::build(vec![
            seg(10, 20, None, "a"),
            gap(20, 50),
            seg(50, 60, None, "d"),
        ]);
        assert_eq!(t.windows.len(), 2);
        assert_eq!(
            t.gaps,
            [Gap {
                from: ct(20),
                to: ct(50),
                cause: "oplog rolled over".into(),
                recorded: true
            }]
        );
        assert_eq!(t.gap_between(ct(15), ct(55)).unwrap().to, ct(50));
        assert!(t.gap_between(ct(50), ct(60)).is_none());
    }

    #[test]
    fn broken_chains_are_gaps_never_silent() {
        // A hole, a wrong hash, an overlap.
        let hole = Timeline::build(vec![
            seg(10, 20, None, "a"),
            seg(30, 40, Some((30, "x")), "b"),
        ]);
        assert_eq!(hole.windows.len(), 2);
        assert!(!hole.gaps[0].recorded);
        assert!(
            hole.gaps[0].cause.contains("no segment holds"),
            "{:?}",
            hole.gaps
        );
        assert_eq!((hole.gaps[0].from, hole.gaps[0].to), (ct(20), ct(30)));

        let bad_hash = Timeline::build(vec![
            seg(10, 20, None, "a"),
            seg(20, 30, Some((20, "z")), "b"),
        ]);
        assert_eq!(bad_hash.windows.len(), 2);
        assert!(
            bad_hash.gaps[0].cause.contains("does not link"),
            "{:?}",
            bad_hash.gaps
        );

        let overlap = Timeline::build(vec![
            seg(10, 30, None, "a"),
            seg(20, 40, Some((20, "a")), "b"),
        ]);
        assert!(
            overlap.gaps[0].cause.contains("overlaps"),
            "{:?}",
            overlap.gaps
        );

        let after_gap = Timeline::build(vec![gap(10, 20), seg(25, 30, None, "a")]);
        assert_eq!(after_gap.gaps.len(), 2);
        assert!(!after_gap.gaps[1].recorded);
    }
}
