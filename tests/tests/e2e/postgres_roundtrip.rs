//! A PostgreSQL backup restores exactly: an awkward database goes through the real
//! pipeline (dumper, uploader, fs store) and `ferry restore --to` into a new
//! database, and the two are compared by schema dump and row checksums.

use std::time::Duration;

use ferry_e2e::TestEnv;
use ferry_proto::subjects::EventKind;
use ferry_proto::v1::{BackupUploaded, DumpFileReady};
use ferry_storage::layout::manifest_key;
use ferry_storage::{Manifest, get_bytes};
use ferry_testkit::{Source, TestDatabase};

const STEP: Duration = Duration::from_secs(240);

/// Several schemas, quoted and non-ASCII names, every common column type, NULLs
/// and empty strings, a row over 100 MB, a million-row table, views, materialized
/// views, sequences, constraints, indexes, triggers, functions, comments,
/// partitions and large objects.
const AWKWARD_SQL: &str = r#"
CREATE SCHEMA "Ünïcode Schema";
CREATE SCHEMA billing;
CREATE TYPE billing.status AS ENUM ('new', 'paid', 'void');
CREATE DOMAIN billing.positive AS numeric(14, 4) CHECK (VALUE > 0);
CREATE SEQUENCE billing.invoice_no START 1000;
SELECT setval('billing.invoice_no', 4242);

CREATE TABLE billing.customers (
    id serial PRIMARY KEY,
    "Name" text NOT NULL UNIQUE,
    email text CHECK (email IS NULL OR email = '' OR email LIKE '%@%')
);
INSERT INTO billing.customers ("Name", email) VALUES ('', NULL), ('Zoë', ''), ('Ωmega', 'o@x');

