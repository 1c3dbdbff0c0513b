//! The cron loop. Due times live in a min-heap, so each wake-up touches only the
//! sources that are due, whatever the number of idle ones. The heap is rebuilt when
//! the registry changes (a source added, removed, paused or edited).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;

use crate::config::{MisfirePolicy, SchedulerConfig};
use chrono::{DateTime, Utc};
use ferry_proto::Message;
use ferry_proto::subjects::EventKind;
use ferry_proto::v1::{JobRequested, Trigger};
use ferry_runtime::Runtime;
use ferry_runtime::config::SourceConfig;
use ferry_runtime::schedule::{parse_cron, parse_timezone};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::clock::Clock;
use crate::jobs::{self, JobRequest};

/// A source's schedule in its time zone.
pub struct Schedule {
    cron: croner::Cron,
    tz: chrono_tz::Tz,
}

impl Schedule {
    /// The schedule of `source`, if it has a valid one.
    pub fn of(source: &SourceConfig) -> Option<Schedule> {
        Some(Schedule {
            cron: parse_cron(source.schedule.as_deref()?).ok()?,
            tz: parse_timezone(&source.timezone).ok()?,
        })
    }

    /// The first instant strictly after `t`. Wall-clock times that a spring-forward
    /// skips fire once at the first valid instant after them; times that a
    /// fall-back repeats fire once, at their first occurrence.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_next_occurrence(&t.with_timezone(&self.tz), false)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }

    /// The latest instant in `(from, to]`, if any.
    pub fn last_in(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let mut last = None;
        let mut t = from;
        while let Some(next) = self.next_after(t) {
            if next > to {
                break;
            }
            last = Some(next);
            t = next;
        }
        last
    }
}

/// Fires jobs until `shutdown`.
pub async fn run(
    rt: Runtime,
    clock: Arc<dyn Clock>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let config = rt.config.section::<SchedulerConfig>()?;
    let mut changes = rt.sources.changes();
    // Everything due up to `fired_until` has been handled. A re-plan (the registry
    // changed) starts from there, not from "now", so an instant that fell due while
    // the registry was changing is still fired.
    let mut fired_until = clock.now();
    catch_up(&rt, &config, fired_until).await;
    loop {
        let (schedules, mut due) = plan(&rt, fired_until);
        tracing::info!(scheduled = schedules.len(), "cron schedules loaded");
        loop {
            let Some(Reverse((at, _))) = due.peek().copied() else {
                // Nothing scheduled: wait for the registry to change.
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    changed = changes.changed() => { if changed.is_err() { shutdown.cancelled().await; return Ok(()) } break }
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                changed = changes.changed() => {
                    if changed.is_err() { shutdown.cancelled().await; return Ok(()) }
                    break;
                }
                _ = clock.sleep_until(at) => {}
            }
            let now = clock.now();
            fired_until = fired_until.max(now);
            let mut firing = Vec::new();
            while let Some(Reverse((at, i))) = due.peek().copied() {
                if at > now {
                    break;
                }
                due.pop();
                let (source, schedule) = &schedules[i];
                // After a pause of the process or a jump of the clock, several
                // instants may be past: run once for the latest (or none with
                // misfire = "skip"), never a burst of stale jobs.
                let mut latest = at;
                while let Some(next) = schedule.next_after(latest).filter(|n| *n <= now) {
                    latest = next;
                }
                if latest == at || config.misfire == MisfirePolicy::RunOnce {
                    firing.push((source, latest));
                }
                if let Some(next) = schedule.next_after(latest) {
                    due.push(Reverse((next, i)));
                }
            }
            // Many sources often share an instant (every hour on the hour): publish
            // them concurrently, at most FIRE_CONCURRENCY acknowledgements in flight.
            futures::stream::iter(firing)
                .for_each_concurrent(FIRE_CONCURRENCY, |(source, at)| fire(&rt, source, at))
                .await;
        }
    }
}

type Due = BinaryHeap<Reverse<(DateTime<Utc>, usize)>>;

/// Jobs published at once when many are due together; bounds the memory and the
/// NATS acknowledgements in flight.
const FIRE_CONCURRENCY: usize = 256;

/// The schedules of every active source and the heap of their next instants.
fn plan(rt: &Runtime, now: DateTime<Utc>) -> (Vec<(SourceConfig, Schedule)>, Due) {
    let schedules: Vec<(SourceConfig, Schedule)> = rt
        .sources
        .all()
        .into_iter()
        .filter(|s| !s.paused)
        .filter_map(|s| Schedule::of(&s.config).map(|sch| (s.config, sch)))
        .collect();
    let due = schedules
        .iter()
        .enumerate()
        .filter_map(|(i, (_, s))| Some(Reverse((s.next_after(now)?, i))))
        .collect();
    (schedules, due)
}

