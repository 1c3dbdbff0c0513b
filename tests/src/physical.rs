//! Physical PostgreSQL scenarios: a cluster of the test's own with WAL archiving
//! through the built `ferry wal-push`, Ferry backing it up into an S3 store (moto),
//! and the `ferry` CLI run as the cluster's OS user, as an operator's
//! `archive_command` and restore would run.

use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use chrono::{DateTime, Utc};
use ferry_testkit::{OwnCluster, OwnRoot, PgCluster, S3Server, Source, TestConfig, TestDatabase};

use crate::TestEnv;
use crate::processes::binary;

/// The source's name.
pub const SOURCE: &str = "phys";
/// The database the workload writes.
pub const DB: &str = "app";

/// A table's row count and checksum, by name: what a restore must equal.
pub type State = Vec<(String, i64, String)>;

/// An instant of the workload and the state it left.
#[derive(Debug, Clone)]
pub struct Mark {
    /// The server's clock after the last commit before it.
    pub time: DateTime<Utc>,
    /// The WAL insert position then.
    pub lsn: String,
    /// Every table's checksum then.
    pub state: State,
}

/// A physical source on a cluster of its own, and Ferry backing it up.
pub struct Physical {
    /// Where the clusters live (dropped last: it stops them).
    pub root: OwnRoot,
    /// The source's cluster.
    pub cluster: OwnCluster,
    /// Ferry.
    pub env: TestEnv,
    /// The configuration `ferry wal-push` and the CLI read (storage only).
    pub config: PathBuf,
    /// The store.
    pub s3: S3Server,
    /// The store's prefix.
    pub prefix: String,
}

impl Physical {
    /// Initialises and starts the cluster (archiving on), fills `app` with
    /// `pgbench -i`, and starts Ferry with the physical source `phys` (and
    /// `extra` sources).
    pub async fn start(extra: impl FnOnce(&crate::Paths, TestConfig) -> TestConfig) -> Physical {
        Physical::start_with(|s| s, extra).await
    }

    /// [`Physical::start`] with the `phys` source changed by `source` (a retention
    /// policy, say).
    pub async fn start_with(
        source: impl FnOnce(Source) -> Source + Send + 'static,
        extra: impl FnOnce(&crate::Paths, TestConfig) -> TestConfig,
    ) -> Physical {
        let shared = PgCluster::from_env();
        let root = OwnRoot::new(&shared.bin_dir);
        let s3 = S3Server::moto().await;
        let prefix = ferry_testkit::unique_name("phys");
        let config = root.path.join("ferry.toml");
        TestConfig::new()
            .s3_store(&s3, &prefix, &root.path)
            .pg_bin_dir(&shared.bin_dir)
            .write(&config);
        root.chown(&root.path);
        let archive = format!(
            "'{} --config {} wal-push --source {SOURCE} %p'",
            binary("ferry").display(),
            config.display()
        );
        let cluster = root.init(
            "primary",
            &[
                ("wal_level", "replica".into()),
                ("archive_mode", "on".into()),
                ("archive_command", archive),
                ("max_wal_senders", "4".into()),
            ],
        );
        root.start(&cluster.data, None);
        let pg = cluster.pg();
        pg.connect("postgres")
            .await
            .batch_execute(&format!("CREATE DATABASE {DB}"))
            .await
            .expect("create the workload's database");
        pgbench(&pg, &["-i", "-s", "1", "-q"]).await;
        let password = root.path.join("phys-password");
        std::fs::write(&password, format!("{}\n", ferry_testkit::pg_own::PASSWORD)).unwrap();
        let url = pg.url_without_password(DB);
        let (s3_env, prefix_env, key_dir) = (s3.clone(), prefix.clone(), root.path.clone());
        let env = TestEnv::start("", move |paths, c| {
            let c = c.s3_store(&s3_env, &prefix_env, &key_dir).source(source(
                Source::postgres(SOURCE, &url)
                    .password_file(&password)
                    .set("mode", "physical"),
            ));
            extra(paths, c)
        })
        .await;
        // Now that the test's NATS runs: wal-push reports to it.
        TestConfig::new()
            .nats(env.nats.url())
            .s3_store(&s3, &prefix, &root.path)
            .pg_bin_dir(&shared.bin_dir)
            .write(&config);
        root.chown(&root.path);
        Physical {
            root,
            cluster,
            env,
            config,
            s3,
            prefix,
        }
    }

