//! What each channel's consumer asks the server for: only the kinds of event its
//! rules use, and, for a channel added to a running fleet, only what happens next.

use async_nats::jetstream::consumer::{self, DeliverPolicy};
use ferry_proto::subjects::{self, EventKind};
use ferry_proto::v1::{DumpFile, DumpFileReady};
use ferry_runtime::Outgoing;
use ferry_testkit::{HttpReceiver, wait_until};

use ferry_testkit::NatsServer;

use super::{Env, WAIT, failure, requests, start_on};

/// Publishes a failure of `job` about `source`: a source of its own per failure,
/// so no failure collapses into another's open alert.
async fn fail(env: &Env, job: &str, source: &str) {
    let mut failed = failure(job, "timeout");
    failed.source = source.into();
    env.rt
        .publisher
        .publish(&Outgoing::event(
            EventKind::Failed,
            source,
            &failed,
            format!("{job}/failed"),
        ))
        .await
        .unwrap();
}

async fn file_ready(env: &Env, job: &str) {
    let event = DumpFileReady {
        job_id: job.into(),
        source: "orders".into(),
        file: Some(DumpFile {
            name: "toc.dat.zst".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    env.rt
        .publisher
        .publish(&Outgoing::event(
            EventKind::FileReady,
            "orders",
            &event,
            format!("{job}/file/toc.dat.zst"),
        ))
        .await
        .unwrap();
}

fn jobs(got: &[ferry_testkit::ReceivedRequest]) -> Vec<String> {
    got.iter()
        .map(|r| r.json()["job_id"].as_str().unwrap_or_default().to_string())
        .collect()
}

async fn consumer_info(env: &Env, durable: &str) -> consumer::Info {
    env.rt
        .jetstream
        .get_stream(subjects::EVENTS_STREAM)
        .await
        .unwrap()
        .consumer_info(durable)
        .await
        .unwrap()
}

fn webhook(name: &str, url: &str) -> String {
    format!(
        "[[notify]]\nkind = \"webhook\"\nname = \"{name}\"\nurl = \"{url}\"\non = [\"failed\"]\n\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_added_to_a_running_fleet_sends_nothing_for_old_events() {
    let (old, added) = (HttpReceiver::start().await, HttpReceiver::start().await);
    // The fleet runs with one channel and has history.
    let nats = NatsServer::start().await;
    let first = start_on(&nats, &webhook("old", &old.url("/old"))).await;
    fail(&first, "before-1", "orders").await;
    assert_eq!(jobs(&requests(&old, 1).await), ["before-1"]);
    // The notifier is stopped to be reconfigured; the fleet goes on failing.
    first.shutdown.cancel();
    // Down means no pull request of the stopped notifier is still open on the
    // server: one would take the next event into an inbox nobody reads, and it
    // would come back only after the ack wait (minutes). Its requests expire
    // within seconds.
    wait_until(
        "the stopped notifier's pull requests to expire",
        std::time::Duration::from_secs(60),
        || async {
            (consumer_info(&first, "ferry-notifier-old")
                .await
                .num_waiting
                == 0)
                .then_some(())
        },
    )
    .await;
    fail(&first, "while-down", "billing").await;

    // The same NATS, now with a second channel.
    let env = start_on(
        &nats,
        &format!(
            "{}{}",
            webhook("old", &old.url("/old")),
            webhook("added", &added.url("/added"))
        ),
    )
    .await;
    fail(&env, "after-1", "web").await;

    // The existing channel resumes where it stood (it also gets what happened
    // while it was down); the added one starts with the first new event. A channel
    // handles its events in stream order, one at a time, so had the added channel
    // been given the older ones, it would have sent them before this one.
    assert_eq!(
        jobs(&requests(&old, 3).await),
        ["before-1", "while-down", "after-1"]
    );
    assert_eq!(jobs(&requests(&added, 1).await), ["after-1"]);
    let info = consumer_info(&env, "ferry-notifier-added").await;
    assert_eq!(info.config.deliver_policy, DeliverPolicy::New);
    let info = consumer_info(&env, "ferry-notifier-old").await;
    assert_eq!(
        info.config.deliver_policy,
        DeliverPolicy::New,
        "an existing durable keeps what it was created with"
    );
    fail(&env, "after-2", "shop").await;
    assert_eq!(jobs(&requests(&added, 2).await), ["after-1", "after-2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_receives_only_the_kinds_its_rules_use_and_never_dump_files() {
    let hook = HttpReceiver::start().await;
    // The durable as the previous release declared it: every event, from the start.
    let nats = NatsServer::start().await;
    let env = start_on(&nats, "").await;
    let stream = env
        .rt
        .jetstream
        .get_stream(subjects::EVENTS_STREAM)
        .await
        .unwrap();
    stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some("ferry-notifier-pager".into()),
            filter_subject: subjects::EVENTS_ALL.into(),
            ack_policy: consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .unwrap();
    fail(&env, "queued", "orders").await;
    file_ready(&env, "queued").await;
    env.shutdown.cancel();

    let env = start_on(&nats, &webhook("pager", &hook.url("/h"))).await;
    file_ready(&env, "next").await;
    fail(&env, "next", "billing").await;
    assert_eq!(jobs(&requests(&hook, 2).await), ["queued", "next"]);

    let info = consumer_info(&env, "ferry-notifier-pager").await;
    let mut filters = info.config.filter_subjects.clone();
    filters.sort();
    assert_eq!(
        (info.config.filter_subject.as_str(), filters),
        (
            "",
            vec![
                "ferry.v1.events.failed.*".to_string(),
                "ferry.v1.events.gap.*".to_string(),
                "ferry.v1.events.uploaded.*".to_string()
            ]
        ),
        "the old durable was brought up to the channel's filters"
    );
    assert_eq!(
        info.config.deliver_policy,
        DeliverPolicy::All,
        "and kept its position"
    );
    // Two failures delivered; the two DumpFileReady never were.
    wait_until("both deliveries acknowledged", WAIT, || async {
        let info = consumer_info(&env, "ferry-notifier-pager").await;
        (info.delivered.consumer_sequence == 2 && info.num_ack_pending == 0).then_some(())
    })
    .await;
    assert_eq!(
        consumer_info(&env, "ferry-notifier-pager")
            .await
            .num_pending,
        0
    );
}