CREATE TABLE billing.invoices (
    id bigint PRIMARY KEY DEFAULT nextval('billing.invoice_no'),
    customer int REFERENCES billing.customers(id) ON DELETE CASCADE,
    amount billing.positive,
    exact numeric,
    raw bytea,
    doc json,
    docb jsonb,
    tags text[],
    matrix int[][],
    span int4range,
    period tstzrange,
    at timestamptz,
    uid uuid,
    status billing.status,
    note text
);
INSERT INTO billing.invoices (customer, amount, exact, raw, doc, docb, tags, matrix, span, period, at, uid, status, note)
SELECT 1 + g % 3, g * 0.0001 + 1, (g::numeric ^ 3) / 7, decode(md5(g::text), 'hex'),
       json_build_object('g', g, 's', 'ü"\'), jsonb_build_object('g', g, 'a', ARRAY[g, NULL]),
       ARRAY['x' || g, NULL, ''], ARRAY[[g, 1], [2, g]], int4range(g, g + 10),
       tstzrange('2026-01-01+00'::timestamptz + g * interval '1 hour', NULL),
       '2026-03-01 12:00:00.123456+05:30'::timestamptz + g * interval '1 second',
       md5(g::text)::uuid, (ARRAY['new', 'paid', 'void'])[1 + g % 3]::billing.status,
       CASE g % 3 WHEN 0 THEN NULL WHEN 1 THEN '' ELSE 'n' || g END
FROM generate_series(1, 3000) g;
-- Every byte value, and the extremes of numeric and time.
INSERT INTO billing.invoices (raw, exact, at, note)
SELECT string_agg(set_byte('\x00'::bytea, 0, b), ''::bytea ORDER BY b), 'NaN', 'infinity', E'tab\there\nnewline \\ backslash'
FROM generate_series(0, 255) b;
CREATE INDEX invoices_at ON billing.invoices (at DESC) WHERE status <> 'void';
CREATE INDEX invoices_docb ON billing.invoices USING gin (docb);
CREATE INDEX invoices_lower_note ON billing.invoices (lower(note));

CREATE TABLE "Ünïcode Schema"."Größe ""quoted"" Table" ("Spalte Ä" text, "select" int);
INSERT INTO "Ünïcode Schema"."Größe ""quoted"" Table" VALUES ('日本語', 1), ('', 2), (NULL, NULL);
COMMENT ON TABLE "Ünïcode Schema"."Größe ""quoted"" Table" IS 'Kommentar mit Ümlaut';
COMMENT ON COLUMN billing.invoices.amount IS 'always positive';
COMMENT ON SCHEMA billing IS 'money';

-- A row over 100 MB, not compressible to nothing.
CREATE TABLE public.huge (id int PRIMARY KEY, body text);
INSERT INTO public.huge SELECT 1, string_agg(md5(g::text), '') FROM generate_series(1, 3200000) g;

-- A million rows.
CREATE TABLE public.million (id int PRIMARY KEY, v text, f float8);
INSERT INTO public.million SELECT g, 'row ' || g, g / 3.0 FROM generate_series(1, 1000000) g;

CREATE VIEW billing.paid AS SELECT id, amount FROM billing.invoices WHERE status = 'paid';
CREATE MATERIALIZED VIEW billing.totals AS
    SELECT customer, count(*) AS n, sum(amount) AS total FROM billing.invoices GROUP BY customer;
CREATE UNIQUE INDEX totals_customer ON billing.totals (customer);

CREATE FUNCTION billing.touch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN NEW.note := coalesce(NEW.note, '') || ' touched'; RETURN NEW; END $$;
CREATE TRIGGER invoices_touch BEFORE UPDATE ON billing.invoices
    FOR EACH ROW EXECUTE FUNCTION billing.touch();
CREATE FUNCTION public."Fünktion"(a int) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT a * 2';

CREATE TABLE billing.events (at date NOT NULL, what text) PARTITION BY RANGE (at);
CREATE TABLE billing.events_2025 PARTITION OF billing.events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE billing.events_2026 PARTITION OF billing.events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
INSERT INTO billing.events SELECT '2025-06-01'::date + g, 'e' || g FROM generate_series(0, 400) g;

SELECT lo_from_bytea(0, decode(repeat('00ff', 5000), 'hex'));
SELECT lo_from_bytea(0, '');
SELECT lo_from_bytea(0, convert_to('large object ü', 'UTF8'));
ANALYZE;
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_awkward_database_restores_exactly() {
    let env = TestEnv::start(AWKWARD_SQL, |p, c| {
        c.postgres_source("awkward", &p.db_url, &p.password_file)
    })
    .await;
    let outcome = ferry::backup::now(&env.client, "awkward", Some(STEP))
        .await
        .unwrap();
    let ferry::backup::Outcome::Succeeded(uploaded) = outcome else {
        panic!("expected a backup, got {outcome:?}")
    };
    let uploaded: BackupUploaded = uploaded;

    // Files were announced one by one, compressed with zstd.
    let ready: DumpFileReady = env
        .event(
            EventKind::FileReady,
            "awkward",
            STEP,
            |f: &DumpFileReady| f.job_id == uploaded.job_id,
        )
        .await;
    assert_eq!(ready.file.as_ref().unwrap().compression, "zstd");

    let store = env.store();
    let key = manifest_key("awkward", &uploaded.backup_id);
    let manifest = Manifest::from_json(&get_bytes(store.as_ref(), &key).await.unwrap()).unwrap();
    let pg = manifest.postgres.as_ref().expect("postgres details");
    assert!(pg.server_version.starts_with("15"), "{pg:?}");
    assert!(pg.pg_dump_version.contains("15"), "{pg:?}");
    let db = &pg.databases[0];
    assert!(db.size_bytes > 100 * 1024 * 1024, "{}", db.size_bytes);
    let million = db.tables.iter().find(|t| t.name == "million").unwrap();
    assert!(million.rows_estimate > 900_000, "{million:?}");
    assert!(
        manifest
            .files
            .iter()
            .any(|f| f.name == format!("{}/toc.dat.zst", env.db.name))
    );

    let restored = TestDatabase {
        name: ferry_testkit::unique_name("ferry_restored"),
        cluster: env.pg.clone(),
    };
    let opts = ferry::restore::postgres::PgRestore {
        to: env.pg.url(&restored.name),
        database: None,
        create: true,
        table: None,
        jobs: Some(2),
        work_dir: Some(env.dir.path().to_path_buf()),
        pg_bin_dir: Some(env.pg.bin_dir.clone()),
    };
    ferry::restore::postgres::restore(store.as_ref(), &manifest, &opts)
        .await
        .expect("restore");

    assert_eq!(restored.schema_dump().await, env.db.schema_dump().await);
    let (want, got) = (
        env.db.table_checksums().await,
        restored.table_checksums().await,
    );
    assert_eq!(got, want);
    let counts: std::collections::BTreeMap<_, _> =
        got.iter().map(|(t, n, _)| (t.as_str(), *n)).collect();
    assert_eq!(counts["public.million"], 1_000_000);
    assert_eq!(counts["(large objects)"], 3);
    assert_eq!(counts["public.huge"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_table_restores_alone_and_globals_and_every_database_are_dumped() {
    let env = TestEnv::start(
        "CREATE SCHEMA s; CREATE TABLE s.a (id int PRIMARY KEY); INSERT INTO s.a SELECT generate_series(1, 100);\
         CREATE TABLE s.b (id int); INSERT INTO s.b VALUES (1);",
        |p, c| {
            c.source(
                Source::postgres("all", &p.db_url)
                    .password_file(&p.password_file)
                    .set("databases", vec!["*"])
                    .set("globals", true)
                    .set("exclude_tables", vec!["s.b"]),
            )
        },
    )
    .await;
    let ferry::backup::Outcome::Succeeded(uploaded) =
        ferry::backup::now(&env.client, "all", Some(STEP))
            .await
            .unwrap()
    else {
        panic!("expected a backup")
    };
    let store = env.store();
    let manifest = Manifest::from_json(
        &get_bytes(store.as_ref(), &manifest_key("all", &uploaded.backup_id))
            .await
            .unwrap(),
    )
    .unwrap();
    assert!(manifest.databases.contains(&env.db.name));
    assert!(manifest.databases.contains(&"postgres".to_string()));
    assert!(!manifest.databases.iter().any(|d| d.starts_with("template")));
    assert!(manifest.files.iter().any(|f| f.name == "globals.sql.zst"));
    assert!(manifest.postgres.as_ref().unwrap().globals);

    let restored = TestDatabase {
        name: ferry_testkit::unique_name("ferry_one_table"),
        cluster: env.pg.clone(),
    };
    let client = env.pg.connect("postgres").await;
    client
        .batch_execute(&format!("CREATE DATABASE \"{}\"", restored.name))
        .await
        .unwrap();
    restored
        .connect()
        .await
        .batch_execute("CREATE SCHEMA s")
        .await
        .unwrap();
    let opts = ferry::restore::postgres::PgRestore {
        to: env.pg.url(&restored.name),
        database: Some(env.db.name.clone()),
        create: false,
        table: Some("s.a".into()),
        jobs: None,
        work_dir: None,
        pg_bin_dir: None,
    };
    ferry::restore::postgres::restore(store.as_ref(), &manifest, &opts)
        .await
        .expect("restore one table");
    let got = restored.table_checksums().await;
    let names: Vec<_> = got.iter().map(|(t, n, _)| (t.as_str(), *n)).collect();
    assert!(names.contains(&("s.a", 100)), "{names:?}");
    assert!(!names.iter().any(|(t, _)| *t == "s.b"), "{names:?}");
}
