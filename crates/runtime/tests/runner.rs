//! The runner against a real nats-server: progress acks keep long work from being
//! redelivered, retryable errors are retried, permanent ones are reported once,
//! shutdown lets in-flight work finish, and work that outlives the grace period is
//! cancelled and redelivered.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_proto::Message;
use ferry_proto::subjects::{self, EventKind};
use ferry_proto::v1::{BackupFailed, JobRequested, Stage};
use ferry_runtime::runner::{self, RunnerOptions};
use ferry_runtime::{
    Config, ConsumerSpec, Deliver, Handler, HandlerError, JobContext, Outgoing, Runtime,
};
use ferry_testkit::{NatsServer, TestConfig, wait_until};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

/// What the test handler does with each job, chosen by the job's `reason` field.
#[derive(Default)]
struct Scripted {
    calls: AtomicU32,
    finished: AtomicU32,
}

impl Handler for Scripted {
    type Input = JobRequested;
    const STAGE: Stage = Stage::Dumper;

    fn consumer(&self) -> ConsumerSpec {
        ConsumerSpec {
            stream: subjects::JOBS_STREAM,
            durable: "runner-test".into(),
            filters: vec![subjects::JOB_DUMP.into()],
            deliver: Deliver::All,
            ack_wait: Duration::from_secs(1),
            max_deliver: 3,
        }
    }

    fn decode(
        &self,
        _subject: &str,
        payload: &[u8],
    ) -> Result<Option<JobRequested>, prost::DecodeError> {
        JobRequested::decode(payload).map(Some)
    }

    async fn handle(
        &self,
        job: JobRequested,
        _ctx: JobContext,
    ) -> Result<Vec<Outgoing>, HandlerError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let result = match job.reason.as_str() {
            // Three times the ack wait: only progress acks prevent a redelivery.
            "slow" => {
                tokio::time::sleep(Duration::from_secs(3)).await;
                Ok(vec![])
            }
            "flaky" => Err(HandlerError::retryable(
                "unreachable",
                "the database is down",
            )),
            "broken" => Err(HandlerError::permanent("auth_failed", "wrong password")),
            _ => Ok(vec![]),
        };
        self.finished.fetch_add(1, Ordering::SeqCst);
        result
    }
}

async fn setup(nats: &NatsServer) -> Runtime {
    let config = Config::from_toml(&TestConfig::new().nats(nats.url()).to_toml()).unwrap();
    Runtime::with_client(config, nats.client().await)
        .await
        .unwrap()
}

fn options() -> RunnerOptions {
    RunnerOptions {
        concurrency: 2,
        grace: Duration::from_secs(10),
        base_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(200),
    }
}

async fn publish(rt: &Runtime, job_id: &str, reason: &str) {
    let job = JobRequested {
        job_id: job_id.into(),
        source: "s".into(),
        reason: reason.into(),
        ..Default::default()
    };
    rt.publisher
        .publish(&Outgoing {
            subject: subjects::JOB_DUMP.into(),
            payload: job.encode_to_vec().into(),
            msg_id: job_id.into(),
        })
        .await
        .unwrap();
}

fn start(
    rt: &Runtime,
    handler: Arc<Scripted>,
    shutdown: &CancellationToken,
) -> tokio::task::JoinHandle<()> {
    start_with(rt, handler, options(), shutdown)
}

