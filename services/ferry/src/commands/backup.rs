//! `ferry backup now`: publish a job request, optionally wait for its outcome.
//! A writing command: it publishes on core NATS and needs no stream declared.

use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;
use ferry_proto::Message;
use ferry_proto::request::RequestMode;
use ferry_proto::subjects::{self, EventKind};
use ferry_proto::v1::{BackupFailed, BackupUploaded, Stage};
use ferry_runtime::Config;
use ferry_runtime::process::EXIT_FAILURE;
use ferry_scheduler::{ManualReply, ManualRequest, RequestPriority};
use futures::StreamExt;

/// `ferry backup …`
#[derive(Subcommand)]
pub enum BackupCommand {
    /// Publish a job for a source now.
    Now {
        /// The source to back up.
        #[arg(long)]
        source: String,
        /// Wait for the outcome; exit 0 only when the backup is stored.
        #[arg(long)]
        wait: bool,
        /// Longest wait, e.g. 30m (default: the source's timeout plus 5 minutes).
        #[arg(long, value_parser = humantime::parse_duration)]
        timeout: Option<Duration>,
        /// Take the dumpers' express lane, ahead of queued scheduled jobs.
        #[arg(long)]
        urgent: bool,
        /// PostgreSQL: `logical` (a pg_dump) or `physical` (a base backup) this
        /// once (default: the source's `mode`).
        #[arg(long, value_parser = ["logical", "physical"])]
        mode: Option<String>,
    },
}

/// Runs `ferry backup now`: the backup id on stdout when it is stored (with
/// `--wait`), exit 1 when it failed.
pub async fn run(config: &Config, command: BackupCommand) -> anyhow::Result<ExitCode> {
    let BackupCommand::Now {
        source,
        wait,
        timeout,
        urgent,
        mode,
    } = command;
    let mode = mode.map(|m| match m.as_str() {
        "physical" => RequestMode::Physical,
        _ => RequestMode::Logical,
    });
    let client = ferry_runtime::nats::connect(&config.nats, "ferry-cli").await?;
    let wait = wait.then(|| {
        timeout.unwrap_or_else(|| {
            config
                .source(&source)
                .map(|s| s.timeout)
                .unwrap_or(Duration::from_secs(7200))
                + Duration::from_secs(300)
        })
    });
    let priority = if urgent {
        RequestPriority::High
    } else {
        RequestPriority::Normal
    };
    Ok(
        match now_with(&client, &source, priority, mode, wait).await? {
            Outcome::Queued { job_id, backup_id } => {
                println!("queued job {job_id}: backup {backup_id}");
                ExitCode::SUCCESS
            }
            Outcome::Succeeded(up) => {
                println!("{}", up.backup_id);
                eprintln!(
                    "backed up {}: {} files, {} bytes ({} reused) in {:.1}s",
                    up.source,
                    up.files,
                    up.bytes_total,
                    up.bytes_reused,
                    up.duration_ms as f64 / 1000.0
                );
                ExitCode::SUCCESS
            }
            Outcome::Failed(f) => {
                let stage = Stage::try_from(f.stage)
                    .unwrap_or(Stage::Unspecified)
                    .name();
                eprintln!(
                    "backup of {source} failed at the {stage} stage ({}): {}",
                    f.reason, f.message
                );
                ExitCode::from(EXIT_FAILURE)
            }
        },
    )
}

/// How a job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Accepted; not waited for.
    Queued {
        /// The job id.
        job_id: String,
        /// The backup id it will produce.
        backup_id: String,
    },
    /// Stored and committed.
    Succeeded(BackupUploaded),
    /// A stage failed it, or the scheduler refused it.
    Failed(BackupFailed),
}

/// Asks the scheduler for a backup of `source`; with `wait`, follows the job's
/// events until it is stored or fails, for at most that long.
pub async fn now(
    client: &async_nats::Client,
    source: &str,
    wait: Option<Duration>,
) -> anyhow::Result<Outcome> {
    now_with(client, source, RequestPriority::Normal, None, wait).await
}

/// `now` with a priority (`High` takes the dumpers' express lane).
pub async fn now_with(
    client: &async_nats::Client,
    source: &str,
    priority: RequestPriority,
    mode: Option<RequestMode>,
    wait: Option<Duration>,
) -> anyhow::Result<Outcome> {
    let job_id = uuid::Uuid::now_v7().to_string();
    // Subscribe before asking, so no event of the job can be missed.
    let mut events = client
        .subscribe(format!(
            "ferry.v1.events.*.{}",
            subjects::source_token(source)
        ))
        .await?;
    let request = ManualRequest {
        source: source.to_string(),
        job_id: Some(job_id.clone()),
        reason: Some("ferry backup now".into()),
        priority: Some(priority),
        mode,
        ..Default::default()
    };
    let body: bytes::Bytes = serde_json::to_vec(&request)?.into();
    // A scheduler that is starting (`ferry up` a moment ago) has not subscribed yet:
    // give it a few seconds before saying none runs. The request carries our job id,
    // so asking twice cannot make two jobs.
    let mut attempts = 0;
    let reply = loop {
        match client.request(subjects::JOB_REQUEST, body.clone()).await {
            Ok(reply) => break reply,
            Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders && attempts < 20 => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders => anyhow::bail!(
                "no scheduler is running: start `ferry up` (or ferry-scheduler) against the same NATS"
            ),
            Err(e) => anyhow::bail!("the job request got no answer: {e}"),
        }
    };
    let reply: ManualReply = serde_json::from_slice(&reply.payload)
        .map_err(|e| anyhow::anyhow!("the scheduler's reply is not understood: {e}"))?;
    if !reply.ok {
        return Ok(Outcome::Failed(BackupFailed {
            job_id: reply.job_id,
            source: source.to_string(),
            stage: Stage::Scheduler as i32,
            reason: reply.reason.unwrap_or_default(),
            message: reply.message.unwrap_or_default(),
            attempt: 1,
            r#final: true,
            ..Default::default()
        }));
    }
    let backup_id = reply.backup_id.unwrap_or_default();
    let Some(wait) = wait else {
        return Ok(Outcome::Queued { job_id, backup_id });
    };
    let follow = async {
        while let Some(message) = events.next().await {
            match EventKind::of_subject(&message.subject) {
                Some(EventKind::Uploaded) => {
                    let up = BackupUploaded::decode(message.payload.as_ref())?;
                    if up.job_id == job_id {
                        return Ok(Outcome::Succeeded(up));
                    }
                }
                Some(EventKind::Failed) => {
                    let failed = BackupFailed::decode(message.payload.as_ref())?;
                    if failed.job_id == job_id && failed.r#final {
                        return Ok(Outcome::Failed(failed));
                    }
                }
                _ => {}
            }
        }
        anyhow::bail!("the NATS connection closed before the job ended")
    };
    tokio::time::timeout(wait, follow).await.map_err(|_| {
        anyhow::anyhow!(
            "job {job_id} did not finish within {}s; it may still be running (see `ferry list`)",
            wait.as_secs()
        )
    })?
}
