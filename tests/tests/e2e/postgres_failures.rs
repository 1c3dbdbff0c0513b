//! Every way a PostgreSQL dump can fail reaches the user as `BackupFailed` with its
//! own reason code and a message that says what to do; nothing is left in the
//! spool. (A wrong password is covered in pipeline.rs.)

use std::path::Path;
use std::time::Duration;

use ferry_e2e::{Paths, TestEnv};
use ferry_proto::reason;
use ferry_proto::subjects::EventKind;
use ferry_proto::v1::BackupFailed;
use ferry_testkit::{Source, TestConfig};

const STEP: Duration = Duration::from_secs(90);

fn source(name: &str, url: &str, password_file: &Path) -> Source {
    Source::postgres(name, url).password_file(password_file)
}

/// The test database as source `name`, with `more` of its keys.
fn plain(
    name: &'static str,
    more: impl FnOnce(Source) -> Source,
) -> impl FnOnce(&Paths, TestConfig) -> TestConfig {
    move |p, c| c.source(more(source(name, &p.db_url, &p.password_file)))
}

/// Starts a job and returns its first failure (retryable ones are retried later,
/// but the first report already carries the reason).
async fn first_failure(env: &TestEnv, name: &str) -> BackupFailed {
    let job_id = start(env, name).await;
    failure_of(env, name, &job_id).await
}

async fn start(env: &TestEnv, name: &str) -> String {
    let outcome = ferry::backup::now(&env.client, name, None).await.unwrap();
    let ferry::backup::Outcome::Queued { job_id, .. } = outcome else {
        panic!("expected the job to be queued, got {outcome:?}")
    };
    job_id
}

async fn failure_of(env: &TestEnv, name: &str, job_id: &str) -> BackupFailed {
    env.event(EventKind::Failed, name, STEP, |f: &BackupFailed| {
        f.job_id == job_id
    })
    .await
}

