//! Client-side encryption end to end, on the real services: PostgreSQL backups into
//! the local-directory store and MongoDB backups into an S3 server (moto) are age
//! files to the configured recipient; restore needs the identity and writes nothing
//! without it; the store shows no names and no data; Debian's `age` reads an object
//! without Ferry; `ferry verify` checks ciphertext without keys; and a store that
//! is encrypted refuses a writer that is not.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use ferry::backup::Outcome;
use ferry_e2e::TestEnv;
use ferry_e2e::mongo::{raw_documents, shared_client};
use ferry_e2e::processes::binary;
use ferry_storage::{Catalog, Manifest, ObjectStore, get_bytes};
use ferry_testkit::{S3Server, Source, TestConfig, unique_name};
use futures::TryStreamExt;
use mongodb::bson::doc;

const STEP: Duration = Duration::from_secs(120);

/// Names and data no byte of an encrypted store may show.
const TABLE: &str = "secret_ledger_q7";
const OTHER_TABLE: &str = "unchanged_archive_q7";
const MARKER: &str = "MARKER-ZEBRA-Q7";

fn fill_sql() -> String {
    format!(
        "CREATE TABLE {TABLE} (id int PRIMARY KEY, note text NOT NULL);
         INSERT INTO {TABLE} SELECT g, '{MARKER}-' || g FROM generate_series(1, 20000) g;
         CREATE TABLE {OTHER_TABLE} (id int PRIMARY KEY, payload text NOT NULL);
         INSERT INTO {OTHER_TABLE}
           SELECT g, md5(g::text) || md5((g * 7)::text) || md5((g * 13)::text)
           FROM generate_series(1, 200000) g;"
    )
}

/// An identity (its file and public key), another one that is not a recipient,
/// and the writers' name key.
struct Keys {
    identity: PathBuf,
    recipient: String,
    stranger: PathBuf,
    name_key: PathBuf,
}

fn keys(dir: &Path) -> Keys {
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let (identity, recipient) = ferry_storage::encryption::generate_identity();
    let (stranger, _) = ferry_storage::encryption::generate_identity();
    Keys {
        identity: write("identity.txt", &identity),
        recipient,
        stranger: write("stranger.txt", &stranger),
        name_key: write(
            "name.key",
            "a name key that is long enough to be one, surely\n",
        ),
    }
}

fn encrypted(config: TestConfig, keys: &Keys) -> TestConfig {
    config
        .set("encryption", "recipients", vec![keys.recipient.clone()])
        .set(
            "encryption",
            "name_key_file",
            keys.name_key.display().to_string(),
        )
}

fn ferry(config: &Path, args: &[&str]) -> Output {
    Command::new(binary("ferry"))
        .arg("--config")
        .arg(config)
        .args(args)
        .env("FERRY_LOG", "warn")
        .output()
        .expect("run ferry")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

async fn backup(env: &TestEnv, source: &str) -> ferry_proto::v1::BackupUploaded {
    match ferry::backup::now(&env.client, source, Some(STEP))
        .await
        .expect("backup now")
    {
        Outcome::Succeeded(up) => up,
        other => panic!("backup of {source} did not succeed: {other:?}"),
    }
}

/// Every object in the store with its bytes (the store is small).
async fn everything(store: &dyn ObjectStore) -> Vec<(String, Vec<u8>)> {
    let keys: Vec<String> = store
        .list("")
        .try_concat()
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.key)
        .collect();
    let mut out = Vec::new();
    for key in keys {
        let bytes = get_bytes(store, &key).await.unwrap();
        out.push((key, bytes));
    }
    out
}

/// The first of `needles` found in any object, with where.
fn leaked(objects: &[(String, Vec<u8>)], needles: &[&str]) -> Option<String> {
    for (key, bytes) in objects {
        for needle in needles {
            if bytes.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                return Some(format!("{needle:?} in {key}"));
            }
        }
    }
    None
}

