//! The scheduler with a fleet of sources.
//!
//! 1. Registry: register N sources in the KV registry, then time a process loading
//!    it (what every worker does at start).
//! 2. Fan-out: every source due at the same second, on the real clock; lateness of
//!    each job (publish time minus due time) and the time to publish all of them,
//!    against a baseline that publishes the same number of messages to JetStream
//!    with a bare client.
//! 3. A simulated hour of varied schedules under a manual clock: the scheduler
//!    process's CPU time for it.
//! 4. Peak memory of the process.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use chrono::{DateTime, Timelike, Utc};
use ferry_proto::Message;
use ferry_proto::subjects::{self, EventKind};
use ferry_proto::v1::JobRequested;
use ferry_runtime::config::SourceConfig;
use ferry_runtime::{Config, Runtime};
use ferry_scheduler::clock::{Clock, ManualClock};
use ferry_scheduler::cron::Schedule;
use ferry_testkit::{NatsServer, Source, TestConfig};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::{cpu_seconds, peak_rss_mib, quantile};

fn source(i: usize, schedule: &str) -> SourceConfig {
    let toml = TestConfig::new()
        .source(
            Source::postgres(
                &format!("db-{i:05}"),
                &format!("postgres://backup@db-{i:05}.internal/app"),
            )
            .set("password_env", "PG_PASSWORD")
            .schedule(schedule),
        )
        .to_toml();
    Config::from_toml(&toml)
        .expect("valid source")
        .sources
        .remove(0)
}

async fn runtime(nats: &NatsServer) -> anyhow::Result<Runtime> {
    let config = Config::from_toml(
        &TestConfig::new()
            .nats(nats.url())
            .set("scheduler", "misfire", "skip")
            .to_toml(),
    )?;
    Ok(Runtime::with_client(config, nats.client().await).await?)
}

/// Registers `n` sources (64 writes in flight).
async fn register(
    rt: &Runtime,
    n: usize,
    schedule_of: impl Fn(usize) -> String,
) -> anyhow::Result<()> {
    let sources: Vec<SourceConfig> = (0..n).map(|i| source(i, &schedule_of(i))).collect();
    futures::stream::iter(sources.iter())
        .map(|s| rt.sources.add(s))
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<()>, _>>()?;
    Ok(())
}

async fn stream_messages(js: &jetstream::Context, name: &str) -> anyhow::Result<u64> {
    Ok(js.get_stream(name).await?.info().await?.state.messages)
}

