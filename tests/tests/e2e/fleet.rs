//! Fleet behaviour on real NATS: replicas, the live registry, leases, and the
//! scheduler's clock across daylight-saving changes.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use chrono::{DateTime, Utc};
use ferry_proto::Message;
use ferry_proto::subjects::{self, EventKind};
use ferry_proto::v1::{DumpCompleted, JobRequested};
use ferry_runtime::config::SourceConfig;
use ferry_runtime::{Config, Runtime};
use ferry_scheduler::clock::{Clock, ManualClock};
use ferry_testkit::{NatsServer, Source, TestConfig, wait_until};
use tokio_util::sync::CancellationToken;

const STEP: Duration = Duration::from_secs(60);

async fn runtime(nats: &NatsServer, sources: &[Source]) -> Runtime {
    let config = sources
        .iter()
        .cloned()
        .fold(TestConfig::new().nats(nats.url()), TestConfig::source);
    let config = Config::from_toml(&config.to_toml()).unwrap();
    Runtime::with_client(config, nats.client().await)
        .await
        .unwrap()
}

/// Every `requested` event of `source` so far.
async fn requested(js: &jetstream::Context, source: &str) -> Vec<JobRequested> {
    let stream = js.get_stream(subjects::EVENTS_STREAM).await.unwrap();
    let mut consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            filter_subject: EventKind::Requested.subject(source),
            ..Default::default()
        })
        .await
        .unwrap();
    let pending = consumer.info().await.unwrap().num_pending;
    let mut out = Vec::new();
    if pending == 0 {
        return out;
    }
    let mut messages = consumer.messages().await.unwrap();
    use futures::StreamExt;
    while let Some(m) = messages.next().await {
        let m = m.unwrap();
        out.push(JobRequested::decode(m.payload.as_ref()).unwrap());
        if m.info().unwrap().pending == 0 {
            break;
        }
    }
    out
}

/// A source that is never dumped here: only its schedule matters.
fn scheduled(name: &str, schedule: &str, tz: &str) -> Source {
    Source::postgres(name, &format!("postgres://backup@db.internal/{name}"))
        .schedule(schedule)
        .timezone(tz)
}

