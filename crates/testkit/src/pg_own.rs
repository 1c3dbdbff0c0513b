//! A PostgreSQL cluster a test creates and starts itself (initdb, pg_ctl), with the
//! settings it needs (WAL archiving for physical backups), and the clusters that
//! restores of it start.
//!
//! PostgreSQL refuses to run as root, so under root every server process and
//! every command that touches a data directory runs as the `postgres` OS user
//! (`runuser`), and the cluster lives under `/var/lib/ferry-test`, which that user
//! can reach (root's temporary directories are private).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::postgres::PgCluster;

/// The password of the clusters' `postgres` user.
pub const PASSWORD: &str = "ferry-own";

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// A directory the cluster's OS user owns, removed on drop (with every cluster
/// started in it stopped first).
pub struct OwnRoot {
    /// The directory.
    pub path: PathBuf,
    bin_dir: PathBuf,
    started: std::sync::Mutex<Vec<PathBuf>>,
}

impl OwnRoot {
    /// A new, empty directory for clusters, owned by the user PostgreSQL runs as.
    pub fn new(bin_dir: &Path) -> OwnRoot {
        let path = if is_root() {
            let base = PathBuf::from("/var/lib/ferry-test");
            std::fs::create_dir_all(&base).expect("create /var/lib/ferry-test");
            let dir = base.join(crate::unique_name("own"));
            std::fs::create_dir_all(&dir).expect("create the cluster root");
            dir
        } else {
            let dir = std::env::temp_dir().join(crate::unique_name("ferry-own"));
            std::fs::create_dir_all(&dir).expect("create the cluster root");
            dir
        };
        let root = OwnRoot {
            path,
            bin_dir: bin_dir.to_path_buf(),
            started: Default::default(),
        };
        root.chown(&root.path);
        root
    }

    /// Gives `path` (recursively) to the clusters' OS user.
    pub fn chown(&self, path: &Path) {
        if is_root() {
            let status = Command::new("chown")
                .arg("-R")
                .arg("postgres:postgres")
                .arg(path)
                .status()
                .expect("run chown");
            assert!(status.success(), "chown -R postgres {}", path.display());
        }
    }

    /// `program` run as the clusters' OS user (itself when not root).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        if is_root() {
            let mut cmd = Command::new("runuser");
            cmd.arg("-u").arg("postgres").arg("--").arg(program);
            cmd
        } else {
            Command::new(program)
        }
    }

    /// A PostgreSQL program of the test's version.
    pub fn tool(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }

    /// Runs initdb into `<root>/<name>` and appends `settings` (and what every
    /// test cluster has: its port, loopback only, no fsync) to postgresql.conf.
    pub fn init(&self, name: &str, settings: &[(&str, String)]) -> OwnCluster {
        let data = self.path.join(name);
        let pwfile = self.path.join(format!("{name}.pw"));
        std::fs::write(&pwfile, format!("{PASSWORD}\n")).unwrap();
        self.chown(&pwfile);
        let out = self
            .command(self.tool("initdb"))
            .arg("-D")
            .arg(&data)
            .arg("-U")
            .arg("postgres")
            .arg(format!("--pwfile={}", pwfile.display()))
            .arg("--auth-host=scram-sha-256")
            .arg("--auth-local=trust")
            .arg("--encoding=UTF8")
            .arg("--locale=C.UTF-8")
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = crate::free_port();
        let mut conf = format!(
            "\n# test cluster\nport = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\nfsync = off\nmax_connections = 50\n",
            self.path.display()
        );
        for (k, v) in settings {
            conf.push_str(&format!("{k} = {v}\n"));
        }
        let conf_path = data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf_path).unwrap();
        text.push_str(&conf);
        std::fs::write(&conf_path, text).unwrap();
        self.chown(&conf_path);
        OwnCluster {
            data,
            port,
            bin_dir: self.bin_dir.clone(),
        }
    }

    /// Starts the data directory `data` (on `port`, or its own), waiting until it
    /// accepts connections, and stops it when this root is dropped.
    pub fn start(&self, data: &Path, port: Option<u16>) {
        let mut cmd = self.command(self.tool("pg_ctl"));
        cmd.arg("start")
            .arg("-D")
            .arg(data)
            .arg("-l")
            .arg(data.join("test.log"))
            .arg("-w")
            .arg("-t")
            .arg("120");
        if let Some(port) = port {
            cmd.arg("-o").arg(format!("-p {port}"));
        }
        let out = cmd.output().expect("run pg_ctl start");
        let log = std::fs::read_to_string(data.join("test.log")).unwrap_or_default();
        assert!(
            out.status.success(),
            "pg_ctl start {}: {}\n{log}",
            data.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        self.started_here(data);
    }

    /// Records a data directory started by someone else (`ferry restore --start`),
    /// so it is stopped on drop.
    pub fn started_here(&self, data: &Path) {
        self.started.lock().unwrap().push(data.to_path_buf());
    }

    /// Stops the cluster of `data` (fast shutdown).
    pub fn stop(&self, data: &Path) {
        let _ = self
            .command(self.tool("pg_ctl"))
            .arg("stop")
            .arg("-D")
            .arg(data)
            .arg("-m")
            .arg("fast")
            .arg("-w")
            .output();
        self.started.lock().unwrap().retain(|d| d != data);
    }
}

impl Drop for OwnRoot {
    fn drop(&mut self) {
        for data in self.started.lock().unwrap().drain(..) {
            let _ = self
                .command(self.tool("pg_ctl"))
                .arg("stop")
                .arg("-D")
                .arg(&data)
                .arg("-m")
                .arg("immediate")
                .arg("-w")
                .output();
        }
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A cluster made by [`OwnRoot::init`].
#[derive(Debug, Clone)]
pub struct OwnCluster {
    /// Its data directory.
    pub data: PathBuf,
    /// Its port.
    pub port: u16,
    bin_dir: PathBuf,
}

impl OwnCluster {
    /// The cluster as a [`PgCluster`] (user `postgres`), for URLs and clients.
    pub fn pg(&self) -> PgCluster {
        self.pg_on(self.port)
    }

    /// A cluster restored from this one, listening on `port`.
    pub fn pg_on(&self, port: u16) -> PgCluster {
        PgCluster {
            host: "127.0.0.1".into(),
            port,
            user: "postgres".into(),
            password: PASSWORD.into(),
            bin_dir: self.bin_dir.clone(),
        }
    }
}
