//! The worker binaries as operators start them. Every worker starts through
//! `ferry_runtime::process::main`, so one test runs each real binary (replacing one
//! near-identical test binary per worker crate) and checks that a missing
//! configuration file stops it before it connects to anything.

use std::process::Command;
use std::time::Duration;

use ferry_e2e::processes::{WORKERS, binary};

#[test]
fn a_missing_configuration_file_stops_every_worker_with_exit_code_2() {
    let missing = std::env::temp_dir()
        .join("ferry-no-such-dir")
        .join("ferry.toml");
    for (name, _, _) in WORKERS {
        let out = Command::new(binary(name))
            .arg("--config")
            .arg(&missing)
            .env_remove("FERRY_CONFIG")
            .output()
            .unwrap_or_else(|e| panic!("run {name}: {e}"));
        assert_eq!(out.status.code(), Some(2), "{name}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("--config") && stderr.contains("ferry.toml"),
            "{name}: the message names the option and the file: {stderr}"
        );
    }
}

/// A task that panics ends the whole process non-zero, with the panic in its log,
/// so an orchestrator restarts it, rather than leaving a scheduler whose cron loop
/// fires while manual requests go unanswered. The manual-request task is made to
/// panic through the documented test-only hook (`ferry_runtime::fault`): no input
/// a user can send makes it panic any more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_task_ends_the_process_with_a_non_zero_exit() {
    let nats = ferry_testkit::NatsServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ferry.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[nats]
url = "{}"
[http]
listen = ""
[storage]
path = "{}"

[[sources]]
name = "orders"
engine = "postgres"
url = "postgres://backup@db1.internal/orders"
schedule = "0 3 * * *"
"#,
            nats.url(),
            dir.path().join("store").display()
        ),
    )
    .unwrap();
    let client = nats.client().await;
    let start = |fault: Option<&str>| {
        let mut cmd = tokio::process::Command::new(binary("ferry-scheduler"));
        cmd.arg("--config")
            .arg(&config)
            .env_remove("FERRY_CONFIG")
            .env_remove(ferry_runtime::fault::ENV)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        if let Some(point) = fault {
            cmd.env(ferry_runtime::fault::ENV, point);
        }
        cmd.spawn().expect("run ferry-scheduler")
    };
    let request = r#"{"source":"orders"}"#;

    // Without the fault, the same request is answered: the test can tell.
    let mut healthy = start(None);
    let reply = ferry_testkit::wait_until("a reply to a manual request", WAIT, || async {
        let ask = client.request(ferry_proto::subjects::JOB_REQUEST, request.into());
        match tokio::time::timeout(Duration::from_secs(2), ask).await {
            Ok(Ok(reply)) => Some(reply),
            _ => None,
        }
    })
    .await;
    let reply: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(reply["ok"], true, "{reply}");
    healthy.kill().await.unwrap();

    let mut faulty = start(Some("scheduler.manual-request"));
    // Until its listener is subscribed there is no one to panic: ask again and
    // again until the process ends.
    let ask = async {
        let mut every = tokio::time::interval(Duration::from_millis(200));
        loop {
            every.tick().await;
            let _ = client
                .publish(ferry_proto::subjects::JOB_REQUEST, request.into())
                .await;
        }
    };
    let status = tokio::time::timeout(WAIT, async {
        tokio::select! {
            status = faulty.wait() => status.unwrap(),
            _ = ask => unreachable!("asking never ends"),
        }
    })
    .await
    .expect("the scheduler exits after its task panicked");
    let mut stderr = String::new();
    tokio::io::AsyncReadExt::read_to_string(faulty.stderr.as_mut().unwrap(), &mut stderr)
        .await
        .unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("task scheduler manual requests panicked")
            && stderr.contains("fault injected at scheduler.manual-request"),
        "the log names the task and the panic: {stderr}"
    );
}

const WAIT: Duration = Duration::from_secs(60);
