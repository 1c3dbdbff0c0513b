//! The `ferry-dumper` binary's start-up: which configuration it accepts, what it
//! refuses (exit code 2, naming the key, before connecting anywhere), and that
//! `FERRY_DUMPER__*` overrides reach its section.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use ferry_testkit::NatsServer;

fn dumper(config: &Path) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_ferry-dumper"));
    cmd.arg("--config")
        .arg(config)
        .env_remove("FERRY_CONFIG")
        .kill_on_drop(true);
    cmd
}

fn write(dir: &Path, text: &str) -> std::path::PathBuf {
    let path = dir.join(format!("{}.toml", ferry_testkit::unique_name("config")));
    std::fs::write(&path, text).unwrap();
    path
}

async fn refused(output: Output, named: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(named), "{named} not named:\n{stderr}");
}

#[tokio::test]
async fn an_unknown_section_or_key_stops_the_binary_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    // NATS is unreachable: a refusal must come before any connection.
    let base = "[nats]\nurl = \"nats://127.0.0.1:1\"\n[http]\nlisten = \"\"\n";
    for (extra, named) in [
        ("[dumpr]\nconcurrency = 1\n", "dumpr"),
        ("[dumper]\nconcurency = 1\n", "concurency"),
        ("[leases]\ntll = \"1m\"\n", "tll"),
    ] {
        let path = write(dir.path(), &format!("{base}{extra}"));
        refused(dumper(&path).output().await.unwrap(), named).await;
    }
    // An override is validated like the file.
    let path = write(dir.path(), base);
    let output = dumper(&path)
        .env("FERRY_DUMPER__CONCURRENCY", "0")
        .output()
        .await
        .unwrap();
    refused(output, "dumper.concurrency: invalid value \"0\"").await;
}

#[tokio::test]
async fn the_binary_runs_on_a_file_with_every_section_and_applies_overrides() {
    let nats = NatsServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        &format!(
            r#"
[nats]
url = "{url}"

[http]
listen = ""

[spool]
path = "{spool}"

[dumper]
concurrency = 2

[scheduler]
misfire = "skip"

[uploader]
part_size = "16MiB"

[retention]
gc_grace = "12h"

[notifier]
max_attempts = 3

[[notify]]
kind = "webhook"
url = "https://hooks.example.com/ferry"
"#,
            url = nats.url(),
            spool = dir.path().join("spool").display(),
        ),
    );
    let mut child = dumper(&path)
        .env("FERRY_DUMPER__CONCURRENCY", "5")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let client = nats.client().await;
    let js = async_nats::jetstream::new(client);
    // The consumer's max_ack_pending is the concurrency: the override, not the file.
    let pending =
        ferry_testkit::wait_until("the dumper's consumer", Duration::from_secs(30), || async {
            let stream = js
                .get_stream(ferry_proto::subjects::JOBS_STREAM)
                .await
                .ok()?;
            let mut consumer = stream
                .get_consumer::<async_nats::jetstream::consumer::pull::Config>("ferry-dumper")
                .await
                .ok()?;
            Some(consumer.info().await.ok()?.config.max_ack_pending)
        })
        .await;
    assert_eq!(pending, 5);
    assert!(
        child.try_wait().unwrap().is_none(),
        "the dumper is still running"
    );
    child.kill().await.unwrap();
}