/// Whether a process whose command line mentions `needle` is alive.
fn process_mentions(needle: &str) -> bool {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .any(|cmd| String::from_utf8_lossy(&cmd).contains(needle))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_is_reported() {
    let env = TestEnv::start("", |p, c| {
        // Port 1 on loopback: nothing listens there.
        c.source(source(
            "down",
            "postgres://postgres@127.0.0.1:1/x",
            &p.password_file,
        ))
    })
    .await;
    let failed = first_failure(&env, "down").await;
    assert_eq!(failed.reason, reason::UNREACHABLE, "{}", failed.message);
    assert!(failed.message.contains("reachable"), "{}", failed.message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_database_is_reported() {
    let env = TestEnv::start(
        "",
        plain("nodb", |s| s.set("databases", vec!["ferry_no_such_db"])),
    )
    .await;
    let failed = first_failure(&env, "nodb").await;
    assert_eq!(
        failed.reason,
        reason::DATABASE_NOT_FOUND,
        "{}",
        failed.message
    );
    assert!(
        failed.message.contains("ferry_no_such_db"),
        "{}",
        failed.message
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_the_role_cannot_read_is_named() {
    let role = ferry_testkit::unique_name("ferry_limited");
    let fill = format!(
        "CREATE ROLE {role} LOGIN PASSWORD 'limited-pw';\
         CREATE TABLE public.open (id int); GRANT SELECT ON public.open TO {role};\
         CREATE TABLE public.secrets (id int); INSERT INTO public.secrets VALUES (1);"
    );
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("limited");
    std::fs::write(&pw, "limited-pw\n").unwrap();
    let env = TestEnv::start(&fill, |p, c| {
        let url = p.db_url.replacen("postgres@", &format!("{role}@"), 1);
        c.source(source("limited", &url, &pw))
    })
    .await;
    let failed = first_failure(&env, "limited").await;
    assert_eq!(
        failed.reason,
        reason::PERMISSION_DENIED,
        "{}",
        failed.message
    );
    assert!(
        failed.message.contains("table secrets"),
        "{}",
        failed.message
    );
    assert!(failed.message.contains("GRANT") || failed.message.contains("grant"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_pg_dump_is_reported() {
    let empty = tempfile::tempdir().unwrap();
    let env = TestEnv::start("", |p, c| {
        c.pg_bin_dir(empty.path())
            .source(source("notool", &p.db_url, &p.password_file))
    })
    .await;
    let failed = first_failure(&env, "notool").await;
    assert_eq!(
        failed.reason,
        reason::DUMP_TOOL_MISSING,
        "{}",
        failed.message
    );
    assert!(failed.message.contains("pg_bin_dir"), "{}", failed.message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pg_dump_older_than_the_server_is_refused_naming_both_versions() {
    // Only PostgreSQL 15 is installed here, so an "old" pg_dump is a script that
    // answers --version the way PostgreSQL 12's does; the dumper must refuse it
    // before running it for real.
    let old = tempfile::tempdir().unwrap();
    let script = old.path().join("pg_dump");
    std::fs::write(&script, "#!/bin/sh\necho 'pg_dump (PostgreSQL) 12.22'\n").unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let env = TestEnv::start("", |p, c| {
        c.pg_bin_dir(old.path())
            .source(source("oldtool", &p.db_url, &p.password_file))
    })
    .await;
    let failed = first_failure(&env, "oldtool").await;
    assert_eq!(
        failed.reason,
        reason::DUMP_TOOL_TOO_OLD,
        "{}",
        failed.message
    );
    assert!(failed.message.contains("12.22"), "{}", failed.message);
    assert!(
        failed.message.contains("PostgreSQL 15."),
        "{}",
        failed.message
    );
}

/// Unmounts the test's tmpfs however the test ends.
struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_is_reported_and_left_clean() {
    // ~6 MB of hex text, staged uncompressed: more than the 1 MB spool holds.
    let env = TestEnv::start(
        "CREATE TABLE big AS SELECT g, md5(g::text) || md5((g + 1)::text) AS v FROM generate_series(1, 90000) g;",
        plain("full", |s| s),
    )
    .await;
    let spool = env.dir.path().join("spool");
    // A real small disk: a 1 MB tmpfs over the spool directory (the tests run as root).
    let status = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&spool)
        .status()
        .expect("run mount");
    assert!(status.success(), "mounting a tmpfs needs root");
    let _mount = Mount(spool.clone());
    let failed = first_failure(&env, "full").await;
    assert_eq!(failed.reason, reason::SPOOL_FULL, "{}", failed.message);
    assert!(failed.message.contains("spool"), "{}", failed.message);
    ferry_testkit::wait_until("the failed job's files to be removed", STEP, || async {
        (!spool.join(&failed.job_id).exists()).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dump_past_its_timeout_is_killed_and_cleaned_up() {
    let env = TestEnv::start(
        "CREATE TABLE held (id int); INSERT INTO held VALUES (1);",
        plain("slow", |s| s.set("timeout", "3s")),
    )
    .await;
    // An open transaction holding an exclusive lock: pg_dump waits for it forever.
    let blocker = env.db.connect().await;
    blocker
        .batch_execute("BEGIN; LOCK TABLE held IN ACCESS EXCLUSIVE MODE;")
        .await
        .unwrap();
    let job_id = start(&env, "slow").await;
    // pg_dump is really running (blocked on the lock) before the deadline hits.
    ferry_testkit::wait_until("pg_dump to start", STEP, || async {
        process_mentions(&format!("{job_id}/.pg-staging")).then_some(())
    })
    .await;
    let failed = failure_of(&env, "slow", &job_id).await;
    assert_eq!(failed.reason, reason::TIMEOUT, "{}", failed.message);
    assert!(failed.r#final);
    // pg_dump (whose command line names the job's staging directory) is gone, and
    // so is everything the job wrote into the spool.
    let spool = env.dir.path().join("spool");
    ferry_testkit::wait_until(
        "pg_dump to be killed and the spool cleaned",
        STEP,
        || async {
            (!process_mentions(&failed.job_id) && !spool.join(&failed.job_id).exists())
                .then_some(())
        },
    )
    .await;
    blocker.batch_execute("ROLLBACK").await.unwrap();
}