/// After downtime: with `run_once`, each source whose latest instant within the
/// misfire window has no job yet gets one job for it (never one per missed
/// instant). The instant's message id keeps replicas from doubling it.
async fn catch_up(rt: &Runtime, config: &SchedulerConfig, now: DateTime<Utc>) {
    if config.misfire == MisfirePolicy::Skip {
        return;
    }
    let window =
        chrono::Duration::from_std(config.misfire_window).unwrap_or(chrono::Duration::hours(1));
    let Ok(events) = rt
        .jetstream
        .get_stream(ferry_proto::subjects::EVENTS_STREAM)
        .await
    else {
        return;
    };
    for source in rt.sources.all().into_iter().filter(|s| !s.paused) {
        let Some(schedule) = Schedule::of(&source.config) else {
            continue;
        };
        let Some(missed) = schedule.last_in(now - window, now) else {
            continue;
        };
        let subject = EventKind::Requested.subject(&source.config.name);
        let last_scheduled = match events.get_last_raw_message_by_subject(&subject).await {
            Ok(m) => JobRequested::decode(m.payload.as_ref())
                .ok()
                .and_then(|j| j.scheduled_for)
                .as_ref()
                .and_then(ferry_proto::from_timestamp),
            Err(_) => None,
        };
        if last_scheduled.is_none_or(|last| last < missed) {
            tracing::info!(source = %source.config.name, missed = %missed, "running a missed scheduled backup (misfire = run_once)");
            fire(rt, &source.config, missed).await;
        }
    }
}

async fn fire(rt: &Runtime, source: &SourceConfig, at: DateTime<Utc>) {
    // Every replica derives the same job id and message id from (source, instant):
    // the stream's duplicate window keeps exactly one job per instant.
    let instant = at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let msg_id = ferry_runtime::msg_id::scheduled(&source.name, &instant);
    let job_id = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, msg_id.as_bytes()).to_string();
    let request = JobRequest {
        job_id: job_id.clone(),
        trigger: Trigger::Schedule,
        at,
        reason: String::new(),
        databases: Vec::new(),
        msg_id: msg_id.clone(),
        priority: ferry_proto::v1::Priority::Normal,
        postgres_mode: ferry_proto::v1::PostgresMode::Unspecified,
    };
    let job = jobs::job_message(source, &request);
    let span = tracing::info_span!(
        "job",
        otel.name = format!("job {}", source.name),
        otel.kind = "producer",
        ferry.stage = "scheduler",
        ferry.job_id = %job_id,
        ferry.source = %source.name,
        ferry.trigger = "schedule",
    );
    async {
        match jobs::publish(&rt.publisher, &job, &msg_id).await {
            Ok(()) => {
                tracing::info!(scheduled_for = %instant, backup_id = %job.backup_id, "scheduled job published");
                rt.metrics.record_request("schedule", "published");
            }
            Err(e) => {
                tracing::error!(error = %ferry_runtime::error_chain(&e), "failed to publish scheduled job");
                rt.metrics.record_request("schedule", "failed");
            }
        }
    }
    .instrument(span)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(expr: &str, tz: &str) -> Schedule {
        Schedule {
            cron: parse_cron(expr).unwrap(),
            tz: parse_timezone(tz).unwrap(),
        }
    }

    fn fires(s: &Schedule, from: &str, to: &str) -> Vec<String> {
        let (mut t, to): (DateTime<Utc>, DateTime<Utc>) =
            (from.parse().unwrap(), to.parse().unwrap());
        let mut out = Vec::new();
        while let Some(next) = s.next_after(t) {
            if next > to {
                break;
            }
            out.push(next.to_rfc3339());
            t = next;
        }
        out
    }

    #[test]
    fn a_0230_job_runs_once_on_both_daylight_saving_days() {
        let s = schedule("30 2 * * *", "Europe/Berlin");
        // Spring forward, 2026-03-29: 02:30 does not exist; it runs at 03:00 CEST.
        assert_eq!(
            fires(&s, "2026-03-28T12:00:00Z", "2026-03-30T12:00:00Z"),
            ["2026-03-29T01:00:00+00:00", "2026-03-30T00:30:00+00:00"]
        );
        // Fall back, 2026-10-25: 02:30 happens twice; it runs once.
        assert_eq!(
            fires(&s, "2026-10-24T12:00:00Z", "2026-10-26T12:00:00Z"),
            ["2026-10-25T00:30:00+00:00", "2026-10-26T01:30:00+00:00"]
        );
    }

    #[test]
    fn seconds_shortcuts_and_time_zones() {
        assert_eq!(
            fires(
                &schedule("*/20 * * * * *", "UTC"),
                "2026-01-01T00:00:00Z",
                "2026-01-01T00:01:00Z"
            ),
            [
                "2026-01-01T00:00:20+00:00",
                "2026-01-01T00:00:40+00:00",
                "2026-01-01T00:01:00+00:00"
            ]
        );
        assert_eq!(
            fires(
                &schedule("@daily", "UTC"),
                "2026-01-01T00:30:00Z",
                "2026-01-02T12:00:00Z"
            ),
            ["2026-01-02T00:00:00+00:00"]
        );
        assert_eq!(
            fires(
                &schedule("@hourly", "Asia/Kolkata"),
                "2026-01-01T00:00:00Z",
                "2026-01-01T01:00:00Z"
            ),
            ["2026-01-01T00:30:00+00:00"]
        );
        let s = schedule("0 2 * * *", "America/New_York");
        assert_eq!(
            s.last_in(
                "2026-01-01T00:00:00Z".parse().unwrap(),
                "2026-01-03T00:00:00Z".parse().unwrap()
            )
            .unwrap()
            .to_rfc3339(),
            "2026-01-02T07:00:00+00:00"
        );
    }
}
