//! The cron loop. Due times live in a min-heap, so each wake-up touches only the
//! sources that are due, whatever the number of idle ones.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use chrono::{DateTime, Utc};
use ferry_proto::v1::Trigger;
use ferry_runtime::Runtime;
use ferry_runtime::config::SourceConfig;
use ferry_runtime::schedule::{parse_cron, parse_timezone};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::jobs::{self, JobRequest};

struct Scheduled {
    source: SourceConfig,
    cron: croner::Cron,
    tz: chrono_tz::Tz,
}

impl Scheduled {
    fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_next_occurrence(&t.with_timezone(&self.tz), false)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }
}

/// Fires jobs until `shutdown`.
pub async fn run(rt: Runtime, shutdown: CancellationToken) -> anyhow::Result<()> {
    let scheduled: Vec<Scheduled> = rt
        .config
        .sources
        .iter()
        .filter_map(|s| {
            // Validated at start-up, so these parse.
            let cron = parse_cron(s.schedule.as_deref()?).ok()?;
            let tz = parse_timezone(&s.timezone).ok()?;
            Some(Scheduled {
                source: s.clone(),
                cron,
                tz,
            })
        })
        .collect();
    let now = Utc::now();
    let mut due: BinaryHeap<Reverse<(DateTime<Utc>, usize)>> = scheduled
        .iter()
        .enumerate()
        .filter_map(|(i, s)| Some(Reverse((s.next_after(now)?, i))))
        .collect();
    tracing::info!(sources = scheduled.len(), "cron schedules loaded");

    while let Some(Reverse((at, _))) = due.peek().copied() {
        let wait = (at - Utc::now()).to_std().unwrap_or_default();
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(wait) => {}
        }
        let now = Utc::now();
        while let Some(Reverse((at, i))) = due.peek().copied() {
            if at > now {
                break;
            }
            due.pop();
            let s = &scheduled[i];
            fire(&rt, &s.source, at).await;
            if let Some(next) = s.next_after(at) {
                due.push(Reverse((next, i)));
            }
        }
    }
    shutdown.cancelled().await;
    Ok(())
}

async fn fire(rt: &Runtime, source: &SourceConfig, at: DateTime<Utc>) {
    // Every replica derives the same job id and message id from (source, instant):
    // the stream's duplicate window keeps exactly one job per instant.
    let instant = at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let msg_id = format!("{}/{instant}", source.name);
    let job_id = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, msg_id.as_bytes()).to_string();
    let request = JobRequest {
        job_id: job_id.clone(),
        trigger: Trigger::Schedule,
        at,
        reason: String::new(),
        databases: Vec::new(),
        msg_id: msg_id.clone(),
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
            Ok(()) => tracing::info!(scheduled_for = %instant, backup_id = %job.backup_id, "scheduled job published"),
            Err(e) => tracing::error!(error = %e, "failed to publish scheduled job"),
        }
    }
    .instrument(span)
    .await
}