fn is_empty_dir(dir: &Path) -> bool {
    std::fs::read_dir(dir).map_or(true, |mut d| d.next().is_none())
}

/// The store a scenario runs on: the local directory of the test's defaults, or a
/// bucket on a real S3 server.
fn on_store(config: TestConfig, s3: Option<&S3Server>, dir: &Path) -> TestConfig {
    match s3 {
        Some(server) => config.s3_store(server, &unique_name("sealed"), dir),
        None => config,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_postgres_backups_in_a_directory_restore_only_with_the_identity() {
    postgres_scenario(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_postgres_backups_in_s3_restore_only_with_the_identity() {
    postgres_scenario(Some(S3Server::moto().await)).await;
}

/// PostgreSQL end to end: nothing readable in the store, restores only with the
/// identity, standard tools, dedup, verification without and with keys.
async fn postgres_scenario(s3: Option<S3Server>) {
    let mut keys_at = None;
    let mut config_at = None;
    let env = TestEnv::start(&fill_sql(), |p, c| {
        let keys = keys(&p.dir);
        let c = on_store(encrypted(c, &keys), s3.as_ref(), &p.dir).postgres_source(
            "vault",
            &p.db_url,
            &p.password_file,
        );
        config_at = Some(c.write(&p.dir.join("ferry.toml")));
        keys_at = Some(keys);
        c
    })
    .await;
    let (keys, config) = (keys_at.unwrap(), config_at.unwrap());
    let first = backup(&env, "vault").await;
    assert!(first.bytes_uploaded > 1_000_000, "{first:?}");
    let store = env.store();

    // Every object, manifest and record: no name, no data. The envelope shows the
    // source, ids, times and sizes only.
    let objects = everything(store.as_ref()).await;
    assert!(
        objects.len() > 4,
        "{:?}",
        objects.iter().map(|o| &o.0).collect::<Vec<_>>()
    );
    let db = env.db.name.as_str();
    if let Some(found) = leaked(
        &objects,
        &[TABLE, OTHER_TABLE, MARKER, db, "toc.dat", "pg_dump"],
    ) {
        panic!("the encrypted store shows {found}");
    }
    for (key, bytes) in &objects {
        if key.starts_with("objects/") {
            assert!(
                bytes.starts_with(b"age-encryption.org/v1\n"),
                "{key} is not an age file"
            );
        }
    }
    assert!(
        objects
            .iter()
            .any(|(k, _)| k == ferry_storage::encryption::MARKER_KEY)
    );

    // Without an identity, or with one that is not a recipient: a clear error, and
    // nothing written.
    let out_dir = env.dir.path().join("restored");
    let arg = out_dir.display().to_string();
    let refused = ferry(&config, &["restore", "--source", "vault", "--to-dir", &arg]);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("--identity"),
        "{}",
        stderr(&refused)
    );
    assert!(is_empty_dir(&out_dir));
    let stranger = keys.stranger.display().to_string();
    let refused = ferry(
        &config,
        &[
            "restore",
            "--source",
            "vault",
            "--to-dir",
            &arg,
            "--identity",
            &stranger,
        ],
    );
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("encrypted to other recipients"),
        "{}",
        stderr(&refused)
    );
    assert!(is_empty_dir(&out_dir));

    // With the identity: the archive pg_restore reads, and a database equal to the
    // source.
    let identity = keys.identity.display().to_string();
    let restored = ferry(
        &config,
        &[
            "restore",
            "--source",
            "vault",
            "--to-dir",
            &arg,
            "--identity",
            &identity,
        ],
    );
    assert!(restored.status.success(), "{}", stderr(&restored));
    let listing = Command::new(env.pg.bin_dir.join("pg_restore"))
        .arg("--list")
        .arg(out_dir.join(db))
        .output()
        .unwrap();
    assert!(listing.status.success(), "{}", stderr(&listing));
    assert!(String::from_utf8_lossy(&listing.stdout).contains(TABLE));

    let opener = ferry_storage::encryption::Opener::from_file(&keys.identity).unwrap();
    let manifest = Catalog::new(store.as_ref())
        .with_opener(Some(&opener))
        .resolve_open("vault", &first.backup_id)
        .await
        .unwrap();
    let copy = ferry_testkit::TestDatabase {
        name: unique_name("ferry_decrypted"),
        cluster: env.pg.clone(),
    };
    let opened = ferry::restore::open_backup(
        store.clone(),
        "vault",
        &first.backup_id,
        Some(std::sync::Arc::new(opener)),
    )
    .await
    .unwrap();
    let opts = ferry::restore::postgres::PgRestore {
        to: env.pg.url(&copy.name),
        database: None,
        create: true,
        table: None,
        jobs: Some(2),
        work_dir: Some(env.dir.path().to_path_buf()),
        pg_bin_dir: Some(env.pg.bin_dir.clone()),
    };
    ferry::restore::postgres::restore(opened.store.as_ref(), &opened.manifest, &opts)
        .await
        .expect("restore with the identity");
    assert_eq!(copy.table_checksums().await, env.db.table_checksums().await);

    // One file is larger than a part: the encrypted multipart path was taken.
    let part = ferry_uploader::config::UploaderConfig::default()
        .part_size
        .0;
    assert!(
        manifest.files.iter().any(|f| f.size > part),
        "no file above {part} bytes: {:?}",
        manifest.files.iter().map(|f| f.size).collect::<Vec<_>>()
    );

    // Debian's age reads an object without Ferry: the table of contents, which
    // pg_restore lists.
    let toc = manifest
        .files
        .iter()
        .find(|f| f.name == format!("{db}/toc.dat.zst"))
        .expect("the toc in the manifest");
    let by_hand = env.dir.path().join("by-hand");
    std::fs::create_dir_all(&by_hand).unwrap();
    let object = env.dir.path().join("toc-object");
    std::fs::write(
        &object,
        get_bytes(store.as_ref(), &toc.object).await.unwrap(),
    )
    .unwrap();
    let script = format!(
        "age -d -i {} {} | zstd -d -q -o {}/toc.dat",
        keys.identity.display(),
        object.display(),
        by_hand.display()
    );
    let out = Command::new("sh").arg("-c").arg(&script).output().unwrap();
    assert!(out.status.success(), "{script}: {}", stderr(&out));
    let listing = Command::new(env.pg.bin_dir.join("pg_restore"))
        .arg("--list")
        .arg(&by_hand)
        .output()
        .unwrap();
    assert!(listing.status.success(), "{}", stderr(&listing));
    assert!(String::from_utf8_lossy(&listing.stdout).contains(TABLE));

    // Dedup still works: an unchanged database's next backup uploads under 5%.
    let second = backup(&env, "vault").await;
    assert!(
        second.bytes_uploaded * 20 < first.bytes_uploaded,
        "second backup uploaded {} of {} (first {})",
        second.bytes_uploaded,
        second.bytes_total,
        first.bytes_uploaded
    );

    // `ferry keys check` proves which identity decrypts the newest backup.
    let checked = ferry(&config, &["keys", "check", "--identity", &identity]);
    assert!(checked.status.success(), "{}", stderr(&checked));
    assert!(String::from_utf8_lossy(&checked.stdout).contains("decrypts"));
    let checked = ferry(&config, &["keys", "check", "--identity", &stranger]);
    assert!(!checked.status.success());
    assert!(
        String::from_utf8_lossy(&checked.stdout).contains("encrypted to other recipients"),
        "{}",
        String::from_utf8_lossy(&checked.stdout)
    );

    // `ferry verify` needs no key; it names a damaged object, and --deep catches
    // the damage in the payload too.
    let verified = ferry(&config, &["verify", "--source", "vault"]);
    assert!(verified.status.success(), "{}", stderr(&verified));
    let deep = ferry(
        &config,
        &[
            "verify",
            "--source",
            "vault",
            "--deep",
            "--identity",
            &identity,
        ],
    );
    assert!(deep.status.success(), "{}", stderr(&deep));
    let big = manifest
        .files
        .iter()
        .max_by_key(|f| f.size)
        .expect("a data file");
    let mut bytes = get_bytes(store.as_ref(), &big.object).await.unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x20;
    store
        .put_bytes(&big.object, bytes.into(), None)
        .await
        .unwrap();
    let id = first.backup_id.as_str();
    let damaged = ferry(&config, &["verify", "--source", "vault", "--backup", id]);
    assert!(!damaged.status.success());
    let report = String::from_utf8_lossy(&damaged.stdout);
    assert!(report.contains(&big.object), "{report}");
    let store_only = Manifest::from_stored(
        &get_bytes(
            store.as_ref(),
            &ferry_storage::layout::manifest_key("vault", id),
        )
        .await
        .unwrap(),
        None,
        "manifest",
    )
    .unwrap();
    assert!(store_only.locked);
    let problems = ferry::verify::verify_content(opened.store.as_ref(), &opened.manifest)
        .await
        .unwrap();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].object, big.object);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_mongodb_backups_in_s3_restore_exactly_with_the_identity() {
    mongodb_scenario(Some(S3Server::moto().await)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_mongodb_backups_in_a_directory_restore_exactly_with_the_identity() {
    mongodb_scenario(None).await;
}

/// MongoDB end to end: nothing readable in the store, restores exactly only with
/// the identity, verification without keys.
async fn mongodb_scenario(s3: Option<S3Server>) {
    let (server, client) = shared_client().await;
    let source_db = unique_name("ferry_sealed");
    let db = client.database(&source_db);
    let secrets = db.collection::<mongodb::bson::Document>("secret_accounts_q7");
    secrets
        .insert_many((0..500).map(|i| doc! { "_id": i, "note": format!("{MARKER}-{i}") }))
        .await
        .unwrap();
    let mut keys_at = None;
    let env = TestEnv::start("", |p, c| {
        let keys = keys(&p.dir);
        let c = on_store(encrypted(c, &keys), s3.as_ref(), &p.dir).source(Source::mongodb(
            "accounts",
            server.url(),
            &[&source_db],
        ));
        keys_at = Some(keys);
        c
    })
    .await;
    let keys = keys_at.unwrap();
    let up = backup(&env, "accounts").await;
    let store = env.store();
    let objects = everything(store.as_ref()).await;
    if let Some(found) = leaked(
        &objects,
        &["secret_accounts_q7", MARKER, source_db.as_str(), "oplog"],
    ) {
        panic!("the encrypted store shows {found}");
    }

    // Without the identity the manifest is only its envelope: no restore.
    let locked = ferry::restore::open_backup(store.clone(), "accounts", "latest", None)
        .await
        .err()
        .expect("an encrypted backup needs an identity");
    assert!(format!("{locked:#}").contains("--identity"), "{locked:#}");

    let opener =
        std::sync::Arc::new(ferry_storage::encryption::Opener::from_file(&keys.identity).unwrap());
    let opened = ferry::restore::open_backup(store.clone(), "accounts", "latest", Some(opener))
        .await
        .unwrap();
    assert_eq!(opened.manifest.backup_id, up.backup_id);
    assert_eq!(opened.manifest.databases, vec![source_db.clone()]);
    let restored_db = format!("{source_db}_r");
    let options = ferry::restore::mongo::MongoRestoreOptions {
        to: server.url().to_string(),
        rename_db: [(source_db.clone(), restored_db.clone())].into(),
        parallel_collections: 2,
        parallel_batches: 2,
        ..Default::default()
    };
    ferry::restore::mongo::restore(opened.store.as_ref(), &opened.manifest, &options)
        .await
        .expect("restore with the identity");
    let target = client.database(&restored_db);
    assert!(
        raw_documents(&db, "secret_accounts_q7").await
            == raw_documents(&target, "secret_accounts_q7").await,
        "restored documents differ"
    );

    // The stored bytes verify without any key.
    let locked = Catalog::new(store.as_ref())
        .resolve("accounts", "latest")
        .await
        .unwrap();
    assert!(locked.locked && locked.databases.is_empty());
    let problems = ferry::verify::verify(store.as_ref(), &locked)
        .await
        .unwrap();
    assert!(problems.is_empty(), "{problems:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_store_refuses_plaintext_writers_and_bad_recipients_stop_start_up() {
    let mut keys_at = None;
    let env = TestEnv::start(&fill_sql(), |p, c| {
        let keys = keys(&p.dir);
        let c = encrypted(c, &keys).postgres_source("vault", &p.db_url, &p.password_file);
        keys_at = Some(keys);
        c
    })
    .await;
    let keys = keys_at.unwrap();
    backup(&env, "vault").await;
    let store = env.store();
    let before: Vec<String> = everything(store.as_ref())
        .await
        .into_iter()
        .map(|o| o.0)
        .collect();

    // The same store, a writer without [encryption]: `ferry up` refuses to start.
    let store_dir = env.dir.path().join("store");
    let plain = TestConfig::new()
        .nats(env.nats.url())
        .fs_store(&store_dir)
        .dir_spool(&env.dir.path().join("spool-plain"))
        .write(&env.dir.path().join("plain.toml"));
    let out = run_up(&plain).await;
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("ferry-store.json") && err.contains("[encryption]"),
        "{err}"
    );

    // A recipient that is not one: refused at start-up, naming the key.
    let bad = TestConfig::new()
        .nats(env.nats.url())
        .fs_store(&store_dir)
        .dir_spool(&env.dir.path().join("spool-bad"))
        .set(
            "encryption",
            "recipients",
            vec!["age1notarecipient".to_string()],
        )
        .set(
            "encryption",
            "name_key_file",
            keys.name_key.display().to_string(),
        )
        .write(&env.dir.path().join("bad.toml"));
    let out = run_up(&bad).await;
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("encryption.recipients[0]") && err.contains("age1notarecipient"),
        "{err}"
    );

    // Neither wrote anything.
    let after: Vec<String> = everything(store.as_ref())
        .await
        .into_iter()
        .map(|o| o.0)
        .collect();
    assert_eq!(before, after);

    // WAL archiving does not encrypt yet: it refuses an encrypted store too.
    let segment = env.dir.path().join("000000010000000000000001");
    std::fs::write(&segment, vec![0u8; 16 * 1024 * 1024]).unwrap();
    let out = Command::new(binary("ferry"))
        .arg("--config")
        .arg(&plain)
        .args(["wal-push", "--source", "vault"])
        .arg(&segment)
        .env("FERRY_LOG", "warn")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("ferry-store.json"),
        "{}",
        stderr(&out)
    );
    let after_wal: Vec<String> = everything(store.as_ref())
        .await
        .into_iter()
        .map(|o| o.0)
        .collect();
    assert_eq!(before, after_wal);
}

/// `ferry up` with `config`, expected to stop by itself (a refused start-up); a
/// minute without stopping fails the test.
async fn run_up(config: &Path) -> Output {
    let child = tokio::process::Command::new(binary("ferry"))
        .arg("--config")
        .arg(config)
        .arg("up")
        .env("FERRY_LOG", "warn")
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(Duration::from_secs(60), child)
        .await
        .expect("ferry up did not refuse to start within a minute")
        .expect("run ferry up")
}

/// Every backup of `source` opens with `identity` and its content checks out.
async fn all_open_with(store: &std::sync::Arc<dyn ObjectStore>, source: &str, identity: &Path) {
    let opener =
        std::sync::Arc::new(ferry_storage::encryption::Opener::from_file(identity).unwrap());
    let entries = Catalog::new(store.as_ref())
        .backups(Some(source))
        .await
        .unwrap();
    assert!(!entries.is_empty());
    for entry in entries {
        let opened =
            ferry::restore::open_backup(store.clone(), source, &entry.id, Some(opener.clone()))
                .await
                .unwrap_or_else(|e| panic!("{} with {}: {e:#}", entry.id, identity.display()));
        let problems = ferry::verify::verify_content(opened.store.as_ref(), &opened.manifest)
            .await
            .unwrap();
        assert!(
            problems.is_empty(),
            "{} with {}: {problems:?}",
            entry.id,
            identity.display()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewrap_killed_twice_completes_and_locks_out_the_removed_identity() {
    let mut keys_at = None;
    let mut config_at = None;
    let env = TestEnv::start(&fill_sql(), |p, c| {
        let keys = keys(&p.dir);
        let c = encrypted(c, &keys).postgres_source("vault", &p.db_url, &p.password_file);
        config_at = Some(c.write(&p.dir.join("ferry.toml")));
        keys_at = Some(keys);
        c
    })
    .await;
    let (keys, config) = (keys_at.unwrap(), config_at.unwrap());
    // Two backups sharing every table's object.
    backup(&env, "vault").await;
    backup(&env, "vault").await;
    let store = env.store();
    let (text, recipient) = ferry_storage::encryption::generate_identity();
    let new_identity = env.dir.path().join("new-identity.txt");
    std::fs::write(&new_identity, text).unwrap();
    let recipients = env.dir.path().join("new-recipients.txt");
    std::fs::write(&recipients, format!("# the new key\n{recipient}\n")).unwrap();
    let (old, new) = (
        keys.identity.display().to_string(),
        new_identity.display().to_string(),
    );
    let rewrap = |fault: Option<&str>| {
        let mut cmd = Command::new(binary("ferry"));
        cmd.arg("--config")
            .arg(&config)
            .args(["keys", "rewrap", "--identity", &old, "--recipients-file"])
            .arg(&recipients)
            .env("FERRY_LOG", "warn");
        if let Some(fault) = fault {
            cmd.env(ferry_runtime::fault::ENV, fault);
        }
        cmd.output().expect("run ferry keys rewrap")
    };

    // Killed in phase one (after the first manifest): the old identity still opens
    // every backup.
    let killed = rewrap(Some("keys.rewrap.manifest:1"));
    assert!(!killed.status.success());
    assert!(
        stderr(&killed).contains("fault injected"),
        "{}",
        stderr(&killed)
    );
    all_open_with(&store, "vault", &keys.identity).await;

    // Resumed, killed again in phase two: now the new identity opens every backup.
    let killed = rewrap(Some("keys.rewrap.manifest:2"));
    assert!(!killed.status.success());
    assert!(stderr(&killed).contains("resuming"), "{}", stderr(&killed));
    all_open_with(&store, "vault", &new_identity).await;

    // Resumed to the end: every backup verifies (the stored digests were updated)
    // and restores with the new identity; the old one opens none.
    let done = rewrap(None);
    assert!(done.status.success(), "{}", stderr(&done));
    all_open_with(&store, "vault", &new_identity).await;
    assert!(
        get_bytes(store.as_ref(), "keys/rewrap.json").await.is_err(),
        "the progress record is removed at the end"
    );
    for entry in Catalog::new(store.as_ref())
        .backups(Some("vault"))
        .await
        .unwrap()
    {
        let deep = ferry(
            &config,
            &[
                "verify",
                "--source",
                "vault",
                "--backup",
                &entry.id,
                "--deep",
                "--identity",
                &new,
            ],
        );
        assert!(deep.status.success(), "{}", stderr(&deep));
        let refused = ferry::restore::open_backup(
            store.clone(),
            "vault",
            &entry.id,
            Some(std::sync::Arc::new(
                ferry_storage::encryption::Opener::from_file(&keys.identity).unwrap(),
            )),
        )
        .await
        .err()
        .expect("the removed identity opens nothing");
        assert!(
            format!("{refused:#}").contains("encrypted to other recipients"),
            "{refused:#}"
        );
    }
    let checked = ferry(&config, &["keys", "check", "--identity", &old]);
    assert!(!checked.status.success());
}
