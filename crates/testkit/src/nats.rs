//! A real `nats-server` with JetStream, one per test, on a free port.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running nats-server, killed on drop.
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    /// More configuration (users and their permissions, say), kept for `restart`.
    extra: String,
    /// The user the kit itself connects as (readiness, [`NatsServer::client`]).
    login: Option<NatsLogin>,
}

/// A user name and password on a server started with users.
#[derive(Debug, Clone)]
pub struct NatsLogin {
    /// The user.
    pub user: String,
    /// Its password.
    pub password: String,
}

impl NatsLogin {
    /// The options that connect as this user.
    pub fn options(&self) -> async_nats::ConnectOptions {
        async_nats::ConnectOptions::with_user_and_password(self.user.clone(), self.password.clone())
    }
}

/// The nats-server binary: `FERRY_TEST_NATS_SERVER`, then the one
/// `scripts/test-services up` installs (2.10 or newer), then PATH.
pub fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("FERRY_TEST_NATS_SERVER") {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("FERRY_TEST_HOME")
        .map(PathBuf::from)
        .or_else(|| {
            let cache = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
            Some(cache.join("ferry-test"))
        });
    if let Some(candidate) = home.map(|h| h.join("venv/bin/nats-server"))
        && candidate.is_file()
    {
        return candidate;
    }
    for dir in std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/sbin", "/usr/local/sbin"])
    {
        let candidate = PathBuf::from(dir).join("nats-server");
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!("nats-server not found: run `scripts/test-services up`, which installs it")
}

impl NatsServer {
    /// Starts a server with JetStream in a fresh directory and waits until it
    /// accepts connections. `max_payload` is raised to 8 MiB so tests can send
    /// oversized job requests that Ferry itself must refuse.
    pub async fn start() -> NatsServer {
        Self::start_with_config("", None).await
    }

    /// Starts a server whose configuration file also holds `extra`, e.g. an
    /// `authorization { users = [...] }` block giving each user its permissions;
    /// the kit connects as `login` (for readiness and [`NatsServer::client`]).
    pub async fn start_with_config(extra: &str, login: Option<NatsLogin>) -> NatsServer {
        let dir = tempfile::tempdir().expect("temp dir for nats");
        let mut server = NatsServer {
            child: None,
            port: 0,
            dir,
            extra: extra.to_string(),
            login,
        };
        server.spawn().await;
        server
    }

    /// Starts nats-server on `self.port`, or on a port it picks itself when 0: the
    /// server reports it in a ports file, so two tests starting at once can never
    /// race for one port and end up sharing a server.
    async fn spawn(&mut self) {
        let config = self.dir.path().join("nats.conf");
        let ports_dir = self.dir.path().join("ports");
        let _ = std::fs::remove_dir_all(&ports_dir);
        std::fs::create_dir_all(&ports_dir).expect("ports dir");
        let listen = if self.port == 0 {
            "-1".to_string()
        } else {
            self.port.to_string()
        };
        std::fs::write(
            &config,
            format!(
                "listen: 127.0.0.1:{listen}\nmax_payload: 8MB\nports_file_dir: {:?}\njetstream {{\n  store_dir: {:?}\n}}\n{}\n",
                ports_dir,
                self.dir.path().join("js"),
                self.extra,
            ),
        )
        .expect("write nats config");
        let log = std::fs::File::create(self.dir.path().join("nats.log")).expect("nats log");
        let child = Command::new(binary())
            .arg("-c")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn nats-server");
        self.child = Some(child);
        self.port = crate::wait_until(
            "nats-server to report its port",
            Duration::from_secs(20),
            || async {
                let file = std::fs::read_dir(&ports_dir)
                    .ok()?
                    .filter_map(|e| e.ok())
                    .next()?;
                let ports: serde_json::Value =
                    serde_json::from_slice(&std::fs::read(file.path()).ok()?).ok()?;
                let url = ports["nats"].as_array()?.first()?.as_str()?.to_string();
                url.rsplit(':').next()?.parse::<u16>().ok()
            },
        )
        .await;
        crate::wait_until(
            "nats-server to accept connections",
            Duration::from_secs(20),
            || async { self.connect().await.ok().map(|_| ()) },
        )
        .await;
    }

    /// The client URL.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// A new client connection (as the kit's login, when the server has users).
    pub async fn client(&self) -> async_nats::Client {
        self.connect().await.expect("connect to test nats")
    }

    async fn connect(&self) -> Result<async_nats::Client, async_nats::ConnectError> {
        match &self.login {
            Some(login) => login.options().connect(self.url()).await,
            None => async_nats::connect(self.url()).await,
        }
    }

    /// Stops the server (its data stays), e.g. to test readiness.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port with the same data.
    pub async fn restart(&mut self) {
        self.stop();
        self.spawn().await;
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}
