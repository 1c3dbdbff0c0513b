//! The retention planner: a pure function from backups and a policy to what to keep
//! and what to delete, with the rule that decided each. The worker and the CLI's dry
//! run use the same function, so what an operator previews is what happens.

use std::collections::HashSet;

use chrono::{DateTime, Datelike, Utc};
use chrono_tz::Tz;
use ferry_runtime::config::RetentionPolicy;

/// A backup as the planner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupInfo {
    /// The backup id.
    pub id: String,
    /// When it completed.
    pub time: DateTime<Utc>,
}

/// What happens to one backup and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The backup id.
    pub id: String,
    /// The rule: `keep_last`, `keep_daily`, …, `min_keep`, `no_policy`, or `expired`.
    pub rule: &'static str,
}

/// The outcome of planning, newest first in each list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Backups to keep.
    pub keep: Vec<Decision>,
    /// Backups to delete.
    pub delete: Vec<Decision>,
}

type PeriodKey = (i32, u32);

/// A period rule: its name, how many periods it keeps, and the period of a time.
type PeriodRule = (&'static str, Option<u32>, fn(DateTime<Tz>) -> PeriodKey);

/// Plans retention for one source's backups; periods are computed in `tz`.
pub fn plan(backups: &[BackupInfo], policy: &RetentionPolicy, tz: Tz) -> Plan {
    let mut sorted: Vec<&BackupInfo> = backups.iter().collect();
    sorted.sort_by(|a, b| b.time.cmp(&a.time).then_with(|| b.id.cmp(&a.id)));

    if policy.is_empty() {
        return Plan {
            keep: sorted
                .iter()
                .map(|b| Decision {
                    id: b.id.clone(),
                    rule: "no_policy",
                })
                .collect(),
            delete: Vec::new(),
        };
    }

    let mut rule_of: Vec<Option<&'static str>> = vec![None; sorted.len()];
    if let Some(n) = policy.keep_last {
        for slot in rule_of.iter_mut().take(n as usize) {
            slot.get_or_insert("keep_last");
        }
    }
    let periods: [PeriodRule; 4] = [
        ("keep_daily", policy.keep_daily, |t| (t.year(), t.ordinal())),
        ("keep_weekly", policy.keep_weekly, |t| {
            let w = t.iso_week();
            (w.year(), w.week())
        }),
        ("keep_monthly", policy.keep_monthly, |t| {
            (t.year(), t.month())
        }),
        ("keep_yearly", policy.keep_yearly, |t| (t.year(), 0)),
    ];
    for (rule, count, key_of) in periods {
        let Some(count) = count else { continue };
        let mut seen: HashSet<PeriodKey> = HashSet::new();
        for (i, b) in sorted.iter().enumerate() {
            if seen.len() >= count as usize {
                break;
            }
            // Newest first, so the first backup of each period is its newest.
            if seen.insert(key_of(b.time.with_timezone(&tz))) {
                rule_of[i].get_or_insert(rule);
            }
        }
    }
    let min_keep = policy.min_keep.unwrap_or(1) as usize;
    let mut kept = rule_of.iter().filter(|r| r.is_some()).count();
    for slot in rule_of.iter_mut() {
        if kept >= min_keep {
            break;
        }
        if slot.is_none() {
            *slot = Some("min_keep");
            kept += 1;
        }
    }

    let mut result = Plan::default();
    for (b, rule) in sorted.iter().zip(rule_of) {
        match rule {
            Some(rule) => result.keep.push(Decision {
                id: b.id.clone(),
                rule,
            }),
            None => result.delete.push(Decision {
                id: b.id.clone(),
                rule: "expired",
            }),
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn backups(times: &[&str]) -> Vec<BackupInfo> {
        times
            .iter()
            .map(|t| BackupInfo {
                id: t.to_string(),
                time: t.parse().unwrap(),
            })
            .collect()
    }

    fn kept(plan: &Plan) -> Vec<(&str, &str)> {
        plan.keep.iter().map(|d| (d.id.as_str(), d.rule)).collect()
    }

    #[test]
    fn no_policy_keeps_everything() {
        let b = backups(&["2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z"]);
        let p = plan(&b, &RetentionPolicy::default(), Tz::UTC);
        assert_eq!(p.keep.len(), 2);
        assert!(p.delete.is_empty());
    }

    #[test]
    fn keep_last_keeps_the_newest() {
        let b = backups(&[
            "2026-01-01T00:00:00Z",
            "2026-01-03T00:00:00Z",
            "2026-01-02T00:00:00Z",
        ]);
        let policy = RetentionPolicy {
            keep_last: Some(2),
            ..Default::default()
        };
        let p = plan(&b, &policy, Tz::UTC);
        assert_eq!(
            kept(&p),
            [
                ("2026-01-03T00:00:00Z", "keep_last"),
                ("2026-01-02T00:00:00Z", "keep_last")
            ]
        );
        assert_eq!(p.delete[0].id, "2026-01-01T00:00:00Z");
    }

    #[test]
    fn keep_daily_keeps_the_newest_of_each_day() {
        let b = backups(&[
            "2026-01-01T01:00:00Z",
            "2026-01-01T23:00:00Z",
            "2026-01-02T05:00:00Z",
            "2026-01-03T05:00:00Z",
        ]);
        let policy = RetentionPolicy {
            keep_daily: Some(2),
            ..Default::default()
        };
        let p = plan(&b, &policy, Tz::UTC);
        assert_eq!(
            kept(&p),
            [
                ("2026-01-03T05:00:00Z", "keep_daily"),
                ("2026-01-02T05:00:00Z", "keep_daily")
            ]
        );
        assert_eq!(p.delete.len(), 2);
    }

    #[test]
    fn days_are_counted_in_the_sources_time_zone() {
        // 23:30 UTC on Jan 1 is already Jan 2 in Berlin: both backups fall on one
        // Berlin day, so keep_daily = 2 keeps the newest and the Dec 31 one.
        let b = backups(&[
            "2025-12-31T12:00:00Z",
            "2026-01-01T23:30:00Z",
            "2026-01-02T08:00:00Z",
        ]);
        let policy = RetentionPolicy {
            keep_daily: Some(2),
            ..Default::default()
        };
        let berlin = plan(&b, &policy, chrono_tz::Europe::Berlin);
        assert_eq!(
            kept(&berlin),
            [
                ("2026-01-02T08:00:00Z", "keep_daily"),
                ("2025-12-31T12:00:00Z", "keep_daily")
            ]
        );
        let utc = plan(&b, &policy, Tz::UTC);
        assert_eq!(
            kept(&utc),
            [
                ("2026-01-02T08:00:00Z", "keep_daily"),
                ("2026-01-01T23:30:00Z", "keep_daily")
            ]
        );
    }

    #[test]
    fn weekly_monthly_and_yearly_combine_with_keep_last() {
        let start = Utc.with_ymd_and_hms(2024, 1, 1, 2, 0, 0).unwrap();
        let b: Vec<BackupInfo> = (0..800)
            .map(|d| {
                let t = start + chrono::Duration::days(d);
                BackupInfo {
                    id: t.to_rfc3339(),
                    time: t,
                }
            })
            .collect();
        let policy = RetentionPolicy {
            keep_last: Some(3),
            keep_weekly: Some(4),
            keep_monthly: Some(6),
            keep_yearly: Some(3),
            ..Default::default()
        };
        let p = plan(&b, &policy, Tz::UTC);
        let count = |rule| p.keep.iter().filter(|d| d.rule == rule).count();
        assert_eq!(count("keep_last"), 3);
        // The last backup is Tuesday 2026-03-10. keep_last keeps Tue, Mon and Sun
        // 03-08, which are the newest of the last two ISO weeks, so keep_weekly adds
        // only the Sundays of the two weeks before.
        assert_eq!(count("keep_weekly"), 2);
        assert!(
            p.keep
                .iter()
                .any(|d| d.id.starts_with("2026-03-01") && d.rule == "keep_weekly")
        );
        assert!(
            p.keep
                .iter()
                .any(|d| d.id.starts_with("2026-02-22") && d.rule == "keep_weekly")
        );
        assert!(count("keep_monthly") >= 5);
        assert!(count("keep_yearly") >= 1);
        assert_eq!(p.keep.len() + p.delete.len(), 800);
        assert!(
            p.keep.iter().any(|d| d.id.starts_with("2024-12-31")),
            "yearly keeps the last of 2024"
        );
    }

    #[test]
    fn min_keep_refuses_to_delete_everything() {
        // keep_daily = 1 with every backup older than... still keeps one; min_keep = 3
        // raises it to three.
        let b = backups(&[
            "2026-01-01T00:00:00Z",
            "2026-01-01T01:00:00Z",
            "2026-01-01T02:00:00Z",
            "2026-01-01T03:00:00Z",
        ]);
        let policy = RetentionPolicy {
            keep_daily: Some(1),
            min_keep: Some(3),
            ..Default::default()
        };
        let p = plan(&b, &policy, Tz::UTC);
        assert_eq!(
            kept(&p),
            [
                ("2026-01-01T03:00:00Z", "keep_daily"),
                ("2026-01-01T02:00:00Z", "min_keep"),
                ("2026-01-01T01:00:00Z", "min_keep")
            ]
        );
    }

    #[test]
    fn the_newest_backup_is_always_kept() {
        let b = backups(&["2026-01-01T00:00:00Z"]);
        let policy = RetentionPolicy {
            keep_weekly: Some(0),
            ..Default::default()
        };
        let p = plan(&b, &policy, Tz::UTC);
        assert_eq!(kept(&p), [("2026-01-01T00:00:00Z", "min_keep")]);
    }
}
