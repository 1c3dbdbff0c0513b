//! The retention planner: a pure function from backups and a policy to what to keep
//! and what to delete, with the rule that decided each. The worker, `ferry retention
//! plan` (the dry run) and `ferry retention apply` use the same function, so what an
//! operator previews is what happens.
//!
//! Rules, in the order they claim a backup (the first claim names the rule):
//! - `keep_mark`: the backup is marked with `ferry keep`; no rule deletes it;
//! - `keep_last`, `keep_hourly`, `keep_daily`, `keep_weekly`, `keep_monthly`,
//!   `keep_yearly`: the newest N, or the newest of each of the last N periods,
//!   periods counted in the source's time zone;
//! - `max_age`: a ceiling; a backup older than it is deleted even if a `keep_*`
//!   rule chose it, and with no `keep_*` rule every younger backup is kept;
//! - `min_keep`: if fewer backups than that survive (keep marks aside), the newest
//!   of the others are kept too. It is at least 1: a policy never deletes a
//!   source's newest backup.

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Datelike, Timelike, Utc};
use chrono_tz::Tz;
use ferry_runtime::config::RetentionPolicy;

/// A backup as the planner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupInfo {
    /// The backup id.
    pub id: String,
    /// When it was taken.
    pub time: DateTime<Utc>,
    /// Whether an operator marked it to be kept (`ferry keep`).
    pub keep_mark: bool,
}

impl From<ferry_storage::BackupEntry> for BackupInfo {
    fn from(e: ferry_storage::BackupEntry) -> Self {
        BackupInfo {
            id: e.id,
            time: e.time,
            keep_mark: e.kept,
        }
    }
}

/// A source's backups as the planner takes them, from the catalog: one listing,
/// no manifest read (the time is the one the id starts with).
pub async fn backups_of(
    catalog: &ferry_storage::Catalog<'_>,
    source: &str,
) -> Result<Vec<BackupInfo>, ferry_storage::StorageError> {
    Ok(catalog
        .backups(Some(source))
        .await?
        .into_iter()
        .map(BackupInfo::from)
        .collect())
}

/// What happens to one backup and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The backup id.
    pub id: String,
    /// The rule: a keep rule (`keep_mark`, `keep_last`, `keep_daily`, …,
    /// `max_age`, `min_keep`, `no_policy`) for kept backups; `expired` (no rule
    /// kept it) or `max_age` (older than the ceiling) for deleted ones.
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

