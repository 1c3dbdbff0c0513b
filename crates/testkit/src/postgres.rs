//! The test PostgreSQL cluster (password authentication), and throwaway databases.

use std::path::PathBuf;

/// The cluster `scripts/test-services up` runs.
#[derive(Debug, Clone)]
pub struct PgCluster {
    /// Host.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Superuser.
    pub user: String,
    /// Its password.
    pub password: String,
    /// Directory of pg_dump, pg_restore, psql.
    pub bin_dir: PathBuf,
}

/// A database created for one test.
#[derive(Debug, Clone)]
pub struct TestDatabase {
    /// Its name.
    pub name: String,
    /// The cluster it lives in.
    pub cluster: PgCluster,
}

impl PgCluster {
    /// The cluster named by `FERRY_TEST_PG_URL` (default: the script's).
    pub fn from_env() -> PgCluster {
        let url = std::env::var("FERRY_TEST_PG_URL")
            .unwrap_or_else(|_| "postgres://postgres:ferry-test@127.0.0.1:55432/postgres".into());
        let parsed = url::Url::parse(&url).expect("FERRY_TEST_PG_URL is a URL");
        let bin_dir = std::env::var_os("FERRY_TEST_PG_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                let mut majors: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
                    .map(|d| {
                        d.filter_map(|e| e.ok())
                            .map(|e| e.path().join("bin"))
                            .collect()
                    })
                    .unwrap_or_default();
                majors.sort();
                majors.pop().unwrap_or_else(|| PathBuf::from("/usr/bin"))
            });
        PgCluster {
            host: parsed.host_str().unwrap_or("127.0.0.1").to_string(),
            port: parsed.port().unwrap_or(5432),
            user: parsed.username().to_string(),
            password: parsed.password().unwrap_or_default().to_string(),
            bin_dir,
        }
    }

    /// A URL for `db` without the password (what a Ferry source holds).
    pub fn url_without_password(&self, db: &str) -> String {
        format!("postgres://{}@{}:{}/{db}", self.user, self.host, self.port)
    }

    /// A URL for `db` with the password (for test clients).
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://{}:{}@{}:{}/{db}",
            self.user, self.password, self.host, self.port
        )
    }

    /// Connects to `db`.
    pub async fn connect(&self, db: &str) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(&self.url(db), tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "connect to test postgres {}:{} ({e}): run `scripts/test-services up`",
                    self.host, self.port
                )
            });
        tokio::spawn(connection);
        client
    }

    /// Creates an empty database with a unique name.
    pub async fn create_database(&self, prefix: &str) -> TestDatabase {
        let name = crate::unique_name(prefix);
        self.connect("postgres")
            .await
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .expect("create test database");
        TestDatabase {
            name,
            cluster: self.clone(),
        }
    }
}

impl TestDatabase {
    /// Connects to this database.
    pub async fn connect(&self) -> tokio_postgres::Client {
        self.cluster.connect(&self.name).await
    }

    /// A checksum of every row of every user table, keyed by `schema.table`, for
    /// comparing a restore with its source.
    pub async fn table_checksums(&self) -> Vec<(String, i64, String)> {
        let client = self.connect().await;
        let tables = client
            .query(
                "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables \
                 WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1",
                &[],
            )
            .await
            .expect("list tables");
        let mut out = Vec::new();
        for row in tables {
            let table: String = row.get(0);
            let sums = client
                .query_one(
                    &format!(
                        "SELECT count(*), coalesce(md5(string_agg(t::text, E'\\n' ORDER BY t::text)), '') FROM {table} t"
                    ),
                    &[],
                )
                .await
                .expect("checksum table");
            out.push((table, sums.get(0), sums.get(1)));
        }
        out
    }
}
