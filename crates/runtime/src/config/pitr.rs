//! `pitr = { … }` on a MongoDB source: continuous change capture between base
//! backups, for restores to any instant. Read by the capture worker (which
//! captures), the scheduler (which asks for a base backup after a gap) and the
//! CLI (which restores), so it lives with the source, in the shared configuration.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ByteSize;

/// The longest `segment_span` accepted: a segment is the unit of loss when a
/// capture replica dies before committing it, so longer would lose more.
const MAX_SPAN: Duration = Duration::from_secs(3600);

/// A source's point-in-time capture settings.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct PitrConfig {
    /// Whether changes are captured.
    pub enabled: bool,
    /// A segment is committed at least this often (when changes came in): the
    /// recovery point, how much a lost server can cost.
    #[serde(with = "humantime_serde")]
    pub segment_span: Duration,
    /// …or when its changes reach this size before compression, whichever comes
    /// first.
    pub segment_max: ByteSize,
}

impl Default for PitrConfig {
    fn default() -> Self {
        PitrConfig {
            enabled: false,
            segment_span: Duration::from_secs(600),
            segment_max: ByteSize(64 << 20),
        }
    }
}

impl PitrConfig {
    /// Untouched defaults (capture off): left out when a source is written back
    /// (`ferry sources list`), so older readers see the same record.
    pub fn is_off_by_default(&self) -> bool {
        *self == PitrConfig::default()
    }

    /// `(field, value, expected)` for each problem.
    pub(super) fn problems(&self) -> Vec<(&'static str, String, &'static str)> {
        let mut problems = Vec::new();
        if self.segment_span < Duration::from_secs(1) || self.segment_span > MAX_SPAN {
            problems.push((
                "segment_span",
                humantime::format_duration(self.segment_span).to_string(),
                "a duration from 1s to 1h, such as 10m",
            ));
        }
        if self.segment_max.0 < (1 << 20) || self.segment_max.0 > (1 << 30) {
            problems.push((
                "segment_max",
                self.segment_max.0.to_string(),
                "a size from 1MiB to 1GiB, such as 64MiB",
            ));
        }
        problems
    }
}