fn start_with<H: Handler>(
    rt: &Runtime,
    handler: Arc<H>,
    options: RunnerOptions,
    shutdown: &CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let (rt, shutdown) = (rt.clone(), shutdown.clone());
    tokio::spawn(async move {
        runner::run(
            handler,
            rt.jetstream.clone(),
            rt.publisher.clone(),
            rt.metrics.clone(),
            options,
            shutdown,
        )
        .await
        .unwrap()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_work_is_not_redelivered_and_failures_are_reported_once() {
    let nats = NatsServer::start().await;
    let rt = setup(&nats).await;
    let mut failures = nats
        .client()
        .await
        .subscribe(EventKind::Failed.subject("s"))
        .await
        .unwrap();
    let handler = Arc::new(Scripted::default());
    let shutdown = CancellationToken::new();
    let runner = start(&rt, handler.clone(), &shutdown);

    publish(&rt, "slow", "slow").await;
    wait_until(
        "the slow job to finish",
        Duration::from_secs(20),
        || async { (handler.finished.load(Ordering::SeqCst) == 1).then_some(()) },
    )
    .await;
    assert_eq!(
        handler.calls.load(Ordering::SeqCst),
        1,
        "progress acks prevented a redelivery"
    );

    publish(&rt, "flaky", "flaky").await;
    publish(&rt, "broken", "broken").await;
    let mut reported = Vec::new();
    while reported.len() < 2 {
        let msg = tokio::time::timeout(Duration::from_secs(20), failures.next())
            .await
            .unwrap()
            .unwrap();
        reported.push(BackupFailed::decode(msg.payload.as_ref()).unwrap());
    }
    reported.sort_by(|a, b| a.job_id.cmp(&b.job_id));
    let (broken, flaky) = (&reported[0], &reported[1]);
    assert_eq!(
        (
            broken.job_id.as_str(),
            broken.attempt,
            broken.reason.as_str()
        ),
        ("broken", 1, "auth_failed")
    );
    assert_eq!(
        (flaky.job_id.as_str(), flaky.attempt, flaky.reason.as_str()),
        ("flaky", 3, "unreachable")
    );
    assert!(flaky.message.contains("gave up after 3 attempts"));
    assert!(broken.r#final && flaky.r#final);
    // 1 slow + 3 flaky attempts + 1 broken.
    assert_eq!(handler.calls.load(Ordering::SeqCst), 5);
    assert!(
        tokio::time::timeout(Duration::from_millis(500), failures.next())
            .await
            .is_err(),
        "no further reports"
    );

    shutdown.cancel();
    runner.await.unwrap();
    let metrics = rt.metrics.encode();
    assert!(
        metrics.contains(r#"ferry_messages_handled_total{stage="dumper",outcome="retried"} 2"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"ferry_messages_handled_total{stage="dumper",outcome="failed"} 2"#),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_in_flight_work_finish_and_takes_no_new_work() {
    let nats = NatsServer::start().await;
    let rt = setup(&nats).await;
    let handler = Arc::new(Scripted::default());
    let shutdown = CancellationToken::new();
    let runner = start(&rt, handler.clone(), &shutdown);
    publish(&rt, "in-flight", "slow").await;
    wait_until("the job to start", Duration::from_secs(20), || async {
        (handler.calls.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await;
    shutdown.cancel();
    publish(&rt, "after-shutdown", "fast").await;
    runner.await.unwrap();
    assert_eq!(
        handler.finished.load(Ordering::SeqCst),
        1,
        "the in-flight job finished within the grace period"
    );
    assert_eq!(
        handler.calls.load(Ordering::SeqCst),
        1,
        "nothing new was taken after the signal"
    );
    // The finished job was acked: the work queue holds only the later job.
    let mut stream = rt
        .jetstream
        .get_stream(subjects::JOBS_STREAM)
        .await
        .unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 1);
}

/// A handler whose work never finishes: it keeps its job's cancellation token so the
/// test can see the runner cancel it.
#[derive(Default)]
struct Endless {
    calls: AtomicU32,
    cancels: Mutex<Vec<CancellationToken>>,
}

impl Handler for Endless {
    type Input = JobRequested;
    const STAGE: Stage = Stage::Dumper;

    fn consumer(&self) -> ConsumerSpec {
        Scripted::default().consumer()
    }

    fn decode(
        &self,
        subject: &str,
        payload: &[u8],
    ) -> Result<Option<JobRequested>, prost::DecodeError> {
        Scripted::default().decode(subject, payload)
    }

    async fn handle(
        &self,
        _job: JobRequested,
        ctx: JobContext,
    ) -> Result<Vec<Outgoing>, HandlerError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.cancels.lock().unwrap().push(ctx.cancel);
        std::future::pending().await
    }
}

/// A handler that records each delivery's job and attempt and succeeds.
#[derive(Default)]
struct Recording {
    seen: Mutex<Vec<(String, u32)>>,
}

impl Handler for Recording {
    type Input = JobRequested;
    const STAGE: Stage = Stage::Dumper;

    fn consumer(&self) -> ConsumerSpec {
        Scripted::default().consumer()
    }

    fn decode(
        &self,
        subject: &str,
        payload: &[u8],
    ) -> Result<Option<JobRequested>, prost::DecodeError> {
        Scripted::default().decode(subject, payload)
    }

    async fn handle(
        &self,
        job: JobRequested,
        ctx: JobContext,
    ) -> Result<Vec<Outgoing>, HandlerError> {
        self.seen.lock().unwrap().push((job.job_id, ctx.attempt));
        Ok(vec![])
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_past_the_grace_period_is_cancelled_and_redelivered_not_acked() {
    let nats = NatsServer::start().await;
    let rt = setup(&nats).await;
    let endless = Arc::new(Endless::default());
    let first_shutdown = CancellationToken::new();
    let first = start_with(
        &rt,
        endless.clone(),
        RunnerOptions {
            grace: Duration::from_millis(200),
            ..options()
        },
        &first_shutdown,
    );
    publish(&rt, "endless", "endless").await;
    wait_until("the job to start", Duration::from_secs(20), || async {
        (endless.calls.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await;

    first_shutdown.cancel();
    // The handler never returns: only the grace period ends this run.
    tokio::time::timeout(Duration::from_secs(20), first)
        .await
        .expect("run returns once the grace period is over")
        .unwrap();
    let cancels = endless.cancels.lock().unwrap().clone();
    assert_eq!(cancels.len(), 1);
    assert!(
        cancels[0].is_cancelled(),
        "the job's cancellation token was cancelled"
    );

    // A second replica on the same durable consumer gets the message again: the first
    // neither acked it nor kept it alive with progress acks (the consumer's ack wait
    // is 1 s, so a progress ack still running would hold it away from this replica).
    let recording = Arc::new(Recording::default());
    let second_shutdown = CancellationToken::new();
    let second = start_with(&rt, recording.clone(), options(), &second_shutdown);
    let seen = wait_until("the job's redelivery", Duration::from_secs(20), || async {
        let seen = recording.seen.lock().unwrap().clone();
        (!seen.is_empty()).then_some(seen)
    })
    .await;
    assert_eq!(seen, [("endless".to_string(), 2)]);
    second_shutdown.cancel();
    second.await.unwrap();
    assert_eq!(
        endless.calls.load(Ordering::SeqCst),
        1,
        "the stopped runner took nothing more"
    );
    // The second replica acked it: the work queue is empty.
    let mut stream = rt
        .jetstream
        .get_stream(subjects::JOBS_STREAM)
        .await
        .unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 0);
}