/// Plans retention for one source's backups at `now`; periods are computed in `tz`.
pub fn plan(backups: &[BackupInfo], policy: &RetentionPolicy, tz: Tz, now: DateTime<Utc>) -> Plan {
    let mut sorted: Vec<&BackupInfo> = backups.iter().collect();
    sorted.sort_by(|a, b| b.time.cmp(&a.time).then_with(|| b.id.cmp(&a.id)));

    if policy.is_empty() {
        let keep = sorted
            .iter()
            .map(|b| Decision {
                id: b.id.clone(),
                rule: if b.keep_mark {
                    "keep_mark"
                } else {
                    "no_policy"
                },
            })
            .collect();
        return Plan {
            keep,
            delete: Vec::new(),
        };
    }

    let mut rule_of: Vec<Option<&'static str>> = sorted
        .iter()
        .map(|b| b.keep_mark.then_some("keep_mark"))
        .collect();
    if let Some(n) = policy.keep_last {
        for slot in rule_of.iter_mut().take(n as usize) {
            slot.get_or_insert("keep_last");
        }
    }
    let periods: [PeriodRule; 5] = [
        ("keep_hourly", policy.keep_hourly, |t| {
            (t.year(), t.ordinal() * 24 + t.hour())
        }),
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

    // max_age: the ceiling over the keep rules; alone, it keeps what is younger.
    let mut over_age = vec![false; sorted.len()];
    if let Some(max_age) = policy.max_age {
        let only_ceiling = policy.keep_last.is_none()
            && policy.keep_hourly.is_none()
            && policy.keep_daily.is_none()
            && policy.keep_weekly.is_none()
            && policy.keep_monthly.is_none()
            && policy.keep_yearly.is_none();
        for (i, b) in sorted.iter().enumerate() {
            if older_than(b.time, now, max_age) {
                over_age[i] = true;
                if rule_of[i] != Some("keep_mark") {
                    rule_of[i] = None;
                }
            } else if only_ceiling {
                rule_of[i].get_or_insert("max_age");
            }
        }
    }

    // Keep marks do not count: a year-old marked backup must not let the newest
    // one go.
    let min_keep = policy.min_keep();
    let mut kept = rule_of
        .iter()
        .filter(|r| r.is_some_and(|rule| rule != "keep_mark"))
        .count();
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
    for ((b, rule), over_age) in sorted.iter().zip(rule_of).zip(over_age) {
        let id = b.id.clone();
        match rule {
            Some(rule) => result.keep.push(Decision { id, rule }),
            None => result.delete.push(Decision {
                id,
                rule: if over_age { "max_age" } else { "expired" },
            }),
        }
    }
    result
}

fn older_than(time: DateTime<Utc>, now: DateTime<Utc>, age: Duration) -> bool {
    match chrono::Duration::from_std(age) {
        Ok(age) => time < now - age,
        // An age beyond chrono's range is older than anything.
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    const NOW: &str = "2026-03-10T12:00:00Z";

    fn at(t: &str) -> DateTime<Utc> {
        t.parse().unwrap()
    }

    /// Backups at these times; a `!` suffix marks one with `ferry keep`.
    fn backups(times: &[&str]) -> Vec<BackupInfo> {
        times
            .iter()
            .map(|t| {
                let (t, keep_mark) = match t.strip_suffix('!') {
                    Some(t) => (t, true),
                    None => (*t, false),
                };
                BackupInfo {
                    id: t.to_string(),
                    time: at(t),
                    keep_mark,
                }
            })
            .collect()
    }

    fn kept(plan: &Plan) -> Vec<(&str, &str)> {
        plan.keep.iter().map(|d| (d.id.as_str(), d.rule)).collect()
    }

    fn deleted(plan: &Plan) -> Vec<(&str, &str)> {
        plan.delete
            .iter()
            .map(|d| (d.id.as_str(), d.rule))
            .collect()
    }

    fn policy(toml: &str) -> RetentionPolicy {
        toml::from_str(toml).unwrap()
    }

    /// One row: a policy, the backups, the zone, and what must be kept (with the
    /// rule) and deleted (with the rule), newest first.
    struct Case {
        name: &'static str,
        policy: &'static str,
        backups: &'static [&'static str],
        tz: Tz,
        keep: &'static [(&'static str, &'static str)],
        delete: &'static [(&'static str, &'static str)],
    }

    #[test]
    fn each_rule_and_their_combinations() {
        let cases = [
            Case {
                name: "no policy keeps everything",
                policy: "",
                backups: &["2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z!"],
                tz: Tz::UTC,
                keep: &[
                    ("2026-01-02T00:00:00Z", "keep_mark"),
                    ("2026-01-01T00:00:00Z", "no_policy"),
                ],
                delete: &[],
            },
            Case {
                name: "keep_last keeps the newest",
                policy: "keep_last = 2",
                backups: &[
                    "2026-01-01T00:00:00Z",
                    "2026-01-03T00:00:00Z",
                    "2026-01-02T00:00:00Z",
                ],
                tz: Tz::UTC,
                keep: &[
                    ("2026-01-03T00:00:00Z", "keep_last"),
                    ("2026-01-02T00:00:00Z", "keep_last"),
                ],
                delete: &[("2026-01-01T00:00:00Z", "expired")],
            },
            Case {
                name: "keep_hourly keeps the newest of each hour",
                policy: "keep_hourly = 2",
                backups: &[
                    "2026-01-01T10:05:00Z",
                    "2026-01-01T10:55:00Z",
                    "2026-01-01T11:10:00Z",
                    "2026-01-01T11:40:00Z",
                    "2026-01-01T12:00:00Z",
                ],
                tz: Tz::UTC,
                keep: &[
                    ("2026-01-01T12:00:00Z", "keep_hourly"),
                    ("2026-01-01T11:40:00Z", "keep_hourly"),
                ],
                delete: &[
                    ("2026-01-01T11:10:00Z", "expired"),
                    ("2026-01-01T10:55:00Z", "expired"),
                    ("2026-01-01T10:05:00Z", "expired"),
                ],
            },
            Case {
                name: "hours are counted in the source's zone (Kolkata is UTC+05:30)",
                policy: "keep_hourly = 2",
                backups: &[
                    "2026-01-01T10:20:00Z",
                    "2026-01-01T10:40:00Z",
                    "2026-01-01T11:10:00Z",
                ],
                tz: chrono_tz::Asia::Kolkata,
                // 15:50 and 16:10 local fall into two hours, 16:40 into the second.
                keep: &[
                    ("2026-01-01T11:10:00Z", "keep_hourly"),
                    ("2026-01-01T10:20:00Z", "keep_hourly"),
                ],
                delete: &[("2026-01-01T10:40:00Z", "expired")],
            },
            Case {
                name: "keep_daily keeps the newest of each day",
                policy: "keep_daily = 2",
                backups: &[
                    "2026-01-01T01:00:00Z",
                    "2026-01-01T23:00:00Z",
                    "2026-01-02T05:00:00Z",
                    "2026-01-03T05:00:00Z",
                ],
                tz: Tz::UTC,
                keep: &[
                    ("2026-01-03T05:00:00Z", "keep_daily"),
                    ("2026-01-02T05:00:00Z", "keep_daily"),
                ],
                delete: &[
                    ("2026-01-01T23:00:00Z", "expired"),
                    ("2026-01-01T01:00:00Z", "expired"),
                ],
            },
            Case {
                name: "days are counted in the source's zone (Berlin)",
                policy: "keep_daily = 2",
                // 23:30 UTC on Jan 1 is already Jan 2 in Berlin.
                backups: &[
                    "2025-12-31T12:00:00Z",
                    "2026-01-01T23:30:00Z",
                    "2026-01-02T08:00:00Z",
                ],
                tz: chrono_tz::Europe::Berlin,
                keep: &[
                    ("2026-01-02T08:00:00Z", "keep_daily"),
                    ("2025-12-31T12:00:00Z", "keep_daily"),
                ],
                delete: &[("2026-01-01T23:30:00Z", "expired")],
            },
            Case {
                name: "the same backups in UTC",
                policy: "keep_daily = 2",
                backups: &[
                    "2025-12-31T12:00:00Z",
                    "2026-01-01T23:30:00Z",
                    "2026-01-02T08:00:00Z",
                ],
                tz: Tz::UTC,
                keep: &[
                    ("2026-01-02T08:00:00Z", "keep_daily"),
                    ("2026-01-01T23:30:00Z", "keep_daily"),
                ],
                delete: &[("2025-12-31T12:00:00Z", "expired")],
            },
            Case {
                name: "days across the spring daylight-saving change in New York",
                policy: "keep_daily = 2",
                // 2026-03-08 is 23 hours long in New York: 04:30Z is still Mar 7
                // (23:30 EST), 05:30Z is Mar 8 00:30 EST.
                backups: &[
                    "2026-03-08T04:30:00Z",
                    "2026-03-08T05:30:00Z",
                    "2026-03-09T03:30:00Z",
                ],
                tz: chrono_tz::America::New_York,
                keep: &[
                    ("2026-03-09T03:30:00Z", "keep_daily"),
                    ("2026-03-08T04:30:00Z", "keep_daily"),
                ],
                delete: &[("2026-03-08T05:30:00Z", "expired")],
            },
            Case {
                name: "keep_weekly counts ISO weeks (Monday to Sunday)",
                policy: "keep_weekly = 2",
                backups: &[
                    "2026-03-01T10:00:00Z",
                    "2026-03-02T10:00:00Z",
                    "2026-03-08T10:00:00Z",
                    "2026-03-09T10:00:00Z",
                ],
                tz: Tz::UTC,
                keep: &[
                    ("2026-03-09T10:00:00Z", "keep_weekly"),
                    ("2026-03-08T10:00:00Z", "keep_weekly"),
                ],
                delete: &[
                    ("2026-03-02T10:00:00Z", "expired"),
                    ("2026-03-01T10:00:00Z", "expired"),
                ],
            },
            Case {
                name: "keep_monthly and keep_yearly",
                policy: "keep_monthly = 2\nkeep_yearly = 2",
                backups: &[
                    "2024-06-01T00:00:00Z",
                    "2024-12-31T00:00:00Z",
                    "2025-11-30T00:00:00Z",
                    "2026-01-15T00:00:00Z",
                    "2026-02-01T00:00:00Z",
                    "2026-02-20T00:00:00Z",
                ],
                tz: Tz::UTC,
                keep: &[
                    ("2026-02-20T00:00:00Z", "keep_monthly"),
                    ("2026-01-15T00:00:00Z", "keep_monthly"),
                    ("2025-11-30T00:00:00Z", "keep_yearly"),
                ],
                delete: &[
                    ("2026-02-01T00:00:00Z", "expired"),
                    ("2024-12-31T00:00:00Z", "expired"),
                    ("2024-06-01T00:00:00Z", "expired"),
                ],
            },
            Case {
                name: "the first rule to claim a backup names it",
                policy: "keep_last = 1\nkeep_daily = 2",
                backups: &["2026-01-01T10:00:00Z", "2026-01-02T10:00:00Z"],
                tz: Tz::UTC,
                keep: &[
                    ("2026-01-02T10:00:00Z", "keep_last"),
                    ("2026-01-01T10:00:00Z", "keep_daily"),
                ],
                delete: &[],
            },
            Case {
                name: "max_age alone keeps what is younger",
                policy: "max_age = \"30days\"",
                backups: &[
                    "2026-01-01T00:00:00Z",
                    "2026-02-20T00:00:00Z",
                    "2026-03-09T00:00:00Z",
                ],
                tz: Tz::UTC,
                keep: &[
                    ("2026-03-09T00:00:00Z", "max_age"),
                    ("2026-02-20T00:00:00Z", "max_age"),
                ],
                delete: &[("2026-01-01T00:00:00Z", "max_age")],
            },
            Case {
                name: "max_age is a ceiling over keep_monthly",
                policy: "keep_monthly = 12\nmax_age = \"60days\"",
                backups: &[
                    "2025-11-30T00:00:00Z",
                    "2025-12-31T00:00:00Z",
                    "2026-01-31T00:00:00Z",
                    "2026-02-28T00:00:00Z",
                    "2026-03-09T00:00:00Z",
                ],
                tz: Tz::UTC,
                keep: &[
                    ("2026-03-09T00:00:00Z", "keep_monthly"),
                    ("2026-02-28T00:00:00Z", "keep_monthly"),
                    ("2026-01-31T00:00:00Z", "keep_monthly"),
                ],
                delete: &[
                    ("2025-12-31T00:00:00Z", "max_age"),
                    ("2025-11-30T00:00:00Z", "max_age"),
                ],
            },
            Case {
                name: "a keep mark survives every rule, max_age included",
                policy: "keep_last = 1\nmax_age = \"7days\"",
                backups: &[
                    "2025-01-01T00:00:00Z!",
                    "2026-03-01T00:00:00Z",
                    "2026-03-09T00:00:00Z",
                ],
                tz: Tz::UTC,
                keep: &[
                    ("2026-03-09T00:00:00Z", "keep_last"),
                    ("2025-01-01T00:00:00Z", "keep_mark"),
                ],
                delete: &[("2026-03-01T00:00:00Z", "max_age")],
            },
            Case {
                name: "a policy that would delete everything keeps the newest (min_keep 1)",
                policy: "max_age = \"1h\"",
                backups: &["2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z"],
                tz: Tz::UTC,
                keep: &[("2026-01-02T00:00:00Z", "min_keep")],
                delete: &[("2026-01-01T00:00:00Z", "max_age")],
            },
            Case {
                name: "min_keep raises the floor",
                policy: "keep_daily = 1\nmin_keep = 3",
                backups: &[
                    "2026-01-01T00:00:00Z",
                    "2026-01-01T01:00:00Z",
                    "2026-01-01T02:00:00Z",
                    "2026-01-01T03:00:00Z",
                ],
                tz: Tz::UTC,
                keep: &[
                    ("2026-01-01T03:00:00Z", "keep_daily"),
                    ("2026-01-01T02:00:00Z", "min_keep"),
                    ("2026-01-01T01:00:00Z", "min_keep"),
                ],
                delete: &[("2026-01-01T00:00:00Z", "expired")],
            },
            Case {
                name: "keep marks do not count towards min_keep",
                policy: "max_age = \"1h\"",
                backups: &[
                    "2026-01-01T00:00:00Z!",
                    "2026-01-02T00:00:00Z",
                    "2026-01-03T00:00:00Z",
                ],
                tz: Tz::UTC,
                keep: &[
                    ("2026-01-03T00:00:00Z", "min_keep"),
                    ("2026-01-01T00:00:00Z", "keep_mark"),
                ],
                delete: &[("2026-01-02T00:00:00Z", "max_age")],
            },
            Case {
                name: "an empty source plans nothing",
                policy: "keep_last = 3",
                backups: &[],
                tz: Tz::UTC,
                keep: &[],
                delete: &[],
            },
        ];
        for case in cases {
            let p = plan(
                &backups(case.backups),
                &policy(case.policy),
                case.tz,
                at(NOW),
            );
            assert_eq!(kept(&p), case.keep, "{}: kept", case.name);
            assert_eq!(deleted(&p), case.delete, "{}: deleted", case.name);
        }
    }

    #[test]
    fn two_years_of_daily_backups_under_a_full_gfs_policy() {
        let start = Utc.with_ymd_and_hms(2024, 1, 1, 2, 0, 0).unwrap();
        let b: Vec<BackupInfo> = (0..800)
            .map(|d| {
                let t = start + chrono::Duration::days(d);
                BackupInfo {
                    id: t.to_rfc3339(),
                    time: t,
                    keep_mark: false,
                }
            })
            .collect();
        let policy = policy("keep_last = 3\nkeep_weekly = 4\nkeep_monthly = 6\nkeep_yearly = 3");
        let p = plan(&b, &policy, Tz::UTC, at(NOW));
        let count = |rule| p.keep.iter().filter(|d| d.rule == rule).count();
        assert_eq!(count("keep_last"), 3);
        // The last backup is Tuesday 2026-03-10. keep_last keeps Tue, Mon and Sun
        // 03-08, which are the newest of the last two ISO weeks, so keep_weekly adds
        // only the Sundays of the two weeks before.
        let weekly: Vec<_> = p
            .keep
            .iter()
            .filter(|d| d.rule == "keep_weekly")
            .map(|d| &d.id[..10])
            .collect();
        assert_eq!(weekly, ["2026-03-01", "2026-02-22"]);
        // Months: Mar (by keep_last), Feb, Jan, Dec, Nov, Oct 2025.
        let monthly: Vec<_> = p
            .keep
            .iter()
            .filter(|d| d.rule == "keep_monthly")
            .map(|d| &d.id[..10])
            .collect();
        assert_eq!(
            monthly,
            [
                "2026-02-28",
                "2026-01-31",
                "2025-12-31",
                "2025-11-30",
                "2025-10-31"
            ]
        );
        // Years: 2026 (by keep_last), 2025 (by keep_monthly), 2024.
        let yearly: Vec<_> = p
            .keep
            .iter()
            .filter(|d| d.rule == "keep_yearly")
            .map(|d| &d.id[..10])
            .collect();
        assert_eq!(yearly, ["2024-12-31"]);
        assert_eq!(p.keep.len(), 3 + 2 + 5 + 1);
        assert_eq!(p.keep.len() + p.delete.len(), 800);
    }

    #[test]
    fn ten_thousand_backups_plan_every_backup_once() {
        let start = Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap();
        let b: Vec<BackupInfo> = (0..10_000)
            .map(|i| {
                let t = start + chrono::Duration::minutes(30 * i);
                BackupInfo {
                    id: format!("{i:05}"),
                    time: t,
                    keep_mark: i % 1000 == 0,
                }
            })
            .collect();
        let policy = policy("keep_hourly = 24\nkeep_daily = 30\nkeep_monthly = 12");
        let p = plan(&b, &policy, chrono_tz::Europe::Berlin, at(NOW));
        let mut ids: Vec<&str> = p
            .keep
            .iter()
            .chain(&p.delete)
            .map(|d| d.id.as_str())
            .collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 10_000);
        assert_eq!(p.keep.iter().filter(|d| d.rule == "keep_mark").count(), 10);
    }
}
