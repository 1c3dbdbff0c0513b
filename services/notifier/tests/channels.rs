//! Every channel against real receivers: HTTP servers on loopback for Discord, Slack
//! and webhooks, the SMTP sink for email, and a real nats-server carrying the events.

use std::time::Duration;

use ferry_proto::subjects::EventKind;
use ferry_proto::v1::{BackupFailed, BackupUploaded, Engine, Stage};
use ferry_runtime::{Config, Outgoing, Runtime};
use ferry_testkit::{
    HttpReceiver, NatsServer, ReceivedRequest, Reply, SmtpSink, Source, TestConfig, wait_until,
};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(30);

#[path = "channels/consumers.rs"]
mod consumers;

struct Env {
    _nats: Option<NatsServer>,
    rt: Runtime,
    shutdown: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Drop for Env {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn start(channels: &str) -> Env {
    let nats = NatsServer::start().await;
    let mut env = start_on(&nats, channels).await;
    env._nats = Some(nats);
    env
}

/// The notifier with `channels` on an existing nats-server, once every channel's
/// consumer exists: a channel starts with the events published after that.
async fn start_on(nats: &NatsServer, channels: &str) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let base = TestConfig::new()
        .nats(nats.url())
        .set(
            "storage",
            "path",
            dir.path().join("store").display().to_string(),
        )
        .retry("100ms", "3s")
        .set("notifier", "http_timeout", "60s")
        .set("notifier", "max_attempts", 5)
        .set(
            "notifier",
            "trace_url",
            "https://traces.example.com/trace/{trace_id}",
        )
        .source(Source::postgres(
            "orders",
            "postgres://backup@db1.internal/orders",
        ))
        .to_toml();
    // The channels stay TOML text: their keys are what these tests are about.
    let toml = format!("{base}\n{channels}\n");
    let config = Config::from_toml(&toml).unwrap_or_else(|e| panic!("{e}\n{toml}"));
    let rt = Runtime::with_client(config, nats.client().await)
        .await
        .unwrap();
    let shutdown = CancellationToken::new();
    tokio::spawn(ferry_notifier::run(rt.clone(), shutdown.clone()));
    let stream = rt
        .jetstream
        .get_stream(ferry_proto::subjects::EVENTS_STREAM)
        .await
        .unwrap();
    for channel in ferry_notifier::open_all(&rt).await.unwrap() {
        if channel.kinds().is_empty() {
            continue;
        }
        let durable = ferry_runtime::Handler::consumer(&channel).durable;
        wait_until(&format!("consumer {durable}"), WAIT, || async {
            stream.consumer_info(&durable).await.ok()
        })
        .await;
    }
    Env {
        _nats: None,
        rt,
        shutdown,
        _dir: dir,
    }
}

fn failure(job: &str, reason: &str) -> BackupFailed {
    BackupFailed {
        job_id: job.into(),
        source: "orders".into(),
        occurred_at: Some(ferry_proto::now()),
        stage: Stage::Dumper as i32,
        reason: reason.into(),
        message: format!("pg_dump of orders/orders failed: {reason}; check the source"),
        attempt: 1,
        r#final: true,
        backup_id: format!("20261121T020000Z-{job}"),
    }
}

fn success(job: &str) -> BackupUploaded {
    BackupUploaded {
        job_id: job.into(),
        source: "orders".into(),
        occurred_at: Some(ferry_proto::now()),
        backup_id: format!("20261121T030000Z-{job}"),
        engine: Engine::Postgres as i32,
        manifest_key: format!("backups/orders/20261121T030000Z-{job}.json"),
        files: 12,
        bytes_total: 50 * 1024 * 1024,
        bytes_uploaded: 5 * 1024 * 1024,
        bytes_reused: 45 * 1024 * 1024,
        duration_ms: 8300,
        databases: vec!["orders".into()],
    }
}

async fn publish(env: &Env, kind: EventKind, message: &impl prost::Message, msg_id: &str) {
    env.rt
        .publisher
        .publish(&Outgoing::event(kind, "orders", message, msg_id.into()))
        .await
        .unwrap();
}

async fn requests(receiver: &HttpReceiver, n: usize) -> Vec<ReceivedRequest> {
    wait_until(&format!("{n} requests"), WAIT, || async {
        let got = receiver.requests();
        (got.len() >= n).then_some(got)
    })
    .await
}

fn unique_address(tag: &str) -> String {
    format!(
        "{}@example.com",
        ferry_testkit::unique_name(tag).replace('_', "-")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_channel_says_what_failed_collapses_repeats_and_announces_recovery() {
    let discord = HttpReceiver::start().await;
    let slack = HttpReceiver::start().await;
    let webhook = HttpReceiver::start().await;
    let picky = HttpReceiver::start().await;
    let smtp = SmtpSink::from_env();
    let (oncall, dba) = (unique_address("oncall"), unique_address("dba"));
    let secrets = tempfile::tempdir().unwrap();
    let (hmac_file, smtp_file) = (secrets.path().join("hmac"), secrets.path().join("smtp"));
    std::fs::write(&hmac_file, "s3cret-for-hmac\n").unwrap();
    std::fs::write(&smtp_file, "mail-password").unwrap();
    let env = start(&format!(
        r#"
[[notify]]
kind = "discord"
url = "{discord}"
on = ["failed", "succeeded", "digest"]

[[notify]]
kind = "slack"
url = "{slack}"
on = ["failed", "succeeded", "digest"]

[[notify]]
kind = "webhook"
name = "pager"
url = "{webhook}"
secret_file = "{hmac_file}"
on = ["failed", "succeeded", "digest"]

[[notify]]
kind = "email"
smtp_url = "smtp://{smtp_addr}"
username = "ferry-mailer"
password_file = "{smtp_file}"
from = "ferry@example.com"
to = ["{oncall}", "{dba}"]
on = ["failed", "succeeded", "digest"]

[[notify]]
kind = "webhook"
name = "picky"
url = "{picky}"
sources = ["ord*"]
min_severity = "error"
"#,
        discord = discord.url("/discord"),
        slack = slack.url("/slack"),
        webhook = webhook.url("/hook"),
        picky = picky.url("/picky"),
        smtp_addr = smtp.addr,
        hmac_file = hmac_file.display(),
        smtp_file = smtp_file.display(),
    ))
    .await;

    // A refused request (a warning) first: the picky channel wants errors only.
    let mut refused = failure("j0", "unknown_source");
    refused.stage = Stage::Scheduler as i32;
    publish(&env, EventKind::Failed, &refused, "j0/failed").await;
    publish(
        &env,
        EventKind::Failed,
        &failure("j1", "auth_failed"),
        "j1/failed",
    )
    .await;
    publish(
        &env,
        EventKind::Failed,
        &failure("j2", "auth_failed"),
        "j2/failed",
    )
    .await;
    publish(&env, EventKind::Uploaded, &success("j3"), "j3/uploaded").await;

    // Discord: an embed with the facts as fields.
    let d = requests(&discord, 3).await;
    let first = d[1].json();
    let embed = &first["embeds"][0];
    assert_eq!(embed["title"], "Backup of orders failed");
    assert_eq!(embed["color"], 0xE01E5A);
    let field = |e: &serde_json::Value, name: &str| {
        e["fields"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == name)
            .map(|f| f["value"].as_str().unwrap().to_string())
    };
    assert_eq!(field(embed, "Reason").as_deref(), Some("auth_failed"));
    assert_eq!(field(embed, "Stage").as_deref(), Some("dumper"));
    assert_eq!(field(embed, "Engine").as_deref(), Some("postgres"));
    assert_eq!(field(embed, "Databases").as_deref(), Some("orders"));
    assert_eq!(
        field(embed, "Backup").as_deref(),
        Some("20261121T020000Z-j1")
    );
    assert!(
        embed["description"]
            .as_str()
            .unwrap()
            .contains("check the source")
    );
    // The second auth failure was collapsed; the next message is the recovery.
    let recovery = &d[2].json()["embeds"][0];
    assert_eq!(recovery["title"], "Backups of orders recovered");
    assert_eq!(field(recovery, "Failures").as_deref(), Some("2"));
    assert_eq!(
        field(recovery, "Last reason").as_deref(),
        Some("auth_failed")
    );

    // Slack: header, summary and mrkdwn fields.
    let s = requests(&slack, 3).await;
    let body = s[1].json();
    assert_eq!(body["blocks"][0]["text"]["text"], "Backup of orders failed");
    let text = body.to_string();
    assert!(text.contains("*Reason*\\nauth_failed"), "{text}");
    assert!(
        body["text"]
            .as_str()
            .unwrap()
            .starts_with("Backup of orders failed")
    );
    assert_eq!(
        s[2].json()["blocks"][0]["text"]["text"],
        "Backups of orders recovered"
    );

    // Webhook: the documented body, signed; recovery and success both follow.
    let w = requests(&webhook, 4).await;
    for r in &w {
        let sig = r
            .headers
            .get("x-ferry-signature")
            .expect("signed")
            .to_str()
            .unwrap();
        assert_eq!(
            sig,
            ferry_notifier::signature("s3cret-for-hmac", &r.body),
            "the signature verifies"
        );
    }
    let kinds: Vec<String> = w
        .iter()
        .map(|r| r.json()["event"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kinds, ["failed", "failed", "recovered", "succeeded"]);
    let failed = w[1].json();
    assert_eq!(failed["reason"], "auth_failed");
    assert_eq!(failed["stage"], "dumper");
    assert_eq!(failed["attempt"], 1);
    assert_eq!(failed["failures"], 1);
    assert_eq!(w[0].json()["severity"], "warning");
    assert_eq!(failed["severity"], "error");
    let recovered = w[2].json();
    assert_eq!(recovered["failures"], 2);
    let succeeded = w[3].json();
    assert_eq!(succeeded["backup_id"], "20261121T030000Z-j3");
    assert_eq!(succeeded["bytes_reused"], 45 * 1024 * 1024);
    assert_eq!(succeeded["reused_share"], 0.9);
    assert_eq!(succeeded["duration_ms"], 8300);

    // The picky channel: the warning was filtered, the error and recovery came.
    let p = requests(&picky, 2).await;
    assert_eq!(p[0].json()["reason"], "auth_failed");
    assert_eq!(p[1].json()["event"], "recovered");

    // Email: both recipients, authenticated, plain text and HTML.
    let mails = wait_until("two emails", WAIT, || async {
        let m = smtp.messages_to(&oncall);
        (m.len() >= 3).then_some(m)
    })
    .await;
    let mail = &mails[1];
    assert_eq!(mail.envelope["auth_login"], "ferry-mailer");
    assert_eq!(mail.envelope["auth_password"], "mail-password");
    let to: Vec<&str> = mail.envelope["rcpt_tos"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert!(to.contains(&oncall.as_str()) && to.contains(&dba.as_str()));
    assert!(
        mail.raw
            .contains("Subject: [ferry] Backup of orders failed"),
        "{}",
        mail.raw
    );
    assert!(mail.raw.contains("text/plain") && mail.raw.contains("text/html"));
    assert!(mail.raw.contains("auth_failed"));
    assert!(
        mails[2]
            .raw
            .contains("Subject: [ferry] Backups of orders recovered")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_digest_summarises_the_period() {
    let webhook = HttpReceiver::start().await;
    let smtp = SmtpSink::from_env();
    let to = unique_address("digest");
    let env = start(&format!(
        r#"
[[notify]]
kind = "webhook"
url = "{}"
on = ["digest"]

[[notify]]
kind = "email"
smtp_url = "smtp://{}"
from = "ferry@example.com"
to = ["{to}"]
on = ["digest"]
"#,
        webhook.url("/digest"),
        smtp.addr
    ))
    .await;
    let store = ferry_runtime::store::open(&env.rt.config.storage).unwrap();
    for id in ["20261101T020000Z-aaaaaaaa", "20261120T020000Z-bbbbbbbb"] {
        store
            .put(
                &format!("backups/orders/{id}.json"),
                Box::new(std::io::Cursor::new(b"{}".to_vec())),
            )
            .await
            .unwrap();
    }
    let start_at = chrono::Utc::now() - chrono::Duration::hours(1);
    publish(
        &env,
        EventKind::Failed,
        &failure("d1", "timeout"),
        "d1/failed",
    )
    .await;
    let mut slow = success("d2");
    slow.duration_ms = 61_000;
    publish(&env, EventKind::Uploaded, &slow, "d2/uploaded").await;
    publish(&env, EventKind::Uploaded, &success("d3"), "d3/uploaded").await;
    let end_at = chrono::Utc::now() + chrono::Duration::seconds(1);

    let channels = ferry_notifier::open_all(&env.rt).await.unwrap();
    for channel in &channels {
        assert!(
            ferry_notifier::send_digest(channel, start_at, end_at)
                .await
                .unwrap()
        );
        // Once per period, however many replicas try.
        assert!(
            !ferry_notifier::send_digest(channel, start_at, end_at)
                .await
                .unwrap()
        );
    }
    let body = requests(&webhook, 1).await[0].json();
    assert_eq!(body["event"], "digest");
    assert_eq!(
        (body["succeeded"].as_u64(), body["failed"].as_u64()),
        (Some(2), Some(1))
    );
    let orders = &body["sources"][0];
    assert_eq!(orders["source"], "orders");
    assert_eq!(orders["oldest_backup"], "20261101T020000Z-aaaaaaaa");
    assert_eq!(orders["newest_backup"], "20261120T020000Z-bbbbbbbb");
    assert!((orders["success_rate"].as_f64().unwrap() - 2.0 / 3.0).abs() < 1e-9);
    assert_eq!(orders["bytes_total"], 2 * 50 * 1024 * 1024);
    assert_eq!(body["slowest"][0]["backup_id"], "20261121T030000Z-d2");
    let mail = wait_until("the digest email", WAIT, || async {
        smtp.messages_to(&to).into_iter().next()
    })
    .await;
    assert!(
        mail.raw.contains("Subject: [ferry] Ferry digest"),
        "{}",
        mail.raw
    );
    assert!(
        mail.raw
            .contains("2 backups stored, 1 failed (success rate 67%)"),
        "{}",
        mail.raw
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_and_failing_receivers_are_retried_and_a_dead_channel_delays_no_other() {
    let throttled = HttpReceiver::start_scripted(
        vec![Reply::Status(429, Some("1")), Reply::Status(503, None)],
        None,
    )
    .await;
    let dead = HttpReceiver::start_scripted(Vec::new(), Some(Reply::Hang)).await;
    let healthy = HttpReceiver::start().await;
    let env = start(&format!(
        "[[notify]]\nkind = \"webhook\"\nname = \"throttled\"\nurl = \"{}\"\n\n[[notify]]\nkind = \"webhook\"\nname = \"dead\"\nurl = \"{}\"\n\n[[notify]]\nkind = \"webhook\"\nname = \"healthy\"\nurl = \"{}\"\n",
        throttled.url("/t"),
        dead.url("/d"),
        healthy.url("/h")
    ))
    .await;
    publish(
        &env,
        EventKind::Failed,
        &failure("r1", "unreachable"),
        "r1/failed",
    )
    .await;

    // The dead channel holds its request open for the whole 60 s timeout; the
    // healthy one is told long before that.
    let h = requests(&healthy, 1).await;
    assert_eq!(h[0].json()["reason"], "unreachable");
    assert_eq!(
        dead.requests().len(),
        1,
        "the dead channel is still waiting on its first attempt"
    );

    // 429 with Retry-After: 1, then 503, then success.
    let t = requests(&throttled, 3).await;
    assert!(t.iter().all(|r| r.json()["job_id"] == "r1"));
    assert!(
        t[1].at - t[0].at >= Duration::from_secs(1),
        "Retry-After was honoured"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_event_is_notified_once() {
    let webhook = HttpReceiver::start().await;
    let env = start(&format!(
        "[[notify]]\nkind = \"webhook\"\nurl = \"{}\"\non = [\"succeeded\"]\n",
        webhook.url("/h")
    ))
    .await;
    // The same event twice under different message ids: what a redelivery looks like.
    publish(&env, EventKind::Uploaded, &success("once"), "once/uploaded").await;
    publish(
        &env,
        EventKind::Uploaded,
        &success("once"),
        "once/uploaded-again",
    )
    .await;
    publish(&env, EventKind::Uploaded, &success("next"), "next/uploaded").await;
    let got = requests(&webhook, 2).await;
    let jobs: Vec<String> = got
        .iter()
        .map(|r| r.json()["job_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        jobs,
        ["once", "next"],
        "the repeat was not sent; events keep their order"
    );
}

#[test]
fn invalid_channels_are_refused_naming_the_key() {
    let cases = [
        (
            "kind = \"webhook\"\nurl = \"ftp://example.com/x\"",
            "notify[0].url",
        ),
        (
            "kind = \"slack\"\nurl_env = \"FERRY_TEST_NOT_SET_ANYWHERE\"",
            "notify[0].url_env",
        ),
        (
            "kind = \"webhook\"\nurl = \"https://x.example\"\nsecret_env = \"FERRY_TEST_NOT_SET_ANYWHERE\"",
            "notify[0].secret_env",
        ),
        (
            "kind = \"discord\"\nurl = \"https://x.example\"\non = [\"exploded\"]",
            "exploded",
        ),
        (
            "kind = \"email\"\nsmtp_url = \"smtp://mail.example\"\nfrom = \"ferry@example.com\"",
            "notify[0].to",
        ),
        (
            "kind = \"email\"\nsmtp_url = \"http://mail.example\"\nfrom = \"ferry@example.com\"\nto = [\"a@example.com\"]",
            "notify[0].smtp_url",
        ),
        (
            "kind = \"slack\"\nurl = \"https://x.example\"\nto = [\"a@example.com\"]",
            "notify[0].to",
        ),
        (
            "kind = \"webhook\"\nurl = \"https://x.example\"\non = [\"digest\"]\ndigest_schedule = \"never\"",
            "notify[0].digest_schedule",
        ),
        ("kind = \"pigeon\"\nurl = \"https://x.example\"", "pigeon"),
    ];
    for (channel, key) in cases {
        let err = Config::from_toml_with(
            &format!("[[notify]]\n{channel}\n"),
            ferry_notifier::SERVICE.sections,
        )
        .expect_err(channel)
        .to_string();
        assert!(err.contains(key), "{key} not named for {channel:?}:\n{err}");
    }
}
