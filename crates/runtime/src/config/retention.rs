//! The retention policy a source keeps its backups by (`sources[].retention`; the
//! retention worker's `[retention]` section, with the default policy, is its own).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A retention policy. Unset rules keep nothing by themselves; with no rule at all
/// every backup is kept. Periods (hours, days, weeks, months, years) are counted in
/// the source's time zone, and the newest backup of each period is the one kept.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RetentionPolicy {
    /// Keep the newest N backups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_last: Option<u32>,
    /// Keep the newest backup of each of the last N hours.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_hourly: Option<u32>,
    /// Keep the newest backup of each of the last N days.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_daily: Option<u32>,
    /// Keep the newest backup of each of the last N ISO weeks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_weekly: Option<u32>,
    /// Keep the newest backup of each of the last N months.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_monthly: Option<u32>,
    /// Keep the newest backup of each of the last N years.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_yearly: Option<u32>,
    /// A ceiling: backups older than this are deleted whatever the `keep_*` rules
    /// say (keep marks and `min_keep` still win). Alone, it keeps every younger backup.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_age: Option<Duration>,
    /// Never keep fewer than this many backups, whatever the rules say (default 1,
    /// so the newest backup always survives).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_keep: Option<u32>,
}

impl RetentionPolicy {
    /// Whether no rule would ever expire a backup (`min_keep` alone expires nothing).
    pub fn is_empty(&self) -> bool {
        self.keep_last.is_none()
            && self.keep_hourly.is_none()
            && self.keep_daily.is_none()
            && self.keep_weekly.is_none()
            && self.keep_monthly.is_none()
            && self.keep_yearly.is_none()
            && self.max_age.is_none()
    }

    /// Whether anything at all is set, `min_keep` included.
    pub fn is_set(&self) -> bool {
        !self.is_empty() || self.min_keep.is_some()
    }

    /// The floor `min_keep` sets: at least one backup always survives.
    pub fn min_keep(&self) -> usize {
        self.min_keep.unwrap_or(1).max(1) as usize
    }

    /// Problems with this policy as `(key suffix, value, expected)`, for validation
    /// (of a source's policy, and of the retention worker's default one).
    pub fn problems(&self) -> Vec<(&'static str, String, &'static str)> {
        let mut out = Vec::new();
        let counts = [
            ("keep_last", self.keep_last),
            ("keep_hourly", self.keep_hourly),
            ("keep_daily", self.keep_daily),
            ("keep_weekly", self.keep_weekly),
            ("keep_monthly", self.keep_monthly),
            ("keep_yearly", self.keep_yearly),
        ];
        for (key, value) in counts {
            if value == Some(0) {
                out.push((
                    key,
                    "0".to_string(),
                    "at least 1, or leave it out (a rule that keeps nothing expires nothing on its own)",
                ));
            }
        }
        if self.min_keep == Some(0) {
            out.push((
                "min_keep",
                "0".to_string(),
                "at least 1: Ferry never deletes a source's last backup",
            ));
        }
        if self.max_age.is_some_and(|d| d.is_zero()) {
            out.push((
                "max_age",
                "0s".to_string(),
                "a positive duration such as 90d",
            ));
        }
        out
    }
}
