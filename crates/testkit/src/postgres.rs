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

    /// A checksum of every row of every user table and materialized view, keyed
    /// by `schema.table`, plus every sequence's state and every large object, for
    /// comparing a restore with its source.
    pub async fn table_checksums(&self) -> Vec<(String, i64, String)> {
        let client = self.connect().await;
        let tables = client
            .query(
                "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables \
                 WHERE schemaname NOT IN ('pg_catalog', 'information_schema') \
                 UNION ALL SELECT format('%I.%I', schemaname, matviewname) FROM pg_matviews \
                 ORDER BY 1",
                &[],
            )
            .await
            .expect("list tables");
        let mut out = Vec::new();
        for row in tables {
            let table: String = row.get(0);
            // Per-row md5 first, so a huge row costs one hash, not a huge aggregate.
            let sums = client
                .query_one(
                    &format!(
                        "SELECT count(*), coalesce(md5(string_agg(h, E'\\n' ORDER BY h)), '') \
                         FROM (SELECT md5(t::text) AS h FROM {table} t) s"
                    ),
                    &[],
                )
                .await
                .expect("checksum table");
            out.push((table, sums.get(0), sums.get(1)));
        }
        let extra = [
            (
                "(sequences)",
                "SELECT count(*), coalesce(md5(string_agg(format('%I.%I=%s/%s', schemaname, sequencename, last_value, increment_by), ',' ORDER BY schemaname, sequencename)), '') FROM pg_sequences",
            ),
            (
                "(large objects)",
                "SELECT count(*), coalesce(md5(string_agg(oid::text || ':' || md5(lo_get(oid)), ',' ORDER BY oid)), '') FROM pg_largeobject_metadata",
            ),
        ];
        for (name, sql) in extra {
            let sums = client.query_one(sql, &[]).await.expect(name);
            out.push((name.to_string(), sums.get(0), sums.get(1)));
        }
        out
    }

    /// `pg_dump --schema-only` of this database, with the database's name and
    /// pg_dump's per-run random `\restrict` keys replaced, so two databases with
    /// the same schema give the same text.
    pub async fn schema_dump(&self) -> String {
        let out = tokio::process::Command::new(self.cluster.bin_dir.join("pg_dump"))
            .arg("--schema-only")
            .arg("--dbname")
            .arg(self.cluster.url(&self.name))
            .output()
            .await
            .expect("run pg_dump --schema-only");
        assert!(
            out.status.success(),
            "pg_dump --schema-only: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .expect("utf-8 schema")
            .lines()
            .filter(|l| !l.starts_with("\\restrict") && !l.starts_with("\\unrestrict"))
            .map(|l| l.replace(&self.name, "<database>"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}