    /// The source cluster.
    pub fn pg(&self) -> PgCluster {
        self.cluster.pg()
    }

    /// Runs `ferry --config <config> args…` as the cluster's OS user.
    pub async fn ferry(&self, args: &[&str]) -> Output {
        let mut cmd = self.root.command(binary("ferry"));
        cmd.arg("--config").arg(&self.config).args(args);
        tokio::task::spawn_blocking(move || cmd.output().expect("run ferry"))
            .await
            .unwrap()
    }

    /// Restores to `target` (`["--at", T]`, `["--at-lsn", L]`, …) into a new data
    /// directory, started on a new port, and returns that cluster; panics with
    /// the CLI's output when the restore fails.
    pub async fn restore_started(&self, name: &str, target: &[&str]) -> (PathBuf, PgCluster) {
        let data = self.root.path.join(name);
        let port = ferry_testkit::free_port();
        let port_arg = port.to_string();
        let data_arg = data.display().to_string();
        let mut args = vec![
            "restore",
            "--source",
            SOURCE,
            "--to-datadir",
            &data_arg,
            "--start",
            "--port",
            &port_arg,
        ];
        args.extend_from_slice(target);
        let out = self.ferry(&args).await;
        self.root.started_here(&data);
        assert!(
            out.status.success(),
            "ferry {args:?} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(data.join("ferry-restore.log")).unwrap_or_default()
        );
        (data, self.cluster.pg_on(port))
    }

    /// Waits until the archive holds `segment` of `timeline`.
    pub async fn wait_archived(&self, timeline: u32, segment: &str) {
        let store = self.env.store();
        let key = format!("wal/{SOURCE}/{timeline:08X}/{segment}");
        ferry_testkit::wait_until(
            &format!("{key} archived"),
            Duration::from_secs(60),
            || async { store.head(&key).await.ok().flatten().map(|_| ()) },
        )
        .await;
    }
}

/// Runs pgbench against `app` on `pg`.
pub async fn pgbench(pg: &PgCluster, args: &[&str]) {
    let out = tokio::process::Command::new(pg.bin_dir.join("pgbench"))
        .args(args)
        .arg("-h")
        .arg(&pg.host)
        .arg("-p")
        .arg(pg.port.to_string())
        .arg("-U")
        .arg(&pg.user)
        .arg(DB)
        .env("PGPASSWORD", &pg.password)
        .output()
        .await
        .expect("run pgbench");
    assert!(
        out.status.success(),
        "pgbench {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every table's checksum in `app` on `pg`.
pub async fn state(pg: &PgCluster) -> State {
    TestDatabase {
        name: DB.into(),
        cluster: pg.clone(),
    }
    .table_checksums()
    .await
}

/// Marks the present instant on `pg`: its clock and WAL position after every
/// commit so far, and the state those commits left.
pub async fn mark(pg: &PgCluster) -> Mark {
    let client = pg.connect(DB).await;
    let state = state(pg).await;
    let row = client
        .query_one(
            "SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::int8, \
                    pg_current_wal_insert_lsn()::text",
            &[],
        )
        .await
        .unwrap();
    // Commits after this are stamped later than the mark.
    tokio::time::sleep(Duration::from_millis(20)).await;
    Mark {
        time: DateTime::<Utc>::from_timestamp_micros(row.get(0)).unwrap(),
        lsn: row.get(1),
        state,
    }
}

/// Switches `pg` to a new WAL segment and returns the one it completed, with its
/// timeline.
pub async fn switch_wal(pg: &PgCluster) -> (u32, String) {
    let client = pg.connect(DB).await;
    // A write first, so the switch is never a no-op on an idle segment.
    client
        .batch_execute("UPDATE pgbench_branches SET bbalance = bbalance WHERE bid = 1")
        .await
        .unwrap();
    let name: String = client
        .query_one("SELECT pg_walfile_name(pg_switch_wal())", &[])
        .await
        .unwrap()
        .get(0);
    let timeline = u32::from_str_radix(&name[..8], 16).unwrap();
    (timeline, name)
}

/// The CLI's output, both streams.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