pub async fn run(n: usize) -> anyhow::Result<()> {
    println!("# ferry-bench scheduler: {n} sources");

    // 1. Registry load.
    let nats = NatsServer::start().await;
    let rt = runtime(&nats).await?;
    let t = Instant::now();
    let fanout_at = (Utc::now() + chrono::Duration::seconds(40))
        .with_nanosecond(0)
        .unwrap();
    let cron = format!(
        "{} {} {} * * *",
        fanout_at.second(),
        fanout_at.minute(),
        fanout_at.hour()
    );
    register(&rt, n, |_| cron.clone()).await?;
    let register_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let loaded = runtime(&nats).await?;
    let load_s = t.elapsed().as_secs_f64();
    assert_eq!(loaded.sources.all().len(), n);
    println!(
        "registry: registered {n} sources in {register_s:.2} s; a process loads them in {load_s:.2} s"
    );

    // 2. Fan-out on the real clock: every source due at `fanout_at`.
    let shutdown = CancellationToken::new();
    let scheduler = tokio::spawn(ferry_scheduler::run(loaded.clone(), shutdown.clone()));
    let js = jetstream::new(nats.client().await);
    let wait_for = fanout_at - Utc::now() + chrono::Duration::seconds(30);
    let deadline = Instant::now() + wait_for.to_std().unwrap_or(Duration::from_secs(60));
    while stream_messages(&js, subjects::JOBS_STREAM).await? < n as u64 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the fan-out did not finish in time"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shutdown.cancel();
    let _ = scheduler.await;
    let mut lateness = Vec::with_capacity(n);
    let stream = js.get_stream(subjects::EVENTS_STREAM).await?;
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            filter_subject: format!("ferry.v1.events.{}.*", EventKind::Requested.token()),
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    let mut last_publish: Option<DateTime<Utc>> = None;
    while lateness.len() < n {
        let m = messages.next().await.expect("events")?;
        let job = JobRequested::decode(m.payload.as_ref())?;
        let published = ferry_proto::from_timestamp(job.occurred_at.as_ref().unwrap()).unwrap();
        let due = ferry_proto::from_timestamp(job.scheduled_for.as_ref().unwrap()).unwrap();
        lateness.push((published - due).num_microseconds().unwrap_or(0) as f64 / 1e6);
        last_publish = Some(last_publish.map_or(published, |l| l.max(published)));
    }
    lateness.sort_by(|a, b| a.total_cmp(b));
    let fanout_s = (last_publish.unwrap() - fanout_at).num_milliseconds() as f64 / 1000.0;
    println!(
        "fan-out: {n} jobs due at one instant published within {fanout_s:.2} s; lateness p50 {:.3} s, p99 {:.3} s, max {:.3} s",
        quantile(&lateness, 0.5),
        quantile(&lateness, 0.99),
        lateness.last().copied().unwrap_or(0.0)
    );

    // Baseline: the same number of JetStream publishes with a bare client, 256 acks
    // in flight, no Ferry code.
    let baseline_nats = NatsServer::start().await;
    let bare = jetstream::new(baseline_nats.client().await);
    bare.create_stream(jetstream::stream::Config {
        name: "BASELINE".into(),
        subjects: vec!["baseline.>".into()],
        retention: jetstream::stream::RetentionPolicy::WorkQueue,
        ..Default::default()
    })
    .await?;
    let payload: bytes::Bytes = JobRequested {
        job_id: "x".repeat(36),
        source: "db-00000".into(),
        ..Default::default()
    }
    .encode_to_vec()
    .into();
    let t = Instant::now();
    futures::stream::iter(0..n)
        .map(|i| {
            let (bare, payload) = (bare.clone(), payload.clone());
            async move {
                bare.publish(format!("baseline.{i}"), payload)
                    .await?
                    .await
                    .map(|_| ())
            }
        })
        .buffer_unordered(256)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<()>, _>>()?;
    let baseline_s = t.elapsed().as_secs_f64();
    println!(
        "baseline: {n} bare JetStream publishes in {baseline_s:.2} s; Ferry's fan-out (job + event per source) / baseline = {:.2}x",
        fanout_s / baseline_s
    );

    // 3. A simulated hour of varied schedules under a manual clock.
    let nats = NatsServer::start().await;
    let rt = runtime(&nats).await?;
    let schedule_of = |i: usize| match i % 10 {
        0..=5 => format!("{} * * * *", i % 60), // hourly at minute i
        6..=8 => format!(
            "{m},{a},{b},{c} * * * *",
            m = i % 15,
            a = i % 15 + 15,
            b = i % 15 + 30,
            c = i % 15 + 45
        ), // every 15 min
        _ => format!("{} {} * * *", i % 60, i % 24), // daily
    };
    register(&rt, n, schedule_of).await?;
    let start: DateTime<Utc> = "2026-11-23T00:00:00Z".parse()?;
    // How many jobs are due by the end of each simulated minute, so the clock only
    // moves on once the scheduler has published the previous minute's jobs.
    let mut due_by_minute = vec![0u64; 61];
    for s in rt.sources.all() {
        let sch = Schedule::of(&s.config).unwrap();
        let mut t = start;
        while let Some(next) = sch
            .next_after(t)
            .filter(|n| *n <= start + chrono::Duration::hours(1))
        {
            let minute = ((next - start).num_seconds() as usize).div_ceil(60);
            due_by_minute[minute] += 1;
            t = next;
        }
    }
    for m in 1..=60 {
        due_by_minute[m] += due_by_minute[m - 1];
    }
    let expected = due_by_minute[60];
    let clock = Arc::new(ManualClock::new(start));
    let shutdown = CancellationToken::new();
    let cpu_before = cpu_seconds();
    let wall = Instant::now();
    let scheduler = tokio::spawn(ferry_scheduler::run_with_clock(
        rt.clone(),
        clock.clone() as Arc<dyn Clock>,
        shutdown.clone(),
    ));
    let js = jetstream::new(nats.client().await);
    let deadline = Instant::now() + Duration::from_secs(600);
    for (minute, &due) in due_by_minute.iter().enumerate().skip(1) {
        clock.set(start + chrono::Duration::minutes(minute as i64));
        while stream_messages(&js, subjects::JOBS_STREAM).await? < due {
            anyhow::ensure!(
                Instant::now() < deadline,
                "the simulated hour did not finish: minute {minute}, {} of {due} jobs",
                stream_messages(&js, subjects::JOBS_STREAM).await?,
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let cpu = cpu_seconds() - cpu_before;
    let wall_s = wall.elapsed().as_secs_f64();
    shutdown.cancel();
    let _ = scheduler.await;
    println!(
        "simulated hour: {expected} jobs from {n} sources with varied schedules: scheduler CPU {cpu:.2} s ({:.0} µs per job), wall {wall_s:.2} s",
        cpu * 1e6 / expected as f64
    );
    println!(
        "memory: peak RSS of the scheduler process {:.1} MiB",
        peak_rss_mib()
    );
    Ok(())
}
