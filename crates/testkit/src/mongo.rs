//! The MongoDB test server: SecantusDB, a MongoDB wire-compatible server (a separate
//! process, never linked in). Tests use the shared one `scripts/test-services up`
//! starts (`FERRY_TEST_MONGO_URL`), or start their own when they need isolation: a
//! server with authentication, or with the test-only `configureFailPoint` command.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use mongodb::Client;
use mongodb::bson::{Document, doc};

/// A MongoDB test server: the shared one, or one this test started (killed on drop).
pub struct MongoServer {
    url: String,
    child: Option<Child>,
    _dir: Option<tempfile::TempDir>,
}

/// What a test's own server needs.
#[derive(Debug, Clone, Default)]
pub struct MongoStart {
    /// Enables `configureFailPoint` (mongod's `--enableTestCommands`).
    pub test_commands: bool,
    /// Users created before the server restarts with authentication required:
    /// (name, password, roles as `{role, db}` documents). Empty: no authentication.
    pub users: Vec<(String, String, Vec<Document>)>,
    /// `--noop-heartbeat-seconds`: no-op oplog entries this often, so a quiet
    /// server's cluster time advances as mongod's does (every 10 s there).
    pub noop_heartbeat_seconds: Option<u32>,
    /// `--oplog-max-entries`: a small oplog, for a test that needs history lost.
    pub oplog_max_entries: Option<u64>,
    /// `--standalone`: no replica set, so no change streams (a standalone mongod).
    pub standalone: bool,
}

fn venv_bin(name: &str) -> PathBuf {
    let home = std::env::var_os("FERRY_TEST_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/ferry-test")
        });
    home.join("venv/bin").join(name)
}

impl MongoServer {
    /// The shared server of `scripts/test-services` (`FERRY_TEST_MONGO_URL`).
    pub fn shared() -> MongoServer {
        let base = std::env::var("FERRY_TEST_MONGO_URL")
            .unwrap_or_else(|_| "mongodb://127.0.0.1:57017".into());
        MongoServer {
            url: format!("{}/?directConnection=true", base.trim_end_matches('/')),
            child: None,
            _dir: None,
        }
    }

    /// Starts a server of its own on a free port.
    pub async fn start(opts: MongoStart) -> MongoServer {
        let dir = tempfile::tempdir().expect("temp dir for the mongo server");
        let port = crate::free_port();
        let url = format!("mongodb://127.0.0.1:{port}/?directConnection=true");
        let mut server = MongoServer {
            url: url.clone(),
            child: Some(spawn(&dir, port, &opts, false)),
            _dir: None,
        };
        wait_ready(&url).await;
        if !opts.users.is_empty() {
            let client = connect(&url).await;
            for (user, password, roles) in &opts.users {
                client
                    .database("admin")
                    .run_command(
                        doc! { "createUser": user, "pwd": password, "roles": roles.clone() },
                    )
                    .await
                    .expect("create a test user");
            }
            drop(client);
            server.stop().await;
            server.child = Some(spawn(&dir, port, &opts, true));
            let (user, password, _) = &opts.users[0];
            wait_ready(&format!(
                "mongodb://{user}:{password}@127.0.0.1:{port}/?directConnection=true&authSource=admin"
            ))
            .await;
        }
        server._dir = Some(dir);
        server
    }

    /// `mongodb://127.0.0.1:PORT/?directConnection=true`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The URL with a user (and `authSource=admin`), without the password.
    pub fn url_with_user(&self, user: &str) -> String {
        format!(
            "{}&authSource=admin",
            self.url.replacen("://", &format!("://{user}@"), 1)
        )
    }

    /// A client of this server (no credentials).
    pub async fn client(&self) -> Client {
        connect(&self.url).await
    }

    /// A client logged in as `user`.
    pub async fn client_as(&self, user: &str, password: &str) -> Client {
        let url = self.url_with_user(user).replacen(
            &format!("{user}@"),
            &format!("{user}:{password}@"),
            1,
        );
        connect(&url).await
    }

    /// Asks the server to shut down cleanly (SecantusDB closes WiredTiger first).
    async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            while tokio::time::Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for MongoServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn spawn(dir: &tempfile::TempDir, port: u16, opts: &MongoStart, auth: bool) -> Child {
    let mut cmd = Command::new(venv_bin("secantusd-py"));
    cmd.arg("--host")
        .arg("127.0.0.1")
        .arg("--port")
        .arg(port.to_string())
        .arg("--storage-path")
        .arg(dir.path().join("data"))
        .arg("--cache-size")
        .arg("128M")
        .arg("--log-level")
        .arg("WARNING")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if opts.test_commands {
        cmd.arg("--enable-test-commands");
    }
    if let Some(n) = opts.noop_heartbeat_seconds {
        cmd.arg("--noop-heartbeat-seconds").arg(n.to_string());
    }
    if let Some(n) = opts.oplog_max_entries {
        cmd.arg("--oplog-max-entries").arg(n.to_string());
    }
    if opts.standalone {
        cmd.arg("--standalone");
    }
    if auth {
        cmd.arg("--auth");
    }
    cmd.spawn()
        .expect("start secantusd-py: run `scripts/test-services up`, which installs it")
}

async fn connect(url: &str) -> Client {
    let mut options = mongodb::options::ClientOptions::parse(url)
        .await
        .expect("a valid test url");
    options.server_selection_timeout = Some(Duration::from_secs(30));
    Client::with_options(options).expect("a mongo client")
}

async fn wait_ready(url: &str) {
    let client = connect(url).await;
    crate::wait_until(
        "the mongo test server to answer",
        Duration::from_secs(60),
        || {
            let client = client.clone();
            async move {
                client
                    .database("admin")
                    .run_command(doc! { "ping": 1 })
                    .await
                    .ok()
            }
        },
    )
    .await;
}