fn source(name: &str, schedule: &str, tz: &str) -> SourceConfig {
    Config::from_toml(
        &TestConfig::new()
            .source(scheduled(name, schedule, tz))
            .to_toml(),
    )
    .unwrap()
    .sources
    .remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_scheduler_replicas_publish_one_job_per_instant() {
    let nats = NatsServer::start().await;
    let sources = [scheduled("every-second", "* * * * * *", "UTC")];
    let shutdown = CancellationToken::new();
    let mut schedulers = Vec::new();
    for _ in 0..3 {
        // Three processes' worth of schedulers: separate connections and runtimes.
        let rt = runtime(&nats, &sources).await;
        schedulers.push(tokio::spawn(ferry_scheduler::run(rt, shutdown.clone())));
    }
    let js = jetstream::new(nats.client().await);
    wait_until("six instants to fire", STEP, || async {
        (requested(&js, "every-second").await.len() >= 6).then_some(())
    })
    .await;
    shutdown.cancel();
    // Stopped: nothing is published any more, so the count below is final.
    for scheduler in schedulers {
        scheduler.await.unwrap().unwrap();
    }
    let jobs = requested(&js, "every-second").await;
    let instants: std::collections::BTreeSet<_> = jobs
        .iter()
        .map(|j| j.scheduled_for.unwrap().seconds)
        .collect();
    assert_eq!(instants.len(), jobs.len(), "one job per instant, never two");
    // The work queue holds the same jobs, once each.
    let mut stream = js.get_stream(subjects::JOBS_STREAM).await.unwrap();
    assert_eq!(
        stream.info().await.unwrap().state.messages,
        jobs.len() as u64
    );
    let ids: std::collections::BTreeSet<_> = jobs.iter().map(|j| j.job_id.clone()).collect();
    assert_eq!(ids.len(), jobs.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sources_added_paused_and_removed_in_the_registry_apply_without_restart() {
    let nats = NatsServer::start().await;
    let rt = runtime(&nats, &[]).await;
    let shutdown = CancellationToken::new();
    tokio::spawn(ferry_scheduler::run(rt.clone(), shutdown.clone()));
    let js = jetstream::new(nats.client().await);
    assert!(requested(&js, "live").await.is_empty());

    // Another process (the CLI) edits the registry.
    let cli = runtime(&nats, &[]).await;
    cli.sources
        .add(&source("live", "* * * * * *", "UTC"))
        .await
        .unwrap();
    wait_until("a job for the new source", STEP, || async {
        (!requested(&js, "live").await.is_empty()).then_some(())
    })
    .await;

    cli.sources.set_paused("live", true).await.unwrap();
    wait_until("the scheduler to see the pause", STEP, || async {
        rt.sources.is_paused("live").then_some(())
    })
    .await;
    let at_pause = requested(&js, "live").await.len();
    // A real gap on purpose: with an every-second schedule, 2.5 s of silence shows
    // the pause holds (there is no event to wait for when nothing happens).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        requested(&js, "live").await.len() <= at_pause + 1,
        "paused: no new jobs (one may have been in flight)"
    );

    cli.sources.set_paused("live", false).await.unwrap();
    let resumed_from = requested(&js, "live").await.len();
    wait_until("jobs again after resume", STEP, || async {
        (requested(&js, "live").await.len() > resumed_from).then_some(())
    })
    .await;

    cli.sources.remove("live").await.unwrap();
    wait_until("the scheduler to see the removal", STEP, || async {
        rt.sources.get("live").is_none().then_some(())
    })
    .await;
    let at_removal = requested(&js, "live").await.len();
    // A real gap on purpose, as for the pause above.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        requested(&js, "live").await.len() <= at_removal + 1,
        "removed: no new jobs"
    );

    // An invalid source is refused with every problem named, and nothing is stored.
    let mut bad = source("bad", "* * * * * *", "UTC");
    bad.schedule = Some("61 * * * *".into());
    bad.timezone = "Mars/Olympus".into();
    let err = cli.sources.add(&bad).await.unwrap_err().to_string();
    assert!(
        err.contains("schedule") && err.contains("timezone"),
        "{err}"
    );
    assert!(rt.sources.get("bad").is_none());
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_0230_schedule_fires_once_on_both_daylight_saving_days_with_a_manual_clock() {
    let nats = NatsServer::start().await;
    let rt = runtime(&nats, &[scheduled("berlin", "30 2 * * *", "Europe/Berlin")]).await;
    let start: DateTime<Utc> = "2026-03-28T12:00:00Z".parse().unwrap();
    let clock = Arc::new(ManualClock::new(start));
    let shutdown = CancellationToken::new();
    tokio::spawn(ferry_scheduler::run_with_clock(
        rt,
        clock.clone() as Arc<dyn Clock>,
        shutdown.clone(),
    ));
    let js = jetstream::new(nats.client().await);
    let fired = |n: usize| {
        let js = js.clone();
        async move {
            wait_until(&format!("{n} jobs"), STEP, || async {
                let jobs = requested(&js, "berlin").await;
                (jobs.len() >= n).then_some(jobs)
            })
            .await
        }
    };
    // Walk the clock through both changes an hour at a time, jumping over the
    // summer in one step (a suspended machine): the jump runs one job for the
    // latest missed instant, not one per missed day. Each step waits until the
    // scheduler has handled it, so no step is seen as a jump of several hours.
    let caught_up = |clock: Arc<ManualClock>| async move {
        wait_until("the scheduler to handle the clock's move", STEP, || async {
            clock.caught_up().then_some(())
        })
        .await
    };
    let walk = |from: DateTime<Utc>, to: &str| {
        let clock = clock.clone();
        let to: DateTime<Utc> = to.parse().unwrap();
        async move {
            let mut t = from;
            while t < to {
                t += chrono::Duration::hours(1);
                clock.set(t);
                caught_up(clock.clone()).await;
            }
            t
        }
    };
    caught_up(clock.clone()).await;
    walk(start, "2026-03-30T12:00:00Z").await;
    fired(2).await;
    let after_summer: DateTime<Utc> = "2026-10-24T12:00:00Z".parse().unwrap();
    clock.set(after_summer);
    fired(3).await;
    walk(after_summer, "2026-10-26T12:00:00Z").await;
    fired(5).await;
    // Caught up after the last step: every job due has been published.
    caught_up(clock.clone()).await;
    let instants: Vec<String> = requested(&js, "berlin")
        .await
        .iter()
        .map(|j| {
            ferry_proto::from_timestamp(j.scheduled_for.as_ref().unwrap())
                .unwrap()
                .to_rfc3339()
        })
        .collect();
    assert_eq!(
        instants,
        [
            "2026-03-29T01:00:00+00:00", // 02:30 does not exist: once, at 03:00 CEST
            "2026-03-30T00:30:00+00:00",
            "2026-10-24T00:30:00+00:00", // after the jump: once, for the latest instant
            "2026-10-25T00:30:00+00:00", // 02:30 happens twice: once
            "2026-10-26T01:30:00+00:00",
        ]
    );
    shutdown.cancel();
}

/// A pg_dump that holds its job until the test lets it go: each dump (not
/// `--version`) appends a line to `started` in `dir`, then waits for `release` there
/// before running the real one, so the test decides when two jobs overlap.
fn held_pg_dump(dir: &std::path::Path, real: &std::path::Path) -> std::path::PathBuf {
    let bin = dir.join("held-bin");
    std::fs::create_dir_all(&bin).unwrap();
    let script = bin.join("pg_dump");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\ncase \"$1\" in --version) ;; *) echo started >> '{dir}/started'; while [ ! -e '{dir}/release' ]; do sleep 0.05; done ;; esac\nexec {real} \"$@\"\n",
            dir = dir.display(),
            real = real.join("pg_dump").display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

/// How many dumps the held pg_dump has started.
fn dumps_started(dir: &std::path::Path) -> usize {
    std::fs::read_to_string(dir.join("started"))
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

/// Jobs the dumpers hold (delivered, not yet acknowledged), over both lanes.
async fn jobs_in_dumpers(js: &jetstream::Context) -> i64 {
    let stream = js.get_stream(subjects::JOBS_STREAM).await.unwrap();
    let mut held = 0;
    for durable in ["ferry-dumper", "ferry-dumper-high"] {
        if let Ok(mut consumer) = stream
            .get_consumer::<jetstream::consumer::pull::Config>(durable)
            .await
        {
            held += consumer.info().await.unwrap().num_ack_pending as i64;
        }
    }
    held
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_jobs_for_one_source_never_dump_at_the_same_time() {
    let pg = ferry_testkit::PgCluster::from_env();
    let scratch = tempfile::tempdir().unwrap();
    let held = held_pg_dump(scratch.path(), &pg.bin_dir);
    let release = scratch.path().join("release");
    let mut env = ferry_e2e::TestEnv::start("CREATE TABLE t (id int);", |p, c| {
        c.pg_bin_dir(&held)
            .postgres_source("skipper", &p.db_url, &p.password_file)
            .source(
                Source::postgres("queuer", &p.db_url)
                    .password_file(&p.password_file)
                    .set("on_overlap", "queue"),
            )
    })
    .await;
    let client = env.client.clone();
    let js = jetstream::new(client.clone());
    // skip: a second job while the first dumps (holding the lease) ends as
    // already_running; then the first is let go.
    let (a, b) = tokio::join!(ferry::backup::now(&client, "skipper", Some(STEP)), async {
        wait_until("the first dump to start", STEP, || async {
            (dumps_started(scratch.path()) == 1).then_some(())
        })
        .await;
        let b = ferry::backup::now(&client, "skipper", Some(STEP)).await;
        std::fs::write(&release, "").unwrap();
        b
    });
    assert!(matches!(a.unwrap(), ferry::backup::Outcome::Succeeded(_)));
    let ferry::backup::Outcome::Failed(skipped) = b.unwrap() else {
        panic!("the overlapping job must be skipped")
    };
    assert_eq!(skipped.reason, ferry_proto::reason::ALREADY_RUNNING);
    assert!(
        skipped.message.contains("already running"),
        "{}",
        skipped.message
    );

    // queue: a second job that reaches a dumper while the first dumps waits for
    // the lease; both succeed, one after the other.
    std::fs::remove_file(&release).unwrap();
    let before = dumps_started(scratch.path());
    let (a, b) = tokio::join!(ferry::backup::now(&client, "queuer", Some(STEP)), async {
        wait_until("the first queued dump to start", STEP, || async {
            (dumps_started(scratch.path()) > before).then_some(())
        })
        .await;
        let (b, ()) = tokio::join!(ferry::backup::now(&client, "queuer", Some(STEP)), async {
            wait_until("a dumper to hold both jobs", STEP, || async {
                (jobs_in_dumpers(&js).await >= 2).then_some(())
            })
            .await;
            std::fs::write(&release, "").unwrap();
        });
        b
    });
    let (ferry::backup::Outcome::Succeeded(a), ferry::backup::Outcome::Succeeded(b)) =
        (a.unwrap(), b.unwrap())
    else {
        panic!("both queued jobs succeed")
    };
    let dumps: Vec<DumpCompleted> = futures::future::join_all([&a.job_id, &b.job_id].map(|job| {
        let job = job.clone();
        let env = &env;
        async move {
            env.event(
                EventKind::Dumped,
                "queuer",
                STEP,
                move |d: &DumpCompleted| d.job_id == job,
            )
            .await
        }
    }))
    .await;
    let span = |d: &DumpCompleted| {
        let start = ferry_proto::from_timestamp(d.started_at.as_ref().unwrap()).unwrap();
        (
            start,
            start + chrono::Duration::milliseconds(d.duration_ms as i64),
        )
    };
    let (first, second) = (span(&dumps[0]), span(&dumps[1]));
    assert!(
        first.1 <= second.0 || second.1 <= first.0,
        "the dumps did not overlap: {first:?} {second:?}"
    );
    env.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_dumpers_lease_expires_and_the_next_job_runs() {
    let env = ferry_e2e::TestEnv::start("CREATE TABLE t (id int);", |p, c| {
        c.source(
            Source::postgres("orphaned", &p.db_url)
                .password_file(&p.password_file)
                .set("on_overlap", "queue"),
        )
    })
    .await;
    // What a dumper that died mid-job leaves behind: its lease, never renewed.
    let js = jetstream::new(env.client.clone());
    let locks = js.get_key_value(subjects::LOCKS_BUCKET).await.unwrap();
    locks
        .create(
            "orphaned",
            br#"{"job_id":"dead-job","node":"crashed-host","since":"2026-11-21T00:00:00Z"}"#
                .as_slice()
                .into(),
        )
        .await
        .unwrap();
    let outcome = ferry::backup::now(&env.client, "orphaned", Some(STEP))
        .await
        .unwrap();
    assert!(
        matches!(outcome, ferry::backup::Outcome::Succeeded(_)),
        "{outcome:?}"
    );
}
